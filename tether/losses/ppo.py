"""Policy-gradient objectives for language models: PPO, GRPO and RLOO, as pure torch functions.

Tensor convention (as in tether.models.logprobs): every per-token tensor is [B, T], aligned
with input_ids (prompt + response), and position t holds the value for token t. `mask` (bool
or float, [B, T]) is nonzero on response tokens only; it is used as a selection, never as a
weight. A row's response tokens are contiguous, but rows may be left- or right-padded, so
responses can start and end at different positions.

Masked-out positions may hold anything, including inf or NaN (padding log-probs, values of
prompt tokens): they are removed with torch.where rather than multiplied by 0, because
0 * NaN is NaN, both in the forward pass and in the gradient.

Rewards, advantages and returns are training targets, not functions of the parameters: the
functions that compute them detach their inputs, and the losses detach old log-probs,
advantages, old values, returns and reference log-probs, so a caller who forgot a
torch.no_grad() cannot backpropagate through a target by accident.

Losses are summed over masked tokens and divided by `num_tokens` when given, else by this
call's masked token count. Pass the token count of the whole minibatch when it is split into
microbatches (or across ranks): the gradients then add up to exactly those of the unsplit
minibatch (as in tether.losses.sft.masked_nll).
"""

from __future__ import annotations

import math

import torch

from tether.choices import GROUP_METHODS, KL_ESTIMATORS

# ---- masked statistics ----

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over positions where mask is nonzero (over all of them if dim is None)."""
    kept = torch.where(mask.bool(), x, 0.0)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is nonzero; NaN where there are none (0 / 0)."""
    m = mask.bool()
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all masked elements: sum (x - mean)^2 / (n - 1), or / n if biased.

    As torch.var: NaN when there are too few elements (n = 0, or n = 1 when unbiased)."""
    m = mask.bool()
    count = m.sum()
    centred = torch.where(m, x - masked_mean(x, m), 0.0)
    return centred.square().sum() / (count - 1 if unbiased else count)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked elements; masked-out positions are 0.

    var is the unbiased variance, as in TRL's masked_whiten. shift_mean=False adds the mean
    back, rescaling without centring: InstructGPT / TRL whiten rewards this way, since centring
    would change what a response is rewarded for relative to the KL penalty. A single masked
    element has no spread: its variance is taken as 0 (it whitens to 0, or to itself with
    shift_mean=False) instead of the NaN of an unbiased variance of one value."""
    m = mask.bool()
    mean = masked_mean(x, m)
    centred = torch.where(m, x - mean, 0.0)
    # Denominator clamped at 1 rather than masked_var's NaN, see above; with n = 1 the
    # numerator is exactly 0.
    var = centred.square().sum() / (m.sum() - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, 0.0)


def _token_count(mask: torch.Tensor, num_tokens: torch.Tensor | float | None,
                 like: torch.Tensor) -> torch.Tensor:
    """The divisor of a summed per-token loss: `num_tokens`, else the mask's count; at least 1,
    so an empty mask gives a loss of 0 rather than NaN."""
    count = mask.sum() if num_tokens is None else num_tokens
    return torch.as_tensor(count, dtype=like.dtype, device=like.device).clamp(min=1)


# ---- KL to the reference ----

def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                 estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the log-probs of tokens sampled from pi.

    Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html), with
    d = logp - ref_logp and r = exp(ref_logp - logp) = ref / pi:
      k1 = d                      unbiased, high variance, can be negative;
      k2 = 0.5 d^2                biased (low bias for close policies), >= 0;
      k3 = (r - 1) - log r        unbiased, >= 0, low variance: the GRPO KL term (Shao et al.
                                  2024, "DeepSeekMath", eq. 4).
    k3 is computed as expm1(-d) + d, exact for small d where (r - 1) - log r would cancel.
    It is not clamped: for d << 0 it grows like exp(-d).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    logratio = logprobs - ref_logprobs
    if estimator == "k1":
        return logratio
    if estimator == "k2":
        return 0.5 * logratio.square()
    return torch.expm1(-logratio) + logratio


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
            num_tokens: torch.Tensor | float | None = None,
            estimator: str = "k3") -> torch.Tensor:
    """The KL to the reference as a loss term (GRPO; Shao et al. 2024, "DeepSeekMath", eq. 3):
    sum of kl_per_token over masked tokens / num_tokens (the same divisor as policy_loss).

    The gradient flows through `logprobs` only. For k3 it is (1 - exp(ref_logp - logp)) /
    num_tokens per token: zero where pi = ref, pushing logp down where pi > ref."""
    m = mask.bool()
    logp = torch.where(m, logprobs, 0.0)
    ref = torch.where(m, ref_logprobs.detach(), 0.0)
    per_token = kl_per_token(logp, ref, estimator)  # 0 on masked-out positions (logp = ref)
    return masked_sum(per_token, m) / _token_count(m, num_tokens, per_token)


