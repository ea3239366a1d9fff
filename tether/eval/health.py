"""Health checks: a run that trains on garbage, or produced it, says so.

Pure functions over plain numbers: of an online RL rollout (ppo, grpo, rloo: response
lengths, whether each response ended with EOS, the scores it was optimised on, how often the
reward model scores an empty response above them), and of a reward model's held-out
evaluation (at chance; preferring empty responses). Each check returns a short warning, or None
when healthy; `rollout_health` runs them all and `health_flags` turns its answer into the 0/1
metrics `health/<kind>` logged every iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean, pstdev

from tqdm.auto import tqdm

from tether.metric_names import (
    EVAL_ACCURACY,
    EVAL_ACCURACY_CI_HI,
    EVAL_ACCURACY_CI_LO,
    EVAL_EMPTY,
    EVAL_EMPTY_WINS,
    EVAL_LABEL_GOLD_AGREEMENT,
    EVAL_NUM_TOKENS,
    HEALTH_COLLAPSE,
    HEALTH_PREFIX,
)

KINDS = ("collapse", "constant_reward", "no_eos_penalty", "rm_prefers_empty")

MIN_MEAN_LENGTH = 2.0  # tokens
MIN_LENGTH_FRACTION = 0.25  # of the first iteration's mean length
MIN_REWARD_STD = 1e-6
MAX_NO_EOS_FRACTION = 0.5
MAX_EMPTY_WINS = 0.5


def collapse(lengths: Sequence[float], first_mean_length: float | None = None) -> str | None:
    """Responses collapsing: the mean length under MIN_MEAN_LENGTH tokens or under
    MIN_LENGTH_FRACTION of the first iteration's, or more than half of them empty."""
    if not lengths:
        return None
    return collapse_of(fmean(lengths), sum(n == 0 for n in lengths) / len(lengths),
                       first_mean_length)


def collapse_of(mean: float, empty: float, first_mean_length: float | None = None
                ) -> str | None:
    """`collapse` from a sample's mean length (tokens) and its share of empty responses."""
    if empty > 0.5:
        why = f"{empty:.0%} of responses are empty"
    elif mean < MIN_MEAN_LENGTH:
        why = f"mean response length {mean:.2f} tokens"
    elif first_mean_length and mean < MIN_LENGTH_FRACTION * first_mean_length:
        why = f"mean response length {mean:.1f} tokens, down from {first_mean_length:.1f}"
    else:
        return None
    return f"response collapse: {why}; the policy may be gaming the reward with (near-)empty " \
           "responses"


class CollapseWatch:
    """The sampled evaluations of an offline trainer (dpo, kto): each is flagged
    (HEALTH_COLLAPSE) when its responses collapse against the first evaluation's length, and
    the warning is printed once, by the main process."""

    def __init__(self) -> None:
        self.first_length: float | None = None
        self.warned = False

    def check(self, metrics: dict[str, float], main: bool) -> None:
        self.first_length = self.first_length or metrics[EVAL_NUM_TOKENS]
        warning = collapse_of(metrics[EVAL_NUM_TOKENS], metrics[EVAL_EMPTY], self.first_length)
        metrics[HEALTH_COLLAPSE] = float(warning is not None)
        if warning and main and not self.warned:
            tqdm.write(f"warning: {warning}")
        self.warned = self.warned or warning is not None


def constant_reward(scores: Sequence[float]) -> str | None:
    """The optimised score has (almost) no spread across the rollout."""
    if len(scores) < 2:
        return None
    std = pstdev(scores)
    if std >= MIN_REWARD_STD:
        return None
    return f"constant reward: every response scored {fmean(scores):.4g} (std {std:.2g}); " \
           "the policy gradient is zero or pure noise"


def no_eos_penalty(finished: Sequence[bool], penalize_no_eos: bool,
                   no_eos_score: float) -> str | None:
    """The no-EOS penalty replaces the score of most of the rollout."""
    if not penalize_no_eos or not finished:
        return None
    no_eos = sum(not f for f in finished) / len(finished)
    if no_eos <= MAX_NO_EOS_FRACTION:
        return None
    return f"no-EOS penalty: {no_eos:.0%} of responses end without EOS and score " \
           f"reward.no_eos_score={no_eos_score:g}, so the penalty, not the reward model, is " \
           "driving the reward; raise rollout.max_new_tokens or set " \
           "reward.penalize_no_eos=false"


def rm_prefers_empty(empty_wins: float | None, responses: str = "the rollout's responses"
                     ) -> str | None:
    """The reward model scores an empty response above most of `responses` to the same prompts
    (`empty_wins`: that share; None or NaN: not measured), so a policy optimised against it
    can gain reward by saying nothing."""
    if empty_wins is None or not empty_wins > MAX_EMPTY_WINS:
        return None
    return f"the reward model prefers empty responses: an empty response to the same prompt " \
           f"outscores {empty_wins:.0%} of {responses}, so a policy can gain reward by saying " \
           "nothing; the reward model, not the policy, needs fixing (more or better " \
           "preference data)"


