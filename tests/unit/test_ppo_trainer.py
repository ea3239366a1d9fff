"""The online RL loop on the tiny model: PPO, GRPO and RLOO learn a toy reward; the details."""

import dataclasses
import math

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from tether.checkpoint import list_checkpoints, load_checkpoint
from tether.cli import main
from tether.config import PPOConfig, load_config
from tether.data.collate import collate
from tether.data.tokenize import Encoded
from tether.errors import ConfigError
from tether.losses.ppo import overlong_penalty
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_tokenizer
from tether.models.value import ValueModel
from tether.rollout.generate import HFGenerator
from tether.rundir import read_metrics
from tether.trainers import ppo as ppo_trainer
from tether.trainers.ppo import cut_at_stop


def share_of_e(texts: list[str]) -> list[float]:
    """Toy gold reward: how much of the response is the letter 'e'."""
    return [t.count("e") / max(len(t), 1) for t in texts]


def has_e(texts: list[str]) -> list[float]:
    """A coarse toy reward, 1 or 0: a group's samples often all score alike."""
    return [float("e" in t) for t in texts]


def _prompts(tmp_path, n=16):
    return write_jsonl(tmp_path / "prompts.jsonl",
                       [{"prompt": f"Write something about item {i}."} for i in range(n)])


def _cfg(tmp_path, *overrides):
    return load_config(PPOConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"rollout.prompts={_prompts(tmp_path)}",
        "reward.gold=test_ppo_trainer:share_of_e", "rollout.batch_size=8",
        "rollout.max_new_tokens=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4",
        "optim.lr=1e-3", "train.max_steps=2", *overrides])


def test_cut_at_stop_keeps_the_shortest_prefix_with_the_stop_string():
    tok = tiny_tokenizer()
    ids = tok("The end. More words here", add_special_tokens=False).input_ids
    cut, stopped = cut_at_stop(tok, ids, ".")
    assert stopped and tok.decode(cut).endswith(".") and "More" not in tok.decode(cut)
    assert cut_at_stop(tok, ids, "") == (ids, False)
    assert cut_at_stop(tok, ids, "@@") == (ids, False)


