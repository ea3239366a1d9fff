"""The static backend beyond the Generator contract (test_generate.py runs that on it): the
same tokens as hf where the numerics are the same, its copy of the policy in bf16 or with a
LoRA adapter merged in, and `sync` bringing in the policy's new weights."""

import pytest
import torch

from tether.config import LoraConfig
from tether.models.logprobs import forward_logprobs
from tether.models.lora import apply_lora
from tether.rollout.base import SamplingParams
from tether.rollout.generate import HFGenerator
from tether.rollout.static import StaticGenerator


def _prompts(tokenizer):
    texts = ["The plot was", "Continue this movie review: the acting was warm and", "A quiet"]
    return [tokenizer(t).input_ids for t in texts]


def _samples(generator, tokenizer, params, seed=0):
    return [g for samples in generator.generate(_prompts(tokenizer), 4, params, seed=seed)
            for g in samples]


def _peaky(model, scale=3.0):
    """Larger weights: peakier logits, so a wrong weight changes the tokens drawn."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(scale)


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12),
                                    SamplingParams(temperature=0.7, top_p=0.9,
                                                   max_new_tokens=12)])
def test_in_fp32_it_draws_hf_s_tokens_with_hf_s_log_probs(model, tokenizer, params):
    """The same streams, the same draw and the same numerics: the same samples, which keeps
    every seeded result of tether (the same seed, the same samples) when a run switches."""
    _peaky(model)
    static = StaticGenerator(model, tokenizer, dtype=torch.float32)
    assert static.matches_trainer
    for seed in (0, 1):
        ours = _samples(static, tokenizer, params, seed)
        theirs = _samples(HFGenerator(model, tokenizer), tokenizer, params, seed)
        assert [g.response_ids for g in ours] == [g.response_ids for g in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.finished == b.finished
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                       atol=1e-5, rtol=0)


def test_a_bf16_copy_samples_close_to_the_fp32_policy_and_says_it_differs(model, tokenizer):
    static = StaticGenerator(model, tokenizer)  # bf16 by default
    assert not static.matches_trainer
    assert all(p.dtype == torch.bfloat16 for p in static.model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the policy untouched
    for g in _samples(static, tokenizer, SamplingParams(max_new_tokens=8)):
        ids = torch.tensor([g.prompt_ids + g.response_ids])
        with torch.no_grad():
            trainer = forward_logprobs(model, ids, torch.ones_like(ids))[0, len(g.prompt_ids):]
        # bf16 keeps 8 bits of mantissa: close, not equal (what rollout.is_correction is for)
        torch.testing.assert_close(torch.tensor(g.logprobs), trainer, atol=0.05, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prepacked_product_runs_on_every_cpu_and_equals_f_linear(dtype):
    # An AVX2-only CPU cannot lay out bf16 weights for oneDNN: the product falls back to
    # F.linear there instead of failing (it once stopped `tether run` at its sample stage).
    from tether.rollout.decode import Linear, can_prepack

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=generator).to(dtype)
    bias = torch.randn(24, generator=generator).to(dtype)
    x = torch.randn(5, 16, generator=generator).to(dtype)
    product = Linear(weight, bias, prepack=True)
    assert product.packed == can_prepack(weight)
    if dtype == torch.float32:
        assert product.packed == torch.backends.mkldnn.is_available()
    torch.testing.assert_close(product(x), torch.nn.functional.linear(x, weight, bias))


def test_sync_brings_in_the_policy_s_updated_weights(model, tokenizer):
    params = SamplingParams(max_new_tokens=10)
    static = StaticGenerator(model, tokenizer, dtype=torch.float32)
    copy = static.model
    before = [g.response_ids for g in _samples(static, tokenizer, params)]
    _peaky(model)  # an "update" of the policy in place
    assert [g.response_ids for g in _samples(static, tokenizer, params)] == before  # stale
    static.sync(model)
    after = [g.response_ids for g in _samples(static, tokenizer, params)]
    assert static.model is copy  # the same policy: its weights copied in, no new copy
    assert after != before
    assert after == [g.response_ids for g in _samples(HFGenerator(model, tokenizer),
                                                     tokenizer, params)]


def test_a_lora_policy_is_sampled_with_its_adapter_merged_in(model, tokenizer):
    policy = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    params = SamplingParams(max_new_tokens=10)

    def train_adapter(scale):
        with torch.no_grad():  # lora_B starts at 0: give the adapter something to say
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * scale)

    train_adapter(0.5)
    static = StaticGenerator(policy, tokenizer, dtype=torch.float32)
    assert not any("lora" in name for name, _ in static.model.named_parameters())
    hf = HFGenerator(policy, tokenizer)
    assert [g.response_ids for g in _samples(static, tokenizer, params)] == \
        [g.response_ids for g in _samples(hf, tokenizer, params)]
    # After an update of the adapter alone, sync merges the new adapter into the base again.
    base = {n: p.clone() for n, p in policy.named_parameters() if "lora" not in n}
    train_adapter(1.0)
    static.sync(policy)
    ours = [g.response_ids for g in _samples(static, tokenizer, params)]
    assert ours == [g.response_ids for g in _samples(hf, tokenizer, params)]
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if "lora" not in n)


def test_a_compiled_decode_step_draws_the_same_tokens(model, tokenizer):
    """rollout.compile: torch.compile of the decode step (about 20 s to compile on 2 cores,
    once per batch shape) changes no token."""
    params = SamplingParams(max_new_tokens=6)
    compiled = StaticGenerator(model, tokenizer, dtype=torch.float32, compile=True)
    expected = [g.response_ids for g in _samples(HFGenerator(model, tokenizer), tokenizer,
                                                 params)]
    for _ in range(2):  # the second call reuses the compiled step
        assert [g.response_ids for g in _samples(compiled, tokenizer, params)] == expected


def _qwen2(seed=0):
    """A tiny Qwen2: biases on q, k and v, which the written-out step must add."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("prepack", [True, False])
