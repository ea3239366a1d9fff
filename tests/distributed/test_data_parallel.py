"""Data parallelism is invisible in the numbers: 2 processes under torchrun (gloo, CPU), each
taking half of every batch, follow the same loss curve to the same final weights as 1 process
with the whole batch, with DDP and with FSDP2.

TETHER_TEST_DEVICE=cuda runs them on 2 GPUs over NCCL instead (bench/gpu_check.py does, on a
machine with two)."""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from safetensors.torch import load_file

from tether.rundir import read_metrics

pytestmark = pytest.mark.distributed
DEVICE = os.environ.get("TETHER_TEST_DEVICE", "cpu")


def run(n: int, command: str, run_dir, *args: str, cwd=None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n}"] if n > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "tether", command, f"run_dir={run_dir}", *args,
                             f"train.device={DEVICE}"],
                            capture_output=True, text=True, timeout=600, cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # A flake seen about 1 run in 30 under load: a process finished everything (final/ was
    # written) and then aborted in the interpreter's teardown ("terminate called without an
    # active exception"). tether/__main__.py now leaves torchrun processes without that
    # teardown; should it show up again, the outputs are complete, so the comparisons below
    # still hold, and the warning says it happened.
    teardown = "terminate called without an active exception" in result.stderr and \
        (Path(run_dir) / "final" / "config.json").exists()
    if teardown:
        warnings.warn(f"torchrun {command}: a process aborted after finishing (teardown)",
                      stacklevel=2)
    assert result.returncode == 0 or teardown, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_run(one, two, keys: tuple[str, ...], atol: float = 1e-5) -> None:
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    for a, b in zip(m1, m2, strict=True):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=atol, rel=1e-4), (key, a["step"])
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=atol, rtol=1e-4, msg=name)
    # and the runs learned something: equal results are not two untouched models
    train = [m["loss/train"] for m in m1 if "loss/train" in m]
    assert train[-1] < train[0]


