"""The KTO loss: hand-computed values, the formula re-derived, z0's clamp and detachment,
the class weights, invariances."""

import math

import numpy as np
import pytest
import torch

from tether.losses.kto import (
    RECOMMENDED_RATIO,
    kto_loss,
    kto_losses,
    reference_point,
    weight_ratio,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Two rows: r = logps - ref = [0.5, -1.0]; the mismatched pairs' log-ratios [0.2, 0.4] give
# z0 = 0.3; beta = 0.5.
LOGPS, REF = t(-1.0, -2.0), t(-1.5, -1.0)
KL_LOGPS, KL_REF = t(-2.0, -3.0), t(-2.2, -3.4)
DESIRABLE = torch.tensor([True, False])


def test_two_rows_by_hand():
    # desirable: 1 - sigmoid(0.5 * (0.5 - 0.3)) = 1 - sigmoid(0.1) = 0.4750208
    # undesirable: 1 - sigmoid(0.5 * (0.3 - -1.0)) = 1 - sigmoid(0.65) = 0.3429895
    rows = kto_losses(LOGPS, REF, DESIRABLE, z0=0.3, beta=0.5)
    torch.testing.assert_close(rows, t(0.47502081252106, 0.34298953732650117))
    loss = kto_loss(LOGPS, REF, KL_LOGPS, KL_REF, DESIRABLE, beta=0.5)
    assert loss.item() == pytest.approx(0.4090051749237806, abs=1e-12)


def test_class_weights_by_hand():
    # lambda_D = 2, lambda_U = 0.5: 2 * (1 - sigmoid(0.1)) and 0.5 * (1 - sigmoid(0.65))
    loss = kto_loss(LOGPS, REF, KL_LOGPS, KL_REF, DESIRABLE, beta=0.5, desirable_weight=2.0,
                    undesirable_weight=0.5)
    assert loss.item() == pytest.approx((0.95004162504212 + 0.17149476866325059) / 2,
                                        abs=1e-12)


def test_z0_is_clamped_at_zero():
    assert reference_point(t(-1.0, -1.0), t(-0.5, -0.9)).item() == 0.0  # mean -0.3
    assert reference_point(KL_LOGPS, KL_REF).item() == pytest.approx(0.3, abs=1e-12)
    # With the policy below the reference on the mismatched pairs, z0 = 0:
    # 1 - sigmoid(0.5 * 0.5) and 1 - sigmoid(0.5 * 1.0)
    loss = kto_loss(LOGPS, REF, t(-3.0, -3.0), t(-2.0, -2.0), DESIRABLE, beta=0.5)
    assert loss.item() == pytest.approx(0.4076820839561736, abs=1e-12)


def test_no_gradient_flows_through_z0():
    kl_logps = KL_LOGPS.clone().requires_grad_(True)
    logps = LOGPS.clone().requires_grad_(True)
    kto_loss(logps, REF, kl_logps, KL_REF, DESIRABLE, beta=0.5).backward()
    assert kl_logps.grad is None
    # d/dr of lambda - lambda * sigmoid(beta * s * (r - z0)), s = +1 up / -1 down, over N rows:
    # -s * lambda * beta * sigmoid * (1 - sigmoid) / N
    s_up, s_down = 1 / (1 + math.exp(-0.1)), 1 / (1 + math.exp(-0.65))
    expected = t(-0.5 * s_up * (1 - s_up) / 2, 0.5 * s_down * (1 - s_down) / 2)
    torch.testing.assert_close(logps.grad, expected)
    # A z0 handed in with a gradient of its own is still a constant.
    z0 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    kto_losses(LOGPS.clone().requires_grad_(True), REF, DESIRABLE, z0, beta=0.5).sum().backward()
    assert z0.grad is None


def reference(logps, ref, kl_logps, kl_ref, desirable, beta, w_d, w_u):
    """The paper's loss written out again, one row at a time in float64, in the form
    lambda_y * sigmoid(-s * beta * (r - z0)) (lambda - lambda * sigmoid(x) = lambda *
    sigmoid(-x))."""
    z0 = max(0.0, float(np.mean(kl_logps - kl_ref)))
    total = 0.0
    for lp, rf, up in zip(logps, ref, desirable, strict=True):
        sign, weight = (1.0, w_d) if up else (-1.0, w_u)
        total += weight / (1 + math.exp(sign * beta * ((lp - rf) - z0)))
    return total / len(logps)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_formula_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 3 + seed
    logps, ref = -5 * torch.rand(n, generator=g) - 1, -5 * torch.rand(n, generator=g) - 1
    kl_logps, kl_ref = -5 * torch.rand(n, generator=g), -5 * torch.rand(n, generator=g)
    desirable = torch.rand(n, generator=g) < 0.5
    beta, w_d, w_u = 0.05 + seed * 0.2, 1.0 + seed * 0.3, 1.5 - seed * 0.2
    got = kto_loss(logps, ref, kl_logps, kl_ref, desirable, beta, w_d, w_u)
    want = reference(logps.double().numpy(), ref.double().numpy(), kl_logps.double().numpy(),
                     kl_ref.double().numpy(), desirable.numpy(), beta, w_d, w_u)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_row_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    logps, ref, kl_logps, kl_ref = (torch.randn(6, generator=g) for _ in range(4))
    desirable = torch.tensor([True, False, True, True, False, False])
    loss = kto_loss(logps, ref, kl_logps, kl_ref, desirable, beta=0.3)
    rows, kl_rows = torch.randperm(6, generator=g), torch.randperm(6, generator=g)
    shuffled = kto_loss(logps[rows], ref[rows], kl_logps[kl_rows], kl_ref[kl_rows],
                        desirable[rows], beta=0.3)
    torch.testing.assert_close(loss, shuffled)


def test_policy_equal_to_reference_gives_half_the_weights():
    # r = 0 and z0 = 0: every row loses lambda_y - lambda_y * sigmoid(0) = lambda_y / 2.
    zeros = torch.zeros(4)
    desirable = torch.tensor([True, True, False, True])
    loss = kto_loss(zeros, zeros, zeros, zeros, desirable, beta=0.1, desirable_weight=1.2,
                    undesirable_weight=0.8)
    assert loss.item() == pytest.approx((3 * 1.2 + 0.8) / 2 / 4)


def test_the_loss_rewards_raising_desirable_and_lowering_undesirable():
    logps = torch.zeros(2, requires_grad=True)
    kto_loss(logps, torch.zeros(2), torch.zeros(2), torch.zeros(2),
             torch.tensor([True, False]), beta=0.1).backward()
    assert logps.grad[0] < 0 < logps.grad[1]  # descent raises the up, lowers the down


def test_weight_ratio():
    assert weight_ratio(30, 10, 1.0, 3.0) == 1.0
    assert weight_ratio(10, 30, 1.0, 1.0) == pytest.approx(1 / 3)
    lo, hi = RECOMMENDED_RATIO
    assert lo <= weight_ratio(40, 30, 1.0, 1.0) <= hi
