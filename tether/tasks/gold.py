"""Scorers: load one by name (a built-in task's, or any `module:function`), and call one, its
output checked. Gold scorers and reward functions are both scorers.

A scorer is a plain Python function, in either of two forms:

  texts form     f(texts) -> one float per text: the response texts alone (tether's first form;
                 the sentiment and answers tasks' gold scorers).
  keyword form   f(prompts=[...], completions=[...], **columns) -> one float (or None) per
                 completion: TRL's reward-function convention. `prompts[i]` is the prompt of
                 `completions[i]` as its row gives it (a string, or chat messages), and each
                 other field of the prompt rows arrives as a list of the same length (the
                 `answer` column as answer=[...]), the values of a prompt repeated for each of
                 its samples. Completions are always strings.

A function with a parameter called `completions`, or a `**kwargs`, is called the keyword way;
any other the texts way. A keyword function without `**kwargs` gets only the columns it names
(a column it names that the rows lack is an error naming it). A reward function may return
None for a completion it does not apply to (it then adds nothing to that completion's reward);
a gold scorer may not, as labels and evaluation need a number for every response.

A gold scorer stands for the hidden human preference: simulated labelers draw their choices
from it, and evaluation reports it beside the learned (proxy) reward. Reward functions
(tether.tasks.rewards) are what PPO / GRPO / RLOO optimise, with or without a reward model.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tether.errors import UserError
from tether.tasks.registry import TASKS, load_task

GoldScorer = Callable[..., Sequence[float | None]]


def load_gold_scorer(name: str, what: str = "gold scorer") -> GoldScorer:
    """The scorer called `name`: a built-in task ("sentiment": its gold scorer), a built-in
    task's function ("arithmetic:format_reward"), or "module:function" (the function may be an
    attribute path, "module:Class.method"). `what` names it in errors."""
    if name in TASKS:
        return load_task(name).gold_score
    if ":" not in name:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown {what} '{name}'{hint}: use a built-in task "
                        f"({', '.join(sorted(TASKS))}) or 'module:function', a function of the "
                        f"texts, or of prompts=, completions= and the rows' columns")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} '{name}': expected 'module:function', e.g. "
                        f"'my_scorers:length_score'")
    # A scorer module of the user's, next to their config, imports as it would in `python`.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        if module_name.endswith(".py"):  # a file, as a config file's `module:function` becomes
            obj = _import_file(module_name)
        else:
            obj = load_task(module_name) if module_name in TASKS else \
                importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{what} '{name}': cannot import module '{module_name}': {e}") \
            from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"{what} '{name}': module '{module_name}' has no "
                            f"'{attr}'") from None
    if not callable(obj):
        raise UserError(f"{what} '{name}': '{attr}' is not callable")
    return obj


def _import_file(path: str) -> types.ModuleType:
    """The module in a .py file, imported as `python path` would run it: under its file name,
    with its directory on the path for its own imports."""
    if not os.path.isfile(path):
        raise ImportError(f"no such file: {path}")
    folder, filename = os.path.split(os.path.abspath(path))
    name = filename.removesuffix(".py")
    loaded = sys.modules.get(name)
    if getattr(loaded, "__file__", None) == os.path.join(folder, filename):
        return loaded
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if loaded is None:  # registered, its functions pickle as an imported module's do
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def takes_keywords(scorer: Callable) -> bool:
    """Whether `scorer` is called the keyword way (a `completions` parameter or **kwargs)."""
    try:
        params = inspect.signature(scorer).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the texts form
        return False
    return any(p.name == "completions" or p.kind is p.VAR_KEYWORD for p in params)


def _keyword_arguments(scorer: Callable, name: str, prompts: Sequence[Any],
                       completions: list[str], columns: dict[str, list]) -> dict[str, Any]:
    """What a keyword scorer is called with: everything if it takes **kwargs, else the
    arguments it names; a named one the rows do not have is an error."""
    given = {"prompts": list(prompts), "completions": completions, **columns}
    params = inspect.signature(scorer).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return given
    wanted = {}
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.name in given:
            wanted[p.name] = given[p.name]
        elif p.default is p.empty:
            have = ", ".join(sorted(columns)) or "none"
            raise UserError(f"{name} needs '{p.name}', which is not a column of the prompt "
                            f"rows (their columns besides 'prompt': {have})")
    return wanted


def call_scorer(scorer: Callable, completions: Sequence[str], prompts: Sequence[Any] | None = None,
                columns: dict[str, list] | None = None, *, name: str = "the gold scorer",
                allow_none: bool = False) -> np.ndarray:
    """`scorer` on the completions, called its way (see the module's doc), as a float array:
    NaN where it returned None (only with `allow_none`). `prompts` and each list of `columns`
    line up with `completions`. Anything else than one finite number (or None) per completion
    is a UserError naming the scorer (`name`)."""
    completions = list(completions)
    if takes_keywords(scorer):
        prompts = [None] * len(completions) if prompts is None else prompts
        for key, values in {"prompts": prompts, **(columns or {})}.items():
            if len(values) != len(completions):  # a caller's bug, not the user's
                raise ValueError(f"{key}: {len(values)} values for {len(completions)} "
                                 f"completions")
        result = scorer(**_keyword_arguments(scorer, name, prompts, completions, columns or {}))
    else:
        result = scorer(completions)
    try:
        values = list(result)
    except TypeError:
        raise UserError(f"{name} must return a list of numbers, one per completion; got "
                        f"{type(result).__name__}") from None
    if len(values) != len(completions):
        raise UserError(f"{name} returned {len(values)} scores for {len(completions)} texts")
    out = np.empty(len(values))
    for i, v in enumerate(values):
        if v is None and allow_none:
            out[i] = np.nan
            continue
        try:
            ok = not isinstance(v, (bool, str)) and np.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            what = "a finite number or None" if allow_none else "a finite number"
            raise UserError(f"{name} returned {v!r} for {completions[i][:80]!r}: each score "
                            f"must be {what} (not NaN or infinity)")
        out[i] = float(v)
    return out


def column_lists(rows: Sequence[Any]) -> dict[str, list]:
    """The prompt rows' columns (objects with `.columns`, e.g. tether.data.prompts.PromptRow)
    as lists lined up with the rows, for a keyword scorer: every column any row has, None where
    a row lacks it."""
    keys = dict.fromkeys(k for row in rows for k in row.columns)
    return {k: [row.columns.get(k) for row in rows] for k in keys}


def score_all(rows: Sequence[dict], scorer: Callable, name: str = "the gold scorer"
              ) -> list[np.ndarray]:
    """Score of every response of rows {"responses": [texts], "prompt": ..., "columns": {...}}
    ("prompt" and "columns" optional), in one scorer call. The texts form is called once on
    the distinct texts; the keyword form on every (prompt, response), each response with its
    row's prompt and columns (a column a row lacks is None there)."""
    if not takes_keywords(scorer):
        texts = list(dict.fromkeys(r for row in rows for r in row["responses"]))
        by_text = dict(zip(texts, call_scorer(scorer, texts, name=name).tolist(), strict=True))
        return [np.array([by_text[r] for r in row["responses"]], dtype=float) for row in rows]
    keys = list(dict.fromkeys(k for row in rows for k in row.get("columns", {})))
    completions, prompts = [], []
    columns: dict[str, list] = {k: [] for k in keys}
    for row in rows:
        for response in row["responses"]:
            completions.append(response)
            prompts.append(row.get("prompt"))
            for k in keys:
                columns[k].append(row.get("columns", {}).get(k))
    scores = call_scorer(scorer, completions, prompts, columns, name=name)
    out, start = [], 0
    for row in rows:
        out.append(scores[start:start + len(row["responses"])])
        start += len(row["responses"])
    return out
