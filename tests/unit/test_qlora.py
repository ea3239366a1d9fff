"""QLoRA (model.lora.qlora): an NF4 base under LoRA adapters, on the tiny model.

bitsandbytes runs NF4 on a CPU too, so these run the real library where it is installed
(the dev extra installs it); the settings' errors need no bitsandbytes at all."""

import importlib.util

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from transformers import AutoModelForCausalLM

from tether.checkpoint import latest_checkpoint, load_checkpoint
from tether.cli import main
from tether.config import LoraConfig, PPOConfig, RMConfig, load_config
from tether.errors import ConfigError
from tether.rundir import read_metrics

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes is not installed")
QLORA = ["model.lora.enabled=true", "model.lora.qlora=true", "model.lora.r=4"]


def _sft(tmp_path, sft_rows, *extra):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    return ["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
            "data.eval_fraction=0.125", "optim.lr=1e-2", "train.max_steps=8",
            "train.eval_every=4", "train.save_every=4", *extra]


@pytest.mark.parametrize("extra,message", [
    (["model.lora.qlora=true"], "set model.lora.enabled=true as well"),
    ([*QLORA, "train.strategy=fsdp2"], "does not run with train.strategy=fsdp2"),
])
def test_settings_that_cannot_run_are_one_line_and_exit_2(tmp_path, sft_rows, capsys, extra,
                                                          message):
    assert main(_sft(tmp_path, sft_rows, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_without_bitsandbytes_it_says_what_to_install(tmp_path, sft_rows, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert main(_sft(tmp_path, sft_rows, *QLORA)) == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err


def test_reward_models_and_a_separate_value_model_are_refused():
    with pytest.raises(ConfigError, match="for policies"):
        load_config(RMConfig, None, ["data.train=x.jsonl", *QLORA]).validate()
    ppo = ["rollout.prompts=p.jsonl", "reward.gold=sentiment", *QLORA]
    with pytest.raises(ConfigError, match="ppo.value_model=head"):
        load_config(PPOConfig, None, ppo).validate()
    load_config(PPOConfig, None, [*ppo, "ppo.value_model=head"]).validate()
    load_config(PPOConfig, None, [*ppo, "algo=grpo", "rollout.group_size=2"]).validate()


@needs_bnb
def test_the_merged_copy_computes_what_the_adapted_nf4_policy_computes():
    from tether.models.loading import load_causal_lm
    from tether.models.lora import apply_lora, merged_copy
    from tether.models.quantize import is_quantized

    policy = apply_lora(load_causal_lm("tiny", nf4_on=torch.device("cpu")),
                        LoraConfig(enabled=True, qlora=True, r=4))
    assert is_quantized(policy)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # a trained adapter, not peft's zero start
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 5, 9, 30, 44, 2, 77, 3]])
    policy.eval()
    with torch.no_grad():
        want = policy(input_ids=ids).logits
        copy, sources = merged_copy(policy, torch.float32)
        got = copy(input_ids=ids).logits
    assert not is_quantized(copy) and not hasattr(copy.config, "quantization_config")
    # the NF4 layers compute in bf16: equal up to its rounding, far from the base without
    # the adapter (which the copy would be if the delta were lost)
    assert (got - want).abs().max() < 0.02
    base = load_causal_lm("tiny")
    with torch.no_grad():
        assert (base(input_ids=ids).logits - want).abs().max() > 0.1


@needs_bnb
def test_an_evaluation_pass_leaves_the_adapters_gradients_as_they_were():
    """bitsandbytes repacks a weight for an inference kernel with no backward on its first
    eval-mode forward on a CPU with bf16 instructions; tether's NF4 models never take it."""
    from tether.models.loading import load_causal_lm
    from tether.models.lora import apply_lora

    policy = apply_lora(load_causal_lm("tiny", nf4_on=torch.device("cpu")),
                        LoraConfig(enabled=True, qlora=True, r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 5, 9, 30, 44, 2, 77, 3]])

    def grads():
        policy.train()
        policy.zero_grad()
        policy(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    before = grads()
    policy.eval()
    with torch.no_grad():
        policy(input_ids=ids)
    after = grads()
    first = [n for n in before if "layers.0." in n and "lora_A" in n]
    assert first and all(before[n].abs().sum() > 0 for n in first)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)


@needs_bnb
def test_sft_trains_the_adapters_over_nf4_and_exports_a_plain_merged_model(tmp_path, sft_rows,
                                                                          capsys):
    assert main(_sft(tmp_path, sft_rows, *QLORA)) == 0
    run = tmp_path / "run"
    evals = [m["eval/loss"] for m in read_metrics(run / "metrics.jsonl") if "eval/loss" in m]
    assert evals[-1] < evals[0] - 0.5, evals
    state = load_checkpoint(latest_checkpoint(run))
    assert state["model"] and all("lora_" in k for k in state["model"])  # adapters only
    final = AutoModelForCausalLM.from_pretrained(run / "final")  # plain transformers
    assert not hasattr(final.config, "quantization_config")
    assert all(p.dtype == torch.float32 for p in final.parameters())
    assert "4-bit NF4 (QLoRA)" in (run / "final" / "README.md").read_text()  # the model card
    # resumed from its checkpoint, it continues rather than starting again
    assert main(_sft(tmp_path, sft_rows, *QLORA, "train.max_steps=12", "resume=true")) == 0
    assert "resumed from" in capsys.readouterr().out


@needs_bnb
def test_dpo_over_nf4_starts_at_log_2_and_learns(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", ranking_rows(32, k=2))
    assert main(["dpo", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "data.eval_fraction=0", "optim.lr=2e-2", "optim.warmup_steps=0",
                 "train.eval_every=0", "train.batch_size=8", "train.max_steps=8",
                 *QLORA]) == 0
    losses = [m["loss/train"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
              if "loss/train" in m]
    # the reference is the NF4 base with the adapter off, so the first loss is exactly log 2
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert min(losses[-3:]) < losses[0]
    assert (tmp_path / "run" / "final" / "config.json").exists()


@needs_bnb
def test_grpo_over_nf4_samples_a_synced_plain_copy(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Write something about item {i}."} for i in range(8)])
    assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", "algo=grpo",
                 "reward.gold=test_ppo_trainer:share_of_e", "rollout.batch_size=4",
                 "rollout.group_size=4", "rollout.max_new_tokens=8", "rollout.backend=static",
                 "rollout.dtype=fp32", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
                 "optim.lr=3e-2", "train.max_steps=3", f"run_dir={tmp_path / 'run'}",
                 *QLORA]) == 0
    metrics = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
               if "mismatch/kl_k3" in m]
    # the copy is the dequantised base plus the adapter, synced after each update: what it
    # samples from differs from the trainer's bf16-compute forward by rounding only
    assert len(metrics) == 3 and all(m["mismatch/kl_k3"] < 1e-3 for m in metrics)
