"""Which examples make up optimizer step `step`: a pure function of (seed, step).

A new shuffle each epoch, seeded by (seed, epoch). Because nothing but the step number is
needed, a resumed run sees exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import random

import torch


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size  # the incomplete last batch is dropped


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    epoch, k = divmod(step, steps_per_epoch(num_examples, batch_size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    return order[k * batch_size:(k + 1) * batch_size].tolist()


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded random `fraction` held out (at least one item, if any),
    the rest kept in their original order."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_out = min(len(items) - 1, max(1, round(fraction * len(items))))
    held = set(order[:n_out])
    return ([x for i, x in enumerate(items) if i not in held],
            [items[i] for i in order[:n_out]])
