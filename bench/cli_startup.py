"""Start-up time of the read-only commands: `--help`, label stats, label export, report.

Each command runs in a fresh `python -m tether` process, --repeats times, interleaved (every
command once, then again), on small inputs made for the benchmark (a labeling database with
two annotators' labels, a pipeline run directory, an SFT run directory): what is timed is
almost all Python start-up and imports. Prints the median (min-max) wall time of each and
whether the process imported torch or transformers (from a `python -X importtime` run).
--root times another checkout of tether (e.g. an older commit's, for a before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "datasets")
REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=REPO,
                        help="checkout of tether to time (put first on PYTHONPATH)")
    parser.add_argument("--all-help", action="store_true",
                        help="time every command's --help, not only a few")


def make_inputs(where: Path) -> dict[str, list[str]]:
    """Small inputs under `where` for each read-only command; returns name -> argv."""
    from tether.labeling.projects import create_project
    from tether.labeling.store import Store

    db = where / "labels.db"
    store = Store(str(db))
    project = create_project(store, "bench", [(f"item {i}", {
        "prompt": f"Write a review of film {i}.",
        "responses": [f"A fine film, number {i}.", f"A dull film, number {i}."]})
        for i in range(40)], overlap=2)
    for name in ("alice", "bob"):
        store.add_annotator(name)
        annotator = next(a for a in store.annotators() if a.name == name)
        while (item := store.next_item(project, annotator)) is not None:
            store.submit(project, annotator, item.assignment, "rank", [0, 1])
    store.close()

    pipeline = where / "pipeline"
    (pipeline / "sft").mkdir(parents=True)
    (pipeline / "pipeline.json").write_text(json.dumps({"stages": {
        "sft": {"status": "done", "seconds": 12.0, "summary": "final loss 1.2"}}}))
    sft = where / "sft"
    sft.mkdir()
    rows = [{"step": s, "time": 1000.0 + s, "loss/train": 3.0 / s, "optim/lr": 1e-5,
             "optim/grad_norm": 1.0 + 1 / s, "perf/step_s": 0.5} for s in range(1, 201)]
    metrics = "".join(json.dumps(r) + "\n" for r in rows)
    (pipeline / "sft" / "metrics.jsonl").write_text(metrics)
    (sft / "metrics.jsonl").write_text(metrics)
    (sft / "config.yaml").write_text("run_dir: sft\ndata:\n  train: x.jsonl\ntrain:\n"
                                     "  max_steps: 200\n")
    return {"label stats": ["label", "stats", f"db={db}", "project=bench"],
            "label export": ["label", "export", f"db={db}", "project=bench",
                             f"output={where / 'labels.jsonl'}"],
            "report (pipeline)": ["report", str(pipeline)],
            "report (sft run)": ["report", str(sft)]}


def help_commands(every: bool) -> dict[str, list[str]]:
    from tether.cli import STAGES

    groups = sorted({name.split()[0] for name in STAGES if " " in name})  # `tether label`
    names = [*STAGES, *groups] if every else ["sft", "ppo", "run", "label stats"]
    return {"--help": ["--help"], **{f"{name} --help": [*name.split(), "--help"]
                                     for name in names}}


def _env(root: Path) -> dict[str, str]:
    # `python -m` also puts the working directory first on the path: both are `root`.
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}


def time_once(argv: list[str], root: Path) -> tuple[float, str]:
    """Wall seconds of one run, and how it failed ("" if it did not)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tether", *argv], env=_env(root),
                          cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    failed = "" if done.returncode == 0 else \
        f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:100]}"
    return elapsed, failed


def heavy_imports(argv: list[str], root: Path) -> list[str]:
    """Which of HEAVY the command imports, from `python -X importtime`'s report."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tether", *argv],
                          env=_env(root), cwd=root, capture_output=True, text=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    return [name for name in HEAVY if name in imported]


def run(args: argparse.Namespace) -> None:
    from bench import machine, save_results, spread

    with tempfile.TemporaryDirectory() as tmp:
        commands = {**help_commands(args.all_help), **make_inputs(Path(tmp))}
        times: dict[str, list[float]] = {name: [] for name in commands}
        failed = {name: time_once(argv, args.root)[1] for name, argv in commands.items()}
        for _ in range(args.repeats):  # after the warm-up above: file cache and .pyc files
            for name, argv in commands.items():
                if not failed[name]:
                    times[name].append(time_once(argv, args.root)[0])
        heavy = {name: heavy_imports(argv, args.root) for name, argv in commands.items()}
    figures = {"root": str(args.root), "repeats": args.repeats, "commands": {
        name: {**({k: round(v, 3) for k, v in spread(ts).items()} if ts
                  else {"failed": failed[name]}), "imports": heavy[name]}
        for name, ts in times.items()}, "machine": machine()}
    print(f"tether at {args.root}; wall seconds of a fresh `python -m tether` process, median "
          f"(min-max) of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    width = max(map(len, commands))
    for name, ts in times.items():
        if not ts:
            print(f"  tether {name:<{width}}  {failed[name]}")
            continue
        imports = ", ".join(heavy[name]) or "none of " + "/".join(HEAVY)
        print(f"  tether {name:<{width}}  {statistics.median(ts):6.2f} s "
              f"({min(ts):.2f}-{max(ts):.2f})  imports {imports}")
    save_results("cli-startup", figures)
