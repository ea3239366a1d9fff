"""Reward-model quality with `tether rm`'s defaults: held-out accuracy and Spearman with gold.

Trains `tether rm` on simulated labels over several seeds, for each labels file and backbone
given, with the defaults (plus --set overrides, e.g. the settings they replaced), and prints
per run and per (task, backbone) the held-out pairwise accuracy against the labels, the labels'
own agreement with gold (the accuracy a gold-perfect reward model would reach), the accuracy
against gold and Spearman(reward, gold) over the held-out responses.

The labels come from a pipeline run that stopped after its label stage, e.g.
    tether run task.name=answers skip=ppo,dpo run_dir=runs/answers   (Ctrl-C once labelled)
and the policy backbone is that run's SFT model (sft/final). The last --eval-prompts rows are
held out (the same for every run); the rest train. Results go to bench/results/.

--pipeline-split trains instead on every label row with `tether run`'s own split
(data.eval_fraction=0.2: a different fifth of the prompts held out for each seed), so the
figures are those of the pipeline's reward-model stage.

--validation-prompts N holds the last N training rows out as the run's own data.eval (what
train.keep_best chooses on, as the pipeline's data.eval_fraction split is), and the final
reward model is then scored on the test rows apart: the selection never sees them.
    python -m bench rm-quality runs/sentiment --backbones minilm-l6 --validation-prompts 38 \
        --set train.keep_best=true --set train.eval_every=6

--folds N holds out N blocks of --eval-prompts rows in turn (fold 0 the last block, fold 1 the
one before, ...), training on the rest each time: 4 folds of 64 over 256 prompts score every
prompt once, so the held-out figures rest on four times the pairs of one block.

--ema D1,D2 also scores, from the same runs, an exponential moving average of the trained
weights (w_avg <- D w_avg + (1 - D) w after each step, from the starting weights): a paired
comparison at no extra training.

--label-draws 1,2 also labels each run's candidates (sample/candidates.jsonl) again with its
pipeline's simulated labeler under those seeds, and trains on each draw as a task of its own
(named RUN-drawD): a new draw of labels moves the figures more than a new train seed does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from bench import save_results
from tether.config import DataConfig, RMConfig, SimulateLabelsConfig, load_config
from tether.config.loader import RESOLVED
from tether.data.preferences import load_preference_data
from tether.eval.rm import evaluate_preferences
from tether.labeling.commands import simulate_labels
from tether.metric_names import (
    EVAL_ACCURACY,
    EVAL_ACCURACY_VS_GOLD,
    EVAL_LABEL_GOLD_AGREEMENT,
    EVAL_LOSS,
    EVAL_SPEARMAN_GOLD,
)
from tether.models.reward import RewardModel
from tether.trainers import rm
from tether.trainers.common import Hooks

# The columns of a result row, from the reward model's held-out metrics.
METRICS = {"accuracy": EVAL_ACCURACY, "label_gold_agreement": EVAL_LABEL_GOLD_AGREEMENT,
           "accuracy_vs_gold": EVAL_ACCURACY_VS_GOLD, "spearman_gold": EVAL_SPEARMAN_GOLD,
           "loss": EVAL_LOSS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="pipeline run directories holding "
                                                "label/labels.jsonl (and sft/final)")
    parser.add_argument("--backbones", default="minilm-l6,sft",
                        help="comma-separated: model names, or 'sft' for the run's SFT model")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    parser.add_argument("--eval-prompts", type=int, default=64,
                        help="the last this many label rows are held out")
    parser.add_argument("--train-prompts", type=int, default=0,
                        help="train on the first this many of the rest (0: all of them)")
    parser.add_argument("--validation-prompts", type=int, default=0,
                        help="hold the last this many training rows out as data.eval, and "
                             "score the final model on the test rows apart (0: data.eval is "
                             "the test rows)")
    parser.add_argument("--pipeline-split", action="store_true",
                        help="train on every row and hold out the pipeline's fifth "
                             "(data.eval_fraction=0.2, drawn by train.seed), not the last "
                             "--eval-prompts")
    parser.add_argument("--folds", type=int, default=1,
                        help="hold out this many blocks of --eval-prompts rows in turn")
    parser.add_argument("--ema", default="",
                        help="comma-separated decays: also score each moving average of the "
                             "weights, from the same runs")
    parser.add_argument("--label-draws", default="",
                        help="comma-separated labeler seeds: also train on the run's "
                             "candidates labelled again with each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (repeatable), e.g. optim.lr=1e-5")


def _label_sets(runs: list[str], draws: str, out: Path) -> list[tuple[str, Path, Path]]:
    """(task name, labels file, run directory) for each run's own labels and, for each seed
    in `draws`, its candidates labelled again by the run's simulated labeler with that seed."""
    sets = []
    for run in map(Path, runs):
        sets.append((run.name, run / "label" / "labels.jsonl", run))
        labeler = yaml.safe_load((run / "config.yaml").read_text())["label"] if draws else {}
        for draw in (int(d) for d in draws.split(",") if d):
            labeler.update(candidates=str(run / "sample" / "candidates.jsonl"), seed=draw,
                           output=str(out / f"{run.name}-draw{draw}.jsonl"))
            settings = out / f"{run.name}-draw{draw}.yaml"
            settings.write_text(RESOLVED + yaml.safe_dump(labeler))  # its paths are absolute
            cfg = load_config(SimulateLabelsConfig, str(settings))
            with open(out / "log.txt", "w") as log, contextlib.redirect_stdout(log):
                sets.append((f"{run.name}-draw{draw}", simulate_labels(cfg), run))
    return sets


