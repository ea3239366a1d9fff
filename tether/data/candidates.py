"""Candidates: K responses per prompt, as `tether sample` writes them (candidates.jsonl).

They are what gets labelled next: by the simulated labeler (`tether label simulate`) or by
people, once imported into a labeling project. {"prompt", "responses"} is read, and any field
besides those and the others `tether sample` writes (token counts, sampling settings) is a
column of the prompt's row (`tether sample` copies them, e.g. `answer`), kept as the row's
"columns" for a gold scorer that reads them (tether.tasks.gold).

A row's prompt and responses are checked as every record's are (tether.data.records: message
roles, no empty response). A response with the same text as an earlier one of its row is then
merged into it, before anyone ranks them: at a low temperature a policy often samples one text
twice, and which of two identical texts is better is no question to ask a labeler (a ranking
of them would put a text above itself, which the preference reader refuses). A row left with
a single response has nothing to compare, and is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tether.data.readers import BadRow, read_all_rows
from tether.errors import DataError

# What `tether sample` writes of its own in a candidates row; any other field is a column of the
# prompt's row.
SAMPLE_FIELDS = ("prompt", "responses", "num_tokens", "finished", "sampling")


@dataclass
class Candidates:
    # {prompt, responses, source, columns, and finished where the file has it}
    rows: list[dict[str, Any]] = field(default_factory=list)
    merged: int = 0  # responses merged into an earlier one of their row with the same text
    left_out: int = 0  # rows whose responses were all the same text
    first_left_out: str = ""  # where the first of them is

    def summary(self) -> str:
        parts = [f"{len(self.rows)} rows"]
        if self.merged:
            parts.append(f"{self.merged} identical responses merged")
        if self.left_out:
            parts.append(f"{self.left_out} left out as all their responses are the same text "
                         f"(first: {self.first_left_out})")
        return ", ".join(parts)


def read_candidates(source: str) -> Candidates:
    """The candidate rows of a file; a bad row stops the run with its file:line."""
    return parse_candidates((row.where, row.record)
                            for row in read_all_rows(source, "candidate rows"))


def parse_candidates(rows: Iterable[tuple[str, Any]]) -> Candidates:
    """Candidates from (where, record) pairs: each row checked, identical responses merged."""
    out = Candidates()
    for where, record in rows:
        prompt, responses = parse_candidate(record, where)
        first: dict[str, int] = {}  # each text's first position; in order
        for i, text in enumerate(responses):
            first.setdefault(text, i)
        distinct = list(first)
        out.merged += len(responses) - len(distinct)
        if len(distinct) < 2:
            out.left_out += 1
            out.first_left_out = out.first_left_out or where
            continue
        columns = {k: v for k, v in record.items() if k not in SAMPLE_FIELDS}
        row = {"prompt": prompt, "responses": distinct, "source": where, "columns": columns}
        finished = parse_finished(record, len(responses), where)
        if finished is not None:
            row["finished"] = [finished[first[text]] for text in distinct]
        out.rows.append(row)
    if not out.rows and out.left_out:
        raise DataError(f"no candidate row has two different responses to compare (first: "
                        f"{out.first_left_out})")
    return out


def parse_finished(record: dict, k: int, where: str) -> list[bool] | None:
    """The row's 'finished' (whether each response ended with EOS, as `tether sample` writes
    it), or None where the row has none."""
    finished = record.get("finished")
    if finished is not None and not (isinstance(finished, list) and len(finished) == k
                                     and all(isinstance(f, bool) for f in finished)):
        raise BadRow(f"{where}: 'finished' must be a list of {k} booleans (whether each "
                     f"response ended with EOS), got {finished!r}")
    return finished


def parse_finished_flag(record: dict, key: str, where: str) -> bool:
    """One response's flag (a pair's chosen_finished / rejected_finished, a KTO row's
    finished): true unless given as false."""
    value = record.get(key, True)
    if not isinstance(value, bool):
        raise BadRow(f"{where}: '{key}' must be true or false (whether the response ended "
                     f"with EOS), got {value!r}")
    return value


def parse_candidate(record: Any, where: str) -> tuple[Any, list[str]]:
    """(the prompt as given, the responses) of one candidates record, or BadRow naming
    `where`."""
    # imported here: tether.data.records pulls in torch and transformers (seconds), which the
    # labeling app's commands that read no candidates (serve, stats, export) never need
    from tether.data.records import parse_prompt, parse_response

    if isinstance(record, BadRow):
        raise record
    parse_prompt(record, where)  # an object with a prompt: a string, or messages with roles
    if "responses" not in record:
        raise BadRow(f"{where}: missing 'responses' (a list of K >= 2 response strings, as "
                     f"written by `tether sample`)")
    responses = record["responses"]
    if not isinstance(responses, list):
        raise BadRow(f"{where}: 'responses' must be a list of strings, got "
                     f"{type(responses).__name__}")
    if len(responses) < 2:
        what = "empty" if not responses else "a single response"
        raise BadRow(f"{where}: 'responses' is {what}; comparing needs at least 2")
    return record["prompt"], [parse_response(r, f"responses[{i}]", where)
                              for i, r in enumerate(responses)]
