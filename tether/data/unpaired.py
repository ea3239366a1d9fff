"""Unpaired feedback for KTO: one response to a prompt with a thumbs up or down.

Rows are TRL's unpaired-preference format, `{"prompt": ..., "completion": ..., "label": true}`
(true: desirable, a thumbs up; false: undesirable), with the prompt a string or a list of chat
messages and the completion a string or one assistant message, as DPO's rows take them. 1 and
0 are read as true and false (exports from spreadsheets and pandas write them); anything else
is an error naming its file:line. An optional `"finished": false` marks a sampled completion
that never ended (it reached the sampler's token limit; `tether sample` records it). It is
read and checked, and carried by exports, but KTO still appends an EOS to every completion,
unlike DPO: encoded without one, the thumbs down on cut-off completions (42% of the downs on
the answers task) fell on their words alone, and the policy learned to stop early (13.9
tokens, 98% EOS, held-out gold 0.06 against 0.51 with the EOS; BENCHMARKS.md, "KTO on
completions that never ended"). With the EOS, lowering the likelihood of ending mid-sentence
where the sampler cut satisfies a thumbs down at no cost to what the policy writes.

Each row is tokenised as DPO tokenises a response (tether.data.tokenize.encode_example), and
once more with another row's completion after its own prompt: the mismatched pair whose
log-ratio KTO's reference point z0 averages (tether.losses.kto). The partner is fixed when the
data loads (the previous row in a seeded shuffle of the split, skipping rows with the same
prompt), as TRL fixes its KL pairs before training, so the reference log-probs of both can be
computed once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.config import DataConfig
from tether.data.candidates import parse_finished_flag
from tether.data.readers import BadRow
from tether.data.records import LoadStats, load_records, load_splits, parse_prompt, parse_response
from tether.data.tokenize import Encoded, Messages, encode_example, wants_chat_template
from tether.errors import DataError


@dataclass
class Unpaired:
    prompt: Messages
    completion: str
    desirable: bool
    where: str
    finished: bool = True  # whether the completion ended with EOS (False: cut at the limit)

    def prompt_key(self) -> tuple[tuple[str, str], ...]:
        return tuple((m["role"], m["content"]) for m in self.prompt)


def parse_label(value: Any, where: str) -> bool:
    """true / false, or 1 / 0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRow(f"{where}: 'label' must be true (thumbs up) or false (thumbs down), or 1 / 0; "
                 f"got {value!r}")


def parse_unpaired(record: Any, where: str, allow_empty: bool = False) -> Unpaired:
    prompt = parse_prompt(record, where)
    if "chosen" in record or "responses" in record:
        raise BadRow(f"{where}: a preference row; kto reads unpaired rows {{prompt, completion, "
                     f"label}} (train preferences with `tether dpo`)")
    for key in ("completion", "label"):
        if key not in record:
            raise BadRow(f"{where}: missing field '{key}' (kto reads {{prompt, completion, "
                         f"label}} rows)")
    completion = parse_response(record["completion"], "completion", where, allow_empty)
    return Unpaired(prompt, completion, parse_label(record["label"], where), where,
                    parse_finished_flag(record, "finished", where))


@dataclass
class EncodedUnpaired:
    """`responses`: [this row's completion, another row's completion], each after this row's
    prompt (the second is the mismatched pair of the reference point). The field has DPO's
    name so that DPO's reference machinery (tether.trainers.dpo) reads these rows as it reads
    a prompt's responses."""

    responses: list[Encoded]
    desirable: bool
    source: Unpaired


@dataclass
class UnpairedData:
    train: list[EncodedUnpaired]
    eval: list[EncodedUnpaired]
    stats: dict[str, LoadStats] = field(default_factory=dict)


def class_counts(rows: list) -> tuple[int, int]:
    """(desirable, undesirable) rows, of EncodedUnpaired or Unpaired."""
    up = sum(r.desirable for r in rows)
    return up, len(rows) - up


def check_both_classes(rows: list, what: str) -> None:
    up, down = class_counts(rows)
    if not (up and down):
        label = "true (desirable)" if up else "false (undesirable)"
        raise DataError(f"{what}: all {len(rows)} rows are labelled {label}; KTO needs both "
                        f"thumbs up and thumbs down rows")


def mismatched_partners(rows: list[Unpaired], seed: int) -> list[int]:
    """For each row, the index of the row whose completion pairs with its prompt: the nearest
    one before it in a seeded shuffle (cyclic) with another prompt (a prompt with its own other
    response is not a mismatched pair); the one just before it when all rows share a prompt.
    Linear in the rows, however many share a prompt."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    keys = [rows[i].prompt_key() for i in order]
    n = len(order)
    partner = [0] * n
    other = None  # the position just before the current run of one prompt
    for pos in range(2 * n):  # two laps: the first rows see the last ones
        if pos and keys[pos % n] != keys[(pos - 1) % n]:
            other = pos - 1
        if pos >= n:
            partner[order[pos - n]] = order[(pos - n - 1) % n if other is None else other % n]
    return partner


def load_unpaired_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase,
                       seed: int) -> UnpairedData:
    """Read, validate and tokenise thumbs up / down rows, with each one's mismatched pair."""
    chat = wants_chat_template(tokenizer, cfg.chat_template)

    def encode(messages: Messages, row: Unpaired, truncation: str) -> Encoded | None:
        """`row`'s completion after `messages`, ended with EOS whether or not it finished
        (see the module's docstring)."""
        return encode_example(tokenizer, messages, row.completion, chat_template=chat,
                              max_length=cfg.max_length, truncation=truncation)

    def encode_all(source: str, split: str) -> tuple[list[EncodedUnpaired], LoadStats]:
        stats = LoadStats()
        out = []
        parse = partial(parse_unpaired, allow_empty=cfg.allow_empty_responses)
        rows = load_records(source, parse, cfg.skip_bad_rows, stats,
                            allow_empty_key="data.allow_empty_responses", split=split,
                            subset=cfg.subset, columns=cfg.columns)
        check_both_classes(rows, source)
        for row in rows:
            encoded = encode(row.prompt, row, cfg.truncation)
            if encoded is None:
                stats.dropped_too_long += 1
                continue
            stats.truncated += encoded.truncated
            out.append(EncodedUnpaired([encoded], row.desirable, row))
        if not out:
            raise DataError(f"{source}: no usable rows ({stats.summary()})")
        return out, stats

    train, eval_set, stats = load_splits(cfg, encode_all, seed)
    check_both_classes(train, f"{cfg.train} (the training rows left after holding out eval)")
    for split in (train, eval_set):
        partners = mismatched_partners([r.source for r in split], seed)
        for row, j in zip(split, partners, strict=True):
            # Only an estimate of the drift: cut to fit, never dropped.
            row.responses.append(encode(row.source.prompt, split[j].source, "prompt_left"))
    return UnpairedData(train, eval_set, stats)
