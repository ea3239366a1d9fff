"""Labeling projects: create one from candidate rows and gold items (validated first), and
its statistics.

A project is one set of items (a prompt with its K responses) for people to rank, with gold
items mixed in to measure the annotators. `tether label import` and the pipeline's human-label
stage read them from files (read_candidates, read_gold_items) before they open the database;
the app's admin API, which receives rows, calls create_project. Every way in validates them
with the same functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from tether.data.candidates import parse_candidates
from tether.data.readers import read_all_rows
from tether.errors import ConfigError, DataError
from tether.labeling.agreement import agreement_stats
from tether.labeling.store import Project, Store


def create_project(store: Store, name: str, rows: Iterable[tuple[str, Any]],
                   gold: Iterable[tuple[str, Any]] = (), overlap: int = 1,
                   gold_rate: float = 0.0, lease_minutes: float = 30.0) -> Project:
    """A project from (where, record) rows, as the app's admin API receives them: every row
    validated first (identical responses merged), then the project created in one
    transaction, so a bad row imports nothing."""
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 1:
        raise ConfigError(f"overlap must be an integer >= 1, got {overlap!r}")
    if not isinstance(gold_rate, (int, float)) or not 0 <= gold_rate <= 1:
        raise ConfigError(f"gold_rate must be in [0, 1], got {gold_rate!r}")
    rows = list(rows)
    if not rows:
        raise DataError("no candidate rows to import")
    return store.create_project(name, parse_candidates(rows).rows, parse_gold_items(gold),
                                overlap=overlap, gold_rate=float(gold_rate),
                                lease_minutes=lease_minutes)


def read_gold_items(source: str) -> list[dict]:
    """The gold items of a file (see parse_gold_items); a bad row stops with its file:line."""
    return parse_gold_items((row.where, row.record)
                            for row in read_all_rows(source, "gold items"))


def parse_gold_items(rows: Iterable[tuple[str, Any]]) -> list[dict]:
    """Gold items from (where, record): preferences with a known answer (pairs or rankings),
    checked as any preference row is."""
    # imported here: it pulls in transformers (seconds), which the labeling app's other
    # commands never need
    from tether.data.preferences import parse_preference

    out = []
    for where, record in rows:
        if isinstance(record, Exception):
            raise record
        pref = parse_preference(record, where)
        if len(set(pref.ranks)) < 2:
            raise DataError(f"{where}: a gold item needs a known answer; every response "
                            f"is tied")
        out.append({"prompt": record["prompt"], "responses": pref.responses,
                    "ranks": pref.ranks, "source": where})
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

