"""Reward functions: what PPO, GRPO and RLOO optimise, alone or beside a reward model.

`ppo.reward.functions` lists them, each `NAME` or `WEIGHT*NAME`, as a YAML list or one
comma-separated string:

    reward:
      functions: [arithmetic, 0.2*arithmetic:format_reward]     # or in one string:
    tether ppo ... "reward.functions=arithmetic, 0.2*arithmetic:format_reward"

A NAME is what a gold scorer's is (tether.tasks.gold.load_gold_scorer): a built-in task (its
gold scorer), `TASK:function`, or any `module:function`, in the texts or the keyword form. The
score optimised is then

    reward.model_weight * proxy (when there is a reward model) + sum of WEIGHT * function

each function's mean over the rollout logged as reward/<label> (the label: the function's
name, see `labels`). A function's None for a completion adds nothing to its sum (TRL's
convention for a function that does not apply). Without functions and without a reward model,
the gold scorer is optimised, as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether import metric_names
from tether.errors import ConfigError
from tether.tasks.gold import call_scorer, load_gold_scorer
from tether.tasks.registry import TASKS

_WEIGHTED = re.compile(r"^\s*([^*\s]+)\s*\*\s*(\S+)\s*$")
# reward/* names the trainers log already: no function's label may take one
RESERVED = {name[len(metric_names.REWARD_PREFIX):] for key, name in vars(metric_names).items()
            if key.isupper() and isinstance(name, str)
            and name.startswith(metric_names.REWARD_PREFIX)} - {""}


def parse_functions(spec: str | Sequence[str], key: str = "reward.functions"
                    ) -> list[tuple[str, float]]:
    """[(name, weight)] of a functions setting; a malformed entry is a ConfigError naming
    `key`."""
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            if isinstance(spec, str):
                continue  # "a, b," or an empty setting
            raise ConfigError(f"{key}: an empty entry")
        weight, name = 1.0, entry
        if "*" in entry:
            match = _WEIGHTED.match(entry)
            if not match:
                raise ConfigError(f"{key}: cannot read '{entry}'; write NAME or WEIGHT*NAME, "
                                  f"e.g. 0.2*arithmetic:format_reward")
            text, name = match.groups()
            try:
                weight = float(text)
            except ValueError:
                raise ConfigError(f"{key}: '{text}' in '{entry}' is not a number; write "
                                  f"WEIGHT*NAME, e.g. 0.2*{name}") from None
            if not math.isfinite(weight):
                raise ConfigError(f"{key}: the weight of '{name}' must be finite, got {text}")
        if any(c.isspace() for c in name):
            raise ConfigError(f"{key}: '{entry}' is not a name; write NAME or WEIGHT*NAME, "
                              f"entries separated by commas")
        if name in (n for n, _ in out):
            raise ConfigError(f"{key}: '{name}' is listed twice; give it one weight")
        out.append((name, weight))
    return out


def labels(names: Sequence[str]) -> list[str]:
    """The metric label of each function: a built-in task's name, else the function's own name
    (what follows ':' and the last '.'); the whole name, ':' as '.', where that label is
    taken (by another function, or a reward/* metric of the trainers)."""
    short = [name if name in TASKS else name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
             for name in names]
    return [s if short.count(s) == 1 and s not in RESERVED else name.replace(":", ".")
            for s, name in zip(short, names, strict=True)]


@dataclass
class RewardFunction:
    name: str  # as configured: "arithmetic", "my_rewards:format"
    weight: float
    label: str  # its metric is reward/<label>
    fn: Callable[..., Sequence[float | None]]

    def __call__(self, completions: Sequence[str], prompts: Sequence[Any],
                 columns: dict[str, list]) -> np.ndarray:
        """Its score of each completion, NaN where it returned None."""
        return call_scorer(self.fn, completions, prompts, columns,
                           name=f"reward function '{self.name}'", allow_none=True)


def load_reward_functions(spec: str | Sequence[str]) -> list[RewardFunction]:
    """The reward functions of a functions setting, each loaded (an unknown one is a UserError
    naming it)."""
    parsed = parse_functions(spec)
    return [RewardFunction(name, weight, label, load_gold_scorer(name, "reward function"))
            for (name, weight), label in zip(parsed, labels([n for n, _ in parsed]),
                                             strict=True)]


def weighted_sum(scores: dict[str, np.ndarray], functions: Sequence[RewardFunction]
                 ) -> np.ndarray:
    """sum of weight * score over the functions (scores by label), a None (NaN) adding 0."""
    total = np.zeros(len(next(iter(scores.values()))))
    for f in functions:
        total += f.weight * np.nan_to_num(scores[f.label], nan=0.0)
    return total
