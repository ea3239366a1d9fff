"""Which gold scorer `tether eval` uses by default (gold=auto): the one of the task its policies
were trained on, read from their run directories, or none at all (an error asking for gold=).

A default scorer would silently score another task's responses as, say, movie-review sentiment;
the runs tether writes say which task they were for, so that is where a default may come from.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tether.errors import ConfigError

AUTO = "auto"  # gold=auto: the task's, from the policies' runs


def gold_of_runs(policies: list[str]) -> tuple[str, str] | None:
    """(gold scorer, the config.yaml it comes from) of the first policy in a tether run
    directory that names one: a `tether run` pipeline's task ("" for a task without a gold
    scorer), a PPO run's reward.gold or a DPO run's sampled_eval.gold. Two policies from
    runs naming different scorers are an error: there is no one task to take it from."""
    found: dict[str, str] = {}
    for policy in policies:
        known = _gold_of_run(Path(policy))
        if known:
            found.setdefault(*known)
    if len(found) > 1:
        listed = "; ".join(f"{gold} ({where})" for gold, where in found.items())
        raise ConfigError(f"gold: the policies' runs name different gold scorers ({listed}); "
                          f"give gold=SCORER (or gold= for none)")
    return next(iter(found.items()), None)


def _gold_of_run(policy: Path) -> tuple[str, str] | None:
    """A policy is RUN/final (a stage command's run) or PIPELINE/STAGE/final."""
    if policy.name != "final":
        return None
    pipeline = _config(policy.parent.parent / "config.yaml")
    if isinstance(pipeline.get("task"), dict):
        task = pipeline["task"]
        return task.get("gold") or task.get("name") or "", \
            str(policy.parent.parent / "config.yaml")
    stage = _config(policy.parent / "config.yaml")
    for section, key in (("reward", "gold"), ("sampled_eval", "gold")):
        gold = (stage.get(section) or {}).get(key) if isinstance(stage.get(section), dict) \
            else None
        if gold:
            return gold, str(policy.parent / "config.yaml")
    return None


def _config(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def choose_gold(gold: str, policies: list[str]) -> tuple[str, str]:
    """(the gold scorer to use, "" for none; a note on where it came from, or "")."""
    if gold != AUTO:
        return gold, ""
    known = gold_of_runs(policies)
    if known is None:
        raise ConfigError("gold is required: the gold scorer of your task (a built-in task such "
                          "as gold=sentiment, or gold=my_scorers:score), or gold= for no gold "
                          "score; gold=auto takes it from the policies' run directories only "
                          "where tether trained them (tether run, ppo, dpo)")
    name, where = known
    return name, f"gold: {name or 'none'} (the task of {where})"
