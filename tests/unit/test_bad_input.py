"""Bad input through the command line (issue 22): one line on stderr naming the file and line,
exit code 2, no traceback, and nothing half-written."""

import json
import logging
import sys

import pytest
from conftest import write_jsonl
from transformers.utils import logging as hf_logging

from tether.cli import main
from tether.labeling.store import Store
from tether.rollout.static import StaticGenerator


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr), with transformers' log lines in stderr as a
    terminal shows them: its handler (a plain StreamHandler, beside pytest's) writes to the
    sys.stderr of when transformers was imported, so for the call it is pointed at capsys's."""
    with pytest.MonkeyPatch.context() as patch:
        for handler in hf_logging.get_logger("transformers").handlers:
            if type(handler) is logging.StreamHandler:
                patch.setattr(handler, "stream", sys.stderr)
                patch.setattr(handler, "flush", sys.stderr.flush)
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(code, err, command):
    """The one line tether prints for a user's mistake; nothing (a library's warning, a
    traceback) before or after it."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tether {command}: error: "), err
    return lines[0]


def test_a_long_sft_row_is_cut_before_tokenising_and_stderr_is_tethers(capsys, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "Review:", "completion": "The film was long, so long. " * 40_000}])  # 1.1 MB
    code, _, err = run(capsys, "sft", "model.name=tiny", f"data.train={data}",
                       "data.truncation=drop", f"run_dir={tmp_path / 'run'}")
    # Tokenised whole (before): transformers' "Token indices sequence length is longer than
    # the specified maximum" came first on stderr, and the row took seconds.
    line = error_line(code, err, "sft")
    assert f"{data}: every row is longer than data.max_length=512" in line
    assert not (tmp_path / "run").exists()


# --- preference data: tether rm and tether dpo ------------------------------------------------


def good_rows(n=6):
    return [{"prompt": f"Review {i}:", "chosen": f" lovely {i}", "rejected": f" dull {i}"}
            for i in range(n)]


@pytest.mark.parametrize("command", ["rm", "dpo"])
def test_identical_responses_ranked_apart_are_an_error(capsys, tmp_path, command):
    # As a pair this was refused already; as a ranking it trained a reward model.
    data = write_jsonl(tmp_path / "train.jsonl", good_rows()[:4] + [
        {"prompt": "p", "responses": ["same", "other", "same"], "ranks": [0, 1, 2]}])
    code, _, err = run(capsys, command, "model.name=tiny", f"data.train={data}",
                       f"run_dir={tmp_path / 'run'}")
    line = error_line(code, err, command)
    assert f"{data}:5: 'responses[0]' and 'responses[2]' are the same text, so neither can be " \
           f"preferred to the other" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [{"chosen": " ", "rejected": "fine"},
                                 {"responses": ["fine", "", "ok"], "ranks": [0, 1, 2]}])
def test_an_empty_response_is_an_error_unless_allowed(capsys, tmp_path, bad):
    data = write_jsonl(tmp_path / "train.jsonl", good_rows()[:2] + [{"prompt": "p", **bad}])
    code, _, err = run(capsys, "rm", "model.name=tiny", f"data.train={data}",
                       f"run_dir={tmp_path / 'run'}")
    name = "chosen" if "chosen" in bad else "responses[1]"
    assert f"{data}:3: '{name}' is empty or only whitespace (set data.allow_empty_responses=" \
           f"true to accept empty responses, or data.skip_bad_rows=true to skip bad rows)" \
           in error_line(code, err, "rm")
    assert not (tmp_path / "run").exists()


def test_all_ties_rows_are_reported_with_their_line(capsys, tmp_path):
    tied = {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 1, 1]}
    data = write_jsonl(tmp_path / "train.jsonl", [tied, tied])
    code, _, err = run(capsys, "rm", "model.name=tiny", f"data.train={data}",
                       f"run_dir={tmp_path / 'run'}")
    assert f"{data}: no usable preference rows (2 rows, 2 skipped as all ties, giving no " \
           f"pairs (first: {data}:1))" in error_line(code, err, "rm")
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("command", ["rm", "dpo", "sft"])
def test_an_empty_data_file_is_named(capsys, tmp_path, command):
    data = write_jsonl(tmp_path / "train.jsonl", [])
    code, _, err = run(capsys, command, "model.name=tiny", f"data.train={data}",
                       f"run_dir={tmp_path / 'run'}")
    assert f"{data}: no rows (the file is empty)" in error_line(code, err, command)
    assert not (tmp_path / "run").exists()


def test_a_labeling_database_is_checked_as_a_file_is(capsys, tmp_path):
    # A project imported before candidates were merged holds the same text twice; its
    # labels rank one copy above the other.
    db = tmp_path / "labels.db"
    store = Store(str(db))
    project = store.create_project("old", [{"prompt": "p", "responses": ["same", "same", "x"]}])
    annotator = store.annotator_for_token(store.add_annotator("a"))
    item = store.next_item(project, annotator)
    store.submit(project, annotator, item.assignment, "rank", [0, 1, 2])
    store.close()
    code, _, err = run(capsys, "rm", "model.name=tiny", f"data.train={db}",
                       f"run_dir={tmp_path / 'run'}")
    assert f"{db}#old: item 0: 'responses[0]' and 'responses[1]' are the same text" \
        in error_line(code, err, "rm")
    assert not (tmp_path / "run").exists()


# --- candidates: tether label simulate and tether label import ---------------------------------


def candidates(n=3):
    return [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(n)]


def simulate(capsys, tmp_path, rows, *extra):
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run(capsys, "label", "simulate", f"candidates={path}",
                         f"output={tmp_path / 'labels' / 'labels.jsonl'}", *extra)
    return path, code, out, err


def import_(capsys, tmp_path, rows, gold=None):
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    gold_arg = [] if gold is None else [f"gold_items={write_jsonl(tmp_path / 'gold.jsonl', gold)}"]
    code, out, err = run(capsys, "label", "import", f"db={tmp_path / 'labels.db'}",
                         "project=p", f"candidates={path}", *gold_arg)
    return path, code, out, err


def test_identical_candidates_are_merged_before_anyone_ranks_them(capsys, tmp_path):
    # Before: simulate wrote {"responses": ["x", "x", "y"], "ranks": [0, 2, 1]}, which rm
    # then took as "x" better than "x"; import showed people the same text twice.
    rows = candidates(2) + [{"prompt": "dup", "responses": ["x", "x", "y"]},
                            {"prompt": "all one", "responses": ["z", "z"]}]
    path, code, out, _ = simulate(capsys, tmp_path, rows)
    assert code == 0
    assert f"{path}: 3 rows, 2 identical responses merged, 1 left out as all their responses " \
           f"are the same text (first: {path}:4)" in out
    labels = [json.loads(line) for line in (tmp_path / "labels" / "labels.jsonl").open()]
    assert [row["responses"] for row in labels][2] == ["x", "y"]
    assert sorted(labels[2]["ranks"]) == [0, 1]

    path, code, out, _ = import_(capsys, tmp_path, rows)
    assert code == 0 and f"{path}: 3 rows, 2 identical responses merged" in out
    items = Store(str(tmp_path / "labels.db")).items("p")
    assert [item.responses for item in items][2] == ["x", "y"]


def test_candidates_that_are_all_one_text_are_an_error(capsys, tmp_path):
    path, code, _, err = simulate(capsys, tmp_path, [{"prompt": "p", "responses": ["z", "z"]}])
    assert "no candidate row has two different responses to compare (first: " \
           f"{path}:1)" in error_line(code, err, "label simulate")
    assert not (tmp_path / "labels").exists()


def test_candidate_message_roles_are_checked_as_everywhere(capsys, tmp_path):
    # Before: simulate and import took a "wizard", and tether rm then refused simulate's labels.
    rows = candidates(1) + [{"prompt": [{"role": "wizard", "content": "hi"}],
                             "responses": ["a", "b"]}]
    message = ":2: prompt[0] must be an object with 'role' (one of system, user, assistant, " \
              "tool) and 'content' (a string)"
    path, code, _, err = simulate(capsys, tmp_path, rows)
    assert f"{path}{message}" in error_line(code, err, "label simulate")
    assert not (tmp_path / "labels").exists()
    path, code, _, err = import_(capsys, tmp_path, rows)
    assert f"{path}{message}" in error_line(code, err, "label import")
    assert not (tmp_path / "labels.db").exists()


@pytest.mark.parametrize("empty", ["", " \n"])
def test_an_empty_candidate_is_an_error(capsys, tmp_path, empty):
    rows = candidates(2) + [{"prompt": "p", "responses": ["fine", empty]}]
    path, code, _, err = simulate(capsys, tmp_path, rows)
    assert f"{path}:3: 'responses[1]' is empty or only whitespace" \
        in error_line(code, err, "label simulate")
    assert not (tmp_path / "labels").exists()
    path, code, _, err = import_(capsys, tmp_path, rows)
    assert f"{path}:3: 'responses[1]' is empty or only whitespace" \
        in error_line(code, err, "label import")
    assert not (tmp_path / "labels.db").exists()


def test_an_empty_candidates_file_is_named(capsys, tmp_path):
    path, code, _, err = simulate(capsys, tmp_path, [])
    assert f"{path}: no candidate rows (the file is empty)" \
        in error_line(code, err, "label simulate")
    assert not (tmp_path / "labels").exists()
    path, code, _, err = import_(capsys, tmp_path, [])  # before: "no candidate rows to import"
    assert f"{path}: no candidate rows (the file is empty)" \
        in error_line(code, err, "label import")
    assert not (tmp_path / "labels.db").exists()


@pytest.mark.parametrize("gold, message", [
    ([], "gold.jsonl: no gold items (the file is empty)"),  # before: imported, with no gold
    ([{"prompt": "g", "chosen": "good", "rejected": "bad"},
      {"prompt": "g", "responses": ["good", "bad", "good"], "ranks": [0, 1, 2]}],
     "gold.jsonl:2: 'responses[0]' and 'responses[2]' are the same text"),
    ([{"prompt": "g", "chosen": "", "rejected": "bad"}],
     "gold.jsonl:1: 'chosen' is empty or only whitespace"),
    ([{"prompt": [{"role": "wizard", "content": "g"}], "chosen": "good", "rejected": "bad"}],
     "gold.jsonl:1: prompt[0] must be an object with 'role'"),
])
def test_gold_items_are_checked_as_preferences(capsys, tmp_path, gold, message):
    _, code, _, err = import_(capsys, tmp_path, candidates(), gold)
    assert f"{tmp_path}/{message}" in error_line(code, err, "label import")
    assert not (tmp_path / "labels.db").exists()


# --- tether sample ------------------------------------------------------------------------------


def test_sample_drops_empty_responses(capsys, tmp_path, monkeypatch):
    # Before: written as they came, for label simulate and import to put before a labeler.
    generate = StaticGenerator.generate  # backend=auto's on the CPU

    def ending_at_once(self, prompts, n, params, seed=None, first_sample=0):
        """The first sample of every prompt, and every sample of the second prompt, end at
        once (EOS only)."""
        results = generate(self, prompts, n, params, seed, first_sample)
        for i, samples in enumerate(results):
            for j, g in enumerate(samples):
                if j == 0 or i == 1:
                    g.response_ids, g.finished = [self.eos_token_id], True
        return results

    monkeypatch.setattr(StaticGenerator, "generate", ending_at_once)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Review {i}:"}
                                                       for i in range(3)])
    output = tmp_path / "sample" / "candidates.jsonl"
    argv = ["sample", "policy=tiny", f"prompts={prompts}", f"output={output}", "k=3",
            "max_new_tokens=4"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "dropped 5 empty or whitespace-only responses (no one can rank them), and 1 " \
           "prompts left with fewer than 2" in out
    rows = [json.loads(line) for line in output.open()]
    assert [r["prompt"] for r in rows] == ["Review 0:", "Review 2:"]
    assert all(len(r["responses"]) == len(r["num_tokens"]) == 2 and all(t.strip() for t in
               r["responses"]) for r in rows)

    output.unlink()
    code, _, err = run(capsys, *argv, "k=1")  # k=1: every response is empty
    last = err.strip().splitlines()[-1]  # after the progress bar of the sampling done
    assert code == 2 and last == "tether sample: error: tiny: 3 of the 3 responses it " \
        f"sampled are empty or only whitespace (it ends at once), leaving no prompt with 1: " \
        f"nothing to write to {output}"
    assert not output.exists()



@pytest.mark.parametrize("command", [["label", "stats"], ["label", "export", "output=x.jsonl"]])
def test_read_only_label_commands_create_no_database(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    assert "runs/label/labels.db: no labeling database there" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
