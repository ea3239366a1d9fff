"""Every metric name tether writes to a run's metrics.jsonl, defined once.

The trainers write these keys and the report, the pipeline, the evaluation and bench/ read
them: a name spelled one way where it is written and another where it is read leaves a plot
silently empty, so both sides import it from here. A name means the same in every algorithm
that logs it, and each namespace holds one kind of quantity:

  loss/      objectives on the training batch (or, for ppo/grpo/rloo, the rollout)
  reward/    rewards and preference accuracy on the training batch or rollout
  kl/        KL to the reference
  eval/      anything measured on held-out data: held-out preferences, or fresh samples of
             held-out prompts. A training metric's held-out twin lives here, never in the
             training metric's own namespace (reward/accuracy -> eval/accuracy).
  perf/      time, throughput and memory
  mismatch/  the generation backend's policy against the trainer's, on the same rollout
  optim/, data/, logps/, policy/, response/, ppo/, health/: as below.
"""

from __future__ import annotations

# Every trainer ----------------------------------------------------------------------------
LOSS_TRAIN = "loss/train"  # the objective being minimised, on the training batch
OPTIM_LR = "optim/lr"  # learning rate of this step's update (the body's, where a head has its own)
OPTIM_GRAD_NORM = "optim/grad_norm"  # gradient norm before clipping
DATA_EPOCH = "data/epoch"  # passes over the training data (or prompts) done before this step
PERF_STEP_S = "perf/step_s"  # seconds one optimizer step (ppo: one iteration) took
# Tokens through the training forward and backward passes, per second spent in them.
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_PEAK_MEM_GIB = "perf/peak_mem_gib"  # most GPU memory the allocator has held (CUDA only)

EVAL_PREFIX = "eval/"  # every held-out metric's namespace
# ppo, grpo, rloo: reward/<label>, the mean score of each reward function (ppo.reward.functions;
# tether.tasks.rewards.labels) over the rollout's completions it applies to
REWARD_PREFIX = "reward/"

# Held-out preferences: rm and dpo ---------------------------------------------------------
# The objective on held-out data (sft: NLL per response token; rm: plain Bradley-Terry).
EVAL_LOSS = "eval/loss"
EVAL_ACCURACY = "eval/accuracy"  # share of held-out pairs ranked right (ties count half)
EVAL_MARGIN = "eval/margin"  # mean reward of the better minus the worse response
# The reward model's final held-out evaluation (tether.eval.rm.evaluate_preferences).
EVAL_ACCURACY_CI_LO = "eval/accuracy_ci_lo"  # 95% bootstrap interval of eval/accuracy,
EVAL_ACCURACY_CI_HI = "eval/accuracy_ci_hi"  # resampling prompts
EVAL_ECE = "eval/ece"  # expected calibration error of sigmoid(r_better - r_worse)
EVAL_PAIRS = "eval/pairs"  # held-out (better, worse) pairs
EVAL_PROMPTS = "eval/prompts"  # distinct prompts among them
EVAL_REWARD_LENGTH_CORR = "eval/reward_length_corr"  # Pearson(reward, response tokens)
EVAL_EMPTY_WINS = "eval/empty_wins"  # share of real responses an empty one outscores
EVAL_SPEARMAN_GOLD = "eval/spearman_gold"  # Spearman(reward, gold), with gold scores
EVAL_LABEL_GOLD_AGREEMENT = "eval/label_gold_agreement"  # labels vs gold: accuracy's ceiling
EVAL_ACCURACY_VS_GOLD = "eval/accuracy_vs_gold"  # reward order vs gold order

# Fresh samples of held-out prompts, one each (tether.eval.policy.heldout_metrics): ppo,
# grpo, rloo, and dpo with sampled_eval.
EVAL_GOLD = "eval/gold"  # mean gold score
EVAL_GOLD_SE = "eval/gold_se"  # its standard error
EVAL_PROXY = "eval/proxy"  # mean reward-model score
EVAL_KL = "eval/kl"  # mean summed log pi/ref of the samples
EVAL_NUM_TOKENS = "eval/num_tokens"  # mean response length in tokens
EVAL_EMPTY = "eval/empty"  # share of empty (or whitespace-only) responses

# rm -------------------------------------------------------------------------------------
# Share of training pairs ranked right, ties counting half (dpo: by its implicit reward).
REWARD_ACCURACY = "reward/accuracy"
REWARD_MEAN = "reward/mean"  # mean raw score of the batch's responses
REWARD_STD = "reward/std"  # their standard deviation
PERF_SEQUENCES_PER_S = "perf/sequences_per_s"  # responses scored per second of training
REWARD_NORM_GAIN = "reward/norm_gain"  # normalisation fitted after training:
REWARD_NORM_BIAS = "reward/norm_bias"  # reward = gain * raw + bias

