"""The simulated labeler: Bradley-Terry / Plackett-Luce noise, flips, pair counts, errors."""

import json
import math

import numpy as np
import pytest

from tether.config import SimulateLabelsConfig
from tether.data.candidates import parse_candidates, read_candidates
from tether.errors import DataError, UserError
from tether.labeling.commands import simulate_labels, stats_path_for
from tether.labeling.simulate import agreement_with_gold, expected_agreement, simulate
from tether.tasks import sentiment
from tether.tasks.gold import load_gold_scorer


def numbers(texts):
    """A fake gold scorer: a response's score is the number it starts with."""
    return [float(t.split()[0]) for t in texts]


def cfg(**kw):
    return SimulateLabelsConfig(candidates="unused.jsonl", **kw)


def candidates(rows):
    return parse_candidates((f"row {i}", row) for i, row in enumerate(rows))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def write_jsonl(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n"
                            for x in lines))
    return path


# --- the noise model ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pairs", "rankings"])
def test_k2_preference_frequency_is_bradley_terry(fmt):
    n, temperature = 4000, 0.5
    rows = [{"prompt": f"p{i}", "responses": ["0.3 a", "0.0 b"]} for i in range(n)]
    out, stats = simulate(candidates(rows), numbers, cfg(format=fmt, temperature=temperature))
    if fmt == "pairs":
        a_wins = np.mean([r["chosen"] == "0.3 a" for r in out])
    else:
        a_wins = np.mean([r["ranks"] == [0, 1] for r in out])
    p = sigmoid(0.3 / temperature)  # 0.646
    assert abs(a_wins - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert stats["agreement_with_gold"] == pytest.approx(a_wins)
    assert stats["expected_agreement"] == pytest.approx(p)


def test_ranking_pairs_are_bradley_terry_whatever_the_other_responses():
    # Plackett-Luce sampled by Gumbel-max: every implied pair, adjacent or not, has
    # P(a above b) = sigmoid((g_a - g_b) / T); a reversal (flip_rate) then flips it.
    n, f = 3000, 0.2
    rows = [{"prompt": "p", "responses": ["1.0 a", "0.5 b", "0.0 c", "-0.5 d"]}] * n
    out, _ = simulate(candidates(rows), numbers, cfg(temperature=1.0, flip_rate=f))
    ranks = np.array([r["ranks"] for r in out])
    for i, j in [(0, 3), (1, 2), (0, 1)]:
        d = 0.5 * (j - i)
        p = (1 - f) * sigmoid(d) + f * sigmoid(-d)
        assert abs(np.mean(ranks[:, i] < ranks[:, j]) - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("fmt", ["pairs", "rankings"])
def test_zero_temperature_gives_gold_order_and_full_flip_reverses_it(fmt):
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"p{i}", "responses": [f"{g:.4f} r{j}" for j, g in
                                             enumerate(rng.normal(size=5))]}
            for i in range(50)]
    out, stats = simulate(candidates(rows), numbers, cfg(format=fmt, temperature=1e-6,
                                                         pairs_per_prompt=0))
    assert stats["agreement_with_gold"] == 1.0
    assert stats["gold_ties"] == 0 and stats["pairs"] == 50 * 10
    if fmt == "rankings":
        for row in out:
            gold = row["gold_scores"]
            assert row["ranks"] == np.argsort(np.argsort(-np.array(gold))).tolist()
    _, stats = simulate(candidates(rows), numbers, cfg(format=fmt, temperature=1e-6, flip_rate=1.0,
                                           pairs_per_prompt=0))
    assert stats["agreement_with_gold"] == 0.0


def test_agreement_matches_expectation_and_excludes_ties():
    assert agreement_with_gold([1, 2, 3, 5], [0, 2, 4, 5]) == 0.5  # two ties left out
    assert agreement_with_gold([1, 1], [1, 1]) is None
    assert expected_agreement([0.0, 0.5, -0.5], 1.0, 0.0) == pytest.approx(sigmoid(0.5))
    assert expected_agreement([1.0], 1.0, 1.0) == pytest.approx(sigmoid(-1.0))
    # the realised agreement of many draws is close to the expected one
    rng = np.random.default_rng(1)
    rows = [{"prompt": f"p{i}", "responses": [f"{g:.3f}" for g in rng.uniform(-1, 1, 4)]}
            for i in range(500)]
    _, stats = simulate(candidates(rows), numbers, cfg(temperature=0.3, flip_rate=0.1))
    assert abs(stats["agreement_with_gold"] - stats["expected_agreement"]) < 0.03


# --- rows --------------------------------------------------------------------------------------


