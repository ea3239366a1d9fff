"""tether: reinforcement learning from human feedback, end to end."""

import os

# Nothing leaves the machine unless a user asks: huggingface_hub reads this once, on import.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