# dpo: per pair, weighted as the loss is (beta * log pi/ref is a response's implicit reward)
REWARD_CHOSEN = "reward/chosen"  # implicit reward of the preferred response
REWARD_REJECTED = "reward/rejected"  # implicit reward of the other
REWARD_MARGIN = "reward/margin"  # their difference
KL_CHOSEN = "kl/chosen"  # log pi/ref summed over the preferred response (off-policy)
LOGPS_CHOSEN = "logps/chosen"  # the policy's summed log-prob of the preferred response
LOGPS_REJECTED = "logps/rejected"  # ... of the other
EVAL_REWARD_CHOSEN = "eval/reward_chosen"
EVAL_REWARD_REJECTED = "eval/reward_rejected"
EVAL_KL_CHOSEN = "eval/kl_chosen"
EVAL_LOGPS_CHOSEN = "eval/logps_chosen"
EVAL_LOGPS_REJECTED = "eval/logps_rejected"
# Each per-pair metric's name on the held-out split.
HELD_OUT = {REWARD_CHOSEN: EVAL_REWARD_CHOSEN, REWARD_REJECTED: EVAL_REWARD_REJECTED,
            REWARD_ACCURACY: EVAL_ACCURACY, REWARD_MARGIN: EVAL_MARGIN,
            KL_CHOSEN: EVAL_KL_CHOSEN, LOGPS_CHOSEN: EVAL_LOGPS_CHOSEN,
            LOGPS_REJECTED: EVAL_LOGPS_REJECTED}

# kto: the means over the batch's thumbs-up (desirable) and thumbs-down (undesirable) rows
REWARD_DESIRABLE = "reward/desirable"  # implicit reward beta * log pi/ref of the thumbs-up rows
REWARD_UNDESIRABLE = "reward/undesirable"  # ... of the thumbs-down rows
LOGPS_DESIRABLE = "logps/desirable"  # the policy's summed log-prob of a thumbs-up response
LOGPS_UNDESIRABLE = "logps/undesirable"  # ... of a thumbs-down one
# Mean log pi/ref over the mismatched pairs (each prompt with another row's response): the
# KL estimate whose max(0, .) is KTO's reference point z0.
KL_MISMATCHED = "kl/mismatched"
EVAL_REWARD_DESIRABLE = "eval/reward_desirable"
EVAL_REWARD_UNDESIRABLE = "eval/reward_undesirable"
EVAL_LOGPS_DESIRABLE = "eval/logps_desirable"
EVAL_LOGPS_UNDESIRABLE = "eval/logps_undesirable"
EVAL_KL_MISMATCHED = "eval/kl_mismatched"
KTO_HELD_OUT = {REWARD_DESIRABLE: EVAL_REWARD_DESIRABLE,
                REWARD_UNDESIRABLE: EVAL_REWARD_UNDESIRABLE,
                LOGPS_DESIRABLE: EVAL_LOGPS_DESIRABLE, LOGPS_UNDESIRABLE: EVAL_LOGPS_UNDESIRABLE,
                KL_MISMATCHED: EVAL_KL_MISMATCHED}

