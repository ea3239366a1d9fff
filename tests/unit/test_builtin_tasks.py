"""What every built-in task promises the pipeline (tether.tasks.registry.TASKS): seeded,
deterministic prompts and demonstrations in the numbers asked for, and the shared command line
(tether.tasks.cli) that writes them. Each task's own file tests its templates and gold scorer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.tasks.registry import TASKS, Task, load_task, prompt_rows

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(TASKS))
def task(request):
    return load_task(request.param)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_task_has_what_a_task_provides(task):
    assert isinstance(task, Task)


def test_prompts_and_demonstrations_are_deterministic_per_seed(task):
    assert task.make_prompts(50, seed=3) == task.make_prompts(50, seed=3)
    assert task.make_prompts(50, seed=3) != task.make_prompts(50, seed=4)
    assert task.make_demonstrations(30, seed=3) == task.make_demonstrations(30, seed=3)
    assert task.make_demonstrations(30, seed=3) != task.make_demonstrations(30, seed=4)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 448])
def test_requested_counts(task, n):
    assert len(task.make_prompts(n)) == n
    assert len(task.make_demonstrations(n)) == n


def test_cli_writes_valid_jsonl(task, tmp_path):
    sft, prompts = tmp_path / "sft.jsonl", tmp_path / "sub" / "prompts.jsonl"
    task.main(["sft", str(sft), "--n", "12", "--seed", "5"])
    task.main(["prompts", str(prompts), "--n", "9"])
    assert read_jsonl(sft) == task.make_demonstrations(12, seed=5)
    assert read_jsonl(prompts) == prompt_rows(task, 9)
    assert [r["prompt"] for r in read_jsonl(prompts)] == task.make_prompts(9)
    rest = tmp_path / "rest.jsonl"
    task.main(["prompts", str(rest), "--n", "20", "--exclude", str(prompts)])
    assert len(read_jsonl(rest)) == 20
    assert not {r["prompt"] for r in read_jsonl(rest)} & {r["prompt"] for r in read_jsonl(prompts)}
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_runs_as_module(task, tmp_path):
    out = tmp_path / "p.jsonl"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", task.__name__, "--help"], check=True,
                          env=env, capture_output=True, text=True)
    assert "sft" in done.stdout and "prompts" in done.stdout
    subprocess.run([sys.executable, "-m", task.__name__, "prompts", str(out), "--n", "3"],
                   check=True, env=env, capture_output=True)
    assert len(read_jsonl(out)) == 3
