"""The `hf` generation backend: Hugging Face `generate` on whatever device the model is on.

`HFGenerator` wraps Hugging Face `generate` (KV cache, left padding, an explicit attention
mask). transformers derives each row's position ids from that mask (cumsum - 1) and extends
them by one per step, so a left-padded prompt sees the same rotary positions as the prompt
alone; tests/unit/test_generate.py checks this.

Sampling is plain temperature + nucleus sampling, exactly softmax(logits / temperature) cut to
top_p, the distribution PPO's log-probs assume. tether draws each token itself
(`InverseCDFSampler`) and generate runs greedy on that one-hot choice, so generate's own
sampling warpers (transformers' default top_k=50 above all) never run; the processors a model's
generation_config could add (repetition penalties, forced or suppressed tokens, ...) are
switched off explicitly. The sampler also records the log-prob of each token it draws
(`Generation.logprobs`), which the trainer compares with its own (rollout.is_correction).

Each sample's uniforms come from its own random stream (base.stream_seed), so a sample does not
depend on which other prompts share its call.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessor, PreTrainedTokenizerBase

from tether.data.collate import pad_batch
from tether.device import autocast
from tether.models.logprobs import position_ids_from_mask
from tether.rollout.base import Generation, Generator, SamplingParams, check_request, special_tokens
from tether.rollout.sampling import draw, stream_uniforms

# Passed to every generate call: kwargs override the model's generation_config, which would
# otherwise fill these in.
_PLAIN_SAMPLING = {
    "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "stop_strings": None,
    "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "remove_invalid_values": False, "num_beams": 1, "guidance_scale": None,
    "watermarking_config": None,
}


class InverseCDFSampler(LogitsProcessor):
    """Draws row r's next token from softmax(logits / temperature) cut to top_p with row r's
    uniform for this step: the first token where the cumulative probability passes it. Returns
    logits that are 0 at the drawn token and -inf elsewhere, for generate's greedy argmax.

    `logprobs` collects, step by step, each row's log softmax(logits / temperature) at the
    drawn token ([rows] per step): the full tempered distribution, as the trainer computes it.
    A row that has finished is still drawn for (generate then writes pad instead): the caller
    keeps only the steps up to its EOS."""

    def __init__(self, uniforms: torch.Tensor, temperature: float, top_p: float):
        self.uniforms = uniforms  # [rows, max_new_tokens], in [0, 1)
        self.temperature, self.top_p = temperature, top_p
        self.step = 0
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token, logprob = draw(scores, self.uniforms[:, self.step], self.temperature, self.top_p)
        self.step += 1
        self.logprobs.append(logprob)
        return torch.full_like(scores, float("-inf")).scatter(-1, token[:, None], 0.0)


class HFGenerator(Generator):
    """Hugging Face `generate` on whatever device the model is on: the policy's own modules,
    under the trainer's autocast, so its log-probs are the trainer's."""

    matches_trainer = True

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 bf16: bool = False):
        self.eos_token_id, self.pad_token_id = special_tokens(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.bf16 = bf16

    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None, first_sample: int = 0) -> list[list[Generation]]:
        """`n` samples for each prompt, in prompt order. With `seed`, sample k of this call
        (prompt k // n) draws from stream (seed, first_sample + k) and depends on nothing else
        but its prompt and `params`; the caller's global RNG stream is left as it was. Without,
        the streams come from the global RNG. `first_sample`: where this call's samples start
        in a larger batch split over calls."""
        check_request(prompts, n)
        if not prompts:
            return []
        device = self.model.device
        input_ids = pad_batch(prompts, self.pad_token_id, "left").to(device)
        attention_mask = pad_batch([[1] * len(p) for p in prompts], 0, "left").to(device)
        rows = len(prompts) * n
        sampler = InverseCDFSampler(
            stream_uniforms(rows, params.max_new_tokens, seed, first_sample),
            params.temperature, params.top_p)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.bf16, device):
                cache = None
                if n > 1 and input_ids.shape[1] > 1:
                    # Each prompt read once, not once per sample: its cache, copied n times,
                    # holds all but the last prompt token, which generate then reads to draw
                    # the first response token.
                    cache = self._prefill(input_ids[:, :-1], attention_mask[:, :-1])
                    cache.batch_repeat_interleave(n)
                input_ids = input_ids.repeat_interleave(n, 0)
                attention_mask = attention_mask.repeat_interleave(n, 0)
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                    do_sample=False, logits_processor=[sampler],
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                    use_cache=True, return_dict_in_generate=False, **_PLAIN_SAMPLING)
        finally:
            self.model.train(was_training)

        # Rows come prompt-major (prompt 0's n samples, then prompt 1's, ...). After a row's
        # EOS, generate fills it with pad; cut at the first EOS, never strip pad tokens the
        # model sampled itself.
        responses = out[:, input_ids.shape[1]:].tolist()
        logprobs = torch.stack(sampler.logprobs, dim=1).tolist()  # [rows, steps], as responses
        results: list[list[Generation]] = []
        for i, prompt in enumerate(prompts):
            samples = []
            for row, row_logprobs in zip(responses[i * n:(i + 1) * n],
                                         logprobs[i * n:(i + 1) * n], strict=True):
                finished = self.eos_token_id in row
                if finished:
                    row = row[: row.index(self.eos_token_id) + 1]
                samples.append(Generation(list(prompt), row, finished,
                                          row_logprobs[:len(row)]))
            results.append(samples)
        return results

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DynamicCache:
        """The KV cache of left-padded prompts, at the positions generate gives them."""
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=True,
                   logits_to_keep=1)
        return cache

    def sync(self, model: torch.nn.Module | None = None) -> None:
        """Nothing to do: generate reads the policy's weights themselves."""
