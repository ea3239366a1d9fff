"""Quality statistics of human preference labels: agreement, position bias, gold accuracy.

A label judges the K >= 2 responses of one item. It is a ranking `ranks` in canonical order
(lower is better, equal ranks are ties; for K = 2 "A better" is [0, 1]), "both bad" (all
ranks equal, i.e. all tied) or "can't tell" (`ranks` is None: missing, it contributes to no
statistic but the label counts). `order` is the display order: order[p] is the canonical index
of the response shown at position p, position 0 being the leftmost.

A rating judges one response: "rating" is True (good) or False (bad), or None for "can't tell";
its `order` is [0]. Ratings are units of their own, valued good / bad, with their own kappa and
alpha (a good/bad judgement and a pair judgement are different scales).

Every ranking is reduced to its canonical pairs i < j, each judged +1 (i better), -1 (j better)
or 0 (tie). Rankings of different lengths and with ties thus become comparable units, and a
pair means the same thing whichever side of the screen each response was shown on.

- `pair_judgements`: a ranking's pairs.
- `cohen_kappa`, `krippendorff_alpha`: chance-corrected agreement, nominal categories.
- `position_bias`: how often the response shown further left wins, with a Wilson interval.
- `gold_accuracy`: agreement of one label with a known gold ranking.
- `nominal_agreement`: kappa per pair of annotators and alpha over all, of nominal units.
- `agreement_stats`: all of the above over a set of labels, as a JSON-serialisable dict.

Everything here is pure: no I/O, no randomness, deterministic output for a given input.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations

# Two-sided 95% normal quantile, Phi^-1(0.975).
Z95 = 1.959963984540054


def pair_judgements(ranks: Sequence[int]) -> dict[tuple[int, int], int]:
    """For every canonical pair i < j: +1 if i is better, -1 if j is better, 0 if tied."""
    return {
        (i, j): (ranks[i] < ranks[j]) - (ranks[i] > ranks[j])
        for i, j in combinations(range(len(ranks)), 2)
    }


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters over the same units (a[u] and b[u] rate unit u).

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement and p_e the agreement expected
    if each rater drew categories independently from their own marginals; the categories are
    the union of those both raters used. Computed from integer counts, as
    (n * agreeing - sum_c a_c b_c) / (n^2 - sum_c a_c b_c), so it is exact up to one division.

    None when there are no units.

    Convention: when both raters used one and the same category for every unit, p_e = 1 and
    kappa is 0/0. We return 1.0 then: the raters agree on every unit (p_e = 1 forces p_o = 1),
    and the alternative, None, would look like "no data" on a stats page. It says nothing about
    agreement beyond chance (there was no variation to agree on), so read it together with the
    number of units. Krippendorff's alpha, below, returns None in the same situation.
    """
    if len(a) != len(b):
        raise ValueError(f"raters rated different numbers of units: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    agreeing = sum(x == y for x, y in zip(a, b, strict=True))
    count_a, count_b = Counter(a), Counter(b)
    chance = sum(count_a[c] * count_b[c] for c in count_a)  # n^2 * p_e
    if chance == n * n:
        return 1.0
    return (n * agreeing - chance) / (n * n - chance)


def krippendorff_alpha(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Nominal Krippendorff's alpha; each unit lists the values its coders gave (no missing).

    With the coincidence matrix o_ck (each ordered pair of values from different coders in a
    unit with m_u values adds 1 / (m_u - 1) to o_ck), its marginals n_c and n = sum_c n_c:

        alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k

    Units with fewer than 2 values cannot be paired and are ignored, so n counts the values in
    units with at least 2. Per unit, sum_{c != k} o_ck = (m_u^2 - sum_c m_uc^2) / (m_u - 1),
    with m_uc the unit's count of value c; these are summed with math.fsum, whose correctly
    rounded result does not depend on the order of the units.

    None when fewer than 2 pairable values exist, or when every pairable value is the same
    category (expected disagreement D_e = 0): alpha is 0/0 then and Krippendorff leaves it
    undefined, since data without variation cannot show whether coders can tell categories
    apart.
    """
    disagreements: list[float] = []
    totals: Counter[Hashable] = Counter()
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts = Counter(unit)
        totals.update(counts)
        disagreements.append((m * m - sum(c * c for c in counts.values())) / (m - 1))
    n = sum(totals.values())
    if n < 2:
        return None
    expected = n * n - sum(c * c for c in totals.values())  # sum_{c != k} n_c n_k
    if expected == 0:
        return None
    return 1.0 - (n - 1) * math.fsum(disagreements) / expected


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion; None when there are no trials.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at 0 or
    n successes, which matters for the small counts of a labeling session.
    """
    if trials == 0:
        return None
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials))
    # Clamped because at p = 0 or 1 the bound is 0 or 1 only up to rounding.
    return max(0.0, centre - half), min(1.0, centre + half)


