"""Ready for rounds and teams: items added to a live project, guidelines, undo, revoking and
reissuing tokens, progress that says what is true, and databases made by an older tether."""

import json
import sqlite3

import pytest
from conftest import bearer, rows
from fastapi.testclient import TestClient

from tether.cli import main
from tether.errors import ConfigError
from tether.labeling.export import export_rows
from tether.labeling.projects import add_items, create_project
from tether.labeling.server import create_app
from tether.labeling.store import Store


def candidates(n: int, k: int = 2, start: int = 0) -> list[dict]:
    return [{"prompt": f"prompt {i}", "responses": [f"r{i}-{j}" for j in range(k)]}
            for i in range(start, start + n)]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def next_item(client, token, project="p"):
    return client.get(f"/api/projects/{project}/next", headers=bearer(token)).json()


def answer(client, token, item, project="p", **body):
    body = {"assignment": item["assignment"], "choice": "rank", "ranks": [0, 1], **body}
    return client.post(f"/api/projects/{project}/labels", headers=bearer(token), json=body)


def test_import_add_extends_a_project_for_the_next_round(tmp_path, capsys):
    db = tmp_path / "l.db"
    first = write_jsonl(tmp_path / "a.jsonl", candidates(2))
    guide = tmp_path / "guide.md"
    guide.write_text("# Rules\n\nPrefer the **kinder** answer.\n")
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={first}",
                 "overlap=2", f"guidelines={guide}"]) == 0
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={first}"]) == 2
    assert "add=true" in capsys.readouterr().err
    second = write_jsonl(tmp_path / "b.jsonl", candidates(3, k=3, start=2))
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={second}",
                 "add=true"]) == 0
    assert "added 3 items (+0 gold) to project p" in capsys.readouterr().out
    store = Store(str(db))
    project = store.project("p")
    assert (project.k, project.overlap) == (3, 2)  # settings kept, K grown
    assert "kinder" in project.guidelines  # not given again: kept
    assert store.progress(project)["total"] == 10
    assert main(["label", "import", f"db={db}", "project=q", f"candidates={second}",
                 "add=true"]) == 2
    assert "no project 'q' to add items to" in capsys.readouterr().err
    elsewhere = tmp_path / "other.db"
    assert main(["label", "import", f"db={elsewhere}", "project=p", f"candidates={second}",
                 "add=true"]) == 2
    assert "no labeling database there" in capsys.readouterr().err
    assert not elsewhere.exists()


def test_adding_bad_rows_adds_nothing(store):
    create_project(store, "p", rows(candidates(2)))
    with pytest.raises(Exception, match="c.jsonl:2"):
        add_items(store, "p", rows([*candidates(1), {"prompt": "x", "responses": ["one"]}]))
    assert len(store.items("p")) == 2


def test_admin_api_adds_items_and_guidelines(store):
    create_project(store, "p", rows(candidates(1)))
    boss, alice = store.add_annotator("boss", admin=True), store.add_annotator("alice")
    client = TestClient(create_app(store))
    body = {"items": candidates(2, start=1), "guidelines": "Be **strict**."}
    assert client.post("/api/admin/projects/p/items", headers=bearer(alice),
                       json=body).status_code == 403
    assert client.post("/api/admin/projects/q/items", headers=bearer(boss),
                       json=body).status_code == 404
    r = client.post("/api/admin/projects/p/items", headers=bearer(boss),
                    json={"items": [{"prompt": "x"}]})
    assert r.status_code == 422 and "items[0]" in r.json()["detail"]
    r = client.post("/api/admin/projects/p/items", headers=bearer(boss), json=body)
    assert r.status_code == 201 and r.json()["total"] == 3
    [p] = client.get("/api/me", headers=bearer(alice)).json()["projects"]
    assert p["guidelines"] == "Be **strict**." and p["assigned_total"] == 3


def test_undo_takes_back_the_last_label_and_serves_its_item_again(store):
    create_project(store, "p", rows(candidates(3)))
    token = store.add_annotator("a")
    client = TestClient(create_app(store))
    assert client.post("/api/projects/p/labels/undo", headers=bearer(token)).status_code == 404
    first = next_item(client, token)["item"]
    assert answer(client, token, first, ranks=[1, 0], rationale="B reads better").status_code \
        == 201
    held = next_item(client, token)["item"]  # shown, not answered: goes back to the pool
    r = client.post("/api/projects/p/labels/undo", headers=bearer(token))
    assert r.status_code == 200
    again = r.json()
    assert again["done"] == 0 and again["item"]["assignment"] == first["assignment"]
    assert again["item"]["responses"] == first["responses"]  # in the order shown before
    assert again["item"]["previous"] == {"choice": "rank", "ranks": [1, 0],
                                         "rationale": "B reads better"}
    assert store.labels("p") == []
    assert next_item(client, token)["item"]["assignment"] == first["assignment"]
    assert answer(client, token, first, ranks=[0, 1]).status_code == 201  # edited
    [label] = store.labels("p")
    assert label["ranks"] == ([0, 1] if label["order"] == [0, 1] else [1, 0])
    assert answer(client, token, held).status_code == 404  # given back by the undo
    # another annotator cannot undo it
    other = store.add_annotator("b")
    assert client.post("/api/projects/p/labels/undo", headers=bearer(other)).status_code == 404
    assert len(store.labels("p")) == 1


