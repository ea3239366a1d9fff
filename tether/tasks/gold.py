"""Gold scorers: load one by name (a built-in task's, or any `module:function`), and score with
one, its output checked.

A gold scorer takes a list of texts and returns one float per text, higher meaning more
preferred. It stands for the hidden human preference: simulated labelers draw their choices
from it, and evaluation reports it beside the learned (proxy) reward.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from tether.errors import UserError
from tether.tasks.registry import TASKS, load_task

GoldScorer = Callable[[list[str]], Sequence[float]]


def load_gold_scorer(name: str) -> GoldScorer:
    """The scorer called `name`: a built-in task ("sentiment") or "module:function"
    (the function may be an attribute path, "module:Class.method")."""
    if name in TASKS:
        return load_task(name).gold_score
    if ":" not in name:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown gold scorer '{name}'{hint}: use a built-in task "
                        f"({', '.join(sorted(TASKS))}) or 'module:function' taking a "
                        f"list of texts and returning one float per text")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"gold scorer '{name}': expected 'module:function', e.g. "
                        f"'my_scorers:length_score'")
    # A scorer module of the user's, next to their config, imports as it would in `python`.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"gold scorer '{name}': cannot import module '{module_name}': {e}") \
            from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"gold scorer '{name}': module '{module_name}' has no "
                            f"'{attr}'") from None
    if not callable(obj):
        raise UserError(f"gold scorer '{name}': '{attr}' is not callable")
    return obj


def score_all(rows: Sequence[dict], scorer: GoldScorer) -> list[np.ndarray]:
    """Gold score of every response of rows {"responses": [texts]}, one scorer call for all
    distinct texts; a scorer that does not return one finite number per text is an error."""
    texts = list(dict.fromkeys(r for row in rows for r in row["responses"]))
    scores = scorer(texts)
    try:
        scores = np.asarray(list(scores), dtype=float)
    except (TypeError, ValueError):
        raise UserError("the gold scorer must return one number per text") from None
    if scores.shape != (len(texts),):
        raise UserError(f"the gold scorer returned {scores.size} scores for {len(texts)} texts")
    if not np.all(np.isfinite(scores)):
        bad = texts[int(np.flatnonzero(~np.isfinite(scores))[0])]
        raise UserError(f"the gold scorer returned NaN or infinity, e.g. for {bad[:80]!r}")
    by_text = dict(zip(texts, scores.tolist(), strict=True))
    return [np.array([by_text[r] for r in row["responses"]]) for row in rows]
