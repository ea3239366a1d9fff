"""Sampler against trainer (tether.losses.mismatch): truncated importance weights and the
mismatch measurements on hand-computed values, invariance to padding, and their effect on
the policy loss."""

import math
import random

import pytest
import torch
from test_ppo_losses import _padded_mask

from tether.losses.mismatch import is_weights, mismatch_stats
from tether.losses.ppo import policy_loss

NAN, INF = float("nan"), float("inf")
LN2, LN3, LN15 = math.log(2), math.log(3), math.log(1.5)

# Two rows of three positions; row 0 right-padded, row 1 left-padded (garbage in the padding).
# Per response token, d = trainer - sampler is 0, ln 3 | -ln 2, ln 1.5, so the ratio
# r = pi_trainer / pi_sampler is 1, 3 | 0.5, 1.5, and the weights at cap 2 are 1, 2 | 0.5, 1.5.
MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])
TRAINER = torch.tensor([[-1.0, -2.0, NAN], [INF, -0.5, -3.0]], dtype=torch.float64)
SAMPLER = torch.tensor([[-1.0, -2.0 - LN3, -INF], [NAN, -0.5 + LN2, -3.0 - LN15]],
                       dtype=torch.float64)


def test_weights_hand_computed():
    weights = is_weights(TRAINER, SAMPLER, MASK, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.5, 1.5]],
                                                     dtype=torch.float64))
    assert not weights.requires_grad
    # a cap above every ratio truncates nothing
    torch.testing.assert_close(is_weights(TRAINER, SAMPLER, MASK, cap=10.0)[0, 1],
                               torch.tensor(3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="cap"):
        is_weights(TRAINER, SAMPLER, MASK, cap=0.0)


def test_mismatch_stats_hand_computed():
    stats = mismatch_stats(TRAINER, SAMPLER, MASK, cap=2.0)
    # k1: mean of sampler - trainer = -(0 + ln 3 - ln 2 + ln 1.5) / 4 = -ln 2.25 / 4
    assert stats["kl_k1"].item() == pytest.approx(-math.log(2.25) / 4)
    # k3: mean of r - 1 - ln r = (0 + (2 - ln 3) + (-0.5 + ln 2) + (0.5 - ln 1.5)) / 4
    assert stats["kl_k3"].item() == pytest.approx((2 - math.log(2.25)) / 4)
    assert stats["weight_mean"].item() == pytest.approx((1 + 2 + 0.5 + 1.5) / 4)
    assert stats["truncated_frac"].item() == pytest.approx(1 / 4)  # r = 3 only
    assert all(s.ndim == 0 and not s.requires_grad for s in stats.values())


def test_padding_changes_nothing():
    """Other padding (another side, more of it, other garbage) leaves every number as it was."""
    width = 7
    trainer = torch.full((2, width), -INF, dtype=torch.float64)
    sampler = torch.full((2, width), NAN, dtype=torch.float64)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, (start, cols) in enumerate([(4, [0, 1]), (1, [1, 2])]):  # new places in the row
        trainer[row, start:start + 2] = TRAINER[row, cols]
        sampler[row, start:start + 2] = SAMPLER[row, cols]
        mask[row, start:start + 2] = 1
    for key, value in mismatch_stats(trainer, sampler, mask, 2.0).items():
        assert value.item() == pytest.approx(mismatch_stats(TRAINER, SAMPLER, MASK, 2.0)[key]
                                             .item(), rel=1e-12), key
    assert torch.equal(is_weights(trainer, sampler, mask, 2.0)[mask.bool()],
                       is_weights(TRAINER, SAMPLER, MASK, 2.0)[MASK.bool()])


def test_agreeing_log_probs_give_weight_one_and_no_mismatch():
    torch.manual_seed(3)
    mask = _padded_mask(random.Random(3), 5, 9)
    logprobs = torch.randn(5, 9) - 3
    weights = is_weights(logprobs, logprobs.clone(), mask, cap=2.0)
    assert torch.equal(weights, torch.ones_like(weights))  # exactly: exp(0) = 1
    stats = mismatch_stats(logprobs, logprobs.clone(), mask, cap=2.0)
    assert stats["kl_k1"].item() == 0.0 and stats["kl_k3"].item() == 0.0
    assert stats["weight_mean"].item() == 1.0 and stats["truncated_frac"].item() == 0.0


def test_weights_scale_each_token_of_the_policy_loss():
    """Each token's clipped term, and its gradient, times its weight; the stats unchanged."""
    torch.manual_seed(4)
    mask = _padded_mask(random.Random(4), 4, 8)
    old = torch.randn(4, 8, dtype=torch.float64) - 2
    logp = (old + 0.3 * torch.randn(4, 8, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(4, 8, dtype=torch.float64)
    weights = torch.where(mask.bool(), torch.rand(4, 8, dtype=torch.float64) * 2, NAN)

    plain, plain_stats = policy_loss(logp, old, adv, mask, 0.2)
    assert torch.equal(policy_loss(logp, old, adv, mask, 0.2,
                                   weights=torch.ones(4, 8, dtype=torch.float64))[0], plain)
    weighted, stats = policy_loss(logp, old, adv, mask, 0.2, weights=weights)
    (grad,) = torch.autograd.grad(weighted, logp)
    (plain_grad,) = torch.autograd.grad(plain, logp)
    torch.testing.assert_close(grad, torch.where(mask.bool(), plain_grad * weights, 0.0))
    # the loss is the same sum of per-token terms, each times its weight
    ratio = torch.exp(logp.detach() - old)
    terms = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    expected = (terms * weights)[mask.bool()].sum() / mask.sum()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-12)
    assert stats.keys() == plain_stats.keys()
    assert all(torch.equal(stats[k], plain_stats[k]) for k in stats)
