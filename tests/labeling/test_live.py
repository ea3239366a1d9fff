"""Reliability bars against a real `tether label serve` on 127.0.0.1 (a subprocess)."""

import threading
import time

import pytest

from tether.labeling.client import LabelClient, ServerProcess, run_load
from tether.labeling.projects import create_project
from tether.labeling.store import Store


def setup_db(tmp_path, items: int, annotators: int, overlap: int = 2):
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "p", [(f"c.jsonl:{i}", {"prompt": f"prompt {i}",
                                                  "responses": [f"a{i}", f"b{i}"]})
                                for i in range(items)], overlap=overlap)
    tokens = [store.add_annotator(f"a{i}") for i in range(annotators)]
    return store, tokens


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(db):
        s = ServerProcess(db, tmp_path / "server.log").start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_50_clients_1000_submissions_each_stored_exactly_once(tmp_path, server):
    store, tokens = setup_db(tmp_path, items=520, annotators=50)
    live = server(tmp_path / "labels.db")
    result = run_load(live.url, tokens, "p", total=1000, resend_every=10)
    assert not result.errors
    assert not [code for code in result.statuses if code >= 500]
    assert len(result.stored) == 1000  # 1000 acknowledged (201) labels
    assert len(set(result.stored.values())) == 1000
    # every double submission answered 200 with the first label's id, and stored nothing
    assert len(result.duplicates) == 100
    assert all(result.stored[a] == label for a, label in result.duplicates.items())
    labels = store.labels("p")
    assert len(labels) == 1000
    assert sorted(lab["label"] for lab in labels) == sorted(result.stored.values())
    per_item = {}
    for lab in labels:
        per_item.setdefault(lab["item"], set()).add(lab["annotator"])
    assert max(len(v) for v in per_item.values()) <= 2  # overlap held under concurrency


def test_killing_the_server_mid_load_loses_no_acknowledged_label(tmp_path, server):
    store, tokens = setup_db(tmp_path, items=2000, annotators=8, overlap=1)
    live = server(tmp_path / "labels.db")
    stop = threading.Event()
    outcome = {}
    load = threading.Thread(target=lambda: outcome.setdefault(
        "result", run_load(live.url, tokens, "p", total=4000, stop=stop)))
    load.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(store.labels("p")) < 150:
        time.sleep(0.05)
    live.kill()  # SIGKILL while the clients are mid-request
    load.join(60)
    result = outcome["result"]
    assert result.errors, "the clients should have seen the server die"
    # 150 were committed; each client had at most one answer in flight when the server died
    assert len(result.stored) >= 150 - len(tokens)
    stored = {lab["label"] for lab in Store(str(tmp_path / "labels.db")).labels("p")}
    assert set(result.stored.values()) <= stored  # every acknowledged label survived
    # a restarted server knows them: resending one is a duplicate, not a second label
    live = server(tmp_path / "labels.db")
    client = LabelClient(live.url, tokens[0])
    mine = [a for a in result.stored if a in _assignments_of(store, "a0")]
    if mine:
        r = client.submit(mine[0], ranks=[0, 1], project="p")
        assert r.status_code == 200 and r.json() == {"label": result.stored[mine[0]],
                                                     "duplicate": True}
    assert client.next("p") is not None
    client.close()


def _assignments_of(store: Store, name: str) -> set[str]:
    from sqlalchemy import select

    from tether.labeling.store import Annotator, Assignment

    with store.session() as s:
        return set(s.scalars(select(Assignment.id).join(
            Annotator, Assignment.annotator_id == Annotator.id).where(Annotator.name == name)))


def test_ratings_and_comparisons_under_load_each_stored_once(tmp_path, server):
    """mode=both against a real server: 20 annotators at once, every acknowledged label on
    disk exactly once, overlap held for ratings as for comparisons."""
    store = Store(str(tmp_path / "labels.db"))
    create_project(store, "p", [(f"c.jsonl:{i}", {"prompt": f"prompt {i}",
                                                  "responses": [f"a{i}", f"b{i}"]})
                                for i in range(60)], overlap=2, mode="both")
    tokens = [store.add_annotator(f"a{i}") for i in range(20)]
    live = server(tmp_path / "labels.db")
    result = run_load(live.url, tokens, "p", total=300, resend_every=7)
    assert not result.errors and not [c for c in result.statuses if c >= 500]
    labels = store.labels("p")
    assert len(result.stored) == 300 == len(labels)
    assert sorted(lab["label"] for lab in labels) == sorted(result.stored.values())
    assert all(result.stored[a] == label for a, label in result.duplicates.items())
    assert {lab["choice"] for lab in labels} == {"good", "rank"}
    per_item = {}
    for lab in labels:
        per_item.setdefault(lab["item"], set()).add(lab["annotator"])
    assert max(len(v) for v in per_item.values()) <= 2
