"""The built-in helpful-answers task: prompts, demonstrations, the rule-based gold scorer, the
registry, and the pipeline's data and SFT stages on it (test_builtin_tasks.py: what every
built-in task promises, its command line included)."""

import json
import random
import statistics
from pathlib import Path

import pytest

from tether import pipeline
from tether.cli import main as tether_main
from tether.config import PipelineConfig, load_config
from tether.presets import pipeline_sources
from tether.rundir import read_metrics
from tether.tasks import answers as task
from tether.tasks.gold import load_gold_scorer
from tether.tasks.registry import TASKS

REPO = Path(__file__).resolve().parents[2]

GOOD = ("A compass shows which way is north, so you can keep to your route. For example, "
        "hikers use one with a map to find their way.")
PLAIN = "A compass shows which way is north, so a hiker can keep to a route."
CURT = "It points north."
RUDE = "No idea why you care. It points north, figure it out."
ONE_WORD = "North."
RAMBLING = ("Well, a compass is a thing, and a compass is a thing that points, and it points "
            "north and it points north and it points north, and also it is round and also it "
            "is small and also it is useful and also it is old and also")


def score(text: str) -> float:
    return task.gold_score([text])[0]


# The gold scorer -------------------------------------------------------------------------------
def test_hand_written_answers_in_the_reasoned_order():
    # Polite and helpful > the bare fact > curt > rude > one word > nothing at all.
    scores = [score(t) for t in (GOOD, PLAIN, CURT, RUDE, ONE_WORD, "")]
    assert scores == sorted(scores, reverse=True), scores
    assert scores[0] > 0.7 and scores[-1] == -1.0
    assert score("   ") == -1.0


def test_empty_and_one_word_answers_are_lowest():
    ordinary = [GOOD, PLAIN, CURT, RUDE, "Boil it for nine minutes.",
                "First, lower the egg into boiling water for about nine minutes. Then cool it "
                "in cold water, and it will peel easily."]
    floor = max(score(t) for t in ("", "Yes", ONE_WORD, "Whatever"))
    assert floor < -0.9
    assert all(score(t) > floor for t in ordinary)


def test_neither_length_nor_one_token_maximises_it():
    # Rambling and repeating: long, run-on, no end; a good sentence said five times; one
    # helpful word spammed; a bulleted list of fragments. All score low.
    for text in (RAMBLING, " ".join([PLAIN] * 5), " ".join(["try"] * 20) + ".",
                 "Here are some uses:\n- finding north\n- hiking\n- sailing\n- camping\n- maps"):
        assert score(text) < -0.3, text
    assert score(RAMBLING) < score(CURT)
    assert max(score(w) for w in ("try", "please", "first", "Sure!", "OK.")) < -0.9


def test_each_rule_moves_the_score_the_right_way():
    assert score(PLAIN.upper()) < score(PLAIN) - 0.5  # shouting
    assert score(PLAIN[:-1] + "!!!!") < score(PLAIN)  # exclamation marks
    assert score(PLAIN[:-1] + " and") < score(PLAIN)  # stops mid-sentence
    assert score("Whatever. " + PLAIN) < score(PLAIN) - 0.4  # dismissive
    assert score("You can try this: " + PLAIN) > score(PLAIN)  # helpful register
    # A helpful phrase counts once: spamming it does not help.
    assert score("Try it. Try it. Try it. " + PLAIN) < score("Try it. " + PLAIN)


def test_scores_are_graded_not_flags():
    # A word more or fewer, or a word swapped for a shorter one, changes the score.
    base = ("Keep the same bedtime every night, and put screens away an hour before bed. "
            "Start small, and give it a week or two.")
    variants = [base, base.replace(" every night", " each night"),
                base.replace(" an hour", " one whole hour"), base.replace("Start small, a", "A"),
                base.replace("screens", "tablets and phones")]
    scores = [score(v) for v in variants]
    assert len(set(scores)) == len(scores), scores


def test_score_range():
    rng = random.Random(0)
    vocab = ["north", "TRY", "you can", "whatever", "!", ".", ",", "\n- ", "the", "egg",
             "boil", "no idea", "first", "and", "?", "it"]
    texts = ["".join(rng.choice(vocab) + rng.choice(" ,") for _ in range(rng.randint(0, 90)))
             for _ in range(300)]
    texts += [r["completion"] for r in task.make_demonstrations(200)]
    assert all(-1.0 <= s <= 1.0 for s in task.gold_score(texts))
    assert task.gold_score([]) == []


