"""`tether label serve | import | add-annotator | stats | export`: the labeling app's commands.

    tether label import project=sentiment candidates=runs/sample/candidates.jsonl overlap=3
    tether label add-annotator name=alice            # prints alice's access token, once
    tether label add-annotator name=lead admin=true
    tether label serve                               # http://127.0.0.1:8000
    tether label stats                               # gold accuracy, kappa, alpha, left bias
    tether label export output=labels.jsonl min_gold_accuracy=0.7
    tether rm data.train=runs/label/labels.db        # or train on the database directly
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tether.config import (
    LabelAnnotatorConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelServeConfig,
    LabelStatsConfig,
)
from tether.errors import ConfigError, DataError
from tether.labeling.agreement import agreement_stats
from tether.labeling.export import export_rows
from tether.labeling.store import Project, Store, rows_to_items

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def source_rows(source: str) -> list[tuple[str, Any]]:
    from tether.data.readers import read_rows

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


def resolve_project(store: Store, name: str) -> Project:
    projects = store.projects()
    if name:
        for p in projects:
            if p.name == name:
                return p
    elif len(projects) == 1:
        return projects[0]
    names = ", ".join(p.name for p in projects) or "none yet: `tether label import`"
    what = f"no project '{name}'" if name else "several projects: give project=NAME"
    raise ConfigError(f"{store.db}: {what} (projects: {names})")


def project_stats(store: Store, project: Project) -> dict:
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


def format_stats(s: dict) -> str:
    def num(x: float | None, fmt: str = ".3f") -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [f"project {s['project']}: {s['items']} items (+{s['gold_items']} gold), overlap "
             f"{s['overlap']}; {s['labels_done']} of {s['labels_target']} labels done",
             "choices: " + (", ".join(f"{k} {v}" for k, v in s["choices"].items()) or "none"),
             "", f"{'annotator':<20} {'labels':>7} {'gold items':>10} {'gold accuracy':>14}"]
    for name, a in s["annotators"].items():
        acc = num(a["gold_accuracy"])
        if a["gold_pairs"]:
            acc += f" ({a['gold_agreeing']}/{a['gold_pairs']})"
        lines.append(f"{name:<20} {a['labels']:>7} {a['gold_items']:>10} {acc:>14}")
    lines.append("")
    if s["kappa"]:
        lines.append("Cohen's kappa, per pair of annotators (units: response pairs both judged)")
        for k in s["kappa"]:
            lines.append(f"  {k['annotators'][0]} / {k['annotators'][1]}: {num(k['kappa'])} "
                         f"({k['units']} units)")
    else:
        lines.append("Cohen's kappa: no item labelled by two annotators yet")
    alpha = s["alpha"]
    lines.append(f"Krippendorff's alpha (nominal, all annotators): {num(alpha['value'])} "
                 f"({alpha['units']} units, {alpha['values']} values)")
    pb = s["position_bias"]
    interval = "" if pb["rate"] is None else f", 95% interval {pb['low']:.3f}-{pb['high']:.3f}"
    lines.append(f"position bias: the response shown further left won {num(pb['rate'])} of "
                 f"{pb['decisive']} decisive comparisons{interval} (0.5 = no bias)")
    return "\n".join(lines)


def export_project(store: Store, project: Project, aggregate: str = "majority",
                   min_gold_accuracy: float = 0.0) -> tuple[list[dict], dict]:
    return export_rows(store.labels(project.name), aggregate, min_gold_accuracy)


def read_database(source: str) -> list[tuple[str, dict]]:
    """Preference rows straight from a labeling database, as `tether label export` with its
    defaults would write them: `labels.db`, `labels.db#project`, or a SQLAlchemy URL
    (`postgresql://host/labels#project`)."""
    db, _, name = source.partition("#")
    store = Store(db)
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


# -- the commands -----------------------------------------------------------------------------


def serve(cfg: LabelServeConfig) -> None:
    import uvicorn

    from tether.labeling.server import create_app

    store = Store(cfg.db)
    app = create_app(store)
    projects = store.projects()
    print(f"labeling app for {cfg.db}: http://{cfg.host}:{cfg.port}/  (Ctrl+C stops it)")
    for p in projects:
        progress = store.progress(p)
        print(f"  project {p.name}: {progress['done']} of {progress['total']} labels")
    if not projects:
        print("  no projects yet: tether label import project=NAME candidates=FILE")
    if not store.annotators():
        print("  no annotators yet: tether label add-annotator name=NAME")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def import_candidates(cfg: LabelImportConfig) -> Project:
    store = Store(cfg.db)
    project = create_project(store, cfg.project, source_rows(cfg.candidates),
                             source_rows(cfg.gold) if cfg.gold else (), overlap=cfg.overlap,
                             gold_rate=cfg.gold_rate, lease_minutes=cfg.lease_minutes)
    progress = store.progress(project)
    gold = sum(i.gold_ranks is not None for i in store.items(project.name))
    print(f"imported {progress['total'] // project.overlap} items (+{gold} gold) into project "
          f"{project.name} of {cfg.db}; {progress['total']} labels wanted at overlap "
          f"{project.overlap}")
    if cfg.reward_model:
        from tether.labeling.active import prioritize

        paths = [p.strip() for p in cfg.reward_model.split(",") if p.strip()]
        prioritize(store, project, paths, batch_size=cfg.batch_size)
    return project


def add_annotator(cfg: LabelAnnotatorConfig) -> str:
    store = Store(cfg.db)
    token = store.add_annotator(cfg.name, admin=cfg.admin)
    role = "admin" if cfg.admin else "annotator"
    print(f"{role} {cfg.name} added to {cfg.db}. Their access token (shown only now; only a "
          f"hash is stored):\n{token}")
    return token


def stats(cfg: LabelStatsConfig) -> dict:
    from tether.checkpoint import atomic_write_text

    store = Store(cfg.db)
    result = project_stats(store, resolve_project(store, cfg.project))
    print(format_stats(result))
    if cfg.output:
        atomic_write_text(Path(cfg.output), json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {cfg.output}")
    return result


def export(cfg: LabelExportConfig) -> Path:
    from tether.checkpoint import atomic_write_jsonl

    out = Path(cfg.output)
    if out.suffix != ".jsonl":
        raise ConfigError(f"output must be a .jsonl file, got '{cfg.output}'")
    store = Store(cfg.db)
    project = resolve_project(store, cfg.project)
    rows, counts = export_project(store, project, cfg.aggregate, cfg.min_gold_accuracy)
    atomic_write_jsonl(out, rows)
    left = [f"{counts['gold_labels']} on gold items",
            f"{counts['no_preference']} {'labels' if cfg.aggregate == 'all' else 'items'} "
            f"with no preference (both bad, can't tell, all tied)"]
    if cfg.aggregate == "majority":
        left.append(f"{counts['no_majority']} items with no majority")
    if counts["excluded_annotators"]:
        left.append(f"{counts['untrusted_labels']} labels of annotators below "
                    f"min_gold_accuracy ({', '.join(counts['excluded_annotators'])})")
    print(f"wrote {counts['rows']} rows from {counts['labels']} labels of project "
          f"{project.name} to {out}\nleft out: " + "; ".join(left))
    return out
