"""`tether label simulate | import | add-annotator | serve | stats | export`: the commands.

Each reads its config, calls the labeling library (simulate, projects, store, export) and
prints what it did.

    tether label simulate candidates=runs/sample/candidates.jsonl temperature=0.5
    tether label import project=sentiment candidates=runs/sample/candidates.jsonl overlap=3
    tether label import project=sentiment candidates=round2.jsonl add=true   # the next round
    tether label import project=thumbs candidates=c.jsonl mode=rate guidelines=guide.md
    tether label add-annotator name=alice            # prints alice's access token, once
    tether label add-annotator name=lead admin=true
    tether label serve                               # http://127.0.0.1:8000
    tether label stats                               # gold accuracy, kappa, alpha, left bias
    tether label export output=labels.jsonl min_gold_accuracy=0.7
    tether label export output=kto.jsonl format=kto  # {prompt, completion, label} rows
    tether rm data.train=runs/label/labels.db        # or train on the database directly
"""

from __future__ import annotations

import json
from pathlib import Path

from tether.config import (
    LabelAnnotatorConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelServeConfig,
    LabelStatsConfig,
    SimulateLabelsConfig,
)
from tether.data.candidates import read_candidates
from tether.errors import ConfigError
from tether.files import atomic_write_jsonl, atomic_write_text, check_output
from tether.labeling.export import export_project
from tether.labeling.projects import project_stats, read_gold_items
from tether.labeling.simulate import simulate, thumbs_summary
from tether.labeling.store import Project, Store, resolve_project
from tether.tasks.gold import load_gold_scorer


def format_stats(s: dict) -> str:
    def num(x: float | None, fmt: str = ".3f") -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [f"project {s['project']}: {s['items']} items (+{s['gold_items']} gold), overlap "
             f"{s['overlap']}; {s['labels_done']} of {s['labels_target']} labels done, "
             f"{s['labels_in_progress']} in progress",
             "choices: " + (", ".join(f"{k} {v}" for k, v in s["choices"].items()) or "none"),
             "", f"{'annotator':<20} {'labels':>7} {'gold items':>10} {'gold accuracy':>14}"]
    for name, a in s["annotators"].items():
        acc = num(a["gold_accuracy"])
        judged = a["gold_pairs"] + a["gold_ratings"]  # comparisons' pairs and ratings
        if judged:
            acc += f" ({a['gold_agreeing'] + a['gold_ratings_agreeing']}/{judged})"
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
    r = s["ratings"]
    if r["good"] + r["bad"]:
        lines.append(f"ratings: {r['good']} good, {r['bad']} bad")
        for k in r["kappa"]:
            lines.append(f"  Cohen's kappa {k['annotators'][0]} / {k['annotators'][1]}: "
                         f"{num(k['kappa'])} ({k['units']} responses both rated)")
        lines.append(f"  Krippendorff's alpha (nominal): {num(r['alpha']['value'])} "
                     f"({r['alpha']['units']} responses, {r['alpha']['values']} ratings)")
    pb = s["position_bias"]
    interval = "" if pb["rate"] is None else f", 95% interval {pb['low']:.3f}-{pb['high']:.3f}"
    lines.append(f"position bias: the response shown further left won {num(pb['rate'])} of "
                 f"{pb['decisive']} decisive comparisons{interval} (0.5 = no bias)")
    return "\n".join(lines)


# -- the commands -----------------------------------------------------------------------------


def simulate_labels(cfg: SimulateLabelsConfig) -> Path:
    """`tether label simulate`: read candidates, label them, write labels atomically."""
    out = check_output(cfg.output)
    if out.suffix != ".jsonl":
        raise ConfigError(f"output must be a .jsonl file, got '{cfg.output}'")
    if Path(cfg.candidates).resolve() == out.resolve():
        raise ConfigError(f"output '{cfg.output}' would overwrite the candidates")
    candidates = read_candidates(cfg.candidates)
    print(f"{cfg.candidates}: {candidates.summary()}")
    scorer = load_gold_scorer(cfg.gold)
    out_rows, stats = simulate(candidates, scorer, cfg)
    atomic_write_jsonl(out, out_rows)
    stats_path = stats_path_for(out)
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    print(simulate_summary(stats, out))
    print(f"stats: {stats_path}")
    return out


def stats_path_for(output: Path) -> Path:
    """labels.jsonl -> labels.stats.json"""
    return output.with_name(output.stem + ".stats.json")


def simulate_summary(stats: dict, out: Path | str) -> str:
    if stats["format"] == "thumbs":
        return thumbs_summary(stats, out)
    agreement = stats["agreement_with_gold"]
    agree = "n/a (no pair differs in gold)" if agreement is None else f"{agreement:.3f}"
    expected = stats["expected_agreement"]
    expect = "" if expected is None else f" (expected {expected:.3f} from T and flip_rate)"
    return (f"wrote {stats['rows']} {stats['format']} rows for {stats['prompts']} prompts "
            f"({stats['pairs']} labelled pairs) to {out}\n"
            f"agreement with gold: {agree}{expect}; {stats['gold_ties']} pairs tied in gold "
            f"left out")


