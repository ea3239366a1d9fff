"""Labeling quality statistics: hand-computed values (arithmetic in comments) and invariances."""

from __future__ import annotations

import json
import random

import pytest

from tether.labeling.agreement import (
    Z95,
    agreement_stats,
    cohen_kappa,
    gold_accuracy,
    krippendorff_alpha,
    pair_judgements,
    position_bias,
    wilson_interval,
)

# --- pair_judgements ---------------------------------------------------------------------------


def test_pair_judgements():
    assert pair_judgements([0, 1]) == {(0, 1): 1}  # K=2 "A better"
    assert pair_judgements([1, 0]) == {(0, 1): -1}
    assert pair_judgements([0, 0]) == {(0, 1): 0}  # "both bad"
    # ranks [1, 0, 1]: response 1 best, 0 and 2 tied behind it.
    assert pair_judgements([1, 0, 1]) == {(0, 1): -1, (0, 2): 0, (1, 2): 1}


# --- cohen_kappa -------------------------------------------------------------------------------

# 10 units, 2x2 table (rows a, columns b):
#          b=+  b=-
#   a=+     4    1     a: + 5, - 5
#   a=-     2    3     b: + 6, - 4
# p_o = (4 + 3) / 10 = 0.7
# p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5
# kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
KAPPA_A = ["+"] * 4 + ["+"] * 1 + ["-"] * 2 + ["-"] * 3
KAPPA_B = ["+"] * 4 + ["-"] * 1 + ["+"] * 2 + ["-"] * 3


def test_cohen_kappa_hand_computed():
    assert cohen_kappa(KAPPA_A, KAPPA_B) == pytest.approx(0.4)


def test_cohen_kappa_three_categories():
    # a = [1, 1, 0, -1], b = [1, 0, 0, 1]: agree on units 0 and 2, p_o = 2/4.
    # a: 1 x2, 0 x1, -1 x1; b: 1 x2, 0 x2, -1 x0.
    # p_e = (2*2 + 1*2 + 1*0) / 16 = 6/16
    # kappa = (8/16 - 6/16) / (10/16) = 0.2
    assert cohen_kappa([1, 1, 0, -1], [1, 0, 0, 1]) == pytest.approx(0.2)


