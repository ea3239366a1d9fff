"""The simulated thumbs rater (label simulate format=thumbs): P(up), the median threshold,
agreement with gold, flips, and rows that `tether kto` reads."""

import json
import math

import numpy as np
import pytest
from conftest import write_jsonl

from tether.cli import main
from tether.config import DataConfig, SimulateLabelsConfig
from tether.data.candidates import parse_candidates
from tether.data.unpaired import load_unpaired_data
from tether.labeling.simulate import simulate
from tether.models.tiny import tiny_tokenizer


def numbers(texts):
    """A fake gold scorer: a response's score is the number it starts with."""
    return [float(t.split()[0]) for t in texts]


def thumbs(rows, **kw):
    cands = parse_candidates((f"row {i}", row) for i, row in enumerate(rows))
    return simulate(cands, numbers, SimulateLabelsConfig(candidates="unused.jsonl",
                                                         format="thumbs", **kw))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_p_up_is_the_sigmoid_of_gold_above_the_threshold():
    n, temperature = 3000, 0.4
    rows = [{"prompt": f"p{i}", "responses": ["0.5 a", "0.1 b"]} for i in range(n)]
    out, stats = thumbs(rows, threshold=0.2, temperature=temperature)
    assert len(out) == 2 * n
    for score, text in ((0.5, "0.5 a"), (0.1, "0.1 b")):
        share = np.mean([r["label"] for r in out if r["completion"] == text])
        p = sigmoid((score - 0.2) / temperature)
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (text, share, p)
    agree = np.mean([r["label"] == (r["gold_score"] > 0.2) for r in out])
    assert stats["agreement_with_gold"] == pytest.approx(agree)
    expected = (sigmoid(0.3 / temperature) + sigmoid(0.1 / temperature)) / 2
    assert stats["expected_agreement"] == pytest.approx(expected)
    assert stats["thumbs_up"] + stats["thumbs_down"] == 2 * n
    assert stats["threshold_from"] == "config"


def test_the_default_threshold_is_the_median_and_balances_the_classes():
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"p{i}", "responses": [f"{g:.4f} x{j}" for j, g in
                                              enumerate(rng.normal(0.6, 0.2, size=4))]}
            for i in range(500)]
    out, stats = thumbs(rows)
    golds = [r["gold_score"] for r in out]
    assert stats["threshold"] == pytest.approx(float(np.median(golds)))
    assert stats["threshold_from"] == "median gold score"
    assert abs(stats["thumbs_up"] / len(out) - 0.5) < 0.05
    # Rows carry the prompt, each response once, and a boolean label.
    assert {(r["prompt"], r["completion"]) for r in out} == \
        {(row["prompt"], t) for row in rows for t in row["responses"]}
    assert all(isinstance(r["label"], bool) for r in out)


def test_seeded_and_flips_invert_each_thumb():
    rows = [{"prompt": f"p{i}", "responses": [f"{i % 7 / 7:.3f} a", "0.5 b"]}
            for i in range(200)]
    kept, _ = thumbs(rows, seed=3)
    again, _ = thumbs(rows, seed=3)
    flipped, stats = thumbs(rows, seed=3, flip_rate=1.0)
    assert kept == again
    assert [r["label"] for r in flipped] == [not r["label"] for r in kept]
    assert stats["expected_agreement"] < 0.5


def test_responses_at_the_threshold_are_left_out_of_the_agreement():
    rows = [{"prompt": "p", "responses": ["0.5 a", "0.5 b"]}]
    out, stats = thumbs(rows, threshold=0.5)
    assert stats["gold_ties"] == 2 and stats["agreement_with_gold"] is None
    assert len(out) == 2


def test_whether_each_response_ended_is_carried_to_its_thumb():
    """`tether sample`'s finished flags follow their responses through merging into the
    thumbs, so KTO encodes a response that never ended without an EOS it never wrote."""
    out, _ = thumbs([{"prompt": "p", "responses": ["1 a", "2 b", "1 a", "3 c"],
                      "finished": [True, False, True, False]},
                     {"prompt": "q", "responses": ["1 x", "2 y"]}])
    assert [(r["completion"], r.get("finished")) for r in out] == [
        ("1 a", True), ("2 b", False), ("3 c", False), ("1 x", None), ("2 y", None)]
    assert not any("finished" in r for r in out if r["prompt"] == "q")


def test_command_writes_rows_kto_reads(tmp_path, capsys):
    rows = [{"prompt": f"Review {i}:", "responses": [f"{(i * 3 + j) % 10 / 10} words {j}"
                                                     for j in range(3)]} for i in range(20)]
    cands = write_jsonl(tmp_path / "candidates.jsonl", rows)
    out = tmp_path / "thumbs.jsonl"
    assert main(["label", "simulate", f"candidates={cands}", f"output={out}", "format=thumbs",
                 "gold=test_kto_simulate:numbers", "temperature=0.1"]) == 0
    printed = capsys.readouterr().out
    assert "60 thumbs rows" in printed and "agreement with gold" in printed
    stats = json.loads((tmp_path / "thumbs.stats.json").read_text())
    assert stats["format"] == "thumbs" and stats["rows"] == 60
    data = load_unpaired_data(DataConfig(train=str(out), eval_fraction=0), tiny_tokenizer(), 0)
    assert len(data.train) == 60
    assert sum(r.desirable for r in data.train) == stats["thumbs_up"]


def test_threshold_is_for_thumbs_only(tmp_path, capsys):
    cands = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["0.1 a", "0.2 b"]}])
    assert main(["label", "simulate", f"candidates={cands}", "threshold=0.3",
                 f"output={tmp_path / 'l.jsonl'}"]) == 2
    assert "threshold is for format=thumbs" in capsys.readouterr().err
    assert not (tmp_path / "l.jsonl").exists()