def serve(cfg: LabelServeConfig) -> None:
    import uvicorn

    from tether.labeling.server import create_app

    store = Store(cfg.db)
    app = create_app(store)
    projects = store.projects()
    print(f"labeling app for {cfg.db}: http://{cfg.host}:{cfg.port}/  (Ctrl+C stops it)")
    for p in projects:
        progress = store.progress(p)
        print(f"  project {p.name}: {progress['done']} of {progress['total']} labels, "
              f"{progress['in_progress']} in progress")
    if not projects:
        print("  no projects yet: tether label import project=NAME candidates=FILE")
    if not store.annotators():
        print("  no annotators yet: tether label add-annotator name=NAME")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def import_candidates(cfg: LabelImportConfig) -> Project:
    """`tether label import`: a new project, or (add=true) the next round of an existing one.
    Every file is read and checked before the database is opened."""
    from tether.data.readers import read_all_rows
    from tether.labeling.projects import project_items, read_ratings

    rows = ([(row.where, row.record) for row in read_all_rows(cfg.candidates, "candidate rows")]
            if cfg.candidates else [])
    to_rate, gold_ratings = read_ratings(cfg.ratings) if cfg.ratings else ([], [])
    items, candidates = project_items(rows, to_rate, cfg.mode)
    if candidates is not None:
        print(f"{cfg.candidates}: {candidates.summary()}")
    gold_items = [*gold_ratings, *(read_gold_items(cfg.gold_items) if cfg.gold_items else [])]
    guidelines = read_guidelines(cfg.guidelines) if cfg.guidelines else None
    # opened once the data is valid: bad data leaves no new database (nor does add=true)
    store = Store(cfg.db, must_exist=cfg.add)
    if cfg.add:
        before = len(store.items(cfg.project)) if store.project(cfg.project) else 0
        project = store.add_items(cfg.project, items, gold_items, guidelines=guidelines)
        print(f"added {len(items)} items (+{len(gold_items)} gold) to project {project.name} "
              f"of {cfg.db}: {before + len(items) + len(gold_items)} items in all; its overlap "
              f"{project.overlap}, gold rate {project.gold_rate} and lease of "
              f"{project.lease_minutes:g} minutes are kept")
    else:
        project = store.create_project(cfg.project, items, gold_items, overlap=cfg.overlap,
                                       gold_rate=cfg.gold_items_rate,
                                       lease_minutes=cfg.lease_minutes,
                                       guidelines=guidelines or "")
        rated = sum(len(item["responses"]) == 1 for item in items)
        kinds = f" ({rated} to rate)" if rated else ""
        print(f"imported {len(items)} items{kinds} (+{len(gold_items)} gold) into project "
              f"{project.name} of {cfg.db}; {len(items) * project.overlap} labels wanted at "
              f"overlap {project.overlap}")
    if cfg.reward_model:
        from tether.labeling.active import prioritize

        paths = [p.strip() for p in cfg.reward_model.split(",") if p.strip()]
        prioritize(store, project, paths, batch_size=cfg.batch_size)
    return project


def read_guidelines(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"guidelines: cannot read '{path}': {e}") from None


def add_annotator(cfg: LabelAnnotatorConfig) -> str:
    store = Store(cfg.db)
    token = store.add_annotator(cfg.name, admin=cfg.admin)
    role = "admin" if cfg.admin else "annotator"
    print(f"{role} {cfg.name} added to {cfg.db}. Their access token (shown only now; only a "
          f"hash is stored):\n{token}")
    return token


def stats(cfg: LabelStatsConfig) -> dict:
    if cfg.output:
        check_output(cfg.output)
    store = Store(cfg.db, must_exist=True)
    result = project_stats(store, resolve_project(store, cfg.project))
    print(format_stats(result))
    if cfg.output:
        atomic_write_text(Path(cfg.output), json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {cfg.output}")
    return result


def export(cfg: LabelExportConfig) -> Path:
    out = check_output(cfg.output)
    if out.suffix != ".jsonl":
        raise ConfigError(f"output must be a .jsonl file, got '{cfg.output}'")
    store = Store(cfg.db, must_exist=True)
    project = resolve_project(store, cfg.project)
    rows, counts = export_project(store, project, cfg.aggregate, cfg.min_gold_accuracy,
                                 cfg.format)
    atomic_write_jsonl(out, rows)
    left = [f"{counts['gold_labels']} on gold items",
            f"{counts['no_preference']} {'labels' if cfg.aggregate == 'all' else 'items'} "
            f"with no preference (both bad, can't tell, all tied)"]
    if cfg.aggregate == "majority":
        left.append(f"{counts['no_majority']} items with no majority")
    if counts["ratings_left_out"]:
        left.append(f"{counts['ratings_left_out']} ratings (good / bad: format=kto exports "
                    f"them)")
    if counts["excluded_annotators"]:
        left.append(f"{counts['untrusted_labels']} labels of annotators below "
                    f"min_gold_accuracy ({', '.join(counts['excluded_annotators'])})")
    print(f"wrote {counts['rows']} rows from {counts['labels']} labels of project "
          f"{project.name} to {out}\nleft out: " + "; ".join(left))
    return out