def _split(labels: Path, out: Path, eval_prompts: int, train_prompts: int,
           validation_prompts: int, fold: int = 0) -> tuple[Path, Path, Path]:
    """(train, validation, test) files; validation is the test file when not asked for. The
    test rows are the fold-th block of eval_prompts rows from the end."""
    rows = [line for line in labels.open() if line.strip()]
    end = len(rows) - fold * eval_prompts
    start = end - eval_prompts
    if start < 0:
        raise SystemExit(f"{labels}: {len(rows)} label rows hold no fold {fold} of "
                         f"{eval_prompts}")
    train = (rows[:start] + rows[end:])[:train_prompts or None]
    validation = train[len(train) - validation_prompts:] if validation_prompts else []
    paths = [out / f"{labels.stem}-{part}.jsonl" for part in ("train", "validation", "test")]
    paths[0].write_text("".join(train[:len(train) - validation_prompts]))
    paths[1].write_text("".join(validation))
    paths[2].write_text("".join(rows[start:end]))
    return paths[0], paths[1] if validation_prompts else paths[2], paths[2]


class MovingAverages:
    """Exponential moving averages of a model's trainable weights, one per decay, as training
    hooks: each starts from the weights training starts from."""

    def __init__(self, decays: list[float]):
        self.decays, self.averages, self.params = decays, [], {}

    def started(self, model) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.averages = [{n: p.detach().clone() for n, p in self.params.items()}
                         for _ in self.decays]

    def stepped(self, step: int, metrics: dict) -> None:
        with torch.no_grad():
            for decay, average in zip(self.decays, self.averages, strict=True):
                for name, p in self.params.items():
                    average[name].lerp_(p.detach(), 1 - decay)

    def load(self, model, index: int) -> None:
        _, unexpected = model.load_state_dict(self.averages[index], strict=False)
        if unexpected:
            raise RuntimeError(f"moving average names the model lacks: {unexpected}")


def _score_on(final: Path, test: Path, seed: int, weights=None) -> dict[str, float]:
    """The held-out metrics of the reward model in `final` on the rows of `test`;
    weights(model), if given, loads other weights into it first."""
    model = RewardModel.from_pretrained(final)
    if weights is not None:
        weights(model.model)
    data = load_preference_data(DataConfig(train=str(test), eval_fraction=0.0,
                                           max_length=model.max_length), model.tokenizer,
                                seed, encode=model.encode)
    return evaluate_preferences(model, data.train, seed=seed)[0]


def run(args: argparse.Namespace) -> None:
    if args.pipeline_split and (args.validation_prompts or args.folds > 1):
        raise SystemExit("--pipeline-split holds out its own fifth: no --validation-prompts "
                         "or --folds")
    decays = [float(d) for d in args.ema.split(",") if d]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for (task, labels, run_dir), fold in (
                (s, f) for s in _label_sets(args.runs, args.label_draws, tmp)
                for f in range(args.folds)):
            train, held_out, test = _split(labels, tmp, args.eval_prompts, args.train_prompts,
                                           args.validation_prompts, fold)
            data = [f"data.train={train}", f"data.eval={held_out}"]
            if args.pipeline_split:
                data = [f"data.train={labels}", "data.eval_fraction=0.2"]
            for backbone in args.backbones.split(","):
                model = str(run_dir / "sft" / "final") if backbone == "sft" else backbone
                for seed in map(int, args.seeds.split(",")):
                    out = tmp / "run"
                    cfg = load_config(RMConfig, overrides=[
                        f"model.name={model}", *data, f"run_dir={out}", f"train.seed={seed}",
                        "train.save_every=0", *args.set])
                    averages = MovingAverages(decays)
                    started = time.perf_counter()
                    with open(tmp / "log.txt", "w") as log, contextlib.redirect_stdout(log), \
                            contextlib.redirect_stderr(log):
                        rm.train(cfg, Hooks(started=averages.started, stepped=averages.stepped))
                    seconds = time.perf_counter() - started
                    report = json.loads((out / "eval.json").read_text())
                    arms = [(backbone, report["metrics"] if not args.validation_prompts
                             else _score_on(out / "final", test, seed))]
                    arms += [(f"{backbone} ema{decay}",
                              _score_on(out / "final", test, seed, partial(averages.load, index=i)))
                             for i, decay in enumerate(decays)]
                    for name, metrics in arms:
                        row = {"task": task, "backbone": name, "fold": fold, "seed": seed,
                               "seconds": round(seconds, 1), "kept_step": report.get("kept_step"),
                               **{k: round(metrics[key], 4) for k, key in METRICS.items()}}
                        print(json.dumps(row), flush=True)
                        results.append(row)
                    shutil.rmtree(out)
    print(f"\n{'task':<12} {'backbone':<12} {'accuracy':>16} {'labels-gold':>12} "
          f"{'vs gold':>8} {'spearman':>16}")
    for task, backbone in dict.fromkeys((r["task"], r["backbone"]) for r in results):
        ours = [r for r in results if r["task"] == task and r["backbone"] == backbone]

        def mean_sd(key: str, rows: list[dict] = ours) -> str:
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.3f} +- {sd:.3f}"

        print(f"{task:<12} {backbone:<12} {mean_sd('accuracy'):>16} "
              f"{statistics.fmean(r['label_gold_agreement'] for r in ours):>12.3f} "
              f"{statistics.fmean(r['accuracy_vs_gold'] for r in ours):>8.3f} "
              f"{mean_sd('spearman_gold'):>16}")
    save_results("rm_quality", {"settings": args.set, "label_draws": args.label_draws,
                                "pipeline_split": args.pipeline_split,
                                "validation_prompts": args.validation_prompts,
                                "folds": args.folds, "ema": decays, "runs": results})
