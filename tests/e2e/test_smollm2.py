"""The embedded SmolLM2-135M: conversion cache, tokenizer facts, log-prob parity, a short SFT.

These load the real model (the first load converts the GGUF once, ~20 s); the rest of the
suite uses the tiny model."""

import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM

from tether.config import SFTConfig, load_config
from tether.data.tokenize import encode_example, encode_prompt
from tether.losses.sft import masked_nll
from tether.models.loading import SMOLLM2, load_causal_lm, load_tokenizer, resolve
from tether.models.logprobs import forward_logits, token_logprobs
from tether.rundir import read_metrics
from tether.trainers.sft import train

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(SMOLLM2), load_causal_lm(SMOLLM2).eval()


def test_cached_conversion_is_a_plain_model(smol):
    tokenizer, model = smol
    path = resolve(SMOLLM2)
    assert (path / "model.safetensors").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_chat_mask_on_the_real_template(smol):
    tokenizer, _ = smol
    messages = [{"role": "user", "content": "Continue this movie review:\n\nThe plot"}]
    enc = encode_example(tokenizer, messages, " was thin, but the cast was warm.",
                         chat_template=True, max_length=256, truncation="prompt_left")
    n = len(encode_prompt(tokenizer, messages, chat_template=True))
    assert enc.loss_mask == [0] * n + [1] * (len(enc.input_ids) - n)
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": " was thin, but the cast was warm."}],
        tokenize=False)
    assert tokenizer.decode(enc.input_ids) + "\n" == full


def test_logprobs_match_a_plain_transformers_forward(smol):
    tokenizer, model = smol
    ids = tokenizer("The acting was lovely, but the ending fell flat.",
                    return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss
        mask = torch.ones_like(ids)
        mask[:, 0] = 0
        ours = masked_nll(token_logprobs(forward_logits(model, ids, torch.ones_like(ids)), ids),
                          mask)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-4)


def test_short_sft_run_lowers_eval_loss_and_exports(tmp_path):
    cfg = load_config(SFTConfig, str(REPO / "configs" / "sft_example.yaml"), [
        f"run_dir={tmp_path / 'run'}", f"data.train={REPO / 'examples/sft/reviews.jsonl'}",
        f"data.eval={REPO / 'examples/sft/reviews_eval.jsonl'}", "train.max_steps=3",
        "train.batch_size=4", "train.micro_batch_size=4", "train.eval_every=3",
        "data.max_length=96", "optim.warmup_steps=0", "optim.lr=1e-4", "train.save_every=0"])
    final = train(cfg)
    evals = [m["eval/loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
             if "eval/loss" in m]
    assert evals[-1] < evals[0]
    assert AutoModelForCausalLM.from_pretrained(final).config.model_type == "llama"


def test_the_real_model_trains_with_kernelize_raising(tmp_path, monkeypatch):
    """transformers 5.x kernelizes every from_pretrained model on model.train(); offline on a
    GPU that fetch fails (issue 18). kernelize raising here fails the stage if anything asks."""
    import transformers.modeling_utils

    from tether.cli import main

    def kernelize(*args, **kwargs):
        raise RuntimeError("kernelize was called: it would fetch kernels from the Hub")

    monkeypatch.setattr(transformers.modeling_utils, "kernelize", kernelize)
    assert main(["sft", "model.name=smollm2-135m", "train.max_steps=1", "train.batch_size=2",
                 "train.micro_batch_size=2", "data.max_length=64", "data.eval_fraction=0",
                 f"data.train={REPO / 'examples/sft/reviews.jsonl'}",
                 f"run_dir={tmp_path / 'run'}"]) == 0
