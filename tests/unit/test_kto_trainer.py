"""The KTO loop on the tiny model: the first step against the pure loss, micro-batches against
one batch, resume, learning a thumbs up / down preference, the reference options, bad input."""

import random

import pytest
import torch
from conftest import BAD_WORDS, GOOD_WORDS, write_jsonl
from safetensors.torch import load_file

from tether import metric_names
from tether.checkpoint import list_checkpoints
from tether.cli import main
from tether.config import KTOConfig, KTOLossConfig, load_config
from tether.data.unpaired import load_unpaired_data
from tether.losses.kto import kto_loss
from tether.models.loading import load_causal_lm
from tether.models.tiny import tiny_llama, tiny_tokenizer
from tether.rundir import read_metrics
from tether.trainers import kto as kto_trainer
from tether.trainers.common import Hooks
from tether.trainers.kto import MISMATCHED, OWN, balance_warning, completion_logps


def thumbs_rows(n: int, seed: int = 0, up_share: float = 0.5) -> list[dict]:
    """Reviews rated up when they hold good words, down when they hold bad ones: a preference
    the tiny model can learn."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        up = i % round(1 / up_share) == 0
        words = [r.choice(GOOD_WORDS if up else BAD_WORDS) for _ in range(3)]
        rows.append({"prompt": f"Review {i % (n // 2 or 1)}:",
                     "completion": " The film was " + " ".join(words) + ".", "label": up})
    return rows


def _cfg(tmp_path, data, *overrides):
    return load_config(KTOConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0", "optim.lr=1e-3", "optim.warmup_steps=0", "train.eval_every=0",
        "train.batch_size=8", "train.micro_batch_size=4", *overrides])


def _run(tmp_path, name, data, *overrides):
    run = tmp_path / name
    run.mkdir()
    kto_trainer.train(_cfg(run, data, *overrides))
    return run / "run"


def test_first_step_loss_is_the_pure_function_of_separate_logps(tmp_path):
    # A reference unlike the policy, so that r and z0 are far from 0.
    ref_dir = tmp_path / "reference"
    tiny_llama(seed=1).save_pretrained(ref_dir)
    tiny_tokenizer().save_pretrained(ref_dir)
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(8))
    cfg = _cfg(tmp_path, data, f"ref.model={ref_dir}", "train.max_steps=1", "kto.beta=0.5",
               "kto.desirable_weight=1.3")
    kto_trainer.train(cfg)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]

    tokenizer = tiny_tokenizer()
    rows = load_unpaired_data(cfg.data, tokenizer, cfg.train.seed).train  # all 8: one batch
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        policy, ref = load_causal_lm("tiny").eval(), load_causal_lm(str(ref_dir)).eval()
        logps = {(name, col): completion_logps(m, rows, col, pad, bf16=False)[0]
                 for name, m in (("policy", policy), ("ref", ref)) for col in (OWN, MISMATCHED)}
    desirable = torch.tensor([r.desirable for r in rows])
    want = kto_loss(logps["policy", OWN], logps["ref", OWN], logps["policy", MISMATCHED],
                    logps["ref", MISMATCHED], desirable, beta=0.5, desirable_weight=1.3)
    kl = (logps["policy", MISMATCHED] - logps["ref", MISMATCHED]).mean().item()
    assert kl > 0.3 and abs(want.item() - 0.5 * (1.3 * 4 + 4) / 8) > 0.01  # z0 > 0, r != 0
    assert first["step"] == 1
    assert first["loss/train"] == pytest.approx(want.item(), abs=1e-5)
    assert first["kl/mismatched"] == pytest.approx(kl, abs=1e-3)
    reward_up = 0.5 * (logps["policy", OWN] - logps["ref", OWN])[desirable].mean().item()
    assert first["reward/desirable"] == pytest.approx(reward_up, abs=1e-5)


@pytest.mark.parametrize("split", ["train.micro_batch_size=2",
                                   "train.max_tokens_per_microbatch=200"])
def test_micro_batches_give_the_update_of_one_batch(tmp_path, split):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(16))
    steps = ["train.max_steps=2", "train.micro_batch_size=8", "kto.beta=0.5"]
    whole = _run(tmp_path, "whole", data, *steps)
    parts = _run(tmp_path, "parts", data, *steps, split)
    for a, b in zip(read_metrics(whole / "metrics.jsonl"), read_metrics(parts / "metrics.jsonl"),
                    strict=True):
        for key in ("loss/train", "kl/mismatched", "reward/desirable", "logps/undesirable"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
        assert a["optim/grad_norm"] == pytest.approx(b["optim/grad_norm"], rel=1e-4)
    first, second = (load_file(str(run / "final" / "model.safetensors"))
                     for run in (whole, parts))
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=1e-4)


def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(24))
    overrides = ["train.save_every=2", "train.max_steps=6"]
    whole = load_file(str(_run(tmp_path, "whole", data, *overrides) / "final" /
                          "model.safetensors"))
    other = tmp_path / "again"
    other.mkdir()
    cfg = _cfg(other, data, *overrides)

    def die_at_step_4(step):
        if step == 4:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint, step 3 done

    with pytest.raises(KeyboardInterrupt):
        kto_trainer.train(cfg, Hooks(step_started=die_at_step_4))
    assert [p.name for p in list_checkpoints(other / "run")] == ["step-00000002"]
    cfg.resume = True
    kto_trainer.train(cfg)
    resumed = load_file(str(other / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps = [m["step"] for m in read_metrics(other / "run" / "metrics.jsonl")]
    assert steps == sorted(set(steps))


def test_kto_raises_thumbs_up_over_thumbs_down_on_held_out_rows(tmp_path, capsys):
    train = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(96, seed=0))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", thumbs_rows(24, seed=1))
    assert main(["kto", "model.name=tiny", f"data.train={train}", f"data.eval={heldout}",
                 f"run_dir={tmp_path / 'run'}", "optim.lr=1e-3", "train.max_steps=12",
                 "kto.beta=0.1"]) == 0
    assert "held-out: eval/loss" in capsys.readouterr().out
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    start, end = metrics[0], metrics[-1]
    assert start["step"] == 0 and end["step"] == 12
    # The policy starts as the reference: every implicit reward 0, the loss lambda / 2.
    assert start["eval/reward_desirable"] == pytest.approx(0.0, abs=1e-5)
    assert start["eval/loss"] == pytest.approx(0.5, abs=1e-5)

    def gap(m):  # mean log-prob of a held-out thumbs-up response minus a thumbs-down one
        return m["eval/logps_desirable"] - m["eval/logps_undesirable"]

    assert gap(end) > gap(start) + 5.0, (gap(start), gap(end))  # measured: -8.0 -> 13.4
    assert end["eval/reward_desirable"] > 0 > end["eval/reward_undesirable"]
    assert end["eval/loss"] < 0.45


def test_live_and_precomputed_reference_and_lora_agree(tmp_path):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(16))
    steps = ["train.max_steps=2", "kto.beta=0.5"]
    live = _run(tmp_path, "live", data, *steps, "ref.precompute=false")
    pre = _run(tmp_path, "pre", data, *steps, "ref.precompute=true")
    assert (pre / "ref_logprobs.pt").exists() and not (live / "ref_logprobs.pt").exists()
    for a, b in zip(read_metrics(live / "metrics.jsonl"), read_metrics(pre / "metrics.jsonl"),
                    strict=True):
        assert a["loss/train"] == pytest.approx(b["loss/train"], abs=1e-5)
    lora = ["model.lora.enabled=true", "model.lora.r=4", "optim.lr=5e-2"]
    shared = _run(tmp_path, "shared", data, *steps, *lora)
    copied = _run(tmp_path, "copy", data, *steps, *lora, "ref.share_base=false")
    for a, b in zip(read_metrics(shared / "metrics.jsonl"),
                    read_metrics(copied / "metrics.jsonl"), strict=True):
        assert a["loss/train"] == pytest.approx(b["loss/train"], abs=1e-5)
    assert read_metrics(shared / "metrics.jsonl")[-1]["kl/mismatched"] != 0.0


def test_imbalanced_data_gets_the_papers_advice():
    class Row:
        def __init__(self, desirable):
            self.desirable = desirable

    rows = [Row(True)] * 2 + [Row(False)] * 8
    message = balance_warning(rows, KTOLossConfig())
    assert "= 0.25" in message and "between 4 and 5.33" in message
    assert balance_warning(rows, KTOLossConfig(desirable_weight=4.5)) is None
    assert balance_warning([Row(True)] * 5 + [Row(False)] * 4, KTOLossConfig()) is None


def test_the_warning_is_printed_at_run_time(tmp_path, capsys):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs_rows(16, up_share=0.2))
    kto_trainer.train(_cfg(tmp_path, data, "train.max_steps=1"))
    assert "warning: kto.desirable_weight" in capsys.readouterr().out


def test_held_out_names_live_under_eval():
    names = metric_names.KTO_HELD_OUT.values()
    assert all(n.startswith(metric_names.EVAL_PREFIX) for n in names)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c", "label": "yes"}, "'label' must be true"),
    ({"prompt": "p", "label": True}, "missing field 'completion'"),
    ({"prompt": "p", "completion": "", "label": True}, "'completion' is empty"),
])
def test_bad_input_is_exit_2_naming_the_line_with_nothing_written(tmp_path, capsys, row,
                                                                  message):
    rows = thumbs_rows(6)
    rows.insert(1, row)
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    run = tmp_path / "run"
    assert main(["kto", "model.name=tiny", f"data.train={data}", f"run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and message in err and "Traceback" not in err
    assert not run.exists()


def test_one_class_and_a_batch_of_one_are_exit_2(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ups.jsonl", [{**r, "label": True} for r in thumbs_rows(6)])
    assert main(["kto", "model.name=tiny", f"data.train={data}",
                 f"run_dir={tmp_path / 'run'}"]) == 2
    assert "KTO needs both" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "ok.jsonl", thumbs_rows(6))
    assert main(["kto", f"data.train={good}", "train.batch_size=1",
                 "train.micro_batch_size=1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
