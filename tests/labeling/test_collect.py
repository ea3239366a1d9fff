"""`tether run` with task.labels=human: the label stage serves the samples to people, waits for
their labels, and the reward model trains on them."""

import json
import threading
import time

import httpx

from tether.cli import main
from tether.labeling.client import LabelClient, free_port

TINY = """
task: {labels: human, num_prompts: 6, num_heldout: 4, num_demonstrations: 8}
skip: ppo,dpo
sft:
  model: {name: tiny}
  train: {max_steps: 1, eval_every: 0, save_every: 1}
sample: {k: 2, max_new_tokens: 4, bf16: false}
rm:
  model: {name: sft}
  train: {epochs: 1, save_every: 0, batch_size: 2, micro_batch_size: 2}
eval: {num_prompts: 2, n: 1, max_new_tokens: 4, best_of_n: 0, bf16: false}
"""


def annotate(url: str, tokens_path, stop: threading.Event, labelled: list) -> None:
    """A person at the labeling page: waits for the app, then labels everything offered,
    preferring the longer response (the shorter one on ties of length)."""
    while not stop.is_set():
        try:
            client = LabelClient(url, json.loads(tokens_path.read_text())["ann1"])
            project = client.me()["projects"][0]["name"]
            break
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            time.sleep(0.1)  # no tokens file, or no server, yet
    while not stop.is_set():
        try:
            item = client.next(project)
        except httpx.TransportError:  # the stage has its labels and stopped the server
            return
        if item is None:
            time.sleep(0.1)
            continue
        longer = max(range(2), key=lambda i: len(item["responses"][i]))
        r = client.submit(item["assignment"], ranks=[0 if i == longer else 1 for i in range(2)])
        labelled.append(r.status_code)


def test_run_waits_for_peoples_labels_then_trains_on_them(tmp_path, capsys):
    port = free_port()
    (tmp_path / "p.yaml").write_text(TINY)
    run_dir = tmp_path / "run"
    stop, labelled = threading.Event(), []
    person = threading.Thread(target=annotate, daemon=True, args=(
        f"http://127.0.0.1:{port}", run_dir / "labels.db.tokens.json", stop, labelled))
    person.start()
    try:
        code = main(["run", str(tmp_path / "p.yaml"), f"run_dir={run_dir}",
                     "human.annotators=ann1,ann2", f"human.port={port}"])
    finally:
        stop.set()
        person.join(10)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"labeling app: http://127.0.0.1:{port}/" in out
    tokens = json.loads((run_dir / "labels.db.tokens.json").read_text())
    assert set(tokens) == {"ann1", "ann2"} and tokens["ann2"] in out
    assert labelled == [201] * 6  # 6 prompts x overlap 1, all from ann1
    rows = [json.loads(line) for line in (run_dir / "label" / "labels.jsonl").open()]
    assert len(rows) <= 6 and all(len(r["chosen"]) >= len(r["rejected"]) for r in rows)
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert state["label"]["status"] == "done" and "people's labels" in \
        state["label"]["summary"]
    assert state["rm"]["status"] == "done"
    # a rerun finds the stage done: no server, no waiting
    assert main(["run", str(tmp_path / "p.yaml"), f"run_dir={run_dir}",
                 "human.annotators=ann1,ann2", f"human.port={port}"]) == 0
    assert "label: unchanged, skipped" in capsys.readouterr().out
