"""Thumbs: responses rated good or bad, alone or beside comparisons; their gold items,
agreement, and export as KTO rows."""

import json

import pytest
from conftest import bearer, rows
from fastapi.testclient import TestClient

from tether.cli import main
from tether.errors import DataError
from tether.labeling.export import export_rows, kto_rows
from tether.labeling.projects import create_project, project_stats
from tether.labeling.server import create_app
from tether.labeling.store import Store


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def candidates(n: int, k: int = 2) -> list[dict]:
    return [{"prompt": f"prompt {i}", "responses": [f"r{i}-{j}" for j in range(k)]}
            for i in range(n)]


def rate_all(client, project: str, token: str, good=lambda text: text.endswith("-0")) -> int:
    """Rate everything offered: good when `good(text)`, as a person judging by the text."""
    n = 0
    while (item := client.get(f"/api/projects/{project}/next",
                              headers=bearer(token)).json()["item"]) is not None:
        [text] = item["responses"]
        r = client.post(f"/api/projects/{project}/labels", headers=bearer(token),
                        json={"assignment": item["assignment"],
                              "choice": "good" if good(text) else "bad",
                              "rationale": f"why {text}"})
        assert r.status_code == 201, r.text
        n += 1
    return n


def test_rate_mode_makes_one_rating_per_response_served_at_overlap(store):
    project = create_project(store, "t", rows(candidates(3, k=2)), overlap=2, mode="rate")
    assert sorted(len(i.responses) for i in store.items("t")) == [1] * 6
    client = TestClient(create_app(store))
    tokens = [store.add_annotator(n) for n in ("a", "b", "c")]
    done = [rate_all(client, "t", t) for t in tokens]
    assert sum(done) == 12 and max(done) <= 6  # 6 responses x overlap 2, none twice to one
    labels = store.labels("t")
    assert {(lab["item"], lab["annotator"]) for lab in labels}.__len__() == 12
    assert store.progress(project) == {"done": 12, "total": 12, "in_progress": 0}
    stats = project_stats(store, project)
    assert stats["ratings"]["good"] == 6 and stats["ratings"]["bad"] == 6
    assert all(k["kappa"] == 1.0 for k in stats["ratings"]["kappa"])  # all judged alike


def test_both_mode_mixes_comparisons_and_ratings_and_checks_the_choice(store):
    create_project(store, "m", rows(candidates(2, k=3)), mode="both")
    assert sorted(len(i.responses) for i in store.items("m")) == [1] * 6 + [3] * 2
    client = TestClient(create_app(store))
    h = bearer(store.add_annotator("a"))
    seen = set()
    while (item := client.get("/api/projects/m/next", headers=h).json()["item"]) is not None:
        k = len(item["responses"])
        seen.add(k)
        wrong = {"choice": "rank", "ranks": [0]} if k == 1 else {"choice": "good"}
        r = client.post("/api/projects/m/labels", headers=h,
                        json={"assignment": item["assignment"], **wrong})
        assert r.status_code == 422 and ("a rating" if k == 1 else "a comparison") in r.text
        right = {"choice": "bad"} if k == 1 else {"choice": "rank", "ranks": [0, 1, 2]}
        assert client.post("/api/projects/m/labels", headers=h,
                           json={"assignment": item["assignment"], **right}).status_code == 201
    assert seen == {1, 3}


def test_gold_ratings_measure_each_annotator(store):
    gold = [{"prompt": f"g{i}", "completion": f"{'fine' if i % 2 else 'awful'} {i}",
             "label": bool(i % 2)} for i in range(10)]
    to_rate = [{"prompt": f"p{i}", "completion": f"answer {i}"} for i in range(30)]
    # gold_rate 1: every annotator sees the 10 gold items first, then the rest
    project = create_project(store, "g", ratings=rows(to_rate + gold, "r.jsonl"),
                             gold_rate=1.0, overlap=2)
    assert sum(i.gold is not None for i in store.items("g")) == 10
    client = TestClient(create_app(store))
    # "a" judges gold by its text, "b" calls everything good
    rate_all(client, "g", store.add_annotator("a"), good=lambda t: not t.startswith("awful"))
    rate_all(client, "g", store.add_annotator("b"), good=lambda t: True)
    per = project_stats(store, project)["annotators"]
    assert per["a"]["gold_accuracy"] == 1.0 and per["a"]["gold_ratings"] == 10
    b = per["b"]
    assert b["gold_ratings"] == 10 and b["gold_accuracy"] == 0.5  # the 5 good ones right
    rows_, counts = export_rows(store.labels("g"), format="kto", min_gold_accuracy=0.8)
    assert counts["excluded_annotators"] == ["b"]
    assert len(rows_) == 30 and all(r["label"] for r in rows_)  # a: all "answer" good


