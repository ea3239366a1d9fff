"""Value models for PPO: per-token estimates of the return, aligned like log-probs.

Position t holds V(tokens < t), the value of the state in which token t is chosen, so a
response mask over input_ids lines up with values, log-probs and rewards alike (see
tether.models.logprobs). The trunk must be causal: a bidirectional encoder would let a
token's value see the tokens after it.
"""

from __future__ import annotations

import copy

import torch

from tether.models.head import output_head
from tether.models.logprobs import (
    TokenLogits,
    autocast_now,
    position_ids_from_mask,
    shift_to_tokens,
)
from tether.models.lora import is_lora


def causal_trunk(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a causal LM's (or a causal sequence classifier's) head."""
    base = model.get_base_model() if is_lora(model) else model
    return base.get_decoder() if hasattr(base, "get_decoder") else base.model


def _hidden(trunk: torch.nn.Module, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> torch.Tensor:
    return trunk(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask),
                 use_cache=False).last_hidden_state


def _values(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    # The state after token t-1 is where token t is chosen: shift one to the right.
    return shift_to_tokens(head(hidden).squeeze(-1)[:, :-1].float())


def logits_and_values(policy: torch.nn.Module, head: torch.nn.Module, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, first_token: int = 1, chunk: int = 0
                      ) -> tuple[TokenLogits, torch.Tensor]:
    """One pass of the policy's trunk for both its logits (from `first_token` on, as in
    tether.models.logprobs.forward_token_logits, chunked likewise with chunk > 0) and a value
    head on the same hidden states (ppo.value_model=head). Assumes logits = output
    embedding(last hidden state), as in Llama-family models."""
    base = policy.get_base_model() if is_lora(policy) else policy
    hidden = _hidden(causal_trunk(policy), input_ids, attention_mask)
    kept, length = hidden[:, first_token - 1:], input_ids.shape[1]
    logits = TokenLogits(None, length, kept, output_head(policy), chunk,
                         autocast_now(kept.device)) if chunk > 0 else \
        TokenLogits(base.get_output_embeddings()(kept), length)
    return logits, _values(head, hidden)


def value_head(policy: torch.nn.Module) -> torch.nn.Linear:
    """A zero-initialised scalar head for the policy's hidden states."""
    base = policy.get_base_model() if is_lora(policy) else policy
    head = torch.nn.Linear(base.config.hidden_size, 1, bias=False)
    torch.nn.init.zeros_(head.weight)
    return head


class ValueModel(torch.nn.Module):
    """A causal trunk with a scalar head, separate from the policy."""

    def __init__(self, trunk: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.trunk, self.head = trunk, head

    @classmethod
    def from_reward_model(cls, reward_model: torch.nn.Module) -> ValueModel:
        """A copy of a causal reward model (InstructGPT initialises the value function from the
        reward model): its trunk and its scalar head, read at every position."""
        head = getattr(reward_model, "score", None)
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"{type(reward_model).__name__} has no linear 'score' head")
        return cls(copy.deepcopy(causal_trunk(reward_model)), copy.deepcopy(head))

    @classmethod
    def from_policy(cls, policy: torch.nn.Module) -> ValueModel:
        """A copy of the policy's trunk with a zero head: every value starts at 0."""
        return cls(copy.deepcopy(causal_trunk(policy)), value_head(policy))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _values(self.head, _hidden(self.trunk, input_ids, attention_mask))
