"""Reward functions and scorers (tether.tasks.gold, tether.tasks.rewards): both calling
conventions, the prompt rows' columns reaching them through the trainer, weights and their
logging, and the mistakes a user can make; GRPO on the tiny model learning an easy arithmetic
variant from two of them."""

import json
import re

import numpy as np
import pytest
from conftest import write_jsonl

from tether.cli import main
from tether.config import PPOConfig, load_config
from tether.data.prompts import PromptRow
from tether.errors import ConfigError, UserError
from tether.models.reward import RewardModel
from tether.rundir import read_metrics
from tether.tasks import arithmetic
from tether.tasks.gold import call_scorer, column_lists, score_all, takes_keywords
from tether.tasks.rewards import labels, load_reward_functions, parse_functions, weighted_sum
from tether.trainers import ppo as ppo_trainer

# --- scorers the tests name by 'test_rewards:NAME' --------------------------------------------

CALLS: list[dict] = []


def record(prompts, completions, answer, **kwargs):
    """Keyword form: remembers what it was given; 1.0 where the completion is non-empty."""
    CALLS.append({"prompts": list(prompts), "completions": list(completions),
                  "answer": list(answer), "other": sorted(kwargs)})
    return [1.0 if c else 0.0 for c in completions]


def one(completions, **kwargs):
    return [1.0] * len(completions)


def length(texts):
    """The texts form, as gold scorers have always been."""
    return [float(len(t)) for t in texts]


def closeness(completions, answer):
    """Partial credit for a number near the answer (names its column, no **kwargs)."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        x = arithmetic.final_number(c)
        out.append(0.0 if x is None else max(0.0, 1 - abs(x - float(a)) / 5))
    return out


def only_long(completions, **kwargs):
    """None: 'does not apply' (TRL's convention), here to completions under 3 characters."""
    return [1.0 if len(c) >= 3 else None for c in completions]


# --- calling conventions ------------------------------------------------------------------------


def test_the_form_is_told_by_the_signature():
    assert not takes_keywords(length)
    assert takes_keywords(one) and takes_keywords(closeness) and takes_keywords(record)
    assert takes_keywords(lambda completions: completions)
    assert not takes_keywords(len)  # a builtin without a signature: the texts form


def test_the_texts_form_is_called_once_on_the_distinct_texts():
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return [float(len(t)) for t in texts]

    rows = [{"prompt": "p", "responses": ["a", "bb", "a"], "columns": {"answer": "1"}},
            {"prompt": "q", "responses": ["bb", "ccc"]}]
    got = score_all(rows, scorer)
    assert calls == [["a", "bb", "ccc"]]
    assert [g.tolist() for g in got] == [[1.0, 2.0, 1.0], [2.0, 3.0]]


def test_the_keyword_form_gets_each_response_with_its_prompt_and_columns():
    CALLS.clear()
    rows = [{"prompt": "p", "responses": ["a", "a"], "columns": {"answer": "1", "id": 7}},
            {"prompt": [{"role": "user", "content": "q"}], "responses": ["b"],
             "columns": {"answer": "2"}}]
    got = score_all(rows, record)
    assert [g.tolist() for g in got] == [[1.0, 1.0], [1.0]]
    (call,) = CALLS
    assert call["completions"] == ["a", "a", "b"]  # not deduplicated: prompts differ
    assert call["prompts"] == ["p", "p", [{"role": "user", "content": "q"}]]
    assert call["answer"] == ["1", "1", "2"]
    assert call["other"] == ["id"]  # **kwargs gets every column (None where a row lacks it)


def test_a_function_naming_a_column_gets_only_what_it_names():
    got = call_scorer(closeness, ["3", "x", "7"], ["p"] * 3,
                      {"answer": ["3", "3", "3"], "id": [1, 2, 3]})
    assert got.tolist() == [1.0, 0.0, pytest.approx(0.2)]
    with pytest.raises(UserError, match="needs 'answer', which is not a column of the prompt "
                                        "rows \\(their columns besides 'prompt': id\\)"):
        call_scorer(closeness, ["3"], ["p"], {"id": [1]})


def test_column_lists_line_up_with_the_rows():
    rows = [PromptRow("p", [], {"answer": "1"}), PromptRow("q", [], {"id": 2})]
    assert column_lists(rows) == {"answer": ["1", None], "id": [None, 2]}


@pytest.mark.parametrize("returned, message", [
    ([1.0], "returned 1 scores for 2 texts"),
    (3.0, "must return a list of numbers"),
    (["1", 2.0], "returned '1' for 'a'.*finite number"),
    ([1.0, float("inf")], "returned inf for 'b'.*not NaN or infinity"),
    ([True, 1.0], "returned True"),
    ([None, 1.0], "returned None for 'a': each score must be a finite number "),
])
def test_a_bad_return_value_is_a_clear_error_naming_the_scorer(returned, message):
    with pytest.raises(UserError, match=f"the gold scorer {message}"):
        call_scorer(lambda completions: returned, ["a", "b"])


def test_none_is_allowed_for_a_reward_function_and_adds_nothing():
    (f,) = load_reward_functions("test_rewards:only_long")
    scores = f(["ab", "abc"], ["p", "q"], {})
    assert np.isnan(scores[0]) and scores[1] == 1.0
    assert weighted_sum({f.label: scores}, [f]).tolist() == [0.0, 1.0]


# --- the functions setting ------------------------------------------------------------------


def test_functions_are_read_from_a_string_or_a_list():
    expected = [("arithmetic", 1.0), ("arithmetic:format_reward", 0.2), ("m.sub:f", -1.0)]
    assert parse_functions("arithmetic, 0.2*arithmetic:format_reward,-1*m.sub:f") == expected
    assert parse_functions(["arithmetic", "0.2 * arithmetic:format_reward", "-1*m.sub:f"]) \
        == expected
    assert parse_functions("") == []


@pytest.mark.parametrize("spec, message", [
    ("abc*arithmetic", "'abc' in 'abc\\*arithmetic' is not a number"),
    ("inf*arithmetic", "the weight of 'arithmetic' must be finite"),
    ("0.2*", "cannot read '0.2\\*'"),
    ("arithmetic, 2*arithmetic", "'arithmetic' is listed twice"),
    ("arith metic", "'arith metic' is not a name"),
])
def test_a_malformed_functions_setting_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=f"reward.functions: {message}"):
        parse_functions(spec)


