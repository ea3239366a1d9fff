"""The DPO loop on the tiny model: log-prob plumbing, the reference options, learning, resume."""

import json

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tether.checkpoint import list_checkpoints
from tether.cli import main
from tether.config import DPOConfig, load_config
from tether.data.collate import collate
from tether.data.preferences import EncodedPreference, parse_preference
from tether.data.readers import BadRow
from tether.data.tokenize import encode_example
from tether.errors import ConfigError
from tether.models.logprobs import forward_logits, token_logprobs
from tether.rundir import read_metrics
from tether.trainers import dpo as dpo_trainer
from tether.trainers.common import Hooks
from tether.trainers.dpo import REF_CACHE, dpo_objective, preference_pairs, response_logps


def _cfg(tmp_path, data, *overrides):
    return load_config(DPOConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0", "optim.lr=1e-3", "optim.warmup_steps=0", "train.eval_every=0",
        "train.batch_size=8", "train.micro_batch_size=4", *overrides])


def _encode(tokenizer, prompt, response):
    return encode_example(tokenizer, [{"role": "user", "content": prompt}], response,
                          chat_template=True, max_length=128, truncation="prompt_left")


def test_summed_logps_cover_the_response_only_and_ignore_padding(model, tokenizer):
    short = _encode(tokenizer, "Review 1:", " The film was lovely.")
    long = _encode(tokenizer, "Review 2: a much longer prompt than the first one",
                   " The film was dull, boring and flat from start to end.")
    alone, n_alone = response_logps(model, [short], tokenizer.pad_token_id, bf16=False)
    padded, n_padded = response_logps(model, [short, long], tokenizer.pad_token_id, bf16=False)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=0)
    assert n_alone[0] == n_padded[0] == sum(short.loss_mask)
    # Left padding (positions from the mask) gives the same sums as right padding.
    batch = collate([short, long], tokenizer.pad_token_id, side="left")
    logps = token_logprobs(forward_logits(model, batch["input_ids"], batch["attention_mask"]),
                           batch["input_ids"])
    torch.testing.assert_close((logps * batch["loss_mask"]).sum(-1), padded, atol=1e-5, rtol=0)
    # The sum is over the response (and EOS) only: by hand from the full per-token log-probs.
    ids = torch.tensor([short.input_ids])
    every = token_logprobs(forward_logits(model, ids, torch.ones_like(ids)), ids)[0]
    start = short.loss_mask.index(1)
    torch.testing.assert_close(alone[0], every[start:].sum(), atol=1e-5, rtol=0)


def test_an_unfinished_sample_counts_its_tokens_not_an_ending(model, tokenizer, tmp_path):
    """A sampled response that reached the token limit without EOS (finished: false, as
    `tether sample` and the simulated labeler write it) is scored as its tokens alone: the
    policy's likelihood of what it sampled, not of ending there."""
    rows = tmp_path / "labels.jsonl"
    write_jsonl(rows, [{"prompt": "Review 1:", "responses": [" Lovely.", " The film was dull"],
                        "ranks": [0, 1], "finished": [True, False]},
                       {"prompt": "Review 2:", "chosen": " Fine film.", "rejected": " It was",
                        "rejected_finished": False}])
    cfg = _cfg(tmp_path, rows, "data.chat_template=never")
    data = dpo_trainer.load_preference_data(cfg.data, tokenizer, 0)
    eos = tokenizer.eos_token_id
    for pref in data.train:
        ended, unended = pref.responses
        assert ended.input_ids[-1] == eos and unended.input_ids[-1] != eos
        logps, counts = response_logps(model, [unended], tokenizer.pad_token_id, bf16=False)
        with_eos = encode_example(tokenizer, pref.source.prompt, pref.source.responses[1],
                                  chat_template=False, max_length=128,
                                  truncation="prompt_left")
        ids = torch.tensor([with_eos.input_ids])
        every = token_logprobs(forward_logits(model, ids, torch.ones_like(ids)), ids)[0]
        start = with_eos.loss_mask.index(1)
        # the same tokens as the EOS-ended encoding, less its last log-prob
        torch.testing.assert_close(logps[0], every[start:-1].sum(), atol=1e-5, rtol=0)
        assert counts[0] == sum(with_eos.loss_mask) - 1


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1], "finished": [True]},
     "'finished' must be a list of 2 booleans"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1], "finished": "yes"},
     "'finished' must be a list of 2 booleans"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_finished": 1},
     "'chosen_finished' must be true or false"),
])
def test_bad_finished_flags_name_the_field(row, message):
    with pytest.raises(BadRow, match=message):
        parse_preference(row, "labels.jsonl:1")


