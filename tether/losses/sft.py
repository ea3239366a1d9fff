"""Supervised fine-tuning loss: negative log-likelihood of response tokens only."""

from __future__ import annotations

import torch


def masked_nll(logprobs: torch.Tensor, loss_mask: torch.Tensor,
               num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Sum of -log p over tokens where `loss_mask` is 1, divided by `num_tokens`.

    `num_tokens` defaults to the mask's own count (a per-token mean). Pass the token count of
    the whole optimizer batch when a batch is split into microbatches (or across ranks): the
    gradients then add up to exactly those of the unsplit batch, whereas a mean of
    per-microbatch means would weight a token by how crowded its microbatch was.
    """
    mask = loss_mask.to(logprobs.dtype)
    if num_tokens is None:
        num_tokens = mask.sum()
    return -(logprobs * mask).sum() / torch.as_tensor(num_tokens, dtype=logprobs.dtype).clamp(min=1)