def test_value_model_from_a_reward_model_reads_like_the_reward_model():
    # The value at position t is the head on the state after token t-1: on a sequence one
    # token longer, the value at the last position equals the reward model's raw score.
    rm = RewardModel.build("tiny", seed=0, max_length=64)
    value = ValueModel.from_reward_model(rm.model)
    ids = [[5, 9, 33, 41, 2], [7, 12, 2]]
    raw = rm.raw_scores(collate([Encoded(i, [1] * len(i)) for i in ids], 0))
    longer = collate([Encoded(i + [3], [1] * (len(i) + 1)) for i in ids], 0)
    values = value(longer["input_ids"], longer["attention_mask"])
    torch.testing.assert_close(values[0, 5], raw[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(values[1, 3], raw[1], atol=1e-5, rtol=0)
    assert values[:, 0].abs().max() == 0  # position 0 has no state before it


@pytest.mark.parametrize("algo,extra", [
    ("ppo", []),
    ("grpo", ["rollout.group_size=4", "ppo.kl_in=loss", "ppo.kl_estimator=k3"]),
    ("rloo", ["rollout.group_size=4"]),
])
def test_cli_run_raises_a_toy_reward(tmp_path, algo, extra):
    prompts = _prompts(tmp_path)
    args = ["ppo", "model.name=tiny", f"rollout.prompts={prompts}", f"algo={algo}",
            "reward.gold=test_ppo_trainer:share_of_e", "reward.penalize_no_eos=false",
            f"run_dir={tmp_path / 'run'}", "rollout.max_new_tokens=12", "ppo.kl_coef=0.01",
            "rollout.batch_size=8", "ppo.minibatch_size=16", "ppo.micro_batch_size=8",
            "optim.lr=3e-3", "train.max_steps=14", "train.save_every=0", *extra]
    if algo == "ppo":
        args += ["rollout.group_size=2"]
    assert main(args) == 0
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    gold = [m["reward/gold"] for m in metrics]
    first, last = sum(gold[:3]) / 3, sum(gold[-3:]) / 3
    assert last > first + 0.05, gold
    assert all(m["kl/seq"] == m["kl/seq"] for m in metrics)  # finite, logged every step
    for key in ("ppo/clipfrac", "ppo/approx_kl", "loss/policy", "policy/entropy",
                "response/length", "response/no_eos_frac", "kl/coef", "perf/generate_s",
                "perf/score_s", "perf/train_s"):
        assert key in metrics[-1], key
    assert ("loss/value" in metrics[-1]) == (algo == "ppo")
    assert ("loss/kl" in metrics[-1]) == (algo == "grpo")
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["model"]
    assert any(k.startswith("value.") for k in state) == (algo == "ppo")
    assert (tmp_path / "run" / "samples.jsonl").read_text()
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_first_minibatch_has_ratio_one(tmp_path):
    # One epoch, one minibatch: the update is computed on exactly the rollout's policy.
    ppo_trainer.train(_cfg(tmp_path, "train.max_steps=1", "ppo.epochs=1"))
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert metrics["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["ppo/clipfrac"] == 0.0


@pytest.mark.parametrize("algo,extra", [
    ("grpo", ["ppo.kl_in=loss", "ppo.kl_estimator=k3", "ppo.entropy_coef=0.01"]),
    ("rloo", ["model.lora.enabled=true", "model.lora.r=4"]),  # reference: the adapter off
])
def test_shared_prompts_train_as_separate_rows_do(tmp_path, algo, extra, monkeypatch):
    # 4 prompts x 4 samples, 2 epochs of shuffled minibatches of 8 in microbatches of 4: a
    # microbatch holds some of a prompt's samples, often from several prompts.
    groups = []
    original = ppo_trainer.packed_logits
    monkeypatch.setattr(ppo_trainer, "packed_logits",
                        lambda *a, **k: groups.append(a[-1]) or original(*a, **k))
    runs = {}
    for share in ("false", "true"):
        out = tmp_path / share
        out.mkdir()
        ppo_trainer.train(_cfg(out, f"algo={algo}", "rollout.batch_size=4",
                               "rollout.group_size=4", "ppo.epochs=2", "train.max_steps=2",
                               f"train.share_prompt={share}", *extra))
        runs[share] = read_metrics(out / "run" / "metrics.jsonl")
        assert bool(groups) == (share == "true")
    # Per iteration, the policy and reference passes over the rollout (4 prompts' 4 samples in
    # microbatches of 4), then 2 epochs x 2 microbatches of shuffled samples, sorted by prompt.
    assert groups[:2] == [[4]] * 2 and any(len(g) > 1 for g in groups[8:12])
    for a, b in zip(runs["false"], runs["true"], strict=True):
        assert a["response/length"] == b["response/length"]  # the same samples
        for key in ("loss/policy", "kl/seq", "policy/entropy", "ppo/approx_kl",
                    "optim/grad_norm", "reward/gold"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_one_update_per_rollout_skips_the_policy_pass_and_changes_nothing(tmp_path):
    # grpo, one epoch of one minibatch, the KL in the loss: the update's own forward stands for
    # the policy's no-grad pass over the rollout.
    one_update = ["algo=grpo", "rollout.batch_size=4", "rollout.group_size=4",
                  "ppo.minibatch_size=16", "ppo.epochs=1", "ppo.kl_in=loss"]
    calls = []
    runs = {}
    for needed in (True, False):
        calls.clear()

        def started(loop, needed=needed):
            loop.policy_pass = needed  # the pass forced on (or left off)
            forward = loop.trained.forward  # every forward of the trained model, counted
            loop.trained.forward = lambda *a: calls.append(torch.is_grad_enabled()) or forward(*a)

        out = tmp_path / str(needed)
        out.mkdir()
        ppo_trainer.train(_cfg(out, *one_update, "ppo.kl_estimator=k3",
                               "reward.penalize_no_eos=false"), ppo_trainer.Hooks(started))
        runs[needed] = read_metrics(out / "run" / "metrics.jsonl")
        # Per iteration: 4 microbatches of the update, and without the skip 4 no-grad ones.
        assert calls.count(False) == (8 if needed else 0) and calls.count(True) == 8
    for a, b in zip(runs[True], runs[False], strict=True):
        for key in ("loss/policy", "loss/kl", "kl/seq", "policy/entropy", "optim/grad_norm",
                    "reward/gold"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert b["ppo/approx_kl"] == 0.0 and b["ppo/clipfrac"] == 0.0
    assert not ppo_trainer.needs_policy_pass(_cfg(tmp_path, *one_update), world=1)
    assert ppo_trainer.needs_policy_pass(_cfg(tmp_path, *one_update), world=2)
    for other in ("algo=ppo", "ppo.epochs=2", "ppo.kl_in=reward", "ppo.minibatch_size=8"):
        assert ppo_trainer.needs_policy_pass(_cfg(tmp_path, *one_update, other), world=1)


def test_missing_eos_gets_the_penalty_score(tmp_path):
    # One new token: (almost) no response ends with EOS, so the optimised score is the penalty
    # (applied although the starting policy rarely finishes: no_eos_min_finished=0).
    ppo_trainer.train(_cfg(tmp_path, "rollout.max_new_tokens=1", "reward.no_eos_score=-5",
                           "reward.no_eos_min_finished=0", "train.max_steps=1"))
    m = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert m["response/no_eos_frac"] == 1.0
    assert m["reward/score"] == -5.0
    assert m["reward/gold"] > 0  # the gold score is logged as it is
    # By default that starting policy finishes too rarely for the penalty: it is off.
    (tmp_path / "default").mkdir()
    ppo_trainer.train(_cfg(tmp_path / "default", "rollout.max_new_tokens=1",
                           "reward.no_eos_score=-5", "train.max_steps=1"))
    m = read_metrics(tmp_path / "default" / "run" / "metrics.jsonl")[-1]
    assert m["reward/score"] == pytest.approx(m["reward/gold"])


def test_adaptive_kl_and_resume_match_an_uninterrupted_run(tmp_path):
    overrides = ["ppo.adaptive_kl=true", "ppo.kl_target=0.01", "ppo.kl_horizon=100",
                 "train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5"]
    ppo_trainer.train(_cfg(tmp_path, *overrides))
    whole = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    coefs = [m["kl/coef"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert coefs[0] == pytest.approx(0.05) and coefs[-1] != coefs[0]

    again = tmp_path / "again"
    again.mkdir()
    cfg = _cfg(again, *overrides)
    done = []

    def die_after_iteration_3(loop, batch, metrics):
        done.append(metrics)
        if len(done) == 3:
            raise KeyboardInterrupt  # iteration 3 logged, not saved (save_every=2)

    with pytest.raises(KeyboardInterrupt):
        ppo_trainer.train(cfg, ppo_trainer.Hooks(iteration=die_after_iteration_3))
    cfg.resume = True
    ppo_trainer.train(cfg)
    resumed = load_file(str(again / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert [m["kl/coef"] for m in read_metrics(again / "run" / "metrics.jsonl")] == coefs


def test_lora_uses_the_base_as_reference_and_loads_one_policy(tmp_path, monkeypatch):
    loads = []
    original = ppo_trainer.load_causal_lm
    monkeypatch.setattr(ppo_trainer, "load_causal_lm",
                        lambda name, **kw: loads.append(name) or original(name, **kw))
    ppo_trainer.train(_cfg(tmp_path, "model.lora.enabled=true", "model.lora.r=4",
                           "ppo.value_model=head", "train.max_steps=2"))
    assert loads == ["tiny"]
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert metrics[0]["kl/seq"] == pytest.approx(0.0, abs=1e-5)  # adapter starts as a no-op
    assert metrics[-1]["kl/seq"] != 0.0


def test_config_errors(capsys):
    assert main(["ppo", "rollout.prompts=p.jsonl", "algo=grpo"]) == 2
    assert "group_size" in capsys.readouterr().err
    assert main(["ppo", "rollout.prompts=p.jsonl", "reward.gold="]) == 2
    assert "nothing to optimise" in capsys.readouterr().err
    for args, message in [(["ppo.importance_sampling_level=sequence"], "GSPO"),
                          (["ppo.dynamic_sampling=true"], "use algo=grpo or rloo"),
                          (["algo=grpo", "rollout.group_size=2",
                            "ppo.dynamic_sampling_rounds=2"], "set ppo.dynamic_sampling=true"),
                          (["rollout.max_new_tokens=8", "reward.overlong_buffer=9"],
                           "overlong_buffer"),
                          (["ppo.loss_type=bnpo"], "dr_grpo")]:
        assert main(["ppo", "rollout.prompts=p.jsonl", *args]) == 2
        assert message in capsys.readouterr().err, args


def test_the_logged_learning_rate_is_the_one_the_iteration_used(tmp_path):
    """Read before the schedule steps: with a 4-update warmup, iteration 1's first update runs
    at a quarter of lr (it was logged one update late, issue 20)."""
    ppo_trainer.train(_cfg(tmp_path, "optim.warmup_steps=4", "optim.schedule=constant",
                           "ppo.epochs=1", "ppo.minibatch_size=8"))
    lrs = [m["optim/lr"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if "optim/lr" in m]
    assert lrs == pytest.approx([1e-3 / 4, 2e-3 / 4])  # one update per iteration


def _mismatch_run(out, *overrides, offsets=None, keep=None):
    """A run whose sampler log-probs are shifted by offsets[k % len(offsets)] at response
    token k (none: the backend's own); `keep` collects each iteration's (batch, metrics)."""
    def started(loop):
        generate = loop.generator.generate

        def shifted(*args, **kwargs):
            results = generate(*args, **kwargs)
            for g in (g for samples in results for g in samples):
                g.logprobs = [lp + offsets[k % len(offsets)] for k, lp in enumerate(g.logprobs)]
            return results

        if offsets:
            loop.generator.generate = shifted

    def iteration(loop, batch, metrics):
        if keep is not None:
            keep.append((batch, metrics))

    out.mkdir()
    ppo_trainer.train(_cfg(out, *overrides), ppo_trainer.Hooks(started, iteration))
    return read_metrics(out / "run" / "metrics.jsonl")


@pytest.mark.parametrize("algo,extra", [
    ("ppo", []), ("grpo", ["rollout.group_size=4", "rollout.batch_size=4"])])
def test_the_correction_with_hf_s_own_log_probs_changes_nothing(tmp_path, algo, extra):
    """hf samples with the trainer's own numerics: its log-probs are the trainer's to float
    rounding, every weight is 1 to ~1e-6, and correcting changes the run by no more."""
    runs = {setting: _mismatch_run(tmp_path / setting, f"algo={algo}", *extra, "ppo.epochs=2",
                                   f"rollout.is_correction={setting}")
            for setting in ("never", "always")}
    for a, b in zip(runs["never"], runs["always"], strict=True):
        for key in ("loss/policy", "optim/grad_norm", "kl/seq", "reward/gold"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        for m in (a, b):  # measured either way: no mismatch
            assert abs(m["mismatch/kl_k1"]) < 1e-6 and 0 <= m["mismatch/kl_k3"] < 1e-10
            assert m["mismatch/is_weight_mean"] == pytest.approx(1.0, abs=1e-6)
            assert m["mismatch/is_truncated_frac"] == 0.0


@pytest.mark.parametrize("algo,extra", [
    ("ppo", ["ppo.minibatch_size=8"]),
    # one update per rollout: the update's own forward gives the trainer's log-probs
    ("rloo", ["rollout.group_size=4", "rollout.batch_size=4", "ppo.minibatch_size=16",
              "ppo.kl_in=loss"])])
def test_shifted_sampler_log_probs_weight_each_token_as_the_weights_say(tmp_path, algo, extra):
    """A sampler that gave token k log-prob trainer + offset[k % 4]: weight min(exp(-offset),
    2) = e^-0.5, e^0.5, 2 (e^1 truncated), 1, whatever the tokens. One epoch of one minibatch
    has ratio 1, so the policy loss is -sum(A w) / N over the response tokens."""
    offsets = [0.5, -0.5, -1.0, 0.0]
    weight_of = [math.exp(-0.5), math.exp(0.5), 2.0, 1.0]
    common = [f"algo={algo}", *extra, "ppo.epochs=1", "train.max_steps=1",
              "reward.penalize_no_eos=false"]
    kept = []
    corrected = _mismatch_run(tmp_path / "on", *common, "rollout.is_correction=always",
                              offsets=offsets, keep=kept)[-1]
    batch, _ = kept[0]
    mask = batch.rollout.mask.bool()
    position = batch.rollout.mask.cumsum(-1).long() - 1  # k, the token's place in its response
    weights = torch.tensor(weight_of)[position % 4]
    advantages = batch.advantages[mask]
    expected = -(advantages * weights[mask]).sum() / mask.sum()
    assert corrected["loss/policy"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert corrected["loss/policy"] != pytest.approx(-advantages.mean().item(), rel=1e-2)
    shift = torch.tensor(offsets)[position % 4][mask]
    assert corrected["mismatch/kl_k1"] == pytest.approx(shift.mean().item(), abs=1e-6)
    assert corrected["mismatch/kl_k3"] == pytest.approx(
        (torch.expm1(-shift) + shift).mean().item(), abs=1e-6)
    assert corrected["mismatch/is_weight_mean"] == pytest.approx(
        weights[mask].mean().item(), abs=1e-6)
    assert corrected["mismatch/is_truncated_frac"] == pytest.approx(
        (position[mask] % 4 == 2).float().mean().item())
    # Uncorrected (auto with hf: the backend is the trainer), the same mismatch is logged
    # and the loss is the plain one.
    plain = _mismatch_run(tmp_path / "auto", *common, offsets=offsets)[-1]
    assert plain["loss/policy"] == pytest.approx(-advantages.mean().item(), rel=1e-5, abs=1e-7)
    assert plain["mismatch/kl_k1"] == corrected["mismatch/kl_k1"]


def test_grpo_on_the_static_backend_samples_a_bf16_copy_synced_and_corrected(tmp_path):
    """rollout.backend=static: a bf16 copy samples (numerics not the trainer's, so auto
    corrects), its small mismatch is logged, and after each update it samples the new
    weights: the mismatch stays small, which it would not if the copy went stale."""
    keep = []
    metrics = _mismatch_run(tmp_path / "static", "algo=grpo", "rollout.group_size=4",
                            "rollout.batch_size=4", "rollout.backend=static",
                            "train.max_steps=3", "optim.lr=3e-2", keep=keep)
    assert [m["step"] for m in metrics if "mismatch/kl_k3" in m] == [1, 2, 3]
    for _, m in keep:
        assert 0 < m["mismatch/kl_k3"] < 1e-3
        assert m["mismatch/is_weight_mean"] == pytest.approx(1.0, abs=0.02)
    batch, _ = keep[-1]
    assert batch.rollout.sampler_logprobs is not None


def test_correcting_needs_the_sampler_s_log_probs(tmp_path, model, tokenizer):
    class Engine(HFGenerator):  # another engine: its own numerics, and no log-probs
        matches_trainer = False

    cfg = _cfg(tmp_path)
    assert not ppo_trainer.corrects_mismatch(cfg, HFGenerator(model, tokenizer))
    assert ppo_trainer.corrects_mismatch(cfg, Engine(model, tokenizer))
    cfg.rollout.is_correction = "never"
    assert not ppo_trainer.corrects_mismatch(cfg, Engine(model, tokenizer))
    cfg.rollout.is_correction = "always"
    assert ppo_trainer.corrects_mismatch(cfg, HFGenerator(model, tokenizer))

    def started(loop):
        generate = loop.generator.generate
        loop.generator.generate = lambda *a, **k: [
            [dataclasses.replace(g, logprobs=None) for g in samples]
            for samples in generate(*a, **k)]

    with pytest.raises(ConfigError, match="is_correction=always needs the log-probs"):
        ppo_trainer.train(cfg, ppo_trainer.Hooks(started))


# One iteration of 4 prompts x 4 samples, two epochs of two minibatches of 8: the second epoch
# has ratios off 1 (clipping), the KL is in the loss (aggregated as the policy loss is).
GROUPED = ["algo=grpo", "rollout.batch_size=4", "rollout.group_size=4", "ppo.minibatch_size=8",
           "ppo.epochs=2", "ppo.kl_in=loss", "ppo.kl_estimator=k3", "train.max_steps=1",
           "optim.lr=3e-3"]


@pytest.mark.parametrize("extra", [
    ["ppo.loss_type=dapo"], ["ppo.loss_type=grpo"], ["ppo.loss_type=dr_grpo"],
    ["ppo.loss_type=grpo", "ppo.importance_sampling_level=sequence", "ppo.clip_range_high=0.28",
     "ppo.dynamic_sampling=true", "reward.gold=test_ppo_trainer:has_e"],
], ids=["dapo", "grpo", "dr_grpo", "gspo-clip_higher-dynamic"])
def test_each_loss_type_is_the_same_in_one_microbatch_or_eight(tmp_path, extra):
    """1 x 8 = 8 x 1: each aggregation's normaliser counts the whole minibatch, so the
    gradient does not depend on how it is split."""
    runs = {}
    for micro in (8, 1):
        out = tmp_path / str(micro)
        out.mkdir()
        ppo_trainer.train(_cfg(out, *GROUPED, *extra, f"ppo.micro_batch_size={micro}"))
        runs[micro] = read_metrics(out / "run" / "metrics.jsonl")[-1]
    # The losses summed over the microbatches, and the gradient norm: a microbatch normalised
    # by its own counts would change them. (Not the weights: Adam's update hardly depends on
    # the gradient's scale, and it magnifies float rounding in tiny gradients.)
    a, b = runs[8], runs[1]
    for key in ("loss/policy", "loss/kl", "optim/grad_norm", "ppo/approx_kl", "ppo/clipfrac"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert a["ppo/clipfrac"] > 0  # the second epoch clipped something
    if "ppo.dynamic_sampling=true" in extra:
        assert a["ppo/dropped_frac"] > 0  # and the dropped groups were left out alike


def test_dynamic_sampling_drops_flat_groups_and_refills_them(tmp_path):
    """Groups whose scores all agree leave the loss and its normaliser (one update at ratio 1:
    the policy loss is minus the mean advantage over the kept tokens); with refill rounds more
    prompts are sampled and their groups take those places, scored as sampled. The overlong
    penalty is in the optimised score."""
    common = ["algo=grpo", "rollout.batch_size=4", "rollout.group_size=4",
              "ppo.minibatch_size=16", "ppo.epochs=1", "reward.gold=test_ppo_trainer:has_e",
              "reward.penalize_no_eos=false", "ppo.dynamic_sampling=true", "train.max_steps=2",
              "reward.overlong_buffer=2", "reward.overlong_penalty=0.5"]
    runs = {}
    for rounds in (0, 3):
        kept = []
        out = tmp_path / str(rounds)
        out.mkdir()
        ppo_trainer.train(_cfg(out, *common, f"ppo.dynamic_sampling_rounds={rounds}"),
                          ppo_trainer.Hooks(iteration=lambda loop, b, m, kept=kept:
                                            kept.append((b, m))))
        runs[rounds] = kept
        for batch, m in kept:
            rollout, keep = batch.rollout, batch.keep
            assert m["ppo/dropped_frac"] == pytest.approx(1 - keep.float().mean().item())
            mask = rollout.mask.bool() & keep[:, None]
            expected = -batch.advantages[mask].sum() / mask.sum()
            assert m["loss/policy"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
            assert batch.scores["gold"].tolist() == has_e(rollout.texts)
            penalty = overlong_penalty(rollout.mask.sum(-1), 8, 2, 0.5)
            torch.testing.assert_close(batch.objective, batch.scores["gold"] + penalty)
            assert m["reward/overlong_penalty"] == pytest.approx(penalty.mean().item())
    dropped = [m["ppo/dropped_frac"] for _, m in runs[0]]
    assert [m["ppo/zero_spread_frac"] for _, m in runs[0]] == pytest.approx(dropped)
    assert max(dropped) > 0 and "ppo/refill_rounds" not in runs[0][0][1]
    refilled = runs[3]
    assert refilled[0][1]["ppo/zero_spread_frac"] == dropped[0]  # the same first rollout
    assert refilled[0][1]["ppo/refill_rounds"] >= 1
    assert refilled[0][1]["ppo/dropped_frac"] < dropped[0]
