"""The read-only commands (every --help, label stats, label export, report) import neither
torch nor transformers: they read YAML, JSONL and SQLite, and importing those libraries would
cost them seconds (`python -m bench cli-startup` times them). A structural test, not a timing
one: a fresh interpreter runs each command and then looks at sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.cli_startup import HEAVY, help_commands, make_inputs

REPO = Path(__file__).resolve().parents[2]

# Runs the commands one after another in one fresh process, noting after each which heavy
# modules are loaded so far (the first command to import one is the culprit).
SCRIPT = """
import contextlib, io, json, sys
from tether.cli import main
heavy, found = json.loads(sys.argv[1]), {}
for name, argv in json.loads(sys.argv[2]).items():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # --help
            code = e.code
    found[name] = {"code": code, "imported": [m for m in heavy if m in sys.modules]}
print(json.dumps(found))
"""


def test_read_only_commands_import_neither_torch_nor_transformers(tmp_path):
    commands = {**help_commands(every=True), **make_inputs(tmp_path)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(HEAVY),
                           json.dumps(commands)], env=env, cwd=REPO, capture_output=True,
                          text=True, check=True)
    found = json.loads(done.stdout)
    assert set(found) == set(commands) and len(commands) > 15
    for name, result in found.items():
        assert result["code"] in (0, None), f"tether {name} failed"  # it ran, all the way
        assert result["imported"] == [], f"tether {name} imported {result['imported']}"
    assert (tmp_path / "labels.jsonl").exists() and (tmp_path / "sft" / "report.html").exists()
