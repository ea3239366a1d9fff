"""PPO / GRPO / RLOO building blocks: hand-computed values, loop-based references of the
papers' recursions on random padded batches, gradients, and invariance to masked-out garbage."""

import math
import random
import statistics

import pytest
import torch

from tether.choices import GROUP_METHODS, IMPORTANCE_SAMPLING_LEVELS, KL_ESTIMATORS, LOSS_TYPES
from tether.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    explained_variance,
    gae,
    group_advantages,
    groups_with_spread,
    kl_loss,
    kl_per_token,
    last_token_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    overlong_penalty,
    policy_loss,
    shape_rewards,
    value_loss,
)

NAN = float("nan")
E = math.e


def _garbage(x: torch.Tensor, mask: torch.Tensor, fill: float = NAN) -> torch.Tensor:
    """x with every masked-out position replaced by `fill` (what padding may hold)."""
    return torch.where(mask.bool(), x, fill)


def _padded_mask(rng: random.Random, batch: int, length: int) -> torch.Tensor:
    """[batch, length] response masks: even rows left-padded (the response ends at the last
    position), odd rows right-padded (padding after the response), random lengths."""
    mask = torch.zeros(batch, length)
    for i in range(batch):
        response = rng.randint(1, length - 2)
        prompt = rng.randint(1, length - response)
        start = length - response if i % 2 == 0 else prompt
        mask[i, start:start + response] = 1
    return mask


# ---- masked statistics ----

# Masked values 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, so the biased
# variance is 32 / 8 = 4 and the unbiased one 32 / 7.
X = torch.tensor([[2.0, 4.0, 4.0, 4.0, 100.0, -3.0], [5.0, 5.0, 7.0, 9.0, 50.0, 60.0]])
MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])


def test_masked_sum_and_mean_hand_computed():
    assert masked_sum(X, MASK).item() == 40.0
    assert masked_mean(X, MASK).item() == 5.0
    torch.testing.assert_close(masked_sum(X, MASK, dim=1), torch.tensor([14.0, 26.0]))
    torch.testing.assert_close(masked_mean(X, MASK, dim=1), torch.tensor([3.5, 6.5]))
    torch.testing.assert_close(masked_mean(X, MASK, dim=0),
                               torch.tensor([3.5, 4.5, 5.5, 6.5, NAN, NAN]), equal_nan=True)


def test_masked_var_hand_computed():
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(4.0)
    assert masked_var(X, MASK).item() == pytest.approx(32 / 7)
    # as torch.var: one element has no unbiased variance
    one = torch.zeros_like(MASK)
    one[1, 2] = 1
    assert math.isnan(masked_var(X, one).item())
    assert masked_var(X, one, unbiased=False).item() == 0.0


def test_masked_whiten_hand_computed():
    x = torch.tensor([[9.0, 1.0, 3.0, -7.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    # mean 2, unbiased variance ((1 - 2)^2 + (3 - 2)^2) / 1 = 2: (x - 2) / sqrt(2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(masked_whiten(x, mask, eps=0.0), torch.tensor([[0.0, -s, s, 0.0]]))
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False, eps=0.0),
                               torch.tensor([[0.0, 2 - s, 2 + s, 0.0]]))


def test_masked_whiten_gives_zero_mean_unit_variance_and_handles_degenerate_inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 9, dtype=torch.float64) * 3 + 7
    mask = _padded_mask(random.Random(0), 4, 9)
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    shifted = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(shifted - w, masked_mean(x, mask) * mask.double())
    # constant values whiten to 0 (eps keeps 0 / 0 away); a single value has no spread
    assert masked_whiten(torch.full((2, 3), 4.0), torch.ones(2, 3)).abs().max().item() == 0.0
    one = torch.tensor([[0, 0, 1]])
    torch.testing.assert_close(masked_whiten(x[:1, :3], one), torch.zeros(1, 3, dtype=x.dtype))
    torch.testing.assert_close(masked_whiten(x[:1, :3], one, shift_mean=False),
                               x[:1, :3] * one)


@pytest.mark.parametrize("fill", [NAN, math.inf, 1e30])
def test_masked_statistics_ignore_garbage_at_masked_out_positions(fill):
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    mask = _padded_mask(random.Random(1), 5, 8)
    dirty = _garbage(x, mask, fill)
    for bool_or_float in (mask, mask.bool()):
        assert masked_sum(dirty, bool_or_float).item() == masked_sum(x, mask).item()
        torch.testing.assert_close(masked_mean(dirty, bool_or_float, dim=1),
                                   masked_mean(x, mask, dim=1))
        assert masked_var(dirty, bool_or_float).item() == masked_var(x, mask).item()
        whitened = masked_whiten(dirty, bool_or_float, shift_mean=False)
        torch.testing.assert_close(whitened, masked_whiten(x, mask, shift_mean=False))
        assert (whitened[~mask.bool()] == 0).all()


# ---- KL estimators ----

