"""The built-in tasks by name, and what a task is (`Task`).

A task is a module that makes RL prompts and SFT demonstrations from templates and holds the
gold scorer, the hidden preference the simulated labeler and the evaluation read. `tether run`
with `task.name=NAME` builds its data from the task called NAME; `gold=NAME` (in `tether label
simulate`, `tether eval`, ...) names its gold scorer (tether.tasks.gold), and `NAME:function`
any other scorer of the task (`arithmetic:format_reward`).

A task whose prompts carry more than their text (`arithmetic`: the answer each is checked
against) also has `make_prompt_rows(n, seed)`, giving {"prompt", **columns} rows; its gold
scorer then takes the keyword form, which receives those columns.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

# name -> module, imported only when asked for.
TASKS = {"sentiment": "tether.tasks.sentiment", "answers": "tether.tasks.answers",
         "arithmetic": "tether.tasks.arithmetic"}


@runtime_checkable
class Task(Protocol):
    """What a built-in task module provides. Each function is seeded and deterministic."""

    def make_prompts(self, n: int, seed: int = 0) -> list[str]: ...

    def make_demonstrations(self, n: int, seed: int = 0) -> list[dict[str, str]]: ...

    # The texts form, gold_score(texts), or the keyword form (tether.tasks.gold).
    def gold_score(self, *args: Any, **kwargs: Any) -> list[float]: ...


def load_task(name: str) -> Task:
    """The built-in task called `name`, one of TASKS."""
    return importlib.import_module(TASKS[name])


def prompt_rows(task: Task, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n prompt rows {"prompt", **columns} of a task: make_prompt_rows where the task has it,
    else its prompt texts as {"prompt"} rows."""
    make_rows = getattr(task, "make_prompt_rows", None)
    if make_rows is not None:
        return make_rows(n, seed)
    return [{"prompt": p} for p in task.make_prompts(n, seed)]
