"""tether: reinforcement learning from human feedback, end to end.

Each command is also a function: tether.sft, rm, dpo, ppo, sample, evaluate and run (see
tether.api), imported on first use so that `import tether` stays light.
"""

import os

# Nothing leaves the machine unless a user asks: huggingface_hub reads this once, on import.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"


_COMMANDS = ("sft", "rm", "dpo", "ppo", "sample", "evaluate", "run")  # tether.api's


def __getattr__(name: str):
    if name in _COMMANDS:
        import importlib

        return getattr(importlib.import_module("tether.api"), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