def test_kl_estimators_hand_computed():
    logp = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-2.0, -2.0, -1.0])
    # d = logp - ref = 1, 0, -2; r = exp(-d); k3 = (r - 1) - log r = (r - 1) + d:
    # d = 1: e^-1 - 1 + 1 = e^-1; d = -2: e^2 - 1 - 2 = 4.389056
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), torch.tensor([1.0, 0.0, -2.0]))
    torch.testing.assert_close(kl_per_token(logp, ref, "k2"), torch.tensor([0.5, 0.0, 2.0]))
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"),
                               torch.tensor([0.367879, 0.0, 4.389056]))
    assert torch.equal(kl_per_token(logp, ref), kl_per_token(logp, ref, "k1"))
    assert KL_ESTIMATORS == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    # Their expectation under tokens sampled from pi, taken exactly over a small vocabulary,
    # is KL(pi || ref); k2's is not (it is a low-bias approximation).
    torch.manual_seed(2)
    logp = torch.log_softmax(torch.randn(7, dtype=torch.float64), 0)
    ref = torch.log_softmax(torch.randn(7, dtype=torch.float64), 0)
    kl = (logp.exp() * (logp - ref)).sum()
    for estimator in ("k1", "k3"):
        expected = (logp.exp() * kl_per_token(logp, ref, estimator)).sum()
        assert expected.item() == pytest.approx(kl.item(), rel=1e-12)
    assert (logp.exp() * kl_per_token(logp, ref, "k2")).sum().item() != pytest.approx(kl.item())


def test_k3_is_nonnegative_and_close_to_k2_for_small_differences():
    torch.manual_seed(3)
    d = torch.cat([torch.linspace(-20, 20, 401), torch.randn(1000)]).double()
    assert (kl_per_token(d, torch.zeros_like(d), "k3") >= 0).all()
    # k3 - k2 = -d^3 / 6 + O(d^4)
    small = torch.linspace(-1e-2, 1e-2, 101, dtype=torch.float64)
    k2 = kl_per_token(small, torch.zeros_like(small), "k2")
    k3 = kl_per_token(small, torch.zeros_like(small), "k3")
    assert ((k3 - k2).abs() <= small.abs() ** 3 / 6 * 1.01 + 1e-20).all()
    # no cancellation in float32: (exp(-d) - 1) + d would be mostly rounding error here
    tiny = torch.tensor([1e-3, -1e-3])
    want = torch.tensor([d * d / 2 - d ** 3 / 6 for d in tiny.double().tolist()])
    torch.testing.assert_close(kl_per_token(tiny, torch.zeros(2), "k3"), want.float(),
                               rtol=1e-3, atol=0)


# ---- last token, reward shaping ----

# Row 0 right-padded (prompt 2, response 3, padding 2), row 1 left-padded (padding 2, prompt 2,
# response 3), row 2 a one-token response followed by one pad.
PADDED = torch.tensor([[0, 0, 1, 1, 1, 0, 0],
                       [0, 0, 0, 0, 1, 1, 1],
                       [0, 0, 0, 0, 0, 1, 0]])


def test_last_token_index_left_and_right_padding():
    assert last_token_index(PADDED).tolist() == [4, 6, 5]
    assert last_token_index(PADDED.float()).tolist() == [4, 6, 5]
    assert last_token_index(PADDED.bool()).dtype == torch.long
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[0, 1, 0], [0, 0, 0]]))


def test_shape_rewards_puts_the_score_at_the_last_response_token():
    kl = torch.tensor([[NAN, NAN, 1.0, 2.0, 3.0, NAN, NAN],
                       [NAN, NAN, NAN, NAN, 1.0, 1.0, 1.0],
                       [NAN, NAN, NAN, NAN, NAN, 4.0, NAN]])
    scores = torch.tensor([2.0, -1.0, 0.5])
    # -0.1 * kl on the response, + score at its last token: 3 -> -0.3 + 2; 1 -> -0.1 - 1;
    # 4 -> -0.4 + 0.5
    torch.testing.assert_close(shape_rewards(scores, kl, PADDED, kl_coef=0.1), torch.tensor(
        [[0.0, 0.0, -0.1, -0.2, 1.7, 0.0, 0.0],
         [0.0, 0.0, 0.0, 0.0, -0.1, -0.1, -1.1],
         [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0]]))
    # no penalty: the score alone, and the sum over tokens is score - kl_coef * sum of kl
    only_score = shape_rewards(scores, kl, PADDED, kl_coef=0.0)
    assert only_score.sum(1).tolist() == scores.tolist()
    with pytest.raises(ValueError, match="scores"):
        shape_rewards(scores[:2], kl, PADDED, kl_coef=0.1)


def test_shape_rewards_carry_no_gradient():
    kl = torch.ones(3, 7, requires_grad=True)
    scores = torch.zeros(3, requires_grad=True)
    assert not shape_rewards(scores, kl, PADDED, kl_coef=0.1).requires_grad


# ---- GAE ----

