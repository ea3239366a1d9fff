"""People's labels -> rows to train on (shared/DESIGN.md formats).

format=preferences: an item with two responses becomes a pair {"prompt", "chosen", "rejected"};
one with K > 2 a ranking {"prompt", "responses", "ranks"}. Ratings (one response judged good or
bad) make no pair: a project with only ratings is an error there, and a mixed one leaves them
out. format=kto: one row per judged response, {"prompt", "completion", "label": true|false},
as KTO trains on: a rating as it was given; a pair unpaired as TRL's unpair_preference_dataset
does (chosen -> true, rejected -> false); a ranking's best response(s) true and worst false, its
middle ones left out (they are neither, and a K-way ranking does not say where "good" ends).
Where the imported candidates said whether each response ended with EOS (`tether sample`'s
`finished`), the rows say it as the simulated labeler's do (a ranking's finished, a pair's
chosen_finished / rejected_finished, a KTO row's finished), so DPO scores a response cut at
the sampler's token limit without an EOS it never wrote (KTO keeps it: tether.data.unpaired).

Gold items are left out (they measure annotators, and their answer was known before anyone
labelled them), and so are the labels of annotators whose accuracy on gold items is below
`min_gold_accuracy`.

aggregate=majority gives one row per item: the responses ordered by their mean rank across the
annotators who ranked them (Borda); a rating by the majority of good / bad. For a pair that is
the side more annotators preferred, a tie counting half to each; an item whose annotators split
evenly has no majority and is left out. Its rows carry "labels" (how many) and "rationales"
(the non-empty ones). aggregate=all gives one row per label, with the annotator's name and
rationale, for training with per-labeler noise models or for auditing. "Both bad" and "can't
tell" labels express no preference between the responses, so neither gives a row (they still
count in the statistics).

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
THUMBS = "thumbs.jsonl"  # a pipeline's thumbs, as KTO rows, beside its preference rows
FORMATS = ("preferences", "kto")


def preference_row(prompt: Any, responses: Sequence[str], ranks: Sequence[int],
                   finished: Sequence[bool] | None = None, **extra: Any) -> dict | None:
    """A pair or ranking row, or None when every response is tied (nothing to learn). With
    `finished` (whether each response ended with EOS), the row carries it as the simulated
    labeler writes it: chosen_finished / rejected_finished, or finished."""
    ranks = dense_ranks(ranks)
    if len(set(ranks)) < 2:
        return None
    if len(responses) == 2:
        chosen = 0 if ranks[0] < ranks[1] else 1
        flags = {} if finished is None else {"chosen_finished": finished[chosen],
                                             "rejected_finished": finished[1 - chosen]}
        return {"prompt": prompt, "chosen": responses[chosen],
                "rejected": responses[1 - chosen], **flags, **extra}
    flags = {} if finished is None else {"finished": list(finished)}
    return {"prompt": prompt, "responses": list(responses), "ranks": ranks, **flags, **extra}


def kto_rows(row: dict) -> list[dict]:
    """A pair or ranking row unpaired into KTO rows: chosen / best true, rejected / worst
    false (a ranking's middle responses give none); each response's finished flag, where the
    row has one, goes with it; other fields are copied to each."""
    if "chosen" in row:
        own = ("prompt", "chosen", "rejected", "chosen_finished", "rejected_finished")
        judged = [(row["chosen"], True, row.get("chosen_finished")),
                  (row["rejected"], False, row.get("rejected_finished"))]
    else:
        own = ("prompt", "responses", "ranks", "finished")
        best, worst = min(row["ranks"]), max(row["ranks"])
        finished = row.get("finished") or [None] * len(row["responses"])
        judged = [(r, rank == best, f)
                  for r, rank, f in zip(row["responses"], row["ranks"], finished, strict=True)
                  if rank in (best, worst)]
    extra = {k: v for k, v in row.items() if k not in own}
    return [{"prompt": row["prompt"], "completion": completion, "label": label, **extra,
             **({"finished": ended} if ended is not None else {})}
            for completion, label, ended in judged]


def trusted_annotators(labels: Sequence[dict], min_gold_accuracy: float) -> tuple[set, dict]:
    """(names whose labels count, per-annotator stats). An annotator who has answered no gold
    item is trusted: there is nothing to judge them by (the stats show it)."""
    per = agreement_stats(labels)["annotators"]
    trusted = {name for name, a in per.items()
               if a["gold_accuracy"] is None or a["gold_accuracy"] >= min_gold_accuracy}
    return trusted, per


def is_rating_label(lab: dict) -> bool:
    return len(lab["responses"]) == 1


def export_rows(labels: Sequence[dict], aggregate: str = "majority",
                min_gold_accuracy: float = 0.0, format: str = "preferences",
                ratings_only: bool = False) -> tuple[list[dict], dict]:
    """Rows to train on from a project's labels (Store.labels), and what was left out.
    DataError for ratings alone exported as preferences. ratings_only (format=kto): the
    ratings' rows alone, the comparisons left out (annotators are still judged on all their
    gold items)."""
    if aggregate not in ("majority", "all"):
        raise ValueError(f"aggregate must be majority or all, got '{aggregate}'")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got '{format}'")
    trusted, _ = trusted_annotators(labels, min_gold_accuracy)
    kept = [lab for lab in labels
            if lab["gold"] is None and lab["annotator"] in trusted]
    ratings = [lab for lab in kept if is_rating_label(lab)]
    compared = [] if ratings_only else [lab for lab in kept if not is_rating_label(lab)]
    if format == "preferences" and ratings and not compared:
        raise DataError("these labels are ratings (good / bad), which make no preference "
                        "pairs: export them as KTO rows with format=kto")
    counts = {"labels": len(labels),
              "gold_labels": sum(lab["gold"] is not None for lab in labels),
              "untrusted_labels": sum(lab["gold"] is None and lab["annotator"] not in trusted
                                      for lab in labels),
              "excluded_annotators": sorted({lab["annotator"] for lab in labels}
                                            - trusted),
              "no_preference": 0, "no_majority": 0,
              "ratings_left_out": len(ratings) if format == "preferences" else 0}
    rows = (comparison_rows if aggregate == "majority" else comparison_rows_all)(compared,
                                                                               counts)
    if format == "kto":
        rows = [kto for row in rows for kto in kto_rows(row)]
        rows += (rating_rows if aggregate == "majority" else rating_rows_all)(ratings, counts)
    counts["rows"] = len(rows)
    return rows, counts


def comparison_rows_all(labels: Sequence[dict], counts: dict) -> list[dict]:
    rows = []
    for lab in labels:
        row = None if lab["ranks"] is None else preference_row(
            lab["prompt"], lab["responses"], lab["ranks"], lab.get("finished"),
            annotator=lab["annotator"], rationale=lab["rationale"])
        if row is None:
            counts["no_preference"] += 1
        else:
            rows.append(row)
    return rows


def comparison_rows(labels: Sequence[dict], counts: dict) -> list[dict]:
    rows = []
    for group in by_item(labels):
        ranked = [lab["ranks"] for lab in group if lab["ranks"] is not None]
        if not ranked or all(len(set(r)) < 2 for r in ranked):
            counts["no_preference"] += 1
            continue
        k = len(group[0]["responses"])
        # the sum of ranks orders the responses as their mean rank does, in exact integers
        total = [sum(dense_ranks(r)[i] for r in ranked) for i in range(k)]
        row = preference_row(group[0]["prompt"], group[0]["responses"], total,
                             group[0].get("finished"), labels=len(group),
                             rationales=rationales(group))
        if row is None:
            counts["no_majority"] += 1
        else:
            rows.append(row)
    return rows


def rating_rows_all(labels: Sequence[dict], counts: dict) -> list[dict]:
    rows = []
    for lab in labels:
        if lab["rating"] is None:
            counts["no_preference"] += 1
        else:
            rows.append({"prompt": lab["prompt"], "completion": lab["responses"][0],
                         "label": lab["rating"], **rating_flag(lab),
                         "annotator": lab["annotator"], "rationale": lab["rationale"]})
    return rows


def rating_rows(labels: Sequence[dict], counts: dict) -> list[dict]:
    rows = []
    for group in by_item(labels):
        votes = [lab["rating"] for lab in group if lab["rating"] is not None]
        if not votes:
            counts["no_preference"] += 1
        elif 2 * sum(votes) == len(votes):
            counts["no_majority"] += 1
        else:
            rows.append({"prompt": group[0]["prompt"], "completion": group[0]["responses"][0],
                         "label": 2 * sum(votes) > len(votes), **rating_flag(group[0]),
                         "labels": len(group), "rationales": rationales(group)})
    return rows


def rating_flag(lab: dict) -> dict:
    """A rated response's KTO `finished`, where its item knows it."""
    return {} if lab.get("finished") is None else {"finished": lab["finished"][0]}


def by_item(labels: Sequence[dict]) -> list[list[dict]]:
    groups: dict[int, list[dict]] = defaultdict(list)
    for lab in labels:
        groups[lab["item"]].append(lab)
    return list(groups.values())


def rationales(group: Sequence[dict]) -> list[str]:
    return [lab["rationale"] for lab in group if lab["rationale"]]


def export_project(store: Store, project: Project, aggregate: str = "majority",
                   min_gold_accuracy: float = 0.0, format: str = "preferences",
                   ratings_only: bool = False) -> tuple[list[dict], dict]:
    try:
        return export_rows(store.labels(project.name), aggregate, min_gold_accuracy, format,
                           ratings_only)
    except DataError as e:
        raise DataError(f"{store.db}: project '{project.name}': {e}") from None


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