def test_labels_are_short_unless_taken():
    assert labels(["arithmetic", "arithmetic:format_reward", "a.b:f", "c:f", "m:score"]) == \
        ["arithmetic", "format_reward", "a.b.f", "c.f", "m.score"]  # reward/score is taken


def test_functions_load_by_task_module_or_path():
    fs = load_reward_functions("arithmetic, 0.5*arithmetic:format_reward, test_rewards:length")
    assert [f.fn for f in fs] == [arithmetic.gold_score, arithmetic.format_reward, length]
    assert [(f.weight, f.label) for f in fs] == [(1.0, "arithmetic"), (0.5, "format_reward"),
                                                 (1.0, "length")]
    with pytest.raises(UserError, match="unknown reward function 'arithmtic'.*did you mean "
                                        "'arithmetic'"):
        load_reward_functions("arithmtic")


@pytest.mark.parametrize("override, message", [
    ("reward.functions=no_such_module_xyz:f", "reward function 'no_such_module_xyz:f': cannot "
                                              "import module 'no_such_module_xyz'"),
    ("reward.functions=x*arithmetic", "reward.functions: 'x' in 'x\\*arithmetic' is not a "
                                      "number"),
    ("reward.model_weight=abc", "reward.model_weight must be a number"),
])
def test_a_bad_functions_config_exits_2_with_one_line(tmp_path, capsys, override, message):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1 + 1 =", "answer": "2"}] * 4)
    code = main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", "rollout.batch_size=4",
                 "ppo.minibatch_size=4", "ppo.micro_batch_size=4", f"run_dir={tmp_path / 'run'}",
                 override])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err


# --- through the trainer ----------------------------------------------------------------------


def _cfg(tmp_path, *overrides, n=8):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "id": i} for i in range(n)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    return load_config(PPOConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"rollout.prompts={prompts}",
        "algo=grpo", "rollout.batch_size=4", "rollout.group_size=3", "rollout.max_new_tokens=4",
        "ppo.minibatch_size=12", "ppo.micro_batch_size=2", "reward.penalize_no_eos=false",
        "train.max_steps=2", "train.save_every=0", *overrides])