def _gae_reference(rewards: list[float], values: list[float], mask: list[float], gamma: float,
                   lam: float) -> tuple[list[float], list[float]]:
    """One row, Python floats: the recursion of Schulman et al. 2016 over the response."""
    positions = [t for t, m in enumerate(mask) if m]
    advantages, returns = [0.0] * len(mask), [0.0] * len(mask)
    next_value = next_advantage = 0.0  # after the last response token the episode has ended
    for t in reversed(positions):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = values[t]
        advantages[t], returns[t] = next_advantage, next_advantage + values[t]
    return advantages, returns


def test_gae_hand_computed():
    # response rewards (0, 1), values (0.5, 0.8), gamma 0.9, lambda 0.5:
    # delta_1 = 1 + 0.9 * 0 - 0.8 = 0.2 = A_1; delta_0 = 0 + 0.9 * 0.8 - 0.5 = 0.22,
    # A_0 = 0.22 + 0.45 * 0.2 = 0.31; returns 0.31 + 0.5 = 0.81, 0.2 + 0.8 = 1.0
    rewards = torch.tensor([[NAN, 0.0, 1.0, NAN]])
    values = torch.tensor([[NAN, 0.5, 0.8, NAN]])
    mask = torch.tensor([[0, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.31, 0.2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.81, 1.0, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.5), (1.0, 0.0),
                                       (0.5, 1.0)])
def test_gae_matches_the_loop_reference_on_padded_batches(gamma, lam):
    rng = random.Random(int(gamma * 100 + lam * 10))
    batch, length = 8, 12
    mask = _padded_mask(rng, batch, length)
    rewards = torch.tensor([[rng.gauss(0, 1) for _ in range(length)] for _ in range(batch)],
                           dtype=torch.float64)
    values = torch.tensor([[rng.gauss(0, 1) for _ in range(length)] for _ in range(batch)],
                          dtype=torch.float64)
    adv, ret = gae(_garbage(rewards, mask), _garbage(values, mask, math.inf), mask, gamma, lam)
    for i in range(batch):
        want_adv, want_ret = _gae_reference(rewards[i].tolist(), values[i].tolist(),
                                            mask[i].tolist(), gamma, lam)
        torch.testing.assert_close(adv[i], torch.tensor(want_adv, dtype=torch.float64))
        torch.testing.assert_close(ret[i], torch.tensor(want_ret, dtype=torch.float64))


def test_gae_with_gamma_and_lambda_one_is_future_reward_minus_value():
    rng = random.Random(5)
    mask = _padded_mask(rng, 6, 10)
    torch.manual_seed(5)
    rewards = torch.randn(6, 10, dtype=torch.float64) * mask
    values = torch.randn(6, 10, dtype=torch.float64) * mask
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go: sum of the rewards from t to the end of the row (0 outside the response)
    to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(adv, to_go - values)
    torch.testing.assert_close(ret, to_go)
    # lambda 0: the one-step TD error r_t + gamma V_{t+1} - V_t
    adv0, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros(6, 1, dtype=values.dtype)], 1)
    torch.testing.assert_close(adv0, (rewards + 0.9 * next_values - values) * mask)


def test_gae_does_not_depend_on_which_side_the_padding_is():
    rewards = torch.tensor([0.1, -0.2, 0.3, 1.5])
    values = torch.tensor([0.4, 0.2, -0.1, 0.7])
    right, left = torch.zeros(2, 7), torch.zeros(2, 7)
    right[0, 1:5], right[1, 1:5] = rewards, values  # prompt, response, 2 pads
    left[0, 3:7], left[1, 3:7] = rewards, values  # 2 pads, prompt, response
    adv_r, ret_r = gae(right[0:1], right[1:2], (right[1:2] != 0).float(), 0.95, 0.9)
    adv_l, ret_l = gae(left[0:1], left[1:2], (left[1:2] != 0).float(), 0.95, 0.9)
    torch.testing.assert_close(adv_r[:, 1:5], adv_l[:, 3:7])
    torch.testing.assert_close(ret_r[:, 1:5], ret_l[:, 3:7])
    needs_grad = rewards[None].clone().requires_grad_()
    assert not gae(needs_grad, values[None], torch.ones(1, 4))[0].requires_grad


# ---- policy loss ----

# Five response tokens after a prompt token of garbage. logp - old = 1, 1, -1, -1, ln 1.1;
# advantages +1, -1, +1, -1, +2; eps 0.2. Per token max(-A r, -A clip(r, 0.8, 1.2)):
#   r = e,    A = +1: max(-e, -1.2) = -1.2          (clipped: no gradient)
#   r = e,    A = -1: max(e, 1.2) = e               (unclipped: d/dlogp = r = e)
#   r = 1/e,  A = +1: max(-1/e, -0.8) = -1/e        (unclipped: d/dlogp = -1/e)
#   r = 1/e,  A = -1: max(1/e, 0.8) = 0.8           (clipped: no gradient)
#   r = 1.1,  A = +2: -2.2                          (inside the range: d/dlogp = -2.2)
LOGRATIO = torch.tensor([[NAN, 1.0, 1.0, -1.0, -1.0, math.log(1.1)]], dtype=torch.float64)
ADV = torch.tensor([[NAN, 1.0, -1.0, 1.0, -1.0, 2.0]], dtype=torch.float64)
RESPONSE = torch.tensor([[0, 1, 1, 1, 1, 1]])