def test_kto_export_of_ratings_majority_and_all(store):
    create_project(store, "k", rows(candidates(2, k=2)), overlap=3, mode="rate")
    client = TestClient(create_app(store))
    # r0-0 and r1-0: good by all three; r0-1: bad by a and b, good by c; r1-1: a good, b bad,
    # c can't tell -> no majority
    votes = {"a": {"r0-1": "bad", "r1-1": "good"}, "b": {"r0-1": "bad", "r1-1": "bad"},
             "c": {"r0-1": "good", "r1-1": "cant_tell"}}
    for name, mine in votes.items():
        token = store.add_annotator(name)
        while (item := client.get("/api/projects/k/next",
                                  headers=bearer(token)).json()["item"]) is not None:
            text = item["responses"][0]
            client.post("/api/projects/k/labels", headers=bearer(token), json={
                "assignment": item["assignment"], "choice": mine.get(text, "good"),
                "rationale": "clear" if text == "r0-1" and name == "a" else ""})
    rows_, counts = export_rows(store.labels("k"), format="kto")
    by_text = {r["completion"]: r for r in rows_}
    assert set(by_text) == {"r0-0", "r1-0", "r0-1"} and counts["no_majority"] == 1
    assert by_text["r0-1"] == {"prompt": "prompt 0", "completion": "r0-1", "label": False,
                               "labels": 3, "rationales": ["clear"]}
    assert by_text["r0-0"]["label"] is True
    every, counts = export_rows(store.labels("k"), aggregate="all", format="kto")
    assert len(every) == 11 and counts["no_preference"] == 1  # 12 labels, one can't tell
    assert {(r["annotator"], r["completion"], r["label"], r["rationale"]) for r in every} >= {
        ("a", "r0-1", False, "clear"), ("c", "r0-1", True, "")}


def test_pairs_and_rankings_unpair_into_kto_rows():
    assert kto_rows({"prompt": "p", "chosen": "good", "rejected": "bad", "labels": 2}) == [
        {"prompt": "p", "completion": "good", "label": True, "labels": 2},
        {"prompt": "p", "completion": "bad", "label": False, "labels": 2}]
    # best (rank 0, tied twice) true, worst false, the middle one left out
    ranking = {"prompt": "p", "responses": ["w", "b1", "m", "b2"], "ranks": [2, 0, 1, 0],
               "annotator": "a"}
    assert [(r["completion"], r["label"]) for r in kto_rows(ranking)] == [
        ("w", False), ("b1", True), ("b2", True)]
    assert all(r["annotator"] == "a" for r in kto_rows(ranking))


def test_kto_rows_carry_each_responses_finished_flag():
    """A response that never ended (finished: false) keeps the flag in its own KTO row, so KTO
    encodes it without EOS; rows without flags get none."""
    pair = {"prompt": "p", "chosen": "good", "rejected": "cut", "chosen_finished": True,
            "rejected_finished": False, "gold_chosen": 1.0}
    assert kto_rows(pair) == [
        {"prompt": "p", "completion": "good", "label": True, "gold_chosen": 1.0,
         "finished": True},
        {"prompt": "p", "completion": "cut", "label": False, "gold_chosen": 1.0,
         "finished": False}]
    ranking = {"prompt": "p", "responses": ["w", "b", "m"], "ranks": [2, 0, 1],
               "finished": [False, True, False]}
    assert [(r["completion"], r["label"], r["finished"]) for r in kto_rows(ranking)] == [
        ("w", False, False), ("b", True, True)]
    del ranking["finished"]
    assert not any("finished" in r for r in kto_rows(ranking))


def lab(item, ranks=None, rating=None, k=2):
    return {"item": item, "annotator": "a", "prompt": "p", "rationale": "",
            "responses": [f"{item}-{j}" for j in range(k)], "ranks": ranks,
            "order": list(range(k)), "gold": None, "choice": "rank", "rating": rating}


def test_ratings_alone_are_no_preferences_and_mixed_ones_are_left_out_of_them():
    ratings = [lab(1, rating=True, k=1), lab(2, rating=False, k=1)]
    with pytest.raises(DataError, match="format=kto"):
        export_rows(ratings)
    rows_, counts = export_rows([*ratings, lab(3, ranks=[1, 0])])
    assert rows_ == [{"prompt": "p", "chosen": "3-1", "rejected": "3-0", "labels": 1,
                      "rationales": []}]
    assert counts["ratings_left_out"] == 2
    rows_, _ = export_rows([*ratings, lab(3, ranks=[1, 0])], format="kto")
    assert [(r["completion"], r["label"]) for r in rows_] == [
        ("3-1", True), ("3-0", False), ("1-0", True), ("2-0", False)]


