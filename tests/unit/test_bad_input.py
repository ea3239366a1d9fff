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