def test_policy_loss_clipping_hand_computed():
    old = torch.full_like(LOGRATIO, -2.0)
    logp = (old + LOGRATIO).requires_grad_()
    loss, stats = policy_loss(logp, old, ADV, RESPONSE, clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + E - 1 / E + 0.8 - 2.2) / 5)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, E, -1 / E, 0.0, -2.2]],
                                                       dtype=torch.float64) / 5)
    assert stats["clipfrac"].item() == pytest.approx(4 / 5)  # all but r = 1.1
    # k3 = (r - 1) - log r: e - 2 (twice), 1/e (twice), 0.1 - ln 1.1
    assert stats["approx_kl"].item() == pytest.approx(
        (2 * (E - 2) + 2 / E + 0.1 - math.log(1.1)) / 5)
    assert stats["ratio_mean"].item() == pytest.approx((2 * E + 2 / E + 1.1) / 5)
    assert all(s.ndim == 0 and not s.requires_grad for s in stats.values())


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage():
    torch.manual_seed(6)
    mask = _padded_mask(random.Random(6), 4, 8)
    adv = torch.randn(4, 8, dtype=torch.float64)
    logp = torch.randn(4, 8, dtype=torch.float64).requires_grad_()
    loss, stats = policy_loss(logp, logp.detach().clone(), adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-masked_mean(adv, mask).item())
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    loss.backward()  # the REINFORCE gradient -A / N on each response token
    torch.testing.assert_close(logp.grad, -adv * mask / mask.sum())
    with pytest.raises(ValueError, match="clip_range"):
        policy_loss(logp, logp, adv, mask, clip_range=-0.1)


def test_policy_loss_matches_a_per_token_loop():
    rng = random.Random(7)
    mask = _padded_mask(rng, 5, 9)
    logp = torch.tensor([[rng.uniform(-6, 0) for _ in range(9)] for _ in range(5)],
                        dtype=torch.float64)
    old = logp + torch.tensor([[rng.gauss(0, 0.3) for _ in range(9)] for _ in range(5)],
                              dtype=torch.float64)
    adv = torch.tensor([[rng.gauss(0, 1) for _ in range(9)] for _ in range(5)],
                       dtype=torch.float64)
    total, count, clipped = 0.0, 0, 0
    for i in range(5):
        for t in range(9):
            if mask[i, t]:
                r = math.exp(logp[i, t].item() - old[i, t].item())
                a = adv[i, t].item()
                total += max(-a * r, -a * min(max(r, 0.8), 1.2))
                count += 1
                clipped += abs(r - 1) > 0.2
    loss, stats = policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(clipped / count)
    # an explicit token count divides the same sum
    loss_n, _ = policy_loss(logp, old, adv, mask, clip_range=0.2, num_tokens=100)
    assert loss_n.item() == pytest.approx(total / 100, rel=1e-12)


# ---- value loss ----

def test_value_loss_clipping_hand_computed():
    # old values 0, c = 0.2:
    #   v 0.5, R 1: (0.5 - 1)^2 = 0.25 vs (0.2 - 1)^2 = 0.64 -> 0.64 (clipped: no gradient)
    #   v 0.5, R 0: 0.25 vs (0.2 - 0)^2 = 0.04 -> 0.25 (gradient v - R = 0.5)
    #   v 0.1, R 1: inside the range, 0.81 both (gradient v - R = -0.9)
    values = torch.tensor([[NAN, 0.5, 0.5, 0.1]], requires_grad=True)
    old = torch.tensor([[NAN, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[NAN, 1.0, 0.0, 1.0]])
    mask = torch.tensor([[0, 1, 1, 1]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.25 + 0.81) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.0, 0.5, -0.9]]) / 3)
    for off in (0.0, -1.0, None):
        unclipped, stats = value_loss(values, old, returns, mask, clip_range_value=off)
        assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.25 + 0.81) / 3)
        assert stats["clipfrac"].item() == 0.0


# ---- microbatches, garbage ----

# Each loss, and the policy and KL losses under every aggregation (and GSPO, clip-higher).
LOSS_NAMES = ["policy", "value", "kl", "policy-grpo", "policy-dr_grpo", "kl-grpo",
              "kl-dr_grpo", "gspo-grpo", "gspo-dapo", "gspo-dr_grpo", "policy-clip_higher"]