def test_import_ratings_and_export_kto_from_the_command_line(tmp_path, capsys):
    ratings = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "p1", "completion": "fine"}, {"prompt": "p2", "completion": "meh"},
        {"prompt": "g", "completion": "known good", "label": True}])
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=t", f"ratings={ratings}",
                 "gold_items_rate=1"]) == 0
    assert "imported 2 items (2 to rate) (+1 gold)" in capsys.readouterr().out
    store = Store(str(db))
    client = TestClient(create_app(store))
    rate_all(client, "t", store.add_annotator("a"), good=lambda t: t != "meh")
    out = tmp_path / "kto.jsonl"
    assert main(["label", "export", f"db={db}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert "project 't'" in err and "format=kto" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["label", "export", f"db={db}", f"output={out}", "format=kto"]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["completion"], r["label"]) for r in exported) == [("fine", True),
                                                                        ("meh", False)]
    assert main(["label", "stats", f"db={db}"]) == 0
    assert "ratings: 2 good, 1 bad" in capsys.readouterr().out  # the gold one too
    with pytest.raises(SystemExit):
        main(["label", "export", "--help"])
    assert "best response(s) true and worst" in " ".join(capsys.readouterr().out.split())


def test_rated_responses_keep_whether_they_ended_into_the_kto_rows(tmp_path, capsys):
    """A response rated alone keeps its finished flag, from a candidates row (mode=rate) or a
    KTO-shaped row, into its exported KTO row; one imported without a flag gets none."""
    cands = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "p1", "responses": ["r1-0", "r1-1", "r1-0"], "finished": [True, False, True]},
        {"prompt": "p2", "responses": ["r2-0", "r2-1"]}])
    ratings = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "p3", "completion": "r3-0", "finished": False},
        {"prompt": "p3", "completion": "r3-1"}])
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=t", f"candidates={cands}",
                 f"ratings={ratings}", "mode=rate"]) == 0
    store = Store(str(db))
    rate_all(TestClient(create_app(store)), "t", store.add_annotator("a"))
    out = tmp_path / "kto.jsonl"
    assert main(["label", "export", f"db={db}", f"output={out}", "format=kto"]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["completion"], r["label"], r.get("finished")) for r in exported) == [
        ("r1-0", True, True), ("r1-1", False, False), ("r2-0", True, None),
        ("r2-1", False, None), ("r3-0", True, False), ("r3-1", False, None)]
    capsys.readouterr()


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "x", "label": "yes"}, "r.jsonl:2: 'label' must be true "
                                                          "or false"),
    ({"prompt": "p", "completion": "x", "finished": "no"}, "r.jsonl:2: 'finished' must be "
                                                            "true or false"),
    ({"prompt": "p", "completion": "x", "label": 1}, "r.jsonl:2: 'label' must be true"),
    ({"prompt": "p", "completion": "  "}, "r.jsonl:2: 'completion' is empty"),
    ({"prompt": "p"}, "r.jsonl:2: missing 'completion'"),
])
def test_bad_ratings_file_is_exit_2_with_file_line_and_writes_nothing(tmp_path, capsys, row,
                                                                       message):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "ok"}, row])
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=t", f"ratings={path}"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/{message}" in err and "Traceback" not in err
    assert not db.exists()  # nothing written, not even an empty database
    # the same rows as gold items are refused the same way
    assert main(["label", "import", f"db={db}", "project=t", f"ratings={path}",
                 f"gold_items={path}"]) == 2


def test_admin_api_imports_ratings_and_exports_kto(store):
    boss = bearer(store.add_annotator("boss", admin=True))
    client = TestClient(create_app(store))
    r = client.post("/api/admin/projects/t/import", headers=boss, json={
        "items": [], "ratings": [{"prompt": "p", "completion": "c", "label": "no"}]})
    assert r.status_code == 422 and "ratings[0]: 'label' must be true or false" in r.text
    assert store.projects() == []
    r = client.post("/api/admin/projects/t/import", headers=boss, json={
        "items": candidates(1), "mode": "rate"})
    assert r.status_code == 201 and r.json()["total"] == 2
    rate_all(client, "t", store.add_annotator("a"))
    r = client.get("/api/admin/projects/t/export", headers=boss)
    assert r.status_code == 422 and "format=kto" in r.text
    r = client.get("/api/admin/projects/t/export?format=kto", headers=boss)
    assert sorted((x["completion"], x["label"]) for x in r.json()["rows"]) == [
        ("r0-0", True), ("r0-1", False)]


def test_rate_mode_takes_rows_of_one_response_and_rates_a_repeated_text_once(tmp_path, capsys):
    """`tether sample k=1` gives one response per prompt: nothing to compare, but each can be
    rated; a text sampled twice for one prompt is one response to rate."""
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "p1", "responses": ["only"]},
        {"prompt": "p2", "responses": ["same", "same", "other"]}])
    db = tmp_path / "l.db"
    assert main(["label", "import", f"db={db}", "project=c", f"candidates={path}"]) == 2
    assert "c.jsonl:1: 'responses' is a single response" in capsys.readouterr().err
    assert main(["label", "import", f"db={db}", "project=r", f"candidates={path}",
                 "mode=rate"]) == 0
    items = Store(str(db)).items("r")
    assert [(i.prompt, i.responses, i.source.rsplit(" ", 1)[1]) for i in items] == [
        ("p1", ["only"], "responses[0]"), ("p2", ["same"], "responses[0]"),
        ("p2", ["other"], "responses[2]")]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "responses": []}])
    assert main(["label", "import", f"db={db}", "project=b", f"candidates={bad}",
                 "mode=rate"]) == 2
    assert "b.jsonl:1: 'responses' must be a non-empty list" in capsys.readouterr().err