def test_one_concatenated_forward_equals_two_separate_ones(model, tokenizer):
    rows = ranking_rows(6, k=2)
    chosen = [_encode(tokenizer, r["prompt"], r["responses"][0]) for r in rows]
    rejected = [_encode(tokenizer, r["prompt"], r["responses"][1] + " Really.") for r in rows]
    both, _ = response_logps(model, chosen + rejected, tokenizer.pad_token_id, bf16=False)
    first, _ = response_logps(model, chosen, tokenizer.pad_token_id, bf16=False)
    second, _ = response_logps(model, rejected, tokenizer.pad_token_id, bf16=False)
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=0)


def test_training_forwards_every_response_once_in_one_pass(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(16, k=4))
    seen = []
    original = dpo_trainer.response_logps

    def counting(model, responses, pad_id, bf16, group_sizes=None, *rest):
        seen.append((len(responses), group_sizes))
        return original(model, responses, pad_id, bf16, group_sizes, *rest)

    monkeypatch.setattr(dpo_trainer, "response_logps", counting)
    dpo_trainer.train(_cfg(tmp_path, data, "train.max_steps=1", "train.micro_batch_size=8",
                           "ref.precompute=false"))
    # 8 prompts x 4 responses: one policy pass of 32 responses (and one reference pass), not
    # one per pair (8 x 6 pairs x 2); each prompt's 4 share a row (train.share_prompt).
    assert seen == [(32, [4] * 8)] * 2


