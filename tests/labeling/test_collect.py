"""`tether run` with task.labels=human: the label stage serves the samples to people, waits for
their labels, and the reward model trains on them (or KTO on their thumbs)."""

import json
import threading
import time
from dataclasses import dataclass, field

import httpx

from tether.cli import main
from tether.config import PipelineConfig, load_config
from tether.labeling.client import LabelClient, free_port
from tether.pipeline import Run

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


def annotate(url: str, tokens_path, stop: threading.Event, labelled: list,
             rated: dict) -> None:
    """A person at the labeling page, through every round: waits for the app (again after it
    stops between rounds), then labels everything offered in any project, preferring the
    longer response (the shorter one on ties of length), and rating responses good and bad
    in turn (so both kinds are always there), each rating kept in `rated`."""
    client = None
    while not stop.is_set():
        try:
            client = client or LabelClient(url, json.loads(tokens_path.read_text())["ann1"])
            projects = [p["name"] for p in client.me()["projects"]]
            # next() remembers the project of the item it returned, for submit()
            item = next((i for p in projects if (i := client.next(p)) is not None), None)
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            time.sleep(0.1)  # no tokens file, or no server, yet (or between rounds)
            continue
        if item is None:
            time.sleep(0.1)
            continue
        if len(item["responses"]) == 1:  # a response to rate
            good = len(rated) % 2 == 0
            rated[(item["prompt"], item["responses"][0])] = good
            r = client.submit(item["assignment"], choice="good" if good else "bad")
        else:
            longer = max(range(2), key=lambda i: len(item["responses"][i]))
            r = client.submit(item["assignment"],
                              ranks=[0 if i == longer else 1 for i in range(2)])
        labelled.append(r.status_code)


@dataclass
class Labelled:
    """What a pipeline run with a scripted annotator gave: its exit code and output, each
    label's HTTP status, and the ratings given, by (prompt, response)."""
    code: int
    out: str
    err: str
    port: int
    statuses: list = field(default_factory=list)
    rated: dict = field(default_factory=dict)


def run_with_person(tmp_path, capsys, pipeline: str, *overrides: str,
                    annotators: str = "ann1") -> Labelled:
    """`tether run` of the pipeline text in tmp_path/run, with `annotate` at the app (as
    ann1) until the run ends."""
    port = free_port()
    (tmp_path / "p.yaml").write_text(pipeline)
    run_dir = tmp_path / "run"
    stop, statuses, rated = threading.Event(), [], {}
    person = threading.Thread(target=annotate, daemon=True, args=(
        f"http://127.0.0.1:{port}", run_dir / "labels.db.tokens.json", stop, statuses, rated))
    person.start()
    try:
        code = main(["run", str(tmp_path / "p.yaml"), f"run_dir={run_dir}",
                     f"human.annotators={annotators}", f"human.port={port}", *overrides])
    finally:
        stop.set()
        person.join(10)
    out, err = capsys.readouterr()
    return Labelled(code, out, err, port, statuses, rated)


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def test_run_waits_for_peoples_labels_then_trains_on_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    done = run_with_person(tmp_path, capsys, TINY, annotators="ann1,ann2")
    assert done.code == 0, done.err
    assert f"labeling app: http://127.0.0.1:{done.port}/" in done.out
    tokens = json.loads((run_dir / "labels.db.tokens.json").read_text())
    assert set(tokens) == {"ann1", "ann2"} and tokens["ann2"] in done.out
    assert done.statuses == [201] * 6  # 6 prompts x overlap 1, all from ann1
    rows = rows_of(run_dir / "label" / "labels.jsonl")
    assert len(rows) <= 6 and all(len(r["chosen"]) >= len(r["rejected"]) for r in rows)
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert state["label"]["status"] == "done" and "people's labels" in \
        state["label"]["summary"]
    assert state["rm"]["status"] == "done"
    # a rerun finds the stage done: no server, no waiting
    assert main(["run", str(tmp_path / "p.yaml"), f"run_dir={run_dir}",
                 "human.annotators=ann1,ann2", f"human.port={done.port}"]) == 0
    assert "label: unchanged, skipped" in capsys.readouterr().out


RATE = TINY.replace("skip: ppo,dpo\n", "") + """
kto:
  train: {batch_size: 4, micro_batch_size: 4, max_steps: 2, eval_every: 0, save_every: 2,
          bf16: false}
  sampled_eval: {num_prompts: 2, max_new_tokens: 4}
"""