def _check_label(ranks: Sequence[int], order: Sequence[int]) -> None:
    if sorted(order) != list(range(len(order))):
        raise ValueError(f"order {list(order)} is not a permutation of 0..{len(order) - 1}")
    if len(ranks) != len(order):
        raise ValueError(f"ranks {list(ranks)} do not match order {list(order)} in length")


def position_bias(labels: Iterable[tuple[Sequence[int] | None, Sequence[int]]]) -> dict:
    """How often the response displayed further left wins, over (ranks, order) labels.

    Every decisive (untied) canonical pair of every label with ranks is one trial; a tie or a
    "can't tell" gives none. With display order randomised and no bias the rate is about 0.5;
    for K = 2 it is simply how often the left response wins. low/high: 95% Wilson interval.
    """
    left_wins = decisive = 0
    for ranks, order in labels:
        if ranks is None:
            continue
        _check_label(ranks, order)
        position = {c: p for p, c in enumerate(order)}
        for (i, j), judgement in pair_judgements(ranks).items():
            if judgement == 0:
                continue
            decisive += 1
            winner = i if judgement > 0 else j
            left_wins += winner == min(i, j, key=position.__getitem__)
    interval = wilson_interval(left_wins, decisive)
    low, high = interval if interval is not None else (None, None)
    return {
        "left_wins": left_wins,
        "decisive": decisive,
        "rate": left_wins / decisive if decisive else None,
        "low": low,
        "high": high,
    }


def gold_accuracy(ranks: Sequence[int] | None, gold_ranks: Sequence[int]) -> tuple[int, int]:
    """(agreeing, counted) over the canonical pairs the gold ranking orders decisively.

    Gold ties are skipped: the gold has no answer there. A tie in the label on a decisive gold
    pair counts as not agreeing, so "both bad" on a gold item with a clear winner scores 0.
    A "can't tell" label (ranks None) gives (0, 0).
    """
    if ranks is None:
        return 0, 0
    if len(ranks) != len(gold_ranks):
        raise ValueError(f"ranks {list(ranks)} and gold {list(gold_ranks)} differ in length")
    label = pair_judgements(ranks)
    agreeing = counted = 0
    for pair, gold in pair_judgements(gold_ranks).items():
        if gold == 0:
            continue
        counted += 1
        agreeing += label[pair] == gold
    return agreeing, counted


def nominal_agreement(units: Mapping[Hashable, Mapping[str, Hashable]]) -> dict:
    """Agreement over units, each {annotator: value}: Cohen's kappa for every pair of
    annotators sharing a unit (sorted by names, {"annotators": [a, b], "units": n, "kappa"}),
    and nominal Krippendorff's alpha over all units and annotators, with the number of
    pairable units and values."""
    names = sorted({name for unit in units.values() for name in unit})
    kappas = []
    for a, b in combinations(names, 2):
        shared = [(unit[a], unit[b]) for unit in units.values() if a in unit and b in unit]
        if shared:
            kappas.append({"annotators": [a, b], "units": len(shared),
                           "kappa": cohen_kappa([x for x, _ in shared], [y for _, y in shared])})
    pairable = [list(unit.values()) for unit in units.values() if len(unit) >= 2]
    return {"kappa": kappas,
            "alpha": {"value": krippendorff_alpha(pairable), "units": len(pairable),
                      "values": sum(len(values) for values in pairable)}}


