"""`tether run`: the whole RLHF pipeline as one resumable command.

    data -> sft -> sample -> label -> rm -> ppo, dpo (, kto) -> eval -> report

Every stage writes into its own directory of one run directory. A stage's key is a hash of
its resolved config, of the files it reads from outside the run, and of the versions of the
outputs of the stages it reads from (a version is new each time a stage runs). A stage that
finished with the same key is skipped, so a changed option reruns its stage and the stages
that read its outputs, directly or not, and nothing else. A killed pipeline starts the stage
it was in again, and the trainers continue from their newest checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tether import evaluate
from tether import sample as sampling
from tether.checkpoint import CHECKPOINTS, damage, list_checkpoints
from tether.config import (
    PIPELINE_STAGES,
    PIPELINE_WIRED,
    EvalConfig,
    HumanLabelsConfig,
    PipelineConfig,
    to_yaml,
)
from tether.data.prompts import encode_prompts, load_prompts
from tether.data.readers import split_source
from tether.data.tokenize import wants_chat_template
from tether.device import pick_device, slow_bf16
from tether.errors import ConfigError, DataError, WeakRewardModel
from tether.eval.frontier import (
    best_of_n_points,
    fit_points,
    hacking_warnings,
    sample_best_of_n,
    trajectory_points,
)
from tether.eval.health import at_chance, health_findings
from tether.eval.overopt import length_bias
from tether.files import atomic_write_jsonl, atomic_write_text
from tether.labeling.commands import simulate_labels, stats_path_for
from tether.labeling.export import THUMBS, kto_rows
from tether.metric_names import (
    EVAL_ACCURACY,
    EVAL_ACCURACY_CI_HI,
    EVAL_ACCURACY_CI_LO,
    EVAL_GOLD,
    EVAL_KL,
    EVAL_LABEL_GOLD_AGREEMENT,
    EVAL_LOSS,
    EVAL_PROXY,
)
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.models.reward import RewardModel
from tether.report.collect import write_run_report
from tether.rollout.base import SamplingParams
from tether.rundir import read_metrics
from tether.tasks.gold import load_gold_scorer
from tether.tasks.registry import TASKS, load_task, prompt_rows
from tether.trainers import dpo, kto, ppo, rm, sft

STATE = "pipeline.json"
HUMAN = "human"  # task.labels: people label the samples in the labeling app


@dataclass
class Stage:
    name: str
    reads: tuple[str, ...]  # the stages whose outputs it reads
    configure: Callable[[Run], Any]  # its resolved config: what its key hashes
    execute: Callable[[Run, Any], str]  # runs it; returns a one-line summary
    inputs: Callable[[Run], list[str]] = lambda run: []  # files it reads from outside the run
    base: str = ""  # the stage it repeats in a later round (sample-2: sample); else its name

    def __post_init__(self):
        self.base = self.base or self.name


def people_rate(cfg: PipelineConfig) -> bool:
    """Whether people give thumbs in the app (task.labels=human, human.mode rate or both)."""
    return cfg.task.labels == HUMAN and cfg.human.mode in ("rate", "both")


def runs_kto(cfg: PipelineConfig) -> bool:
    """The kto stage runs when asked for (compare_kto), and whenever people give thumbs."""
    return cfg.compare_kto or people_rate(cfg)


def in_round(name: str, r: int) -> str:
    """A stage's name in round r: round 1 keeps the plain names (a one-round run is today's)."""
    return name if r == 1 else f"{name}-{r}"


def _digest(path: str) -> str:
    p = Path(split_source(path)[0])  # a file, without its reader options (?prompt=question)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return f"{path} (not a file)"  # a directory or hub name: its name stands for it


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Run:
    """One pipeline run directory: the paths between stages, the stages' configs, and the
    state of each stage (pipeline.json)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg = copy.deepcopy(cfg)
        self.notes = [note for note in [_fit_to_heldout(cfg), _fit_to_cpu(cfg)] if note]
        self.root = Path(cfg.run_dir)
        self.skipped = set(cfg.stage_list("skip"))
        task = cfg.task
        if task.name and task.name not in TASKS:
            raise ConfigError(f"task.name: no built-in task '{task.name}' (built in: "
                              f"{', '.join(TASKS)}); leave it empty for a task of your "
                              f"own, given by task.prompts and task.gold or task.labels")
        if not task.name and not task.demonstrations:
            self.skipped.add("sft")
        if people_rate(cfg) and cfg.human.mode == "rate":
            self.skipped |= {"rm", "ppo", "dpo"}
            self.notes.append("people rate each response (human.mode=rate): KTO trains on "
                              "their thumbs; rm, ppo and dpo are left out (thumbs make no "
                              "preference pairs)")
        if not runs_kto(cfg):
            self.skipped.add("kto")
        # A built-in task's scorer by its full path, as resolved configs have always shown it
        # (the stages' keys hash it: another spelling would rerun finished stages).
        self.gold = task.gold or (f"{TASKS[task.name]}:gold_score" if task.name else "")
        self.state_path = self.root / STATE
        self.state: dict = json.loads(self.state_path.read_text()) \
            if self.state_path.exists() else {"stages": {}}

    # Paths between the stages -----------------------------------------------------------------
    def dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def rounds(self) -> int:
        return self.cfg.rounds

    @property
    def lead(self) -> str:
        """The algorithm whose policy is sampled for the next round's labels."""
        if self.cfg.rounds_from != "auto":
            return self.cfg.rounds_from
        return next(algo for algo in ("ppo", "dpo", "kto") if algo not in self.skipped)

    def label_prompts(self, r: int) -> Path:
        """The prompts sampled and labelled in round r: with several rounds, each labels its
        own share of the training prompts, so the label budget is the same however many."""
        return self.prompts if self.rounds == 1 else self.dir("data") / f"prompts-round{r}.jsonl"

    def sampler(self, r: int) -> str:
        """The policy sampled for round r's labels: the SFT policy, then the newest one."""
        return self.policy if r == 1 else str(self.dir(in_round(self.lead, r - 1)) / "final")

    def start(self, algo: str, r: int) -> str:
        """Where round r's PPO or DPO starts, and its reference: the previous round's."""
        return self.policy if r == 1 else str(self.dir(in_round(algo, r - 1)) / "final")

    def labels_of(self, r: int) -> Path:
        return self.dir(in_round("label", r)) / "labels.jsonl"

    def rm_data(self, r: int) -> Path:
        """What round r's reward model trains on: every label so far."""
        return self.labels_of(1) if r == 1 else \
            self.dir(in_round("label", r)) / "labels_so_far.jsonl"

    def final_of(self, stage: str) -> str:
        """The last round's output of rm, ppo or dpo."""
        return str(self.dir(in_round(stage, self.rounds)) / "final")

    @property
    def prompts(self) -> Path:
        return self.dir("data") / "prompts.jsonl"

    @property
    def heldout(self) -> Path:
        return self.dir("data") / "heldout.jsonl"

    @property
    def policy(self) -> str:
        """The SFT policy: the starting point of PPO and DPO, and their reference."""
        return self.cfg.sft.model.name if "sft" in self.skipped else str(self.dir("sft") / "final")

    @property
    def policy_name(self) -> str:
        """What the starting policy is called in the evaluation and the report: `sft`, or
        `base` when no SFT stage ran (it is then the model as given, sft.model.name)."""
        return "base" if "sft" in self.skipped else "sft"

    @property
    def labels(self) -> Path:
        return self.dir("label") / "labels.jsonl"

    @property
    def reward_model(self) -> str:
        return self.final_of("rm")

    def stages(self) -> list[Stage]:
        """The stages this run has: people's labels need no samples to label; later rounds
        repeat sample, label, rm, ppo and dpo before the evaluation, which reads the last."""
        later = [stage for r in range(2, self.rounds + 1) for stage in round_stages(r, self.lead)]
        evaluation, report = STAGES[-2:]
        last = tuple(in_round(name, self.rounds) for name in ("ppo", "dpo", "kto", "rm"))
        every = STAGES[:-2] + later + [dataclasses.replace(evaluation,
                                                           reads=(*last, "sft", "data")), report]
        return [s for s in every if s.base not in self.skipped
                and not (self.cfg.task.labels not in ("", HUMAN) and s.base == "sample")]

    # State ------------------------------------------------------------------------------------
    def key(self, stage: Stage, cfg: Any, versions: dict[str, str]) -> str:
        h = hashlib.sha256(stage.name.encode())
        if dataclasses.is_dataclass(cfg) and hasattr(getattr(cfg, "train", None), "report_to"):
            # where metrics are also sent changes no output: turning TensorBoard on for a
            # finished pipeline reruns nothing
            cfg = copy.deepcopy(cfg)
            cfg.train.report_to = []
        text = to_yaml(cfg) if dataclasses.is_dataclass(cfg) else json.dumps(cfg)
        # Paths inside the run count relative to it: a moved run directory is still done.
        h.update(text.replace(str(self.root), "<run_dir>").encode())
        for path in stage.inputs(self):
            h.update(_digest(path).encode())
        for upstream in stage.reads:
            h.update(versions.get(upstream, "absent").encode())
        return h.hexdigest()[:16]

    def save_state(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2) + "\n")


