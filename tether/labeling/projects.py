"""Labeling projects: create one, or add the next round of items to one, from candidate rows,
responses to rate and gold items (validated first), and its statistics.

A project holds items for people to judge: comparisons (a prompt with K >= 2 responses to
rank) and ratings (one response, good or bad: "thumbs"), with gold items mixed in to measure
the annotators. `mode` says what the candidates (K responses per prompt, from `tether sample`)
become: compare, one comparison per row; rate, one rating per response; both. Responses to rate
can also come as rows {"prompt", "completion"} (KTO's shape), and a row that also has
"label": true|false is a gold rating. `tether label import` and the pipeline's human-label
stage read them from files (read_candidates, read_gold_items, read_ratings) before they open
the database; the app's admin API, which receives rows, calls create_project / add_items.
Every way in validates them with the same functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from tether.choices import LABEL_MODES
from tether.data.candidates import (
    Candidates,
    parse_candidates,
    parse_finished,
    parse_finished_flag,
)
from tether.data.readers import BadRow, read_all_rows
from tether.errors import ConfigError, DataError
from tether.labeling.agreement import agreement_stats
from tether.labeling.store import Project, Store

MODES = LABEL_MODES
Rows = Iterable[tuple[str, Any]]


def check_settings(overlap: Any, gold_rate: Any) -> None:
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 1:
        raise ConfigError(f"overlap must be an integer >= 1, got {overlap!r}")
    if not isinstance(gold_rate, (int, float)) or not 0 <= gold_rate <= 1:
        raise ConfigError(f"gold_rate must be in [0, 1], got {gold_rate!r}")


def project_items(rows: Rows, ratings: Sequence[dict],
                  mode: str = "compare") -> tuple[list[dict], Candidates | None]:
    """The items to label: candidate rows (where, record) as comparisons (mode compare), as
    one rating per distinct response (rate: a row of one response will do), or both; then the
    responses to rate given on their own (parsed by parse_ratings). With the comparisons'
    Candidates, whose summary says what was merged or left out."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rows = list(rows)
    items, candidates = [], None
    if rows and mode in ("compare", "both"):
        candidates = parse_candidates(rows)
        items += candidates.rows
    if mode in ("rate", "both"):
        items += rating_items(rows)
    items += ratings
    if not items:
        raise DataError("nothing to label: give candidate rows or responses to rate")
    return items, candidates


def rating_items(rows: Rows) -> list[dict]:
    """One item to rate per distinct response of each {"prompt", "responses"} record, with
    whether it ended with EOS where the record says (`finished`, as `tether sample` writes
    it)."""
    # imported here: it pulls in transformers (seconds), which the labeling app's other
    # commands never need
    from tether.data.records import parse_prompt, parse_response

    items = []
    for where, record in rows:
        if isinstance(record, Exception):
            raise record
        parse_prompt(record, where)
        responses = record.get("responses")
        if not isinstance(responses, list) or not responses:
            raise BadRow(f"{where}: 'responses' must be a non-empty list of responses to rate")
        finished = parse_finished(record, len(responses), where)
        seen = set()
        for i, response in enumerate(responses):
            text = parse_response(response, f"responses[{i}]", where)
            if text not in seen:  # the same text twice is one response to rate
                seen.add(text)
                items.append({"prompt": record["prompt"], "responses": [text],
                              "source": f"{where} responses[{i}]",
                              **({"finished": [finished[i]]} if finished is not None else {})})
    return items


def create_project(store: Store, name: str, rows: Rows = (), gold: Rows = (),
                   overlap: int = 1, gold_rate: float = 0.0, lease_minutes: float = 30.0,
                   mode: str = "compare", ratings: Rows = (), guidelines: str = "") -> Project:
    """A project from (where, record) rows, as the app's admin API receives them: every row
    validated first (identical responses merged), then the project created in one
    transaction, so a bad row imports nothing."""
    check_settings(overlap, gold_rate)
    items, gold_items = parse_rows(rows, ratings, gold, mode)
    return store.create_project(name, items, gold_items, overlap=overlap,
                                gold_rate=float(gold_rate), lease_minutes=lease_minutes,
                                guidelines=guidelines)


