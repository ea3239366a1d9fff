"""Arithmetic word problems: a verifiable task, the kind GRPO is mostly used for today.

Each prompt is a short word problem written here from templates (no corpus text), one or two
steps of +, -, x or sharing out on small whole numbers, and each prompt row carries its exact
answer: {"prompt": "Mia has 7 shells. She finds 5 more. ...", "answer": "12"}. The reward is
checked, not learned: a response is right when its final number is the answer.

Parsing (`final_number`): the last number in the response counts, wherever it stands; a number
is digits with an optional leading minus, thousands commas ("1,200") and decimals ("3.0" is 3).
"The answer is 12." and "5 + 7 = 12" are both right; "12 apples, or 13 with the one she ate" is
wrong (13 is its last number), as is a response with no number at all.

Scorers (tether.tasks.gold, keyword form; `arithmetic:NAME` names one):
  gold_score      1.0 when the final number equals the row's `answer`, else 0.0 (accuracy)
  format_reward   1.0 when the response ends with "The answer is N." (N a number; the full
                  stop optional), else 0.0: the format the demonstrations teach

Demonstrations work the problem in one line and end with "The answer is N.", so an SFT policy
has the format and GRPO has right and wrong answers to tell apart.

    python -m tether.tasks.arithmetic sft OUT.jsonl --n 400 --seed 0
    python -m tether.tasks.arithmetic prompts OUT.jsonl --n 500 --seed 0
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.tasks.cli import task_main

INSTRUCTION = 'Solve it, then end with "The answer is" and the number.'

# fmt: off
NAMES = (("Tom", "he"), ("Sara", "she"), ("Ali", "he"), ("Mia", "she"), ("Ben", "he"),
         ("Lena", "she"), ("Omar", "he"), ("Zoe", "she"), ("Ravi", "he"), ("Emma", "she"),
         ("Kai", "he"), ("Nora", "she"))
FRIENDS = ("a friend", "a neighbour", "a classmate", "the teacher", "a cousin")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "coins",
         "stamps", "cards", "eggs", "balloons")
# fmt: on


@dataclass(frozen=True)
class Template:
    """A problem with slots a, b, c; `solve(a, b, c)` gives (x, answer), x the first step's
    result; `working` is the worked line of a demonstration ({a} {b} {c} {x} {ans})."""

    text: str
    solve: Any
    working: str
    valid: Any = lambda a, b, c: True  # the numbers make sense (nothing goes below zero)
    product: bool = False  # a and b are factors: drawn within 2..9


ONE_STEP = (
    Template("{name} has {a} {items}. {Pron} gets {b} more. How many {items} does {name} have "
             "now?", lambda a, b, c: (a + b, a + b), "{a} + {b} = {ans}."),
    Template("There are {a} {items} on the table and {b} {items} in the box. How many {items} "
             "are there in total?", lambda a, b, c: (a + b, a + b), "{a} + {b} = {ans}."),
    Template("{name} has {a} {items} and gives {b} of them to {friend}. How many {items} does "
             "{name} have left?", lambda a, b, c: (a - b, a - b), "{a} - {b} = {ans}.",
             lambda a, b, c: a >= b),
    Template("A shelf holds {a} {items}. {name} takes {b} away. How many {items} are still on "
             "the shelf?", lambda a, b, c: (a - b, a - b), "{a} - {b} = {ans}.",
             lambda a, b, c: a >= b),
    Template("{name} buys {a} bags with {b} {items} in each bag. How many {items} does {name} "
             "buy?", lambda a, b, c: (a * b, a * b), "{a} x {b} = {ans}.", product=True),
    Template("{name} shares {x} {items} equally among {b} friends. How many {items} does each "
             "friend get?", lambda a, b, c: (a * b, a), "{x} / {b} = {ans}.", product=True),
)
TWO_STEP = (
    Template("{name} has {a} {items}, gets {b} more, then gives {c} to {friend}. How many "
             "{items} does {name} have now?", lambda a, b, c: (a + b, a + b - c),
             "{a} + {b} = {x}, and {x} - {c} = {ans}.", lambda a, b, c: a + b >= c),
    Template("{name} buys {a} packs of {b} {items} and then finds {c} more. How many {items} "
             "does {name} have?", lambda a, b, c: (a * b, a * b + c),
             "{a} x {b} = {x}, and {x} + {c} = {ans}.", product=True),
    Template("{name} had {a} {items}. {Pron} lost {b} on Monday and {c} on Tuesday. How many "
             "{items} does {name} have left?", lambda a, b, c: (a - b, a - b - c),
             "{a} - {b} = {x}, and {x} - {c} = {ans}.", lambda a, b, c: a >= b + c),
    Template("There are {a} boxes with {b} {items} in each. {name} takes {c} of the {items}. "
             "How many {items} are left in the boxes?", lambda a, b, c: (a * b, a * b - c),
             "{a} x {b} = {x}, and {x} - {c} = {ans}.", lambda a, b, c: a * b >= c,
             product=True),
)

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_FORMAT = re.compile(r"The answer is (-?[\d,]+(?:\.\d+)?)\.?\s*$")


def final_number(text: str) -> float | None:
    """The last number in `text` (see the module's doc), or None when it has none."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _draw(rng: random.Random, two_step_share: float, max_number: int
          ) -> tuple[str, str, str]:
    """One (problem, answer, worked demonstration): the first two operands within
    2..max_number (2..min(max_number, 9) as factors of a product), the third 1..max_number."""
    name, pron = rng.choice(NAMES)
    friend, items = rng.choice(FRIENDS), rng.choice(ITEMS)
    top = max(2, max_number)
    while True:  # a template whose numbers make sense (every one has some, for any top)
        template = rng.choice(TWO_STEP if rng.random() < two_step_share else ONE_STEP)
        high = min(top, 9) if template.product else top
        a, b, c = rng.randint(2, high), rng.randint(2, high), rng.randint(1, top)
        if template.valid(a, b, c):
            break
    x, ans = template.solve(a, b, c)
    slots = {"name": name, "Pron": pron.capitalize(), "friend": friend, "items": items,
             "a": a, "b": b, "c": c, "x": x, "ans": ans}
    problem = template.text.format(**slots)
    return problem, str(ans), f"{template.working.format(**slots)} The answer is {ans}."


