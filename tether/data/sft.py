"""SFT demonstrations: {prompt, completion} or {messages} rows, tokenised, with an eval set."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.config import DataConfig
from tether.data.readers import BadRow
from tether.data.records import (
    LoadStats,
    load_records,
    load_splits,
    parse_messages,
    parse_prompt,
    parse_response,
)
from tether.data.tokenize import Encoded, Messages, encode_example, wants_chat_template
from tether.errors import DataError


def parse_sft(record: Any, where: str, allow_empty: bool = False) -> tuple[Messages, str]:
    """(prompt messages, response) from {prompt, completion} or {messages: [..., assistant]};
    an empty response is an error unless `allow_empty`."""
    if isinstance(record, dict) and "messages" in record:
        messages = parse_messages(record["messages"], "messages", where)
        if messages[-1]["role"] != "assistant":
            raise BadRow(f"{where}: the last of 'messages' must be the assistant's response")
        if len(messages) < 2:
            raise BadRow(f"{where}: 'messages' needs a prompt turn before the response")
        return messages[:-1], parse_response(messages[-1]["content"], "messages[-1]", where,
                                             allow_empty)
    prompt = parse_prompt(record, where)
    if "completion" not in record:
        raise BadRow(f"{where}: missing field 'completion' (an SFT row is "
                     f"{{prompt, completion}} or {{messages}})")
    return prompt, parse_response(record["completion"], "completion", where, allow_empty)


@dataclass
class SFTData:
    train: list[Encoded]
    eval: list[Encoded]
    stats: dict[str, LoadStats] = field(default_factory=dict)


def load_sft_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> SFTData:
    chat = wants_chat_template(tokenizer, cfg.chat_template)

    def encode_all(source: str, split: str) -> tuple[list[Encoded], LoadStats]:
        stats = LoadStats()
        encoded = []
        parse = partial(parse_sft, allow_empty=cfg.allow_empty_responses)
        for messages, response in load_records(source, parse, cfg.skip_bad_rows, stats,
                                               allow_empty_key="data.allow_empty_responses",
                                               split=split, subset=cfg.subset,
                                               columns=cfg.columns):
            e = encode_example(tokenizer, messages, response, chat_template=chat,
                               max_length=cfg.max_length, truncation=cfg.truncation)
            if e is None:
                stats.dropped_too_long += 1
                continue
            stats.truncated += e.truncated
            encoded.append(e)
        if not encoded:
            raise DataError(f"{source}: every row is longer than data.max_length="
                            f"{cfg.max_length}")
        return encoded, stats

    return SFTData(*load_splits(cfg, encode_all, seed))