def test_shared_prompts_train_as_separate_rows_do(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, k=3))
    runs = {}
    for share in ("false", "true"):
        out = tmp_path / share
        out.mkdir()
        dpo_trainer.train(_cfg(out, data, "train.max_steps=3", "ref.precompute=false",
                               "dpo.beta=0.5", f"train.share_prompt={share}"))
        runs[share] = read_metrics(out / "run" / "metrics.jsonl")
    for a, b in zip(runs["false"], runs["true"], strict=True):
        for key in ("loss/train", "reward/margin", "logps/chosen"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
        assert a["optim/grad_norm"] == pytest.approx(b["optim/grad_norm"], rel=1e-4)


def test_pair_weights_average_within_a_prompt_then_over_prompts():
    class Pref:  # the two fields preference_pairs reads
        def __init__(self, ranks):
            self.responses = ranks
            self.source = type("S", (), {"pairs": lambda _, r=ranks: [
                (i, j) for i in range(len(r)) for j in range(len(r)) if r[i] < r[j]]})()

    pairs = preference_pairs([Pref([0, 1]), Pref([0, 1, 2])], num_groups=2)
    assert pairs.better.tolist() == [0, 2, 2, 3]
    assert pairs.worse.tolist() == [1, 3, 4, 4]
    torch.testing.assert_close(pairs.weight, torch.tensor([1 / 2, 1 / 6, 1 / 6, 1 / 6]))


def test_microbatches_add_up_to_the_whole_batch(model, tokenizer):
    cfg = load_config(DPOConfig, None, ["data.train=x", "dpo.sft_weight=0.5"]).dpo
    prefs = []
    for i, row in enumerate(ranking_rows(6, k=3)):
        source = parse_preference(row, f"row {i}")
        prefs.append(EncodedPreference([_encode(tokenizer, row["prompt"], r)
                                        for r in row["responses"]], row["ranks"], source))
    prefs = [p for p in prefs if p.source.pairs()]
    ref = {id(p): torch.randn(len(p.responses)) for p in prefs}

    def grads(groups):
        model.zero_grad()
        total, sums = 0.0, {}
        for group in groups:
            logps, n = response_logps(model, [r for p in group for r in p.responses],
                                      tokenizer.pad_token_id, bf16=False)
            loss, s = dpo_objective(logps, torch.cat([ref[id(p)] for p in group]), n,
                                    preference_pairs(group, len(prefs)), cfg)
            loss.backward()
            total += loss.item()
            sums = {k: sums.get(k, 0.0) + v for k, v in s.items()}
        return total, sums, [p.grad.clone() for p in model.parameters()]

    whole = grads([prefs])
    split = grads([prefs[:2], prefs[2:3], prefs[3:]])
    assert whole[0] == pytest.approx(split[0], abs=1e-5)
    assert whole[1] == pytest.approx(split[1], abs=1e-4)
    for a, b in zip(whole[2], split[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _first_step(tmp_path, name, data, *overrides):
    run = tmp_path / name
    run.mkdir()
    dpo_trainer.train(_cfg(run, data, "train.max_steps=1", *overrides))
    return read_metrics(run / "run" / "metrics.jsonl")[-1]


def test_precomputed_and_live_reference_give_the_same_first_step(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, k=3))
    live = _first_step(tmp_path, "live", data, "ref.precompute=false", "dpo.beta=0.5")
    pre = _first_step(tmp_path, "pre", data, "ref.precompute=true", "dpo.beta=0.5")
    for key in ("loss/train", "reward/margin", "optim/grad_norm"):
        assert live[key] == pytest.approx(pre[key], abs=1e-5), key
    assert (tmp_path / "pre" / "run" / REF_CACHE).exists()
    assert not (tmp_path / "live" / "run" / REF_CACHE).exists()
    # The policy starts as the reference: the implicit rewards start at zero.
    assert live["loss/train"] == pytest.approx(0.693147, abs=1e-4)


def test_lora_reference_is_the_policy_with_its_adapter_off(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, k=3))
    loads = []
    original = dpo_trainer.load_causal_lm
    monkeypatch.setattr(dpo_trainer, "load_causal_lm",
                        lambda name, **kw: loads.append(name) or original(name, **kw))
    lora = ["model.lora.enabled=true", "model.lora.r=4", "train.max_steps=3", "optim.lr=5e-2"]
    shared, copied = [], []
    for name, out, extra in (("shared", shared, []), ("copy", copied, ["ref.share_base=false"])):
        loads.clear()
        for precompute in ("true", "false"):
            run = tmp_path / f"{name}-{precompute}"
            run.mkdir()
            dpo_trainer.train(_cfg(run, data, *lora, *extra, f"ref.precompute={precompute}"))
            out.append(read_metrics(run / "run" / "metrics.jsonl"))
        # Sharing loads one model per run; otherwise a second copy serves as the reference.
        assert len(loads) == (2 if name == "shared" else 4), loads
    # The same numbers whichever way the reference is obtained, at every step (by step 3 the
    # adapter has moved, so a reference that followed it would show: its loss would stay at
    # log 2). At this lr the gradient norm grows 15x in 3 steps, so the reference's rounding
    # (packed rows of a different width when precomputed) grows from 1e-7 to 1e-4 by then.
    for runs in (shared, copied):
        for a, b in zip(runs[0], runs[1], strict=True):
            assert a["loss/train"] == pytest.approx(b["loss/train"], abs=5e-4)
    for a, b in zip(shared[0], copied[0], strict=True):
        assert a["loss/train"] == pytest.approx(b["loss/train"], abs=1e-5)
    assert shared[0][-1]["kl/chosen"] != 0.0


def test_cli_run_learns_the_preference_and_exports(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(120, k=2))
    assert main(["dpo", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "data.eval_fraction=0.25", "optim.lr=1e-3", "train.max_steps=24",
                 "train.eval_every=12", "dpo.beta=0.1"]) == 0
    out = capsys.readouterr().out
    assert "held-out: eval/loss" in out
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and metrics[0]["eval/accuracy"] == pytest.approx(0.5)
    final = metrics[-1]
    assert final["step"] == 24
    assert final["eval/accuracy"] > 0.8, final
    assert final["eval/margin"] > 0 and final["eval/loss"] < 0.6
    for key in ("loss/train", "reward/chosen", "reward/rejected", "reward/accuracy",
                "reward/margin", "kl/chosen", "perf/tokens_per_s"):
        assert key in final
    # reward = beta * log-ratio, and the margin is their difference
    assert final["reward/chosen"] == pytest.approx(0.1 * final["kl/chosen"], rel=1e-4)
    assert final["reward/margin"] == pytest.approx(
        final["reward/chosen"] - final["reward/rejected"], abs=1e-5)
    # final/ is a plain transformers causal LM (LoRA merged by default)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")


@pytest.mark.parametrize("loss", ["ipo", "hinge", "robust", "sigmoid"])
def test_every_variant_trains(tmp_path, loss):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40, k=2))
    extra = ["dpo.label_smoothing=0.1"] if loss in ("robust", "sigmoid") else []
    dpo_trainer.train(_cfg(tmp_path, data, f"dpo.loss={loss}", "train.max_steps=8",
                           "dpo.sft_weight=0.1", *extra))
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert metrics[-1]["reward/margin"] > metrics[0]["reward/margin"]


