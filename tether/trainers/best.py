"""The best held-out evaluation of a run, kept as a checkpoint (rm's train.keep_best).

A reward model trained for several passes over a few hundred prompts can start to fit its
labels' noise: its held-out loss falls, then rises (measured: README, Reward models). With
keep_best the loop offers every held-out evaluation here; a new lowest loss is written as a
full checkpoint in RUN_DIR/best/ (the one before it removed), and at the end the loop loads
those weights instead of the last step's. With patience it also stops once that many
evaluations in a row brought no new best.

RUN_DIR/best/evaluations.json lists every evaluation offered (step, value). A resumed run
keeps those up to the step it resumes from: it replays the same steps with the same data
and seeds, so it sees the same evaluations again and ends with the same choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tether.checkpoint import checkpoint_path
from tether.files import atomic_write_text

BEST = "best"
_EVALUATIONS = "evaluations.json"


class BestEvaluation:
    """The evaluations offered so far and the best of them (the lowest value)."""

    def __init__(self, run_dir: Path, metric: str, resume_step: int, write: bool = True):
        self.dir, self.metric, self.write = Path(run_dir) / BEST, metric, write
        path = self.dir / _EVALUATIONS
        past = json.loads(path.read_text())["evaluations"] if path.exists() else []
        self.evaluations: list[tuple[int, float]] = [
            (step, value) for step, value in past if step <= resume_step]

    @property
    def step(self) -> int | None:
        """The step of the best evaluation so far (the earliest of equals); None before any."""
        if not self.evaluations:
            return None
        return min(self.evaluations, key=lambda e: e[1])[0]

    @property
    def value(self) -> float:
        return min(value for _, value in self.evaluations)

    @property
    def since_best(self) -> int:
        """Evaluations after the best one."""
        steps = [step for step, _ in self.evaluations]
        return len(steps) - 1 - steps.index(self.step) if steps else 0

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.dir, self.step)

    def offer(self, step: int, value: float, save: Callable[[Path], object]) -> bool:
        """Record the evaluation at `step`; a new best is saved with save(RUN_DIR/best)
        (called on every rank: saving may be collective). Whether it was a new best."""
        better = not self.evaluations or value < self.value
        self.evaluations.append((step, value))
        if better:
            save(self.dir)
        if self.write:
            atomic_write_text(self.dir / _EVALUATIONS, json.dumps(
                {"metric": self.metric, "evaluations": self.evaluations}))
        return better

    def patience_spent(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience
