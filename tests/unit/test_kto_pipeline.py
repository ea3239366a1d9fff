"""`tether run compare_kto=true`: thumbs on the candidates DPO's labels rank, KTO, and the KTO
policy evaluated and reported beside DPO's; off by default."""

import json

from tether import metric_names
from tether.cli import main
from tether.config import PipelineConfig, load_config
from tether.pipeline import Run
from tether.report.collect import CURVES, collect
from tether.rundir import read_metrics

TINY = """
rm_check: warn
compare_kto: true
skip: ppo
task: {num_prompts: 16, num_heldout: 8, num_demonstrations: 16}
sft:
  model: {name: tiny}
  optim: {lr: 1.0e-3}
  train: {max_steps: 2, eval_every: 0, save_every: 2}
sample: {k: 2, max_new_tokens: 6, bf16: false}
rm:
  model: {name: sft}
  train: {epochs: 1, save_every: 0}
dpo:
  train: {max_steps: 2, eval_every: 1, save_every: 2, bf16: false}
  sampled_eval: {num_prompts: 4, max_new_tokens: 6}
kto:
  train: {batch_size: 8, micro_batch_size: 4, max_steps: 2, eval_every: 1, save_every: 2,
          bf16: false}
  sampled_eval: {num_prompts: 4, max_new_tokens: 6}
eval: {num_prompts: 4, n: 1, max_new_tokens: 6, best_of_n: 0, bf16: false}
"""


def _run(tmp_path, *overrides):
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(TINY)
    return main(["run", str(pipeline), f"run_dir={tmp_path / 'run'}", *overrides])


def _ran(out):
    stages = ["data", "sft", "sample", "label", "rm", "dpo", "kto", "eval", "report"]
    return [s for s in stages if f"] {s}: running" in out]


def test_kto_stage_rates_the_same_candidates_and_is_compared(tmp_path, capsys):
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["data", "sft", "sample", "label", "rm", "dpo", "kto", "eval",
                        "report"]
    run = tmp_path / "run"
    candidates = [json.loads(line) for line in (run / "sample" / "candidates.jsonl").open()]
    thumbs = [json.loads(line) for line in (run / "kto" / "thumbs.jsonl").open()]
    # A thumb on every candidate response, the very responses the label stage ranked.
    assert sorted((t["prompt"], t["completion"]) for t in thumbs) == \
        sorted((c["prompt"], r) for c in candidates for r in c["responses"])
    stats = json.loads((run / "kto" / "thumbs.stats.json").read_text())
    assert stats["threshold_from"] == "median gold score"
    assert (run / "kto" / "final" / "config.json").exists()
    assert any("eval/gold" in m for m in read_metrics(run / "kto" / "metrics.jsonl"))
    policies = json.loads((run / "eval" / "policies.json").read_text())["policies"]
    assert list(policies) == ["sft", "dpo", "kto"]
    assert "KTO (thumbs up / down)" in (run / "report.html").read_text()
    # Every curve the report plots for kto is written, under a name metric_names defines.
    assert set(CURVES["kto"]) <= set(collect(run)["curves"]["kto"])
    defined = {value for key, value in vars(metric_names).items()
               if key.isupper() and isinstance(value, str)}
    assert {k for m in read_metrics(run / "kto" / "metrics.jsonl") for k in m} - \
        {"step", "time"} <= defined

    # A KTO option reruns KTO and what reads it, nothing else.
    assert _run(tmp_path, "kto.kto.beta=0.5") == 0
    assert _ran(capsys.readouterr().out) == ["kto", "eval", "report"]


def test_the_kto_stage_is_off_by_default(tmp_path):
    default = Run(load_config(PipelineConfig, None, [f"run_dir={tmp_path}"]))
    assert "kto" not in [s.name for s in default.stages()]
    on = Run(load_config(PipelineConfig, None, [f"run_dir={tmp_path}", "compare_kto=true"]))
    assert "kto" in [s.name for s in on.stages()]


def test_with_people_s_rankings_kto_trains_on_them_unpaired(tmp_path, capsys):
    """task.labels=FILE: each ranking's best response a thumb up, its worst one down."""
    rankings = [{"prompt": f"Review {i}:", "responses": [f" good {i}", f" fine {i}",
                                                         f" bad {i}"], "ranks": [0, 1, 2]}
                for i in range(12)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rankings))
    assert _run(tmp_path, f"task.labels={labels}") == 0
    out = capsys.readouterr().out
    assert "sample" not in _ran(out) and "kto" in _ran(out)
    thumbs = [json.loads(line) for line in (tmp_path / "run" / "kto" / "thumbs.jsonl").open()]
    assert sorted((t["completion"], t["label"]) for t in thumbs) == sorted(
        [(f" good {i}", True) for i in range(12)] + [(f" bad {i}", False) for i in range(12)])
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert "12 thumbs up, 12 down (people's rankings, unpaired)" in state["kto"]["summary"]
