"""Bad input through the command line (issue 22): one line on stderr naming the file and line,
exit code 2, no traceback, and nothing half-written."""

import logging
import sys

import pytest
from conftest import write_jsonl
from transformers.utils import logging as hf_logging

from tether.cli import main


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
