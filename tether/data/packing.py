"""Micro-batches by a token budget (train.max_tokens_per_microbatch), for padding-free packing.

A micro-batch of `micro_batch_size` sequences is as long as its longest one, times its rows;
with a budget, a micro-batch is instead as many consecutive items (a sequence, or a prompt's
group of responses) as fit in `budget` tokens, which the model then reads as one row with no
padding (tether.models.shared_prompt.pack_groups with one_row=True). Loss normalisation uses
whole-batch counts, so how a batch is split changes speed and memory, never the result.

Under torchrun DDP all-reduces gradients on every backward (and FSDP2 gathers on every
forward), so every rank must run the same number of micro-batches: `balance` splits a rank's
largest micro-batches until it has as many as the rank with the most.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from tether.data.order import chunks
from tether.distributed import Dist
from tether.errors import ConfigError
from tether.models.shared_prompt import row_widths

T = TypeVar("T")

BUDGET_KEY = "train.max_tokens_per_microbatch"


def token_microbatches(items: Sequence[T], cost: Callable[[T], int], budget: int
                       ) -> list[list[T]]:
    """Consecutive runs of `items`, in order, each as long as its tokens (the sum of `cost`)
    stay within `budget`. An item over the budget on its own goes alone (check_budget is what
    refuses those where the budget is a promise)."""
    parts: list[list[T]] = []
    used = budget + 1  # no part is open yet
    for item in items:
        tokens = cost(item)
        if used + tokens > budget:
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += tokens
    return parts


def balance(parts: list[list[T]], cost: Callable[[T], int], count: int) -> list[list[T]]:
    """`parts` split until there are `count` of them: each time the one with the most tokens
    (of those with two items or more) in two halves by tokens; the order of items is kept.
    Needs at least `count` items in all."""
    parts = [list(p) for p in parts]
    while len(parts) < count:
        splittable = [i for i, p in enumerate(parts) if len(p) > 1]
        if not splittable:
            raise ValueError(f"{sum(map(len, parts))} items cannot make {count} micro-batches")
        i = max(splittable, key=lambda j: sum(map(cost, parts[j])))
        parts[i:i + 1] = _halves(parts[i], cost)
    return parts


def _halves(part: list[T], cost: Callable[[T], int]) -> list[list[T]]:
    """Two non-empty runs with tokens as even as a cut between items allows."""
    costs = [cost(item) for item in part]
    total, before = sum(costs), 0
    best, best_gap = 1, None
    for cut in range(1, len(part)):
        before += costs[cut - 1]
        gap = abs(total - 2 * before)
        if best_gap is None or gap < best_gap:
            best, best_gap = cut, gap
    return [part[:best], part[best:]]


def split_microbatches(items: Sequence[T], micro_batch_size: int, budget: int,
                       cost: Callable[[T], int]) -> list[list[T]]:
    """`micro_batch_size` items each, or (budget > 0) token_microbatches: one process's split,
    with no balancing across ranks."""
    if budget > 0:
        return token_microbatches(items, cost, budget)
    return chunks(list(items), micro_batch_size)


def check_budget(costs: Sequence[int], budget: int, unit: str = "sequence") -> None:
    """A ConfigError (one line) when some item alone exceeds the budget: packing never cuts
    a sequence, nor a group whose responses share a prompt. `unit` names the item."""
    longest = max(costs, default=0)
    if budget > 0 and longest > budget:
        raise ConfigError(f"{BUDGET_KEY}={budget} is less than the longest {unit} "
                          f"({longest} tokens); raise it to at least {longest}, or 0 for "
                          f"micro-batches of train.micro_batch_size")


def group_tokens(sequences: Sequence[Sequence[int]], share_prompt: bool) -> int:
    """The tokens a group of sequences (a prompt's responses) takes in a packed row: under one
    copy of their shared prompt, or each in full."""
    sizes = [len(sequences)] if share_prompt else [1] * len(sequences)
    return sum(row_widths(sequences, sizes))


class Microbatches:
    """This rank's micro-batches of one optimizer step, as lists of training-set indices:
    `micro_batch_size` of them each, or (budget > 0) as many as fit the token budget, with as
    many micro-batches on every rank. `costs[i]`: the tokens of training item i when packed.
    Refuses a budget that some item cannot fit in, before any step runs."""

    def __init__(self, micro_batch_size: int, budget: int, costs: Sequence[int], dist: Dist,
                 unit: str = "sequence"):
        check_budget(costs, budget, unit)
        self.micro, self.budget, self.costs, self.dist = micro_batch_size, budget, costs, dist

    def __str__(self) -> str:
        return (f"packed micro-batches of <= {self.budget} tokens" if self.packed
                else f"micro-batches of {self.micro}")

    @property
    def packed(self) -> bool:
        """Whether each micro-batch is one padding-free row."""
        return self.budget > 0

    def __call__(self, indices: list[int]) -> list[list[int]]:
        cost = self.costs.__getitem__
        parts = split_microbatches(self.dist.shard(indices), self.micro, self.budget, cost)
        if not self.packed:  # micro_batch_size already gives every rank as many
            return parts
        [most] = self.dist.max(len(parts))
        return balance(parts, cost, int(most))
