"""Read a run directory into the report's data (see tether.report.html.render): a pipeline's
(`tether run`: every stage, the evaluation, the frontier) or one stage's (`tether sft|rm|dpo|
ppo`: its curves and a table of its metrics).

Everything is read from files the stages wrote, so `tether report RUN_DIR` redraws the report
of any run, finished or not: a section whose stage has not run yet is left out. Nothing here
imports torch: reading JSON and drawing SVG takes well under a second.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tether.config import ReportConfig
from tether.errors import UserError
from tether.eval.health import health_findings, reward_model_warnings
from tether.metric_names import (
    EVAL_ACCURACY,
    EVAL_ACCURACY_CI_HI,
    EVAL_ACCURACY_CI_LO,
    EVAL_ECE,
    EVAL_GOLD,
    EVAL_KL,
    EVAL_LABEL_GOLD_AGREEMENT,
    EVAL_LOSS,
    EVAL_PAIRS,
    EVAL_PROXY,
    EVAL_SPEARMAN_GOLD,
    KL_CHOSEN,
    KL_MISMATCHED,
    KL_SEQ,
    LOSS_POLICY,
    LOSS_TRAIN,
    LOSS_VALUE,
    POLICY_ENTROPY,
    PPO_APPROX_KL,
    PPO_CLIPFRAC,
    PPO_EXPLAINED_VARIANCE,
    RESPONSE_LENGTH,
    REWARD_ACCURACY,
    REWARD_DESIRABLE,
    REWARD_GOLD,
    REWARD_MARGIN,
    REWARD_PROXY,
    REWARD_UNDESIRABLE,
)
from tether.report.html import write_report
from tether.rundir import read_metrics

# Training curves shown per stage: metric names, in the order the report groups them.
CURVES = {
    "sft": (LOSS_TRAIN, EVAL_LOSS),
    "rm": (LOSS_TRAIN, EVAL_LOSS, REWARD_ACCURACY, EVAL_ACCURACY),
    "ppo": (REWARD_PROXY, REWARD_GOLD, EVAL_GOLD, EVAL_PROXY, KL_SEQ, EVAL_KL, PPO_CLIPFRAC,
            PPO_APPROX_KL, LOSS_POLICY, LOSS_VALUE, PPO_EXPLAINED_VARIANCE, POLICY_ENTROPY,
            RESPONSE_LENGTH),
    "dpo": (LOSS_TRAIN, EVAL_LOSS, REWARD_ACCURACY, EVAL_ACCURACY, REWARD_MARGIN, KL_CHOSEN,
            EVAL_GOLD, EVAL_PROXY, EVAL_KL),
    "kto": (LOSS_TRAIN, EVAL_LOSS, REWARD_DESIRABLE, REWARD_UNDESIRABLE, KL_MISMATCHED,
            EVAL_GOLD, EVAL_PROXY, EVAL_KL),
}


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _curves(root: Path) -> dict:
    curves = {}
    for stage, keys in CURVES.items():
        path = root / stage / "metrics.jsonl"
        if not path.exists():
            continue
        metrics = read_metrics(path)
        series = {key: [[m["step"], m[key]] for m in metrics
                        if isinstance(m.get(key), (int, float))] for key in keys}
        curves[stage] = {k: v for k, v in series.items() if v}
    return curves


def _summary_rows(policies: dict) -> list[dict]:
    def mean(stat):
        return None if stat is None else stat["mean"]

    def ci(stat):
        return None if stat is None else stat["ci"]

    rows = []
    for name, policy in policies.items():
        s = policy["summary"]
        wins = s.get("win_rate") or {}
        rows.append({
            "policy": name, "gold": mean(s["gold"]), "gold_ci": ci(s["gold"]),
            "proxy": mean(s["proxy"]), "proxy_ci": ci(s["proxy"]),
            "kl": mean(s["kl"]), "kl_ci": ci(s["kl"]), "length": mean(s["num_tokens"]),
            "eos_rate": s["eos_fraction"],
            "win_gold": mean(wins.get("gold")), "win_gold_ci": ci(wins.get("gold")),
            "win_proxy": mean(wins.get("proxy")), "win_proxy_ci": ci(wins.get("proxy")),
        })
    return rows


def _samples(policies: dict, prompts: list, count: int) -> list[dict]:
    """The first sample of each policy on the first `count` prompts, side by side."""
    out = []
    for index, prompt in enumerate(prompts[:count]):
        responses = []
        for name, policy in policies.items():
            record = next((r for r in policy["samples"] if r["prompt_index"] == index), None)
            if record is not None:
                responses.append({"policy": name, "text": record["response"],
                                  "gold": record["gold"], "proxy": record["proxy"]})
        text = prompt if isinstance(prompt, str) else "\n".join(
            f"{m['role']}: {m['content']}" for m in prompt)
        out.append({"prompt": text, "responses": responses})
    return out


def _reward_model(rm_dir: Path, labels: dict, frontier: dict | None) -> dict | None:
    """The reward model's held-out evaluation (rm_dir/eval.json); `labels`: the labeler's
    statistics, where the run has them."""
    rm = _json(rm_dir / "eval.json")
    if rm is None:
        return None
    m = rm["metrics"]
    out = {
        "accuracy": m[EVAL_ACCURACY],
        "accuracy_ci": [m[EVAL_ACCURACY_CI_LO], m[EVAL_ACCURACY_CI_HI]],
        # On the reward model's own held-out labels; else the labeler's over all labels.
        "label_agreement": m.get(EVAL_LABEL_GOLD_AGREEMENT, labels.get("agreement_with_gold")),
        "pairs": int(m[EVAL_PAIRS]), "ece": m[EVAL_ECE],
        "spearman_gold": m.get(EVAL_SPEARMAN_GOLD),
        "reliability": rm.get("reliability"), "by_length_diff": rm.get("by_length_diff"),
    }
    bias = (frontier or {}).get("length_bias")
    if bias:
        out["length_bias"] = {"err_pearson": bias["err_length_pearson"],
                              "err_spearman": bias["err_length_spearman"],
                              "rm_length_pearson": bias["rm_length_pearson"],
                              "gold_length_pearson": bias["gold_length_pearson"],
                              "n": bias["n"]}
    return out


def _health_warnings(root: Path) -> list[str]:
    """What the stages' own checks found (tether.eval.health): a reward model at chance or
    preferring empty responses, and the flags PPO, DPO and KTO logged while training."""
    warnings = []
    rm = _json(root / "rm" / "eval.json")
    if rm:
        warnings += [f"rm: {text}" for text in reward_model_warnings(rm["metrics"])]
    for stage in ("ppo", "dpo", "kto"):
        path = root / stage / "metrics.jsonl"
        found = health_findings(read_metrics(path)) if path.exists() else []
        if found:
            warnings.append(f"{stage}: its health checks flagged " + "; ".join(found))
    return warnings


def collect(root: str | Path) -> dict:
    """The report's data for the run directory `root`."""
    root = Path(root)
    state = (_json(root / "pipeline.json") or {}).get("stages", {})
    evaluation = _json(root / "eval" / "policies.json")
    frontier = _json(root / "eval" / "frontier.json")
    config = root / "config.yaml"
    data: dict = {
        "title": f"tether run: {root}",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config_yaml": config.read_text() if config.exists() else None,
        "stages": [{"name": name, "status": st.get("status"), "seconds": st.get("seconds"),
                    "summary": st.get("summary")} for name, st in state.items()],
        "curves": _curves(root),
        "rm": _reward_model(root / "rm", _json(root / "label" / "labels.stats.json") or {},
                            frontier),
        "warnings": (frontier or {}).get("warnings", []) + _health_warnings(root),
        "notes": [
            "KL is the summed log-ratio log pi(y|x) - log pi_ref(y|x) of a policy's own "
            "samples (temperature 1), averaged over held-out prompts; the reference is the "
            "starting policy (sft, or base: the model as given, when no SFT stage ran). "
            "Best-of-n's KL is the analytic log n - (n - 1)/n.",
            "Gold is the task's scorer (the hidden preference the labels were drawn from); "
            "proxy is the reward model trained on those labels.",
        ],
    }
    if evaluation is not None:
        data["summary"] = _summary_rows(evaluation["policies"])
        data["baseline"] = evaluation["baseline"]
        settings = yaml.safe_load(data["config_yaml"] or "") or {}
        count = settings.get("eval", {}).get("samples_in_report", 6)
        data["samples"] = _samples(evaluation["policies"], evaluation["prompts"], count)
    if frontier is not None:
        data["frontier"] = {"points": frontier["points"], "fits": frontier["fits"]}
    rounds = _json(root / "eval" / "rounds.json")
    if rounds:
        data["rounds"] = rounds
    return data


