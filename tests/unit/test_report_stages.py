"""`tether report RUN_DIR` on the run directory of a single stage (sft, rm, dpo, ppo): its
curves, one SVG chart per group of metrics, and a table naming every metric logged."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ranking_rows, write_jsonl

from tether.cli import main
from tether.report.collect import collect_stage, stage_of
from tether.report.html import _metric_group
from tether.rundir import read_metrics


def _report(run, capsys) -> str:
    assert main(["report", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    return (run / "report.html").read_text()


def _check_page(run, page: str, stage: str) -> None:
    """Every metric in metrics.jsonl is in the table; every drawn one in an SVG of its
    group, one SVG per group."""
    names = {k for row in read_metrics(run / "metrics.jsonl") for k, v in row.items()
             if k not in ("step", "time") and isinstance(v, (int, float))}
    drawn = set(collect_stage(run)["curves"][stage])
    assert drawn and drawn <= names and not any(n.startswith("perf/") for n in drawn)
    table = page[page.index('<section id="metrics">'):]
    table = table[:table.index("</section>")]
    assert all(f"<td>{name}</td>" in table for name in names)
    curves = page[page.index('<section id="curves">'):]
    svgs = re.findall(r"<svg.*?</svg>", curves[:curves.index("</section>")], flags=re.S)
    assert len(svgs) == len({_metric_group(n) for n in drawn})
    for name in drawn:
        assert any(name in svg for svg in svgs), name
    assert "Traceback" not in page and f"tether {stage}:" in page


def test_sft_run_report(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    run = tmp_path / "sft"
    assert main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={run}",
                 "train.max_steps=4", "train.eval_every=2", "data.eval_fraction=0.125"]) == 0
    page = _report(run, capsys)
    _check_page(run, page, "sft")
    for name in ("loss/train", "eval/loss", "optim/lr", "optim/grad_norm"):
        assert name in page
    assert "status-done" in page


def test_one_step_run_without_eval(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    run = tmp_path / "sft"
    assert main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={run}",
                 "train.max_steps=1", "data.eval_fraction=0"]) == 0
    page = _report(run, capsys)
    _check_page(run, page, "sft")
    assert "eval/" not in page


def test_rm_run_report_shows_its_evaluation(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24))
    run = tmp_path / "rm"
    assert main(["rm", "model.name=tiny", f"data.train={data}", f"run_dir={run}",
                 "train.max_steps=3", "data.eval_fraction=0.25"]) == 0
    page = _report(run, capsys)
    _check_page(run, page, "rm")
    assert "reward/accuracy" in page and 'id="reward-model"' in page


def test_dpo_run_report(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(16))
    run = tmp_path / "dpo"
    assert main(["dpo", "model.name=tiny", f"data.train={data}", f"run_dir={run}",
                 "train.max_steps=2", "train.batch_size=4", "train.micro_batch_size=4",
                 "data.eval_fraction=0"]) == 0
    page = _report(run, capsys)
    _check_page(run, page, "dpo")
    assert "reward/margin" in page and "kl/chosen" in page


def test_grpo_run_report_draws_rewards_and_kl(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Write something about item {i}."} for i in range(8)])
    run = tmp_path / "grpo"
    assert main(["ppo", "algo=grpo", "model.name=tiny", f"rollout.prompts={prompts}",
                 f"run_dir={run}", "rollout.batch_size=2", "rollout.group_size=2",
                 "rollout.max_new_tokens=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=4",
                 "train.max_steps=2", "eval_num_prompts=2"]) == 0
    page = _report(run, capsys)
    _check_page(run, page, "grpo")
    assert "reward/gold" in page and "kl/seq" in page


def test_an_unfinished_run_and_a_bare_directory(tmp_path, capsys):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  train: x.jsonl\ntrain:\n  max_steps: 9\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": 1.0, "loss/train": 2.5})
                                       + "\n" + '{"step": 2, "ti')  # a kill cut it short
    page = _report(run, capsys)
    assert "status-incomplete" in page or "incomplete" in page
    assert "loss/train" in page and page.count("<svg") == 1
    (run / "metrics.jsonl").write_text("")  # started, nothing logged yet
    assert "nothing logged yet" in _report(run, capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no pipeline.json" in err and "no metrics.jsonl" in err and "Traceback" not in err
    assert not (empty / "report.html").exists()


@pytest.mark.parametrize("settings, stage", [
    ({"data": {}, "train": {}}, "sft"), ({"reward": {}, "data": {}}, "rm"),
    ({"dpo": {}, "ref": {}, "data": {}}, "dpo"), ({"algo": "rloo", "rollout": {}}, "rloo"),
    ({}, "run")])
def test_stage_is_told_from_the_config(settings, stage):
    assert stage_of(settings) == stage
