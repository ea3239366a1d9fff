"""The hooks of the sft, rm and dpo loops (tether.trainers.common.Hooks): when each is called
and what it sees, and the progress bar off without patching anything."""

import pytest
from conftest import ranking_rows, write_jsonl

from tether.config import DPOConfig, RMConfig, SFTConfig, load_config
from tether.rundir import read_metrics
from tether.trainers import dpo, rm, sft
from tether.trainers.common import Hooks

STAGES = {"sft": (sft, SFTConfig), "rm": (rm, RMConfig), "dpo": (dpo, DPOConfig)}
STEPS, BATCH, MICRO = 3, 4, 2


def _cfg(stage, tmp_path, sft_rows):
    rows = sft_rows if stage == "sft" else ranking_rows(16, k=3)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    return load_config(STAGES[stage][1], None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0", f"train.max_steps={STEPS}", f"train.batch_size={BATCH}",
        f"train.micro_batch_size={MICRO}", "train.save_every=0"])


@pytest.mark.parametrize("stage", list(STAGES))
def test_hooks_see_the_model_every_step_and_micro_batch_in_order(stage, tmp_path, sft_rows,
                                                                 capsys):
    calls = []
    hooks = Hooks(started=lambda model: calls.append(("started", model)),
                  step_started=lambda step: calls.append(("step", step)),
                  micro_batch=lambda examples, packed: calls.append(("micro", examples, packed)),
                  stepped=lambda step, metrics: calls.append(("stepped", step, metrics)))
    cfg = _cfg(stage, tmp_path, sft_rows)
    STAGES[stage][0].train(cfg, hooks, progress_bar=False)

    assert [c[0] for c in calls] == ["started"] + ["step", "micro", "micro", "stepped"] * STEPS
    assert any(p.requires_grad for p in calls[0][1].parameters())
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    seen = set()
    for step in range(1, STEPS + 1):
        at = 1 + 4 * (step - 1)
        assert calls[at] == ("step", step)
        (_, first, packed), (_, second, _) = calls[at + 1], calls[at + 2]
        # the step's batch in two micro-batches, each example once
        assert len(first) == len(second) == MICRO and packed is False
        assert len({id(e) for e in first + second}) == BATCH
        seen |= {id(e) for e in first + second}
        assert calls[at + 3][:2] == ("stepped", step)
        assert calls[at + 3][2] == {k: v for k, v in logged[step - 1].items()
                                    if k not in ("step", "time")}
    assert len(seen) > BATCH  # the steps read different batches
    # None of tether's bars (the loop's; rm's normalising, dpo's reference log-probs); the
    # export's "Writing model shards" is transformers'.
    err = capsys.readouterr().err
    assert f"{stage}: " not in err and "reference log-probs: " not in err


def test_the_progress_bar_is_drawn_by_default(tmp_path, sft_rows, capsys):
    sft.train(_cfg("sft", tmp_path, sft_rows))
    assert "sft: 100%" in capsys.readouterr().err
