"""tether: reinforcement learning from human feedback, end to end.

The trainers and the pipeline are also functions: tether.sft, rm, dpo, ppo and run, imported
on first use so that `import tether` stays light; tether.api holds them with sample and
evaluate (here those names are the modules tether.sample and tether.evaluate).
"""

import os

# Nothing leaves the machine unless a user asks: huggingface_hub reads this once, on import.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"


_COMMANDS = ("sft", "rm", "dpo", "ppo", "run")  # tether.api's


def __getattr__(name: str):
    if name in _COMMANDS:
        import importlib

        return getattr(importlib.import_module("tether.api"), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