def test_cohen_kappa_symmetric_and_relabel_invariant():
    assert cohen_kappa(KAPPA_B, KAPPA_A) == cohen_kappa(KAPPA_A, KAPPA_B)
    relabel = {"+": "yes", "-": "no"}
    assert cohen_kappa([relabel[x] for x in KAPPA_A], [relabel[x] for x in KAPPA_B]) == (
        pytest.approx(0.4)
    )
    # Reordering the units (together) changes nothing.
    pairs = list(zip(KAPPA_A, KAPPA_B, strict=True))
    random.Random(0).shuffle(pairs)
    assert cohen_kappa([x for x, _ in pairs], [y for _, y in pairs]) == pytest.approx(0.4)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([], []) is None
    # Both always "+": p_e = 1, kappa = 0/0; documented convention is 1.0.
    assert cohen_kappa(["+"] * 3, ["+"] * 3) == 1.0
    # Perfect agreement with variation.
    assert cohen_kappa([1, -1, 0], [1, -1, 0]) == 1.0
    # Complete disagreement on two balanced categories: p_o = 0, p_e = 0.5, kappa = -1.
    assert cohen_kappa([1, -1], [-1, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa([1, 2], [1])


# --- krippendorff_alpha ------------------------------------------------------------------------

# Krippendorff, "Computing Krippendorff's Alpha-Reliability", nominal example: 4 coders x 12
# units, "." missing.
_CODERS = [
    "1 2 3 3 2 1 4 1 2 . . .",
    "1 2 3 3 2 2 4 1 2 5 . 3",
    ". 3 3 3 2 3 4 2 2 5 1 .",
    "1 2 3 3 2 4 4 1 2 5 1 .",
]
PAPER_UNITS = [
    [v for v in unit if v != "."] for unit in zip(*(c.split() for c in _CODERS), strict=True)
]


def test_krippendorff_alpha_published_example():
    # Unit 12 has one value and is dropped; the other 11 hold n = 40 values.
    # Per-unit disagreement (m^2 - sum m_c^2) / (m - 1), non-zero only for:
    #   unit 2 [2,2,3,2]: (16 - 9 - 1) / 3 = 2
    #   unit 6 [1,2,3,4]: (16 - 4) / 3 = 4
    #   unit 8 [1,1,2,1]: (16 - 9 - 1) / 3 = 2        sum_{c!=k} o_ck = 8
    # n_c: "1": 9, "2": 13, "3": 10, "4": 5, "5": 3 (sum 40)
    # sum_{c!=k} n_c n_k = 40^2 - (81 + 169 + 100 + 25 + 9) = 1600 - 384 = 1216
    # alpha = 1 - 39 * 8 / 1216 = 904 / 1216 = 0.74342...  (paper: 0.743)
    assert sum(len(u) for u in PAPER_UNITS if len(u) >= 2) == 40
    alpha = krippendorff_alpha(PAPER_UNITS)
    assert alpha == pytest.approx(904 / 1216)
    assert round(alpha, 3) == 0.743


def test_krippendorff_alpha_small_case():
    # [a, a, b]: m = 3, counts a 2, b 1; each ordered pair weighs 1/2:
    #   o_aa = 2*1/2 = 1, o_ab = 2*1/2 = 1, o_ba = 1.
    # [b, b]: o_bb = 2.
    # n_a = 1 + 1 = 2, n_b = 1 + 2 = 3, n = 5; sum_{c!=k} o_ck = 2
    # sum_{c!=k} n_c n_k = 2 * 2 * 3 = 12
    # alpha = 1 - 4 * 2 / 12 = 1/3
    assert krippendorff_alpha([["a", "a", "b"], ["b", "b"]]) == pytest.approx(1 / 3)
    # [a,a], [a,b], [b,b]: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    # alpha = 1 - 5 * 2 / (2 * 3 * 3) = 1 - 10/18 = 4/9
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)


def test_krippendorff_alpha_perfect_and_undefined():
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3, 3]]) == 1.0
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([[1], [2]]) is None  # nothing pairable
    assert krippendorff_alpha([[1, 1], [1, 1, 1]]) is None  # no variation: D_e = 0
    # Single-value units are ignored, whatever they hold.
    assert krippendorff_alpha([["a", "a", "b"], ["b", "b"], ["z"]]) == pytest.approx(1 / 3)


def test_krippendorff_alpha_invariances():
    expected = krippendorff_alpha(PAPER_UNITS)
    rng = random.Random(1)
    for _ in range(5):
        units = [rng.sample(u, len(u)) for u in PAPER_UNITS]  # order of values within units
        rng.shuffle(units)  # order of units
        assert krippendorff_alpha(units) == expected  # fsum makes it exactly order-free
    relabel = {"1": "x", "2": 7, "3": (0, 1), "4": None, "5": "1"}
    assert krippendorff_alpha([[relabel[v] for v in u] for u in PAPER_UNITS]) == (
        pytest.approx(expected)
    )


def test_krippendorff_alpha_two_coders_symmetric():
    # The kappa table as two-coder units. Alpha pools both coders' marginals (unlike kappa) and
    # corrects for sample size; it is symmetric in the coders.
    units_ab = [[x, y] for x, y in zip(KAPPA_A, KAPPA_B, strict=True)]
    units_ba = [[y, x] for x, y in zip(KAPPA_A, KAPPA_B, strict=True)]
    # n = 20; 3 units disagree, each adding 1 to o_{+-} and to o_{-+}: o_{+-} = o_{-+} = 3
    # n_+ = 11, n_- = 9; alpha = 1 - 19 * 6 / (2 * 11 * 9) = 1 - 114/198 = 84/198
    assert krippendorff_alpha(units_ab) == pytest.approx(84 / 198)
    assert krippendorff_alpha(units_ba) == krippendorff_alpha(units_ab)


# --- wilson_interval and position_bias ---------------------------------------------------------


