"""Rows to validated records: the fields every data format shares, and loading a whole source.

A record's prompt, chat messages and responses are checked here the same way for SFT
demonstrations, preferences and prompts; a bad row raises `BadRow` naming its file:line.
`load_records` parses every row of a source (data.readers reads any supported format), stops at
a bad one or skips and counts it, and `load_splits` gives a stage its train and eval sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.config import DataConfig
from tether.data.order import split_holdout
from tether.data.readers import BadRow, read_all_rows
from tether.data.tokenize import Messages
from tether.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


def parse_messages(value: Any, name: str, where: str) -> Messages:
    """A non-empty list of {role, content} chat messages; `name` is the field, for errors."""
    if not isinstance(value, list) or not value:
        raise BadRow(f"{where}: '{name}' must be a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                or m.get("role") not in ROLES:
            raise BadRow(f"{where}: {name}[{i}] must be an object with 'role' (one of "
                         f"{', '.join(ROLES)}) and 'content' (a string)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def parse_prompt(record: Any, where: str) -> Messages:
    """The prompt of a record as chat messages (a plain string becomes one user turn)."""
    if not isinstance(record, dict):
        raise BadRow(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt" not in record:
        raise BadRow(f"{where}: missing field 'prompt'")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise BadRow(f"{where}: empty prompt")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return parse_messages(prompt, "prompt", where)
    raise BadRow(f"{where}: 'prompt' must be a string or a list of messages, "
                 f"got {type(prompt).__name__}")


class EmptyResponse(BadRow):
    """A response that is empty or only whitespace: far more often a broken export or a
    misnamed field than a policy that ended at once, so an error unless the data is meant to
    hold them (a loader names the option that accepts them)."""


def parse_response(value: Any, name: str, where: str, allow_empty: bool = False) -> str:
    """A response given as a string, or as a list holding one assistant message; empty or only
    whitespace is an error (EmptyResponse) unless `allow_empty`."""
    if isinstance(value, list):
        messages = parse_messages(value, name, where)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise BadRow(f"{where}: '{name}' as messages must be a single assistant message")
        value = messages[0]["content"]
    if not isinstance(value, str):
        raise BadRow(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise EmptyResponse(f"{where}: '{name}' is empty or only whitespace")
    return value


@dataclass
class LoadStats:
    """What loading one source kept and left out, counted for the printed summary."""

    rows: int = 0
    bad_rows: int = 0
    first_bad: str = ""
    dropped_too_long: int = 0
    truncated: int = 0
    held_out: int = 0  # rows moved to the eval split
    no_pairs: int = 0  # preference rows whose responses all tie
    first_no_pairs: str = ""  # where the first of them is, for the summary

    def summary(self) -> str:
        parts = [f"{self.rows} rows"]
        if self.held_out:
            parts.append(f"{self.held_out} of them held out for eval")
        if self.bad_rows:
            parts.append(f"{self.bad_rows} bad rows skipped (first: {self.first_bad})")
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped as longer than max_length")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.no_pairs:
            parts.append(f"{self.no_pairs} skipped as all ties, giving no pairs (first: "
                         f"{self.first_no_pairs})")
        return ", ".join(parts)


def load_records(source: str, parse, skip_bad_rows: bool, stats: LoadStats,
                 skip_key: str = "data.skip_bad_rows", allow_empty_key: str = "",
                 split: str = "train", subset: str = "",
                 columns: dict[str, str] | None = None) -> list:
    """Parse every row with `parse(record, where)`; bad rows stop the run or are counted.
    `skip_key` is the config key that skips them, and `allow_empty_key` the one that accepts
    empty responses, for the error message. `split`, `subset`, `columns`: as data.readers
    reads them."""
    out = []
    for row in read_all_rows(source, "rows", split, subset, columns):
        try:
            if isinstance(row.record, BadRow):
                raise row.record
            out.append(parse(row.record, row.where))
        except BadRow as e:
            if not skip_bad_rows:
                fix = f"{skip_key}=true to skip bad rows"
                if isinstance(e, EmptyResponse) and allow_empty_key:
                    fix = f"{allow_empty_key}=true to accept empty responses, or {fix}"
                raise DataError(f"{e} (set {fix})") from None
            stats.bad_rows += 1
            stats.first_bad = stats.first_bad or str(e)
    stats.rows += len(out)
    if not out:
        raise DataError(f"{source}: no usable rows (all {stats.bad_rows} skipped as bad)")
    return out


def load_splits(cfg: DataConfig, encode_all, seed: int) -> tuple[list, list, dict]:
    """(train, eval, stats): `encode_all(source, split) -> (items, LoadStats)` on data.train
    (its data.split), and on data.eval (its data.eval_split) if given, else a seeded
    data.eval_fraction of train held out."""
    train, train_stats = encode_all(cfg.train, cfg.split)
    stats = {"train": train_stats}
    if cfg.eval:
        eval_set, stats["eval"] = encode_all(cfg.eval, cfg.eval_split)
    else:
        train, eval_set = split_holdout(train, cfg.eval_fraction, seed)
        train_stats.held_out = len(eval_set)
    return train, eval_set, stats
