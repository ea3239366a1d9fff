"""`tether run` killed with SIGKILL at random moments and rerun each time ends with the same
outputs as a run never killed; so does one whose newest checkpoint is damaged between a kill
and the rerun. This is the README's "nothing half-written" promise, tested end to end."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import TINY

from tether.checkpoint import list_checkpoints

pytestmark = pytest.mark.kill

# Every stage's lasting output: weights, data, labels. (Timings, logs and the report, which
# shows timings, legitimately differ.)
OUTPUTS = ["data/prompts.jsonl", "sft/final/model.safetensors", "sample/candidates.jsonl",
           "label/labels.jsonl", "rm/final/model.safetensors", "ppo/final/model.safetensors",
           "dpo/final/model.safetensors"]
# Checkpoints every step, so kills land between, during and after checkpoint writes.
STEPS = ["sft.train.save_every=1", "ppo.train.save_every=1", "dpo.train.save_every=1",
         "dpo.train.max_steps=4"]


def _command(tmp_path: Path, run_dir: Path) -> list[str]:
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(TINY)
    return [sys.executable, "-m", "tether", "run", str(pipeline), f"run_dir={run_dir}", *STEPS]


def _run(cmd: list[str], kill_after: float = float("inf"), kill_when=lambda: False
         ) -> int | None:
    """The exit code, or None when killed (SIGKILL) after `kill_after` seconds or once
    `kill_when()` holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started = time.perf_counter()
    while proc.poll() is None:
        if time.perf_counter() - started > kill_after or kill_when():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.02)
    err = proc.stderr.read().decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    return proc.returncode


def _damage_newest_checkpoint(stage: Path) -> None:
    """Cut short the stage's newest checkpoint. The pipeline keeps one per stage: with none
    intact it runs the stage again from the start (`tether dpo resume=true` would stop, exit
    2, and fall back to an older one where there is one: tests/unit/test_reliability.py)."""
    state = list_checkpoints(stage)[-1] / "state.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 3)


@pytest.mark.parametrize("damage", [False, True])
def test_killed_pipeline_reruns_to_the_same_outputs(tmp_path, damage):
    whole = tmp_path / "whole"
    started = time.perf_counter()
    _run(_command(tmp_path, whole))
    duration = time.perf_counter() - started
    run_dir = tmp_path / "killed"
    if damage:  # killed during DPO, once it has a checkpoint, which is then damaged
        dpo = run_dir / "dpo"
        assert _run(_command(tmp_path, run_dir),
                    kill_when=lambda: len(list_checkpoints(dpo)) >= 1) is None
        _damage_newest_checkpoint(dpo)
    # Kill moments spread over a run (its first seconds are Python starting up).
    rng = random.Random(7 + damage)
    kills = [_run(_command(tmp_path, run_dir), kill_after=duration * rng.uniform(0.25, 0.75))
             for _ in range(3)]
    _run(_command(tmp_path, run_dir))
    assert None in kills  # else every run outpaced its kill and this tested nothing
    for name in OUTPUTS:  # (candidates name the policy that sampled them by its path)
        ours = (run_dir / name).read_bytes().replace(bytes(run_dir), bytes(whole))
        assert ours == (whole / name).read_bytes(), name
