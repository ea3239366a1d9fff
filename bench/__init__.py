"""Benchmarks of tether on this machine: `python -m bench NAME` (see `python -m bench --help`).

Shared conventions: a machine shared with other work is noisy, so whatever a benchmark compares
is measured in one run, interleaved (A B A B ...) after warm-up, and reported as median with
min and max; results also go to bench/results/NAME.json (gitignored).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict:
    """What the numbers were measured on, including how busy the machine was (load average)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0]}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (every process, and time the
    hypervisor stole), from /proc/stat; set against a benchmark's own CPU time, it shows how
    much other work shared the machine."""
    user, nice, system, idle, iowait, irq, softirq, steal = \
        map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def save_results(name: str, results: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