def _loss(name: str, params: torch.Tensor, aux: list[torch.Tensor], mask: torch.Tensor,
          num_tokens=None, num_sequences=None) -> torch.Tensor:
    """One of the token-level losses as a function of `params` (log-probs or values)."""
    kind, _, loss_type = name.partition("-")
    counts = {"num_tokens": num_tokens, "num_sequences": num_sequences, "max_length": 9}
    if loss_type in LOSS_TYPES:
        counts["loss_type"] = loss_type
    if kind in ("policy", "gspo"):  # aux: old log-probs, advantages
        level = "sequence" if kind == "gspo" else "token"
        high = 0.28 if loss_type == "clip_higher" else None
        return policy_loss(params, aux[0], aux[1], mask, 0.2, clip_range_high=high,
                           importance_sampling_level=level, **counts)[0]
    if kind == "value":  # aux: old values, returns
        return value_loss(params, aux[0], aux[1], mask, 0.2, num_tokens)[0]
    return kl_loss(params, aux[0], mask, **counts)  # aux: reference log-probs


def _random_batch(seed: int, batch: int = 6, length: int = 9):
    torch.manual_seed(seed)
    mask = _padded_mask(random.Random(seed), batch, length)
    params = torch.randn(batch, length, dtype=torch.float64) - 2
    # old log-probs / values near params, so that some tokens are clipped and some are not
    near = params + 0.5 * torch.randn(batch, length, dtype=torch.float64)
    other = torch.randn(batch, length, dtype=torch.float64)
    return params.requires_grad_(), [near, other], mask


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_microbatches_with_the_minibatch_token_count_add_up_to_the_minibatch(name):
    params, aux, mask = _random_batch(10)
    whole = _loss(name, params, aux, mask)
    whole_grad, = torch.autograd.grad(whole, params)
    parts = [slice(0, 2), slice(2, 3), slice(3, 6)]
    split = sum(_loss(name, params[p], [a[p] for a in aux], mask[p], num_tokens=mask.sum(),
                      num_sequences=mask.shape[0]) for p in parts)
    split_grad, = torch.autograd.grad(split, params)
    assert split.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(split_grad, whole_grad)
    # a mean of per-microbatch means weights a token by how crowded its microbatch is (the
    # per-sequence mean's microbatches would have to be of equal sizes for it to be right)
    if "grpo" not in name:
        mean_of_means = sum(_loss(name, params[p], [a[p] for a in aux], mask[p])
                            for p in parts) / 3
        assert mean_of_means.item() != pytest.approx(whole.item())


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_ignore_garbage_at_masked_out_positions(name):
    params, aux, mask = _random_batch(11)
    loss = _loss(name, params, aux, mask)
    grad, = torch.autograd.grad(loss, params)
    dirty = _garbage(params.detach(), mask).requires_grad_()
    dirty_aux = [_garbage(a, mask) for a in aux]
    for bool_or_float in (mask, mask.bool()):
        dirty_loss = _loss(name, dirty, dirty_aux, bool_or_float)
        assert dirty_loss.item() == pytest.approx(loss.item(), rel=1e-12)
        dirty_grad, = torch.autograd.grad(dirty_loss, dirty)
        torch.testing.assert_close(dirty_grad, grad)
        assert (dirty_grad[~mask.bool()] == 0).all()
    # an empty mask is a loss of 0, not 0 / 0
    assert _loss(name, params, aux, torch.zeros_like(mask)).item() == 0.0


# ---- explained variance ----

def test_explained_variance():
    returns = torch.tensor([[NAN, 1.0, 2.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1]])
    # residual (0, 0, 1): variance 2/9; returns' variance 2/3: 1 - (2/9) / (2/3) = 2/3
    v = torch.tensor([[NAN, 1.0, 2.0, 2.0]], dtype=torch.float64)
    assert explained_variance(v, returns, mask).item() == pytest.approx(2 / 3)
    assert explained_variance(returns, returns, mask).item() == 1.0  # perfect
    const = torch.full_like(returns, 1.7)
    assert explained_variance(const, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    worse = torch.tensor([[0.0, 3.0, 2.0, 1.0]], dtype=torch.float64)  # anti-correlated
    assert explained_variance(worse, returns, mask).item() < 0
    flat = torch.tensor([[5.0, 1.0, 1.0, 1.0]])
    assert math.isnan(explained_variance(torch.zeros(1, 4), flat, mask).item())
    r = torch.ones(1, 4, requires_grad=True) * torch.arange(4.0)
    assert not explained_variance(r, r * 2, mask).requires_grad


# ---- KL controllers ----

def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 256)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05 and ctl.state_dict() == {"value": 0.05}
    with pytest.raises(ValueError):
        FixedKLController(-1.0)


def test_adaptive_kl_controller_hand_computed():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # n_steps / horizon = 256 / 10000 = 0.0256
    ctl.update(6.6, 256)  # error 6.6 / 6 - 1 = 0.1: x (1 + 0.1 * 0.0256)
    assert ctl.value == pytest.approx(0.2 * 1.00256)
    ctl.update(12.0, 256)  # error 1 clipped to 0.2: x 1.00512
    assert ctl.value == pytest.approx(0.2 * 1.00256 * 1.00512)
    ctl.update(torch.tensor(0.0), 256)  # error -1 clipped to -0.2: x 0.99488
    assert ctl.value == pytest.approx(0.2 * 1.00256 * 1.00512 * 0.99488)
    ctl.update(6.0, 256)  # on target: unchanged
    assert ctl.value == pytest.approx(0.2 * 1.00256 * 1.00512 * 0.99488)