def test_each_sample_reaches_the_functions_with_its_prompt_and_answer(tmp_path):
    CALLS.clear()
    ppo_trainer.train(_cfg(tmp_path, "reward.gold=", "reward.functions=test_rewards:record, "
                                     "0.5*test_rewards:one"), progress_bar=False)
    assert len(CALLS) == 2  # one call per rollout, over all of its samples
    for call in CALLS:
        # 4 prompts x group_size 3, a prompt's samples consecutive, each with its own answer
        assert len(call["completions"]) == 12
        assert all(len(set(call["prompts"][i:i + 3])) == 1 for i in range(0, 12, 3))
        assert len(set(call["prompts"])) == 4
        for prompt, answer in zip(call["prompts"], call["answer"], strict=True):
            assert answer == str(int(prompt.split()[2]) + 1)
        assert call["other"] == ["id"]
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for m, call in zip(metrics, CALLS, strict=True):
        nonempty = np.mean([1.0 if c else 0.0 for c in call["completions"]])
        assert m["reward/record"] == pytest.approx(nonempty)
        assert m["reward/one"] == 1.0
        assert m["reward/score"] == pytest.approx(nonempty + 0.5)  # the weighted sum
        assert "reward/gold" not in m
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").open()]
    assert {"fn:record", "fn:one", "combined"} <= set(samples[0]["samples"][0])


def test_a_reward_model_mixes_with_functions_and_gold_is_only_logged(tmp_path):
    RewardModel.build("tiny").save(tmp_path / "rm")
    seen = {}
    original = ppo_trainer.objective_of

    def spy(scores, *args, **kwargs):
        seen.update({k: v.clone() for k, v in scores.items()})
        return original(scores, *args, **kwargs)

    ppo_trainer.objective_of = spy
    try:
        ppo_trainer.train(_cfg(tmp_path, f"reward.model={tmp_path / 'rm'}",
                               "reward.model_weight=0.5", "reward.gold=test_rewards:length",
                               "reward.functions=2*test_rewards:one", "train.max_steps=1"),
                          progress_bar=False)
    finally:
        ppo_trainer.objective_of = original
    assert set(seen) == {"proxy", "gold", "fn:one", "combined"}
    np.testing.assert_allclose(seen["combined"], 0.5 * seen["proxy"] + 2.0, rtol=1e-6)
    (m,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert m["reward/score"] == pytest.approx(seen["combined"].mean().item(), rel=1e-5)
    assert m["reward/gold"] == pytest.approx(seen["gold"].mean().item())  # logged, not optimised


def test_held_out_evaluation_gives_gold_the_prompt_rows_columns(tmp_path):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    held_out = write_jsonl(tmp_path / "heldout.jsonl", rows)
    CALLS.clear()
    ppo_trainer.train(_cfg(tmp_path, "reward.gold=test_rewards:record", "train.max_steps=1",
                           f"eval_prompts={held_out}", "train.eval_every=1"),
                      progress_bar=False)
    evaluations = [c for c in CALLS if len(c["completions"]) == 4]
    assert len(evaluations) == 2  # before and after
    assert evaluations[0]["answer"] == ["1", "2", "3", "4"]
    assert evaluations[0]["prompts"] == [r["prompt"] for r in rows]


def test_grpo_on_the_tiny_model_learns_an_easy_arithmetic_variant(tmp_path):
    # One-step problems on the numbers 2 (answers 0, 2, 4) and one-token answers: exact
    # correctness ('arithmetic') is too rare for a random policy to learn from alone, so
    # partial credit for a number near the answer (which reads the `answer` column) leads it.
    rows = arithmetic.make_prompt_rows(64, seed=0, two_step_share=0, max_number=2)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows[:48])
    held_out = write_jsonl(tmp_path / "heldout.jsonl", rows[48:])
    assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", "algo=grpo",
                 f"eval_prompts={held_out}", "reward.gold=arithmetic",
                 "reward.functions=arithmetic, 0.5*test_rewards:closeness",
                 "reward.penalize_no_eos=false", f"run_dir={tmp_path / 'run'}",
                 "rollout.max_new_tokens=1", "rollout.batch_size=8", "rollout.group_size=8",
                 "ppo.epochs=1", "ppo.minibatch_size=64", "ppo.micro_batch_size=32",
                 "ppo.kl_in=loss", "ppo.kl_coef=0", "optim.lr=5e-3", "train.max_steps=24",
                 "train.eval_every=24", "train.save_every=0"]) == 0
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    rollouts = [m for m in metrics if "reward/score" in m]

    def mean(key, part):
        return np.mean([m[key] for m in part])

    # The score optimised, and each function in it, rise; the accuracy on the rollouts too.
    for key in ("reward/score", "reward/closeness"):
        assert mean(key, rollouts[-5:]) > mean(key, rollouts[:5]) + 0.2, key
    assert mean("reward/arithmetic", rollouts[-8:]) > mean("reward/arithmetic", rollouts[:8])
    assert all(m["reward/gold"] == m["reward/arithmetic"] for m in rollouts)
    assert "eval/gold" in metrics[0] and "eval/gold" in metrics[-1]  # accuracy, held out
