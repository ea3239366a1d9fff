"""People's labels -> preference rows a reward model or DPO trains on (shared/DESIGN.md formats).

An item with two responses becomes a pair {"prompt", "chosen", "rejected"}; one with K > 2 a
ranking {"prompt", "responses", "ranks"}. Gold items are left out (they measure annotators, and
their answer was known before anyone labelled them), and so are the labels of annotators whose
accuracy on gold items is below `min_gold_accuracy`.

aggregate=majority gives one row per item: the responses ordered by their mean rank across the
annotators who ranked them (Borda). For a pair that is the side more annotators preferred, a tie
counting half to each; an item whose annotators split evenly has no majority and is left out.
aggregate=all gives one row per label, with the annotator's name, for training with per-labeler
noise models or for auditing. "Both bad" and "can't tell" labels express no preference between
the responses, so neither gives a row (they still count in the statistics).

`read_database` gives the same rows straight from a labeling database, so a reward model or DPO
can train on `labels.db` with no export step (tether.data.readers reads such a source with it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.errors import DataError
from tether.labeling.agreement import agreement_stats
from tether.labeling.store import Project, Store, dense_ranks, resolve_project

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def preference_row(prompt: Any, responses: Sequence[str], ranks: Sequence[int],
                   **extra: Any) -> dict | None:
    """A pair or ranking row, or None when every response is tied (nothing to learn)."""
    ranks = dense_ranks(ranks)
    if len(set(ranks)) < 2:
        return None
    if len(responses) == 2:
        chosen = 0 if ranks[0] < ranks[1] else 1
        return {"prompt": prompt, "chosen": responses[chosen],
                "rejected": responses[1 - chosen], **extra}
    return {"prompt": prompt, "responses": list(responses), "ranks": ranks, **extra}


def trusted_annotators(labels: Sequence[dict], min_gold_accuracy: float) -> tuple[set, dict]:
    """(names whose labels count, per-annotator stats). An annotator who has answered no gold
    item is trusted: there is nothing to judge them by (the stats show it)."""
    per = agreement_stats(labels)["annotators"]
    trusted = {name for name, a in per.items()
               if a["gold_accuracy"] is None or a["gold_accuracy"] >= min_gold_accuracy}
    return trusted, per


def export_rows(labels: Sequence[dict], aggregate: str = "majority",
                min_gold_accuracy: float = 0.0) -> tuple[list[dict], dict]:
    """Rows to train on from a project's labels (Store.labels), and what was left out."""
    if aggregate not in ("majority", "all"):
        raise ValueError(f"aggregate must be majority or all, got '{aggregate}'")
    trusted, _ = trusted_annotators(labels, min_gold_accuracy)
    kept = [lab for lab in labels
            if lab["gold"] is None and lab["annotator"] in trusted]
    counts = {"labels": len(labels),
              "gold_labels": sum(lab["gold"] is not None for lab in labels),
              "untrusted_labels": sum(lab["gold"] is None and lab["annotator"] not in trusted
                                      for lab in labels),
              "excluded_annotators": sorted({lab["annotator"] for lab in labels}
                                            - trusted),
              "no_preference": 0, "no_majority": 0}
    rows: list[dict] = []
    if aggregate == "all":
        for lab in kept:
            row = None if lab["ranks"] is None else preference_row(
                lab["prompt"], lab["responses"], lab["ranks"], annotator=lab["annotator"])
            if row is None:
                counts["no_preference"] += 1
            else:
                rows.append(row)
        counts["rows"] = len(rows)
        return rows, counts

    by_item: dict[int, list[dict]] = defaultdict(list)
    for lab in kept:
        by_item[lab["item"]].append(lab)
    for group in by_item.values():
        ranked = [lab["ranks"] for lab in group if lab["ranks"] is not None]
        if not ranked or all(len(set(r)) < 2 for r in ranked):
            counts["no_preference"] += 1
            continue
        k = len(group[0]["responses"])
        # the sum of ranks orders the responses as their mean rank does, in exact integers
        total = [sum(dense_ranks(r)[i] for r in ranked) for i in range(k)]
        row = preference_row(group[0]["prompt"], group[0]["responses"], total,
                             labels=len(group))
        if row is None:
            counts["no_majority"] += 1
        else:
            rows.append(row)
    counts["rows"] = len(rows)
    return rows, counts


def export_project(store: Store, project: Project, aggregate: str = "majority",
                   min_gold_accuracy: float = 0.0) -> tuple[list[dict], dict]:
    return export_rows(store.labels(project.name), aggregate, min_gold_accuracy)


def read_database(source: str) -> list[tuple[str, dict]]:
    """Preference rows straight from a labeling database, as `tether label export` with its
    defaults would write them: `labels.db`, `labels.db#project`, or a SQLAlchemy URL
    (`postgresql://host/labels#project`)."""
    db, _, name = source.partition("#")
    store = Store(db, must_exist=True)
    try:
        project = resolve_project(store, name)
        rows, _ = export_project(store, project)
    finally:
        store.close()
    if not rows:
        raise DataError(f"{source}: project '{project.name}' has no labels with a preference "
                        f"yet")
    return [(f"{db}#{project.name}: item {i}", row) for i, row in enumerate(rows)]


def is_database(source: str) -> bool:
    db = source.partition("#")[0]
    return "://" in db or Path(db).suffix in DB_SUFFIXES
