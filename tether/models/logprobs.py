"""Per-token log-probabilities and entropies from a causal LM (pure functions of tensors).

Convention: every per-token tensor has the same [batch, seq] shape as `input_ids`, and
position t holds the value for token t given tokens < t. Position 0 has no prediction and
holds 0, so a `loss_mask` over input_ids lines up with the log-probs without shifting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row, whichever side the padding is on.

    transformers numbers positions 0..T-1 regardless of the mask, which would give a
    left-padded row different rotary positions than the same row right-padded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits


def shift_to_tokens(values: torch.Tensor) -> torch.Tensor:
    """Move predictions made at position t-1 to token t; position 0 gets 0."""
    return F.pad(values, (1, 0), value=0.0)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) at temperature `temperature`, shape [B, T].

    Logits are divided by the sampling temperature so that log-probs of sampled text match the
    distribution it was sampled from (PPO's ratio is exactly 1 before the first update)."""
    logits = logits[:, :-1].float()
    if temperature != 1.0:  # skip a copy of the [B, T, vocab] logits in the common case
        logits = logits / temperature
    targets = input_ids[:, 1:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return shift_to_tokens(picked - logits.logsumexp(-1))


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution that produced each token, shape [B, T]."""
    logp = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return shift_to_tokens(-(logp.exp() * logp).sum(-1))

