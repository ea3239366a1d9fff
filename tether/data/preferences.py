"""Preference data: chosen/rejected pairs and K-way rankings, as one shape.

A pair is a ranking of two responses (ranks [0, 1]); a ranking of K responses stands for its
C(K, 2) pairs, ties giving none. Each response is tokenised once, whatever the number of pairs
it takes part in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from tether.config import DataConfig
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


def _response(value: Any, name: str, where: str) -> str:
    # Samples compared by a labeler may be empty: the policy ended its response at once.
    return parse_response(value, name, where, allow_empty=True)


@dataclass
class Preference:
    prompt: Messages
    responses: list[str]
    ranks: list[int]  # lower is better; equal ranks are ties
    where: str
    gold: list[float] | None = None  # gold scores, when a simulated labeler wrote them

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs."""
        k = len(self.responses)
        return [(i, j) for i in range(k) for j in range(k) if self.ranks[i] < self.ranks[j]]

    def prompt_key(self) -> tuple[tuple[str, str], ...]:
        """The prompt as a hashable value: rows with equal keys are the same prompt (a plain
        string and the one user message it stands for are equal)."""
        return tuple((m["role"], m["content"]) for m in self.prompt)


def parse_preference(record: Any, where: str) -> Preference:
    prompt = parse_prompt(record, where)
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if name not in record:
                raise BadRow(f"{where}: has '{'chosen' if name == 'rejected' else 'rejected'}' "
                             f"but no '{name}'")
        chosen = _response(record["chosen"], "chosen", where)
        rejected = _response(record["rejected"], "rejected", where)
        if chosen == rejected:
            raise BadRow(f"{where}: 'chosen' and 'rejected' are the same text")
        gold = None
        if isinstance(record.get("gold_chosen"), (int, float)) and \
                isinstance(record.get("gold_rejected"), (int, float)):
            gold = [float(record["gold_chosen"]), float(record["gold_rejected"])]
        return Preference(prompt, [chosen, rejected], [0, 1], where, gold)
    if "responses" not in record:
        raise BadRow(f"{where}: a preference row needs 'chosen' and 'rejected', or "
                     f"'responses' and 'ranks'")
    responses = record["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise BadRow(f"{where}: 'responses' must be a list of at least 2 responses")
    responses = [_response(r, f"responses[{i}]", where) for i, r in enumerate(responses)]
    ranks = record.get("ranks")
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool)
                                              for r in ranks):
        raise BadRow(f"{where}: 'ranks' must be a list of integers (lower is better)")
    if len(ranks) != len(responses):
        raise BadRow(f"{where}: {len(ranks)} ranks for {len(responses)} responses")
    gold = record.get("gold_scores")
    if not (isinstance(gold, list) and len(gold) == len(responses)
            and all(isinstance(g, (int, float)) for g in gold)):
        gold = None
    return Preference(prompt, responses, ranks, where, gold)


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
    """Read, validate and tokenise preferences. `encode(messages, response)` -> Encoded
    defaults to the causal-LM encoding (chat template, response + EOS)."""
    if encode is None:
        chat = wants_chat_template(tokenizer, cfg.chat_template)

        def encode(messages: Messages, response: str) -> Encoded | None:
            return encode_example(tokenizer, messages, response, chat_template=chat,
                                  max_length=cfg.max_length, truncation=cfg.truncation)

    def encode_all(source: str) -> tuple[list[EncodedPreference], LoadStats]:
        stats = LoadStats()
        out = []
        for pref in load_records(source, parse_preference, cfg.skip_bad_rows, stats):
            if not pref.pairs():
                stats.no_pairs += 1  # all ties: nothing to learn from
                continue
            encoded = [encode(pref.prompt, r) for r in pref.responses]
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
    prompt = parse_prompt(record, where)
    if "response" in record:
        return prompt, [_response(record["response"], "response", where)]
    if "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not responses:
            raise BadRow(f"{where}: 'responses' must be a non-empty list")
        return prompt, [_response(r, f"responses[{i}]", where)
                        for i, r in enumerate(responses)]
    if "chosen" in record and "rejected" in record:
        return prompt, [_response(record[n], n, where) for n in ("chosen", "rejected")]
    raise BadRow(f"{where}: needs 'response', 'responses', or 'chosen' and 'rejected'")
