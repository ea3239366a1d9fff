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
`forward_logprobs(..., chunk=n)` goes further: the head runs n tokens at a time and [B, T,
vocab] logits never exist at once (train.logits_chunk; TokenLogits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tether.models import head


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


def _model_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  first_token: int) -> dict:
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": position_ids_from_mask(attention_mask), "use_cache": False,
            "logits_to_keep": input_ids.shape[1] - first_token + 1}


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, first_token: int = 1) -> torch.Tensor:
    """Logits of the last T - first_token + 1 positions, [B, T - first_token + 1, vocab]: the
    predictions of tokens first_token..T-1, and the last position's (which predicts nothing).
    The default, 1: every position."""
    return model(**_model_inputs(input_ids, attention_mask, first_token)).logits


def autocast_now(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on `device` at this point, None where it is off."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def chunked_head(hidden: torch.Tensor, output_head: torch.nn.Linear, targets: torch.Tensor,
                 temperature: float, chunk: int, entropy: bool,
                 autocast: torch.dtype | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """head.chunked_logprobs under the autocast the forward ran under (`autocast`, as
    autocast_now gave it then), wherever the values are asked for: the head's matmul in the
    same precision as the plain path's."""
    with torch.autocast(hidden.device.type, dtype=autocast, enabled=autocast is not None):
        return head.chunked_logprobs(hidden, output_head.weight, output_head.bias, targets,
                                     temperature, chunk, entropy)


@dataclass
class TokenLogits:
    """forward_logits's logits [B, K, vocab] behind the interface of shared_prompt's
    PackedLogits; or, chunked (train.logits_chunk), the hidden states [B, K, H] at those
    positions and the output head, whose logits are made `chunk` tokens at a time when values
    are asked for (tether.models.head), never all at once."""

    logits: torch.Tensor | None  # None when chunked
    length: int  # T, the rows' length
    hidden: torch.Tensor | None = None
    head: torch.nn.Linear | None = None
    chunk: int = 0
    autocast: torch.dtype | None = None  # see chunked_head

    def logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] as token_logprobs gives them."""
        if self.hidden is not None:
            return self._chunked(input_ids, temperature, entropy=False)[0]
        return token_logprobs(self.logits, input_ids, temperature)

    def entropy(self, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] as token_entropy gives them."""
        if self.hidden is not None:
            ids = torch.zeros(self.hidden.shape[0], self.length, dtype=torch.long,
                              device=self.hidden.device)  # any targets
            return self._chunked(ids, temperature, entropy=True)[1]
        return token_entropy(self.logits, temperature, self.length)

    def logprobs_and_entropy(self, input_ids: torch.Tensor, temperature: float = 1.0
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both, from one pass of the head when chunked."""
        if self.hidden is not None:
            return self._chunked(input_ids, temperature, entropy=True)
        return self.logprobs(input_ids, temperature), self.entropy(temperature)

    def _chunked(self, input_ids: torch.Tensor, temperature: float, entropy: bool
                 ) -> tuple[torch.Tensor, ...]:
        # The last position predicts nothing: the head skips it.
        predicted = input_ids[:, self.length - self.hidden.shape[1] + 1:]
        out = chunked_head(self.hidden[:, :-1], self.head, predicted, temperature, self.chunk,
                           entropy, self.autocast)
        return tuple(shift_to_tokens(v, self.length) for v in (out if entropy else (out,)))


def forward_token_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, first_token: int = 1, chunk: int = 0
                         ) -> TokenLogits:
    """forward_logits as a TokenLogits; with chunk > 0 the model's forward stops before its
    head, and the head runs later, `chunk` tokens at a time. When all the predictions fit in
    one chunk, the plain head: the same memory, without recomputing the logits in backward."""
    inputs = _model_inputs(input_ids, attention_mask, first_token)
    if chunk <= 0 or input_ids.shape[0] * inputs["logits_to_keep"] <= chunk:
        return TokenLogits(model(**inputs).logits, input_ids.shape[1])
    hidden, output_head = head.forward_hidden(model, **inputs)
    return TokenLogits(None, input_ids.shape[1], hidden, output_head, chunk,
                       autocast_now(hidden.device))


def forward_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, first_token: int = 1,
                     temperature: float = 1.0, chunk: int = 0, entropy: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs(forward_logits(...)) in one call, [B, T] (with `entropy`, also
    token_entropy's [B, T]). With chunk > 0 the output head and log-softmax run `chunk` tokens
    at a time (see TokenLogits): the same values and gradients up to float rounding."""
    out = forward_token_logits(model, input_ids, attention_mask, first_token, chunk)
    if entropy:
        return out.logprobs_and_entropy(input_ids, temperature)
    return out.logprobs(input_ids, temperature)


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

