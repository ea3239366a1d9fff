"""The sampler's policy against the trainer's: how far apart they are, and truncated importance
sampling to correct for it, as pure torch functions.

A fast generation backend (vLLM, a bf16 engine) runs other kernels or another precision than
the trainer, so a rollout's tokens come from pi_sampler, close to but not exactly the policy
pi_old whose log-probs the trainer computes for the same weights. PPO's ratio pi / pi_old and
its advantages assume the tokens were drawn from pi_old: the gradient is then that of a
slightly off-policy sample, and the bias can grow through training. Yao et al. 2025 ("Your
Efficient RL Framework Secretly Brings You Off-Policy RL Training") correct it by weighting
each token's policy-gradient term by the importance ratio pi_old / pi_sampler, truncated at C
(truncated importance sampling, TIS): the truncation bounds the variance a token the sampler
found much less likely than the trainer does would bring.

Tensor convention as in tether.losses.ppo: [B, T] tensors aligned with input_ids, `mask`
nonzero on response tokens; masked-out positions may hold anything (inf, NaN) and are never
read. `trainer_logprobs` are the trainer's log-probs of the rollout before any update (PPO's
old log-probs), `sampler_logprobs` those the generation backend gave the same tokens
(tether.rollout.base.Generation.logprobs), both at the sampling temperature.
"""

from __future__ import annotations

import torch

from tether.losses.ppo import kl_per_token, masked_mean


def is_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
               mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights [B, T]: min(exp(trainer_logp - sampler_logp), cap) on
    response tokens, 1 elsewhere; detached.

    Yao et al. 2025, the TIS weight min(pi_old / pi_sampler, C) of each sampled token. It
    multiplies the token's policy-gradient term (tether.losses.ppo.policy_loss's `weights`).
    Where the two log-probs agree it is exactly 1."""
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = mask.bool()
    # Detached: the weight says how the rollout was drawn, it is not trained through.
    log_ratio = torch.where(m, trainer_logprobs.detach() - sampler_logprobs.detach(), 0.0)
    return torch.where(m, torch.exp(log_ratio).clamp(max=cap), 1.0)


def mismatch_stats(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                   mask: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    """How far the sampler's policy is from the trainer's, over the response tokens: detached
    scalars, means over masked tokens (NaN when there are none).

    With d = sampler_logp - trainer_logp and r = exp(-d) = pi_old / pi_sampler per token
    (tokens drawn from pi_sampler), as tether.losses.ppo.kl_per_token estimates KL:
      kl_k1: mean of d, an unbiased estimate of KL(sampler || trainer); can be negative;
      kl_k3: mean of (r - 1) - log r, unbiased too, >= 0 and of lower variance;
      weight_mean: mean of the truncated weight min(r, cap) (is_weights);
      truncated_frac: share of tokens with r > cap, whose weight the cap cut.
    Both KL estimates are exactly 0 when the log-probs agree."""
    with torch.no_grad():
        m = mask.bool()
        sampler = torch.where(m, sampler_logprobs, 0.0)
        trainer = torch.where(m, trainer_logprobs, 0.0)
        return {
            "kl_k1": masked_mean(kl_per_token(sampler, trainer, "k1"), m),
            "kl_k3": masked_mean(kl_per_token(sampler, trainer, "k3"), m),
            "weight_mean": masked_mean(is_weights(trainer, sampler, m, cap), m),
            "truncated_frac": masked_mean((torch.exp(trainer - sampler) > cap).to(
                trainer.dtype), m),
        }
