"""The reward-model loop on the tiny model: it learns, encodes each response once, resumes."""

import json
import shutil

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from tether.checkpoint import list_checkpoints, load_checkpoint
from tether.cli import main
from tether.config import RMConfig, load_config
from tether.models.reward import RewardModel
from tether.rundir import read_metrics
from tether.trainers import rm as rm_trainer


def _cfg(tmp_path, data, *overrides):
    return load_config(RMConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0.2", "optim.lr=1e-3", "train.epochs=2", "train.eval_every=0",
        *overrides])


def test_cli_run_learns_the_preference_and_reports(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(120))
    assert main(["rm", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "data.eval_fraction=0.2", "optim.lr=1e-3", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "pairwise accuracy" in out and "Spearman(reward, gold)" in out
    assert "cannot be told from chance" not in out
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    metrics = report["metrics"]
    assert metrics["eval/accuracy"] > 0.85, metrics
    assert metrics["eval/spearman_gold"] > 0.7
    assert report["reliability"] and report["by_length_diff"]
    final = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert final["eval/accuracy"] == metrics["eval/accuracy"]
    # The exported model loads with plain transformers.
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    # Normalisation: the training responses (the reference) score mean 0.
    rm = RewardModel.from_pretrained(tmp_path / "run" / "final")
    rows = ranking_rows(120)
    sample = [(r["prompt"], t) for r in rows[:40] for t in r["responses"]]
    scores = rm.score([[{"role": "user", "content": p}] for p, _ in sample], [t for _, t in sample])
    assert abs(sum(scores) / len(scores)) < 0.5 * (max(scores) - min(scores))


def test_defaults_alone_learn_a_learnable_preference(tmp_path, capsys):
    """No lr, epochs or schedule given: what a new user runs first (issue 19)."""
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(80))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", ranking_rows(20, seed=1))
    assert main(["rm", "model.name=tiny", f"data.train={data}", f"data.eval={held_out}",
                 f"run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    # 80 prompts, 8 per step: 10 steps an epoch, so auto takes 4 epochs (at least 50 steps).
    assert "40 steps of 8 prompts (4 epochs, auto" in out
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    assert metrics["eval/accuracy"] > 0.8 and metrics["eval/spearman_gold"] > 0.6, metrics
    assert "cannot be told from chance" not in out
    # The schedule: 5 warmup steps to lr, then a cosine decay that ends near a tenth of lr.
    lrs = [m["optim/lr"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if "optim/lr" in m]
    assert lrs[0] == pytest.approx(5e-5 / 5) and lrs[4] == pytest.approx(5e-5)
    assert lrs[-1] == pytest.approx(5e-6, rel=0.05) and min(lrs[4:]) >= 5e-6


def test_the_plackett_luce_objective_learns_the_preference(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(120))
    rm_trainer.train(_cfg(tmp_path, data, "reward.loss=plackett_luce"))
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    assert metrics["eval/accuracy"] > 0.85 and metrics["eval/spearman_gold"] > 0.7, metrics
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "the Plackett-Luce likelihood of each ranking" in card
    assert main(["rm", f"data.train={data}", "reward.loss=plackett_luce",
                 "reward.margin=0.5"]) == 2
    assert "defined for reward.loss=bradley_terry" in capsys.readouterr().err


# 200 prompts get 3 passes: 2 (50 steps) learned less (issue 19); the pipeline's 410, 2
@pytest.mark.parametrize(("prompts", "epochs"),
                         [(40, 4), (200, 3), (400, 2), (560, 1), (4000, 1)])
def test_auto_epochs_give_small_data_enough_steps_and_large_data_one_pass(prompts, epochs):
    from tether.config import RMTrainConfig
    from tether.trainers.common import plan_steps

    per_epoch, total = plan_steps(RMTrainConfig(batch_size=8, epochs=0), prompts, "x.jsonl")
    assert (per_epoch, total) == (prompts // 8, epochs * (prompts // 8))
    assert plan_steps(RMTrainConfig(batch_size=8, epochs=3), prompts, "x")[1] == 3 * per_epoch


def test_the_head_trains_at_its_own_learning_rate(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40))
    before = RewardModel.build("tiny").model.state_dict()
    cfg = _cfg(tmp_path, data, "optim.lr=1e-4", "reward.head_lr=1e-2", "train.max_steps=1",
               "optim.warmup_steps=0", "optim.max_grad_norm=0")
    after = load_file(str(rm_trainer.train(cfg) / "model.safetensors"))
    # One Adam step moves every weight by about its lr (the sign of its gradient).
    head = (after["score.weight"] - before["score.weight"]).abs()
    body = (after["model.layers.0.mlp.up_proj.weight"]
            - before["model.layers.0.mlp.up_proj.weight"]).abs()
    assert head.max().item() == pytest.approx(1e-2, rel=0.01)
    assert body.max().item() == pytest.approx(1e-4, rel=0.01)


def test_a_reward_model_that_learned_nothing_says_so(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(60))
    # lr 0: the fresh head's random scores, whose held-out accuracy is chance
    rm_trainer.train(_cfg(tmp_path, data, "optim.lr=0", "train.epochs=1"))
    out = capsys.readouterr().out
    assert "warning: the reward model's held-out accuracy" in out
    assert "cannot be told from chance (0.5) (the labels themselves agree with gold" in out
    final = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert final["health/rm_at_chance"] == 1.0


def test_k_way_batch_scores_each_response_once(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(16, k=4))
    seen = []
    original = RewardModel.raw_scores

    def counting(self, batch):
        seen.append((batch["input_ids"].shape[0], len(original(self, batch))))
        return original(self, batch)

    monkeypatch.setattr(RewardModel, "raw_scores", counting)
    for share in ("false", "true"):
        seen.clear()
        rm_trainer.train(_cfg(tmp_path / share, data, "train.max_steps=1", "train.batch_size=8",
                              "train.micro_batch_size=8", "data.eval_fraction=0",
                              f"train.share_prompt={share}"))
        # One step of 8 prompts x 4 responses: 32 scores from 32 sequences (or 8 rows, each
        # holding a prompt once and its 4 responses), not 8 x 2 x C(4,2) sequences.
        assert seen[0] == ((8, 32) if share == "true" else (32, 32))


def test_shared_prompts_train_as_separate_rows_do(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24))
    runs = {}
    for share in ("false", "true"):
        out = tmp_path / share
        out.mkdir()
        rm_trainer.train(_cfg(out, data, "train.max_steps=3", "data.eval_fraction=0",
                              f"train.share_prompt={share}"))
        runs[share] = read_metrics(out / "run" / "metrics.jsonl")
    for a, b in zip(runs["false"], runs["true"], strict=True):
        assert a["loss/train"] == pytest.approx(b["loss/train"], abs=1e-5)
        assert a["optim/grad_norm"] == pytest.approx(b["optim/grad_norm"], rel=1e-4)


def test_accumulation_matches_one_big_batch(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24))
    weights = []
    for micro in (8, 2):
        out = tmp_path / f"m{micro}"
        out.mkdir()
        rm_trainer.train(_cfg(out, data, "train.max_steps=3", "data.eval_fraction=0",
                              "reward.center_coef=0.01", f"train.micro_batch_size={micro}"))
        weights.append(load_file(str(out / "run" / "final" / "model.safetensors")))
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=2e-5), name


def test_resume_matches_an_uninterrupted_run(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40))
    cfg = _cfg(tmp_path, data, "train.save_every=2", "train.keep_checkpoints=10",
               "train.max_steps=6")
    rm_trainer.train(cfg)
    whole = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    # Pretend the run died after step 2: drop what came later, then resume.
    for checkpoint in list_checkpoints(tmp_path / "run")[1:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(tmp_path / "run" / "final")
    cfg.resume = True
    rm_trainer.train(cfg)
    resumed = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def _scripted_held_out_loss(monkeypatch, loss_at_step):
    """The held-out evaluation as it is, but with eval/loss read from `loss_at_step` by the
    step it is evaluated after (the final evaluation keeps its own)."""
    from tether.eval import rm as eval_rm
    from tether.trainers.common import Hooks

    steps = []

    def evaluate(*args, **kwargs):
        metrics, details = eval_rm.evaluate_preferences(*args, **kwargs)
        if not kwargs.get("progress"):  # not the final evaluation
            metrics["eval/loss"] = loss_at_step[steps[-1]]
        return metrics, details

    monkeypatch.setattr(rm_trainer, "evaluate_preferences", evaluate)
    return Hooks(step_started=steps.append)


def _trained_weights(path):
    state = load_checkpoint(path)["model"] if path.name.startswith("step-") else \
        load_file(str(path / "model.safetensors"))
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


KEEP_BEST = ("train.keep_best=true", "train.eval_every=2", "train.max_steps=10",
             "train.save_every=2", "train.keep_checkpoints=10")


def test_keep_best_exports_the_weights_of_the_lowest_held_out_loss(tmp_path, monkeypatch,
                                                                    capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40))
    hooks = _scripted_held_out_loss(monkeypatch, {2: 0.6, 4: 0.4, 6: 0.5, 8: 0.45, 10: 0.7})
    final = rm_trainer.train(_cfg(tmp_path, data, *KEEP_BEST), hooks)
    out = capsys.readouterr().out
    assert "keeping step 4's weights: held-out loss 0.4000, the lowest of 5 evaluations " \
           "(step 10: 0.7000)" in out
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["kept_step"] == 4
    best = [p for p in list_checkpoints(tmp_path / "run" / "best")]
    assert [p.name for p in best] == ["step-00000004"]  # only the best one is kept
    exported, at_4 = _trained_weights(final), _trained_weights(best[0])
    at_10 = _trained_weights(list_checkpoints(tmp_path / "run")[-1])
    assert exported.keys() == at_4.keys()
    assert all(torch.equal(exported[k], at_4[k]) for k in at_4)
    assert not all(torch.equal(exported[k], at_10[k]) for k in at_10)
    # The final evaluation is of the kept weights, logged once at the last step.
    held_out = [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
                if "eval/accuracy" in m]
    assert held_out == [2, 4, 6, 8, 10]


