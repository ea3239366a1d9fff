"""Reward-model objectives for K-way rankings: Bradley-Terry over every ordered pair, or the
Plackett-Luce likelihood of the whole order."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_pairs(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: response i is ranked strictly better (lower rank) than j.

    Ties give no pair; padded responses (mask 0) take part in none."""
    valid = mask.bool()
    return (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def bradley_terry_loss(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, *,
                       margin: float = 0.0, center_coef: float = 0.0,
                       label_smoothing: float = 0.0,
                       num_groups: torch.Tensor | float | None = None,
                       num_responses: torch.Tensor | float | None = None) -> torch.Tensor:
    """-log sigmoid(r_better - r_worse - margin), averaged over the pairs of each prompt, then
    over prompts; plus `center_coef` * mean squared reward (reward centering). With
    `label_smoothing` eps, each pair's label is taken as right with probability 1 - eps:
    -(1 - eps) log sigmoid(d) - eps log sigmoid(-d), d = r_better - r_worse - margin, whose
    minimum is at a finite d = log((1 - eps) / eps) (a noisy label cannot push it further).

    rewards, ranks, mask: [B, K], one row per prompt with its K responses (K = 2 for plain
    chosen/rejected pairs: ranks [0, 1]). Each response's reward is computed once and used in
    all C(K, 2) of its pairs. Averaging within a prompt first keeps a prompt with many
    responses from outweighing others (InstructGPT treats a prompt's comparisons as one
    batch element).

    num_groups, num_responses: divide the summed per-prompt losses (and the summed squared
    rewards) by these instead of this call's counts of prompts with pairs (and of responses).
    Pass the whole optimizer batch's counts when it is split into microbatches or across
    ranks, so the gradients add up to exactly those of the unsplit batch.
    """
    pairs = ranking_pairs(ranks, mask)
    diff = rewards[:, :, None] - rewards[:, None, :]  # r_i - r_j
    pair_loss = -F.logsigmoid(diff - margin) * pairs
    if label_smoothing:
        pair_loss = (1 - label_smoothing) * pair_loss - label_smoothing * F.logsigmoid(
            margin - diff) * pairs
    return _reduce(pair_loss, pairs.sum(2), rewards, mask, center_coef, num_groups,
                   num_responses)


def plackett_luce_loss(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor, *,
                       center_coef: float = 0.0,
                       num_groups: torch.Tensor | float | None = None,
                       num_responses: torch.Tensor | float | None = None) -> torch.Tensor:
    """Minus the Plackett-Luce log-likelihood of each ranking: the best response chosen from
    all K with probability softmax(r), the next from the rest, and so on, so each response
    with a worse one below it adds -(r_i - logsumexp of r over the responses ranked at or
    below it). Averaged over those choices within a prompt, then over prompts, with the
    reduction, centering and num_groups / num_responses of bradley_terry_loss.

    It is the exact likelihood of a labeler who ranks by Plackett-Luce (tether's simulated
    one does), where the C(K, 2) Bradley-Terry pairs of a ranking are each right on their
    own but are counted as if independent. For a pair (K = 2) the two losses are equal. Tied
    responses share a choice set (each is chosen over the tie and everything below it);
    the responses at the bottom choose from nothing and add no term."""
    valid = mask.bool()
    below = (ranks[:, None, :] > ranks[:, :, None]) & valid[:, None, :]  # [B, i, j]
    chooses = below.any(2) & valid  # [B, K]: response i is chosen over something
    # Each pool holds i itself (padding too), so no logsumexp is over nothing (a NaN gradient).
    itself = torch.eye(ranks.shape[1], dtype=torch.bool, device=ranks.device)
    at_or_below = ((ranks[:, None, :] == ranks[:, :, None]) & valid[:, None, :]) | below | itself
    pool = rewards[:, None, :].masked_fill(~at_or_below, float("-inf"))
    choice_loss = (torch.logsumexp(pool, dim=2) - rewards).masked_fill(~chooses, 0.0)
    return _reduce(choice_loss[:, :, None], chooses.long(), rewards, mask, center_coef,
                   num_groups, num_responses)


def _reduce(terms: torch.Tensor, counts: torch.Tensor, rewards: torch.Tensor,
            mask: torch.Tensor, center_coef: float, num_groups, num_responses) -> torch.Tensor:
    """Mean of each prompt's loss terms (terms [B, K, ...] summed where counted; counts [B, K]
    the terms per response), summed over prompts and divided by num_groups (default: the
    prompts with a term), plus the centering term over num_responses."""
    per_prompt_terms = counts.sum(1)
    per_prompt = terms.sum(tuple(range(1, terms.dim()))) / per_prompt_terms.clamp(min=1)
    groups = (per_prompt_terms > 0).sum() if num_groups is None else num_groups
    groups = torch.as_tensor(groups, dtype=rewards.dtype).clamp(min=1)
    loss = per_prompt.sum() / groups
    if center_coef:
        valid = mask.to(rewards.dtype)
        count = valid.sum() if num_responses is None else num_responses
        count = torch.as_tensor(count, dtype=rewards.dtype).clamp(min=1)
        loss = loss + center_coef * (rewards.pow(2) * valid).sum() / count
    return loss


def pairwise_accuracy(rewards: torch.Tensor, ranks: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(number of pairs ordered correctly, number of pairs); an exact tie counts as half."""
    pairs = ranking_pairs(ranks, mask)
    diff = rewards[:, :, None] - rewards[:, None, :]
    correct = (diff > 0).float() + 0.5 * (diff == 0).float()
    return (correct * pairs).sum(), pairs.sum()