def test_undo_needs_the_csrf_token_from_a_cookie_session(store):
    create_project(store, "p", rows(candidates(1)))
    token = store.add_annotator("a")
    client = TestClient(create_app(store))
    client.post("/login", data={"token": token}, follow_redirects=False)
    item = client.get("/api/projects/p/next").json()["item"]
    csrf = {"X-CSRF-Token": client.cookies["tether_csrf"]}
    assert client.post("/api/projects/p/labels", headers=csrf, json={
        "assignment": item["assignment"], "choice": "cant_tell"}).status_code == 201
    assert client.post("/api/projects/p/labels/undo").status_code == 403
    assert client.post("/api/projects/p/labels/undo", headers=csrf).status_code == 200


def test_revoke_and_reissue_tokens(store):
    create_project(store, "p", rows(candidates(2)))
    boss = store.add_annotator("boss", admin=True)
    alice = store.add_annotator("alice")
    client = TestClient(create_app(store))
    held = next_item(client, alice)["item"]
    assert client.post("/api/admin/annotators/alice/revoke",
                       headers=bearer(alice)).status_code == 403
    assert client.post("/api/admin/annotators/boss/revoke",
                       headers=bearer(boss)).status_code == 409  # not yourself
    assert client.post("/api/admin/annotators/zed/revoke",
                       headers=bearer(boss)).status_code == 404
    assert client.post("/api/admin/annotators/alice/revoke",
                       headers=bearer(boss)).status_code == 200
    assert client.get("/api/me", headers=bearer(alice)).status_code == 401
    assert client.post("/login", data={"token": alice},
                       follow_redirects=False).headers["location"] == "/?error=1"
    # the item she held goes to someone else at once
    bob = store.add_annotator("bob")
    assert {next_item(client, bob)["item"]["assignment"]} != {held["assignment"]}
    listed = client.get("/api/admin/annotators", headers=bearer(boss)).json()["annotators"]
    assert [(a["name"], a["revoked"]) for a in listed] == [("boss", False), ("alice", True),
                                                           ("bob", False)]
    r = client.post("/api/admin/annotators/alice/token", headers=bearer(boss))
    new = r.json()["token"]
    assert new != alice and client.get("/api/me", headers=bearer(new)).status_code == 200
    assert client.get("/api/me", headers=bearer(alice)).status_code == 401


def test_admin_list_shows_each_annotators_progress_and_gold_accuracy(store):
    gold = [("g:1", {"prompt": "g", "chosen": "good", "rejected": "bad"})]
    create_project(store, "p", rows(candidates(2)), gold, gold_rate=1.0, overlap=2)
    boss, alice = store.add_annotator("boss", admin=True), store.add_annotator("alice")
    client = TestClient(create_app(store))
    while (item := next_item(client, alice)["item"]) is not None:
        ranks = [0 if t == "bad" else 1 for t in item["responses"]]  # gold wrong
        answer(client, alice, item, ranks=ranks if "good" in item["responses"] else [0, 1])
    listed = client.get("/api/admin/annotators", headers=bearer(boss)).json()["annotators"]
    a = next(x for x in listed if x["name"] == "alice")
    assert a["projects"] == [{"project": "p", "done": 2, "assigned_total": 2,
                              "gold_accuracy": 0.0}]
    assert client.get("/admin", headers=bearer(boss), follow_redirects=False).status_code \
        == 303  # the page needs the session cookie, as /label does
    client.post("/login", data={"token": alice}, follow_redirects=False)
    assert client.get("/admin", follow_redirects=False).headers["location"] == "/label"
    client.post("/login", data={"token": boss}, follow_redirects=False)
    assert client.get("/admin").status_code == 200


def test_progress_says_when_the_rest_is_held_by_someone_else(store):
    project = create_project(store, "p", rows(candidates(1)))
    a, b = store.add_annotator("a"), store.add_annotator("b")
    client = TestClient(create_app(store))
    assert next_item(client, a)["item"] is not None  # a holds the only item
    body = next_item(client, b)
    assert body["item"] is None
    assert (body["done"], body["assigned_total"], body["held_by_others"]) == (0, 1, 1)
    assert store.progress(project) == {"done": 0, "total": 1, "in_progress": 1}