def test_pairs_per_prompt_counts_and_distinct_pairs():
    rows = [{"prompt": "p", "responses": ["0.1", "0.2", "0.3", "0.4"]},
            {"prompt": "q", "responses": ["0.1", "0.1", "0.5"]}]  # one text twice: merged
    out, stats = simulate(candidates(rows), numbers, cfg(format="pairs", pairs_per_prompt=0))
    assert [r["prompt"] for r in out].count("p") == 6
    assert [r["prompt"] for r in out].count("q") == 1
    assert len({frozenset((r["chosen"], r["rejected"])) for r in out if r["prompt"] == "p"}) == 6
    assert stats["identical_responses_merged"] == 1 and stats["rows"] == stats["pairs"] == 7

    out, stats = simulate(candidates(rows), numbers, cfg(format="pairs", pairs_per_prompt=2))
    assert [r["prompt"] for r in out] == ["p", "p", "q"]
    assert out[0]["chosen"] != out[0]["rejected"]
    assert {out[0]["chosen"], out[0]["rejected"]} != {out[1]["chosen"], out[1]["rejected"]}
    assert stats["prompts_with_fewer_pairs"] == 1

    out, stats = simulate(candidates(rows), numbers, cfg(format="pairs", pairs_per_prompt=5))
    assert len(out) == 5 + 1 and stats["prompts_with_fewer_pairs"] == 1
    for r in out:
        assert (r["gold_chosen"], r["gold_rejected"]) == tuple(numbers([r["chosen"],
                                                                        r["rejected"]]))


def test_rankings_are_permutations_with_gold_scores():
    rng = np.random.default_rng(2)
    rows = [{"prompt": f"p{i}", "responses": [f"{g:.2f}" for g in rng.normal(size=k)],
             "extra": 1} for i, k in enumerate(rng.integers(2, 7, 40))]
    out, stats = simulate(candidates(rows), numbers, cfg(temperature=0.4, flip_rate=0.3))
    for row, src in zip(out, rows, strict=True):
        assert set(row) == {"prompt", "responses", "ranks", "gold_scores"}
        assert sorted(row["ranks"]) == list(range(len(src["responses"])))
        assert all(type(r) is int for r in row["ranks"])
        assert row["gold_scores"] == numbers(src["responses"])
    assert stats["rows"] == stats["prompts"] == 40
    assert stats["pairs"] == sum(math.comb(len(r["responses"]), 2) for r in rows)


@pytest.mark.parametrize("fmt", ["pairs", "rankings"])
def test_deterministic_per_seed(fmt):
    rows = [{"prompt": f"p{i}", "responses": [f"{j / 10}" for j in range(4)]} for i in range(30)]
    a = simulate(candidates(rows), numbers, cfg(format=fmt, seed=1))
    assert a == simulate(candidates(rows), numbers, cfg(format=fmt, seed=1))
    assert a[0] != simulate(candidates(rows), numbers, cfg(format=fmt, seed=2))[0]


def test_scorer_must_return_one_finite_number_per_text():
    rows = [{"prompt": "p", "responses": ["a", "b"]}]
    with pytest.raises(UserError, match="1 scores for 2 texts"):
        simulate(candidates(rows), lambda texts: [0.0], cfg())
    with pytest.raises(UserError, match="NaN"):
        simulate(candidates(rows), lambda texts: [0.0, float("nan")], cfg())


def test_scorer_called_once_on_distinct_texts():
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return [0.0] * len(texts)

    simulate(candidates([{"prompt": "p", "responses": ["a", "b", "a"]},
                         {"prompt": "q", "responses": ["b", "c"]}]), scorer, cfg())
    assert calls == [["a", "b", "c"]]


@pytest.mark.parametrize("fmt", ["pairs", "rankings"])
def test_whether_each_response_ended_is_carried_to_the_labels(fmt):
    """`tether sample`'s finished flags follow their responses through merging and labeling,
    so DPO scores a response that never ended without an EOS it never wrote."""
    rows, _ = simulate(candidates([{"prompt": "p", "responses": ["1 a", "2 b", "1 a", "3 c"],
                                    "finished": [True, False, True, False]},
                                   {"prompt": "q", "responses": ["1 x", "2 y"]}]),
                       numbers, cfg(format=fmt, temperature=1e-6))
    ended = {"1 a": True, "2 b": False, "3 c": False}
    for row in rows:
        if row["prompt"] == "q":
            assert not {"finished", "chosen_finished"} & row.keys()
        elif fmt == "rankings":
            assert row["responses"] == ["1 a", "2 b", "3 c"]  # the first of each, in order
            assert row["finished"] == [ended[r] for r in row["responses"]]
        else:
            assert (row["chosen_finished"], row["rejected_finished"]) == (
                ended[row["chosen"]], ended[row["rejected"]])


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "responses": ["a", ', "invalid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"responses": ["a", "b"]}', "missing field 'prompt'"),
    ('{"prompt": "p"}', "missing 'responses'"),
    ('{"prompt": "p", "responses": []}', "'responses' is empty"),
    ('{"prompt": "p", "responses": ["a"]}', "a single response"),
    ('{"prompt": "p", "responses": "a b"}', "must be a list"),
    ('{"prompt": "p", "responses": ["a", 3]}', r"'responses\[1\]' must be a string"),
    ('{"prompt": "p", "responses": ["a", "b"], "finished": [true]}',
     "'finished' must be a list of 2 booleans"),
])
def test_bad_candidate_rows_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, "",
                                               line])
    with pytest.raises(DataError, match=message) as e:
        read_candidates(str(path))
    assert str(e.value).startswith(f"{path}:3: ")


