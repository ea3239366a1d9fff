"""Pad variable-length examples into batch tensors, on an explicit side."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int, side: str) -> torch.Tensor:
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for i, s in enumerate(sequences):
        if side == "right":
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        else:
            out[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence, pad_token_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Batch `Encoded` examples: input_ids, attention_mask, loss_mask (all [B, T] long)."""
    ids = [e.input_ids for e in examples]
    return {
        "input_ids": pad_batch(ids, pad_token_id, side),
        "attention_mask": pad_batch([[1] * len(s) for s in ids], 0, side),
        "loss_mask": pad_batch([e.loss_mask for e in examples], 0, side),
    }