def test_a_database_from_an_older_tether_gains_the_new_columns(tmp_path):
    db = tmp_path / "old.db"
    store = Store(str(db))
    create_project(store, "p", rows(candidates(1)))
    token = store.add_annotator("a")
    store.close()
    with sqlite3.connect(db) as conn:  # as it was before guidelines, revoking, finished
        conn.execute("ALTER TABLE projects DROP COLUMN guidelines")
        conn.execute("ALTER TABLE annotators DROP COLUMN revoked")
        conn.execute("ALTER TABLE items DROP COLUMN finished")
    store = Store(str(db))
    assert store.project("p").guidelines == ""
    assert store.annotator_for_token(token).name == "a"
    # its items say nothing of how their responses ended: every one did, as before
    assert [i.finished for i in store.items("p")] == [None]
    client = TestClient(create_app(store))
    assert answer(client, token, next_item(client, token)["item"]).status_code == 201
    [row], _ = export_rows(store.labels("p"))
    assert not {"chosen_finished", "rejected_finished"} & row.keys()
    store.close()


def test_guidelines_file_that_cannot_be_read_is_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", candidates(1))
    assert main(["label", "import", f"db={tmp_path / 'l.db'}", "project=p",
                 f"candidates={path}", f"guidelines={tmp_path / 'none.md'}"]) == 2
    assert "guidelines: cannot read" in capsys.readouterr().err
    assert not (tmp_path / "l.db").exists()
    with pytest.raises(ConfigError):
        Store(str(tmp_path / "l.db"), must_exist=True)


def test_every_new_route_needs_a_token_and_admin_ones_an_admin(store):
    create_project(store, "p", rows(candidates(1)))
    alice = store.add_annotator("alice")
    store.add_annotator("bob")
    client = TestClient(create_app(store))
    posts = ["/api/projects/p/labels/undo", "/api/admin/projects/p/items",
             "/api/admin/annotators/bob/revoke", "/api/admin/annotators/bob/token"]
    for path in posts:
        assert client.post(path, json={"items": []}).status_code == 401, path
    assert client.get("/api/admin/annotators").status_code == 401
    assert client.get("/admin", follow_redirects=False).headers["location"] == "/"
    for path in posts[1:]:
        assert client.post(path, headers=bearer(alice), json={"items": []}).status_code == 403
    assert client.get("/api/admin/annotators", headers=bearer(alice)).status_code == 403
    assert store.annotator_for_token(alice) is not None


def test_admin_actions_from_a_cookie_session_need_the_csrf_token(store):
    store.add_annotator("bob")
    boss = store.add_annotator("boss", admin=True)
    client = TestClient(create_app(store))
    client.post("/login", data={"token": boss}, follow_redirects=False)
    assert client.post("/api/admin/annotators/bob/token").status_code == 403
    assert client.post("/api/admin/annotators/bob/revoke",
                       headers={"X-CSRF-Token": client.cookies["tether_csrf"],
                                "Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/admin/annotators/bob/revoke",
                       headers={"X-CSRF-Token": client.cookies["tether_csrf"]}).status_code \
        == 200


def test_admin_api_adds_annotators(store):
    boss = store.add_annotator("boss", admin=True)
    alice = store.add_annotator("alice")
    client = TestClient(create_app(store))
    assert client.post("/api/admin/annotators", headers=bearer(alice),
                       json={"name": "eve", "admin": True}).status_code == 403
    r = client.post("/api/admin/annotators", headers=bearer(boss), json={"name": "carol"})
    assert r.status_code == 201
    assert store.annotator_for_token(r.json()["token"]).name == "carol"
    for body, message in [({"name": "carol"}, "already exists"),
                          ({"name": "no spaces"}, "annotator name"),
                          ({"name": "dan", "admin": "yes"}, "admin must be"),
                          ({"admin": True}, "expected")]:
        r = client.post("/api/admin/annotators", headers=bearer(boss), json=body)
        assert r.status_code == 422 and message in r.text, body
    assert [a.name for a in store.annotators()] == ["boss", "alice", "carol"]


def test_api_refuses_an_unknown_mode(store):
    create_project(store, "p", rows(candidates(1)))
    boss = store.add_annotator("boss", admin=True)
    client = TestClient(create_app(store))
    for path in ("/api/admin/projects/q/import", "/api/admin/projects/p/items"):
        r = client.post(path, headers=bearer(boss), json={"items": candidates(1),
                                                          "mode": "thumbs"})
        assert r.status_code == 422 and "mode must be one of compare, rate, both" in r.text
    assert [p.name for p in store.projects()] == ["p"] and len(store.items("p")) == 1