# A stage's run directory: which stage wrote it, told by the config section only it has.
STAGE_SECTIONS = (("rollout", "ppo"), ("dpo", "dpo"), ("reward", "rm"), ("data", "sft"))
# Metrics a stage report lists in its table but does not draw: timings, memory, flags.
UNDRAWN = ("perf/", "health/", "data/")


def stage_of(settings: dict) -> str:
    """sft, rm, dpo, or ppo's algorithm (ppo, grpo, rloo), from a run's config.yaml."""
    for section, stage in STAGE_SECTIONS:
        if section in settings:
            return str(settings.get("algo", stage)) if stage == "ppo" else stage
    return "run"


def _series(metrics: list[dict]) -> dict[str, list[list[float]]]:
    """Every numeric metric as [[step, value], ...], in the order the log first names them."""
    series: dict[str, list[list[float]]] = {}
    for row in metrics:
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                series.setdefault(key, []).append([row["step"], value])
    return series


def _metric_table(series: dict[str, list[list[float]]]) -> list[dict]:
    return [{"name": name, "points": len(points), "first": points[0][1], "last": points[-1][1],
             "last_step": points[-1][0], "min": min(v for _, v in points),
             "max": max(v for _, v in points)} for name, points in series.items()]


def _drawn_first(series: dict[str, list], stage: str) -> dict[str, list]:
    """The metrics a stage report draws: those the pipeline's report shows for the stage
    first (rewards and KL before PPO's diagnostics), then the others as the log names them."""
    shown = CURVES.get("ppo" if stage in ("grpo", "rloo") else stage, ())
    first = [name for name in shown if name in series]
    rest = [name for name in series if name not in first and not name.startswith(UNDRAWN)]
    return {name: series[name] for name in first + rest}


