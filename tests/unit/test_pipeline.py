"""`tether run` on the tiny model: every artifact, stage skipping, reruns, resume, the report."""

import json
import shutil

import pytest
import yaml
from conftest import REPO, ranking_rows, write_jsonl

from tether import metric_names
from tether.cli import main
from tether.report.collect import CURVES, collect
from tether.rundir import read_metrics
from tether.trainers import common

STAGES = ["data", "sft", "sample", "label", "rm", "ppo", "dpo", "eval", "report"]

# Every stage, each as small as it can be: the point is the plumbing, not the numbers (so a
# reward model at chance, as a tiny one on 3 held-out pairs may well be, does not stop it).
TINY = """
rm_check: warn
task: {num_prompts: 16, num_heldout: 8, num_demonstrations: 16}
sft:
  model: {name: tiny}
  optim: {lr: 1.0e-3}
  train: {max_steps: 2, eval_every: 0, save_every: 2}
sample: {k: 2, max_new_tokens: 6, bf16: false}
rm:
  model: {name: sft}
  train: {epochs: 1, save_every: 0}
ppo:
  rollout: {batch_size: 8, max_new_tokens: 6}
  ppo: {minibatch_size: 8, micro_batch_size: 8}
  train: {max_steps: 2, eval_every: 1, save_every: 2, bf16: false}
  eval_num_prompts: 4
dpo:
  train: {max_steps: 2, eval_every: 1, save_every: 2, bf16: false}
  sampled_eval: {num_prompts: 4, max_new_tokens: 6}
eval: {num_prompts: 4, n: 1, max_new_tokens: 6, best_of_n: 4, best_of_n_prompts: 2,
       bf16: false}
"""


def _run(tmp_path, run_dir, *overrides):
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(TINY)
    return main(["run", str(pipeline), f"run_dir={run_dir}", *overrides])


def _ran(out: str) -> list[str]:
    """The stages that ran (rather than being skipped), from the terminal output."""
    return [s for s in STAGES if f"] {s}: running" in out or f"] {s}: resuming" in out]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete tiny pipeline, copied by the tests that change it."""
    tmp = tmp_path_factory.mktemp("pipeline")
    assert _run(tmp, tmp / "run") == 0
    return tmp / "run"


def test_every_stage_writes_its_artifacts(finished):
    state = json.loads((finished / "pipeline.json").read_text())["stages"]
    assert list(state) == STAGES
    assert all(s["status"] == "done" and s["seconds"] >= 0 and s["summary"]
               for s in state.values())
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (finished / stage / "final" / "config.json").exists(), stage
        assert read_metrics(finished / stage / "metrics.jsonl"), stage
    assert (finished / "label" / "labels.jsonl").exists()
    # PPO and DPO evaluate fresh samples during training: the points of the frontier plot.
    for stage in ("ppo", "dpo"):
        evals = [m for m in read_metrics(finished / stage / "metrics.jsonl") if "eval/kl" in m]
        assert [m["step"] for m in evals] == [0, 1, 2]
        assert evals[0]["eval/kl"] == pytest.approx(0.0, abs=1e-5)
        assert "eval/gold" in evals[0] and "eval/proxy" in evals[0]
    policies = json.loads((finished / "eval" / "policies.json").read_text())
    assert list(policies["policies"]) == ["sft", "ppo", "dpo"]
    frontier = json.loads((finished / "eval" / "frontier.json").read_text())
    methods = [p["method"] for p in frontier["points"]]
    assert methods.count("ppo") == 3 and methods.count("dpo") == 3
    assert [p["n"] for p in frontier["points"] if p["method"] == "bon"] == [1, 2, 4]
    assert frontier["length_bias"]["n"] == 4 * 3
    report = (finished / "report.html").read_text()
    for heading in ("Results on held-out prompts", "Reward vs KL", "Reward model",
                    "Training curves", "Sample responses", "Stages"):
        assert heading in report, heading


def test_every_curve_the_report_plots_is_written_by_its_stage(finished):
    """The report reads its training curves (CURVES) by name from each stage's metrics.jsonl:
    a name written one way and read another leaves a chart silently empty, as the reward
    model's were. And every name a stage writes is one tether.metric_names defines."""
    curves = collect(finished)["curves"]
    # kto runs with compare_kto=true only: tests/unit/test_kto_pipeline.py checks its curves.
    stages = [stage for stage in CURVES if stage != "kto"]
    for stage in stages:
        assert set(CURVES[stage]) - set(curves[stage]) == set(), stage
    defined = {value for key, value in vars(metric_names).items()
               if key.isupper() and isinstance(value, str)}
    for stage in stages:
        lines = (finished / stage / "metrics.jsonl").read_text().splitlines()
        written = {key for line in lines for key in json.loads(line)} - {"step", "time"}
        assert written - defined == set(), stage
    # The reward model's charts, up to the next stage's heading, draw all four.
    report = (finished / "report.html").read_text()
    charts = report.split("<h3>Reward model</h3>")[1].split("<h3>")[0]
    assert all(name in charts for name in CURVES["rm"])


def test_a_rerun_skips_every_finished_stage(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    capsys.readouterr()
    assert _run(tmp_path, run_dir) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["report"]  # the report is cheap and always redrawn
    assert out.count("unchanged, skipped") == 8
    # where metrics also go changes no output
    assert _run(tmp_path, run_dir, "ppo.train.report_to=[tensorboard]") == 0
    assert _ran(capsys.readouterr().out) == ["report"]


def test_a_changed_option_reruns_its_stage_and_those_reading_it(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    capsys.readouterr()
    assert _run(tmp_path, run_dir, "dpo.dpo.beta=0.5") == 0
    assert _ran(capsys.readouterr().out) == ["dpo", "eval", "report"]
    config = (run_dir / "dpo" / "config.yaml").read_text()
    assert "beta: 0.5" in config
    # The reward model feeds PPO, DPO and the evaluation; SFT's data is upstream of it.
    assert _run(tmp_path, run_dir, "dpo.dpo.beta=0.5", "rm.train.keep_best=true") == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["rm", "ppo", "dpo", "eval", "report"]
    kept = json.loads((run_dir / "rm" / "eval.json").read_text())["kept_step"]
    assert f"; the weights of step {kept} (train.keep_best)" in out
    # rerun= forces a stage (and what reads it) although nothing changed.
    assert _run(tmp_path, run_dir, "dpo.dpo.beta=0.5", "rm.train.keep_best=true",
                "rerun=ppo") == 0
    assert _ran(capsys.readouterr().out) == ["ppo", "eval", "report"]
    # Outputs deleted by hand are made again, with everything that reads them.
    shutil.rmtree(run_dir / "dpo")
    assert _run(tmp_path, run_dir, "dpo.dpo.beta=0.5", "rm.train.keep_best=true") == 0
    assert _ran(capsys.readouterr().out) == ["dpo", "eval", "report"]


def test_a_killed_pipeline_resumes_the_stage_from_its_checkpoint(finished, tmp_path, capsys,
                                                                 monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    original = common.save_training_state

    def save_then_die(run_dir, step, *args, **kwargs):
        path = original(run_dir, step, *args, **kwargs)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint
        return path

    monkeypatch.setattr(common, "save_training_state", save_then_die)
    steps = ["ppo.train.max_steps=4", "ppo.train.save_every=2"]
    assert _run(tmp_path, run_dir, *steps) == 130
    state = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert state["ppo"]["status"] == "running"
    monkeypatch.setattr(common, "save_training_state", original)
    capsys.readouterr()
    assert _run(tmp_path, run_dir, *steps) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["ppo", "eval", "report"]
    assert "ppo: resuming" in out and "at step 2" in out
    metrics = read_metrics(run_dir / "ppo" / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss/policy" in m] == [1, 2, 3, 4]


def _set_rm_accuracy(run_dir, accuracy, lo, hi):
    path = run_dir / "rm" / "eval.json"
    report = json.loads(path.read_text())
    report["metrics"].update({"eval/accuracy": accuracy, "eval/accuracy_ci_lo": lo,
                              "eval/accuracy_ci_hi": hi, "eval/label_gold_agreement": 0.75})
    path.write_text(json.dumps(report))


def test_a_reward_model_at_chance_stops_the_pipeline_before_ppo(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    _set_rm_accuracy(run_dir, 0.5, 0.397, 0.615)
    capsys.readouterr()
    assert _run(tmp_path, run_dir, "rm_check=stop") == 1
    captured = capsys.readouterr()
    assert "0.500 [95% CI 0.397, 0.615] cannot be told from chance" in captured.err
    assert "agree with gold on 0.750" in captured.err and "rm_check=warn" in captured.err
    assert "Traceback" not in captured.err and "ppo: running" not in captured.out
    # Overridden: a warning, and the run goes on; PPO and the rest were done, so skipped.
    assert _run(tmp_path, run_dir, "rm_check=warn") == 0
    out = capsys.readouterr().out
    assert "warning: the reward model's held-out accuracy 0.500" in out
    assert _ran(out) == ["report"]
    # A reward model that learned passes quietly.
    _set_rm_accuracy(run_dir, 0.7, 0.62, 0.78)
    assert _run(tmp_path, run_dir, "rm_check=stop") == 0
    assert "cannot be told from chance" not in capsys.readouterr().out


def test_the_report_escapes_model_text(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    path = run_dir / "eval" / "policies.json"
    policies = json.loads(path.read_text())
    policies["policies"]["ppo"]["samples"][0]["response"] = "<script>alert(1)</script> & more"
    path.write_text(json.dumps(policies))
    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.html").read_text()
    assert "<script>" not in report
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in report


def test_mistakes_are_reported_before_anything_runs(tmp_path, capsys):
    assert _run(tmp_path, tmp_path / "run", "ppo.rollout.prompts=mine.jsonl") == 2
    assert "ppo.rollout.prompts is set by the pipeline" in capsys.readouterr().err
    assert _run(tmp_path, tmp_path / "run", "skip=rm") == 2
    assert "only sft, ppo, dpo and kto" in capsys.readouterr().err
    assert main(["run", "nonexistent-preset"]) == 2
    assert "neither a pipeline YAML file nor a built-in preset" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "not a `tether run` directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-made


# The tiny settings as overrides, for pipelines whose YAML file is someone else's.
TINY_OVERRIDES = [
    "rm_check=warn", "sft.model.name=tiny", "rm.model.name=sft", "rm.train.epochs=1",
    "rm.train.save_every=0",
    "sample.k=2", "sample.max_new_tokens=6", "sample.bf16=false",
    "ppo.rollout.batch_size=8", "ppo.rollout.max_new_tokens=6", "ppo.ppo.minibatch_size=8",
    "ppo.ppo.micro_batch_size=8", "ppo.train.max_steps=1", "ppo.train.bf16=false",
    "ppo.eval_num_prompts=4", "dpo.train.max_steps=1", "dpo.train.bf16=false",
    "dpo.sampled_eval.num_prompts=4", "dpo.sampled_eval.max_new_tokens=6",
    "eval.num_prompts=4", "eval.n=1", "eval.max_new_tokens=6", "eval.best_of_n=2",
    "eval.best_of_n_prompts=2", "eval.bf16=false",
]


def test_a_task_of_your_own_needs_only_prompts_and_a_gold_scorer(tmp_path, monkeypatch,
                                                                 capsys):
    # From the directory above: the paths in the file (prompts.jsonl, scorer:brevity) are
    # relative to it, not to where tether runs.
    monkeypatch.chdir(REPO / "examples")
    assert main(["run", "own_task/pipeline.yaml", f"run_dir={tmp_path / 'run'}",
                 "task.num_prompts=16", *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["data", "sample", "label", "rm", "ppo", "dpo", "eval", "report"]
    assert not (tmp_path / "run" / "sft").exists()
    policies = json.loads((tmp_path / "run" / "eval" / "policies.json").read_text())
    assert policies["config"]["reference"] == "tiny"  # the starting model is the SFT policy
    # ... and called what it is: no SFT ran
    assert list(policies["policies"]) == ["base", "ppo", "dpo"] and policies["baseline"] == "base"
    assert "held-out prompts: base " in out
    assert all(r["gold"] <= 1 for p in policies["policies"].values() for r in p["samples"])


def test_people_s_labels_replace_sampling_and_the_simulated_labeler(tmp_path, capsys):
    rows = ranking_rows(24, k=2)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    labels = write_jsonl(tmp_path / "labels.jsonl",
                         [{"prompt": r["prompt"], "responses": r["responses"],
                           "ranks": r["ranks"]} for r in rows])
    assert main(["run", f"run_dir={tmp_path / 'run'}", "task.name=", f"task.prompts={prompts}",
                 f"task.labels={labels}", "task.num_heldout=8", *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert _ran(out) == ["data", "label", "rm", "ppo", "dpo", "eval", "report"]
    assert (tmp_path / "run" / "label" / "labels.jsonl").read_text() == labels.read_text()
    assert "proxy:" in out  # no gold scorer: the evaluation reports the reward model's score


def test_the_arithmetic_task_carries_each_prompt_s_answer_to_every_gold_score(tmp_path):
    assert main(["run", f"run_dir={tmp_path / 'run'}", "task.name=arithmetic",
                 "task.num_prompts=16", "task.num_heldout=8", "task.num_demonstrations=16",
                 "ppo.train.max_steps=2", "ppo.train.eval_every=1", *TINY_OVERRIDES]) == 0
    run = tmp_path / "run"

    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert all(r["answer"].isdigit() for r in rows(run / "data" / "prompts.jsonl"))
    answers = {r["prompt"]: r["answer"] for r in rows(run / "data" / "prompts.jsonl")}
    candidates = rows(run / "sample" / "candidates.jsonl")
    assert all(c["answer"] == answers[c["prompt"]] for c in candidates)  # copied by sample
    assert all(set(r["gold_scores"]) <= {0.0, 1.0} for r in rows(run / "label" / "labels.jsonl"))
    policies = json.loads((run / "eval" / "policies.json").read_text())
    assert all(s["gold"] in (0.0, 1.0) for p in policies["policies"].values()
               for s in p["samples"])
    assert any("eval/gold" in m for m in read_metrics(run / "ppo" / "metrics.jsonl"))


def test_two_rounds_sample_the_newest_policy_and_keep_every_label(tmp_path, capsys):
    """rounds=2: each round labels its own half of the training prompts; round 2 samples
    round 1's PPO policy, its reward model learns from both rounds' labels, PPO and DPO go on
    from their round-1 policies; eval compares the last round's with SFT, per round too."""
    run, two = tmp_path / "run", ["rounds=2", "task.num_prompts=32", "compare_kto=true",
                                  "kto.train.batch_size=8", "kto.train.micro_batch_size=8"]
    assert _run(tmp_path, run, *two) == 0
    out = capsys.readouterr().out
    ran = [line.split("] ")[1].split(":")[0] for line in out.splitlines()
           if ": running" in line and line.startswith("[")]
    assert ran == ["data", "sft", "sample", "label", "rm", "ppo", "dpo", "kto", "sample-2",
                   "label-2", "rm-2", "ppo-2", "dpo-2", "kto-2", "eval", "report"]
    shares = [[json.loads(line)["prompt"] for line in
               (run / "data" / f"prompts-round{r}.jsonl").read_text().splitlines()]
              for r in (1, 2)]
    everything = [json.loads(line)["prompt"] for line in
                  (run / "data" / "prompts.jsonl").read_text().splitlines()]
    assert shares[0] + shares[1] == everything and len(shares[0]) == len(shares[1]) == 16

    def config(stage):
        return (run / stage / "config.yaml").read_text() if (run / stage / "config.yaml") \
            .exists() else ""

    sample2 = json.loads((run / "sample-2" / "candidates.jsonl").read_text().splitlines()[0])
    assert sample2["prompt"] in shares[1]
    labels = [(run / d / "labels.jsonl").read_text().splitlines() for d in ("label", "label-2")]
    assert (run / "label-2" / "labels_so_far.jsonl").read_text().splitlines() == \
        labels[0] + labels[1]
    assert f"train: {run / 'label-2' / 'labels_so_far.jsonl'}" in config("rm-2")
    assert f"name: {run / 'ppo' / 'final'}" in config("ppo-2")
    assert f"model: {run / 'rm-2' / 'final'}" in config("ppo-2")
    assert f"name: {run / 'dpo' / 'final'}" in config("dpo-2")
    assert f"train: {run / 'label-2' / 'labels.jsonl'}" in config("dpo-2")
    assert f"name: {run / 'kto' / 'final'}" in config("kto-2")
    thumbs = [json.loads(line)["prompt"] for line in
              (run / "kto-2" / "thumbs.jsonl").read_text().splitlines()]
    assert set(thumbs) <= set(shares[1])

    rounds = json.loads((run / "eval" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert '<section id="rounds">' in (run / "report.html").read_text()
    assert all({"label_agreement", "rm_accuracy", "ppo", "dpo", "kto"} <= set(r) for r in rounds)
    assert rounds[1]["ppo"]["gold"] == read_metrics(run / "ppo-2" / "metrics.jsonl")[-1].get(
        metric_names.EVAL_GOLD, rounds[1]["ppo"]["gold"])

    # a rerun skips every round; rerun=dpo reruns DPO in both rounds and what reads them
    # (round 2 samples PPO's policy, so its samples and labels stay)
    assert _run(tmp_path, run, *two) == 0
    assert out.count("unchanged, skipped") == 0 and \
        capsys.readouterr().out.count("unchanged, skipped") == 15
    assert _run(tmp_path, run, *two, "rerun=dpo") == 0
    ran = [line.split("] ")[1].split(":")[0] for line in capsys.readouterr().out.splitlines()
           if ": running" in line and line.startswith("[")]
    assert ran == ["dpo", "dpo-2", "eval", "report"]


def test_rounds_need_labels_made_afresh(tmp_path, capsys):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", ranking_rows(8))
    assert _run(tmp_path, tmp_path / "run", "rounds=2", f"task.labels={prefs}") == 2
    assert "is a fixed file" in capsys.readouterr().err
    assert _run(tmp_path, tmp_path / "run", "rounds=2", "skip=ppo,dpo") == 2
    assert "do not skip both ppo and dpo" in capsys.readouterr().err


def test_the_report_plots_each_round(tmp_path):
    from tether.report.html import render

    rounds = [{"round": 1, "label_agreement": 0.71, "rm_accuracy": 0.62,
               "ppo": {"gold": 0.4, "proxy": 1.0, "kl": 9.0},
               "dpo": {"gold": 0.2, "proxy": 0.5, "kl": 3.0}},
              {"round": 2, "label_agreement": 0.74, "rm_accuracy": 0.65,
               "ppo": {"gold": 0.5, "proxy": 1.2, "kl": 4.0}}]
    page = render({"title": "t", "rounds": rounds})
    section = page[page.index('<section id="rounds">'):]
    section = section[:section.index("</section>")]
    assert section.count("<svg") == 2 and "ppo gold" in section and "dpo proxy" in section
    assert "labels vs gold" in section and "reward model vs labels" in section
    assert section.count("<tr>") == 3 and "KL here is to that start" in section
    assert render({"title": "t"}).count('id="rounds"') == 0


def test_the_smoke_preset_runs_every_stage_on_tiny_models(tmp_path, capsys):
    assert main(["run", "smoke", f"run_dir={tmp_path / 'run'}"]) == 0
    assert _ran(capsys.readouterr().out) == STAGES
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert config.count("name: tiny") == 2  # the policy and the reward model's backbone
    assert (tmp_path / "run" / "report.html").exists()


def test_held_out_evaluations_default_to_what_the_task_holds_out(tmp_path, monkeypatch):
    from tether.config import PipelineConfig, load_config
    from tether.pipeline import Run
    from tether.presets import pipeline_sources

    monkeypatch.setattr("tether.pipeline.slow_bf16", lambda device: False)
    cfg = load_config(PipelineConfig, base=pipeline_sources(None, None)[0],
                      overrides=[f"run_dir={tmp_path}", "task.num_heldout=30"])
    run = Run(cfg)
    assert (run.cfg.eval.num_prompts, run.cfg.ppo.eval_num_prompts,
            run.cfg.dpo.sampled_eval.num_prompts) == (30, 30, 30)
    assert run.notes == ["the task holds out 30 prompts: eval.num_prompts 64, "
                         "ppo.eval_num_prompts 32, dpo.sampled_eval.num_prompts 32 -> "
                         "30 (all of them)"]
    assert Run(load_config(PipelineConfig, base=pipeline_sources(None, None)[0])).notes \
        == []  # the default holds out enough for every evaluation


@pytest.mark.parametrize("slow", [True, False])
def test_on_a_cpu_without_bf16_the_pipeline_runs_every_stage_in_fp32(tmp_path, monkeypatch,
                                                                     slow):
    from tether.config import PipelineConfig, load_config
    from tether.pipeline import BF16_SWITCHES, Run
    from tether.presets import pipeline_sources

    monkeypatch.setattr("tether.pipeline.slow_bf16", lambda device: slow)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = load_config(PipelineConfig, base=pipeline_sources(None, None)[0],
                      overrides=[f"run_dir={tmp_path}", "ppo.train.bf16_weights=true"])
    run = Run(cfg)

    def bf16(config, key):
        for part in key.split("."):
            config = getattr(config, part)
        return config.bf16

    preset_on = [key for key in BF16_SWITCHES if bf16(cfg, key)]
    assert set(preset_on) >= {"sample", "ppo.train", "dpo.train", "eval"}
    assert [key for key in BF16_SWITCHES if bf16(run.cfg, key)] == ([] if slow else preset_on)
    assert run.cfg.ppo.train.bf16_weights is not slow  # needs bf16: off with it
    assert cfg.ppo.train.bf16 and cfg.ppo.train.bf16_weights  # the caller's config untouched
    if slow:
        assert run.notes == ["this CPU has no bf16 instructions (torch would emulate bf16, "
                             "several times slower than fp32): "
                             + ", ".join(f"{key}.bf16" for key in preset_on) + " -> false"]
    else:
        assert run.notes == []


def test_print_config_shows_what_the_stages_will_use(capsys, tmp_path):
    assert main(["run", str(REPO / "examples" / "own_task" / "pipeline.yaml"),
                 f"run_dir={tmp_path}", "task.num_heldout=30", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    gold = str(REPO / "examples" / "own_task" / "scorer.py") + ":brevity"
    assert printed["ppo"]["reward"]["gold"] == gold  # not the sentiment default
    assert printed["dpo"]["sampled_eval"]["gold"] == gold and printed["label"]["gold"] == gold
    assert printed["ppo"]["run_dir"] == str(tmp_path / "ppo")
    assert printed["ppo"]["eval_num_prompts"] == 30 and printed["eval"]["num_prompts"] == 30


def test_rounds_change_the_data_stage_s_key_and_one_round_keeps_its_own(tmp_path):
    """The data stage writes each round's prompts: rerunning a finished one-round pipeline
    with rounds=2 must run it again, and rounds=1 must keep the key runs made before rounds."""
    from tether.config import PipelineConfig, load_config
    from tether.pipeline import STAGES as PIPELINE
    from tether.pipeline import Run
    from tether.presets import pipeline_sources

    def data_key(*overrides):
        run = Run(load_config(PipelineConfig, base=pipeline_sources(None, None)[0],
                              overrides=[f"run_dir={tmp_path}", *overrides]))
        return run.key(PIPELINE[0], PIPELINE[0].configure(run), {})

    assert data_key("rounds=2") != data_key() == data_key("rounds=1")
    assert "rounds" not in PIPELINE[0].configure(Run(load_config(
        PipelineConfig, base=pipeline_sources(None, None)[0], overrides=[f"run_dir={tmp_path}"])))