def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(40, k=3))
    cfg = _cfg(tmp_path, data, "train.save_every=2", "train.max_steps=6")
    dpo_trainer.train(cfg)
    whole = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))

    other = tmp_path / "again"
    other.mkdir()
    cfg = _cfg(other, data, "train.save_every=2", "train.max_steps=6")

    def die_at_step_4(step):
        if step == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint, step 3 done

    with pytest.raises(KeyboardInterrupt):
        dpo_trainer.train(cfg, Hooks(step_started=die_at_step_4))
    assert [p.name for p in list_checkpoints(other / "run")] == ["step-00000002"]
    loads = []
    real_load = dpo_trainer.load_causal_lm
    monkeypatch.setattr(dpo_trainer, "load_causal_lm",
                        lambda name, **kw: loads.append(name) or real_load(name, **kw))
    cfg.resume = True
    dpo_trainer.train(cfg)
    assert loads == ["tiny"]  # the reference log-probs came from the run's cache
    resumed = load_file(str(other / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps = [m["step"] for m in read_metrics(other / "run" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # no step logged twice


def test_diverging_loss_stops_with_exit_1(tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(16, k=2))
    monkeypatch.setitem(dpo_trainer.LOSSES, "sigmoid",
                        lambda m, beta, eps: m * float("nan"))
    code = main(["dpo", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "data.eval_fraction=0", "train.max_steps=2"])
    assert code == 1
    assert "training diverged" in capsys.readouterr().err


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    assert main(["dpo", "model.name=tiny", f"data.train={bad}",
                 f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "'rejected'" in err and "Traceback" not in err
    assert main(["dpo", f"data.train={bad}", "dpo.loss=ipo", "dpo.label_smoothing=0.1"]) == 2
    assert "label_smoothing" in capsys.readouterr().err


def letters_e(texts):  # a toy gold scorer for the sampled evaluation
    return [t.count("e") / max(len(t), 1) for t in texts]


def _sampled(tmp_path, max_new_tokens: int):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, k=2))
    prompts = write_jsonl(tmp_path / "heldout.jsonl",
                          [{"prompt": f"Review {i}: the film"} for i in range(6)])
    dpo_trainer.train(_cfg(tmp_path, data, "train.max_steps=4", "train.eval_every=2",
                           f"sampled_eval.prompts={prompts}", "sampled_eval.num_prompts=4",
                           "sampled_eval.gold=test_dpo_trainer:letters_e",
                           f"sampled_eval.max_new_tokens={max_new_tokens}"))
    return [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/gold" in m]


def test_sampled_eval_logs_gold_and_kl_of_fresh_samples(tmp_path, capsys):
    evals = _sampled(tmp_path, 8)
    assert [m["step"] for m in evals] == [0, 2, 4]
    # Before any update the policy is the reference: the KL of its samples is exactly 0.
    assert evals[0]["eval/kl"] == pytest.approx(0.0, abs=1e-5)
    assert evals[-1]["eval/kl"] != pytest.approx(0.0, abs=1e-3)
    assert all(0 <= m["eval/gold"] <= 1 and m["eval/num_tokens"] >= 1 for m in evals)
    # Healthy: no collapse flagged or printed.
    assert all(m["health/collapse"] == 0 for m in evals)
    assert "response collapse" not in capsys.readouterr().out


def test_sampled_eval_warns_once_of_a_response_collapse(tmp_path, capsys):
    evals = _sampled(tmp_path, 1)  # one-token responses: a collapse by its length
    assert all(m["health/collapse"] == 1 for m in evals)
    assert capsys.readouterr().out.count("warning: response collapse") == 1


def test_sampled_eval_needs_a_scorer(tmp_path):
    with pytest.raises(ConfigError, match="sampled_eval.gold or sampled_eval.reward_model"):
        _cfg(tmp_path, "x.jsonl", "sampled_eval.prompts=p.jsonl")
