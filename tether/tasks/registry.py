"""The built-in tasks by name, and what a task is (`Task`).

A task is a module that makes RL prompts and SFT demonstrations from templates and holds the
gold scorer, the hidden preference the simulated labeler and the evaluation read. `tether run`
with `task.name=NAME` builds its data from the task called NAME; `gold=NAME` (in `tether label
simulate`, `tether eval`, ...) names its gold scorer (tether.tasks.gold).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# name -> module, imported only when asked for.
TASKS = {"sentiment": "tether.tasks.sentiment", "answers": "tether.tasks.answers"}


@runtime_checkable
class Task(Protocol):
    """What a built-in task module provides. Each function is seeded and deterministic."""

    def make_prompts(self, n: int, seed: int = 0) -> list[str]: ...

    def make_demonstrations(self, n: int, seed: int = 0) -> list[dict[str, str]]: ...

    def gold_score(self, texts: Sequence[str]) -> list[float]: ...


def load_task(name: str) -> Task:
    """The built-in task called `name`, one of TASKS."""
    return importlib.import_module(TASKS[name])
