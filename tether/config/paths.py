"""Paths written in a config or pipeline file are relative to that file's directory, so that
`tether run own_task/pipeline.yaml` reads own_task/prompts.jsonl from anywhere. Overrides on
the command line stay relative to the working directory, as a shell user expects.

Which strings are paths is told by their key (its last part) and their value: a key that may
hold a path (data, models, scorers, outputs), and a value that is one there: an output, a
file or directory next to the config, a value that looks like a path before it exists (a
data-file suffix, ./ or ../, more slashes than a hub id: so a missing file is reported where it
was looked for), or `module:function` with module.py next to the config (rewritten to that
file, which tether.tasks.gold imports by path). Anything else (an embedded model name, a hub
id, a built-in task) is left as written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# Keys that may hold a path to read, by their last part.
INPUT_KEYS = frozenset({
    "train", "eval", "prompts", "eval_prompts", "heldout_prompts", "demonstrations", "labels",
    "gold_items", "candidates", "input", "reference", "name", "model", "policy", "policies",
    "reward_model", "gold", "functions", "chat_template",
})
# Keys holding a path to write: relative to the file whether or not it exists yet.
OUTPUT_KEYS = frozenset({"run_dir", "output", "db"})
# Keys holding several, comma-separated (reward functions also as a YAML list).
LIST_KEYS = frozenset({"policies", "functions"})
FILE_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".csv", ".db", ".py", ".yaml",
                           ".yml", ".txt", ".jinja"})
_WEIGHT = re.compile(r"^(\s*[^*\s]+\s*\*\s*)(.*)$")  # "0.2*scorer:fn" in reward.functions


def relative_to(raw: dict, config_file: str | Path) -> dict:
    """`raw` (a config file's mapping) with the paths in it joined to the file's directory;
    unchanged when that directory is the working directory."""
    base = Path(config_file).parent
    if base.resolve() == Path.cwd().resolve():
        return raw
    return _walk(raw, base)


def _walk(node: dict, base: Path) -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out[key] = _walk(value, base)
        elif key in INPUT_KEYS or key in OUTPUT_KEYS:
            out[key] = _resolve_value(str(key), value, base)
        else:
            out[key] = value
    return out


def _resolve_value(key: str, value: Any, base: Path) -> Any:
    if isinstance(value, list) and key in LIST_KEYS:
        return [_resolve_value(key, v, base) for v in value]
    if not isinstance(value, str):
        return value
    if key in LIST_KEYS and "," in value:
        return ",".join(_resolve_value(key, v, base) for v in value.split(","))
    weight = _WEIGHT.match(value) if key == "functions" else None
    if weight:
        return weight.group(1) + _resolve(weight.group(2), base, output=False)
    return _resolve(value, base, output=key in OUTPUT_KEYS)


def _resolve(value: str, base: Path, output: bool) -> str:
    text = value.strip()
    if not text or Path(text).is_absolute() or text.startswith("~") or "://" in text:
        return value
    path, sep, rest = text, "", ""
    if "#" in text or "?" in text:  # labels.db#project, data.jsonl?prompt=question
        path, sep, rest = text.partition("#" if "#" in text else "?")
    elif ":" in text:  # module:function, or file.py:function
        module, sep, rest = text.partition(":")
        if module.endswith(".py"):
            path = module
        elif (base / f"{module}.py").is_file():
            path = f"{module}.py"
        else:
            return value  # a built-in task's function, or a module on the import path
    joined = base / path
    if output or joined.exists() or _looks_like_a_path(path):
        return os.path.normpath(joined) + sep + rest
    return value


def _looks_like_a_path(text: str) -> bool:
    """A path even before it exists (a later stage's output): a data-file suffix, ./ or ../,
    or more slashes than a hub id (owner/name) has."""
    return Path(text).suffix in FILE_SUFFIXES or text.startswith(("./", "../")) \
        or text.count("/") >= 2