# The held-out evaluations, each on the first N of the task's held-out prompts.
HELDOUT_EVALUATIONS = ("eval.num_prompts", "ppo.eval_num_prompts", "dpo.sampled_eval.num_prompts")


def _section(cfg: Any, dotted: str) -> Any:
    """The config section at a dotted path ("ppo.train")."""
    for part in dotted.split(".") if dotted else []:
        cfg = getattr(cfg, part)
    return cfg


def _fit_to_heldout(cfg: PipelineConfig) -> str:
    """Cut each held-out evaluation asking for more prompts than the task holds out
    (task.num_heldout) to all of them, in place; say so, once ("" if none was cut). A task
    of one's own with 30 held-out prompts should not need three options changed to run."""
    cut = []
    for key in HELDOUT_EVALUATIONS:
        parent, _, leaf = key.rpartition(".")
        section = _section(cfg, parent)
        if getattr(section, leaf) > cfg.task.num_heldout:
            cut.append(f"{key} {getattr(section, leaf)}")
            setattr(section, leaf, cfg.task.num_heldout)
    if not cut:
        return ""
    return (f"the task holds out {cfg.task.num_heldout} prompts: {', '.join(cut)} -> "
            f"{cfg.task.num_heldout} (all of them)")


# Every bf16 switch of the stages: the preset turns them on, for GPUs and bf16-capable CPUs.
BF16_SWITCHES = ("sft.train", "rm.train", "ppo.train", "dpo.train", "kto.train", "sample",
                 "eval")