# ---- rewards and advantages ----

def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """LongTensor [B]: the position of each row's last response token, whichever side the
    padding is on. Raises ValueError if a row has no response token."""
    m = mask.bool()
    if m.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(m.shape)}")
    if not m.any(dim=1).all():
        empty = (~m.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no response token")
    positions = torch.arange(m.shape[1], device=m.device)
    return torch.where(m, positions, -1).amax(dim=1)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, T]: -kl_coef * kl on every response token, plus the sequence
    score at the last response token; 0 outside the response.

    The KL-penalised reward of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences") and Stiennon et al. 2020 ("Learning to summarize from human feedback"),
    R(x, y) = r(x, y) - beta * log(pi(y|x) / ref(y|x)), with the log-ratio split over the
    tokens that make it up. Inputs are detached (rewards are targets)."""
    if scores.shape != (kl.shape[0],):
        raise ValueError(f"scores must be [B] = [{kl.shape[0]}], got {tuple(scores.shape)}")
    m = mask.bool()
    rewards = torch.where(m, -kl_coef * kl.detach(), 0.0)
    last = last_token_index(m)
    return rewards.scatter_add(1, last[:, None], scores.detach().to(rewards.dtype)[:, None])


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens: (advantages, returns).

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation": over the response tokens t = 0..L-1 of a row,
        delta_t = r_t + gamma * V_{t+1} - V_t,    with V_L = 0 (the episode ends),
        A_t = delta_t + gamma * lam * A_{t+1},    with A_L = 0,
        returns_t = A_t + V_t (the lambda-return, the value model's target).
    Positions outside the mask get 0 advantage and 0 return, and their rewards and values
    (which may be garbage) are never read. The recursion carries its state past masked-out
    positions, so trailing padding (right padding) does not act as extra steps; were a mask
    not contiguous, the masked tokens would be chained in order, skipping the gaps.
    Vectorised over the batch, a loop over T. Inputs are detached (these are targets).
    """
    m = mask.bool()
    rewards, values = rewards.detach(), values.detach()
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    batch, length = rewards.shape
    advantages = torch.zeros(batch, length, dtype=dtype, device=rewards.device)
    next_value = torch.zeros(batch, dtype=dtype, device=rewards.device)  # V_{t+1}
    next_advantage = torch.zeros(batch, dtype=dtype, device=rewards.device)  # A_{t+1}
    for t in reversed(range(length)):
        in_response = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(in_response, advantage, 0.0)
        # Only response tokens move the recursion: padding after the response keeps
        # (V, A) = (0, 0), and the prompt before it is never read.
        next_advantage = torch.where(in_response, advantage, next_advantage)
        next_value = torch.where(in_response, values[:, t], next_value)
    returns = torch.where(m, advantages + values, 0.0)
    return advantages, returns


def group_advantages(scores: torch.Tensor, group_size: int, method: str, eps: float = 1e-6,
                     scale: bool = True) -> torch.Tensor:
    """Advantages [B] of sequence scores [B] against the other samples of the same prompt.

    scores holds consecutive groups of `group_size` samples of one prompt each.
    grpo: (r - mean) / (std + eps) within the group (Shao et al. 2024, "DeepSeekMath: Pushing
      the Limits of Mathematical Reasoning in Open Language Models"). std is torch.std's
      unbiased sample std (n - 1), as in the TRL and verl implementations. scale=False only
      subtracts the mean (Dr. GRPO; Liu et al. 2025, "Understanding R1-Zero-Like Training: A
      Critical Perspective"): dividing by the std up-weights prompts whose samples all score
      alike, i.e. that are too easy or too hard.
    rloo: r_i - mean of the other G - 1 scores of the group (Ahmadian et al. 2024, "Back to
      Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
      LLMs"), an unbiased baseline since it does not depend on sample i. Equals
      G / (G - 1) * (r_i - group mean). Never scaled (`scale` and `eps` apply to grpo).
    A group of one has no baseline (every advantage would be 0, or NaN with the unbiased std),
    so both methods need group_size >= 2. The result is detached (advantages are targets).
    """
    if method not in GROUP_METHODS:
        raise ValueError(f"unknown group method {method!r}; expected one of {GROUP_METHODS}")
    if scores.ndim != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"{method} compares samples of the same prompt: group_size must be "
                         f">= 2, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    s = scores.detach()
    if not s.is_floating_point():
        s = s.float()
    groups = s.view(-1, group_size)
    if method == "grpo":
        advantages = groups - groups.mean(dim=1, keepdim=True)
        if scale:
            advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    else:
        leave_one_out = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
        advantages = groups - leave_one_out
    return advantages.reshape(-1)


