"""Per-token log-probabilities and entropies from a causal LM (pure functions of tensors).

Convention: every per-token tensor has the same [batch, seq] shape as `input_ids`, and
position t holds the value for token t given tokens < t. Position 0 has no prediction and
holds 0, so a `loss_mask` over input_ids lines up with the log-probs without shifting.

The output head and the log-softmax over the vocabulary cost about a fifth of a small model's
forward and backward (SmolLM2-135M: a 49k x 576 matrix, 21% of its parameters). Only the
tokens a loss reads need them: `forward_logits(..., first_token=k)` computes logits for the
predictions of tokens k.. only (Hugging Face's `logits_to_keep`), and the functions here then
give 0 before k. `first_scored(mask)` is the k of a batch: the first column any row scores
(the prompt, common to a batch's rows, is read by the trunk but never scored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row, whichever side the padding is on.

    transformers numbers positions 0..T-1 regardless of the mask, which would give a
    left-padded row different rotary positions than the same row right-padded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def first_scored(mask: torch.Tensor) -> int:
    """The first column of a [B, T] mask where any row has a token to score (at least 1:
    token 0 has no prediction); T when none does."""
    columns = mask.any(0).nonzero()
    return max(1, int(columns[0])) if len(columns) else mask.shape[1]


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, first_token: int = 1) -> torch.Tensor:
    """Logits of the last T - first_token + 1 positions, [B, T - first_token + 1, vocab]: the
    predictions of tokens first_token..T-1, and the last position's (which predicts nothing).
    The default, 1: every position."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                 logits_to_keep=input_ids.shape[1] - first_token + 1).logits


def shift_to_tokens(values: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Predictions made at positions t-1 moved to tokens t, zeros in front up to `length`
    (by default one more than the predictions: position 0 gets 0)."""
    return F.pad(values, ((length or values.shape[1] + 1) - values.shape[1], 0), value=0.0)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) at temperature `temperature`, shape [B, T];
    0 for tokens the logits (maybe only the last positions', see forward_logits) don't reach.

    Logits are divided by the sampling temperature so that log-probs of sampled text match the
    distribution it was sampled from (PPO's ratio is exactly 1 before the first update)."""
    length = input_ids.shape[1]
    logits = logits[:, :-1].float()
    if temperature != 1.0:  # skip a copy of the [B, T, vocab] logits in the common case
        logits = logits / temperature
    targets = input_ids[:, length - logits.shape[1]:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return shift_to_tokens(picked - logits.logsumexp(-1), length)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0,
                  length: int | None = None) -> torch.Tensor:
    """Entropy of the next-token distribution that produced each token, shape [B, length]
    (length: the sequences' length T, by default the logits' own)."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return shift_to_tokens(-(logp.exp() * logp).sum(-1), length or logits.shape[1])

