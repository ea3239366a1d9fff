"""The labeling app in-process: storage, serving rules, security, export, and the commands."""

import json
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
from conftest import bearer, rows
from fastapi.testclient import TestClient

from tether.cli import main
from tether.data.readers import read_rows
from tether.errors import ConfigError, DataError
from tether.labeling import store as store_module
from tether.labeling.active import priority
from tether.labeling.export import export_rows
from tether.labeling.projects import create_project, project_stats
from tether.labeling.server import create_app
from tether.labeling.store import Assignment, Store, resolve_project


def candidates(n: int, k: int = 2) -> list[dict]:
    return [{"prompt": f"prompt {i}", "responses": [f"r{i}-{j}" for j in range(k)]}
            for i in range(n)]


def label_all(client, project: str, token: str, prefer_first: bool = True) -> int:
    """Label everything the server offers this annotator, preferring canonical response 0
    (the server shows responses in a shuffled order, so the client looks the text up)."""
    n = 0
    while (item := client.get(f"/api/projects/{project}/next",
                              headers=bearer(token)).json()["item"]) is not None:
        shown = item["responses"]
        best = [t for t in shown if t.endswith("-0")][0] if prefer_first else shown[-1]
        ranks = [0 if t == best else 1 for t in shown]
        r = client.post(f"/api/projects/{project}/labels", headers=bearer(token),
                        json={"assignment": item["assignment"], "choice": "rank",
                              "ranks": ranks})
        assert r.status_code == 201, r.text
        n += 1
    return n


# -- import -----------------------------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("{not json", "c.jsonl:2: invalid JSON"),
    ('{"prompt": "p"}', "c.jsonl:2: missing 'responses'"),
    ('{"prompt": "p", "responses": ["only one"]}', "c.jsonl:2: 'responses' is a single"),
    ('{"responses": ["a", "b"]}', "c.jsonl:2: missing field 'prompt'"),
])
def test_malformed_import_names_the_line_and_imports_nothing(tmp_path, store, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(candidates(1)[0]) + "\n" + line + "\n")
    src = [(row.where.replace(str(tmp_path) + "/", ""), row.record)
           for row in read_rows(str(path))]
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        create_project(store, "p", src)
    assert store.projects() == []


def test_import_command_exit_code_2_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(candidates(1)[0]) + '\n{"prompt": "p", "responses": []}\n')
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: 'responses' is empty" in err and "Traceback" not in err
    assert Store(str(db)).projects() == []


def test_import_command_takes_gold_items_and_points_the_old_key_to_them(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in candidates(4)))
    gold = tmp_path / "g.jsonl"
    gold.write_text(json.dumps({"prompt": "g", "chosen": "good", "rejected": "bad"}) + "\n")
    db = tmp_path / "l.db"
    common = ["label", "import", f"db={db}", "project=p", f"candidates={path}"]
    assert main([*common, f"gold={gold}"]) == 2
    assert "unknown key 'gold' (renamed gold_items" in capsys.readouterr().err
    assert main([*common, f"gold_items={gold}", "gold_items_rate=0.5"]) == 0
    project = Store(str(db)).project("p")
    assert project.gold_rate == 0.5
    assert sum(i.gold is not None for i in Store(str(db)).items("p")) == 1


def test_projects_are_separate_and_names_unique(store):
    create_project(store, "one", rows(candidates(3)))
    create_project(store, "two", rows(candidates(5, k=4)))
    assert [(p.name, p.k) for p in store.projects()] == [("one", 2), ("two", 4)]
    with pytest.raises(ConfigError, match="already exists"):
        create_project(store, "one", rows(candidates(1)))
    with pytest.raises(ConfigError, match="several projects"):
        resolve_project(store, "")