def format_prompt(problem: str) -> str:
    """The prompt a chat model sees for one problem."""
    return f"{problem} {INSTRUCTION}"


def _problems(n: int, seed: int, two_step_share: float, max_number: int
              ) -> list[tuple[str, str, str]]:
    """n draws with distinct problems."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(100 * n + 100):
        if len(out) == n:
            break
        draw = _draw(rng, two_step_share, max_number)
        if draw[0] not in seen:
            seen.add(draw[0])
            out.append(draw)
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct problems with max_number={max_number}")
    return out


def make_prompt_rows(n: int, seed: int = 0, *, two_step_share: float = 0.4,
                     max_number: int = 12) -> list[dict[str, str]]:
    """n distinct {"prompt", "answer"} rows; about two_step_share of them two-step problems.
    A small max_number (and two_step_share=0) gives an easy variant with small answers."""
    return [{"prompt": format_prompt(p), "answer": a}
            for p, a, _ in _problems(n, seed, two_step_share, max_number)]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """The prompt texts of make_prompt_rows (the answers are in the rows)."""
    return [row["prompt"] for row in make_prompt_rows(n, seed)]


def make_demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n SFT records {"prompt", "completion"}: the problem worked in one line, then "The
    answer is N." (always right: SFT teaches the format and a start, GRPO the rest)."""
    return [{"prompt": format_prompt(p), "completion": w}
            for p, _, w in _problems(n, seed, 0.4, 12)]


def _is_right(completion: str, answer: Any) -> bool:
    got = final_number(completion)
    try:
        return got is not None and got == float(str(answer).replace(",", ""))
    except ValueError:
        return False


def gold_score(completions: Sequence[str], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for a completion whose final number is its row's `answer`, else 0.0."""
    return [1.0 if _is_right(c, a) else 0.0 for c, a in zip(completions, answer, strict=True)]


def format_reward(completions: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 for a completion ending in "The answer is N." (N a number), else 0.0."""
    return [1.0 if _FORMAT.search(c.strip()) else 0.0 for c in completions]


def main(argv: Sequence[str] | None = None) -> None:
    task_main(argv, prog="python -m tether.tasks.arithmetic",
              description="Write arithmetic word-problem SFT demonstrations or RL prompts "
                          "(each with its answer) as JSONL.",
              make_prompts=make_prompts, make_demonstrations=make_demonstrations,
              make_prompt_rows=make_prompt_rows)


if __name__ == "__main__":
    main()
