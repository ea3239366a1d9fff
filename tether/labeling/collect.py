"""People label the pipeline's samples: `tether run` with `task.labels=human`.

The label stage imports the candidates into a project of the labeling database (named after
the candidates' digest, so new samples get a new project and old labels are never touched),
creates the annotators, starts the labeling app in this process, prints the URL and the tokens,
and waits, with a progress bar, until the target number of labels is in. Then it stops the
server and exports the labels (majority per item): the comparisons as preference rows for the
reward model and DPO, the ratings (human.mode=rate or both) as KTO rows, thumbs.jsonl.

Everything people did lives in the database, which the pipeline never deletes: a killed run
resumes where the labeling stood, with the same tokens (kept, readable only by the owner, in
a file beside the database).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from tether.config import HumanLabelsConfig
from tether.data.readers import read_all_rows
from tether.errors import ConfigError, DataError
from tether.files import atomic_write_jsonl, atomic_write_text
from tether.labeling.commands import read_guidelines
from tether.labeling.export import THUMBS, export_project
from tether.labeling.projects import create_project, project_stats
from tether.labeling.store import Project, Store


def tokens_for(store: Store, names: list[str], path: Path) -> dict[str, str]:
    """The annotators' tokens: created once, then read back from `path` (mode 0600)."""
    tokens = json.loads(path.read_text()) if path.exists() else {}
    existing = {a.name for a in store.annotators()}
    for name in names:
        if name in tokens:
            continue
        if name in existing:
            raise ConfigError(f"annotator '{name}' exists in {store.db} but their token is not "
                              f"in {path}; name another annotator")
        tokens[name] = store.add_annotator(name)
    atomic_write_text(path, json.dumps(tokens, indent=2) + "\n")
    os.chmod(path, 0o600)
    return tokens


def project_for(store: Store, candidates: Path, cfg: HumanLabelsConfig) -> Project:
    """The project of these candidates in this mode (another mode is another project)."""
    digest = hashlib.sha256(candidates.read_bytes()).hexdigest()[:12]
    name = f"pipeline-{digest}" + ("" if cfg.mode == "compare" else f"-{cfg.mode}")
    project = store.project(name)
    if project is None:
        rows = [(row.where, row.record) for row in read_all_rows(str(candidates),
                                                                  "candidate rows")]
        gold = [(row.where, row.record) for row in read_all_rows(cfg.gold_items, "gold items")] \
            if cfg.gold_items else []
        project = create_project(
            store, name, rows, gold, overlap=cfg.overlap, gold_rate=cfg.gold_items_rate,
            mode=cfg.mode, guidelines=read_guidelines(cfg.guidelines) if cfg.guidelines else "")
        items = store.progress(project)["total"] // project.overlap
        print(f"{candidates}: {len(rows)} rows -> {items} items to {cfg.mode}", flush=True)
    return project


def serve_in_background(store: Store, host: str, port: int):
    """The labeling app on a uvicorn server in a thread; returns (server, thread)."""
    import uvicorn

    from tether.labeling.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(store), host=host, port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ConfigError(f"the labeling app could not listen on {host}:{port} (in use? "
                              f"set human.port)")
        time.sleep(0.05)
    return server, thread


def collect(candidates: Path, output: Path, cfg: HumanLabelsConfig, db: str,
            poll_seconds: float = 1.0) -> str:
    """Serve until the target number of labels is in; write the export to `output`."""
    names = [n.strip() for n in cfg.annotators.split(",") if n.strip()]
    if not names:
        raise ConfigError("human.annotators: name at least one annotator")
    store = Store(db)
    project = project_for(store, candidates, cfg)
    tokens_path = Path(db + ".tokens.json") if "://" not in db else \
        output.parent / "tokens.json"
    tokens = tokens_for(store, names, tokens_path)
    total = store.progress(project)["total"]
    target = min(cfg.target or total, total)
    done = store.progress(project)["done"]
    if done < target:
        server, thread = serve_in_background(store, cfg.host, cfg.port)
        url = f"http://{cfg.host}:{cfg.port}/"
        print(f"\nlabeling app: {url}  (project {project.name}, {total} labels possible, "
              f"waiting for {target})", flush=True)
        for name in names:
            print(f"  {name}: {tokens[name]}", flush=True)
        print(f"  (tokens also in {tokens_path})", flush=True)
        try:
            with tqdm(total=target, initial=done, desc="labels", unit="label",
                      dynamic_ncols=True) as bar:
                while done < target:
                    time.sleep(poll_seconds)
                    now = store.progress(project)["done"]
                    bar.update(now - done)
                    done = now
        finally:
            server.should_exit = True
            thread.join(10)
    made = []
    if cfg.mode in ("compare", "both"):
        rows, _ = export_project(store, project, min_gold_accuracy=cfg.min_gold_accuracy)
        if not rows:
            raise DataError(f"{db}: project {project.name} has {done} labels but none with a "
                            f"preference (all both bad, can't tell or tied)")
        atomic_write_jsonl(output, rows)
        made.append(f"{len(rows)} preference rows")
    if cfg.mode in ("rate", "both"):
        thumbs, _ = export_project(store, project, min_gold_accuracy=cfg.min_gold_accuracy,
                                   format="kto", ratings_only=True)
        if not thumbs:
            raise DataError(f"{db}: project {project.name} has {done} labels but no thumb up "
                            f"or down (all can't tell, or split evenly)")
        atomic_write_jsonl(output.parent / THUMBS, thumbs)
        ups = sum(row["label"] for row in thumbs)
        made.append(f"{len(thumbs)} thumbs ({ups} up, {len(thumbs) - ups} down)")
    stats = project_stats(store, project)
    store.close()
    alpha = stats["alpha"]["value"]
    agreement = "" if alpha is None else f", Krippendorff's alpha {alpha:.3f}"
    return (f"{' and '.join(made)} from {done} people's labels "
            f"({len(stats['annotators'])} annotators{agreement})")