SFT = ["model.name=tiny", "optim.lr=1e-3", "train.batch_size=8", "train.micro_batch_size=2",
       "train.max_steps=3", "train.eval_every=0", "train.save_every=0"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_sft_two_processes_match_one(tmp_path, sft_rows, strategy):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    args = [*SFT, f"data.train={data}", "data.eval_fraction=0.1"]
    run(1, "sft", tmp_path / "one", *args)
    out = run(2, "sft", tmp_path / "two", *args, f"train.strategy={strategy}")
    assert "2 processes" in out.stdout
    assert_same_run(tmp_path / "one", tmp_path / "two", ("loss/train", "optim/grad_norm",
                                                         "eval/loss"))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes is not installed")
def test_qlora_sft_two_processes_match_one(tmp_path, sft_rows):
    """The adapters over an NF4 base on each process (DDP syncs the adapters' gradients). The
    NF4 layers compute in bf16, where half a batch rounds differently from the whole: equal
    to bf16's rounding, not fp32's."""
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    args = [*SFT, f"data.train={data}", "data.eval_fraction=0.1", "optim.lr=1e-2",
            "model.lora.enabled=true", "model.lora.qlora=true", "model.lora.r=4"]
    run(1, "sft", tmp_path / "one", *args)
    run(2, "sft", tmp_path / "two", *args, "train.strategy=ddp")
    assert_same_run(tmp_path / "one", tmp_path / "two", ("loss/train", "eval/loss"), atol=3e-3)


@pytest.mark.skipif(DEVICE == "cuda", reason="both agents' one process is LOCAL_RANK 0 and "
                    "would take the same GPU")
def test_two_nodes_rendezvous_like_two_machines(tmp_path, sft_rows):
    """README's multi-machine command: 2 torchrun agents of 1 process each, meeting through a
    c10d rendezvous (here both on 127.0.0.1), train what 1 process does."""
    from tether.labeling.client import free_port

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    args = [*SFT, f"data.train={data}", "data.eval_fraction=0.1"]
    run(1, "sft", tmp_path / "one", *args)
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
         "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=tether-test",
         "-m", "tether", "sft", f"run_dir={tmp_path / 'two'}", *args, "train.device=cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    for agent, output in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, output[-3000:]
    assert any("2 processes, ddp" in output for output in outputs)
    assert_same_run(tmp_path / "one", tmp_path / "two", ("loss/train", "optim/grad_norm",
                                                         "eval/loss"))


PREFERENCES = ["model.name=tiny", "optim.lr=1e-3", "train.batch_size=8",
               "train.micro_batch_size=2", "train.max_steps=3", "train.eval_every=0",
               "train.save_every=0", "data.eval_fraction=0.2"]
KEYS = {"rm": ("loss/train", "optim/grad_norm", "reward/accuracy", "reward/mean",
               "reward/std", "eval/accuracy"),
        "dpo": ("loss/train", "optim/grad_norm", "reward/accuracy", "reward/margin",
                "eval/loss")}


@pytest.mark.parametrize("command", ["rm", "dpo"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_preference_trainers_two_processes_match_one(tmp_path, command, strategy):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(48))
    run(1, command, tmp_path / "one", *PREFERENCES, f"data.train={data}")
    run(2, command, tmp_path / "two", *PREFERENCES, f"data.train={data}",
        f"train.strategy={strategy}")
    assert_same_run(tmp_path / "one", tmp_path / "two", KEYS[command])


SCORER = ("def vowels(texts):\n"
          "    return [sum(c in 'aeiou' for c in t) / (1 + len(t)) for t in texts]\n")


@pytest.mark.parametrize("algo, strategy, extra", [
    ("ppo", "ddp", ()), ("grpo", "ddp", ()),
    # the per-sequence mean counts every rank's sequences; GSPO's ratio, clip-higher
    ("grpo", "ddp", ("ppo.loss_type=grpo", "ppo.importance_sampling_level=sequence",
                     "ppo.clip_range_high=0.28")),
    # fsdp2 generates from sharded weights, and evaluates on every rank
    ("ppo", "fsdp2", ("eval_prompts=prompts.jsonl", "eval_num_prompts=4")),
    # the reference is the policy with its adapter off: a pass that bypasses the root
    ("grpo", "fsdp2", ("model.lora.enabled=true", "model.lora.r=4"))])
def test_ppo_two_processes_match_one(tmp_path, algo, strategy, extra):
    """Both processes sample the same rollout (same seed) and split every minibatch: the
    losses, statistics and updated weights are the single process's."""
    (tmp_path / "scorer.py").write_text(SCORER)
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Tell me about item {i}."} for i in range(16)])
    args = ["model.name=tiny", f"rollout.prompts={prompts}", "reward.gold=scorer:vowels",
            f"algo={algo}", "rollout.batch_size=4", "rollout.group_size=2",
            "rollout.max_new_tokens=6", "ppo.minibatch_size=4", "ppo.micro_batch_size=1",
            "ppo.epochs=2", "optim.lr=1e-3", "train.max_steps=2", "train.save_every=0",
            f"train.strategy={strategy}", *extra]
    if strategy == "fsdp2":  # auto is hf on shards: the one process samples as the two do
        args.append("rollout.backend=hf")
    run(1, "ppo", tmp_path / "one", *args, cwd=tmp_path)
    run(2, "ppo", tmp_path / "two", *args, cwd=tmp_path)
    keys = ("loss/policy", "ppo/approx_kl", "ppo/clipfrac", "optim/grad_norm", "reward/gold",
            "kl/seq", "ppo/advantage_std", "eval/gold") + \
        (("loss/value",) if algo == "ppo" else ())
    m1 = read_metrics(tmp_path / "one" / "metrics.jsonl")
    m2 = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    assert [m["step"] for m in m1 if "loss/policy" in m] == [1, 2]
    evaluated = [m["step"] for m in m1 if "eval/gold" in m]
    assert evaluated == ([0, 2] if any(e.startswith("eval_prompts") for e in extra) else [])
    for a, b in zip(m1, m2, strict=True):
        for key in keys:
            if key in a or key in b:
                assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-4), (key, a["step"])
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("first, then", [((2, "fsdp2"), (1, "ddp")), ((1, "ddp"), (2, "fsdp2"))])
def test_a_checkpoint_resumes_on_another_world_size_and_strategy(tmp_path, sft_rows, first,
                                                                 then):
    """Two steps on one setup, a checkpoint, two more on another: the weights of four
    uninterrupted steps on one process (a constant lr keeps the schedule out of it)."""
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    args = [*SFT, f"data.train={data}", "data.eval_fraction=0", "optim.schedule=constant",
            "optim.warmup_steps=0"]
    run(1, "sft", tmp_path / "whole", *args, "train.max_steps=4")
    (n1, s1), (n2, s2) = first, then
    run(n1, "sft", tmp_path / "split", *args, "train.max_steps=2", f"train.strategy={s1}")
    out = run(n2, "sft", tmp_path / "split", *args, "train.max_steps=4", "resume=true",
              f"train.strategy={s2}")
    assert "resumed from" in out.stdout and "step-00000002" in out.stdout
    w1, w2 = weights(tmp_path / "whole"), weights(tmp_path / "split")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4, msg=name)
