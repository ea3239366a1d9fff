"""Labeling projects: create one from candidate rows (validated first), and its statistics.

A project is one set of items (a prompt with its K responses) for people to rank, with gold
items mixed in to measure the annotators. `tether label import`, the pipeline's human-label
stage and the app's admin API all create projects here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from tether.data.candidates import parse_candidate
from tether.data.readers import read_rows
from tether.errors import ConfigError, DataError
from tether.labeling.agreement import agreement_stats
from tether.labeling.store import Project, Store


def source_rows(source: str) -> list[tuple[str, Any]]:
    """(where, record) of every row of a data source, for `create_project`."""
    return [(row.where, row.record) for row in read_rows(source)]


def create_project(store: Store, name: str, rows: Iterable[tuple[str, Any]],
                   gold: Iterable[tuple[str, Any]] = (), overlap: int = 1,
                   gold_rate: float = 0.0, lease_minutes: float = 30.0) -> Project:
    """Validate every row first, then create the project in one transaction: a bad row
    imports nothing."""
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 1:
        raise ConfigError(f"overlap must be an integer >= 1, got {overlap!r}")
    if not isinstance(gold_rate, (int, float)) or not 0 <= gold_rate <= 1:
        raise ConfigError(f"gold_rate must be in [0, 1], got {gold_rate!r}")
    items = rows_to_items(rows, gold=False)
    if not items:
        raise DataError("no candidate rows to import")
    gold_items = rows_to_items(gold, gold=True)
    return store.create_project(name, items, gold_items, overlap=overlap,
                                gold_rate=float(gold_rate), lease_minutes=lease_minutes)


def rows_to_items(rows: Iterable[tuple[str, Any]], gold: bool) -> list[dict]:
    """Validated import rows from (where, record): candidates ({prompt, responses}) or, for
    gold items, preferences with a known answer (pairs or rankings)."""
    # imported here: it pulls in transformers (seconds), which the labeling app's other
    # commands never need
    from tether.data.preferences import parse_preference

    out = []
    for where, record in rows:
        if gold:
            if isinstance(record, Exception):
                raise record
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected an object, got {type(record).__name__}")
            pref = parse_preference(record, where)
            if len(set(pref.ranks)) < 2:
                raise DataError(f"{where}: a gold item needs a known answer; every response "
                                f"is tied")
            out.append({"prompt": record["prompt"], "responses": pref.responses,
                        "ranks": pref.ranks, "source": where})
        else:
            row = parse_candidate(record, where)
            out.append({**row, "source": where})
    return out


def project_stats(store: Store, project: Project) -> dict:
    """Progress, choices and agreement of a project's labels (`tether label stats`)."""
    labels = store.labels(project.name)
    stats = agreement_stats(labels)
    progress = store.progress(project)
    items = store.items(project.name)
    return {**stats, "project": project.name, "overlap": project.overlap,
            "gold_rate": project.gold_rate, "items_labelled": stats["items"],
            "items": sum(i.gold_ranks is None for i in items),
            "gold_items": sum(i.gold_ranks is not None for i in items),
            "labels_done": progress["done"], "labels_target": progress["total"],
            "choices": dict(sorted(Counter(lab["choice"] for lab in labels).items()))}

