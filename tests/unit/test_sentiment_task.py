"""The built-in controlled-sentiment task: templates, sampling, gold scorer (test_builtin_tasks.py:
what every built-in task promises, its command line included)."""

import json
import statistics
from pathlib import Path

import pytest

from tether.tasks import sentiment as task

REPO = Path(__file__).resolve().parents[2]


def beginning(prompt: str) -> str:
    head, text = prompt.split("\n\n", 1)
    assert head == task.INSTRUCTION
    return text


def test_format_prompt():
    assert task.format_prompt("The acting") == f"{task.INSTRUCTION}\n\nThe acting"


def test_at_least_2000_distinct_prompts():
    prompts = task.make_prompts(2000)
    assert len(set(prompts)) == 2000


def test_too_many_or_negative_raises():
    with pytest.raises(ValueError):
        task.make_prompts(10**6)
    with pytest.raises(ValueError):
        task.make_demonstrations(-1)


def test_leaning_shares():
    counts = {leaning: 0 for leaning in task.LEANINGS}
    for leaning, _ in task.sample_beginnings(1000):
        counts[leaning] += 1
    assert counts == {"negative": 600, "neutral": 250, "positive": 150}


def test_every_beginning_is_5_to_15_words():
    for leaning in task.LEANINGS:
        for text, _, _ in task.all_beginnings(leaning):
            assert 5 <= len(text.split()) <= 15, text


def test_completions_continue_the_half_sentence():
    for record in task.make_demonstrations(500, seed=2):
        completion = record["completion"]
        assert 10 <= len(completion.split()) <= 30, completion
        # Appended straight after the beginning, it must read as the rest of the sentence.
        assert completion.startswith(" ") and completion[1].islower(), completion
        assert completion.endswith("."), completion
        assert not beginning(record["prompt"]).endswith(" ")


def test_demonstrations_are_varied_and_mixed():
    completions = [r["completion"] for r in task.make_demonstrations(400)]
    assert len(set(completions)) / len(completions) > 0.95
    gold = task.gold_score(completions)
    assert -0.3 < statistics.mean(gold) < 0.3
    # Room for RL: a good share of demonstrations are clearly negative.
    assert sum(g < -0.05 for g in gold) / len(gold) > 0.35


def test_gold_score_range_and_sign():
    positive = ["I loved this film, the acting was wonderful.", "A brilliant, moving story."]
    negative = ["This was an awful, boring mess.", "I hated every terrible minute of it."]
    scores = task.gold_score(positive + negative + ["The film is two hours long."])
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert all(s > 0.3 for s in scores[:2])
    assert all(s < -0.3 for s in scores[2:4])
    assert abs(scores[4]) < 0.1
    assert task.gold_score([]) == []


def test_prompt_leaning_matches_gold_score():
    by_leaning = {leaning: [] for leaning in task.LEANINGS}
    for leaning, text in task.sample_beginnings(600, seed=1):
        by_leaning[leaning].append(text)
    mean = {k: statistics.mean(task.gold_score(v)) for k, v in by_leaning.items()}
    assert mean["negative"] < -0.2 < mean["neutral"] < 0.2 < mean["positive"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_committed_examples_are_reproducible_and_disjoint():
    train = read_jsonl(REPO / "examples/sft/reviews.jsonl")
    held_out = read_jsonl(REPO / "examples/sft/reviews_eval.jsonl")
    assert train == task.make_demonstrations(400, seed=0)
    assert held_out == task.make_demonstrations(60, seed=1)
    train_rows = {(r["prompt"], r["completion"]) for r in train}
    assert not any((r["prompt"], r["completion"]) in train_rows for r in held_out)