def _fit_to_cpu(cfg: PipelineConfig) -> str:
    """On a machine with no GPU whose CPU has no bf16 instructions, every stage's bf16 (and
    bf16_weights) off, in place; say so ("" if nothing changed). There bf16 is emulated, 4-8x
    slower than fp32, and the default pipeline would take hours instead of minutes."""
    if torch.cuda.is_available() or not slow_bf16(torch.device("cpu")):
        return ""
    turned_off = []
    for key in BF16_SWITCHES:
        section = _section(cfg, key)
        if section.bf16:
            turned_off.append(f"{key}.bf16")
            section.bf16 = False
            if getattr(section, "bf16_weights", False):
                section.bf16_weights = False
    if not turned_off:
        return ""
    return (f"this CPU has no bf16 instructions (torch would emulate bf16, several times slower "
            f"than fp32): {', '.join(turned_off)} -> false")


def effective_config(cfg: PipelineConfig) -> PipelineConfig:
    """The config as the pipeline runs it, for --print-config: each stage's section with what
    the pipeline sets in it (the paths between stages, the task's gold scorer) and the
    held-out evaluations fitted to the task."""
    run = Run(cfg)
    out = copy.deepcopy(run.cfg)
    for stage in run.stages():
        section = stage.configure(run)
        if dataclasses.is_dataclass(section) and hasattr(out, stage.name):
            setattr(out, stage.name, section)
    return out


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


def _check_not_set(section: Any, defaults: Any, keys: tuple[str, ...], prefix: str) -> None:
    """Paths between stages belong to the pipeline: a user value would be silently replaced."""
    for key in keys:
        value, default = section, defaults
        for part in key.split("."):
            value, default = getattr(value, part), getattr(default, part)
        if value != default:
            raise ConfigError(f"{prefix}.{key} is set by the pipeline (to another stage's "
                              f"output); set the task.* keys or the stage's other options")


def _wired(run: Run, name: str, **values: Any) -> Any:
    """A copy of the stage's config with the pipeline's paths filled in."""
    section = getattr(run.cfg, name)
    _check_not_set(section, type(section)(), PIPELINE_WIRED[name], name)
    cfg = copy.deepcopy(section)
    for key, value in values.items():
        target = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


# data ---------------------------------------------------------------------------------------
def configure_data(run: Run) -> dict:
    made = {"task": dataclasses.asdict(run.cfg.task), "sft": "sft" not in run.skipped}
    if run.rounds > 1:  # each round's share of the prompts (a one-round run's key as before)
        made["rounds"] = run.rounds
    return made


def data_inputs(run: Run) -> list[str]:
    t = run.cfg.task
    return [p for p in (t.prompts, t.heldout_prompts, t.demonstrations, t.labels)
            if p and p != HUMAN]


