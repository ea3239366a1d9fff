"""Small statistics for evaluating reward models: pure numpy, no state, no torch.

    bootstrap_ci        percentile bootstrap interval, optionally resampling whole groups
    rankdata            average ranks (ties share the mean of the ranks they span)
    pearson, spearman   correlation, and correlation of average ranks
    calibration         expected calibration error and a reliability table
    accuracy_by_bucket  accuracy split by a covariate (e.g. length difference)

The tables are lists of plain dicts (str / int / float), ready for `json.dumps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")
    return a


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} differ in length: {len(a)} and {len(b)}")


def _fmt(x: float) -> str:
    """An edge as people write it: 0.3, not 0.30000000000000004; -10, not -10.0."""
    return f"{x:.6g}"


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def bootstrap_ci(values: ArrayLike, groups: Sequence | np.ndarray | None = None, *,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 statistic: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval for `statistic(values)` at level 1 - alpha.

    Definition: draw n_boot resamples, compute s_b = statistic(resample_b) for each, and
    return the (alpha/2, 1 - alpha/2) quantiles of {s_b} (numpy's default, linear
    interpolation).

    - groups=None: a resample is n values drawn with replacement from the n values (iid).
    - groups given (one label per value, e.g. the prompt id): a resample draws G groups with
      replacement from the G distinct groups and concatenates all their values. Use this when
      values within a group are correlated (the pairs of one prompt share its responses), since
      the iid interval is then too narrow; with one value per group the two are the same.

    For a mean with unequal group sizes, the statistic of the concatenation is the
    size-weighted mean, the same estimator as statistic(values) itself.
    """
    x = _vector(values, "values")
    if len(x) == 0:
        raise ValueError("values is empty")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    if groups is None:
        draws = rng.integers(0, len(x), size=(n_boot, len(x)))
        for b in range(n_boot):
            stats[b] = statistic(x[draws[b]])
    else:
        g = np.asarray(groups)
        if g.shape != x.shape:
            raise ValueError(f"groups must have one label per value: {g.shape} for {x.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")  # the values of each group, contiguous
        x_sorted = x[order]
        sizes = np.bincount(inverse)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        draws = rng.integers(0, len(sizes), size=(n_boot, len(sizes)))
        for b in range(n_boot):
            picked_sizes = sizes[draws[b]]
            ends = np.cumsum(picked_sizes)
            # index k of the concatenation lies in picked group j; its offset is k - (ends[j] -
            # size_j), so its position in x_sorted is starts[group] + that offset.
            idx = np.arange(ends[-1]) + np.repeat(starts[draws[b]] - (ends - picked_sizes),
                                                  picked_sizes)
            stats[b] = statistic(x_sorted[idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------------------------


def rankdata(x: ArrayLike) -> np.ndarray:
    """Ranks 1..n of x, ties given the average of the ranks they span.

    Example: [10, 20, 20, 20, 5] -> [2, 4, 4, 4, 1] (the three 20s span ranks 3, 4, 5).
    The same as scipy.stats.rankdata(x, method="average").
    """
    a = _vector(x, "x")
    sorter = np.argsort(a, kind="mergesort")
    xs = a[sorter]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])  # first of each run of equal values
    dense = np.cumsum(new)  # 1-based index of each sorted value's run
    bounds = np.concatenate([np.flatnonzero(new), [len(a)]])  # run r spans [bounds[r-1], bounds[r])
    ranks = np.empty(len(a))
    # run r covers 1-based ranks bounds[r-1]+1 .. bounds[r]; their mean:
    ranks[sorter] = 0.5 * (bounds[dense - 1] + 1 + bounds[dense])
    return ranks


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation r = sum((x - mean x)(y - mean y)) / sqrt(sum((x - mean x)^2)
    * sum((y - mean y)^2)). NaN when either input is constant (r is undefined there)."""
    a, b = _vector(x, "x"), _vector(y, "y")
    _same_length(a, b, "x and y")
    if len(a) < 2:
        raise ValueError(f"correlation needs at least 2 points, got {len(a)}")
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.dot(da, da) * np.dot(db, db))
    if denom == 0:
        return float("nan")
    return float(np.clip(np.dot(da, db) / denom, -1.0, 1.0))


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks, pearson(rankdata(x),
    rankdata(y)). With ties this is what scipy.stats.spearmanr returns (the textbook
    1 - 6 sum d^2 / (n (n^2 - 1)) holds only without ties). NaN if either input is constant."""
    return pearson(rankdata(x), rankdata(y))


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def calibration(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10, *,
                symmetric: bool = False) -> tuple[float, list[dict]]:
    """Expected calibration error and a reliability table for predicted P(label = 1).

    Bins are equal-width on [0, 1]: bin b is [b/n_bins, (b+1)/n_bins), the last one closed
    ([0.9, 1] for 10 bins). With n_b predictions in bin b, conf_b their mean probability and
    acc_b the fraction of their labels that are 1,

        ECE = sum_b (n_b / N) * |acc_b - conf_b|.

    Returns (ECE, table); the table has one dict per non-empty bin:
    {"bin": "[0.6, 0.7)", "count": n_b, "mean_prob": conf_b, "frac_positive": acc_b}.

    For preference pairs, probs = sigmoid(r_chosen - r_rejected) with labels all 1 (the label
    is which response is "chosen"), so every bin's frac_positive is 1 and even a perfectly
    calibrated model looks miscalibrated. Pass symmetric=True: each (p, y) is counted together
    with its mirror (1 - p, 1 - y), the same pair written the other way round, placed in the
    mirror bin; the result is then independent of how pairs are oriented, and each count in the
    table is doubled.
    """
    p = _vector(probs, "probs")
    y = _vector(labels, "labels")
    _same_length(p, y, "probs and labels")
    if len(p) == 0:
        raise ValueError("probs is empty")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probs must lie in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    edges = np.arange(n_bins + 1) / n_bins  # exact decimals: 3/10 == 0.3
    index = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    if symmetric:
        # the mirror goes to the mirror bin, so 1 - 0.8 (= 0.19999999999999996) joins 0.2
        p, y = np.concatenate([p, 1 - p]), np.concatenate([y, 1 - y])
        index = np.concatenate([index, n_bins - 1 - index])
    ece, table = 0.0, []
    for b in range(n_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        if count == 0:
            continue
        conf, acc = float(p[in_bin].mean()), float(y[in_bin].mean())
        ece += count / len(p) * abs(acc - conf)
        close = "]" if b == n_bins - 1 else ")"
        table.append({"bin": f"[{_fmt(edges[b])}, {_fmt(edges[b + 1])}{close}", "count": count,
                      "mean_prob": conf, "frac_positive": acc})
    return float(ece), table


# ---------------------------------------------------------------------------------------------
# Accuracy by bucket
# ---------------------------------------------------------------------------------------------


def accuracy_by_bucket(correct: ArrayLike, values: ArrayLike,
                       edges: Sequence[float]) -> list[dict]:
    """Accuracy (mean of `correct`) within buckets of `values`.

    Edges e_1 < ... < e_m give m + 1 buckets: (-inf, e_1), [e_1, e_2), ..., [e_m, inf); a
    value v is in [e_i, e_i+1) when e_i <= v < e_i+1. Returns one dict per non-empty bucket,
    in order: {"bucket": "[-10, 0)", "count": n, "accuracy": correct ones / n}.

    Typical use: values = length(better) - length(worse) in tokens, to see whether a reward
    model is right mostly when the better response is also the longer one.
    """
    c = _vector(correct, "correct")
    v = _vector(values, "values")
    _same_length(c, v, "correct and values")
    e = _vector(edges, "edges")
    if len(e) == 0:
        raise ValueError("edges is empty")
    if np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be strictly increasing, got {list(edges)}")
    labels = ([f"(-inf, {_fmt(e[0])})"]
              + [f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in zip(e[:-1], e[1:], strict=True)]
              + [f"[{_fmt(e[-1])}, inf)"])
    index = np.searchsorted(e, v, side="right")  # 0: below e_1; i: [e_i, e_i+1); m: >= e_m
    table = []
    for i, label in enumerate(labels):
        in_bucket = index == i
        count = int(in_bucket.sum())
        if count:
            table.append({"bucket": label, "count": count,
                          "accuracy": float(c[in_bucket].mean())})
    return table
