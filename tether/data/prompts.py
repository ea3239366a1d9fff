"""Prompt sets ({"prompt": ...} rows): read them, and tokenise them for generation.

`tether sample`, `tether eval`, PPO's rollouts and the DPO and pipeline evaluations all sample
from prompts read and encoded this way. A row's other fields (say `answer`, a reference the
reward function checks against) are kept as its `columns` and reach every scorer of a response
to it (tether.tasks.gold), as a dataset's extra columns reach a reward function in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.data.records import LoadStats, load_records, parse_prompt
from tether.data.tokenize import Messages, encode_prompt


@dataclass
class PromptRow:
    """One prompt: as given (a string or chat messages), as chat messages, and the row's other
    fields (`columns`, e.g. {"answer": "42"})."""

    prompt: Any
    messages: Messages
    columns: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The row again, as it would be written: {"prompt": ..., **columns}."""
        return {"prompt": self.prompt, **self.columns}


def _parse(record: Any, where: str) -> PromptRow:
    messages = parse_prompt(record, where)  # validates; raises BadRow with file:line
    return PromptRow(record["prompt"], messages,
                     {k: v for k, v in record.items() if k != "prompt"})


def load_prompts(source: str, num_prompts: int = 0, skip_bad_rows: bool = False
                 ) -> tuple[list[PromptRow], LoadStats]:
    """The first `num_prompts` rows (0: all). Used by `tether sample` and `tether eval`, whose
    configs both call the key skip_bad_rows."""
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