def execute_data(run: Run, _: dict) -> str:
    task, out = run.cfg.task, run.dir("data")
    out.mkdir(parents=True, exist_ok=True)
    if task.prompts:
        rows = [r.record() for r in load_prompts(task.prompts)[0]]
        if task.heldout_prompts:
            heldout = [r.record() for r in load_prompts(task.heldout_prompts, task.num_heldout)[0]]
        else:
            if len(rows) <= task.num_heldout:
                raise DataError(f"{task.prompts}: {len(rows)} prompts, not more than "
                                f"task.num_heldout={task.num_heldout} held out for evaluation")
            rows, heldout = rows[:-task.num_heldout], rows[-task.num_heldout:]
        train = rows[:task.num_prompts]
    else:
        rows = prompt_rows(load_task(task.name), task.num_prompts + task.num_heldout, task.seed)
        train, heldout = rows[:task.num_prompts], rows[task.num_prompts:]
    atomic_write_jsonl(out / "prompts.jsonl", train)
    atomic_write_jsonl(out / "heldout.jsonl", heldout)
    what = f"{len(train)} training prompts, {len(heldout)} held out"
    if run.rounds > 1:
        if len(train) < run.rounds:
            raise DataError(f"{len(train)} training prompts cannot be shared among "
                            f"rounds={run.rounds}")
        for r in range(1, run.rounds + 1):  # consecutive shares, as even as they come
            share = train[(r - 1) * len(train) // run.rounds: r * len(train) // run.rounds]
            atomic_write_jsonl(run.label_prompts(r), share)
        what += f", labelled in {run.rounds} rounds"
    if "sft" not in run.skipped and not task.demonstrations:
        n = task.num_demonstrations
        demos = load_task(task.name).make_demonstrations(n + max(n // 10, 1), task.seed + 1)
        atomic_write_jsonl(out / "demonstrations.jsonl", demos[:n])
        atomic_write_jsonl(out / "demonstrations_eval.jsonl", demos[n:])
        what += f", {n} demonstrations"
    return what


# sft ----------------------------------------------------------------------------------------
def configure_sft(run: Run) -> Any:
    task, data = run.cfg.task, run.dir("data")
    train = task.demonstrations or str(data / "demonstrations.jsonl")
    evaluation = "" if task.demonstrations else str(data / "demonstrations_eval.jsonl")
    return _wired(run, "sft", run_dir=str(run.dir("sft")), data__train=train,
                  data__eval=evaluation)


def execute_sft(run: Run, cfg: Any) -> str:
    sft.train(cfg)
    losses = [m[EVAL_LOSS] for m in read_metrics(run.dir("sft") / "metrics.jsonl")
              if EVAL_LOSS in m]
    return f"eval loss {losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "trained"


# sample -------------------------------------------------------------------------------------
def configure_sample(run: Run, r: int = 1) -> Any:
    return _wired(run, "sample", policy=run.sampler(r), prompts=str(run.label_prompts(r)),
                  output=str(run.dir(in_round("sample", r)) / "candidates.jsonl"))


def execute_sample(run: Run, cfg: Any) -> str:
    path = sampling.run(cfg)
    rows = [json.loads(line) for line in Path(path).open() if line.strip()]
    # fewer than prompts x k where empty responses were dropped
    return f"{sum(len(r['responses']) for r in rows)} responses ({len(rows)} prompts, k={cfg.k})"


# label --------------------------------------------------------------------------------------
def configure_label(run: Run, r: int = 1) -> Any:
    candidates = str(run.dir(in_round("sample", r)) / "candidates.jsonl")
    if run.cfg.task.labels == HUMAN:
        # the database lives outside label/, which a changed config would wipe: people's
        # labels are never thrown away (each round's candidates are a project of their own)
        return {"human": dataclasses.asdict(run.cfg.human),
                "db": run.cfg.human.db or str(run.root / "labels.db"),
                "candidates": candidates, "output": str(run.labels_of(r))}
    if run.cfg.task.labels:
        return {"labels": run.cfg.task.labels}
    return _wired(run, "label", candidates=candidates, output=str(run.labels_of(r)),
                  gold=run.gold)


def label_inputs(run: Run) -> list[str]:
    return [run.cfg.task.labels] if run.cfg.task.labels not in ("", HUMAN) else []


def execute_label(run: Run, cfg: Any, r: int = 1) -> str:
    if isinstance(cfg, dict) and "human" in cfg:
        from tether.labeling.collect import collect

        summary = collect(Path(cfg["candidates"]), Path(cfg["output"]),
                          HumanLabelsConfig(**cfg["human"]), cfg["db"])
    elif isinstance(cfg, dict):  # people's labels: copied, so the run directory is complete
        run.labels.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg["labels"], run.labels)
        rows = sum(1 for line in run.labels.open() if line.strip())
        return f"{rows} rows of people's labels from {cfg['labels']}"
    else:
        simulate_labels(cfg)
        stats = json.loads(stats_path_for(run.labels_of(r)).read_text())
        agreement = stats["agreement_with_gold"]
        summary = (f"{stats['rows']} {stats['format']} from a simulated labeler; agreement "
                   f"with gold " + ("n/a" if agreement is None else f"{agreement:.3f}"))
    if r > 1 and run.labels_of(r).exists():  # round r's RM learns from every round's labels
        rows = [line for k in range(1, r + 1) for line in
                run.labels_of(k).read_text(encoding="utf-8").splitlines() if line.strip()]
        atomic_write_text(run.rm_data(r), "".join(line + "\n" for line in rows))
        summary += f"; {len(rows)} rows in all rounds so far"
    return summary


# rm -----------------------------------------------------------------------------------------
def configure_rm(run: Run, r: int = 1) -> Any:
    backbone = run.cfg.rm.model.name
    values = {"model__name": run.policy} if backbone == "sft" else {}
    return _wired(run, "rm", run_dir=str(run.dir(in_round("rm", r))),
                  data__train=str(run.rm_data(r)), **values)


def check_rm(run: Run, rm_stage: str = "rm") -> None:
    """Before the first stage that optimises the reward model (PPO, else best-of-n): stop
    (rm_check=stop) or warn when its held-out accuracy cannot be told from chance."""
    path = run.dir(rm_stage) / "eval.json"
    warning = path.exists() and at_chance(json.loads(path.read_text())["metrics"])
    if not warning:
        return
    if run.cfg.rm_check == "stop":
        raise WeakRewardModel(f"{warning} Stopped before PPO and best-of-n; every finished "
                              f"stage is kept. Rerun with rm_check=warn to go on anyway.")
    print(f"warning: {warning}", flush=True)


def execute_rm(run: Run, cfg: Any) -> str:
    rm.train(cfg)
    path = Path(cfg.run_dir) / "eval.json"
    if not path.exists():
        return "trained (no held-out labels)"
    report = json.loads(path.read_text())
    m = report["metrics"]
    text = (f"held-out accuracy {m[EVAL_ACCURACY]:.3f} [{m[EVAL_ACCURACY_CI_LO]:.3f}, "
            f"{m[EVAL_ACCURACY_CI_HI]:.3f}]")
    if EVAL_LABEL_GOLD_AGREEMENT in m:
        text += f" (the labels' own agreement with gold: {m[EVAL_LABEL_GOLD_AGREEMENT]:.3f})"
    if report.get("kept_step") is not None:
        text += f"; the weights of step {report['kept_step']} (train.keep_best)"
    return text


# ppo, dpo -----------------------------------------------------------------------------------
# In round r both start from their own previous round's policy, which is also their reference
# (iterated DPO and PPO: each round moves a bounded KL from the last); PPO trains on every
# training prompt against round r's reward model, DPO on round r's labels.
def configure_ppo(run: Run, r: int = 1) -> Any:
    return _wired(run, "ppo", run_dir=str(run.dir(in_round("ppo", r))),
                  model__name=run.start("ppo", r),
                  reward__model=str(run.dir(in_round("rm", r)) / "final"), reward__gold=run.gold,
                  rollout__prompts=str(run.prompts), eval_prompts=str(run.heldout))


def configure_dpo(run: Run, r: int = 1) -> Any:
    return _wired(run, "dpo", run_dir=str(run.dir(in_round("dpo", r))),
                  model__name=run.start("dpo", r), data__train=str(run.labels_of(r)),
                  sampled_eval__prompts=str(run.heldout), sampled_eval__gold=run.gold,
                  sampled_eval__reward_model=str(run.dir(in_round("rm", r)) / "final"))


def _trajectory_summary(run_dir: Path) -> str:
    evals = [m for m in read_metrics(run_dir / "metrics.jsonl") if EVAL_GOLD in m
             or EVAL_PROXY in m]
    if not evals:
        return "trained"
    first, last = evals[0], evals[-1]
    parts = [f"{label} {first[name]:.2f} -> {last[name]:.2f}"
             for label, name in (("gold", EVAL_GOLD), ("proxy", EVAL_PROXY)) if name in last]
    return ", ".join(parts) + f", KL {last.get(EVAL_KL, float('nan')):.1f} (held-out samples)"


def execute_ppo(run: Run, cfg: Any) -> str:
    ppo.train(cfg)
    return _trajectory_summary(Path(cfg.run_dir))


def execute_dpo(run: Run, cfg: Any) -> str:
    dpo.train(cfg)
    return _trajectory_summary(Path(cfg.run_dir))


# kto ----------------------------------------------------------------------------------------
def thumbs_path(run: Run, r: int = 1) -> Path:
    """What KTO trains on in round r: people's thumbs from the label stage where they rate;
    else thumbs made in the kto stage's directory (simulated, or unpaired from rankings)."""
    if people_rate(run.cfg):
        return run.dir(in_round("label", r)) / THUMBS
    return run.dir(in_round("kto", r)) / THUMBS


def configure_kto(run: Run, r: int = 1) -> Any:
    rm_final = "" if "rm" in run.skipped else str(run.dir(in_round("rm", r)) / "final")
    scored = run.gold or rm_final  # with neither (people's thumbs alone) no sampled eval
    return _wired(run, "kto", run_dir=str(run.dir(in_round("kto", r))),
                  model__name=run.start("kto", r), data__train=str(thumbs_path(run, r)),
                  sampled_eval__prompts=str(run.heldout) if scored else "",
                  sampled_eval__gold=run.gold, sampled_eval__reward_model=rm_final)


def execute_kto(run: Run, cfg: Any, r: int = 1) -> str:
    """KTO on thumbs, from the SFT policy as DPO (in round r, on round r's candidates, from
    KTO's previous policy). The thumbs: people's (human.mode rate or both); with simulated
    labels, one on each candidate that the label stage ranked (its rater, with the median
    gold score as the bar); else people's rankings unpaired (best up, worst down)."""
    path = thumbs_path(run, r)
    simulated = not run.cfg.task.labels
    if not path.exists():  # a resumed stage keeps the thumbs its checkpoints trained on
        if simulated:
            candidates = run.dir(in_round("sample", r)) / "candidates.jsonl"
            simulate_labels(dataclasses.replace(
                run.cfg.label, format="thumbs", threshold=None, candidates=str(candidates),
                output=str(path), gold=run.gold))
        else:
            ranked = [json.loads(line) for line in run.labels_of(r).open(encoding="utf-8")
                      if line.strip()]
            atomic_write_jsonl(path, [row for ranking in ranked for row in kto_rows(ranking)])
    kto.train(cfg)
    if simulated:
        stats = json.loads(stats_path_for(path).read_text())
        agreement = stats["agreement_with_gold"]
        made = (f"{stats['thumbs_up']} thumbs up, {stats['thumbs_down']} down (agreement with "
                f"gold " + ("n/a" if agreement is None else f"{agreement:.3f}") + ")")
    else:
        labels = [json.loads(line)["label"] for line in path.open(encoding="utf-8")
                  if line.strip()]
        source = "people's thumbs" if people_rate(run.cfg) else "people's rankings, unpaired"
        made = f"{sum(labels)} thumbs up, {len(labels) - sum(labels)} down ({source})"
    return made + "; " + _trajectory_summary(Path(cfg.run_dir))


# eval ---------------------------------------------------------------------------------------
def configure_eval(run: Run) -> dict:
    return {"eval": dataclasses.asdict(run.cfg.eval), "gold": run.gold,
            "policies": [name for name in ("ppo", "dpo", "kto") if name not in run.skipped]}


def rounds_summary(run: Run) -> list[dict]:
    """Per round: the labels' agreement with gold, the reward model's held-out accuracy, and
    where PPO's and DPO's held-out samples ended (gold, proxy; KL to that round's start)."""
    rows = []
    for r in range(1, run.rounds + 1):
        row: dict = {"round": r}
        stats = stats_path_for(run.labels_of(r))
        if stats.exists():
            row["label_agreement"] = json.loads(stats.read_text())["agreement_with_gold"]
        rm_eval = run.dir(in_round("rm", r)) / "eval.json"
        if rm_eval.exists():
            row["rm_accuracy"] = json.loads(rm_eval.read_text())["metrics"][EVAL_ACCURACY]
        for algo in ("ppo", "dpo", "kto"):
            path = run.dir(in_round(algo, r)) / "metrics.jsonl"
            evals = [m for m in read_metrics(path) if EVAL_GOLD in m or EVAL_PROXY in m] \
                if path.exists() else []
            if evals:
                row[algo] = {key: evals[-1].get(name) for key, name in
                             (("gold", EVAL_GOLD), ("proxy", EVAL_PROXY), ("kl", EVAL_KL))}
        rows.append(row)
    return rows


def execute_eval(run: Run, cfg: dict) -> str:
    """Every policy on the same held-out prompts (tether eval), best-of-n from the SFT policy,
    and the reward-KL frontier of PPO's and DPO's evaluations during training."""
    ecfg, out = run.cfg.eval, run.dir("eval")
    start = run.policy_name
    names = [start, *cfg["policies"]]
    policies = [run.policy] + [run.final_of(name) for name in cfg["policies"]]
    has_rm = Path(run.reward_model).exists()
    eval_cfg = EvalConfig(
        policies=",".join(policies), names=",".join(names), reference=run.policy,
        baseline=start, prompts=str(run.heldout), num_prompts=ecfg.num_prompts, n=ecfg.n,
        max_new_tokens=ecfg.max_new_tokens, batch_size=ecfg.batch_size, gold=run.gold,
        reward_model=run.reward_model if has_rm else "", output=str(out / "policies.json"),
        bf16=ecfg.bf16, device=ecfg.device, seed=ecfg.seed)
    eval_cfg.validate()
    evaluate.run(eval_cfg)
    result = json.loads((out / "policies.json").read_text())
    summaries = {name: p["summary"] for name, p in result["policies"].items()}

    points, causes = [], {}
    for name in cfg["policies"]:
        metrics = read_metrics(run.dir(in_round(name, run.rounds)) / "metrics.jsonl")
        if run.rounds == 1:  # later rounds measure KL to their own start, not to SFT
            points += trajectory_points(name, metrics)
        found = health_findings(metrics)  # a likelier cause than the reward model, if any
        causes[name] = "; its own checks flagged: " + "; ".join(found) if found else ""
    bon = None
    if ecfg.best_of_n and has_rm:
        bon = _sample_best_of_n(run, ecfg)
        points += best_of_n_points(bon)
    records = [r for p in result["policies"].values() for r in p["samples"]]
    bias = None
    if records and all(r["proxy"] is not None and r["gold"] is not None for r in records):
        bias = length_bias([r["proxy"] for r in records], [r["gold"] for r in records],
                           [r["num_tokens"] for r in records])
    frontier = {"points": points, "fits": fit_points(points), "best_of_n": bon,
                "warnings": hacking_warnings(points, summaries, causes), "length_bias": bias}
    atomic_write_text(out / "frontier.json", json.dumps(frontier, indent=1) + "\n")
    if run.rounds > 1:
        atomic_write_text(out / "rounds.json", json.dumps(rounds_summary(run), indent=1) + "\n")
    for warning in frontier["warnings"]:
        print(f"warning: {warning}")

    if summaries[start]["gold"] is None:  # people's labels and no gold scorer
        if summaries[start]["proxy"] is None:  # nor a reward model (people gave thumbs)
            return "no gold scorer or reward model; KL to the start: " + ", ".join(
                f"{n} {summaries[n]['kl']['mean']:.2f}" for n in cfg["policies"])
        return "proxy: " + ", ".join(f"{n} {summaries[n]['proxy']['mean']:.2f}" for n in names)
    base = summaries[start]["gold"]["mean"]
    gains = [f"{n} {summaries[n]['gold']['mean']:.2f}"
             + ("" if n == start else f" ({summaries[n]['gold']['mean'] - base:+.2f})")
             for n in names]
    return f"gold on {summaries[start]['prompts']} held-out prompts: " + ", ".join(gains)


def _sample_best_of_n(run: Run, ecfg: Any) -> dict:
    rows = load_prompts(str(run.heldout), ecfg.best_of_n_prompts)[0]
    messages = [r.messages for r in rows]
    tokenizer = load_tokenizer(run.policy)
    chat = wants_chat_template(tokenizer, "auto")
    prompt_ids = encode_prompts(tokenizer, messages, chat, 256)[0]
    device = pick_device(ecfg.device)
    reward_model = RewardModel.from_pretrained(run.reward_model).to(device)
    model = load_causal_lm(run.policy).to(device)
    params = SamplingParams(max_new_tokens=ecfg.max_new_tokens)
    with tqdm(total=len(rows), desc=f"best-of-{ecfg.best_of_n}", unit="prompt",
              dynamic_ncols=True) as bar:
        return sample_best_of_n(model, tokenizer, prompt_ids, messages, n=ecfg.best_of_n,
                                params=params, seed=ecfg.seed,
                                gold=load_gold_scorer(run.gold) if run.gold else None,
                                reward_model=reward_model, bf16=ecfg.bf16, progress=bar.update,
                                prompt_rows=rows)


# report -------------------------------------------------------------------------------------
def execute_report(run: Run, _: dict) -> str:
    return f"wrote {write_run_report(run.root)}"


STAGES = [
    Stage("data", (), configure_data, execute_data, data_inputs),
    Stage("sft", ("data",), configure_sft, execute_sft),
    Stage("sample", ("sft", "data"), configure_sample, execute_sample),
    Stage("label", ("sample",), configure_label, execute_label, label_inputs),
    Stage("rm", ("label", "sft"), configure_rm, execute_rm),
    Stage("ppo", ("rm", "sft", "data"), configure_ppo, execute_ppo),
    Stage("dpo", ("label", "rm", "sft", "data"), configure_dpo, execute_dpo),
    # The thumbs come from the label stage's rater settings: a change there reruns kto.
    Stage("kto", ("sample", "label", "rm", "sft", "data"), configure_kto, execute_kto),
    Stage("eval", ("ppo", "dpo", "kto", "rm", "sft", "data"), configure_eval, execute_eval),
    # The report reads everything and takes seconds: it is written anew on every run.
    Stage("report", (), lambda run: {}, execute_report),
]
assert tuple(s.name for s in STAGES) == PIPELINE_STAGES


def round_stages(r: int, lead: str) -> list[Stage]:
    """Round r (from 2): sample the newest policy (lead's), label, retrain the reward model on
    every label so far, and continue PPO, DPO (and KTO) from their previous round."""
    def name(stage: str, k: int = r) -> str:
        return in_round(stage, k)

    def configured(fn):
        return functools.partial(fn, r=r)

    return [
        Stage(name("sample"), (name(lead, r - 1), "data"),
              configured(configure_sample), execute_sample, base="sample"),
        Stage(name("label"), (name("sample"), name("label", r - 1)), configured(configure_label),
              functools.partial(execute_label, r=r), base="label"),
        Stage(name("rm"), (name("label"), "sft"), configured(configure_rm), execute_rm,
              base="rm"),
        Stage(name("ppo"), (name("rm"), name("ppo", r - 1), "data"), configured(configure_ppo),
              execute_ppo, base="ppo"),
        Stage(name("dpo"), (name("label"), name("rm"), name("dpo", r - 1), "data"),
              configured(configure_dpo), execute_dpo, base="dpo"),
        Stage(name("kto"), (name("sample"), name("label"), name("rm"), name("kto", r - 1),
                            "data"), configured(configure_kto),
              functools.partial(execute_kto, r=r), base="kto"),
    ]


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _resumable(stage_dir: Path, tag: str) -> bool:
    """Whether a killed stage can resume: not when every checkpoint it left is damaged (the
    pipeline then runs it again from the start, where `tether <stage> resume=true` stops)."""
    found = list_checkpoints(stage_dir)
    damaged = [f"{c.name}: {why}" for c in found if (why := damage(c))]
    if found and len(damaged) == len(found):
        print(f"{tag}: warning: no intact checkpoint to resume from ({'; '.join(damaged)}); "
              f"running the stage again from the start", flush=True)
        return False
    return True


def run(cfg: PipelineConfig) -> Path:
    """Run every stage that is not already done; return the report's path."""
    pipeline = Run(cfg)
    for note in pipeline.notes:
        print(f"note: {note}", flush=True)
    stages = pipeline.stages()
    # Every stage's config is built (and checked) before the first one runs: a mistake in
    # the DPO options should not surface after twenty minutes of SFT and PPO.
    configs = {s.name: s.configure(pipeline) for s in stages}
    forced = set(cfg.stage_list("rerun"))
    pipeline.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pipeline.root / "config.yaml", to_yaml(pipeline.cfg))

    # the stages that first optimise each round's reward model: PPO, else the evaluation's
    # best-of-n (the last round's)
    optimiser = {in_round("ppo", r): in_round("rm", r) for r in range(1, pipeline.rounds + 1)} \
        if "ppo" not in pipeline.skipped else \
        {"eval": in_round("rm", pipeline.rounds)} if cfg.eval.best_of_n else {}
    versions: dict[str, str] = {}  # what each stage's outputs are, for the stages reading them
    started_all = time.perf_counter()
    for index, stage in enumerate(stages, 1):
        if stage.name in optimiser:
            check_rm(pipeline, optimiser[stage.name])
        key = pipeline.key(stage, configs[stage.name], versions)
        state = pipeline.state["stages"].get(stage.name, {})
        tag = f"[{index}/{len(stages)}] {stage.name}"
        same = state.get("key") == key
        outputs = stage.name == "report" or pipeline.dir(stage.name).is_dir()
        if same and state.get("status") == "done" and outputs and stage.base not in forced \
                and stage.name != "report":
            versions[stage.name] = state.get("version", key)
            print(f"{tag}: unchanged, skipped. {state['summary']}", flush=True)
            continue
        resuming = same and state.get("status") == "running" and \
            _resumable(pipeline.dir(stage.name), tag)
        if not resuming and pipeline.dir(stage.name).exists():
            shutil.rmtree(pipeline.dir(stage.name))  # outputs of another config: start over
        cfg_now = configs[stage.name]
        if dataclasses.is_dataclass(cfg_now) and hasattr(cfg_now, "resume"):
            cfg_now.resume = resuming  # trainers continue from their newest checkpoint
        print(f"\n{tag}: {'resuming' if resuming else 'running'}", flush=True)
        earlier = state.get("seconds", 0.0) if resuming else 0.0
        pipeline.state["stages"][stage.name] = {"key": key, "status": "running",
                                                "seconds": earlier, "summary": ""}
        pipeline.save_state()
        started = time.perf_counter()
        summary = stage.execute(pipeline, cfg_now)
        seconds = earlier + time.perf_counter() - started
        # A finished stage reruns from the start if it reruns at all: its checkpoints (the
        # optimizer state makes them several times the model's size) are dead weight now.
        shutil.rmtree(pipeline.dir(stage.name) / CHECKPOINTS, ignore_errors=True)
        # New outputs: every stage reading them sees a new version and runs again.
        version = hashlib.sha256(f"{key}{time.time()}".encode()).hexdigest()[:16]
        versions[stage.name] = version
        pipeline.state["stages"][stage.name] = {"key": key, "version": version,
                                                "status": "done", "seconds": seconds,
                                                "summary": summary}
        pipeline.save_state()
        print(f"{tag} done in {_duration(seconds)}: {summary}", flush=True)

    print(f"\n# tether run: {pipeline.root} ({_duration(time.perf_counter() - started_all)} "
          f"this time)")
    done = pipeline.state["stages"]
    width = max(len(s.name) for s in stages)
    for s in stages:
        st = done.get(s.name, {})
        print(f"  {s.name:<{width}}  {_duration(st.get('seconds', 0.0)):>9}  "
              f"{st.get('summary', '')}")
    total = sum(done.get(s.name, {}).get("seconds", 0.0) for s in stages)
    print(f"  {'total':<{width}}  {_duration(total):>9}")
    return pipeline.root / "report.html"