def test_the_written_out_step_gives_the_model_s_own_logits(model, tokenizer, architecture,
                                                           prepack):
    """LlamaDecode against the model's forward over the whole sequence, step by step, with
    left-padded prompts of different lengths and two rows per prompt."""
    from transformers import DynamicCache

    from tether.data.collate import pad_batch
    from tether.models.logprobs import position_ids_from_mask
    from tether.rollout.decode import LlamaDecode, writes_out

    if architecture == "qwen2":
        model = _qwen2()
    _peaky(model, 2.0)
    assert writes_out(model)
    prompts = _prompts(tokenizer)
    ids = pad_batch(prompts, 0, "left")
    prompt_mask = pad_batch([[1] * len(p) for p in prompts], 0, "left")
    n, steps, width = 2, 5, ids.shape[1]
    prefill = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=prompt_mask,
              position_ids=position_ids_from_mask(prompt_mask), cache=prefill, use_cache=True)
    decode = LlamaDecode(model, prepack=prepack)
    decode.start(prefill, n, prompt_mask, width + steps)

    sequences = ids.repeat_interleave(n, 0)
    mask = prompt_mask.repeat_interleave(n, 0)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        token = torch.randint(3, 512, (sequences.shape[0],), generator=generator)
        sequences = torch.cat([sequences, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        with torch.no_grad():
            ours = decode.step(token, mask[:, :-1].sum(-1, keepdim=True),
                               torch.tensor([width + step]))
            theirs = model(input_ids=sequences, attention_mask=mask,
                           position_ids=position_ids_from_mask(mask)).logits[:, -1]
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_model_it_does_not_write_out_decodes_through_its_own_forward(tokenizer):
    """An architecture outside decode.ARCHITECTURES (here GPT-2) takes the model's forward
    with transformers' StaticCache: the same tokens as hf in fp32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tether.rollout.decode import LayerDecode

    config = GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                        pad_token_id=0, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(config).eval()
    _peaky(gpt2)
    static = StaticGenerator(gpt2, tokenizer, dtype=torch.float32)
    assert isinstance(static.decode, LayerDecode)
    params = SamplingParams(max_new_tokens=8)
    ours = _samples(static, tokenizer, params)
    theirs = _samples(HFGenerator(gpt2, tokenizer), tokenizer, params)
    assert [g.response_ids for g in ours] == [g.response_ids for g in theirs]


def test_finished_rows_leave_the_batch_without_changing_any_sample(model, tokenizer):
    """Rows that end early are dropped from the decode batch (a quarter at a time): every
    sample is the one the whole batch would have drawn, and hf's."""
    _peaky(model, 2.0)
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.eos_token_id] = 3.0  # EOS now and then: rows end at different steps
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    params = SamplingParams(max_new_tokens=16)
    dropping = StaticGenerator(model, tokenizer, dtype=torch.float32)
    keeping = StaticGenerator(model, tokenizer, dtype=torch.float32)
    keeping._drops_rows = False
    kept = []
    keep = dropping.decode.keep
    dropping.decode.keep = lambda rows: kept.append(len(rows)) or keep(rows)

    ours = _samples(dropping, tokenizer, params)
    whole = _samples(keeping, tokenizer, params)
    theirs = _samples(HFGenerator(model, tokenizer), tokenizer, params)
    assert kept and kept[-1] < 12  # rows were dropped
    lengths = {len(g.response_ids) for g in ours}
    assert len(lengths) > 2 and any(not g.finished for g in ours)
    assert [g.response_ids for g in ours] == [g.response_ids for g in whole] \
        == [g.response_ids for g in theirs]
    for a, b in zip(ours, whole, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   atol=1e-5, rtol=0)
