"""The labeling app on PostgreSQL (any SQLAlchemy URL serves a team): a throwaway cluster in a
temporary directory, reached over a Unix socket, so the test needs no running service."""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tether.labeling.client import ServerProcess, free_port, run_load
from tether.labeling.export import export_rows
from tether.labeling.projects import create_project, project_stats
from tether.labeling.store import Store


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    pytest.importorskip("psycopg")
    # PostgreSQL refuses to run as root: as root, run it as the postgres system user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    data, socket_dir = root / "data", root
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-k {socket_dir} -h '' -p {port} -c fsync=on", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={socket_dir}&port={port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_overlap_gold_and_export_on_postgres(postgres_url):
    store = Store(postgres_url)
    items = [(f"c:{i}", {"prompt": [{"role": "user", "content": f"p{i}"}],
                         "responses": [f"a{i}", f"b{i}", f"c{i}"]}) for i in range(6)]
    gold = [("g:1", {"prompt": "g", "chosen": "good", "rejected": "bad"})]
    project = create_project(store, "team", items, gold, overlap=2, gold_rate=0.5)
    people = [store.annotator_for_token(store.add_annotator(n)) for n in ("ann", "ben", "cy")]
    for _ in range(10):
        for who in people:
            item = store.next_item(project, who)
            if item is not None:
                ranks = [0 if t in ("good", f"a{t[1:]}") else 1 for t in item.responses]
                store.submit(project, who, item.assignment, "rank", ranks)
    assert store.progress(project) == {"done": 12, "total": 12, "in_progress": 0}
    labels = store.labels("team")
    assert max(sum(lab["item"] == i for lab in labels) for i in {lab["item"] for lab in labels
                                                                  if lab["gold"] is None}) == 2
    stats = project_stats(store, project)
    assert stats["items"] == 6 and stats["gold_items"] == 1
    assert all(a["gold_accuracy"] in (None, 1.0) for a in stats["annotators"].values())
    rows, _ = export_rows(labels)
    assert len(rows) == 6 and all(r["ranks"][0] == 0 for r in rows)
    store.close()


def test_live_server_on_postgres(postgres_url, tmp_path):
    store = Store(postgres_url)
    create_project(store, "live", [(f"c:{i}", {"prompt": f"p{i}", "responses": ["x", "y"]})
                                   for i in range(120)], overlap=2)
    tokens = [store.add_annotator(f"live{i}") for i in range(20)]
    server = ServerProcess(postgres_url, tmp_path / "server.log").start()
    try:
        result = run_load(server.url, tokens, "live", total=200)
    finally:
        server.stop()
    assert not result.errors and not [c for c in result.statuses if c >= 500]
    assert len(result.stored) == 200 == len(store.labels("live"))
    store.close()


def test_a_database_from_an_older_tether_gains_the_new_columns_on_postgres(postgres_url):
    from sqlalchemy import text

    store = Store(postgres_url)
    token = store.add_annotator("old_timer")
    with store.engine.begin() as conn:  # as it was before guidelines, revoking, finished
        conn.execute(text("ALTER TABLE projects DROP COLUMN guidelines"))
        conn.execute(text("ALTER TABLE annotators DROP COLUMN revoked"))
        conn.execute(text("ALTER TABLE items DROP COLUMN finished"))
    store.close()
    store = Store(postgres_url)
    assert store.annotator_for_token(token).name == "old_timer"
    assert all(p.guidelines == "" for p in store.projects())
    store.revoke("old_timer")
    assert store.annotator_for_token(token) is None
    store.close()
