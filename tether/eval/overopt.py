"""Reward over-optimisation: how gold reward moves as the policy is pushed against a proxy.

Following Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization"
(arXiv:2210.10760), distance from the starting policy is measured as d = sqrt(KL(pi || pi_0)),
and the gold reward gain R(d) = r_gold(pi) - r_gold(pi_0) is fitted with the paper's forms.

    bon_kl                     analytic KL of best-of-n sampling: log n - (n - 1) / n
    best_of_n, best_of_n_curve unbiased best-of-n value from N >= n samples per prompt
    fit_bon, fit_rl, predict   least-squares fits of R(d) = d (alpha - beta d) and
                               R(d) = d (alpha - beta log d), and their evaluation
    overoptimization_warning   proxy still rising after gold has peaked (beyond its noise)
    length_bias                does the reward model's error grow with response length?

Pure numpy and `math`, no state; tables are plain dicts, ready for `json.dumps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tether.eval.stats import ArrayLike, _same_length, _vector, pearson, spearman

# ---------------------------------------------------------------------------------------------
# Best-of-n
# ---------------------------------------------------------------------------------------------


def bon_kl(n: int | ArrayLike) -> float | np.ndarray:
    """KL(pi_bon || pi_0) = log(n) - (n - 1) / n, the KL of best-of-n sampling from pi_0.

    The analytic value Gao et al. (2022) use for best-of-n (citing Stiennon et al., 2020). It
    is exact when the proxy reward is continuous under pi_0 (no probability mass on a single
    value) and otherwise an upper bound (Beirami et al., 2024). n = 1 gives 0; it grows like
    log n. n must be an integer >= 1 (or an array of them, giving an array back).
    """
    a = np.asarray(n, dtype=float)
    if not np.all(np.isfinite(a)) or np.any(a < 1) or np.any(a != np.round(a)):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    kl = np.log(a) - (a - 1) / a
    return float(kl) if kl.ndim == 0 else kl


def _prompts(select: ArrayLike, value: ArrayLike,
             groups: Sequence | np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(select, value) of each prompt, as 1-D float arrays; validates shapes and finiteness."""
    s, v = np.asarray(select, dtype=float), np.asarray(value, dtype=float)
    if s.shape != v.shape:
        raise ValueError(f"select and value differ in shape: {s.shape} and {v.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(v))):
        raise ValueError("select or value contains NaN or infinity")
    if groups is not None:
        if s.ndim != 1:
            raise ValueError(f"with groups, select must be one-dimensional, got shape {s.shape}")
        g = np.asarray(groups)
        if g.shape != s.shape:
            raise ValueError(f"groups must have one label per sample: {g.shape} for {s.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        inverse = inverse.reshape(-1)
        return [(s[inverse == k], v[inverse == k]) for k in range(int(inverse.max()) + 1)]
    if s.ndim == 1:
        s, v = s[None, :], v[None, :]
    if s.ndim != 2:
        raise ValueError(f"select must be (prompts, samples) or 1-D, got shape {s.shape}")
    return list(zip(s, v, strict=True))


def _sorted_values(s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """value sorted by select ascending, each run of tied select replaced by its mean value.

    Within a tie the order is by value, so the sums (and the result) do not depend on the
    order the samples came in.
    """
    order = np.lexsort((v, s))
    ss, vs = s[order], v[order]
    new = np.concatenate([[True], ss[1:] != ss[:-1]])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(ss)))
    return np.repeat(np.add.reduceat(vs, starts) / counts, counts)


def _bon_weights(big_n: int, n: int) -> np.ndarray:
    """w_i = C(i, n-1) / C(N, n), i = 0..N-1, computed in log space (sums to 1)."""
    log_fact = np.array([math.lgamma(k + 1) for k in range(big_n + 1)])
    i = np.arange(n - 1, big_n)
    log_w = (log_fact[i] - log_fact[n - 1] - log_fact[i - n + 1]
             - (log_fact[big_n] - log_fact[n] - log_fact[big_n - n]))
    w = np.zeros(big_n)
    w[i] = np.exp(log_w)
    return w / w.sum()  # exactly 1 in theory (hockey-stick identity); removes rounding


def _bon_by_size(prompts: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    """Prompts grouped by sample count N: N -> (prompts with N samples, N) sorted values."""
    by_size: dict[int, list[np.ndarray]] = {}
    for s, v in prompts:
        if len(s) == 0:
            raise ValueError("a prompt has no samples")
        by_size.setdefault(len(s), []).append(_sorted_values(s, v))
    return {size: np.stack(rows) for size, rows in by_size.items()}


def _bon_mean(by_size: dict[int, np.ndarray], n: int) -> float:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    smallest = min(by_size)
    if n > smallest:
        raise ValueError(f"n = {n} exceeds the {smallest} samples of some prompt (need n <= N)")
    total = sum(float((rows @ _bon_weights(size, int(n))).sum()) for size, rows in by_size.items())
    return total / sum(len(rows) for rows in by_size.values())


def best_of_n(select: ArrayLike, value: ArrayLike, n: int,
              groups: Sequence | np.ndarray | None = None) -> float:
    """Unbiased expected `value` of the best of n samples (by `select`), averaged over prompts.

    Best-of-n picks, among n samples from the policy, the one with the highest `select`
    (usually the proxy reward) and scores it with `value` (usually the gold reward, or the
    proxy itself). Given N >= n samples of a prompt, the exact mean over all C(N, n) subsets
    of size n (an unbiased estimator, as for the best-of-n curves of Gao et al., 2022) is: sort
    the samples by select ascending; the i-th smallest (i = 0..N-1) is the maximum of a random
    n-subset with probability C(i, n-1) / C(N, n) (zero for i < n-1), so

        E[value of best of n] = sum_i C(i, n-1) / C(N, n) * value_sorted[i].

    Ties in select are broken uniformly at random: each run of equal select values has its
    values replaced by their mean, which is the exact expectation under random tie-breaking
    (equivalently, a subset whose maximum is tied scores the mean value of its tied maxima),
    so the result does not depend on the order of the samples. The weights are computed in
    log space (lgamma), so N in the thousands does not overflow. n = 1 gives the mean value;
    n = N the value of the sample with the highest select.

    select, value: (P, N) arrays, one row per prompt, or 1-D for a single prompt; or 1-D with
    `groups` (one prompt label per sample, prompts may then have different N). The result is
    the unweighted mean over prompts. Requires 1 <= n <= N for every prompt.
    """
    return _bon_mean(_bon_by_size(_prompts(select, value, groups)), n)


def best_of_n_curve(select: ArrayLike, value: ArrayLike, ns: Sequence[int],
                    groups: Sequence | np.ndarray | None = None) -> list[dict]:
    """best_of_n at each n in ns, with its analytic KL: [{"n", "kl": bon_kl(n), "value"}].

    Sorting is done once for all n. For the fits, d = sqrt(kl) (see fit_bon).
    """
    by_size = _bon_by_size(_prompts(select, value, groups))
    return [{"n": int(n), "kl": bon_kl(int(n)), "value": _bon_mean(by_size, n)} for n in ns]


# ---------------------------------------------------------------------------------------------
# Functional forms
# ---------------------------------------------------------------------------------------------

_FORMS = ("bon", "rl")


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d * log d, with its limit 0 at d = 0."""
    out = np.zeros_like(d)
    pos = d > 0
    out[pos] = d[pos] * np.log(d[pos])
    return out


def _design(d: np.ndarray, form: str) -> np.ndarray:
    if form == "bon":
        return np.column_stack([d, -d * d])
    if form == "rl":
        return np.column_stack([d, -_d_log_d(d)])
    raise ValueError(f"form must be one of {_FORMS}, got {form!r}")


def _distances(d: ArrayLike) -> np.ndarray:
    a = np.asarray(d, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ValueError("d contains NaN or infinity")
    if np.any(a < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    return a


def _fit(d: ArrayLike, r: ArrayLike, form: str) -> dict:
    x, y = _distances(_vector(d, "d")), _vector(r, "r")
    _same_length(x, y, "d and r")
    distinct = len(np.unique(x[x > 0]))
    if distinct < 2:
        raise ValueError(f"the fit needs at least 2 distinct d > 0, got {distinct}")
    design = _design(x, form)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    ss_res = float(np.sum((y - design @ coef) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = float("nan") if ss_tot == 0 else 1 - ss_res / ss_tot
    return {"alpha": float(coef[0]), "beta": float(coef[1]), "r2": r2}


def fit_bon(d: ArrayLike, r: ArrayLike) -> dict:
    """Least-squares fit of R(d) = d (alpha - beta d), the best-of-n form of Gao et al. (2022).

    d = sqrt(KL(pi || pi_0)) (for best-of-n, sqrt(bon_kl(n))); R is the reward *gain* over the
    starting policy, R(0) = 0, so pass r - r_0 (e.g. best_of_n(...) at n minus that at n = 1).
    R is linear in (alpha, beta): columns [d, -d^2], solved by np.linalg.lstsq, no intercept.
    Returns {"alpha", "beta", "r2"}, r2 = 1 - SS_res / SS_tot over all given points (NaN when
    r is constant). Raises ValueError on mismatched lengths, d < 0, or fewer than 2 distinct
    d > 0 (a point at d = 0 carries no information about alpha, beta).
    """
    return _fit(d, r, "bon")


def fit_rl(d: ArrayLike, r: ArrayLike) -> dict:
    """Least-squares fit of R(d) = d (alpha - beta log d), the RL form of Gao et al. (2022).

    d = sqrt(KL(pi || pi_0)) of the trained policy; R is the reward *gain* over the starting
    policy, so pass r - r_0. Linear in (alpha, beta): columns [d, -d log d], where d log d is
    taken as its limit 0 at d = 0 (so R(0) = 0), solved by np.linalg.lstsq. Returns
    {"alpha", "beta", "r2"} as fit_bon does, with the same errors.
    """
    return _fit(d, r, "rl")


def predict(fit: dict, d: float | ArrayLike, form: str) -> float | np.ndarray:
    """The fitted curve at d: d (alpha - beta d) for form "bon", d (alpha - beta log d) for
    form "rl" (0 at d = 0). `fit` is a dict from fit_bon / fit_rl; d >= 0, scalar or array."""
    x = _distances(d)
    alpha, beta = float(fit["alpha"]), float(fit["beta"])
    if form == "bon":
        out = x * (alpha - beta * x)
    elif form == "rl":
        out = alpha * x - beta * _d_log_d(np.atleast_1d(x)).reshape(x.shape)
    else:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def _missing(x: object) -> bool:
    return x is None or not math.isfinite(float(x))


def _pair(a: float, b: float) -> tuple[str, str]:
    """a and b with 2 decimals, or more (up to 6) when 2 would print them the same."""
    for places in range(2, 7):
        fa, fb = f"{a:.{places}f}", f"{b:.{places}f}"
        if fa != fb:
            break
    return fa, fb


def overoptimization_warning(steps: Sequence, proxy: Sequence, gold: Sequence, *,
                             min_points: int = 3, tol: float = 0.0, unit: str = "step ",
                             gold_se: float | Sequence | None = None,
                             z: float = 1.96) -> str | None:
    """A one-sentence warning when the proxy kept rising after the gold reward peaked.

    The signature of over-optimisation (Gao et al., 2022): past some KL the gold reward falls
    while the proxy it is trained on keeps going up. Points are (steps[k], proxy[k], gold[k]),
    e.g. PPO evaluations; those with a None or NaN entry are skipped and the rest taken in
    order of step. With k* the first point where gold is highest and L the last point, warn
    when

        proxy[L] > proxy[k*] + tol   and   gold[L] < gold[k*] - tol.

    Returns None with fewer than min_points usable points, or when the pattern is absent
    (including when gold peaks at the last point). `unit` prefixes a step in the message
    ("step 20"; "n=" for best-of-n).

    gold_se: the standard error of each gold mean (one per point, or one for all; None or NaN
    where unknown). With it, gold must also fall by more than

        z * sqrt(gold_se[k*]**2 + gold_se[L]**2),

    the half-width of the (z = 1.96: 95%) interval of the difference of two independent
    means: a smaller drop is what measuring one unchanged policy twice on a few dozen prompts
    can show. Independence is the cautious choice, since evaluations on the same prompts are
    positively correlated. An unknown SE counts as 0 (then only `tol` guards that point).
    """
    if not len(steps) == len(proxy) == len(gold):
        raise ValueError(f"steps, proxy and gold differ in length: "
                         f"{len(steps)}, {len(proxy)} and {len(gold)}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    ses = [None] * len(steps) if gold_se is None else (
        [gold_se] * len(steps) if np.ndim(gold_se) == 0 else list(gold_se))
    if len(ses) != len(steps):
        raise ValueError(f"gold_se has {len(ses)} entries for {len(steps)} points")
    points = sorted(((s, float(p), float(g), 0.0 if _missing(se) else float(se))
                     for s, p, g, se in zip(steps, proxy, gold, ses, strict=True)
                     if not (_missing(s) or _missing(p) or _missing(g))),
                    key=lambda t: float(t[0]))
    if len(points) < max(min_points, 2):
        return None
    peak = max(range(len(points)), key=lambda k: (points[k][2], -k))  # first highest gold
    s_peak, p_peak, g_peak, se_peak = points[peak]
    s_last, p_last, g_last, se_last = points[-1]
    noise = z * math.hypot(se_peak, se_last)  # 0 without SEs: the old, tol-only test
    if not (p_last > p_peak + tol and g_last < g_peak - max(tol, noise)):
        return None
    g_from, g_to = _pair(g_peak, g_last)
    p_from, p_to = _pair(p_peak, p_last)
    # Say how big a drop noise alone could make, so the reader can weigh the warning.
    beyond = f", more than the ±{noise:.2g} sampling noise allows," if noise > 0 else ""
    return (f"gold fell from {g_from} ({unit}{s_peak}) to {g_to} ({unit}{s_last}){beyond} while "
            f"the proxy rose from {p_from} to {p_to}: the policy is exploiting the reward model")


# ---------------------------------------------------------------------------------------------
# Length bias
# ---------------------------------------------------------------------------------------------


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return np.full_like(x, np.nan) if sd == 0 else (x - x.mean()) / sd


def length_bias(rm_scores: ArrayLike, gold: ArrayLike, lengths: ArrayLike) -> dict:
    """How the reward model's error relates to response length.

    With z(x) = (x - mean x) / std x over the given samples, the error is

        err = z(rm_scores) - z(gold),

    (scale-free, so an affine change of either reward leaves it unchanged). Returns
    {"n", "err_length_pearson", "err_length_spearman", "rm_length_pearson",
    "rm_length_spearman", "gold_length_pearson", "gold_length_spearman"}, correlations by
    tether.eval.stats.pearson / spearman. A positive corr(err, length) means the proxy
    overrates long responses relative to gold (length bias), as noted among the proxy's
    exploitable features by Gao et al. (2022). NaN where an input is constant.
    """
    rm, g = _vector(rm_scores, "rm_scores"), _vector(gold, "gold")
    n_tok = _vector(lengths, "lengths")
    _same_length(rm, g, "rm_scores and gold")
    _same_length(rm, n_tok, "rm_scores and lengths")
    if len(rm) < 2:
        raise ValueError(f"length_bias needs at least 2 samples, got {len(rm)}")
    err = _zscore(rm) - _zscore(g)
    if np.all(np.isfinite(err)):
        err_p, err_s = pearson(err, n_tok), spearman(err, n_tok)
    else:
        err_p = err_s = float("nan")
    return {"n": len(rm),
            "err_length_pearson": err_p, "err_length_spearman": err_s,
            "rm_length_pearson": pearson(rm, n_tok), "rm_length_spearman": spearman(rm, n_tok),
            "gold_length_pearson": pearson(g, n_tok), "gold_length_spearman": spearman(g, n_tok)}
