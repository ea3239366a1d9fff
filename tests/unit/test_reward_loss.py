"""Bradley-Terry and Plackett-Luce over K-way rankings, on hand-computed values and
invariances."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tether.losses.reward import (
    bradley_terry_loss,
    pairwise_accuracy,
    plackett_luce_loss,
    ranking_pairs,
)


def nll(x: float) -> float:  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_pair_hand_computed_with_margin_and_centering():
    rewards = torch.tensor([[2.0, 0.5]])
    ranks = torch.tensor([[0, 1]])  # the first is better
    mask = torch.ones(1, 2)
    assert bradley_terry_loss(rewards, ranks, mask).item() == pytest.approx(nll(1.5))
    assert bradley_terry_loss(rewards, ranks, mask, margin=1.0).item() == pytest.approx(nll(0.5))
    centered = bradley_terry_loss(rewards, ranks, mask, center_coef=0.1)
    assert centered.item() == pytest.approx(nll(1.5) + 0.1 * (4.0 + 0.25) / 2)


def test_label_smoothing_hand_computed_and_its_finite_optimum():
    rewards, ranks, mask = torch.tensor([[2.0, 0.5]]), torch.tensor([[0, 1]]), torch.ones(1, 2)
    got = bradley_terry_loss(rewards, ranks, mask, label_smoothing=0.1, margin=0.5)
    assert got.item() == pytest.approx(0.9 * nll(1.0) + 0.1 * nll(-1.0))
    # The loss is smallest where the gap is log((1 - eps) / eps), not at infinity.
    eps = 0.2
    gaps = torch.linspace(-2, 6, 801)
    losses = [bradley_terry_loss(torch.tensor([[g.item(), 0.0]]), ranks, mask,
                                 label_smoothing=eps).item() for g in gaps]
    best = gaps[min(range(len(losses)), key=losses.__getitem__)].item()
    assert best == pytest.approx(math.log((1 - eps) / eps), abs=0.01)


def test_k_way_loss_is_the_mean_of_its_pairwise_losses():
    torch.manual_seed(0)
    rewards = torch.randn(1, 4)
    ranks = torch.tensor([[2, 0, 3, 1]])
    expected = []
    for i, j in itertools.permutations(range(4), 2):
        if ranks[0, i] < ranks[0, j]:
            expected.append(nll((rewards[0, i] - rewards[0, j]).item()))
    assert len(expected) == 6  # C(4, 2)
    got = bradley_terry_loss(rewards, ranks, torch.ones(1, 4))
    assert got.item() == pytest.approx(sum(expected) / 6, rel=1e-6)


def test_ties_give_no_pairs_and_padding_takes_no_part():
    ranks = torch.tensor([[0, 0, 1, 5]])
    mask = torch.tensor([[1, 1, 1, 0]])
    pairs = ranking_pairs(ranks, mask)
    assert pairs.sum().item() == 2  # (0 > 2) and (1 > 2); the tie and the padded one give none
    assert pairs[0, 0, 2] and pairs[0, 1, 2]
    rewards = torch.tensor([[1.0, 3.0, 0.0, 100.0]])
    expected = (nll(1.0) + nll(3.0)) / 2
    assert bradley_terry_loss(rewards, ranks, mask).item() == pytest.approx(expected)
    # A prompt whose responses all tie has no pairs: it neither counts nor yields NaN.
    all_tied = bradley_terry_loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long),
                                  torch.ones(2, 3))
    assert all_tied.item() == 0.0


def test_prompts_are_averaged_after_their_pairs():
    rewards = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2], [0, 1, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    first = (nll(1.0) + nll(2.0) + nll(1.0)) / 3
    second = nll(0.5)
    got = bradley_terry_loss(rewards, ranks, mask)
    assert got.item() == pytest.approx((first + second) / 2)


def test_microbatch_split_with_global_counts_equals_whole_batch():
    torch.manual_seed(1)
    weights = torch.randn(6, 4, requires_grad=True)
    ranks = torch.randint(0, 3, (6, 4))
    mask = torch.ones(6, 4)
    mask[2, 3] = 0
    kw = {"margin": 0.2, "center_coef": 0.05}
    bradley_terry_loss(weights * 1.0, ranks, mask, **kw).backward()
    whole = weights.grad.clone()
    weights.grad = None
    groups = ranking_pairs(ranks, mask).any(-1).any(-1).sum()
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        bradley_terry_loss(weights[rows] * 1.0, ranks[rows], mask[rows], num_groups=groups,
                           num_responses=mask.sum(), **kw).backward()
    assert torch.allclose(weights.grad, whole, atol=1e-7)


def test_gradient_matches_autograd_of_the_formula():
    rewards = torch.tensor([[0.3, -0.2]], requires_grad=True)
    bradley_terry_loss(rewards, torch.tensor([[1, 0]]), torch.ones(1, 2)).backward()
    # d/d r_better of -log sigmoid(r_b - r_w) is -(1 - sigmoid(r_b - r_w)).
    s = torch.sigmoid(torch.tensor(-0.2 - 0.3))
    assert rewards.grad[0, 1].item() == pytest.approx(-(1 - s).item())
    assert rewards.grad[0, 0].item() == pytest.approx((1 - s).item())
    assert F.logsigmoid(torch.tensor(0.0)).item() == pytest.approx(-math.log(2))


def test_pairwise_accuracy_counts_ties_as_half():
    rewards = torch.tensor([[3.0, 1.0, 1.0]])
    ranks = torch.tensor([[0, 1, 2]])
    correct, total = pairwise_accuracy(rewards, ranks, torch.ones(1, 3))
    assert total.item() == 3 and correct.item() == 2.5


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_plackett_luce_hand_computed_on_a_ranking_of_three():
    rewards = torch.tensor([[0.5, 2.0, -1.0]])
    ranks = torch.tensor([[1, 0, 2]])  # 2.0 first, then 0.5, then -1.0
    first = lse(2.0, 0.5, -1.0) - 2.0  # the best chosen from all three
    second = lse(0.5, -1.0) - 0.5  # the next from the two left; the last chooses nothing
    got = plackett_luce_loss(rewards, ranks, torch.ones(1, 3))
    assert got.item() == pytest.approx((first + second) / 2, rel=1e-6)
    # The likelihood of the order is the product of its choices.
    probs = torch.softmax(rewards[0, [1, 0, 2]], 0)
    assert math.exp(-2 * got.item()) == pytest.approx(
        (probs[0] * torch.softmax(rewards[0, [0, 2]], 0)[0]).item(), rel=1e-6)


def test_plackett_luce_equals_bradley_terry_on_pairs_with_centering():
    torch.manual_seed(2)
    rewards = torch.randn(5, 2)
    ranks = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    mask = torch.ones(5, 2)
    assert plackett_luce_loss(rewards, ranks, mask, center_coef=0.1).item() == pytest.approx(
        bradley_terry_loss(rewards, ranks, mask, center_coef=0.1).item(), rel=1e-6)


def test_plackett_luce_ties_share_a_choice_set_and_padding_takes_no_part():
    rewards = torch.tensor([[1.0, 3.0, 0.0, 100.0]], requires_grad=True)
    ranks = torch.tensor([[0, 0, 1, 5]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # Each of the tied two is chosen over the tie and what is below; the last adds nothing.
    expected = ((lse(1.0, 3.0, 0.0) - 1.0) + (lse(1.0, 3.0, 0.0) - 3.0)) / 2
    loss = plackett_luce_loss(rewards, ranks, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert rewards.grad[0, 3].item() == 0.0 and torch.isfinite(rewards.grad).all()
    # All tied, or all padding: no choices, loss 0, no NaN in the gradient.
    rewards = torch.randn(2, 3, requires_grad=True)
    none = plackett_luce_loss(rewards, torch.zeros(2, 3, dtype=torch.long),
                              torch.tensor([[1, 1, 1], [0, 0, 0]]))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(rewards.grad).all()


def test_plackett_luce_microbatch_split_with_global_counts_equals_whole_batch():
    torch.manual_seed(3)
    weights = torch.randn(6, 4, requires_grad=True)
    ranks = torch.stack([torch.randperm(4) for _ in range(6)])
    mask = torch.ones(6, 4)
    mask[2, 3] = 0
    plackett_luce_loss(weights * 1.0, ranks, mask, center_coef=0.05).backward()
    whole = weights.grad.clone()
    weights.grad = None
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        plackett_luce_loss(weights[rows] * 1.0, ranks[rows], mask[rows], num_groups=6,
                           num_responses=mask.sum(), center_coef=0.05).backward()
    assert torch.allclose(weights.grad, whole, atol=1e-7)
