"""The generation backends on the tiny model: the Generator contract every built-in backend
keeps (counts, EOS handling, left padding, seeding, log-probs; `backend` runs a test on each),
then what only hf does. The static backend's own tests are in test_static_generate.py."""

import pytest
import torch

from tether.errors import UserError
from tether.models.logprobs import forward_logprobs
from tether.rollout.backends import make_generator
from tether.rollout.base import Generation, SamplingParams
from tether.rollout.generate import HFGenerator, InverseCDFSampler
from tether.rollout.vllm import VLLMGenerator

NEAR_GREEDY = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12)


@pytest.fixture(params=["hf", "static"])
def backend(request):
    """Builds the backend under test on a model (static: an fp32 copy, the policy's own
    numerics, which dtype=auto gives an fp32 trainer)."""
    return lambda model, tokenizer: make_generator(request.param, model, tokenizer)


def _prompts(tokenizer):
    # Different lengths, so the batch is left-padded by different amounts.
    texts = ["The plot was", "Continue this movie review: the acting was warm and", "A quiet"]
    return [tokenizer(t).input_ids for t in texts]


def _boost(model, token_ids, logit=4.5):
    """Raise these tokens' logits (tiny random logits are ~0, so each gets ~15% a step)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token_ids] = logit
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias.to(out.dtype))


def _ids(results):
    return [[g.response_ids for g in samples] for samples in results]


def test_n_samples_per_prompt_in_prompt_order(backend, model, tokenizer):
    prompts = _prompts(tokenizer)
    results = backend(model, tokenizer).generate(
        prompts, 4, SamplingParams(max_new_tokens=6), seed=0)
    assert len(results) == 3
    for prompt, samples in zip(prompts, results, strict=True):
        assert len(samples) == 4
        for g in samples:
            assert isinstance(g, Generation)
            assert g.prompt_ids == prompt
            assert 1 <= len(g.response_ids) <= 6
    # The n samples of a prompt are drawn independently, not copies of one.
    assert len({tuple(g.response_ids) for g in results[0]}) > 1


def test_each_prompt_is_read_once_for_its_n_samples(model, tokenizer):
    prompts = _prompts(tokenizer)
    widths = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    generator = HFGenerator(model, tokenizer)
    shared = _ids(generator.generate(prompts, 4, SamplingParams(max_new_tokens=6), seed=0))
    longest = max(len(p) for p in prompts)
    # The 3 prompts' caches (all but their last token) once, then 12 rows one token at a time.
    assert widths[0] == (3, longest - 1) and widths[1] == (12, 1)
    # The same samples as the 12 rows prefilled each on its own (the same seed).
    repeated = [p for p in prompts for _ in range(4)]
    widths.clear()
    alone = _ids(generator.generate(repeated, 1, SamplingParams(max_new_tokens=6), seed=0))
    assert widths[0] == (12, longest)
    assert [g for samples in shared for g in samples] == [s[0] for s in alone]


def test_finished_iff_the_response_ends_with_eos(backend, model, tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert pad != eos
    _boost(model, [eos, pad])
    params = SamplingParams(max_new_tokens=10)
    results = backend(model, tokenizer).generate(_prompts(tokenizer), 8, params, seed=0)
    gens = [g for samples in results for g in samples]
    for g in gens:
        assert g.finished == (g.response_ids[-1] == eos)
        assert eos not in g.response_ids[:-1]  # nothing after EOS
        if not g.finished:
            assert len(g.response_ids) == params.max_new_tokens
    assert any(g.finished for g in gens) and not all(g.finished for g in gens)
    # Finished rows are padded inside generate; that padding is gone, but a pad token the
    # model sampled itself is part of the response and stays.
    assert any(pad in g.response_ids for g in gens)


def test_left_padded_batch_continues_like_each_prompt_alone(backend, model, tokenizer):
    with torch.no_grad():  # larger weights: peakier logits, context-dependent continuations
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3)
    generator = backend(model, tokenizer)
    prompts = _prompts(tokenizer)
    batched = _ids(generator.generate(prompts, 1, NEAR_GREEDY, seed=0))
    alone = [_ids(generator.generate([p], 1, NEAR_GREEDY, seed=0))[0] for p in prompts]
    assert batched == alone
    assert len({tuple(a[0]) for a in alone}) == 3  # the prompts really lead to different text


def test_position_ids_follow_the_attention_mask(model, tokenizer):
    """transformers derives positions from the mask (0 at each row's first real token) and
    extends them by one per step. (For RoPE a constant offset per row would give the same
    attention anyway; the padded keys are masked out.)"""
    seen = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (kwargs["position_ids"].clone(), kwargs["attention_mask"].clone())),
        with_kwargs=True)
    prompts = _prompts(tokenizer)
    HFGenerator(model, tokenizer).generate(prompts, 2, SamplingParams(max_new_tokens=4), seed=0)
    # First the prompts' caches, each prompt once: all its tokens but the last.
    positions, mask = seen[0]
    assert positions.shape[0] == len(prompts)
    for row, prompt in enumerate(prompts):
        length = len(prompt) - 1
        assert positions[row, -length:].tolist() == list(range(length))
        assert mask[row].sum() == length
    # Then each sample's row one token at a time: the prompt's last token, then its response.
    for step, (positions, _) in enumerate(seen[1:]):
        for row in range(positions.shape[0]):
            assert positions[row].tolist() == [len(prompts[row // 2]) - 1 + step]


def test_same_seed_same_samples_other_seed_other_samples(backend, model, tokenizer):
    generator = backend(model, tokenizer)
    prompts, params = _prompts(tokenizer), SamplingParams(max_new_tokens=8)
    first = _ids(generator.generate(prompts, 3, params, seed=7))
    torch.rand(5)  # whatever the global stream does in between
    assert _ids(generator.generate(prompts, 3, params, seed=7)) == first
    assert _ids(generator.generate(prompts, 3, params, seed=8)) != first


def test_a_batch_split_over_calls_draws_the_same_samples(backend, model, tokenizer):
    """What PPO under torchrun relies on: each process samples its share of the prompts, and
    together they draw what one process draws for all of them."""
    generator = backend(model, tokenizer)
    prompts, params = _prompts(tokenizer), SamplingParams(max_new_tokens=8, top_p=0.9)
    whole = _ids(generator.generate(prompts, 3, params, seed=5))
    first = _ids(generator.generate(prompts[:1], 3, params, seed=5))
    rest = _ids(generator.generate(prompts[1:], 3, params, seed=5, first_sample=3))
    assert first + rest == whole
    # and not by accident: other positions in the batch draw other samples
    assert _ids(generator.generate(prompts[1:], 3, params, seed=5)) != rest


def test_the_sampler_inverts_the_cdf_of_the_tempered_nucleus():
    """probs [0.5, 0.3, 0.15, 0.05] at top_p 0.7 keep the first two (the tokens above the
    third hold 0.8 >= 0.7), renormalised to [0.625, 0.375]: u below 0.625 draws token 0."""
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()[None].repeat(4, 1)
    uniforms = torch.tensor([[0.0], [0.62], [0.63], [0.999]])
    drawn = InverseCDFSampler(uniforms, temperature=1.0, top_p=0.7)(None, logits)
    assert drawn.argmax(-1).tolist() == [0, 0, 1, 1]
    assert torch.isinf(drawn).sum(-1).tolist() == [3, 3, 3, 3]  # one-hot for the argmax
    # temperature 2 flattens [0.5, 0.3, 0.15, 0.05] to sqrt-proportional weights
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    cdf = (weights / weights.sum()).cumsum(0)
    u = torch.tensor([[cdf[0] - 1e-4], [cdf[0] + 1e-4], [cdf[2] + 1e-4]])
    drawn = InverseCDFSampler(u, temperature=2.0, top_p=1.0)(None, logits[:3])
    assert drawn.argmax(-1).tolist() == [0, 1, 3]


def test_the_sampler_draws_from_the_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 6)
    rows = 20_000
    sampler = InverseCDFSampler(torch.rand(rows, 1), temperature=0.7, top_p=1.0)
    tokens = sampler(None, logits.repeat(rows, 1)).argmax(-1)
    freq = torch.bincount(tokens, minlength=6) / rows
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.012, rtol=0)


def test_the_sampler_records_the_full_tempered_log_prob_of_each_drawn_token():
    """Not renormalised to the nucleus: at top_p 0.7 token 0 is drawn with probability 0.625,
    and recorded as log 0.5, as the trainer's log softmax(logits / T) gives it."""
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()[None].repeat(2, 1)
    sampler = InverseCDFSampler(torch.tensor([[0.0, 0.9], [0.9, 0.0]]), 1.0, top_p=0.7)
    sampler(None, logits)
    sampler(None, logits)
    torch.testing.assert_close(torch.stack(sampler.logprobs, 1),
                               torch.tensor([[0.5, 0.3], [0.3, 0.5]]).log())


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_generation_log_probs_are_the_trainer_s(backend, model, tokenizer, temperature, top_p):
    """Each response token's recorded log-prob is what the policy's forward over prompt and
    response gives it (tether.models.logprobs, as PPO computes it), up to float rounding
    (a KV cache and left padding against one right-padded pass); nothing after EOS."""
    eos = tokenizer.eos_token_id
    _boost(model, [eos], logit=3.0)  # some responses end early, some do not
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=10)
    results = backend(model, tokenizer).generate(_prompts(tokenizer), 4, params, seed=0)
    gens = [g for samples in results for g in samples]
    assert any(g.finished for g in gens) and not all(g.finished for g in gens)
    for g in gens:
        assert len(g.logprobs) == len(g.response_ids)
        ids = torch.tensor([g.prompt_ids + g.response_ids])
        with torch.no_grad():
            expected = forward_logprobs(model, ids, torch.ones_like(ids),
                                        temperature=temperature)[0, len(g.prompt_ids):]
        torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=1e-5, rtol=0)


