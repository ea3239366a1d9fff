"""Gold scorers by name: a built-in task, or any importable `module:function`.

A gold scorer takes a list of texts and returns one float per text, higher meaning more
preferred. It stands for the hidden human preference: simulated labelers draw their choices
from it, and evaluation reports it beside the learned (proxy) reward.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable

from tether.errors import UserError

GoldScorer = Callable[[list[str]], list[float]]

# name -> "module:function", imported only when asked for.
BUILTIN = {"sentiment": "tether.tasks.sentiment:gold_score",
           "answers": "tether.tasks.answers:gold_score"}


def load_gold_scorer(name: str) -> GoldScorer:
    """The scorer called `name`: a built-in task ("sentiment") or "module:function"
    (the function may be an attribute path, "module:Class.method")."""
    target = BUILTIN.get(name)
    if target is None:
        if ":" not in name:
            close = difflib.get_close_matches(name, list(BUILTIN), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown gold scorer '{name}'{hint}: use a built-in task "
                            f"({', '.join(sorted(BUILTIN))}) or 'module:function' taking a "
                            f"list of texts and returning one float per text")
        target = name
    module_name, _, attr = target.partition(":")
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