def test_adaptive_kl_controller_follows_the_formula_and_resumes():
    rng = random.Random(12)
    kls = [rng.uniform(-2, 15) for _ in range(40)]  # k1 sums can be negative
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=5000)
    value = 0.1
    for kl in kls[:20]:
        ctl.update(kl, 64)
        value *= 1 + min(max(kl / 6.0 - 1, -0.2), 0.2) * 64 / 5000
        assert ctl.value == pytest.approx(value, rel=1e-12)
    state = ctl.state_dict()
    assert state == {"value": ctl.value}
    resumed = AdaptiveKLController(0.1, target=6.0, horizon=5000)
    resumed.load_state_dict(state)
    for kl in kls[20:]:
        ctl.update(kl, 64)
        resumed.update(kl, 64)
    assert resumed.value == ctl.value
    with pytest.raises(ValueError, match="finite"):
        ctl.update(NAN, 64)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=5000)


# ---- group advantages ----

def test_group_advantages_hand_computed():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 10.0])
    # RLOO: the baseline of each sample is the mean of the other three: 11/3, 10/3, 3, 2
    torch.testing.assert_close(group_advantages(scores, 4, "rloo"),
                               torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]))
    # GRPO: mean 3, deviations -2, -1, 0, 3; unbiased std sqrt(14 / 3) = 2.160247.
    # A group that scores alike has no signal: 0 / (0 + eps) = 0.
    std = math.sqrt(14 / 3)
    torch.testing.assert_close(
        group_advantages(scores, 4, "grpo"),
        torch.tensor([-2 / std, -1 / std, 0.0, 3 / std, 0.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    # Dr. GRPO: centring only
    torch.testing.assert_close(group_advantages(scores, 4, "grpo", scale=False),
                               torch.tensor([-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]))
    assert GROUP_METHODS == ("grpo", "rloo")


@pytest.mark.parametrize("group_size", [2, 3, 5])
def test_group_advantages_match_a_loop_reference(group_size):
    rng = random.Random(group_size)
    scores = [rng.gauss(0, 2) for _ in range(4 * group_size)]
    grpo, rloo = [], []
    for start in range(0, len(scores), group_size):
        group = scores[start:start + group_size]
        mean, std = statistics.mean(group), statistics.stdev(group)  # stdev: n - 1
        grpo += [(r - mean) / (std + 1e-6) for r in group]
        rloo += [r - (sum(group) - r) / (group_size - 1) for r in group]
    s = torch.tensor(scores, dtype=torch.float64)
    torch.testing.assert_close(group_advantages(s, group_size, "grpo"),
                               torch.tensor(grpo, dtype=torch.float64))
    torch.testing.assert_close(group_advantages(s, group_size, "rloo"),
                               torch.tensor(rloo, dtype=torch.float64))
    # RLOO is the centred score scaled by G / (G - 1), and sums to 0 in each group
    centred = group_advantages(s, group_size, "grpo", scale=False)
    torch.testing.assert_close(group_advantages(s, group_size, "rloo"),
                               centred * group_size / (group_size - 1))
    assert group_advantages(s, group_size, "rloo").view(-1, group_size).sum(1).abs().max() < 1e-12


def test_group_advantages_errors_and_dtypes():
    scores = torch.arange(6.0)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(scores, 4, "grpo")
    for method in GROUP_METHODS:
        with pytest.raises(ValueError, match=">= 2"):
            group_advantages(scores, 1, method)
    with pytest.raises(ValueError, match="unknown"):
        group_advantages(scores, 2, "ppo")
    with pytest.raises(ValueError, match=r"\[B\]"):
        group_advantages(scores.view(2, 3), 3, "rloo")
    ints = group_advantages(torch.tensor([0, 1, 1, 1]), 2, "rloo")  # e.g. pass/fail counts
    torch.testing.assert_close(ints, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    assert not group_advantages(scores.requires_grad_(), 3, "grpo").requires_grad


# ---- KL loss ----

def test_kl_loss_gradient_is_the_analytic_k3_derivative():
    torch.manual_seed(13)
    mask = _padded_mask(random.Random(13), 4, 8)
    logp = (torch.randn(4, 8, dtype=torch.float64) - 2).requires_grad_()
    ref = (logp.detach() + 0.3 * torch.randn(4, 8, dtype=torch.float64)).requires_grad_()
    loss = kl_loss(logp, ref, mask, num_tokens=40)
    k3 = (ref - logp).exp() - 1 - (ref - logp)
    assert loss.item() == pytest.approx((k3 * mask).sum().item() / 40, rel=1e-12)
    loss.backward()
    # d/dlogp of (exp(ref - logp) - 1) - (ref - logp) is 1 - exp(ref - logp)
    want = (1 - (ref.detach() - logp.detach()).exp()) * mask / 40
    torch.testing.assert_close(logp.grad, want)
    assert ref.grad is None  # the reference is a constant
    # other estimators, and this call's own token count by default
    k1 = kl_loss(logp, ref, mask, estimator="k1")
    assert k1.item() == pytest.approx(masked_mean(logp - ref, mask).item(), rel=1e-12)
    with pytest.raises(ValueError, match="estimator"):
        kl_loss(logp, ref, mask, estimator="k5")


# ---- aggregation (loss_type) ----

def test_aggregate_hand_computed():
    # Row 0: tokens 1, 2, 3; row 1: token 4; row 2: no response (a dropped group).
    per_token = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, NAN, NAN, NAN], [NAN] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert aggregate(per_token, mask).item() == 10 / 4  # dapo: per token
    assert aggregate(per_token, mask, "dapo", num_tokens=20).item() == 10 / 20
    assert aggregate(per_token, mask, "grpo").item() == (6 / 3 + 4 / 1) / 2  # per sequence
    assert aggregate(per_token, mask, "grpo", num_sequences=4).item() == (2 + 4) / 4
    assert aggregate(per_token, mask, "dr_grpo", max_length=5).item() == 10 / (2 * 5)
    assert aggregate(per_token, mask, "dr_grpo", num_sequences=4, max_length=5).item() == 0.5
    for loss_type in LOSS_TYPES:  # nothing kept: 0, not 0 / 0
        assert aggregate(per_token, torch.zeros_like(mask), loss_type, max_length=5) == 0
    with pytest.raises(ValueError, match="max_length"):
        aggregate(per_token, mask, "dr_grpo")
    with pytest.raises(ValueError, match="loss type"):
        aggregate(per_token, mask, "bnpo")


# ---- clip-higher, GSPO ----

def test_clip_higher_hand_computed():
    # r = 1.25, A = +1: inside [0.8, 1.28], loss -1.25, gradient -r = -1.25 (symmetric 0.2:
    # clipped at 1.2, no gradient); r = 0.75, A = -1: below 1 - 0.2, max(0.75, 0.8) = 0.8,
    # clipped either way.
    old = torch.full((1, 3), -1.0, dtype=torch.float64)
    logratio = torch.tensor([[NAN, math.log(1.25), math.log(0.75)]], dtype=torch.float64)
    adv = torch.tensor([[NAN, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1]])
    logp = (old + logratio).requires_grad_()
    loss, stats = policy_loss(logp, old, adv, mask, 0.2, clip_range_high=0.28)
    assert loss.item() == pytest.approx((-1.25 + 0.8) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.25 / 2, 0.0]],
                                                       dtype=torch.float64))
    assert stats["clipfrac"].item() == 0.5
    logp.grad = None
    symmetric, stats = policy_loss(logp, old, adv, mask, 0.2)
    assert symmetric.item() == pytest.approx((-1.2 + 0.8) / 2)
    symmetric.backward()
    assert (logp.grad == 0).all() and stats["clipfrac"].item() == 1.0
    # a lower bound of its own: 0.3 lets r = 0.75 through (gradient -A r / 2 = 0.375)
    logp.grad = None
    loose, _ = policy_loss(logp, old, adv, mask, 0.3, clip_range_high=0.2)
    assert loose.item() == pytest.approx((-1.2 + 0.75) / 2)
    loose.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.375]], dtype=torch.float64))
    with pytest.raises(ValueError, match="clip_range"):
        policy_loss(logp, old, adv, mask, 0.2, clip_range_high=-0.1)