def at_chance(metrics: dict[str, float]) -> str | None:
    """A warning when the held-out accuracy cannot be told from chance (its 95 % interval
    reaches down to 0.5): such a reward model has not learned the labels, and a policy
    optimised against it optimises noise. None when it has."""
    if metrics[EVAL_ACCURACY_CI_LO] > 0.5:
        return None
    ceiling = (f" (the labels themselves agree with gold on "
               f"{metrics[EVAL_LABEL_GOLD_AGREEMENT]:.3f})"
               if EVAL_LABEL_GOLD_AGREEMENT in metrics else "")
    return (f"the reward model's held-out accuracy {metrics[EVAL_ACCURACY]:.3f} [95% CI "
            f"{metrics[EVAL_ACCURACY_CI_LO]:.3f}, {metrics[EVAL_ACCURACY_CI_HI]:.3f}] "
            f"cannot be told from chance (0.5){ceiling}: it has not learned these preferences, "
            f"and a policy optimised against it would optimise noise. More preference data, "
            f"or more held-out prompts for a narrower interval, would tell more.")


def reward_model_warnings(metrics: dict[str, float]) -> list[str]:
    """What a reward model's held-out evaluation (its eval/* metrics) warns of: accuracy at
    chance, and empty responses preferred to real ones."""
    found = [at_chance(metrics), rm_prefers_empty(metrics.get(EVAL_EMPTY_WINS),
                                                  "the real responses to the held-out prompts")]
    return [text for text in found if text]


def rollout_health(lengths: Sequence[float], finished: Sequence[bool], scores: Sequence[float],
                   penalize_no_eos: bool, no_eos_score: float,
                   first_mean_length: float | None = None,
                   empty_wins: float | None = None) -> dict[str, str]:
    """Every check's warning, by kind (one of KINDS); empty when the rollout looks healthy.
    `scores` are the ones optimised (after the no-EOS penalty, whitening and clipping);
    `empty_wins` is measured on the run's first rollout (rm_prefers_empty)."""
    found = {"collapse": collapse(lengths, first_mean_length),
             "constant_reward": constant_reward(scores),
             "no_eos_penalty": no_eos_penalty(finished, penalize_no_eos, no_eos_score),
             "rm_prefers_empty": rm_prefers_empty(empty_wins)}
    return {kind: text for kind, text in found.items() if text}


def health_flags(warnings: dict[str, str]) -> dict[str, float]:
    """The metrics `health/<kind>`: 1.0 where that kind warned, else 0.0, for every kind."""
    return {HEALTH_PREFIX + kind: float(kind in warnings) for kind in KINDS}


class RolloutWatch:
    """The health of an online RL run, iteration by iteration: `check` runs rollout_health on
    each rollout against the run's first one and prints each kind of warning once."""

    def __init__(self, main: bool = True, has_reward_model: bool = True):
        self.main = main  # prints (the main process)
        self.first_length: float | None = None  # the first rollout's mean response length
        # how often the reward model prefers an empty response: measured on the first rollout
        self.empty_wins: float | None = None if has_reward_model else float("nan")
        self.warned: set[str] = set()

    @property
    def wants_empty_scores(self) -> bool:
        """Whether this rollout should also score empty responses (for rm_prefers_empty)."""
        return self.empty_wins is None

    def check(self, iteration: int, lengths: Sequence[float], finished: Sequence[bool],
              scores: Sequence[float], penalize_no_eos: bool, no_eos_score: float,
              empty_wins: float | None = None) -> dict[str, float]:
        """The metrics health/<kind> of this rollout (see rollout_health for the arguments);
        `empty_wins`, when this rollout measured it, is kept for the rest of the run."""
        if self.first_length is None and lengths:
            self.first_length = fmean(lengths)
        if empty_wins is not None:
            self.empty_wins = empty_wins
        warnings = rollout_health(lengths, finished, scores, penalize_no_eos, no_eos_score,
                                  self.first_length, self.empty_wins)
        for kind, text in warnings.items():
            if self.main and kind not in self.warned:
                tqdm.write(f"warning (iteration {iteration}): {text}")
            self.warned.add(kind)
        return health_flags(warnings)


def health_findings(metrics: list[dict]) -> list[str]:
    """What a training run's health flags (its metrics rows' health/<kind>) say: one phrase
    per kind that was flagged, with how often; empty when nothing was."""
    flagged: dict[str, tuple[int, int]] = {}
    for row in metrics:
        for key, value in row.items():
            if key.startswith(HEALTH_PREFIX):
                kind = key.removeprefix(HEALTH_PREFIX)
                hits, seen = flagged.get(kind, (0, 0))
                flagged[kind] = (hits + (value > 0), seen + 1)
    why = {"no_eos_penalty": "the no-EOS penalty, not the reward model, was driving the reward",
           "rm_prefers_empty": "the reward model scores empty responses above most real ones",
           "collapse": "the responses collapsed toward empty",
           "constant_reward": "the optimised reward was constant"}
    return [f"{why.get(kind, kind)} ({hits} of {seen} checks)"
            for kind, (hits, seen) in flagged.items() if hits]
