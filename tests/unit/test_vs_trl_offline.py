"""bench.vs_trl_offline on the tiny model: both sides of each row do the same work, and train.

For every row: the same trainable parameters, the same real tokens in the first step and, in
fp32, first-step losses equal to 1e-4 relative; then a few more steps move every trainable
tensor on both sides, while tether's trainer module stays as it was (its side watches the loop
through hooks, patching nothing). Under --precision bf16 both sides keep fp32 weights and still
agree on the first step."""

import argparse
import importlib

import pytest
import torch

pytest.importorskip("trl")

from bench import vs_trl_offline  # noqa: E402
from bench.vs_trl import _check_identical, add_arguments  # noqa: E402

ROWS = {row.name: row for row in vs_trl_offline.ROWS}
TRAINERS = {"sft": "sft", "rm": "rm", "rm-k4": "rm", "dpo": "dpo", "dpo-precomputed": "dpo"}


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # Batch 4 and 96 tokens keep each build and step short (dpo drops the longer pairs, so
    # tether precomputes fewer reference log-probs).
    return parser.parse_args(["--model", "tiny", "--steps", "1", "--warmup", "1",
                              "--batch-size", "4", "--max-length", "96", *extra])


def test_the_rows_are_the_offline_ones():
    assert list(ROWS) == ["sft", "rm", "rm-k4", "dpo", "dpo-precomputed"]
    assert all(row.sides == ("tether", "trl") and row.compare_loss for row in ROWS.values())


@pytest.mark.parametrize("name", list(ROWS))
def test_both_sides_do_identical_work_and_train(name):
    trainer = importlib.import_module(f"tether.trainers.{TRAINERS[name]}")
    names = dict(vars(trainer))
    row, args = ROWS[name], _args()
    built = {}
    try:
        for side in row.sides:
            built[side] = vs_trl_offline.BUILDERS[name](args, side)
        sides = {side: b.side for side, b in built.items()}
        first = {side: s.step() for side, s in sides.items()}
        check = _check_identical(row, sides, first)
        assert check["problems"] == []
        assert check["tether"]["trainable_params"] == check["trl"]["trainable_params"] > 0
        assert check["tether"]["tokens"] == check["trl"]["tokens"] > 0
        assert check["first_loss_relative_gap"] < 1e-4, check

        before = {side: b.weights() for side, b in built.items()}
        for _ in range(2):
            for s in sides.values():
                record = s.step()
                assert record["seconds"] > 0 and record["tokens"] > 0
                assert record["flops"] > 6 * record["tokens"]
        for side, b in built.items():
            after = b.weights()
            assert after.keys() == before[side].keys()
            unchanged = [n for n, w in after.items() if torch.equal(w, before[side][n])]
            assert not unchanged, f"{side}: not trained: {unchanged}"
        assert vars(trainer) == names
    finally:
        for b in built.values():
            b.side.close()


def test_bf16_autocast_on_both_sides_gives_the_same_first_step():
    """--precision bf16: autocast with fp32 weights on both sides (a live reference included),
    so the first losses agree within the harness's tolerance and differ from fp32's."""
    row, losses = ROWS["dpo"], {}
    for precision in ("fp32", "bf16"):
        args = _args("--precision", precision)
        built = {side: vs_trl_offline.BUILDERS[row.name](args, side) for side in row.sides}
        try:
            sides = {side: b.side for side, b in built.items()}
            first = {side: s.step() for side, s in sides.items()}
            assert _check_identical(row, sides, first)["problems"] == []
            assert all(s.dtype == precision for s in sides.values())
            # bf16 changes the numbers: a second step (after an update) shows it in the loss
            losses[precision] = [s.step()["loss"] for s in sides.values()]
            assert all(w.dtype == torch.float32 for b in built.values()
                       for w in b.weights().values())
        finally:
            for b in built.values():
                b.side.close()
    assert all(abs(a - b) > 1e-6 for a, b in zip(losses["fp32"], losses["bf16"], strict=True))
