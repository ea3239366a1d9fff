"""Held-out reward-model evaluation counts pairs and prompts, and clusters its interval by
prompt: several pair rows over one prompt are one prompt, not independent samples."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import ranking_rows, write_jsonl

from tether.cli import main
from tether.config import RMConfig
from tether.data.preferences import EncodedPreference, Preference
from tether.eval.health import at_chance
from tether.eval.rm import evaluate_preferences, pair_prompt_groups, prompt_ids
from tether.eval.stats import bootstrap_ci
from tether.models.reward import RewardModel

REPLIES = [" was lovely.", " was dull and slow, sadly.", " fine.", " was a wonderful surprise!"]


@pytest.fixture(scope="module")
def rm():
    return RewardModel.build("tiny", seed=0, max_length=128)


def _user(text):
    return [{"role": "user", "content": text}]


def _pref(rm, prompt, responses, ranks):
    source = Preference(prompt, list(responses), list(ranks), "test")
    return EncodedPreference([rm.encode(prompt, r) for r in responses], list(ranks), source)


def _correct_of(rm, prefs):
    """Per pair, 1 when the reward orders it as labelled (0.5 on a tie), by hand."""
    out = []
    for p in prefs:
        raw = rm.raw_scores_of(p.responses).numpy()
        for i, j in p.source.pairs():
            d = raw[i] - raw[j]
            out.append(float(d > 0) + 0.5 * float(d == 0))
    return np.array(out)


def test_prompt_ids_merge_rows_of_one_prompt(rm):
    prefs = [_pref(rm, _user("A"), REPLIES[:2], [0, 1]),
             _pref(rm, _user("B"), REPLIES[:2], [0, 1]),
             # the same prompt written as messages, and a 3-way ranking with a tie (2 pairs)
             _pref(rm, [{"role": "user", "content": "A"}], REPLIES[1:4], [0, 1, 1]),
             _pref(rm, _user("B"), REPLIES[2:4], [1, 0]),
             # same text, another role: another prompt
             _pref(rm, [{"role": "system", "content": "A"}], REPLIES[:2], [0, 1])]
    assert prompt_ids(prefs) == [0, 1, 0, 1, 2]
    assert pair_prompt_groups(prefs).tolist() == [0, 1, 0, 0, 1, 2]


def test_interval_is_clustered_by_prompt(rm):
    # 12 pair rows over 4 prompts, each prompt's rows interleaved with the others'.
    prefs = []
    for r in range(3):
        for q in range(4):
            a, b = (r + q) % 4, (r + q + 1) % 4
            prefs.append(_pref(rm, _user(f"Review {q}:"), [REPLIES[a], REPLIES[b]], [0, 1]))
    metrics, _ = evaluate_preferences(rm, prefs, batch_size=5, seed=3)
    correct = _correct_of(rm, prefs)
    groups = [q for _ in range(3) for q in range(4)]  # one pair per row, rows in that order
    assert metrics["eval/pairs"] == 12 and metrics["eval/prompts"] == 4
    assert metrics["eval/accuracy"] == pytest.approx(correct.mean())
    lo, hi = bootstrap_ci(correct, groups, seed=3)
    assert (metrics["eval/accuracy_ci_lo"], metrics["eval/accuracy_ci_hi"]) == \
        pytest.approx((lo, hi))


def test_clustered_interval_differs_from_per_row(rm):
    """Two prompts, each with 10 identical pair rows, one prompt's all right, the other's all
    wrong. Resampling prompts gives means 0, 0.5 or 1, so the interval is [0, 1]; resampling
    rows (the old grouping) would give about [0.3, 0.7]."""
    raw = rm.raw_scores_of([rm.encode(_user(q), r) for q in ("P", "Q") for r in REPLIES[:2]])
    high_p = [0, 1] if raw[0] > raw[1] else [1, 0]  # ranks putting P's higher score first
    high_q = [0, 1] if raw[2] > raw[3] else [1, 0]
    assert raw[0] != raw[1] and raw[2] != raw[3]
    prefs = [_pref(rm, _user("P"), REPLIES[:2], high_p) for _ in range(10)]
    prefs += [_pref(rm, _user("Q"), REPLIES[:2], high_q[::-1]) for _ in range(10)]
    metrics, _ = evaluate_preferences(rm, prefs, seed=0)
    correct = _correct_of(rm, prefs)
    assert correct.tolist() == [1.0] * 10 + [0.0] * 10 and metrics["eval/accuracy"] == 0.5
    clustered = bootstrap_ci(correct, [0] * 10 + [1] * 10, seed=0)
    per_row = bootstrap_ci(correct, list(range(20)), seed=0)
    assert (metrics["eval/accuracy_ci_lo"], metrics["eval/accuracy_ci_hi"]) == \
        pytest.approx(clustered)
    assert clustered == pytest.approx((0.0, 1.0))
    assert per_row[0] > 0.2 and per_row[1] < 0.8


def test_progress_bar_only_when_asked(rm, capsys):
    prefs = [_pref(rm, _user("A"), REPLIES[:2], [0, 1])]
    evaluate_preferences(rm, prefs)
    assert "held-out eval" not in capsys.readouterr().err
    evaluate_preferences(rm, prefs, progress=True)
    assert "rm: held-out eval" in capsys.readouterr().err


def test_cli_prints_pairs_over_distinct_prompts(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ranking_rows(16))
    rows = []
    for q in range(3):  # 3 prompts x 3 pair rows: 9 rows, 9 pairs
        for a, b in [(0, 1), (1, 2), (0, 2)]:
            rows.append({"prompt": f"Review {q}:", "chosen": REPLIES[a], "rejected": REPLIES[b]})
    # One more prompt, given as messages, a 3-way ranking: 3 pairs; then prompt 0 again, as
    # messages: one more pair, no more prompts.
    rows.append({"prompt": [{"role": "user", "content": "Review 9:"}],
                 "responses": REPLIES[:3], "ranks": [0, 1, 2]})
    rows.append({"prompt": [{"role": "user", "content": "Review 0:"}],
                 "chosen": REPLIES[3], "rejected": REPLIES[0]})
    held_out = write_jsonl(tmp_path / "eval.jsonl", rows)
    assert main(["rm", "model.name=tiny", f"data.train={train}", f"data.eval={held_out}",
                 f"run_dir={tmp_path / 'run'}", "train.max_steps=2", "train.eval_every=0"]) == 0
    captured = capsys.readouterr()
    assert "held-out evaluation: 13 pairs over 4 prompts\n" in captured.out
    assert "13 pairs)" in captured.out  # the table's accuracy line
    assert "rm: normalising" in captured.err and "rm: held-out eval" in captured.err
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    assert metrics["eval/pairs"] == 13 and metrics["eval/prompts"] == 4


def test_rm_help_says_batch_size_counts_prompts_not_sequences():
    train = next(f for f in dataclasses.fields(RMConfig) if f.name == "train")
    text = train.metadata["help"]
    assert "batch_size" in text and "count prompts, not sequences" in text
    assert "K-way ranking (K sequences) is one item" in text
    assert "pair row (2 sequences) is one item" in text


def test_empty_wins_counts_each_real_response_against_its_prompt_s_empty_one(rm):
    prefs = [_pref(rm, _user("A"), REPLIES[:2], [0, 1]),
             _pref(rm, _user("B"), REPLIES[1:4], [0, 1, 2])]
    metrics, _ = evaluate_preferences(rm, prefs)
    by_hand = [rm.raw_scores_of([rm.encode(p.source.prompt, "")]).item() > r
               for p in prefs for r in rm.raw_scores_of(p.responses).tolist()]
    assert metrics["eval/empty_wins"] == pytest.approx(np.mean(by_hand))


def test_at_chance_warns_only_when_the_interval_reaches_chance():
    chance = {"eval/accuracy": 0.52, "eval/accuracy_ci_lo": 0.44, "eval/accuracy_ci_hi": 0.6}
    assert "cannot be told from chance" in at_chance(chance)
    assert at_chance({**chance, "eval/accuracy_ci_lo": 0.51}) is None