def add_items(store: Store, name: str, rows: Rows = (), gold: Rows = (), mode: str = "compare",
              ratings: Rows = (), guidelines: str | None = None) -> Project:
    """The next round: more items for an existing project, validated as create_project's."""
    items, gold_items = parse_rows(rows, ratings, gold, mode)
    return store.add_items(name, items, gold_items, guidelines=guidelines)


def parse_rows(rows: Rows, ratings: Rows, gold: Rows, mode: str) -> tuple[list, list]:
    to_rate, gold_ratings = parse_ratings(ratings)
    items, _ = project_items(rows, to_rate, mode)
    return items, [*gold_ratings, *parse_gold_items(gold)]


def read_ratings(source: str) -> tuple[list[dict], list[dict]]:
    """The responses to rate of a file, and its gold ratings (see parse_ratings)."""
    return parse_ratings((row.where, row.record)
                         for row in read_all_rows(source, "responses to rate"))


def parse_ratings(rows: Rows) -> tuple[list[dict], list[dict]]:
    """(items, gold items) from {"prompt", "completion"[, "label": true|false][, "finished":
    true|false]} records (KTO's rows): a response to rate, a gold one when its label is given.
    A bad row raises with its `where`."""
    items, gold = [], []
    for where, record in rows:
        prompt, completion = parse_completion(record, where)
        row = {"prompt": prompt, "responses": [completion], "source": where}
        if "finished" in record:
            row["finished"] = [parse_finished_flag(record, "finished", where)]
        if "label" in record:
            label = record["label"]
            if not isinstance(label, bool):
                raise BadRow(f"{where}: 'label' must be true or false (is the response good?), "
                             f"got {label!r}")
            gold.append({**row, "gold": label})
        else:
            items.append(row)
    return items, gold


def parse_completion(record: Any, where: str) -> tuple[Any, str]:
    """(prompt, completion) of a {"prompt", "completion"} record, checked as a response is."""
    # imported here: it pulls in transformers (seconds), which the labeling app's other
    # commands never need
    from tether.data.records import parse_prompt, parse_response

    if isinstance(record, Exception):
        raise record
    parse_prompt(record, where)
    if "completion" not in record:
        raise BadRow(f"{where}: missing 'completion' (the response to rate)")
    return record["prompt"], parse_response(record["completion"], "completion", where)


def read_gold_items(source: str) -> list[dict]:
    """The gold items of a file (see parse_gold_items); a bad row stops with its file:line."""
    return parse_gold_items((row.where, row.record)
                            for row in read_all_rows(source, "gold items"))


def parse_gold_items(rows: Rows) -> list[dict]:
    """Gold items from (where, record): preferences with a known answer (pairs or rankings),
    checked as any preference row is, or responses known good or bad ({"prompt",
    "completion", "label": true|false})."""
    # imported here: it pulls in transformers (seconds), which the labeling app's other
    # commands never need
    from tether.data.preferences import parse_preference

    out = []
    for where, record in rows:
        if isinstance(record, Exception):
            raise record
        if isinstance(record, dict) and "completion" in record:
            _, gold = parse_ratings([(where, record)])
            if not gold:
                raise BadRow(f"{where}: a gold rating needs 'label': true or false")
            out += gold
            continue
        pref = parse_preference(record, where)
        if len(set(pref.ranks)) < 2:
            raise DataError(f"{where}: a gold item needs a known answer; every response "
                            f"is tied")
        out.append({"prompt": record["prompt"], "responses": pref.responses,
                    "gold": pref.ranks, "source": where})
    return out


def project_stats(store: Store, project: Project) -> dict:
    """Progress, choices and agreement of a project's labels (`tether label stats`)."""
    labels = store.labels(project.name)
    stats = agreement_stats(labels)
    progress = store.progress(project)
    items = store.items(project.name)
    return {**stats, "project": project.name, "overlap": project.overlap,
            "gold_rate": project.gold_rate, "items_labelled": stats["items"],
            "items": sum(i.gold is None for i in items),
            "gold_items": sum(i.gold is not None for i in items),
            "labels_done": progress["done"], "labels_target": progress["total"],
            "labels_in_progress": progress["in_progress"],
            "choices": dict(sorted(Counter(lab["choice"] for lab in labels).items()))}

