"""`python -m bench vs-trl`'s online rows on the tiny model: both sides do the same work."""

import argparse

import pytest
import torch

from bench.vs_trl import add_arguments
from bench.vs_trl_online import ROWS, Arch, _iteration_flops
from tether.models.loading import load_causal_lm
from tether.trainers import ppo as ppo_trainer

pytest.importorskip("trl")

BATCH, GROUP, GEN_LEN = 4, 2, 4
ROW = {row.name: row for row in ROWS}


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "tiny", "--batch-size", str(BATCH), "--group-size",
                              str(GROUP), "--gen-len", str(GEN_LEN), *extra])


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _run(name: str, args: argparse.Namespace, steps: int = 2) -> dict:
    """Build each side of the row, step it; per side: the Side, its records, whether every
    step's weights moved."""
    out = {}
    names = dict(vars(ppo_trainer))
    for side_name in ROW[name].sides:
        side = ROW[name].build(args, side_name)
        try:
            before = _weights(side.policy)
            records = [side.step() for _ in range(steps)]
            after = _weights(side.policy)
            moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
            assert vars(ppo_trainer) == names  # watched through its hooks, nothing patched
        finally:
            side.close()
        assert side.policy is None  # closed: the side lets go of its model
        out[side_name] = (side, records, moved)
    return out


def test_the_rows_are_named_as_the_harness_expects():
    assert [row.name for row in ROWS] == ["grpo", "rloo", "ppo"]
    assert ROW["ppo"].sides == ("tether",)
    assert ROW["grpo"].sides == ROW["rloo"].sides == ("tether", "trl")


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_tether_and_trl_do_the_same_work_and_both_learn(name):
    sides = _run(name, _args())
    (tether, t_records, t_moved), (trl, r_records, r_moved) = sides["tether"], sides["trl"]
    assert tether.trainable_params == trl.trainable_params > 0
    # Every completion is exactly GEN_LEN tokens after a prompt of the same length, on both.
    tokens = {r["tokens"] for r in t_records + r_records}
    assert len(tokens) == 1
    prompt_len = tokens.pop() / BATCH - GEN_LEN
    assert prompt_len == int(prompt_len) > 0
    assert t_moved and r_moved
    for record in t_records + r_records:
        assert record["seconds"] > 0 and record["flops"] > 0
        assert set(record["stages"]) == {"generate", "score", "log-probs + values", "train"}
        assert all(s >= 0 for s in record["stages"].values())
    # tether reads each prompt once under its group's completions (train.share_prompt): fewer
    # model FLOPs for the same tokens.
    assert t_records[0]["flops"] < r_records[0]["flops"]


def test_flops_of_an_iteration_by_hand():
    arch = Arch(params=10, layers=1, d_model=1)
    # One prompt of 3 tokens, two responses of 2: prefilled twice and the passes over rows of
    # 5 and 5 tokens, or prefilled once and one packed row of 3 + 2 + 2 = 7.
    assert arch.forward(5) == 5 * (20 + 4 * 5)
    assert arch.decode(3, 2) == 20 + 4 * 4  # one token fed back: it attends to 3 + itself
    assert _iteration_flops(arch, [(3, 2), (3, 2)], 2) == \
        2 * arch.generate(3, 2) + 2 * (2 * arch.forward(5) + arch.train(5))
    assert _iteration_flops(arch, [(3, 2), (3, 2)], 2, group=2) == \
        arch.forward(3) + 2 * arch.decode(3, 2) + 2 * arch.forward(7) + arch.train(7)


def test_ppo_is_tether_only_and_split_by_stage():
    sides = _run("ppo", _args())
    assert list(sides) == ["tether"]
    side, records, moved = sides["tether"]
    assert moved
    # The value model (a copy of the policy's trunk) trains too: more than the policy alone.
    policy = load_causal_lm("tiny", seed=0)
    assert side.trainable_params > sum(p.numel() for p in policy.parameters())
    for record in records:
        assert set(record["stages"]) == {"generate", "score", "log-probs + values", "train"}
        assert all(s > 0 for s in record["stages"].values())
        assert sum(record["stages"].values()) <= record["seconds"]
        assert record["tokens"] % BATCH == 0 and record["flops"] > 0
