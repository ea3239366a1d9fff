"""Candidates: K responses per prompt, as `tether sample` writes them (candidates.jsonl).

They are what gets labelled next: by the simulated labeler (`tether label simulate`) or by
people, once imported into a labeling project. Only {"prompt", "responses"} is read; the other
fields `tether sample` writes (token counts, sampling settings) are left alone.
"""

from __future__ import annotations

from typing import Any

from tether.data.readers import BadRow, read_rows
from tether.errors import DataError


def read_candidates(source: str) -> list[dict[str, Any]]:
    """Candidate rows {"prompt", "responses": [K >= 2 strings]}; a bad row stops the run with
    its file:line."""
    rows = [parse_candidate(row.record, row.where) for row in read_rows(source)]
    if not rows:
        raise DataError(f"{source}: no candidate rows")
    return rows


def parse_candidate(record: Any, where: str) -> dict[str, Any]:
    """{"prompt", "responses"} from one candidates record, or DataError naming `where`."""
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'prompt' and 'responses', got "
                        f"{type(record).__name__}")
    if "prompt" not in record:
        raise DataError(f"{where}: missing 'prompt'")
    prompt = record["prompt"]
    if not isinstance(prompt, (str, list)):
        raise DataError(f"{where}: 'prompt' must be a string or a list of messages, got "
                        f"{type(prompt).__name__}")
    if "responses" not in record:
        raise DataError(f"{where}: missing 'responses' (a list of K >= 2 response strings, "
                        f"as written by `tether sample`)")
    responses = record["responses"]
    if not isinstance(responses, list):
        raise DataError(f"{where}: 'responses' must be a list of strings, got "
                        f"{type(responses).__name__}")
    if len(responses) < 2:
        what = "empty" if not responses else "a single response"
        raise DataError(f"{where}: 'responses' is {what}; comparing needs at least 2")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise DataError(f"{where}: responses[{i}] must be a string, got {type(r).__name__}")
    return {"prompt": prompt, "responses": responses}
