"""Read a pipeline run directory into the report's data (see tether.report.html.render).

Everything is read from files the stages wrote, so `tether report RUN_DIR` redraws the report
of any run, finished or not: a section whose stage has not run yet is left out.
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


def _reward_model(root: Path, frontier: dict | None) -> dict | None:
    rm = _json(root / "rm" / "eval.json")
    if rm is None:
        return None
    m = rm["metrics"]
    labels = _json(root / "label" / "labels.stats.json") or {}
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
        "rm": _reward_model(root, frontier),
        "warnings": (frontier or {}).get("warnings", []) + _health_warnings(root),
        "notes": [
            "KL is the summed log-ratio log pi(y|x) - log pi_ref(y|x) of a policy's own "
            "samples (temperature 1), averaged over held-out prompts; the reference is the SFT "
            "policy. Best-of-n's KL is the analytic log n - (n - 1)/n.",
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
    return data


def write_run_report(root: str | Path) -> Path:
    """Collect the run directory `root` and write its report.html; return the path."""
    if not (Path(root) / "pipeline.json").exists():
        raise UserError(f"{root} is not a `tether run` directory (it has no pipeline.json)")
    return write_report(collect(root), Path(root) / "report.html")


def run(cfg: ReportConfig) -> Path:
    """`tether report RUN_DIR`."""
    path = write_run_report(cfg.run_dir)
    print(f"wrote {path}")
    return path