def test_empty_candidates_file(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [""])
    with pytest.raises(DataError, match="no candidate rows"):
        read_candidates(str(path))


def test_sentiment_end_to_end(tmp_path, capsys):
    good = " was wonderful, and I loved every minute of it."
    bad = " was dull and awful, a terrible waste of time."
    meh = " was about what you would expect."
    rows = [{"prompt": sentiment.format_prompt(f"This film is long, and the {s}"),
             "responses": [meh, bad, good], "sample_seed": i}
            for i, s in enumerate(["plot", "acting", "score"])]
    candidates = write_jsonl(tmp_path / "candidates.jsonl", rows)
    out = simulate_labels(SimulateLabelsConfig(
        candidates=str(candidates), output=str(tmp_path / "l.jsonl"), temperature=1e-6))
    labels = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ranks"] for r in labels] == [[1, 2, 0]] * 3  # good, meh, bad
    assert labels[0]["gold_scores"] == sentiment.gold_score([meh, bad, good])
    stats = json.loads(stats_path_for(out).read_text())
    assert stats["agreement_with_gold"] == 1.0 and stats["pairs"] == 9
    assert "agreement with gold: 1.000" in capsys.readouterr().out

    out = simulate_labels(SimulateLabelsConfig(
        candidates=str(candidates), output=str(tmp_path / "p.jsonl"), format="pairs",
        pairs_per_prompt=0, temperature=1e-6, gold="tether.tasks.sentiment:gold_score"))
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 9 and all(p["gold_chosen"] > p["gold_rejected"] for p in pairs)
    assert set(pairs[0]) == {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"}


def test_a_keyword_gold_scorer_reads_the_candidates_prompt_and_columns(tmp_path):
    # as `tether sample` writes them: the prompt row's `answer` beside its own fields
    rows = [{"prompt": "What is 2 + 2?", "answer": "4", "responses": ["5", "It is 4."],
             "num_tokens": [1, 3], "finished": [True, True], "sampling": {}},
            {"prompt": "What is 3 + 3?", "answer": "6", "responses": ["6", "4"]}]
    assert candidates(rows).rows[0]["columns"] == {"answer": "4"}
    out = simulate_labels(SimulateLabelsConfig(
        candidates=str(write_jsonl(tmp_path / "c.jsonl", rows)), gold="arithmetic",
        output=str(tmp_path / "l.jsonl"), temperature=1e-6))
    labels = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["gold_scores"] for r in labels] == [[0.0, 1.0], [1.0, 0.0]]
    assert [r["ranks"] for r in labels] == [[1, 0], [0, 1]]


def test_output_must_be_jsonl(tmp_path):
    with pytest.raises(UserError, match=".jsonl"):
        simulate_labels(SimulateLabelsConfig(candidates="c.jsonl",
                                             output=str(tmp_path / "labels.json")))


# --- gold scorer registry ----------------------------------------------------------------------


def test_load_gold_scorer():
    assert load_gold_scorer("sentiment") is sentiment.gold_score
    assert load_gold_scorer("tether.tasks.sentiment:gold_score") is sentiment.gold_score
    assert load_gold_scorer("tether.labeling.simulate:sigmoid")(0.0) == 0.5


@pytest.mark.parametrize("name, message", [
    ("sentimnet", "unknown gold scorer 'sentimnet' .did you mean 'sentiment'.*sentiment"),
    ("length", "unknown gold scorer 'length': use a built-in task \\(answers, arithmetic, "
               "sentiment\\)"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("tether.tasks.sentiment:nope", "has no 'nope'"),
    ("tether.tasks.sentiment:INSTRUCTION", "not callable"),
    (":f", "expected 'module:function'"),
])
def test_load_gold_scorer_errors(name, message):
    with pytest.raises(UserError, match=message):
        load_gold_scorer(name)

