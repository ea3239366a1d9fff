"""Atomic, verifiable, resumable checkpoints and the final Hugging Face export.

Everything is written into a temporary directory beside its target and renamed into place
(tether.files), so a run killed at any moment leaves either the previous complete checkpoint
or the new complete one, never half of one. Each checkpoint also records the size and SHA-256
of its state, so one damaged later (a full disk, a bad copy, a truncated file) is recognised
before resuming from it, and the newest intact one is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tether.errors import UserError
from tether.files import atomic_dir
from tether.models.lora import is_lora, merged_copy
from tether.models.quantize import is_quantized

CHECKPOINTS = "checkpoints"
_STATE, _META = "state.pt", "meta.json"


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


class _HashingWriter:
    """A file that hashes what is written through it, so the checksum costs no second read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoints/step-N (state.pt, and meta.json with its size and SHA-256); keep the
    newest `keep`."""
    target = checkpoint_path(run_dir, step)
    with atomic_dir(target) as tmp:
        try:
            with open(tmp / _STATE, "wb") as f:
                writer = _HashingWriter(f)
                torch.save(state, writer)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            # torch reports a failed write (a full disk) as its own RuntimeError, the OSError
            # underneath; name the checkpoint and what it needed, not torch's internals
            cause = e if isinstance(e, OSError) else e.__context__
            if not isinstance(cause, OSError):
                raise
            raise UserError(f"cannot write checkpoint {target}: {cause.strerror or cause} "
                            f"({_free(run_dir)} free; the run keeps train.keep_checkpoints="
                            f"{keep} of them)") from None
        meta = {"step": step, "files": {_STATE: {"size": writer.size,
                                                 "sha256": writer.sha.hexdigest()}}}
        (tmp / _META).write_text(json.dumps(meta))
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _free(path: Path) -> str:
    return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (intact or not: see damage)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and
                  (p / _STATE).exists())


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint (its files against the sizes and checksums it recorded
    when written), or None when it is intact. A checkpoint written before checksums were
    recorded is taken as intact if its state loads."""
    try:
        meta = json.loads((checkpoint / _META).read_text())
    except (OSError, ValueError):
        return "its meta.json is missing or unreadable"
    for name, want in meta.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, {want['size']} when written"
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                sha.update(block)
        if sha.hexdigest() != want["sha256"]:
            return f"{name} does not match the checksum recorded when it was written"
    if "files" not in meta:
        try:
            load_checkpoint(checkpoint)
        except Exception as e:  # noqa: BLE001 - any failure to load is damage
            return f"{_STATE} does not load ({type(e).__name__})"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint, intact or not (whether the run has started)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def latest_intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint, and a line for each newer one skipped as damaged. None
    when there is no checkpoint; a UserError when there are some but none is intact."""
    skipped = []
    found = list_checkpoints(run_dir)
    for checkpoint in reversed(found):
        why = damage(checkpoint)
        if why is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint.name}: {why}")
    if found:
        raise UserError(f"{run_dir}: no intact checkpoint to resume from ("
                        + "; ".join(skipped) + "); start again in another run_dir, or "
                        "remove its checkpoints/ directory to start over in this one")
    return None, skipped


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / _STATE, map_location="cpu", weights_only=True)


def save_final(model: torch.nn.Module, tokenizer, out_dir: Path, merge_lora: bool = True,
               texts: dict[str, str] | None = None) -> Path:
    """Write a directory that plain `transformers` (or peft, for an unmerged adapter) loads,
    with `texts` (file name -> content, e.g. the model card) written inside it at once."""
    if is_quantized(model) and (merge_lora or not is_lora(model)):
        model = merged_copy(model, torch.float32)[0]  # the 4-bit base dequantised, merged
    elif is_lora(model) and merge_lora:
        model = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)
