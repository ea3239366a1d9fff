"""The GPU settings through each real loop on the tiny model: bf16 weights with fp32 masters,
torch.compile, and everything at once (packing, chunked head) still learn, export fp32, and
compile changes nothing."""

import functools

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from safetensors.torch import load_file

from tether.config import DPOConfig, PPOConfig, RMConfig, SFTConfig, load_config
from tether.precision import maybe_compile
from tether.rundir import read_metrics
from tether.trainers import dpo, ppo, rm, sft

BF16 = ["train.bf16=true", "train.bf16_weights=true"]
PACKED, CHUNKED = "train.max_tokens_per_microbatch=512", "train.logits_chunk=64"
# The fast settings each loop has: ppo samples rollouts rather than packing batches of data,
# and a reward model's scalar head has no logits to chunk.
FAST = {"sft": [*BF16, PACKED, CHUNKED], "rm": [*BF16, PACKED], "dpo": [*BF16, PACKED, CHUNKED],
        "ppo": [*BF16, CHUNKED]}


def _pairs(rows):
    return [{"prompt": r["prompt"], "chosen": r["responses"][r["ranks"].index(min(r["ranks"]))],
             "rejected": r["responses"][r["ranks"].index(max(r["ranks"]))]}
            for r in rows if min(r["ranks"]) != max(r["ranks"])]


def _run(stage, tmp_path, sft_rows, *overrides):
    """Train `stage` on the tiny model; (metrics, final weights)."""
    run = tmp_path / "run"
    common = [f"run_dir={run}", "model.name=tiny", "train.save_every=0", *overrides]
    if stage == "sft":
        data = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
        cfg = load_config(SFTConfig, None, [*common, f"data.train={data}", "optim.lr=3e-3",
                                            "train.max_steps=8", "data.eval_fraction=0"])
        final = sft.train(cfg)
    elif stage == "rm":
        data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(48))
        cfg = load_config(RMConfig, None, [*common, f"data.train={data}", "optim.lr=1e-3",
                                           "train.max_steps=8", "data.eval_fraction=0"])
        final = rm.train(cfg)
    elif stage == "dpo":
        data = write_jsonl(tmp_path / "pairs.jsonl", _pairs(ranking_rows(48)))
        cfg = load_config(DPOConfig, None, [*common, f"data.train={data}", "optim.lr=1e-3",
                                            "train.max_steps=8", "data.eval_fraction=0",
                                            "optim.warmup_steps=0"])
        final = dpo.train(cfg)
    else:
        prompts = write_jsonl(tmp_path / "prompts.jsonl",
                              [{"prompt": f"Write about item {i}."} for i in range(16)])
        cfg = load_config(PPOConfig, None, [
            *common, f"rollout.prompts={prompts}",
            "reward.gold=test_ppo_trainer:share_of_e", "rollout.batch_size=8",
            "rollout.max_new_tokens=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
            "optim.lr=1e-3", "train.max_steps=3", "rollout.group_size=2"])
        final = ppo.train(cfg)
    name = "model.safetensors"
    return read_metrics(run / "metrics.jsonl"), load_file(str(final / name))


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo"])
def test_bf16_weights_train_and_export_fp32_masters(stage, tmp_path, sft_rows):
    metrics, weights = _run(stage, tmp_path, sft_rows, *FAST[stage])
    losses = [m["loss/train"] for m in metrics if "loss/train" in m]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    if stage in ("sft", "rm", "dpo"):
        assert losses[-1] < losses[0], losses
    # The export is the fp32 masters, not the bf16 weights the forward read.
    trained = [w for w in weights.values() if w.is_floating_point()]
    assert all(w.dtype == torch.float32 for w in trained)
    assert any((w - w.bfloat16().float()).abs().max() > 0 for w in trained)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_compile_changes_nothing_but_speed(stage, tmp_path, sft_rows, monkeypatch):
    # aot_eager traces and runs the same graphs as inductor without generating C++: the
    # trainer's wiring is what is tested here (test_compile.py has inductor itself).
    module = {"sft": sft, "dpo": dpo}[stage]
    monkeypatch.setattr(module, "maybe_compile", functools.partial(maybe_compile,
                                                                   backend="aot_eager"))
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    _, eager = _run(stage, tmp_path / "eager", sft_rows)
    _, compiled = _run(stage, tmp_path / "compiled", sft_rows, "train.compile=true")
    for name in eager:
        assert torch.allclose(eager[name], compiled[name], atol=1e-5), name