def test_people_who_rate_give_kto_their_thumbs(tmp_path, capsys):
    """human.mode=rate: each response shown alone; KTO trains on the thumbs, and rm, ppo and
    dpo, which need pairs, are left out (the run says so)."""
    run_dir = tmp_path / "run"
    done = run_with_person(tmp_path, capsys, RATE, "human.mode=rate")
    assert done.code == 0, done.err
    assert "note: people rate each response (human.mode=rate)" in done.out
    candidates = rows_of(run_dir / "sample" / "candidates.jsonl")
    responses = {(c["prompt"], r) for c in candidates for r in c["responses"]}
    assert done.statuses == [201] * len(responses)  # one rating per distinct response
    thumbs = rows_of(run_dir / "label" / "thumbs.jsonl")
    assert {(t["prompt"], t["completion"]) for t in thumbs} == responses
    assert all(t["label"] == done.rated[(t["prompt"], t["completion"])] for t in thumbs)
    assert not (run_dir / "label" / "labels.jsonl").exists()
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert {"rm", "ppo", "dpo"}.isdisjoint(state)
    assert "people's thumbs" in state["kto"]["summary"]
    kto_config = (run_dir / "kto" / "config.yaml").read_text()
    assert str(run_dir / "label" / "thumbs.jsonl") in kto_config
    policies = json.loads((run_dir / "eval" / "policies.json").read_text())["policies"]
    assert list(policies) == ["sft", "kto"]


def test_people_who_compare_and_rate_train_the_reward_model_and_kto(tmp_path, capsys):
    """human.mode=both: each prompt's samples ranked and each response rated; the rankings go
    to the reward model (and DPO, PPO), the thumbs to KTO."""
    run_dir = tmp_path / "run"
    done = run_with_person(tmp_path, capsys, RATE.replace("rm:\n", "skip: ppo,dpo\nrm:\n", 1),
                           "human.mode=both")
    assert done.code == 0, done.err
    pairs = rows_of(run_dir / "label" / "labels.jsonl")
    thumbs = rows_of(run_dir / "label" / "thumbs.jsonl")
    assert pairs and all("chosen" in p for p in pairs)
    assert thumbs and all("completion" in t for t in thumbs)
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert state["rm"]["status"] == "done" and "people's thumbs" in state["kto"]["summary"]
    assert "preference rows and" in state["label"]["summary"]


def test_rounds_with_people_rating_each_round_s_samples(tmp_path, capsys):
    """rounds=2, human.mode=rate: round 2 samples round 1's KTO policy, people rate those
    samples in a project of their own, and KTO goes on from round 1's policy."""
    run_dir = tmp_path / "run"
    done = run_with_person(tmp_path, capsys, RATE, "rounds=2", "human.mode=rate")
    assert done.code == 0, done.err
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert {"label", "kto", "sample-2", "label-2", "kto-2"} <= set(state)
    assert not {"rm", "rm-2", "dpo", "ppo-2"} & set(state)
    run = Run(load_config(PipelineConfig, str(run_dir / "config.yaml")))
    assert run.sampler(2) == str(run_dir / "kto" / "final")  # round 2 samples round 1's KTO
    assert str(run_dir / "kto" / "final") in (run_dir / "kto-2" / "config.yaml").read_text()
    for label in ("label", "label-2"):
        thumbs = rows_of(run_dir / label / "thumbs.jsonl")
        assert thumbs and all(t["label"] == done.rated[(t["prompt"], t["completion"])]
                              for t in thumbs)
    assert done.out.count("labeling app: http://") == 2  # a project, and a wait, per round


def test_people_rating_a_task_of_their_own_with_no_gold_scorer(tmp_path, capsys):
    """Own prompts, no demonstrations and no gold: the base model is rated and KTO trained;
    with no gold scorer nor reward model the evaluation sums up KL."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about item {i}."}) + "\n"
                               for i in range(10)))
    own = RATE.replace(
        "task: {labels: human, num_prompts: 6, num_heldout: 4, num_demonstrations: 8}",
        f"task: {{name: '', prompts: {prompts}, labels: human, num_prompts: 6, "
        f"num_heldout: 4}}")
    done = run_with_person(tmp_path, capsys, own, "sft.model.name=tiny", "human.mode=rate")
    assert done.code == 0, done.err
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert "sft" not in state and state["kto"]["status"] == "done"
    assert state["eval"]["summary"].startswith("no gold scorer or reward model; KL to the "
                                               "start: kto ")
