"""The command line every built-in task has: `python -m tether.tasks.NAME sft|prompts OUT`.

It writes the task's SFT demonstrations or RL prompts as JSONL (atomically: an interrupted run
never leaves a truncated file), the prompts optionally disjoint from a held-out file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from tether.files import atomic_write_jsonl


def task_main(argv: Sequence[str] | None, *, prog: str, description: str,
              make_prompts: Callable[[int, int], list[str]],
              make_demonstrations: Callable[[int, int], list[dict]],
              max_prompts: int | None = None,
              make_prompt_rows: Callable[[int, int], list[dict]] | None = None) -> None:
    """`max_prompts`: how many distinct prompts the task can make, where that is finite;
    `make_prompt_rows`: the task's prompts as rows with columns (written whole), if it has
    them."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("kind", choices=("sft", "prompts"))
    parser.add_argument("out", help="output .jsonl path")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", metavar="FILE.jsonl",
                        help="prompts: leave out every prompt in this file (e.g. held-out "
                             "evaluation prompts disjoint from the training prompts)")
    args = parser.parse_args(argv)
    if args.kind == "sft":
        rows = make_demonstrations(args.n, args.seed)
    else:
        excluded = set()
        if args.exclude:
            with open(args.exclude, encoding="utf-8") as f:
                excluded = {json.loads(line)["prompt"] for line in f if line.strip()}
        # Draw enough to replace every excluded prompt, then keep the first n others.
        wanted = args.n + len(excluded)
        if max_prompts is not None:
            wanted = min(wanted, max_prompts)
        drawn = make_prompt_rows(wanted, args.seed) if make_prompt_rows else \
            [{"prompt": p} for p in make_prompts(wanted, args.seed)]
        rows = [r for r in drawn if r["prompt"] not in excluded][: args.n]
        if len(rows) < args.n:
            parser.error(f"only {len(rows)} prompts left after --exclude; lower --n")
    atomic_write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
