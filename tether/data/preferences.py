"""Preference data: chosen/rejected pairs and K-way rankings, as one shape.

A pair is a ranking of two responses (ranks [0, 1]); a ranking of K responses stands for its
C(K, 2) pairs, ties giving none. Each response is tokenised once, whatever the number of pairs
it takes part in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.config import DataConfig
from tether.data.candidates import parse_finished, parse_finished_flag
from tether.data.implicit_prompt import has_implicit_prompt, split_implicit_prompt
from tether.data.readers import BadRow
from tether.data.records import (
    LoadStats,
    load_records,
    load_splits,
    parse_prompt,
    parse_response,
)
from tether.data.tokenize import Encoded, Messages, encode_example, wants_chat_template
from tether.errors import DataError


@dataclass
class Preference:
    prompt: Messages
    responses: list[str]
    ranks: list[int]  # lower is better; equal ranks are ties
    where: str
    gold: list[float] | None = None  # gold scores, when a simulated labeler wrote them
    # whether each sampled response ended with EOS (`tether sample`); None: all did
    finished: list[bool] | None = None

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs."""
        k = len(self.responses)
        return [(i, j) for i in range(k) for j in range(k) if self.ranks[i] < self.ranks[j]]

    def prompt_key(self) -> tuple[tuple[str, str], ...]:
        """The prompt as a hashable value: rows with equal keys are the same prompt (a plain
        string and the one user message it stands for are equal)."""
        return tuple((m["role"], m["content"]) for m in self.prompt)


def parse_preference(record: Any, where: str, allow_empty: bool = False) -> Preference:
    """A pair or a ranking, checked the same wherever preferences come in (rm, dpo, gold items,
    the labeling database): prompt, responses (empty ones only if `allow_empty`), ranks, and
    that no text is preferred to itself. A pair without a prompt is split into one
    (tether.data.implicit_prompt)."""
    if has_implicit_prompt(record):
        record = split_implicit_prompt(record, where)
    prompt = parse_prompt(record, where)
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if name not in record:
                raise BadRow(f"{where}: has '{'chosen' if name == 'rejected' else 'rejected'}' "
                             f"but no '{name}'")
        chosen = parse_response(record["chosen"], "chosen", where, allow_empty)
        rejected = parse_response(record["rejected"], "rejected", where, allow_empty)
        _check_no_text_above_itself([chosen, rejected], [0, 1], ["chosen", "rejected"], where)
        gold = None
        if isinstance(record.get("gold_chosen"), (int, float)) and \
                isinstance(record.get("gold_rejected"), (int, float)):
            gold = [float(record["gold_chosen"]), float(record["gold_rejected"])]
        finished = None
        if "chosen_finished" in record or "rejected_finished" in record:
            finished = [parse_finished_flag(record, f"{name}_finished", where)
                        for name in ("chosen", "rejected")]
        return Preference(prompt, [chosen, rejected], [0, 1], where, gold, finished)
    if "responses" not in record:
        raise BadRow(f"{where}: a preference row needs 'chosen' and 'rejected', or "
                     f"'responses' and 'ranks'")
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise BadRow(f"{where}: 'responses' must be a list of at least 2 responses")
    names = [f"responses[{i}]" for i in range(len(responses))]
    responses = [parse_response(r, name, where, allow_empty)
                 for r, name in zip(responses, names, strict=True)]
    ranks = record.get("ranks")
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                              for r in ranks):
        raise BadRow(f"{where}: 'ranks' must be a list of integers (lower is better)")
    if len(ranks) != len(responses):
        raise BadRow(f"{where}: {len(ranks)} ranks for {len(responses)} responses")
    _check_no_text_above_itself(responses, ranks, names, where)
    gold = record.get("gold_scores")
    if not (isinstance(gold, list) and len(gold) == len(responses)
            and all(isinstance(g, (int, float)) for g in gold)):
        gold = None
    finished = parse_finished(record, len(responses), where)
    return Preference(prompt, responses, ranks, where, gold, finished)


def _check_no_text_above_itself(responses: list[str], ranks: list[int], names: list[str],
                                where: str) -> None:
    """The same text at two different ranks would train a model that it beats itself. (Tied,
    it gives no pair, so it does no harm.)"""
    first: dict[str, int] = {}
    for i, text in enumerate(responses):
        j = first.setdefault(text, i)
        if ranks[i] != ranks[j]:
            raise BadRow(f"{where}: '{names[j]}' and '{names[i]}' are the same text, so neither "
                         f"can be preferred to the other")


@dataclass
class EncodedPreference:
    responses: list[Encoded]  # prompt + response (+ EOS), one per response
    ranks: list[int]
    source: Preference


@dataclass
class PreferenceData:
    train: list[EncodedPreference]
    eval: list[EncodedPreference]
    stats: dict[str, LoadStats] = field(default_factory=dict)


def load_preference_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int,
                         encode=None) -> PreferenceData:
    """Read, validate and tokenise preferences. `encode(messages, response, finished)` ->
    Encoded defaults to the causal-LM encoding (chat template, response, and EOS where the
    response ended with one: a policy's likelihood of what it sampled)."""
    if encode is None:
        chat = wants_chat_template(tokenizer, cfg.chat_template)

        def encode(messages: Messages, response: str, finished: bool) -> Encoded | None:
            return encode_example(tokenizer, messages, response, chat_template=chat,
                                  max_length=cfg.max_length, truncation=cfg.truncation,
                                  eos=finished)

    def encode_all(source: str, split: str) -> tuple[list[EncodedPreference], LoadStats]:
        stats = LoadStats()
        out = []
        parse = partial(parse_preference, allow_empty=cfg.allow_empty_responses)
        for pref in load_records(source, parse, cfg.skip_bad_rows, stats,
                                 allow_empty_key="data.allow_empty_responses", split=split,
                                 subset=cfg.subset, columns=cfg.columns):
            if not pref.pairs():  # all ties: nothing to learn from
                stats.no_pairs += 1
                stats.first_no_pairs = stats.first_no_pairs or pref.where
                continue
            finished = pref.finished or [True] * len(pref.responses)
            encoded = [encode(pref.prompt, r, f)
                       for r, f in zip(pref.responses, finished, strict=True)]
            if any(e is None for e in encoded):
                stats.dropped_too_long += 1
                continue
            stats.truncated += sum(e.truncated for e in encoded)
            out.append(EncodedPreference(encoded, pref.ranks, pref))
        if not out:
            raise DataError(f"{source}: no usable preference rows ({stats.summary()})")
        return out, stats

    return PreferenceData(*load_splits(cfg, encode_all, seed))


def parse_responses(record: Any, where: str) -> tuple[Messages, list[str]]:
    """(prompt, responses) from {prompt, response}, {prompt, responses} (candidates) or a
    preference row: the texts to score or to normalise rewards against."""
    if has_implicit_prompt(record):
        record = split_implicit_prompt(record, where)
    prompt = parse_prompt(record, where)
    # Any text a policy may write is scored, the empty one included (it ended at once).
    if "response" in record:
        return prompt, [parse_response(record["response"], "response", where, allow_empty=True)]
    if "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not responses:
            raise BadRow(f"{where}: 'responses' must be a non-empty list")
        return prompt, [parse_response(r, f"responses[{i}]", where, allow_empty=True)
                        for i, r in enumerate(responses)]
    if "chosen" in record and "rejected" in record:
        return prompt, [parse_response(record[n], n, where, allow_empty=True)
                        for n in ("chosen", "rejected")]
    raise BadRow(f"{where}: needs 'response', 'responses', or 'chosen' and 'rejected'")