def test_registry_and_load_gold_scorer():
    assert TASKS["answers"] == "tether.tasks.answers"
    scorer = load_gold_scorer("answers")
    assert scorer is task.gold_score
    assert scorer([GOOD, RUDE]) == task.gold_score([GOOD, RUDE])


# Prompts and demonstrations --------------------------------------------------------------------
def test_enough_distinct_prompts_for_the_default_pipeline_and_more():
    prompts = task.make_prompts(384 + 64)
    assert len(set(prompts)) == 448
    assert len(set(task.make_prompts(900))) == 900
    with pytest.raises(ValueError):
        task.make_prompts(10**5)
    with pytest.raises(ValueError):
        task.make_demonstrations(-1)


def test_prompts_are_short_questions_of_every_kind():
    for _, prompt, _, _ in task.all_prompts():
        assert prompt[0].isupper() and prompt[-1] in ".?", prompt
        assert 3 <= len(prompt.split()) <= 16, prompt
    kinds = {prompt: kind for kind, prompt, _, _ in task.all_prompts()}
    drawn = [kinds[p] for p in task.make_prompts(448)]
    assert all(drawn.count(k) > 60 for k in task.KINDS)


def test_demonstration_facts_carry_no_scored_phrases():
    # The register comes from how an answer is framed, not from the facts it states.
    for kind in task.KINDS:
        for _, fact in task.TOPICS[kind]:
            padded = f" {' '.join(task._WORD.findall(fact.lower()))} "
            assert not [p for p in task.HELPFUL + task.RUDE_PHRASES if f" {p} " in padded], fact


def test_demonstrations_vary_in_gold():
    demos = task.make_demonstrations(440, seed=1)
    assert len({r["prompt"] for r in demos}) == 440
    completions = [r["completion"] for r in demos]
    assert len(set(completions)) / len(completions) > 0.9
    gold = task.gold_score(completions)
    # Spread enough that SFT samples differ in gold, with room above for RL.
    assert statistics.pstdev(gold) > 0.4
    assert -0.2 < statistics.mean(gold) < 0.5
    assert 0.2 < sum(g > 0.6 for g in gold) / len(gold) < 0.6
    assert sum(g < -0.3 for g in gold) / len(gold) > 0.2


# Files -----------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# The pipeline on this task ---------------------------------------------------------------------
def test_print_config_names_the_task(capsys):
    assert tether_main(["run", "task.name=answers", "--print-config"]) == 0
    assert "name: answers" in capsys.readouterr().out


def test_pipeline_data_and_sft_stages_run_on_the_task(tmp_path):
    cfg = load_config(PipelineConfig, base=pipeline_sources(None, None)[0], overrides=[
        f"run_dir={tmp_path / 'run'}", "task.name=answers", "task.num_prompts=16",
        "task.num_heldout=8", "task.num_demonstrations=16", "sft.model.name=tiny",
        "sft.train.max_steps=2", "sft.train.eval_every=0", "sft.train.save_every=2",
        "eval.num_prompts=4"])
    run = pipeline.Run(cfg)
    assert run.gold == "tether.tasks.answers:gold_score"
    stages = {s.name: s for s in run.stages()}
    for name in ("data", "sft"):
        stages[name].execute(run, stages[name].configure(run))
    data = tmp_path / "run" / "data"
    train, heldout = read_jsonl(data / "prompts.jsonl"), read_jsonl(data / "heldout.jsonl")
    prompts = task.make_prompts(24, cfg.task.seed)
    assert [r["prompt"] for r in train] == prompts[:16]
    assert [r["prompt"] for r in heldout] == prompts[16:]
    demos = read_jsonl(data / "demonstrations.jsonl")
    assert len(demos) == 16 and len(read_jsonl(data / "demonstrations_eval.jsonl")) == 1
    assert demos == task.make_demonstrations(17, cfg.task.seed + 1)[:16]
    assert (tmp_path / "run" / "sft" / "final" / "config.json").exists()
    assert read_metrics(tmp_path / "run" / "sft" / "metrics.jsonl")
