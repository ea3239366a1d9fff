"""tether from Python: each command as a function taking what the command line takes.

    import tether

    final = tether.sft("configs/sft_example.yaml", {"train.max_steps": 50, "run_dir": "runs/a"})
    tether.dpo(overrides={"model.name": str(final), "data.train": "pairs.jsonl"})
    report = tether.run("quick")            # the pipeline: a preset, a YAML file, or None

Each function reads the config as `tether COMMAND --config FILE key=value ...` does (a YAML
file, then the overrides: a mapping of dotted keys to Python values, or "key=value" strings),
or takes a config object built with `tether.config.load_config`, and returns what the command
writes (final/ for a trainer, the report for `run`, the output file for the others). Mistakes
raise tether.errors.UserError (ConfigError, DataError) with the message the command line
prints; nothing calls sys.exit.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Overrides = Mapping[str, Any] | Iterable[str]


def _strings(overrides: Overrides) -> list[str]:
    if isinstance(overrides, Mapping):
        # a string field takes the text as typed; anything else is read as YAML, which JSON is
        return [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                for key, value in overrides.items()]
    return [str(item) for item in overrides]


def _call(command: str, config: Any, overrides: Overrides) -> Path:
    from tether.cli import STAGES
    from tether.config import load_config
    from tether.presets import pipeline_sources

    stage = STAGES[command]
    if isinstance(config, stage.config):
        if overrides:
            raise TypeError("give either a config object or overrides, not both")
        cfg = config
    else:
        path = os.fspath(config) if config is not None else None
        base: list = []
        if command == "run":
            base, path = pipeline_sources(path, None)
        cfg = load_config(stage.config, path, _strings(overrides), base=base)
    module, function = stage.entry.split(":")
    return getattr(importlib.import_module(module), function)(cfg)


def sft(config: Any = None, overrides: Overrides = ()) -> Path:
    """Supervised fine-tuning (`tether sft`); returns the run's final/ directory."""
    return _call("sft", config, overrides)


def rm(config: Any = None, overrides: Overrides = ()) -> Path:
    """A reward model (`tether rm`); returns the run's final/ directory."""
    return _call("rm", config, overrides)


def dpo(config: Any = None, overrides: Overrides = ()) -> Path:
    """DPO and its relatives (`tether dpo`); returns the run's final/ directory."""
    return _call("dpo", config, overrides)


def ppo(config: Any = None, overrides: Overrides = ()) -> Path:
    """PPO, GRPO or RLOO (`tether ppo`); returns the run's final/ directory."""
    return _call("ppo", config, overrides)


def sample(config: Any = None, overrides: Overrides = ()) -> Path:
    """K responses per prompt (`tether sample`); returns the candidates file."""
    return _call("sample", config, overrides)


def evaluate(config: Any = None, overrides: Overrides = ()) -> Path:
    """Sampled evaluation of policies (`tether eval`); returns its results file."""
    return _call("eval", config, overrides)


def run(pipeline: str | os.PathLike | None = None, overrides: Overrides = ()) -> Path:
    """The whole pipeline (`tether run [PIPELINE]`): a preset name (default, quick, ...), a
    pipeline YAML file, or None for the built-in default. Returns report.html's path."""
    return _call("run", pipeline, overrides)

