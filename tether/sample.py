"""`tether sample`: K responses per prompt from a policy, written to candidates.jsonl.

The candidates are what people (or a simulated labeler) rank next. One row per prompt:
{"prompt": <as given>, "responses": [k texts], "num_tokens": [k], "finished": [k],
"sampling": {policy, temperature, top_p, max_new_tokens, seed}}, plus the prompt row's other
fields (say `answer`), which a gold scorer of the keyword form reads (tether.tasks.gold).

A response that is empty or only whitespace (the policy ended at once) is dropped, counted in
the summary: `tether label simulate` and `tether label import` refuse empty responses, as no one
can judge one. A prompt left with no response, or with a single one where k asked for more
(nothing to compare), has no row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from tether.config import SampleConfig
from tether.data.prompts import encode_prompts, load_prompts
from tether.data.tokenize import wants_chat_template
from tether.device import pick_device
from tether.errors import DataError
from tether.files import atomic_write_text, check_output
from tether.models.loading import load_causal_lm, load_tokenizer, resolve
from tether.rollout.backends import make_generator
from tether.rollout.base import SamplingParams


def run(cfg: SampleConfig) -> Path:
    """Sample cfg.k responses for each prompt; return the path of candidates.jsonl."""
    # The output path and the data first (neither should wait for sampling), then the model.
    check_output(cfg.output)
    tokenizer = load_tokenizer(cfg.policy)
    rows, stats = load_prompts(cfg.prompts, cfg.num_prompts, cfg.skip_bad_rows)
    chat = wants_chat_template(tokenizer, cfg.chat_template)
    prompt_ids, truncated = encode_prompts(tokenizer, [r.messages for r in rows], chat,
                                           cfg.max_prompt_length)
    stats.truncated = truncated
    print(f"prompts: {stats.summary()}; using {len(rows)}"
          + (f" (prompts truncated to their last {cfg.max_prompt_length} tokens)"
             if truncated else ""))

    if cfg.backend == "vllm":
        from tether.rollout.vllm import require_vllm

        require_vllm()  # before loading anything
    model = load_causal_lm(cfg.policy)
    if cfg.backend != "vllm":  # vllm holds its own copy on the GPU
        model.to(pick_device(cfg.device))
    generator = make_generator(cfg.backend, model, tokenizer, bf16=cfg.bf16,
                               model_path=str(resolve(cfg.policy)) if cfg.backend == "vllm"
                               else "")
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens)
    sampling = {"policy": cfg.policy, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}

    lines: list[str] = []
    num_tokens_total = num_finished = num_empty = prompts_dropped = 0
    need = min(cfg.k, 2)  # responses a row needs: two to compare, or the one k asks for
    started = time.perf_counter()
    progress = tqdm(total=len(rows), desc="sample", unit="prompt", dynamic_ncols=True)
    for batch_index, start in enumerate(range(0, len(rows), cfg.batch_size)):
        batch = prompt_ids[start:start + cfg.batch_size]
        # One seed per batch: the same seed and batch_size reproduce every sample.
        results = generator.generate(batch, cfg.k, params, seed=cfg.seed + batch_index)
        for prompt_row, generations in zip(rows[start:start + cfg.batch_size], results,
                                           strict=True):
            num_tokens_total += sum(len(g.response_ids) for g in generations)
            num_finished += sum(g.finished for g in generations)
            texts = [tokenizer.decode(g.response_ids, skip_special_tokens=True)
                     for g in generations]
            kept = [(text, g) for text, g in zip(texts, generations, strict=True) if text.strip()]
            num_empty += len(generations) - len(kept)
            if len(kept) < need:
                prompts_dropped += 1
                continue
            row = {
                **prompt_row.columns,  # e.g. the answer a gold scorer checks against
                "prompt": prompt_row.prompt,
                "responses": [text for text, _ in kept],
                "num_tokens": [len(g.response_ids) for _, g in kept],
                "finished": [g.finished for _, g in kept],
                "sampling": sampling,
            }
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        progress.update(len(batch))
    progress.close()
    elapsed = time.perf_counter() - started

    output = Path(cfg.output)
    num_responses = len(rows) * cfg.k
    if not lines:
        raise DataError(f"{cfg.policy}: {num_empty} of the {num_responses} responses it sampled "
                        f"are empty or only whitespace (it ends at once), leaving no prompt "
                        f"with {need}: nothing to write to {output}")
    atomic_write_text(output, "".join(lines))
    print(f"sampled {len(rows)} prompts x {cfg.k} = {num_responses} responses: "
          f"{num_tokens_total / num_responses:.1f} tokens on average, "
          f"{num_finished / num_responses:.0%} finished with EOS, {elapsed:.1f} s, "
          f"{num_tokens_total / elapsed:.1f} tokens/s -> {output}")
    if num_empty:
        print(f"dropped {num_empty} empty or whitespace-only responses (no one can rank them)"
              + (f", and {prompts_dropped} prompts left with fewer than {need}"
                 if prompts_dropped else ""))
    return output
