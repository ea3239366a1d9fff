"""train.compile (tether.precision.maybe_compile) against eager: the same losses and gradients.

Compiling the tiny model's forward and backward with inductor takes most of a minute on two
CPU cores, so most tests trace with `aot_eager` (dynamo and AOT autograd, the graphs inductor
would get, run by torch's own kernels); one small model goes through inductor itself, skipped
where it has no C++ compiler."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tether.config import LoraConfig
from tether.device import autocast
from tether.errors import ConfigError
from tether.losses.sft import masked_nll
from tether.models.logprobs import forward_logits, token_logprobs
from tether.models.lora import apply_lora
from tether.models.tiny import tiny_llama
from tether.precision import compile_unavailable, maybe_compile, to_bf16


def batch(length: int, first_scored: int, vocab: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, length), generator=g)
    attention = torch.ones_like(ids)
    attention[1, -3:] = 0
    loss_mask = attention.clone()
    loss_mask[:, :first_scored] = 0
    return ids, attention, loss_mask


def loss_and_grads(model, ids, attention, loss_mask, first: int = 1, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    with autocast(bf16):
        logits = forward_logits(model, ids, attention, first)
    loss = masked_nll(token_logprobs(logits, ids), loss_mask)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def assert_same(eager, compiled, atol: float) -> None:
    assert compiled[0] == pytest.approx(eager[0], abs=atol)
    assert eager[1].keys() == compiled[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("variant", ["full", "lora", "bf16_weights"])
def test_compiled_model_matches_eager(variant):
    def build():
        torch.manual_seed(0)  # the same LoRA initialisation in both
        m = tiny_llama(0)
        if variant == "lora":
            m = apply_lora(m, LoraConfig(enabled=True, r=4))
        return to_bf16(m) if variant == "bf16_weights" else m

    bf16 = variant == "bf16_weights"
    eager, model = build(), build()
    names = list(model.state_dict())
    assert maybe_compile(model, True, backend="aot_eager") is model  # in place
    assert list(model.state_dict()) == names  # no _orig_mod. prefix: checkpoints unchanged
    # Two shapes (and two first-scored columns): the second call recompiles, dynamic. (One
    # for the variants, which take a while to trace each.)
    for length, first in ((20, 4), (27, 9))[:2 if variant == "full" else 1]:
        inputs = batch(length, first)
        want = loss_and_grads(eager, *inputs, first=first, bf16=bf16)
        got = loss_and_grads(model, *inputs, first=first, bf16=bf16)
        assert_same(want, got, atol=1e-6 if not bf16 else 1e-2)


def test_disabled_is_a_no_op():
    model = tiny_llama(0)
    assert maybe_compile(model, False) is model
    assert model._compiled_call_impl is None


def small_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.mark.skipif(compile_unavailable("cpu") is not None,
                    reason=f"inductor: {compile_unavailable('cpu')}")
def test_inductor_matches_eager():
    eager, model = small_llama(), small_llama()
    maybe_compile(model, True)
    inputs = batch(12, 3, vocab=64)
    assert_same(loss_and_grads(eager, *inputs, first=3), loss_and_grads(model, *inputs, first=3),
                atol=1e-5)


def test_unavailable_compile_is_a_config_error(monkeypatch):
    import torch._dynamo
    import torch._inductor.cpp_builder

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    compile_unavailable.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"^train\.compile=true: inductor on the CPU needs "
                                              r"a working C\+\+ compiler"):
            maybe_compile(tiny_llama(0), True)
        assert compile_unavailable("cpu", "aot_eager") is None  # needs no compiler
        monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
        compile_unavailable.cache_clear()
        with pytest.raises(ConfigError, match=r"train\.compile=true: torch\.compile is not "
                                              r"supported"):
            maybe_compile(tiny_llama(0), True, backend="aot_eager")
    finally:
        compile_unavailable.cache_clear()  # the real answer again, for the other tests
