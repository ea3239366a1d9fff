"""Direct preference optimisation and its relatives: losses on a policy's implicit reward.

Every loss here is a function of the log-ratio margin of a pair,

    margin = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)),

with y_w the preferred (chosen) and y_l the dispreferred (rejected) response, and log-probs
summed over the response tokens. beta * (log pi - log ref) is the implicit reward of DPO, so
beta * margin is the implicit reward margin. Each function returns one loss per pair; the
caller decides how pairs are averaged (tether: over the pairs of a prompt, then over prompts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logratio_margin(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor,
                    ref_rejected_logps: torch.Tensor) -> torch.Tensor:
    """(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), per pair."""
    return (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)


def sigmoid_loss(margin: torch.Tensor, beta: float,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: -log sigmoid(beta * margin).

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model". With label_smoothing = eps > 0 this is conservative DPO (cDPO; Mitchell
    2023, "A note on DPO with noisy preferences & relationship to IPO"): the label is taken to
    be wrong with probability eps, giving the cross-entropy against soft targets
    (1 - eps) * -log sigmoid(beta * margin) + eps * -log sigmoid(-beta * margin).
    """
    logits = beta * margin
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """IPO: (margin - 1 / (2 * beta))^2, with beta in the role of the paper's tau.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences". A squared loss regresses the margin to a finite target instead of pushing
    it to infinity, which DPO does on deterministic preferences. The paper's margin uses
    summed log-probs, as here (some implementations average over tokens instead, which
    changes the scale that beta works on)."""
    del label_smoothing  # not part of IPO; the config rejects it
    return (margin - 1 / (2 * beta)) ** 2


def hinge_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """SLiC: max(0, 1 - beta * margin), the calibration loss of SLiC-HF on the log-ratio.

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", here with
    the reference-normalised log-likelihoods of DPO (as in Liu et al. 2023, "Statistical
    Rejection Sampling Improves Preference Optimization"): pairs already ranked by a margin of
    1 / beta contribute nothing."""
    del label_smoothing  # not part of SLiC; the config rejects it
    return torch.relu(1 - beta * margin)


def robust_loss(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO (rDPO): an unbiased loss under labels flipped with probability eps.

    Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback":
    ((1 - eps) * -log sigmoid(beta * margin) - eps * -log sigmoid(-beta * margin)) / (1 - 2 eps).
    Its expectation under eps-noisy labels equals the DPO loss on clean labels; it can be
    negative, and eps must be below 0.5."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logits = beta * margin
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


# name -> loss(margin, beta, label_smoothing); `dpo.loss` in the config picks one of these
# names, which it takes from tether.choices.DPO_LOSSES (the config loads without torch).
LOSSES = {"sigmoid": sigmoid_loss, "ipo": ipo_loss, "hinge": hinge_loss, "robust": robust_loss}


def chosen_nll(chosen_logps: torch.Tensor, chosen_num_tokens: torch.Tensor) -> torch.Tensor:
    """RPO's extra term: the negative log-likelihood of the chosen response per token.

    Pang et al. 2024, "Iterative Reasoning Preference Optimization": DPO + alpha * NLL(y_w) /
    |y_w| keeps the likelihood of the chosen responses from falling while the margin grows."""
    return -chosen_logps / chosen_num_tokens.clamp(min=1)
