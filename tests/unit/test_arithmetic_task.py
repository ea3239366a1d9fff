"""The arithmetic task (tether.tasks.arithmetic): its problems' answers are right, and its gold
scorer and format reward read hand-written responses as documented."""

import re

import pytest

from tether.tasks import arithmetic
from tether.tasks.gold import load_gold_scorer, score_all


@pytest.mark.parametrize("response, right", [
    ("The answer is 12.", True),
    ("5 + 7 = 12. The answer is 12.", True),
    ("5 + 7 = 12", True),  # the last number counts, wherever it stands
    ("12", True),
    ("The answer is 12.0", True),
    ("It is 12, I think", True),
    ("12 apples, or 13 with the one she ate", False),  # 13 is the last number
    ("The answer is twelve.", False),  # no number
    ("", False),
    ("The answer is -12.", False),
    ("The answer is 112.", False),
    ("The answer is 1,2.", False),  # "1,2" is not a thousands comma: the last number is 2
])
def test_gold_is_one_when_the_final_number_is_the_answer(response, right):
    assert arithmetic.gold_score(completions=[response], answer=["12"]) == [float(right)]


def test_numbers_with_thousands_commas_and_negative_answers():
    assert arithmetic.final_number("a total of 1,200 coins") == 1200
    assert arithmetic.final_number("3 - 5 = -2") == -2
    assert arithmetic.final_number("none") is None
    assert arithmetic.gold_score(completions=["1,200", "-2"], answer=["1200", "-2"]) == [1, 1]


@pytest.mark.parametrize("response, formatted", [
    ("3 + 4 = 7. The answer is 7.", True),
    ("The answer is 7", True),
    ("The answer is 7.  \n", True),
    ("The answer is seven.", False),
    ("The answer is 7. Bye.", False),  # it must end the response
    ("7", False),
])
def test_format_reward(response, formatted):
    assert arithmetic.format_reward(completions=[response]) == [float(formatted)]


def test_every_demonstration_is_right_and_worked_correctly():
    rows = arithmetic.make_prompt_rows(300, seed=4)
    demos = arithmetic.make_demonstrations(300, seed=4)
    assert [d["prompt"] for d in demos] == [r["prompt"] for r in rows]  # the same problems
    completions = [d["completion"] for d in demos]
    assert arithmetic.gold_score(completions, [r["answer"] for r in rows]) == [1.0] * 300
    assert arithmetic.format_reward(completions) == [1.0] * 300
    for c in completions:  # each step of the working is true arithmetic
        for left, right in re.findall(r"(\d+ [-+x/] \d+) = (\d+)", c):
            a, op, b = left.split()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b),
                    "/": int(a) / int(b)}[op] == int(right)
    assert any(", and " in c for c in completions)  # some two-step problems
    assert all(int(r["answer"]) >= 0 for r in rows)


def test_prompts_are_distinct_and_carry_their_answer():
    rows = arithmetic.make_prompt_rows(500, seed=0)
    assert len({r["prompt"] for r in rows}) == 500
    assert all(set(r) == {"prompt", "answer"} and r["answer"].isdigit() for r in rows)
    assert [r["prompt"] for r in rows] == arithmetic.make_prompts(500, seed=0)
    easy = arithmetic.make_prompt_rows(40, seed=0, two_step_share=0, max_number=2)
    assert {r["answer"] for r in easy} <= {"0", "2", "4"}


def test_the_gold_scorer_by_name_reads_the_candidates_columns():
    gold = load_gold_scorer("arithmetic")
    assert gold is arithmetic.gold_score
    assert load_gold_scorer("arithmetic:format_reward") is arithmetic.format_reward
    rows = [{"prompt": "p", "responses": ["The answer is 4.", "5"], "columns": {"answer": "4"}},
            {"prompt": "q", "responses": ["5"], "columns": {"answer": "5"}}]
    assert [s.tolist() for s in score_all(rows, gold)] == [[1.0, 0.0], [1.0]]