def collect_stage(root: str | Path) -> dict:
    """The report's data for one stage's run directory (tether sft, rm, dpo or ppo)."""
    root = Path(root)
    config = root / "config.yaml"
    config_yaml = config.read_text() if config.exists() else None
    stage = stage_of(yaml.safe_load(config_yaml or "") or {})
    metrics = read_metrics(root / "metrics.jsonl")
    series = _series(metrics)
    steps = sorted({row["step"] for row in metrics if "step" in row})
    times = [row["time"] for row in metrics if isinstance(row.get("time"), (int, float))]
    done = (root / "final").exists()
    logged = (f"{len(steps)} logged steps, the last step {steps[-1]}" if steps
              else "nothing logged yet")
    rm = _json(root / "eval.json") if stage == "rm" else None
    warnings = [] if rm is None else reward_model_warnings(rm["metrics"])
    warnings += health_findings(metrics) if stage in ("ppo", "grpo", "rloo", "dpo") else []
    return {
        "title": f"tether {stage}: {root}",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config_yaml": config_yaml,
        "stages": [{"name": stage, "status": "done" if done else "incomplete",
                    "seconds": times[-1] - times[0] if len(times) > 1 else None,
                    "summary": logged + ("" if done else "; no final/ yet")}],
        "curves": {stage: _drawn_first(series, stage)},
        "metric_table": _metric_table(series),
        "rm": _reward_model(root, {}, None) if stage == "rm" else None,
        "warnings": warnings,
        "notes": ["Time is from the first logged step to the last (a resumed run's includes "
                  "the pause)."],
    }


def write_run_report(root: str | Path) -> Path:
    """Collect the run directory `root` (a pipeline's or one stage's) and write its
    report.html; return the path."""
    root = Path(root)
    if (root / "pipeline.json").exists():
        data = collect(root)
    elif (root / "metrics.jsonl").exists():
        data = collect_stage(root)
    else:
        raise UserError(f"{root} is not a `tether run` directory (it has no pipeline.json), "
                        f"nor a run directory of tether sft, rm, dpo or ppo (no metrics.jsonl)")
    return write_report(data, root / "report.html")


def run(cfg: ReportConfig) -> Path:
    """`tether report RUN_DIR`."""
    path = write_run_report(cfg.run_dir)
    print(f"wrote {path}")
    return path