def test_patience_stops_early_and_a_resumed_run_ends_the_same(tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40))
    # Steps 6 and 8 bring no new best after step 4: with patience 2 the run stops at 8.
    hooks = _scripted_held_out_loss(monkeypatch, {2: 0.6, 4: 0.4, 6: 0.5, 8: 0.45, 10: 0.1})
    cfg = _cfg(tmp_path, data, *KEEP_BEST, "train.patience=2")
    final = rm_trainer.train(cfg, hooks)
    assert "stopping early at step 8: no lower held-out loss in 2 evaluations since step 4" \
        in capsys.readouterr().out
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 8
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step-00000008"
    whole = _trained_weights(final)

    # Pretend the run died after step 6's checkpoint: it replays step 8 and stops there again.
    for checkpoint in list_checkpoints(tmp_path / "run")[3:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(final)
    cfg.resume = True
    rm_trainer.train(cfg, hooks)
    assert "stopping early at step 8" in capsys.readouterr().out
    resumed = _trained_weights(final)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # Resumed once more, after it finished: no step runs, the same weights are kept.
    rm_trainer.train(cfg, hooks)
    out = capsys.readouterr().out
    assert "stopping early" not in out and "keeping step 4's weights" in out


def test_keep_best_needs_held_out_data_and_patience_needs_keep_best(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(20))
    assert main(["rm", f"data.train={data}", "data.eval_fraction=0",
                 "train.keep_best=true"]) == 2
    assert "give data.eval or data.eval_fraction > 0" in capsys.readouterr().err
    assert main(["rm", f"data.train={data}", "train.patience=3"]) == 2
    assert "set train.keep_best=true too" in capsys.readouterr().err


def test_lora_reward_model_trains_adapters_and_head(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40))
    final = rm_trainer.train(_cfg(tmp_path, data, "model.lora.enabled=true", "model.lora.r=4",
                                  "train.max_steps=4", "optim.lr=5e-3"))
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["model"]
    assert any("lora_" in k for k in state) and any("score" in k for k in state)
    assert all("lora_" in k or "score" in k for k in state)
    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert plain.config.tether_backbone == "policy"


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_margin_option_runs(tmp_path, margin):
    data = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"p{i}", "chosen": " lovely great", "rejected": " dull bad"} for i in range(16)])
    rm_trainer.train(_cfg(tmp_path, data, f"reward.margin={margin}", "train.max_steps=2",
                          "data.eval_fraction=0"))
    assert (tmp_path / "run" / "final" / "config.json").exists()
