"""bench gpu-train's harness on the CPU (the figures themselves come from a GPU): the rows run
the real commands with the settings they name, and MFU counts the right FLOPs."""

import argparse

import pytest

from bench import gpu_train


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu_train.add_arguments(parser)
    return parser.parse_args(["--device", "cpu", "--steps", "2", "--max-length", "48",
                              "--tokens", "256", *extra])


def test_a_row_runs_the_real_command_and_reads_its_figures(tmp_path):
    data = gpu_train.write_data(tmp_path, rows=64)
    row = gpu_train.run_row("sft", "tiny", "fast-sdpa", _args(), data)  # flex: GPU only
    assert row["ok"], row
    assert row["tokens_per_s"] > 0 and row["loss_first"] > 0


def test_settings_name_what_they_turn_on(tmp_path):
    data = gpu_train.write_data(tmp_path, rows=4)
    args = _args()
    plain = gpu_train.command("sft", "tiny", "plain", args, data, tmp_path / "run")
    fast = gpu_train.command("rm", "tiny", "compile", args, data, tmp_path / "run")
    assert "train.logits_chunk=0" in plain and "train.bf16=false" in plain
    assert not any(o.startswith("train.max_tokens_per_microbatch") for o in plain)
    assert {"train.bf16_weights=true", "train.max_tokens_per_microbatch=256",
            "train.compile=true", "model.attention=flex_attention"} <= set(fast)
    # a reward model's loop has no train.logits_chunk (its head is a scalar)
    assert not any(o.startswith("train.logits_chunk") for o in fast)


def test_flops_per_token_follow_the_count_in_the_docstring():
    from tether.models.tiny import tiny_llama

    config = tiny_llama().config
    n = sum(p.numel() for p in tiny_llama().parameters())
    attention = 12 * config.num_hidden_layers * config.hidden_size * 100
    assert gpu_train.flops_per_token("tiny", "sft", 100) == pytest.approx(6 * n + attention)
    head = config.vocab_size * config.hidden_size
    assert gpu_train.flops_per_token("tiny", "rm", 100) == \
        pytest.approx(6 * (n - head) + attention)
