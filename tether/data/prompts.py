"""Prompt sets ({"prompt": ...} rows): read them, and tokenise them for generation.

`tether sample`, `tether eval`, PPO's rollouts and the DPO and pipeline evaluations all sample
from prompts read and encoded this way.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.data.records import LoadStats, load_records, parse_prompt
from tether.data.tokenize import Messages, encode_prompt


def _parse(record: Any, where: str) -> tuple[Any, Messages]:
    """(the prompt exactly as given, the prompt as chat messages)."""
    messages = parse_prompt(record, where)  # validates; raises BadRow with file:line
    return record["prompt"], messages


def load_prompts(source: str, num_prompts: int = 0, skip_bad_rows: bool = False
                 ) -> tuple[list[tuple[Any, Messages]], LoadStats]:
    """(prompt as given, prompt as chat messages) for the first `num_prompts` rows (0: all).
    Used by `tether sample` and `tether eval`, whose configs both call the key skip_bad_rows."""
    stats = LoadStats()
    rows = load_records(source, _parse, skip_bad_rows, stats, skip_key="skip_bad_rows")
    if num_prompts:
        rows = rows[:num_prompts]
    return rows, stats


def encode_prompts(tokenizer: PreTrainedTokenizerBase, messages: list[Messages],
                   chat_template: bool, max_prompt_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt, and how many were cut to their last max_prompt_length
    tokens (the end is what the response continues, so it is the part to keep)."""
    prompt_ids, truncated = [], 0
    for m in messages:
        ids = encode_prompt(tokenizer, m, chat_template, max_prompt_length)
        if len(ids) > max_prompt_length:
            ids = ids[len(ids) - max_prompt_length:]
            truncated += 1
        prompt_ids.append(ids)
    return prompt_ids, truncated
