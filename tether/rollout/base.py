"""What every generation backend is: `Generator`, and the types it takes and gives.

Trainers, `tether sample` and the evaluations see only this: token ids of prompts and
`SamplingParams` in, `Generation`s out, and `sync` after each update of the policy. A backend
(generate.py: Hugging Face `generate`; static.py: tether's own decode loop; vllm.py: vLLM on a
GPU) implements `Generator`, and backends.py picks one by name.

Every sample draws from a random stream of its own, named by (seed, its index in the whole
batch), so a sample does not depend on which other prompts share its call: a batch split over
processes (PPO under torchrun) draws exactly what one process would.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from tether.errors import UserError


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]  # no padding; ends with EOS iff finished; nothing after EOS
    finished: bool  # the model emitted EOS within max_new_tokens
    # log softmax(logits / temperature) of each response token as the sampler computed it:
    # the whole tempered distribution, not renormalised to top_p, i.e. what the trainer's
    # token_logprobs gives the same tokens. None where a backend cannot give that.
    logprobs: list[float] | None = None


def stream_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample`'s own random stream (a hash: no two (seed, sample) pairs
    collide the way seed * K + sample would)."""
    digest = hashlib.blake2b(f"{seed}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def special_tokens(tokenizer) -> tuple[int, int]:
    """The tokenizer's (EOS, pad) ids, which a built-in backend cannot do without."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; generation could never finish")
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has no pad token (load it with "
                        "tether.models.loading.load_tokenizer, which sets one)")
    return tokenizer.eos_token_id, tokenizer.pad_token_id


def check_request(prompts: list[list[int]], n: int) -> None:
    """What every backend's generate refuses: no samples asked for, an empty prompt."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")


class Generator(ABC):
    """A generation backend: samples plain temperature + top-p responses from the policy.

    `matches_trainer`: whether it computes with the policy's own modules in the trainer's
    precision, so that its log-probs are the trainer's up to float rounding. When not (another
    engine, another dtype), the samples come from a slightly different policy than the one
    trained, and PPO can correct for it (rollout.is_correction, tether.losses.mismatch)."""

    matches_trainer: bool = False

    @abstractmethod
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None, first_sample: int = 0) -> list[list[Generation]]:
        """`n` samples for each prompt, in prompt order; each response ends at its first EOS.
        With `seed`, sample k of this call (prompt k // n) draws from the stream named by
        stream_seed(seed, first_sample + k). `first_sample`: where this call's samples start
        in a larger batch split over calls."""

    @abstractmethod
    def sync(self, model: torch.nn.Module | None = None) -> None:
        """After an update of the policy (`model`, default the one it was built with): the
        next `generate` samples from its current weights."""
