"""A run directory: the resolved config, the metrics log, checkpoints and final/."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.config import to_yaml
from tether.errors import UserError
from tether.files import atomic_write_text, check_dir
from tether.metric_names import current_names
from tether.tracking import open_trackers


def prepare_run_dir(run_dir: str, resume: bool, write: bool = True
                    ) -> tuple[Path, Path | None]:
    """Check the run directory; return it and the checkpoint to resume from (the newest
    intact one; None for a fresh start). Refuses to silently overwrite someone's earlier run.
    Nothing is written here: the directory and config.yaml wait until the data has been
    checked and the checkpoint restored (write_config), so a run that stops on bad input
    leaves no empty directory and a resume that fails leaves the run as it was.
    write=False (ranks other than 0 under torchrun): no messages."""
    # Imported here: tether.checkpoint needs torch, and reading a run's metrics (tether report)
    # must not pay seconds for it.
    from tether.checkpoint import latest_checkpoint, latest_intact_checkpoint

    path = Path(run_dir)
    if latest_checkpoint(path) is not None and not resume:
        raise UserError(f"{path} already holds checkpoints of a run; pass resume=true to "
                        f"continue it, or choose another run_dir")
    checkpoint, skipped = latest_intact_checkpoint(path) if resume else (None, [])
    if not write:
        return path, checkpoint
    for line in skipped:
        print(f"warning: skipped a damaged checkpoint, {line}")
    if resume and checkpoint is None:
        print(f"resume=true, but {path} has no checkpoint yet: starting from the beginning")
    return check_dir(path), checkpoint


def write_config(run_dir: Path, cfg: Any) -> None:
    """The run's resolved configuration, run_dir/config.yaml."""
    atomic_write_text(Path(run_dir) / "config.yaml", to_yaml(cfg))


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl, and sends the numbers to the
    experiment trackers of `report_to` (tether.tracking: TensorBoard, W&B) with `config` as
    their hyperparameters.

    On resume the lines after the checkpoint's step are dropped first: those steps are about
    to be run again, and a curve must not show them twice."""

    def __init__(self, path: Path, resume_step: int | None = None,
                 report_to: Sequence[str] = (), config: Any = None):
        self.path = Path(path)
        logged_until = None
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            rows = _rows(self.path)
            logged_until = max((row.get("step", 0) for _, row in rows), default=None)
            kept = [line for line, row in rows if row.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.trackers = open_trackers(report_to, self.path.parent, config, resume_step,
                                      logged_until) if report_to else []
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {}
        for key, value in metrics.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else str(value)
        self.write(step, row)
        numbers = {key: float(value) for key, value in metrics.items()}
        for tracker in self.trackers:
            tracker.log(step, numbers)

    def write(self, step: int, record: dict) -> None:
        """Any JSON-serialisable record (e.g. sample responses), stamped with step and time."""
        row = {"step": step, "time": round(time.time(), 3), **record}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.close()


class NullLog:
    """The metrics log of ranks other than 0 under torchrun: rank 0 writes for everyone."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def write(self, step: int, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) for each row of a JSONL log. A run killed while appending leaves its last
    line cut short: that line is left out (its step runs again on resume)."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines):
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if n < len(lines) - 1:  # damage elsewhere than at the end is not a kill's
                raise
    return rows


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, old metric names read as today's (metric_names.RENAMED)."""
    return [current_names(row) for _, row in _rows(path)]
