"""The SFT loop on the tiny model: through the CLI, resume after SIGKILL, accumulation, NaN."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tether.checkpoint import latest_checkpoint, load_checkpoint
from tether.cli import main
from tether.config import SFTConfig, load_config
from tether.errors import TrainingDiverged
from tether.rundir import read_metrics
from tether.trainers.sft import train


def _cfg(tmp_path, data, *overrides):
    return load_config(SFTConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0.125", "optim.lr=3e-3", "optim.warmup_steps=2", "train.max_steps=12",
        "train.eval_every=4", "train.save_every=4", *overrides])


def _final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_cli_run_trains_and_exports_a_plain_transformers_model(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    code = main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "optim.lr=3e-3", "train.max_steps=15", "train.eval_every=5",
                 "data.eval_fraction=0.125"])
    assert code == 0
    run = tmp_path / "run"
    assert "model:" in capsys.readouterr().out  # the resolved config is printed
    saved = load_config(SFTConfig, str(run / "config.yaml"))
    assert saved.train.max_steps == 15 and saved.model.name == "tiny"
    metrics = read_metrics(run / "metrics.jsonl")
    evals = [m["eval/loss"] for m in metrics if "eval/loss" in m]
    assert [m["step"] for m in metrics if "eval/loss" in m] == [0, 5, 10, 15]
    assert evals[-1] < evals[0] - 1.0, evals  # it learns
    assert all(k in metrics[-1] for k in ("loss/train", "optim/lr", "perf/tokens_per_s"))
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("The plot", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_accumulating_microbatches_gives_the_same_weights(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    weights = []
    for micro in (8, 2):
        out = tmp_path / f"m{micro}"
        out.mkdir()
        # Accumulation changes the order of the gradient's sums: ~1e-7 relative in fp32, more
        # on a GPU, whose matmuls tile by batch size. AdamW's first updates are lr * sign(g),
        # which turns that rounding into a whole lr step for any weight whose gradient is ~0;
        # a larger eps makes the update continuous in g, so what is compared is the gradient
        # accumulation, on any device.
        train(_cfg(out, data, "train.batch_size=8", f"train.micro_batch_size={micro}",
                   "train.max_steps=4", "optim.eps=1e-3"))
        weights.append(_final_weights(out / "run"))
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=2e-5), name


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows * 4)
    args = ["model.name=tiny", f"data.train={data}", "optim.lr=3e-3", "train.max_steps=60",
            "train.save_every=5", "train.eval_every=0", "train.batch_size=4",
            "train.micro_batch_size=2", "data.eval_fraction=0.05", "train.keep_checkpoints=50"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tether", "sft", *args]
    subprocess.run(cmd + [f"run_dir={whole}"], check=True, capture_output=True, env=env)

    proc = subprocess.Popen(cmd + [f"run_dir={killed}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while latest_checkpoint(killed) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(latest_checkpoint(killed))["step"]
    assert stopped_at < 60, "the run finished before it could be killed"
    assert not (killed / "final").exists()

    subprocess.run(cmd + [f"run_dir={killed}", "resume=true"], check=True, capture_output=True,
                   env=env)
    a, b = _final_weights(whole), _final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    steps = [m["step"] for m in read_metrics(killed / "metrics.jsonl") if "loss/train" in m]
    assert steps == list(range(1, 61))  # each step logged once, none repeated after resume


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    args = ["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
            "train.max_steps=2"]
    assert main(args) == 0
    assert main(args) == 2
    assert "resume=true" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    cfg = _cfg(tmp_path, data, "optim.lr=1e4", "optim.max_grad_norm=0", "train.save_every=1",
               "train.max_steps=50", "optim.warmup_steps=0", "optim.schedule=constant")
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(cfg)
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and not (tmp_path / "run" / "final").exists()
    state = load_checkpoint(last)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_exit_code_through_cli(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    code = main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "optim.lr=1e4", "optim.max_grad_norm=0", "train.max_steps=50"])
    assert code == 1
    assert "diverged" in capsys.readouterr().err


def test_lora_trains_adapters_only_and_exports_merged(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    final = train(_cfg(tmp_path, data, "model.lora.enabled=true", "model.lora.r=4",
                       "optim.lr=1e-2"))
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["model"] and all("lora_" in k for k in state["model"])
    merged = AutoModelForCausalLM.from_pretrained(final)  # plain transformers, no peft
    from tether.models.tiny import tiny_llama
    base = tiny_llama(seed=0)
    changed = [n for n, p in merged.named_parameters()
               if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)  # only adapted linears moved
    evals = [m["eval/loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if "eval/loss" in m]
    assert evals[-1] < evals[0]


def test_bf16_autocast_trains(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    train(_cfg(tmp_path, data, "train.bf16=true"))
    evals = [m["eval/loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if "eval/loss" in m]
    assert evals[-1] < evals[0] - 0.5
    # Master weights stay fp32.
    assert all(t.dtype == torch.float32 for t in _final_weights(tmp_path / "run").values())
