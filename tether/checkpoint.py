"""Atomic, resumable checkpoints and the final Hugging Face export.

Everything is written into a temporary directory beside its target and renamed into place,
so a run killed at any moment leaves either the previous complete checkpoint or the new
complete one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tether.models.lora import is_lora

CHECKPOINTS = "checkpoints"
_STATE = "state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_jsonl(path: Path, rows: list) -> None:
    """One JSON object per line, UTF-8 kept readable, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished directory into place, replacing any older one at `target`."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def capture_rng() -> dict[str, Any]:
    _, key, pos, has_gauss, cached = np.random.get_state()
    # Plain lists and numbers, so the checkpoint loads with torch.load(weights_only=True).
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [key.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    # GPU generators come back where the machine has as many GPUs; elsewhere (resuming a GPU
    # run on another machine) they keep their seeds, and only GPU-side sampling differs.
    if "cuda" in state and torch.cuda.is_available() and \
            len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_as_tuples(state["python"]))
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    target = checkpoint_path(run_dir, step)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}-", dir=root))
    with open(tmp / _STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    replace_dir(tmp, target)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and
                  (p / _STATE).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / _STATE, map_location="cpu", weights_only=True)


def save_final(model: torch.nn.Module, tokenizer, out_dir: Path, merge_lora: bool = True) -> Path:
    """Write a directory that plain `transformers` (or peft, for an unmerged adapter) loads."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    if is_lora(model) and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out_dir)
    return out_dir