def agreement_stats(labels: Sequence[Mapping]) -> dict:
    """Quality statistics of a set of labels, as a JSON-serialisable dict.

    Each label has "item" (hashable), "annotator" (str), "ranks" (list or None for "can't
    tell"), "order" (display order) and optionally "gold" (the gold ranks of a gold item); a
    rating has "rating" (True good, False bad, None can't tell) and "gold" True/False.

    Agreement units are (item, i, j) for the canonical pairs i < j, valued by the pair's
    judgement (+1 / -1 / 0, nominal), and, for ratings, the item, valued good or bad. Gold
    items are included in agreement like any other item: annotators see them unmarked, so
    their labels are ordinary labels. "Can't tell" labels count in "labels" and "cant_tell"
    but give no units.

    Returns:
    - "labels", "cant_tell", "items": counts.
    - "annotators": per name (sorted), "labels", "gold_items" (labels of gold items, "can't
      tell" included), "gold_agreeing" / "gold_pairs" (summed `gold_accuracy`),
      "gold_ratings_agreeing" / "gold_ratings" (gold ratings answered alike / answered good or
      bad) and "gold_accuracy": the share of all those gold judgements (pairs and ratings)
      they got right, None without any.
    - "kappa", "alpha": `nominal_agreement` of the comparisons' pair units.
    - "ratings": {"good", "bad", "kappa", "alpha"}: the ratings' counts and agreement.
    - "position_bias": `position_bias` over all labels.

    One annotator may label an item once (a second label would be a second coder in alpha and
    an ambiguous value in kappa), and every label of an item must show the same number of
    responses; either violation raises ValueError.
    """
    sizes: dict[Hashable, int] = {}
    seen: set[tuple[Hashable, str]] = set()
    # unit -> {annotator: judgement}; dicts keep first-appearance order, so iteration is
    # deterministic without needing the items to be sortable.
    units: dict[tuple[Hashable, int, int], dict[str, int]] = {}
    rated: dict[Hashable, dict[str, bool]] = {}
    annotators: dict[str, dict] = {}
    cant_tell = 0
    for label in labels:
        item, name, ranks, order = label["item"], label["annotator"], label["ranks"], label["order"]
        gold, rating = label.get("gold"), label.get("rating")
        if (item, name) in seen:
            raise ValueError(f"annotator {name!r} labelled item {item!r} more than once")
        seen.add((item, name))
        if sizes.setdefault(item, len(order)) != len(order):
            raise ValueError(
                f"item {item!r} is shown with {len(order)} and {sizes[item]} responses"
            )
        if ranks is not None:
            _check_label(ranks, order)

        stats = annotators.setdefault(
            name, {"labels": 0, "gold_items": 0, "gold_agreeing": 0, "gold_pairs": 0,
                   "gold_ratings_agreeing": 0, "gold_ratings": 0}
        )
        stats["labels"] += 1
        if gold is not None:
            stats["gold_items"] += 1
            if isinstance(gold, bool):
                stats["gold_ratings"] += rating is not None
                stats["gold_ratings_agreeing"] += rating is gold
            else:
                agreeing, counted = gold_accuracy(ranks, gold)
                stats["gold_agreeing"] += agreeing
                stats["gold_pairs"] += counted
        if rating is not None:
            rated.setdefault(item, {})[name] = rating
            continue
        if ranks is None:
            cant_tell += 1
            continue
        for (i, j), judgement in pair_judgements(ranks).items():
            units.setdefault((item, i, j), {})[name] = judgement

    for stats in annotators.values():
        judged = stats["gold_pairs"] + stats["gold_ratings"]
        right = stats["gold_agreeing"] + stats["gold_ratings_agreeing"]
        stats["gold_accuracy"] = right / judged if judged else None

    ratings = [r for unit in rated.values() for r in unit.values()]
    return {
        "labels": len(labels),
        "cant_tell": cant_tell,
        "items": len(sizes),
        "annotators": {name: annotators[name] for name in sorted(annotators)},
        **nominal_agreement(units),
        "ratings": {"good": sum(ratings), "bad": len(ratings) - sum(ratings),
                    **nominal_agreement(rated)},
        "position_bias": position_bias((label["ranks"], label["order"]) for label in labels),
    }