def test_wilson_interval_by_hand():
    # 2 of 3, z = 1.959964: z^2 = 3.841459, z^2/n = 1.280486, denominator 2.280486
    # centre = (2/3 + 0.640243) / 2.280486 = 1.306910 / 2.280486 = 0.573084
    # half = z * sqrt((2/9)/3 + z^2/36) / 2.280486
    #      = 1.959964 * sqrt(0.074074 + 0.106707) / 2.280486 = 0.833343 / 2.280486 = 0.365422
    low, high = wilson_interval(2, 3)
    assert low == pytest.approx(0.207662, abs=1e-5)
    assert high == pytest.approx(0.938506, abs=1e-5)
    # 0 of 4: low = 0, high = (z^2/n) / (1 + z^2/n) = 0.960365 / 1.960365 = 0.489891
    low, high = wilson_interval(0, 4)
    assert low == 0.0
    assert high == pytest.approx(0.489891, abs=1e-5)
    assert wilson_interval(4, 4) == pytest.approx((1 - 0.489891, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) is None
    assert abs(Z95 - 1.959964) < 1e-6


def test_position_bias_k2():
    labels = [
        ([0, 1], [0, 1]),  # canonical 0 shown left, 0 wins: left
        ([0, 1], [1, 0]),  # 1 shown left, 0 wins: right
        ([1, 0], [1, 0]),  # 1 shown left, 1 wins: left
        ([0, 0], [0, 1]),  # both bad: no decisive pair
        (None, [1, 0]),  # can't tell: nothing
    ]
    result = position_bias(labels)
    assert (result["left_wins"], result["decisive"]) == (2, 3)
    assert result["rate"] == pytest.approx(2 / 3)
    assert (result["low"], result["high"]) == pytest.approx((0.207662, 0.938506), abs=1e-5)


def test_position_bias_k3_counts_every_pair():
    # ranks [0, 1, 2] (0 best), order [2, 0, 1]: positions c2 -> 0, c0 -> 1, c1 -> 2.
    #   (0,1): c0 further left, c0 wins: left
    #   (0,2): c2 further left, c0 wins: right
    #   (1,2): c2 further left, c1 wins: right
    # ranks [0, 0, 1], order [0, 1, 2]: (0,1) tied; (0,2) and (1,2) won by the left one.
    result = position_bias([([0, 1, 2], [2, 0, 1]), ([0, 0, 1], [0, 1, 2])])
    assert (result["left_wins"], result["decisive"]) == (1 + 2, 3 + 2)
    assert result["rate"] == pytest.approx(3 / 5)


def test_position_bias_empty_and_invalid():
    assert position_bias([(None, [0, 1]), ([1, 1], [1, 0])]) == {
        "left_wins": 0,
        "decisive": 0,
        "rate": None,
        "low": None,
        "high": None,
    }
    with pytest.raises(ValueError):
        position_bias([([0, 1], [0, 0])])  # not a permutation
    with pytest.raises(ValueError):
        position_bias([([0, 1, 2], [0, 1])])  # lengths differ


def test_position_bias_invariances():
    rng = random.Random(2)
    labels = []
    for _ in range(40):
        k = rng.choice([2, 3, 4])
        labels.append(([rng.randrange(k) for _ in range(k)], rng.sample(range(k), k)))
    base = position_bias(labels)
    # Renaming the canonical indices (permuting ranks and order consistently) changes nothing:
    # the same responses are shown at the same positions with the same ranks.
    renamed = []
    for ranks, order in labels:
        k = len(ranks)
        perm = rng.sample(range(k), k)  # canonical c becomes perm[c]
        new_ranks = [0] * k
        for c in range(k):
            new_ranks[perm[c]] = ranks[c]
        renamed.append((new_ranks, [perm[c] for c in order]))
    assert position_bias(renamed) == base
    # Mirroring the screen turns every left win into a right win.
    mirrored = position_bias([(ranks, order[::-1]) for ranks, order in labels])
    assert mirrored["decisive"] == base["decisive"]
    assert mirrored["left_wins"] == base["decisive"] - base["left_wins"]


# --- gold_accuracy -----------------------------------------------------------------------------


def test_gold_accuracy():
    assert gold_accuracy([0, 1, 2], [0, 1, 2]) == (3, 3)
    # label [0, 2, 1] vs gold [0, 1, 2]: (0,1) +/+ agree, (0,2) +/+ agree, (1,2) -/+ no.
    assert gold_accuracy([0, 2, 1], [0, 1, 2]) == (2, 3)
    # gold [0, 1, 1]: (1,2) is a gold tie and skipped; label [1, 0, 0]: (0,1) -/+ no,
    # (0,2) -/+ no.
    assert gold_accuracy([1, 0, 0], [0, 1, 1]) == (0, 2)
    # A tie in the label on a decisive gold pair counts, as not agreeing ("both bad").
    assert gold_accuracy([0, 0], [0, 1]) == (0, 1)
    # label [0, 0, 1] vs gold [0, 1, 2]: (0,1) tie no, (0,2) agree, (1,2) agree.
    assert gold_accuracy([0, 0, 1], [0, 1, 2]) == (2, 3)
    assert gold_accuracy(None, [0, 1, 2]) == (0, 0)  # can't tell
    assert gold_accuracy([0, 1], [0, 0]) == (0, 0)  # gold all tied: nothing to score
    with pytest.raises(ValueError):
        gold_accuracy([0, 1], [0, 1, 2])


# --- agreement_stats ---------------------------------------------------------------------------

GOLD = [0, 1, 2]


def _label(item, annotator, ranks, order, gold=None):
    label = {"item": item, "annotator": annotator, "ranks": ranks, "order": order}
    if gold is not None:
        label["gold"] = gold
    return label


DATASET = [
    _label("x", "alice", [0, 1], [0, 1]),
    _label("x", "bob", [0, 1], [1, 0]),
    _label("x", "carol", [1, 0], [0, 1]),
    _label("y", "alice", [0, 0], [0, 1]),  # both bad
    _label("y", "bob", None, [1, 0]),  # can't tell
    _label("y", "carol", [0, 0], [1, 0]),  # both bad
    _label("g", "alice", [0, 1, 2], [0, 1, 2], GOLD),
    _label("g", "bob", [0, 2, 1], [2, 1, 0], GOLD),
    _label("g", "carol", None, [0, 1, 2], GOLD),  # can't tell on a gold item
    _label("z", "alice", [1, 0], [0, 1]),
    _label("z", "bob", [1, 0], [0, 1]),
]

# Units and values (a = alice, b = bob, c = carol):
#   x01: a +1, b +1, c -1
#   y01: a  0,        c  0      (bob can't tell)
#   g01: a +1, b +1             (bob [0,2,1]: 0 < 2)
#   g02: a +1, b +1             (0 < 1)
#   g12: a +1, b -1             (2 > 1)
#   z01: a -1, b -1


def test_agreement_stats_hand_computed():
    stats = agreement_stats(DATASET)
    assert stats["labels"] == 11
    assert stats["cant_tell"] == 2
    assert stats["items"] == 4
    # Gold: alice (3, 3); bob [0,2,1] vs [0,1,2] -> (2, 3); carol can't tell -> (0, 0).
    assert stats["annotators"] == {
        "alice": {
            "labels": 4,
            "gold_items": 1,
            "gold_agreeing": 3,
            "gold_pairs": 3,
            "gold_ratings_agreeing": 0,
            "gold_ratings": 0,
            "gold_accuracy": 1.0,
        },
        "bob": {
            "labels": 4,
            "gold_items": 1,
            "gold_agreeing": 2,
            "gold_pairs": 3,
            "gold_ratings_agreeing": 0,
            "gold_ratings": 0,
            "gold_accuracy": pytest.approx(2 / 3),
        },
        "carol": {
            "labels": 3,
            "gold_items": 1,
            "gold_agreeing": 0,
            "gold_pairs": 0,
            "gold_ratings_agreeing": 0,
            "gold_ratings": 0,
            "gold_accuracy": None,
        },
    }
    # alice-bob share x01, g01, g02, g12, z01 (n = 5):
    #   a = + + + + -, b = + + + - -; agreeing 4.
    #   a: + 4, - 1; b: + 3, - 2; n^2 p_e = 4*3 + 1*2 = 14
    #   kappa = (5*4 - 14) / (25 - 14) = 6/11
    # alice-carol share x01, y01: a = +1, 0; c = -1, 0; agreeing 1.
    #   n^2 p_e = (+1: 1*0) + (0: 1*1) + (-1: 0*1) = 1; kappa = (2*1 - 1) / (4 - 1) = 1/3
    # bob-carol share x01 only: b = +1, c = -1; n^2 p_e = 0; kappa = (0 - 0) / (1 - 0) = 0
    assert stats["kappa"] == [
        {"annotators": ["alice", "bob"], "units": 5, "kappa": pytest.approx(6 / 11)},
        {"annotators": ["alice", "carol"], "units": 2, "kappa": pytest.approx(1 / 3)},
        {"annotators": ["bob", "carol"], "units": 1, "kappa": 0.0},
    ]
    # Alpha over the 6 units (13 values):
    #   x01 [+,+,-]: m = 3, disagreement (9 - 4 - 1) / 2 = 2
    #   g12 [+,-]: (4 - 1 - 1) / 1 = 2; the other units agree.   sum_{c!=k} o_ck = 4
    #   n_+ = 2 + 2 + 2 + 1 = 7, n_- = 1 + 1 + 2 = 4, n_0 = 2; n = 13
    #   sum_{c!=k} n_c n_k = 169 - (49 + 16 + 4) = 100
    #   alpha = 1 - 12 * 4 / 100 = 0.52
    assert stats["alpha"] == {"value": pytest.approx(0.52), "units": 6, "values": 13}
    # Position bias, decisive pairs (L = left wins, R = right wins):
    #   x alice L; x bob R (1 left, 0 wins); x carol R; y ties; g alice L L L;
    #   g bob order [2,1,0]: (0,1) R, (0,2) R, (1,2) c2 left wins L; z alice R; z bob R.
    #   left 1 + 3 + 1 = 5 of 1 + 1 + 1 + 3 + 3 + 1 + 1 = 11
    # Wilson 5/11: z^2/n = 0.349224, centre = (0.454545 + 0.174612) / 1.349224 = 0.466310
    #   half = z * sqrt(0.247934/11 + 3.841459/484) / 1.349224 = 0.342159 / 1.349224 = 0.253596
    bias = stats["position_bias"]
    assert (bias["left_wins"], bias["decisive"]) == (5, 11)
    assert bias["rate"] == pytest.approx(5 / 11)
    assert (bias["low"], bias["high"]) == pytest.approx((0.212714, 0.719906), abs=1e-5)
    json.dumps(stats)  # JSON-serialisable


def test_agreement_stats_cant_tell_counts_but_adds_no_units():
    base = agreement_stats(DATASET)
    extra = agreement_stats([*DATASET, _label("x", "dave", None, [1, 0])])
    assert extra["labels"] == base["labels"] + 1
    assert extra["cant_tell"] == base["cant_tell"] + 1
    assert extra["annotators"]["dave"] == {
        "labels": 1,
        "gold_items": 0,
        "gold_agreeing": 0,
        "gold_pairs": 0,
        "gold_ratings_agreeing": 0,
        "gold_ratings": 0,
        "gold_accuracy": None,
    }
    assert extra["kappa"] == base["kappa"]  # dave shares no unit with anyone
    assert extra["alpha"] == base["alpha"]
    assert extra["position_bias"] == base["position_bias"]


def test_agreement_stats_order_free():
    base = agreement_stats(DATASET)
    rng = random.Random(3)
    for _ in range(5):
        shuffled = rng.sample(DATASET, len(DATASET))
        assert agreement_stats(shuffled) == base


def test_agreement_stats_empty_and_invalid():
    empty = agreement_stats([])
    assert empty["labels"] == 0
    assert empty["annotators"] == {}
    assert empty["kappa"] == []
    assert empty["alpha"] == {"value": None, "units": 0, "values": 0}
    assert empty["position_bias"]["rate"] is None
    with pytest.raises(ValueError, match="more than once"):
        agreement_stats([*DATASET, _label("x", "alice", [1, 0], [0, 1])])
    with pytest.raises(ValueError, match="responses"):
        agreement_stats([*DATASET, _label("x", "dave", [0, 1, 2], [0, 1, 2])])


def _rating(item, annotator, rating, gold=None):
    label = {"item": item, "annotator": annotator, "ranks": None, "order": [0],
             "rating": rating}
    if gold is not None:
        label["gold"] = gold
    return label


# Thumbs: four responses rated good (G) / bad (B) by alice and bob, one "can't tell" (-):
#   r1: alice G, bob G;  r2: alice G, bob B;  r3: alice B, bob B;  r4: alice G, bob -
#   plus the gold response gg (known good): alice G (right), bob B (wrong).
RATINGS = [
    _rating("r1", "alice", True), _rating("r1", "bob", True),
    _rating("r2", "alice", True), _rating("r2", "bob", False),
    _rating("r3", "alice", False), _rating("r3", "bob", False),
    _rating("r4", "alice", True), _rating("r4", "bob", None),
    _rating("gg", "alice", True, gold=True), _rating("gg", "bob", False, gold=True),
]


def test_ratings_agreement_hand_computed():
    stats = agreement_stats(RATINGS)
    assert (stats["labels"], stats["cant_tell"], stats["items"]) == (10, 1, 5)
    assert stats["kappa"] == [] and stats["alpha"]["value"] is None  # no comparison
    r = stats["ratings"]
    assert (r["good"], r["bad"]) == (5, 4)
    # shared units r1, r2, r3, gg: alice G G B G, bob G B B B; agreeing r1, r3 = 2 of 4.
    #   alice: G 3, B 1; bob: G 1, B 3; n^2 p_e = 3*1 + 1*3 = 6
    #   kappa = (4*2 - 6) / (16 - 6) = 0.2
    assert r["kappa"] == [{"annotators": ["alice", "bob"], "units": 4,
                           "kappa": pytest.approx(0.2)}]
    # alpha: 4 pairable units, 8 values (r4 has one value). Disagreeing units r2 and gg, each
    #   (4 - 1 - 1) / 1 = 2: sum o_ck = 4. n_G = 4, n_B = 4, n = 8;
    #   sum_{c!=k} n_c n_k = 64 - 16 - 16 = 32; alpha = 1 - 7 * 4 / 32 = 0.125
    assert r["alpha"] == {"value": pytest.approx(0.125), "units": 4, "values": 8}
    alice, bob = stats["annotators"]["alice"], stats["annotators"]["bob"]
    assert (alice["gold_ratings_agreeing"], alice["gold_ratings"]) == (1, 1)
    assert (bob["gold_ratings_agreeing"], bob["gold_ratings"]) == (0, 1)
    assert (alice["gold_accuracy"], bob["gold_accuracy"]) == (1.0, 0.0)
    assert stats["position_bias"]["decisive"] == 0  # a lone response has no side


def test_gold_accuracy_pools_pairs_and_ratings_and_cant_tell_scores_nothing():
    # alice: gold ranking [0,1,2] answered [0,2,1]: 2 of 3 pairs; a gold bad response rated
    # good: 0 of 1; a gold good one "can't tell": not judged. (2 + 0) / (3 + 1) = 0.5
    labels = [_label("g", "alice", [0, 2, 1], [0, 1, 2], gold=[0, 1, 2]),
              _rating("b", "alice", True, gold=False), _rating("c", "alice", None, gold=True)]
    a = agreement_stats(labels)["annotators"]["alice"]
    assert (a["gold_agreeing"], a["gold_pairs"], a["gold_ratings_agreeing"],
            a["gold_ratings"], a["gold_items"]) == (2, 3, 0, 1, 3)
    assert a["gold_accuracy"] == 0.5


def test_ratings_and_pairs_are_separate_units():
    """The same annotators' ratings leave the comparisons' kappa and alpha as they were."""
    base = agreement_stats(DATASET)
    mixed = agreement_stats([*DATASET, *RATINGS])
    assert mixed["kappa"] == base["kappa"] and mixed["alpha"] == base["alpha"]
    assert mixed["ratings"] == agreement_stats(RATINGS)["ratings"]
    assert mixed["position_bias"] == base["position_bias"]
