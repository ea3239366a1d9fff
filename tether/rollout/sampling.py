"""How every built-in backend draws a token: the per-sample random streams and the inverse-CDF
draw from softmax(logits / temperature) cut to top_p.

Both `hf` (generate.py) and `static` (static.py) draw with these, so on equal logits they draw
equal tokens, and a sample depends only on its own stream (base.stream_seed), not on which
other prompts share its call.
"""

from __future__ import annotations

import torch

from tether.rollout.base import stream_seed


def stream_uniforms(rows: int, steps: int, seed: int | None, first_sample: int = 0
                    ) -> torch.Tensor:
    """[rows, steps] uniforms in [0, 1): row k from the stream of sample first_sample + k, or,
    without a seed, from the global RNG."""
    if seed is None:
        return torch.rand(rows, steps)
    return torch.stack([
        torch.rand(steps, generator=torch.Generator().manual_seed(
            stream_seed(seed, first_sample + k))) for k in range(rows)])


def draw(scores: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row r's next token from softmax(scores / temperature) cut to top_p, drawn with uniform
    u_r: the first token where the cumulative probability passes u_r. Returns the tokens [R]
    and their log-probabilities under the full tempered distribution (before the top_p cut:
    what the trainer's log-probs describe), both on the scores' device."""
    tempered = scores.float() / temperature
    probs = torch.softmax(tempered, dim=-1)
    if top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (at least one): a token
        # stays if the tokens above it hold less than top_p.
        ordered, order = probs.sort(dim=-1, descending=True)
        above = ordered.cumsum(-1) - ordered
        probs = probs.scatter(-1, order, ordered.masked_fill(above >= top_p, 0.0))
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    logprobs = tempered.gather(-1, token) - tempered.logsumexp(-1, keepdim=True)
    return token[:, 0], logprobs[:, 0]
