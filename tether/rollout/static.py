"""The `static` generation backend: tether's own decode loop over a KV cache of fixed length,
on a copy of the policy in the precision generation wants (the trainer's by default).

Why it is faster than `hf` (bench/generation.py has the figures):
- For Llama-family models the decode step is written out (decode.py): fused products, weights
  laid out for oneDNN on the CPU, no per-step mask or cache objects. Other architectures run
  their own forward over transformers' `StaticCache`.
- A decode step reads every weight once for a handful of tokens, so its time is the time to
  read the weights: a bf16 copy reads half the bytes of the fp32 policy. The copy also has any
  LoRA adapter merged in, so generation pays for no adapter.
- The cache is allocated once per call at its final length: no cache grows by concatenation
  at every step, and the shapes a compiled step sees are fixed (`compile=True`:
  torch.compile, which on a GPU can capture the step as a CUDA graph).
- Each prompt is read once; its cache is copied to its n samples. Rows that have finished
  leave the batch, a quarter of them at a time (not when compiled: its shapes stay fixed).
- tether draws the tokens itself (sampling.draw), with no generate() machinery per step.

Numerics differ from the trainer's when the copy's precision does (`matches_trainer`), which
is why PPO measures the mismatch and corrects for it with truncated importance sampling. In the
trainer's precision the samples are hf's (tests/unit/test_static_generate.py).

`sync()` marks the copy stale; the next `generate` copies the policy's current weights in, so
a sync costs nothing until a rollout needs the weights. (fsdp2, whose weights are shards
between passes, is refused by PPO's config check for now.)
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from tether.data.collate import pad_batch
from tether.models.logprobs import position_ids_from_mask
from tether.models.lora import merged_copy
from tether.rollout.base import Generation, Generator, SamplingParams, check_request, special_tokens
from tether.rollout.decode import LayerDecode, LlamaDecode, writes_out
from tether.rollout.sampling import draw, stream_uniforms


class StaticGenerator(Generator):
    """Samples from a `dtype` copy of the policy with a static KV cache (see the module)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 dtype: torch.dtype = torch.bfloat16, compile: bool = False):
        self.eos_token_id, self.pad_token_id = special_tokens(tokenizer)
        self.dtype = dtype
        # Sampled in the policy's own precision, its tokens are hf's (the tests check it).
        self.matches_trainer = all(p.dtype == dtype for p in model.parameters())
        self.policy = model
        self.compile = compile
        self._build(model)
        # Fixed shapes (the cache's length is rounded up, see generate), so one compiled graph
        # serves every step of every call with the same rows.
        self._length_multiple = 64 if compile else 1

    def _build(self, model: torch.nn.Module) -> None:
        self.model, self._sources = merged_copy(model, self.dtype)
        self._stale = False
        self.decode = (LlamaDecode if writes_out(self.model) else LayerDecode)(
            self.model, prepack=not self.compile)
        # Finished rows leave the batch where the cache is tether's own; a compiled step keeps
        # its shapes.
        self._drops_rows = isinstance(self.decode, LlamaDecode) and not self.compile
        self._step = self.decode.step
        if self.compile:
            self._step = torch.compile(self.decode.step, dynamic=False, fullgraph=False,
                                       mode="reduce-overhead"
                                       if self.model.device.type == "cuda" else None)

    def sync(self, model: torch.nn.Module | None = None) -> None:
        """The next `generate` first copies the policy's current weights in (another `model`
        than the one it was built with: a new copy of that one)."""
        if model is not None and model is not self.policy:
            self.policy = model
            self._build(model)
        self._stale = True

    @torch.no_grad()
    def _copy_weights(self) -> None:
        for target, value in self._sources:
            target.copy_(value())
        self.decode.pack()
        self._stale = False

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None, first_sample: int = 0) -> list[list[Generation]]:
        """`n` samples for each prompt, in prompt order (the contract of Generator.generate);
        each response ends at its first EOS and carries the sampler's log-probs."""
        check_request(prompts, n)
        if not prompts:
            return []
        if self._stale:
            self._copy_weights()
        device, steps = self.model.device, params.max_new_tokens
        input_ids = pad_batch(prompts, self.pad_token_id, "left").to(device)
        prompt_mask = pad_batch([[1] * len(p) for p in prompts], 0, "left").to(device)
        rows, width = len(prompts) * n, input_ids.shape[1]
        length = -(-(width + steps) // self._length_multiple) * self._length_multiple
        uniforms = stream_uniforms(rows, steps, seed, first_sample).to(device)

        # Each prompt read once; its keys and values then fill its n rows of the decode cache.
        # The last position is kept by index, not as the slice logits_to_keep=1 takes: on the
        # CPU a bf16 linear layer on that strided slice copies its weight once per row.
        prefill = DynamicCache(config=self.model.config)
        last = torch.tensor([width - 1], device=device)
        logits = self.model(input_ids=input_ids, attention_mask=prompt_mask,
                            position_ids=position_ids_from_mask(prompt_mask),
                            cache=prefill, use_cache=True,
                            logits_to_keep=last).logits[:, -1].repeat_interleave(n, 0)
        self.decode.start(prefill, n, prompt_mask, length)
        del prefill
        # The next token's rotary position: the row's prompt length, then one more per step.
        position = prompt_mask.sum(-1, keepdim=True).repeat_interleave(n, 0)

        tokens = torch.full((rows, steps), self.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(rows, steps, device=device)
        live = torch.arange(rows, device=device)  # the rows still decoded, in the cache's order
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # of the live rows
        for step in range(steps):
            token, logprob = draw(logits, uniforms[live, step], params.temperature, params.top_p)
            token = token.masked_fill(done, self.pad_token_id)
            tokens[live, step], logprobs[live, step] = token, logprob
            done |= token == self.eos_token_id
            if step == steps - 1 or bool(done.all()):
                break
            if self._drops_rows and 4 * int(done.sum()) >= len(live):
                # A quarter of the rows have finished: they leave the batch, so the steps after
                # this one cost what the rows still going need (copying the cache costs about
                # a step; at most a few times a call).
                going = (~done).nonzero()[:, 0]
                self.decode.keep(going)
                live, token, position, done = live[going], token[going], position[going], \
                    done[going]
            logits = self._step(token, position, torch.tensor([width + step], device=device))
            position = position + 1

        results: list[list[Generation]] = []
        for i, prompt in enumerate(prompts):
            samples = []
            for row in range(i * n, (i + 1) * n):
                ids = tokens[row].tolist()
                finished = self.eos_token_id in ids
                end = ids.index(self.eos_token_id) + 1 if finished else steps
                samples.append(Generation(list(prompt), ids[:end], finished,
                                          logprobs[row, :end].tolist()))
            results.append(samples)
        return results