def test_gspo_hand_computed():
    # One response of 2 tokens, log-ratios ln 2 and 0: s = exp(ln 2 / 2) = sqrt 2 > 1.2.
    #   A = +1: max(-sqrt 2, -1.2) = -1.2 at both tokens, clipped: no gradient;
    #   A = -1: max(sqrt 2, 1.2) = sqrt 2, gradient sqrt 2 x (1/2) per token (grpo: the
    #   sequence's token mean). Token-level ratios 2 and 1 would give other values.
    old = torch.full((1, 3), -1.0, dtype=torch.float64)
    logratio = torch.tensor([[NAN, math.log(2), 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1]])
    for a, value, grad in ((1.0, -1.2, 0.0), (-1.0, math.sqrt(2), math.sqrt(2) / 2)):
        logp = (old + logratio).requires_grad_()
        adv = torch.tensor([[NAN, a, a]], dtype=torch.float64)
        loss, stats = policy_loss(logp, old, adv, mask, 0.2, loss_type="grpo",
                                  importance_sampling_level="sequence")
        assert loss.item() == pytest.approx(value)
        loss.backward()
        torch.testing.assert_close(logp.grad, torch.tensor([[0.0, grad, grad]],
                                                           dtype=torch.float64))
        assert stats["clipfrac"].item() == 1.0  # the sequence's ratio is outside the range
        assert stats["ratio_mean"].item() == pytest.approx(math.sqrt(2))
        # approx_kl keeps the tokens' own ratios: k3 of 2 and of 1
        assert stats["approx_kl"].item() == pytest.approx((1 - math.log(2)) / 2)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        policy_loss(logp, old, adv, mask, 0.2, importance_sampling_level="batch")