# ---- losses ----

def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float,
                num_tokens: torch.Tensor | float | None = None,
                weights: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss: (loss, stats).

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7, per token:
        max(-A r, -A clip(r, 1 - eps, 1 + eps)),    r = exp(logp - old_logp),
    the pessimistic (larger) of the two losses, summed over masked tokens and divided by
    `num_tokens` (see the module docstring). Token-level averaging: a long response weighs
    more than a short one, as in DAPO and Dr. GRPO rather than the per-sequence mean of the
    original GRPO.

    `weights` ([B, T], detached), when given, multiply each token's term: the truncated
    importance weights that correct for a sampler whose policy differs from the trainer's
    (tether.losses.mismatch.is_weights; Yao et al. 2025). The stats do not see them.

    stats (detached scalars, means over masked tokens):
      clipfrac:  share of tokens with |r - 1| > eps (cleanrl's definition; it also counts
                 tokens where the unclipped term is the larger, i.e. still gets a gradient);
      approx_kl: mean of k3 = (r - 1) - log r, an estimate of KL(old || pi);
      ratio_mean: mean of r.
    """
    if clip_range < 0:
        raise ValueError(f"clip_range must be >= 0, got {clip_range}")
    m = mask.bool()
    # Sanitise before exp: garbage at masked-out positions becomes ratio 1 and advantage 0,
    # so it cannot turn into inf * 0 = NaN in the loss or its gradient.
    logratio = torch.where(m, logprobs - old_logprobs.detach(), 0.0)
    adv = torch.where(m, advantages.detach(), 0.0)
    ratio = torch.exp(logratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * torch.where(m, weights.detach(), 0.0)
    loss = masked_sum(per_token, m) / _token_count(m, num_tokens, per_token)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1).abs() > clip_range).to(ratio.dtype), m),
            "approx_kl": masked_mean((ratio - 1) - logratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range_value: float | None,
               num_tokens: torch.Tensor | float | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: (loss, stats).

    Per token 0.5 * max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2), summed over
    masked tokens / num_tokens (see the module docstring). Value clipping as in OpenAI
    baselines' PPO2 and InstructGPT / TRL (not in the PPO paper itself): the value
    prediction may not move more than c from the rollout's values for a lower loss.
    clip_range_value <= 0 or None: plain 0.5 * (v - R)^2.

    stats: clipfrac, the share of masked tokens where the clipped term is the larger one
    (0 without clipping).
    """
    m = mask.bool()
    v = torch.where(m, values, 0.0)
    old = torch.where(m, old_values.detach(), 0.0)
    target = torch.where(m, returns.detach(), 0.0)
    unclipped = (v - target).square()
    if clip_range_value is None or clip_range_value <= 0:
        per_token = unclipped
        clipfrac = torch.zeros((), dtype=unclipped.dtype, device=unclipped.device)
    else:
        v_clipped = old + torch.clamp(v - old, -clip_range_value, clip_range_value)
        clipped = (v_clipped - target).square()
        per_token = torch.maximum(unclipped, clipped)
        with torch.no_grad():
            clipfrac = masked_mean((clipped > unclipped).to(clipped.dtype), m)
    loss = 0.5 * masked_sum(per_token, m) / _token_count(m, num_tokens, per_token)
    return loss, {"clipfrac": clipfrac}


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over masked tokens (a detached scalar): 1 for a perfect value
    model, 0 for one that predicts a constant, negative for one worse than that. NaN when
    Var[R] is 0 (or there are no masked tokens): the ratio is undefined."""
    with torch.no_grad():
        m = mask.bool()
        var_returns = masked_var(returns, m, unbiased=False)
        var_residual = masked_var(returns - values, m, unbiased=False)
        return torch.where(var_returns == 0, math.nan, 1 - var_residual / var_returns)


# ---- KL coefficient controllers ----

class FixedKLController:
    """A constant KL coefficient, with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps  # fixed

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adapts the KL coefficient toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language
    Models from Human Preferences", section 2.2):

        e = clip(KL / target - 1, -0.2, 0.2),    beta <- beta * (1 + e * n_steps / horizon),

    with KL the current mean KL per sequence and n_steps the number of samples since the last
    update (horizon is in samples too). Clipping e bounds the change per sample, so a noisy
    KL estimate cannot move beta far.

    state_dict holds only the coefficient: target and horizon are configuration, given again
    when a run resumes.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)  # also accepts a 0-dim tensor
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl is not finite: {current_kl}")
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
