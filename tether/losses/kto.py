"""KTO: a policy loss on unpaired thumbs up / thumbs down, with no preference pairs.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization". Each row is
a prompt x, one response y and a label: desirable (thumbs up) or undesirable (thumbs down).
With log-probs summed over the response tokens,

    r(x, y) = log pi(y|x) - log ref(y|x)                      the implicit reward, over beta
    z0      = max(0, mean over the batch of r(x, y'))         the reference point
    v(x, y) = lambda_D * sigmoid(beta * (r - z0))   if y is desirable
              lambda_U * sigmoid(beta * (z0 - r))   if y is undesirable
    loss    = mean over the batch of (lambda_y - v(x, y))

z0 estimates KL(pi || ref) from MISMATCHED pairs: each prompt x with another row's response
y', so that it measures how far the policy has moved in general rather than on the very
responses being judged. It is a constant of the loss (no gradient flows through it), as in the
paper and TRL: a desirable response gains only by beating the policy's average drift, and an
undesirable one is pushed down below it.

lambda_D and lambda_U (desirable_weight, undesirable_weight) weigh the two classes; the paper
recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] for n_D desirable and n_U undesirable
rows (`weight_ratio` computes it).
"""

from __future__ import annotations

import torch

# The paper's recommended range for lambda_D * n_D / (lambda_U * n_U).
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)


def reference_point(kl_logps: torch.Tensor, kl_ref_logps: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean(log pi(y'|x) - log ref(y'|x))) over mismatched pairs (x, y'), detached:
    a scalar."""
    return (kl_logps - kl_ref_logps).mean().clamp(min=0).detach()


def kto_losses(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
               z0: torch.Tensor | float, beta: float, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0) -> torch.Tensor:
    """lambda_y - v(x, y) per row: `logps` and `ref_logps` [N] summed over each response,
    `desirable` [N] bool, `z0` the reference point (reference_point; not differentiated)."""
    z0 = torch.as_tensor(z0, dtype=logps.dtype, device=logps.device).detach()
    margin = beta * ((logps - ref_logps) - z0)
    value = torch.where(desirable, desirable_weight * torch.sigmoid(margin),
                        undesirable_weight * torch.sigmoid(-margin))
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(logps.dtype)
    return weight - value


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, kl_logps: torch.Tensor,
             kl_ref_logps: torch.Tensor, desirable: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """The KTO loss of one batch: the mean of kto_losses, with z0 from the batch's mismatched
    pairs (kl_logps, kl_ref_logps: [M] summed log-probs of each prompt with another row's
    response)."""
    z0 = reference_point(kl_logps, kl_ref_logps)
    return kto_losses(logps, ref_logps, desirable, z0, beta, desirable_weight,
                      undesirable_weight).mean()


def weight_ratio(num_desirable: int, num_undesirable: int, desirable_weight: float,
                 undesirable_weight: float) -> float:
    """lambda_D * n_D / (lambda_U * n_U): the paper keeps it in RECOMMENDED_RATIO."""
    return desirable_weight * num_desirable / (undesirable_weight * num_undesirable)