def test_sqlite_database_uses_wal(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


# -- serving ----------------------------------------------------------------------------------


def test_overlap_each_item_to_n_annotators_never_twice(store):
    project = create_project(store, "p", rows(candidates(10)), overlap=2)
    people = [store.annotator_for_token(store.add_annotator(f"a{i}")) for i in range(3)]
    seen: Counter = Counter()
    for _ in range(20):  # interleaved, as in real use
        for who in people:
            item = store.next_item(project, who)
            if item is not None:
                store.submit(project, who, item.assignment, "rank", [0, 1])
    labels = store.labels("p")
    assert len(labels) == 20  # 10 items x overlap 2
    per_item = Counter(lab["item"] for lab in labels)
    assert set(per_item.values()) == {2}
    seen.update((lab["item"], lab["annotator"]) for lab in labels)
    assert max(seen.values()) == 1
    assert all(store.next_item(project, who) is None for who in people)


def test_display_order_is_shuffled_recorded_and_mapped_back(store):
    project = create_project(store, "p", rows(candidates(40, k=3)))
    who = store.annotator_for_token(store.add_annotator("a"))
    orders = set()
    for _ in range(40):
        item = store.next_item(project, who)
        # rank the responses by their canonical index, whatever order they are shown in
        ranks = [int(text.rsplit("-", 1)[1]) for text in item.responses]
        store.submit(project, who, item.assignment, "rank", ranks)
    for lab in store.labels("p"):
        assert lab["ranks"] == [0, 1, 2]
        orders.add(tuple(lab["order"]))
    assert len(orders) > 3  # several of the 6 permutations were shown


def test_submission_is_idempotent(store):
    project = create_project(store, "p", rows(candidates(2)))
    who = store.annotator_for_token(store.add_annotator("a"))
    item = store.next_item(project, who)
    first = store.submit(project, who, item.assignment, "rank", [1, 0])
    again = store.submit(project, who, item.assignment, "rank", [0, 1])
    assert first == (first[0], False) and again == (first[0], True)
    assert len(store.labels("p")) == 1 and store.labels("p")[0]["ranks"] is not None


def test_pending_item_is_served_again_until_answered(store):
    project = create_project(store, "p", rows(candidates(3)))
    who = store.annotator_for_token(store.add_annotator("a"))
    assert store.next_item(project, who).assignment == store.next_item(project, who).assignment


def test_unanswered_assignment_expires_and_goes_to_someone_else(store):
    project = create_project(store, "p", rows(candidates(1)), lease_minutes=10)
    a = store.annotator_for_token(store.add_annotator("a"))
    b = store.annotator_for_token(store.add_annotator("b"))
    stale = store.next_item(project, a)
    assert store.next_item(project, b) is None  # overlap 1: a holds the only item
    with store.session() as s:
        s.get(Assignment, stale.assignment).created -= timedelta(minutes=11)
        s.commit()
    assert store.next_item(project, b) is not None
    with pytest.raises(LookupError, match="expired"):
        store.submit(project, a, stale.assignment, "rank", [0, 1])


def test_gold_items_are_mixed_in_at_the_rate_and_scored(store):
    gold = [(f"g.jsonl:{i}", {"prompt": f"gold {i}", "chosen": f"good {i}",
                              "rejected": f"bad {i}"}) for i in range(30)]
    project = create_project(store, "p", rows(candidates(60)), gold, gold_rate=0.3)
    store.rng.seed(0)
    who = store.annotator_for_token(store.add_annotator("a"))
    shown_gold = 0
    for _ in range(60):
        item = store.next_item(project, who)
        if item.gold:
            shown_gold += 1
            ranks = [0 if t.startswith("good") else 1 for t in item.responses]
            if shown_gold % 4 == 0:
                ranks = [1 - r for r in ranks]  # every fourth gold answer wrong
        else:
            ranks = [0, 1]
        store.submit(project, who, item.assignment, "rank", ranks)
    assert 8 <= shown_gold <= 28  # 0.3 x 60 = 18 expected
    a = project_stats(store, project)["annotators"]["a"]
    assert a["gold_items"] == shown_gold
    assert a["gold_accuracy"] == pytest.approx(1 - (shown_gold // 4) / shown_gold)


def test_active_sampling_serves_least_certain_first(store):
    project = create_project(store, "p", rows(candidates(4)))
    # one reward model: priority is minus the smallest margin
    scores = {1: [[0.0, 2.0]], 2: [[0.0, 0.1]], 3: [[1.0, 0.5]], 4: [[0.0, -3.0]]}
    store.set_priorities("p", {i: priority(np.array(s)) for i, s in scores.items()})
    who = store.annotator_for_token(store.add_annotator("a"))
    served = []
    while (item := store.next_item(project, who)) is not None:
        served.append(int(item.responses[0].split("-")[0][1:]) + 1)
        store.submit(project, who, item.assignment, "cant_tell", None)
    assert served == [2, 3, 1, 4]


def test_priority_margin_and_ensemble_disagreement():
    assert priority(np.array([[1.0, 3.0, 1.5]])) == pytest.approx(-0.5)
    # two models: margins of (0,1) are -1 and 1 (std 1), of (0,2) 0 and 0, of (1,2) 1 and -1
    assert priority(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        priority(np.array([[1.0]]))


# -- the HTTP API: auth, CSRF, what is served -------------------------------------------------


@pytest.fixture
def app_setup(store):
    create_project(store, "p", rows(candidates(4)), overlap=2)
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob")}
    tokens["boss"] = store.add_annotator("boss", admin=True)
    return TestClient(create_app(store)), tokens


def test_requests_without_a_valid_token_are_refused(app_setup):
    client, _ = app_setup
    for path in ("/api/me", "/api/projects/p/next", "/api/projects/p/labels",
                 "/api/admin/projects"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bearer("tt_wrong")).status_code == 401
    assert client.post("/api/projects/p/labels", json={}).status_code == 401
    assert client.get("/label", follow_redirects=False).status_code == 303


def test_another_annotators_assignment_and_labels_are_off_limits(app_setup):
    client, t = app_setup
    item = client.get("/api/projects/p/next", headers=bearer(t["alice"])).json()["item"]
    body = {"assignment": item["assignment"], "choice": "rank", "ranks": [0, 1]}
    r = client.post("/api/projects/p/labels", headers=bearer(t["bob"]), json=body)
    assert r.status_code == 403
    assert client.post("/api/projects/p/labels", headers=bearer(t["alice"]),
                       json=body).status_code == 201
    assert client.get("/api/projects/p/labels", headers=bearer(t["bob"])).json() == \
        {"labels": []}
    [mine] = client.get("/api/projects/p/labels", headers=bearer(t["alice"])).json()["labels"]
    assert mine["responses"] == item["responses"] and mine["ranks"] == [0, 1]  # as she saw it


def test_admin_routes_need_an_admin_token(app_setup):
    client, t = app_setup
    for path in ("/api/admin/projects", "/api/admin/projects/p/stats",
                 "/api/admin/projects/p/export"):
        assert client.get(path, headers=bearer(t["alice"])).status_code == 403
        assert client.get(path, headers=bearer(t["boss"])).status_code == 200
    r = client.post("/api/admin/projects/q/import", headers=bearer(t["alice"]),
                    json={"items": candidates(2)})
    assert r.status_code == 403
    r = client.post("/api/admin/projects/q/import", headers=bearer(t["boss"]),
                    json={"items": candidates(2) + [{"prompt": "x", "responses": ["one"]}]})
    assert r.status_code == 422 and "items[2]" in r.json()["detail"]
    r = client.post("/api/admin/projects/q/import", headers=bearer(t["boss"]),
                    json={"items": candidates(2), "overlap": 3})
    assert r.status_code == 201 and r.json()["total"] == 6


def test_cookie_session_posts_need_the_csrf_token(app_setup):
    client, t = app_setup
    r = client.post("/login", data={"token": t["alice"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/label"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    item = client.get("/api/projects/p/next").json()["item"]
    body = {"assignment": item["assignment"], "choice": "rank", "ranks": [0, 1]}
    assert client.post("/api/projects/p/labels", json=body).status_code == 403
    forged = {"X-CSRF-Token": "0" * 64}
    assert client.post("/api/projects/p/labels", json=body, headers=forged).status_code == 403
    good = {"X-CSRF-Token": client.cookies["tether_csrf"]}
    cross_site = {**good, "Origin": "http://evil.example"}
    assert client.post("/api/projects/p/labels", json=body,
                       headers=cross_site).status_code == 403
    assert client.post("/api/projects/p/labels", json=body, headers=good).status_code == 201
    assert client.post("/login", data={"token": "tt_nope"},
                       follow_redirects=False).headers["location"] == "/?error=1"


def test_database_and_other_files_are_never_served(app_setup, store):
    client, _ = app_setup
    db_name = store.db.rsplit("/", 1)[1]
    for path in (f"/{db_name}", f"/static/{db_name}", "/static/..%2Flabels.db",
                 "/static/../store.py", "/static/%2e%2e/store.py", "/static/store.py",
                 "/static/__init__.py", "/docs", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert b"SQLite" not in r.content


def test_pages_carry_a_strict_content_security_policy(app_setup):
    client, _ = app_setup
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get("/api/me").headers["cache-control"] == "no-store"


def test_bad_label_bodies_are_rejected(app_setup):
    client, t = app_setup
    h = bearer(t["alice"])
    item = client.get("/api/projects/p/next", headers=h).json()["item"]
    for body, code in [({"assignment": item["assignment"], "choice": "rank",
                         "ranks": [0]}, 422),
                       ({"assignment": item["assignment"], "choice": "best"}, 422),
                       ({"assignment": item["assignment"], "choice": "rank",
                         "ranks": ["a", 1]}, 422),
                       ({"choice": "rank"}, 422),
                       ({"assignment": "nope", "choice": "cant_tell"}, 404)]:
        assert client.post("/api/projects/p/labels", headers=h, json=body).status_code == code
    assert client.post("/api/projects/p/labels", headers=h, content=b"{oops",
                       ).status_code == 400
    assert client.get("/api/projects/nope/next", headers=h).status_code == 404


# -- export -----------------------------------------------------------------------------------


def lab(item, who, ranks, k=2, gold=None, choice="rank", rationale="", rating=None):
    return {"item": item, "annotator": who, "prompt": f"p{item}",
            "responses": [f"r{item}-{j}" for j in range(k)], "ranks": ranks,
            "order": list(range(k)), "gold": gold, "choice": choice, "rationale": rationale,
            "rating": rating}


def test_export_majority_all_gold_and_threshold():
    labels = [
        lab(1, "a", [0, 1]), lab(1, "b", [0, 1], rationale="crisper"),
        lab(1, "c", [1, 0]),  # 2:1 for r1-0
        lab(2, "a", [1, 0]), lab(2, "b", [0, 1]),  # split evenly: no majority
        lab(3, "a", [0, 0]), lab(3, "b", [0, 1]),  # tie counts half: r3-0 wins
        lab(4, "a", None, choice="cant_tell"),  # no preference
        lab(5, "a", [2, 0, 1], k=3), lab(5, "b", [2, 1, 0], k=3),  # rank sums 4, 1, 1
        lab(9, "c", [1, 0], gold=[0, 1]), lab(9, "a", [0, 1], gold=[0, 1]),  # gold: c wrong
    ]
    rows, counts = export_rows(labels)
    assert rows == [
        {"prompt": "p1", "chosen": "r1-0", "rejected": "r1-1", "labels": 3,
         "rationales": ["crisper"]},
        {"prompt": "p3", "chosen": "r3-0", "rejected": "r3-1", "labels": 2, "rationales": []},
        {"prompt": "p5", "responses": ["r5-0", "r5-1", "r5-2"], "ranks": [1, 0, 0],
         "labels": 2, "rationales": []}]
    assert counts["no_majority"] == 1 and counts["no_preference"] == 1
    assert counts["gold_labels"] == 2
    # c got its gold item wrong: with a threshold, c's vote on item 1 goes, a 2:0 majority
    rows, counts = export_rows(labels, min_gold_accuracy=0.5)
    assert counts["excluded_annotators"] == ["c"] and rows[0]["labels"] == 2
    rows, counts = export_rows(labels, aggregate="all")
    assert len(rows) == 8 and {r["annotator"] for r in rows} == {"a", "b", "c"}
    assert [r["rationale"] for r in rows if r["rationale"]] == ["crisper"]
    assert counts["no_preference"] == 2  # the tie [0, 0] and the can't tell  (10 non-gold labels)


def test_export_command_and_rm_reads_the_database(tmp_path, store, capsys):
    project = create_project(store, "p", rows(candidates(5)), overlap=2)
    for name in ("a", "b"):
        label_all(TestClient(create_app(store)), "p", store.add_annotator(name))
    assert store.progress(project) == {"done": 10, "total": 10, "in_progress": 0}
    out = tmp_path / "labels.jsonl"
    assert main(["label", "export", f"db={store.db}", f"output={out}"]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(exported) == 5 and all(r["chosen"].endswith("-0") for r in exported)
    from_db = [row.record for row in read_rows(store.db)]
    assert from_db == exported == [row.record for row in read_rows(store.db + "#p")]
    with pytest.raises(ConfigError, match="no project 'q'"):
        list(read_rows(store.db + "#q"))
    assert main(["label", "stats", f"db={store.db}", f"output={tmp_path / 's.json'}"]) == 0
    text = capsys.readouterr().out
    assert "Krippendorff's alpha" in text and "a / b: 1.000" in text
    assert json.loads((tmp_path / "s.json").read_text())["labels_done"] == 10


def test_imported_finished_flags_reach_the_exported_rows(tmp_path, capsys):
    """Whether each sampled response ended with EOS (`tether sample`'s finished) survives
    import, labeling and export, written as the simulated labeler writes it, so DPO and KTO
    score a response cut at the token limit without EOS; a row imported without flags
    exports none."""
    from tether.data.preferences import parse_preference

    cands = candidates(3)
    cands[0]["finished"] = [True, False]
    cands[1]["finished"] = [False, True]
    cands.append({"prompt": "prompt 9", "responses": ["r9-0", "r9-1", "r9-2"],
                  "finished": [True, False, False]})
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in cands))
    db = str(tmp_path / "l.db")
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={path}"]) == 0
    store = Store(db)
    label_all(TestClient(create_app(store)), "p", store.add_annotator("a"))
    out = tmp_path / "labels.jsonl"
    assert main(["label", "export", f"db={db}", f"output={out}"]) == 0
    exported = {r["prompt"]: r for r in map(json.loads, out.read_text().splitlines())}
    flags = {p: {k: v for k, v in r.items() if "finished" in k} for p, r in exported.items()}
    assert flags == {"prompt 0": {"chosen_finished": True, "rejected_finished": False},
                     "prompt 1": {"chosen_finished": False, "rejected_finished": True},
                     "prompt 2": {}, "prompt 9": {"finished": [True, False, False]}}
    assert all(r["chosen"].endswith("-0") for r in exported.values() if "chosen" in r)
    # DPO reads them as it reads the simulated labeler's, from the export or the database
    assert {row.record["prompt"]: parse_preference(row.record, row.where).finished
            for row in read_rows(db)} == {"prompt 0": [True, False], "prompt 1": [False, True],
                                          "prompt 2": None, "prompt 9": [True, False, False]}
    kto = tmp_path / "kto.jsonl"
    assert main(["label", "export", f"db={db}", f"output={kto}", "format=kto"]) == 0
    ended = {r["completion"]: r.get("finished") for r in map(json.loads,
                                                             kto.read_text().splitlines())}
    assert ended == {"r0-0": True, "r0-1": False, "r1-0": False, "r1-1": True, "r2-0": None,
                     "r2-1": None, "r9-0": True, "r9-1": False, "r9-2": False}
    capsys.readouterr()


def test_add_annotator_prints_a_token_that_logs_in(tmp_path, capsys):
    db = tmp_path / "l.db"
    assert main(["label", "add-annotator", f"db={db}", "name=zoe"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert Store(str(db)).annotator_for_token(token).name == "zoe"
    assert main(["label", "add-annotator", f"db={db}", "name=zoe"]) == 2
    with Store(str(db)).session() as s:  # only the hash is stored
        assert token not in json.dumps([a.token_hash for a in s.query(store_module.Annotator)])


def test_rm_trains_on_the_database(store, tmp_path):
    """`tether rm data.train=labels.db`: people's labels, straight from the database."""
    from tether.data.preferences import parse_preference

    create_project(store, "p", rows(candidates(12, k=3)))
    label_all(TestClient(create_app(store)), "p", store.add_annotator("a"))
    prefs = [parse_preference(row.record, row.where) for row in read_rows(store.db)]
    assert len(prefs) == 12 and all(p.ranks[0] == 0 for p in prefs)
    assert main(["rm", "model.name=tiny", f"data.train={store.db}#p", "data.eval_fraction=0",
                 f"run_dir={tmp_path / 'rm'}", "train.epochs=1", "train.batch_size=4",
                 "train.micro_batch_size=4"]) == 0
    assert (tmp_path / "rm" / "final" / "config.json").exists()


def test_import_with_reward_models_orders_items_by_their_uncertainty(tmp_path):
    """`tether label import reward_model=A,B`: every item scored by both models, and served
    in the order of the margins' disagreement, computed here from the models' own scores."""
    from tether.models.reward import RewardModel

    paths = [str(RewardModel.build("tiny", seed=seed, max_length=64).save(tmp_path / f"rm{seed}"))
             for seed in (1, 2)]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in candidates(6, k=3)))
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=p", f"candidates={path}",
                 f"reward_model={','.join(paths)}"]) == 0
    store = Store(str(db))
    items = store.items("p")
    models = [RewardModel.from_pretrained(p) for p in paths]
    expected = {}
    for item in items:
        prompt = [{"role": "user", "content": item.prompt}]
        scores = np.array([m.score([prompt] * 3, item.responses) for m in models])
        expected[item.id] = priority(scores)
        assert item.priority == pytest.approx(expected[item.id], abs=1e-5)
    who = store.annotator_for_token(store.add_annotator("a"))
    project = store.project("p")
    served = []
    while (item := store.next_item(project, who)) is not None:
        served.append(next(i.id for i in items if sorted(i.responses) == sorted(item.responses)))
        store.submit(project, who, item.assignment, "cant_tell", None)
    assert served == sorted(expected, key=expected.get, reverse=True)