def _paper_policy_loss(logp, old, adv, mask, weights, eps_low, eps_high, loss_type, level,
                       max_length):
    """The clipped objective, row by row and token by token as the papers write it: PPO's
    per-token ratio, or GSPO's sequence ratio s_i = exp(mean_t log r_it) (eq. 7, through which
    autograd differentiates, as in TRL), then the loss_type's normaliser."""
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    total_tokens = int(mask.sum())
    loss = torch.zeros((), dtype=logp.dtype)
    for i in rows:
        tokens = [t for t in range(mask.shape[1]) if mask[i, t]]
        seq_logratio = sum(logp[i, t] - old[i, t] for t in tokens) / len(tokens)
        row = torch.zeros((), dtype=logp.dtype)
        for t in tokens:
            r = torch.exp(seq_logratio if level == "sequence" else logp[i, t] - old[i, t])
            a = adv[i, t]
            term = torch.maximum(-a * r, -a * torch.clamp(r, 1 - eps_low, 1 + eps_high))
            row = row + term * weights[i, t]
        if loss_type == "grpo":
            loss = loss + row / len(tokens) / len(rows)
        elif loss_type == "dapo":
            loss = loss + row / total_tokens
        else:
            loss = loss + row / (len(rows) * max_length)
    return loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", IMPORTANCE_SAMPLING_LEVELS)
def test_policy_loss_matches_the_papers_formulas_on_random_inputs(loss_type, level):
    rng = random.Random(21)
    torch.manual_seed(21)
    mask = _padded_mask(rng, 6, 9)
    mask[5] = 0  # a dropped sample: counts as no sequence
    logp = torch.randn(6, 9, dtype=torch.float64) - 2
    old = logp + 0.3 * torch.randn(6, 9, dtype=torch.float64)
    # one advantage (and one weight) per sequence (GSPO's setting), and per token (GSPO-token's)
    per_sequence, per_token = (6, 1), (6, 9)
    for adv_shape, weight_shape in ((per_sequence, per_sequence), (per_sequence, per_token),
                                    (per_token, per_token)):
        adv = torch.randn(adv_shape, dtype=torch.float64).expand(6, 9)
        weights = torch.rand(weight_shape, dtype=torch.float64).expand(6, 9) * 2
        got_logp = logp.clone().requires_grad_()
        got, _ = policy_loss(got_logp, old, adv, mask, 0.2, weights=weights,
                             clip_range_high=0.28, loss_type=loss_type, max_length=9,
                             importance_sampling_level=level)
        got_grad, = torch.autograd.grad(got, got_logp)
        want_logp = logp.clone().requires_grad_()
        want = _paper_policy_loss(want_logp, old, adv, mask, weights, 0.2, 0.28, loss_type,
                                  level, 9)
        want_grad, = torch.autograd.grad(want, want_logp)
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
        if level == "token" or adv.stride(1) == weights.stride(1) == 0:
            # GSPO-token's gradient equals GSPO's when each response has one advantage (eq. 14)
            # and one weight; otherwise each token's gradient keeps its own (the values agree)
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


def test_gspo_at_ratio_one_is_the_sequence_mean_reinforce_gradient():
    torch.manual_seed(22)
    mask = _padded_mask(random.Random(22), 4, 8)
    adv = torch.randn(4, 1, dtype=torch.float64).expand(4, 8)
    logp = (torch.randn(4, 8, dtype=torch.float64) - 2).requires_grad_()
    loss, stats = policy_loss(logp, logp.detach(), adv, mask, 0.2, loss_type="grpo",
                              importance_sampling_level="sequence")
    loss.backward()
    lengths = mask.sum(-1, keepdim=True)
    torch.testing.assert_close(logp.grad, -adv * mask / lengths / 4)
    assert stats["clipfrac"].item() == 0 and stats["ratio_mean"].item() == 1


# ---- dynamic sampling, overlong penalty ----

def test_groups_with_spread_hand_computed():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert groups_with_spread(scores, 2).tolist() == [False, False, True, True, False, False]
    assert groups_with_spread(scores, 3).tolist() == [True] * 6
    with pytest.raises(ValueError, match="groups of 4"):
        groups_with_spread(scores, 4)


def test_overlong_penalty_hand_computed():
    # max 100, buffer 20: 0 up to 80, then -(L - 80) / 20, -1 from 100 on (DAPO eq. 13)
    lengths = torch.tensor([50, 80, 90, 99, 100, 120])
    want = [0.0, 0.0, -0.5, -0.95, -1.0, -1.0]
    assert overlong_penalty(lengths, 100, 20).tolist() == pytest.approx(want)
    assert overlong_penalty(lengths, 100, 20, factor=0.5).tolist() == \
        pytest.approx([w / 2 for w in want])
    assert overlong_penalty(lengths, 100, 0).tolist() == [0.0] * 6
    assert overlong_penalty(lengths.float(), 100, 100).tolist() == \
        pytest.approx([-0.5, -0.8, -0.9, -0.99, -1.0, -1.0])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 100, 101)
