"""DPO-family losses: hand-computed values, parity with the papers' formulas, gradients."""

import math
import random

import pytest
import torch

from tether.losses.dpo import (
    LOSSES,
    chosen_nll,
    hinge_loss,
    ipo_loss,
    logratio_margin,
    robust_loss,
    sigmoid_loss,
)

# margins 0, 1, -2 at beta 0.5, so beta * margin = 0, 0.5, -1:
# -log sigmoid(0) = ln 2; -log sigmoid(0.5) = ln(1 + e^-0.5) = 0.474077;
# -log sigmoid(-1) = ln(1 + e) = 1.313262; -log sigmoid(-0.5) = 0.974077; -log sigmoid(1) = 0.313262
MARGIN = torch.tensor([0.0, 1.0, -2.0])


def test_margin_is_the_difference_of_log_ratios():
    got = logratio_margin(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                          torch.tensor([-11.5]))
    assert got.item() == pytest.approx((-10 + 11) - (-12 + 11.5))  # 1 - (-0.5) = 1.5


def test_sigmoid_hand_computed():
    torch.testing.assert_close(sigmoid_loss(MARGIN, 0.5),
                               torch.tensor([0.693147, 0.474077, 1.313262]), atol=1e-6, rtol=0)


def test_conservative_dpo_hand_computed():
    # 0.9 * -log s(x) + 0.1 * -log s(-x): at x = 0.5: 0.9 * 0.474077 + 0.1 * 0.974077 = 0.524077
    torch.testing.assert_close(sigmoid_loss(MARGIN, 0.5, label_smoothing=0.1),
                               torch.tensor([0.693147, 0.524077, 1.213262]), atol=1e-6, rtol=0)


def test_robust_hand_computed():
    # (0.9 * -log s(x) - 0.1 * -log s(-x)) / 0.8: at x = 0.5: (0.426669 - 0.097408) / 0.8
    torch.testing.assert_close(robust_loss(MARGIN, 0.5, 0.1),
                               torch.tensor([0.693147, 0.411577, 1.438262]), atol=1e-6, rtol=0)


def test_ipo_hand_computed():
    # target margin 1 / (2 * 0.5) = 1: (0 - 1)^2, (1 - 1)^2, (-2 - 1)^2
    torch.testing.assert_close(ipo_loss(MARGIN, 0.5), torch.tensor([1.0, 0.0, 9.0]))


def test_hinge_hand_computed():
    # max(0, 1 - 0.5 * m): 1, 0.5, 2; and 0 beyond a margin of 1 / beta
    torch.testing.assert_close(hinge_loss(torch.tensor([0.0, 1.0, -2.0, 3.0]), 0.5),
                               torch.tensor([1.0, 0.5, 2.0, 0.0]))


def test_chosen_nll_is_per_token():
    torch.testing.assert_close(chosen_nll(torch.tensor([-12.0, -3.0]), torch.tensor([4, 3])),
                               torch.tensor([3.0, 1.0]))


# ---- parity: the papers' formulas written out by hand, in float64, one pair at a time ----

def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _paper(name: str, pw: float, pl: float, rw: float, rl: float, beta: float,
           eps: float) -> float:
    h = (pw - rw) - (pl - rl)
    if name == "sigmoid":  # DPO eq. 7, with cDPO's soft label
        return -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
    if name == "robust":  # rDPO eq. 8
        return ((1 - eps) * -_log_sigmoid(beta * h) - eps * -_log_sigmoid(-beta * h)) \
            / (1 - 2 * eps)
    if name == "ipo":  # IPO eq. 17, tau = beta
        return (h - 1 / (2 * beta)) ** 2
    if name == "hinge":  # SLiC-HF calibration loss with delta = 1 on beta-scaled log-ratios
        return max(0.0, 1 - beta * h)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_every_loss_matches_the_paper_formula_on_random_inputs(name, beta):
    rng = random.Random(hash((name, beta)) % 1000)
    eps = 0.0 if name in ("ipo", "hinge") else 0.2
    logps = [[rng.uniform(-80, -5) for _ in range(64)] for _ in range(4)]
    got = LOSSES[name](logratio_margin(*[torch.tensor(x, dtype=torch.float64) for x in logps]),
                       beta, eps)
    want = torch.tensor([_paper(name, *four, beta, eps) for four in zip(*logps, strict=True)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_robust_is_unbiased_under_flipped_labels(eps):
    # E over the noise of the rDPO loss equals the clean DPO loss (Chowdhury et al., lemma 3.1)
    m, beta = torch.linspace(-5, 5, 11, dtype=torch.float64), 0.7
    expected = (1 - eps) * robust_loss(m, beta, eps) + eps * robust_loss(-m, beta, eps)
    torch.testing.assert_close(expected, sigmoid_loss(m, beta))


def test_label_smoothing_zero_is_plain_dpo():
    m = torch.randn(32, dtype=torch.float64)
    torch.testing.assert_close(robust_loss(m, 0.1, 0.0), sigmoid_loss(m, 0.1))
    torch.testing.assert_close(sigmoid_loss(m, 0.1, 0.0), -torch.nn.functional.logsigmoid(0.1 * m))
    with pytest.raises(ValueError, match="< 0.5"):
        robust_loss(m, 0.1, 0.5)


# ---- gradients ----

def _grad(loss_fn, margins: torch.Tensor) -> torch.Tensor:
    m = margins.clone().requires_grad_(True)
    loss_fn(m).sum().backward()
    return m.grad


def test_sigmoid_gradient_vanishes_for_large_margins_and_is_largest_near_zero():
    beta = 0.1
    m = torch.tensor([0.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    g = _grad(lambda x: sigmoid_loss(x, beta), m)
    # d/dm -log sigmoid(beta m) = -beta * sigmoid(-beta m): -beta / 2 at 0, -> 0 as m grows
    assert g[0].item() == pytest.approx(-beta / 2)
    assert abs(g[-1].item()) < 1e-40
    assert (g.abs().diff() < 0).all()  # shrinking as the pair becomes well separated
    # Among correctly ordered pairs (m >= 0) the push is largest at 0; the loss is also most
    # curved there: d2/dm2 = beta^2 sigmoid(x) sigmoid(-x), maximal at x = 0.
    grid = torch.arange(-200, 201, dtype=torch.float64) / 10  # holds exactly 0
    g_grid = _grad(lambda x: sigmoid_loss(x, beta), grid)
    assert g_grid[grid >= 0].abs().argmax().item() == 0
    curvature = torch.autograd.functional.hessian(
        lambda x: sigmoid_loss(x, beta).sum(), grid).diagonal()
    assert grid[curvature.argmax()].item() == 0.0
    # a wrongly ordered pair (m < 0) is pushed harder still, up to beta: the loss never stalls
    assert (g_grid[grid < 0].abs() > beta / 2).all()


def test_hinge_and_ipo_gradients():
    beta = 0.5
    g = _grad(lambda x: hinge_loss(x, beta), torch.tensor([-1.0, 1.0, 2.5]))
    torch.testing.assert_close(g, torch.tensor([-beta, -beta, 0.0]))  # no push beyond 1 / beta
    g = _grad(lambda x: ipo_loss(x, beta), torch.tensor([0.0, 1.0, 3.0]))
    torch.testing.assert_close(g, torch.tensor([-2.0, 0.0, 4.0]))  # 2 (m - 1): pulled to 1