# ppo, grpo, rloo: one row per iteration ------------------------------------------------
LOSS_POLICY = "loss/policy"  # clipped surrogate loss
LOSS_VALUE = "loss/value"  # clipped value loss (ppo only)
LOSS_KL = "loss/kl"  # KL penalty term, when the KL is in the loss (ppo.kl_in=loss)
PPO_CLIPFRAC = "ppo/clipfrac"  # share of response tokens whose ratio left [1-eps, 1+eps]
PPO_APPROX_KL = "ppo/approx_kl"  # k3 estimate of KL(rollout policy || updated policy)
PPO_VALUE_CLIPFRAC = "ppo/value_clipfrac"  # share of values clipped (ppo only)
PPO_ADVANTAGE_MEAN = "ppo/advantage_mean"  # over response tokens
PPO_ADVANTAGE_STD = "ppo/advantage_std"
PPO_RETURNS_MEAN = "ppo/returns_mean"  # ppo only
PPO_EXPLAINED_VARIANCE = "ppo/explained_variance"  # of the returns by the values (ppo only)
PPO_UPDATES = "ppo/updates"  # optimizer steps this iteration (fewer on an early stop)
PPO_EARLY_STOP = "ppo/early_stop"  # 1 when ppo.target_approx_kl stopped the epochs early
# grpo, rloo: share of the rollout's groups whose optimised scores all agree (no gradient),
# as sampled (before any refill)
PPO_ZERO_SPREAD_FRAC = "ppo/zero_spread_frac"
# ppo.dynamic_sampling: share of the samples trained on that were dropped from the loss (after
# any refill), and how many extra batches of prompts were sampled to refill them
PPO_DROPPED_FRAC = "ppo/dropped_frac"
PPO_REFILL_ROUNDS = "ppo/refill_rounds"
REWARD_PROXY = "reward/proxy"  # mean reward-model score of the rollout
REWARD_PROXY_STD = "reward/proxy_std"
REWARD_GOLD = "reward/gold"  # mean gold score of the rollout
REWARD_GOLD_STD = "reward/gold_std"
REWARD_SCORE = "reward/score"  # mean score optimised: after no-EOS and overlong penalties,
# whitening, clip
REWARD_OVERLONG_PENALTY = "reward/overlong_penalty"  # mean reward.overlong_buffer penalty
KL_SEQ = "kl/seq"  # mean summed log pi/ref of the rollout
KL_COEF = "kl/coef"  # KL coefficient used this iteration
POLICY_ENTROPY = "policy/entropy"  # mean per-token entropy of the rollout under the policy
RESPONSE_LENGTH = "response/length"  # mean response tokens
RESPONSE_NO_EOS_FRAC = "response/no_eos_frac"  # share of responses ending without EOS
PERF_GENERATE_S = "perf/generate_s"  # seconds of each stage of the iteration
PERF_SCORE_S = "perf/score_s"
PERF_PREPARE_S = "perf/prepare_s"  # no-grad log-prob and value passes, advantages
PERF_REFILL_S = "perf/refill_s"  # sampling and scoring more prompts (ppo.dynamic_sampling)
PERF_TRAIN_S = "perf/train_s"
PERF_GENERATE_TOKENS_PER_S = "perf/generate_tokens_per_s"  # response tokens sampled per s

# ppo, grpo, rloo, when the generation backend gives its log-probs: the sampler's policy
# against the trainer's before the update, over the rollout's response tokens
# (tether.losses.mismatch; logged whether or not rollout.is_correction corrects for it) ------
MISMATCH_KL_K1 = "mismatch/kl_k1"  # mean log pi_sampler - log pi_trainer: KL(sampler || trainer)
MISMATCH_KL_K3 = "mismatch/kl_k3"  # the same KL, k3 estimator (>= 0, lower variance)
MISMATCH_IS_WEIGHT_MEAN = "mismatch/is_weight_mean"  # mean truncated importance weight
MISMATCH_IS_TRUNCATED_FRAC = "mismatch/is_truncated_frac"  # share of weights cut by is_cap

# Health flags (tether.eval.health): 1.0 when the check warned, else 0.0 ------------------
HEALTH_PREFIX = "health/"
HEALTH_COLLAPSE = "health/collapse"  # responses collapsing toward empty (ppo, dpo)
HEALTH_CONSTANT_REWARD = "health/constant_reward"  # no spread in the optimised score
HEALTH_NO_EOS_PENALTY = "health/no_eos_penalty"  # the no-EOS penalty drives the reward
HEALTH_RM_PREFERS_EMPTY = "health/rm_prefers_empty"  # empty responses outscore real ones
HEALTH_RM_AT_CHANCE = "health/rm_at_chance"  # rm: held-out accuracy not told from chance

# Old spellings, as runs before these names (and ppo.py, until it imports this module) wrote
# them: tether.rundir.read_metrics reads them as the current names, so the report and the
# pipeline still read an old run directory.
RENAMED = {
    "loss/eval": EVAL_LOSS,
    "reward/train_accuracy": REWARD_ACCURACY,
    "reward/eval_accuracy": EVAL_ACCURACY,
    "reward/eval_margin": EVAL_MARGIN,
    "reward/eval_chosen": EVAL_REWARD_CHOSEN,
    "reward/eval_rejected": EVAL_REWARD_REJECTED,
    "kl/eval_chosen": EVAL_KL_CHOSEN,
    "logps/eval_chosen": EVAL_LOGPS_CHOSEN,
    "logps/eval_rejected": EVAL_LOGPS_REJECTED,
    "perf/train_tokens_per_s": PERF_TOKENS_PER_S,
}


def current_names(row: dict) -> dict:
    """A metrics.jsonl row with any old spelling (RENAMED) read as the current name."""
    return {RENAMED.get(key, key): value for key, value in row.items()}