def test_seeded_generation_leaves_the_global_rng_alone(backend, model, tokenizer):
    generator = backend(model, tokenizer)
    state = torch.get_rng_state()
    generator.generate(_prompts(tokenizer), 2, SamplingParams(max_new_tokens=4), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    # Unseeded generation draws from (and advances) the global stream, as torch code does.
    generator.generate(_prompts(tokenizer), 2, SamplingParams(max_new_tokens=4))
    assert not torch.equal(torch.get_rng_state(), state)


def test_plain_temperature_top_p_sampling_ignores_generation_config(backend, model, tokenizer):
    """A model's generation_config (and transformers' default top_k=50) must not change the
    distribution sampled from: with top_k=1 there it would be greedy, one response."""
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 5.0
    results = backend(model, tokenizer).generate(
        [_prompts(tokenizer)[0]], 6, SamplingParams(max_new_tokens=6), seed=0)
    assert len({tuple(g.response_ids) for g in results[0]}) > 1


def test_restores_training_mode_and_runs_under_bf16(model, tokenizer):
    model.train()
    results = HFGenerator(model, tokenizer, bf16=True).generate(
        _prompts(tokenizer), 2, SamplingParams(max_new_tokens=5), seed=0)
    assert model.training
    assert all(1 <= len(g.response_ids) <= 5 for samples in results for g in samples)


def test_sampling_params_are_checked():
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_make_generator_by_backend(model, tokenizer):
    assert isinstance(make_generator("hf", model, tokenizer, bf16=True), HFGenerator)
    assert HFGenerator.matches_trainer and not VLLMGenerator.matches_trainer
    if not torch.cuda.is_available():  # here: one clear line, no traceback from vllm
        with pytest.raises(UserError, match="backend=vllm needs a CUDA GPU"):
            make_generator("vllm", model, tokenizer, model_path="unused")
    with pytest.raises(UserError, match="unknown generation backend"):
        make_generator("jax", model, tokenizer)


def test_ppo_and_sample_refuse_vllm_without_a_gpu_before_loading(tmp_path, capsys):
    from tether.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    assert main(["sample", "policy=tiny", f"prompts={prompts}", "backend=vllm",
                 f"output={tmp_path / 'c.jsonl'}"]) == 2
    assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", "reward.gold=sentiment",
                 "rollout.backend=vllm", "rollout.batch_size=1", "ppo.minibatch_size=1",
                 "ppo.micro_batch_size=1", f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("backend=vllm needs a CUDA GPU") == 2 and "Traceback" not in err


def test_auto_is_static_on_the_cpu_and_hf_on_a_shard(model, tokenizer):
    from tether.rollout.backends import resolve_backend
    from tether.rollout.static import StaticGenerator

    assert resolve_backend("auto", model) == "static"
    assert resolve_backend("hf", model) == "hf"
    generator = make_generator("auto", model, tokenizer)
    assert isinstance(generator, StaticGenerator) and generator.matches_trainer  # fp32: hf's
    assert make_generator("auto", model, tokenizer, bf16=True).dtype == torch.bfloat16
