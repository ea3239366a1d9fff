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
minibatch (as in tether.losses.sft.masked_nll). The policy and KL losses offer two other
normalisers (`aggregate`, `loss_type`): a mean over sequences of each one's token mean, exact
when split given the minibatch's `num_sequences`, and a constant (`num_sequences` x
`max_length`).
"""

from __future__ import annotations

import math

import torch

from tether.choices import GROUP_METHODS, IMPORTANCE_SAMPLING_LEVELS, KL_ESTIMATORS, LOSS_TYPES

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


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo",
              num_tokens: torch.Tensor | float | None = None,
              num_sequences: torch.Tensor | float | None = None,
              max_length: int | None = None) -> torch.Tensor:
    """A per-token loss [B, T] as one number, by `loss_type` (TRL's GRPOConfig.loss_type names):

      dapo:    sum over masked tokens / num_tokens: every token of the minibatch weighs the
               same (Yu et al. 2025, "DAPO", eq. 8; verl's token-mean). A long response weighs
               more than a short one, and no response's tokens are diluted by its length.
      grpo:    sum over sequences of (the sequence's token sum / its length) / num_sequences:
               every sequence weighs the same (Shao et al. 2024, "DeepSeekMath", eq. 3). A
               token of a short response weighs more than one of a long response (the length
               bias Dr. GRPO points out).
      dr_grpo: sum over masked tokens / (num_sequences x max_length): a constant normaliser
               (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 6), no length bias;
               the loss is a sum of token terms scaled by a number fixed by the configuration.

    Split into microbatches (or across ranks), each part passes the whole minibatch's counts:
    num_tokens its masked tokens, num_sequences its rows with a masked token; the parts then
    add up exactly to the unsplit loss and gradient. Defaults: this call's counts. A row with
    no masked token counts as no sequence (a group dropped by dynamic sampling). dr_grpo needs
    max_length (the longest response a rollout may hold, rollout.max_new_tokens)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss type {loss_type!r}; expected one of {LOSS_TYPES}")
    m = mask.bool()
    if loss_type == "dapo":
        return masked_sum(per_token, m) / _token_count(m, num_tokens, per_token)
    count = m.any(dim=-1).sum() if num_sequences is None else num_sequences
    sequences = torch.as_tensor(count, dtype=per_token.dtype, device=per_token.device)
    if loss_type == "grpo":
        lengths = m.sum(dim=-1).clamp(min=1).to(per_token.dtype)
        return (masked_sum(per_token, m, dim=-1) / lengths).sum() / sequences.clamp(min=1)
    if max_length is None or max_length < 1:
        raise ValueError(f"loss_type='dr_grpo' needs max_length >= 1, got {max_length}")
    return masked_sum(per_token, m) / (sequences * max_length).clamp(min=1)


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
            estimator: str = "k3", *, loss_type: str = "dapo",
            num_sequences: torch.Tensor | float | None = None,
            max_length: int | None = None) -> torch.Tensor:
    """The KL to the reference as a loss term (GRPO; Shao et al. 2024, "DeepSeekMath", eq. 3):
    kl_per_token over masked tokens, aggregated as the policy loss is (`aggregate`; by default
    their sum / num_tokens). As in TRL, where beta x KL joins each token's policy term before
    the aggregation.

    The gradient flows through `logprobs` only. For k3 it is (1 - exp(ref_logp - logp)) /
    num_tokens per token (dapo): zero where pi = ref, pushing logp down where pi > ref."""
    m = mask.bool()
    logp = torch.where(m, logprobs, 0.0)
    ref = torch.where(m, ref_logprobs.detach(), 0.0)
    per_token = kl_per_token(logp, ref, estimator)  # 0 on masked-out positions (logp = ref)
    return aggregate(per_token, m, loss_type, num_tokens, num_sequences, max_length)


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


def groups_with_spread(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """BoolTensor [B]: whether each sample's group (consecutive runs of `group_size`) has
    scores that are not all equal. A group whose scores all agree has advantage 0 for every
    sample (grpo, rloo, Dr. GRPO) and so no policy gradient: DAPO's dynamic sampling (Yu et
    al. 2025, section 3.2) drops such groups from the loss and its normaliser."""
    if scores.ndim != 1 or scores.numel() % group_size:
        raise ValueError(f"scores [B] must split into groups of {group_size}, got shape "
                         f"{tuple(scores.shape)}")
    groups = scores.detach().view(-1, group_size)
    spread = groups.amax(dim=1) > groups.amin(dim=1)
    return spread.repeat_interleave(group_size)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int,
                     factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), scaled by `factor`: a penalty
    (<= 0) per response, added to its score, for responses that run into the length limit:

        0                                        if L <= max_length - buffer,
        factor x ((max_length - buffer) - L) / buffer   if max_length - buffer < L <= max_length,
        -factor                                  if L > max_length,

    so it falls linearly from 0 to -factor over the last `buffer` tokens. factor 1 is the
    paper's (and TRL's get_soft_overlong_punishment); verl calls it penalty_factor. `lengths`
    [B]: response tokens. buffer 0: no penalty."""
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"buffer must be in [0, max_length={max_length}], got {buffer}")
    lengths = lengths.detach()
    if not lengths.is_floating_point():
        lengths = lengths.to(torch.get_default_dtype())
    if buffer == 0:
        return torch.zeros_like(lengths)
    over = (lengths - (max_length - buffer)).clamp(min=0)
    return -factor * (over / buffer).clamp(max=1)


# ---- losses ----

def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float,
                num_tokens: torch.Tensor | float | None = None,
                weights: torch.Tensor | None = None, *,
                clip_range_high: float | None = None,
                loss_type: str = "dapo",
                num_sequences: torch.Tensor | float | None = None,
                max_length: int | None = None,
                importance_sampling_level: str = "token",
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss: (loss, stats).

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7, per token:
        max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),    r = exp(logp - old_logp),
    the pessimistic (larger) of the two losses, then aggregated over the masked tokens by
    `loss_type` (`aggregate`): by default their sum / `num_tokens` (see the module docstring),
    token-level averaging as in DAPO, where a long response weighs more than a short one;
    grpo: the per-sequence mean of the original GRPO; dr_grpo: a constant normaliser.

    eps_low = clip_range; eps_high = clip_range_high, by default clip_range. A larger eps_high
    is DAPO's clip-higher (Yu et al. 2025, section 3.1, eps_high 0.28 with eps_low 0.2): a
    token with A > 0 may gain more probability before its gradient stops, so unlikely tokens
    can still rise (exploration); the lower bound keeps them from collapsing.

    importance_sampling_level="sequence" is GSPO (Zheng et al. 2025, "Group Sequence Policy
    Optimization", eq. 7 and its GSPO-token form, eq. 13): the ratio of every token of a
    response is the response's length-normalised ratio
        s = exp(mean over its tokens of (logp - old_logp)),
    clipped as a whole, in the token form s_t = sg[s] * exp(logp_t - sg[logp_t]): its value is
    s, its gradient s x d logp_t, so with one advantage per sequence and loss_type=grpo this is
    GSPO exactly (gradient s A (1/|y|) sum_t d logp_t), and with per-token advantages or
    weights each token keeps its own. TRL's importance_sampling_level="sequence" gives the same
    values and gradients for every loss_type (it broadcasts s's loss over the tokens).

    `weights` ([B, T], detached), when given, multiply each token's term: the truncated
    importance weights that correct for a sampler whose policy differs from the trainer's
    (tether.losses.mismatch.is_weights; Yao et al. 2025), with any aggregation and either
    level. Under GSPO each token's gradient keeps its own weight (TRL's sequence form gives
    the same loss, but spreads the mean weight of a response over its tokens' gradients). The
    stats do not see them.

    stats (detached scalars, means over masked tokens):
      clipfrac:  share of tokens whose ratio (s under GSPO) is outside [1 - eps_low,
                 1 + eps_high] (cleanrl's definition; it also counts tokens where the
                 unclipped term is the larger, i.e. still gets a gradient);
      approx_kl: mean of k3 = (r - 1) - log r over the tokens' own ratios, an estimate of
                 KL(old || pi);
      ratio_mean: mean of the ratio the loss uses (r, or s under GSPO).
    """
    clip_high = clip_range if clip_range_high is None else clip_range_high
    if clip_range < 0 or clip_high < 0:
        raise ValueError(f"clip_range and clip_range_high must be >= 0, got {clip_range} and "
                         f"{clip_high}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; "
                         f"expected one of {IMPORTANCE_SAMPLING_LEVELS}")
    m = mask.bool()
    # Sanitise before exp: garbage at masked-out positions becomes ratio 1 and advantage 0,
    # so it cannot turn into inf * 0 = NaN in the loss or its gradient.
    logp = torch.where(m, logprobs, 0.0)
    logratio = torch.where(m, logprobs - old_logprobs.detach(), 0.0)
    adv = torch.where(m, advantages.detach(), 0.0)
    if importance_sampling_level == "sequence":
        lengths = m.sum(dim=-1, keepdim=True).clamp(min=1)
        sequence = logratio.sum(dim=-1, keepdim=True) / lengths  # log s, [B, 1]
        # GSPO-token: the value of log s at every token, the gradient of the token's own logp
        used = torch.where(m, sequence.detach() + logp - logp.detach(), 0.0)
    else:
        used = logratio
    ratio = torch.exp(used)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * torch.where(m, weights.detach(), 0.0)
    loss = aggregate(per_token, m, loss_type, num_tokens, num_sequences, max_length)
    with torch.no_grad():
        token_ratio = torch.exp(logratio)
        outside = (ratio < 1 - clip_range) | (ratio > 1 + clip_high)
        stats = {
            "clipfrac": masked_mean(outside.to(ratio.dtype), m),
            "approx_kl": masked_mean((token_ratio - 1) - logratio, m),
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
