"""bf16 autocast (train.bf16) against fp32, and bf16 weights with fp32 master weights
(train.bf16_weights: tether.precision, tether.optim.MasterAdamW) against both.

The first: the precision autocast costs is small and measured (`python -m bench precision`
prints the same figures, for the 135M model too). The rest: the master-weight optimizer is
torch's AdamW on fp32 copies (exactly, given the same gradients), its checkpoints resume
bitwise, and a training loop on bf16 weights stays within bf16 rounding of autocast's."""

import copy
import math

import pytest
import torch

from bench.precision import compare
from tether.checkpoint import load_checkpoint
from tether.config import LoraConfig, OptimConfig, TrainConfig
from tether.device import autocast
from tether.errors import ConfigError
from tether.losses.sft import masked_nll
from tether.models.logprobs import forward_logits, token_logprobs
from tether.models.lora import apply_lora
from tether.models.tiny import tiny_llama
from tether.optim import MASTER, MasterAdamW, make_optimizer, make_scheduler
from tether.precision import master_model, master_weights, to_bf16
from tether.trainers.common import (
    clip_and_check,
    restore_training_state,
    save_training_state,
    start_or_resume,
)

OPTIM = OptimConfig(lr=3e-3, weight_decay=0.1, warmup_steps=2, schedule="cosine")
STEPS = 6


def test_bf16_autocast_stays_close_to_fp32():
    f = compare("tiny", steps=5, batch_size=4, seq_len=32)
    assert f["loss_rel_diff"] < 1e-3  # measured: 1.6e-5
    assert f["grad_cosine"] > 0.999  # measured: 1.0000 (tiny), 0.9998 (135M)
    assert f["grad_norm_rel_diff"] < 1e-2
    assert f["curve_max_abs_gap"] < 1e-2
    assert f["weights_gap_over_movement"] < 0.1  # the two runs drift apart by 2% of a step


# -- helpers ----------------------------------------------------------------------------------


def batches(n: int = STEPS, size: int = 4, length: int = 24) -> list[dict[str, torch.Tensor]]:
    """Random token batches with a prompt part (unscored) and padding at the right."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 512, (size, length), generator=g)
        attention = torch.ones_like(ids)
        attention[1, -5:] = 0
        loss_mask = attention.clone()
        loss_mask[:, :6] = 0
        out.append({"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask})
    return out


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with autocast(True):
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
    return masked_nll(token_logprobs(logits, batch["input_ids"]), batch["loss_mask"])


def bf16_model(seed: int = 0) -> torch.nn.Module:
    return to_bf16(tiny_llama(seed))


def by_name(model: torch.nn.Module, optimizer: MasterAdamW) -> dict[str, torch.Tensor]:
    return {n: optimizer.state[p][MASTER] for n, p in model.named_parameters()
            if p.requires_grad}


def train_steps(model, optimizer, scheduler, data, max_grad_norm: float = 1.0) -> list[float]:
    losses = []
    for step, batch in enumerate(data):
        loss = sft_loss(model, batch)
        loss.backward()
        clip_and_check(model, max_grad_norm, loss.item(), step + 1, None)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


# -- the optimizer ----------------------------------------------------------------------------


def test_masters_are_fp32_adamw_given_the_same_gradients():
    """Fed the same fp32 gradients, MasterAdamW's masters ARE a plain fp32 AdamW's weights
    (bitwise: the same kernel on the same numbers), under the same schedule; the bf16
    parameters are always the masters rounded."""
    reference, model = tiny_llama(0), bf16_model(0)
    plain = make_optimizer(reference, OPTIM, {"model.norm": 1e-2})
    masters = make_optimizer(model, OPTIM, {"model.norm": 1e-2}, master_weights=True)
    assert isinstance(masters, MasterAdamW) and masters.param_groups[0]["fused"]
    schedules = [make_scheduler(o, OPTIM, STEPS) for o in (plain, masters)]
    twin = dict(zip(map(id, model.parameters()), reference.parameters(), strict=True))
    # The masters start from the fp32 weights, not from their bf16 rounding.
    assert all(torch.equal(masters.state[p][MASTER], twin[id(p)]) for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        for p in model.parameters():
            grad = torch.randn(p.shape, generator=g)
            twin[id(p)].grad, p.grad = grad, grad.bfloat16()
        in_order = [p for group in masters.param_groups for p in group["params"]]
        for p, m in zip(in_order, masters.master_grads(), strict=True):
            m.grad.copy_(twin[id(p)].grad)  # the fp32 gradient, where bf16 rounded it
        for optimizer, schedule in zip((plain, masters), schedules, strict=True):
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    assert [g["lr"] for g in masters.param_groups] == [g["lr"] for g in plain.param_groups]
    for p in model.parameters():
        state, ref_state = masters.state[p], plain.state[twin[id(p)]]
        assert state[MASTER].dtype == state["exp_avg"].dtype == torch.float32
        assert torch.equal(state[MASTER], twin[id(p)])
        assert torch.equal(state["exp_avg"], ref_state["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], ref_state["exp_avg_sq"])
        assert p.dtype == torch.bfloat16 and torch.equal(p, state[MASTER].bfloat16())


def test_bf16_weights_train_like_autocast_with_fp32_weights():
    """The same loop, autocast over fp32 weights against autocast over bf16 weights with fp32
    masters: the same losses and weights to bf16 rounding."""
    data = batches(2) * 3  # seen three times: the loss falls
    reference = tiny_llama(0)
    optimizer = make_optimizer(reference, OPTIM)
    curve = train_steps(reference, optimizer, make_scheduler(optimizer, OPTIM, STEPS), data)
    model = bf16_model(0)
    masters = make_optimizer(model, OPTIM, master_weights=True)
    bf16_curve = train_steps(model, masters, make_scheduler(masters, OPTIM, STEPS), data)
    assert curve[-1] < curve[0] - 0.5  # it learns (measured 6.21 -> 5.41)
    assert max(abs(a - b) for a, b in zip(curve, bf16_curve, strict=True)) < 5e-3  # 1.0e-3
    start = dict(tiny_llama(0).named_parameters())
    weights = dict(reference.named_parameters())
    moved = math.sqrt(sum((weights[n] - start[n]).pow(2).sum().item() for n in weights))
    gap = math.sqrt(sum((m - weights[n]).pow(2).sum().item()
                        for n, m in by_name(model, masters).items()))
    assert all(m.dtype == torch.float32 for m in masters.masters())
    assert gap < 0.1 * moved  # measured 4.4% of how far the weights moved


def test_state_dict_round_trip_continues_bitwise():
    """Stopped after k steps and resumed from (a copy of) the optimizer's state_dict alone, in
    a fresh model and optimizer: the masters, moments and weights of the uninterrupted run,
    bitwise. (load_state_dict sets the bf16 weights from the masters.)"""
    data, k = batches(), 3

    def fresh():
        model = bf16_model(0)
        optimizer = make_optimizer(model, OPTIM, master_weights=True)
        return model, optimizer, make_scheduler(optimizer, OPTIM, STEPS)

    model, optimizer, scheduler = fresh()
    whole = train_steps(model, optimizer, scheduler, data)

    first, opt1, sched1 = fresh()
    train_steps(first, opt1, sched1, data[:k])
    saved = copy.deepcopy({"optimizer": opt1.state_dict(), "scheduler": sched1.state_dict()})
    assert all(s[MASTER].dtype == torch.float32 for s in saved["optimizer"]["state"].values())
    resumed, opt2, sched2 = fresh()  # its weights are seed 0's start, not step k's
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt2.state.values())
    rest = train_steps(resumed, opt2, sched2, data[k:])
    assert rest == whole[k:]
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert all(torch.equal(optimizer.state[p][key], opt2.state[q][key])
                   for key in (MASTER, "exp_avg", "exp_avg_sq", "step")), name


def test_schedule_clipping_and_zero_grad():
    model = bf16_model(0)
    optimizer = make_optimizer(model, OPTIM, master_weights=True)
    scheduler = make_scheduler(optimizer, OPTIM, STEPS)
    # The schedule sets the lr of every group (what the masters are updated with).
    assert [g["lr"] for g in optimizer.param_groups] == [OPTIM.lr / 2] * 2  # warmup step 1 of 2
    loss = sft_loss(model, batches(1)[0]) * 1e3  # a gradient far above the clip
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(g.dtype == torch.bfloat16 for g in grads)
    true_norm = torch.cat([g.double().flatten() for g in grads]).norm().item()
    norm = clip_and_check(model, 1.0, loss.item(), 1, None)
    # The fp32 norm of the bf16 gradients: within fp32 summation error (1e-6 relative, seen on
    # an AVX2 CPU) of the exact one; a norm taken in bf16 would be off by ~1e-3.
    assert norm == pytest.approx(true_norm, rel=1e-5)
    clipped = optimizer.master_grads()
    assert all(m.grad.dtype == torch.float32 for m in clipped)
    assert torch.cat([m.grad.double().flatten() for m in clipped]).norm().item() == \
        pytest.approx(1.0, rel=1e-5)
    # The masters' gradients were clipped, not the parameters' (read once, kept to the step).
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))

    before = [m.clone() for m in optimizer.masters()]
    optimizer.step()
    moved = max((m - b).abs().max().item() for m, b in zip(optimizer.masters(), before,
                                                           strict=True))
    assert 0 < moved <= OPTIM.lr / 2 * 1.01  # Adam moves a weight by at most ~lr
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [OPTIM.lr] * 2
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters()) and optimizer.master_grads() == []
    # With an lr of 0 (the schedule's end) nothing moves.
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    sft_loss(model, batches(1)[0]).backward()
    before = [m.clone() for m in optimizer.masters()]
    optimizer.step()
    assert all(torch.equal(m, b) for m, b in zip(optimizer.masters(), before, strict=True))


def test_checkpoints_hold_the_masters_and_resume_exactly(tmp_path):
    """Through tether.trainers.common: a checkpoint stores the fp32 masters as the model and
    a plain AdamW's state as the optimizer; resuming from it (with bf16 weights, or without)
    continues exactly."""
    data, k = batches(), 3

    def start(run, checkpoint=None, masters=True, stop=STEPS):
        (tmp_path / run).mkdir(exist_ok=True)
        model = bf16_model(0) if masters else tiny_llama(0)
        optimizer, scheduler, step, log = start_or_resume(
            tmp_path / run, checkpoint, model, OPTIM, STEPS, num_examples=48,
            data_source="d", master_weights=masters)
        train_steps(model, optimizer, scheduler, data[step:stop])
        log.close()
        return model, optimizer, scheduler

    model, optimizer, _ = start("whole")
    first, opt1, sched1 = start("part", stop=k)
    path = save_training_state(tmp_path / "part", k, first, opt1, sched1, num_examples=48,
                               steps_per_epoch=12, keep=2)
    state = load_checkpoint(path)
    assert all(w.dtype == torch.float32 for w in state["model"].values())
    assert all(torch.equal(state["model"][n], m) for n, m in by_name(first, opt1).items())
    assert not any(MASTER in s for s in state["optimizer"]["state"].values())

    resumed, opt2, _ = start("part", checkpoint=path)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(optimizer.state[p][MASTER],
                                                 opt2.state[q][MASTER]), name

    # The same checkpoint resumes an fp32 run with the masters as its weights, exactly.
    fp32 = tiny_llama(1)
    plain = make_optimizer(fp32, OPTIM)
    assert restore_training_state(path, fp32, plain, make_scheduler(plain, OPTIM, STEPS),
                                  num_examples=48, data_source="d") == k
    assert all(torch.equal(p, state["model"][n]) for n, p in fp32.named_parameters())
    # And an fp32 run's checkpoint resumes with bf16 weights, its weights as the masters.
    path = save_training_state(tmp_path / "fp32", k, fp32, plain, make_scheduler(
        plain, OPTIM, STEPS), num_examples=48, steps_per_epoch=12, keep=2)
    model = bf16_model(1)
    masters = make_optimizer(model, OPTIM, master_weights=True)
    restore_training_state(path, model, masters, make_scheduler(masters, OPTIM, STEPS),
                           num_examples=48, data_source="d")
    assert all(torch.equal(m, state["model"][n]) for n, m in by_name(model, masters).items())
    assert all(torch.equal(masters.state[p]["exp_avg"], plain.state[q]["exp_avg"])
               for p, q in zip(model.parameters(), fp32.parameters(), strict=True))


def test_master_model_exports_fp32_masters():
    model = to_bf16(apply_lora(tiny_llama(0), LoraConfig(enabled=True, r=4)))
    optimizer = make_optimizer(model, OPTIM, master_weights=True)
    scheduler = make_scheduler(optimizer, OPTIM, STEPS)
    train_steps(model, optimizer, scheduler, batches(2))
    masters = by_name(model, optimizer)

    def rebuild():
        return apply_lora(tiny_llama(0), LoraConfig(enabled=True, r=4))

    fresh = master_model(model, optimizer, rebuild)
    loaded = dict(rebuild().named_parameters())
    for name, p in fresh.named_parameters():
        assert p.dtype == torch.float32
        if name in masters:
            assert torch.equal(p, masters[name]), name
        else:  # the frozen base exactly as loaded, not its bf16 rounding
            assert torch.equal(p, loaded[name]), name
            assert p.ndim < 2 or not torch.equal(p, p.bfloat16().float()), name  # (norms: 1)
    assert master_model(model, optimizer, rebuild, dist=_Rank1()) is None

    in_place = master_model(model, optimizer)
    assert in_place is model and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(p, masters[n]) for n, p in model.named_parameters() if n in masters)


class _Rank1:
    main = False


def test_to_bf16_casts_parameters_in_place_and_keeps_buffers():
    model = tiny_llama(0)
    params = list(model.parameters())
    to_bf16(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert all(b.dtype == torch.float32 for b in model.buffers())  # rotary frequencies


def test_master_weights_config():
    assert master_weights(TrainConfig()) is False
    assert master_weights(TrainConfig(bf16=True)) is False
    assert master_weights(TrainConfig(bf16=True, bf16_weights=True)) is True
    with pytest.raises(ConfigError, match=r"train\.bf16_weights.*train\.bf16=true"):
        master_weights(TrainConfig(bf16_weights=True))
    with pytest.raises(ConfigError, match=r"train\.strategy=fsdp2"):
        master_weights(TrainConfig(bf16=True, bf16_weights=True, strategy="fsdp2"))


@pytest.mark.parametrize("slow", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch, capsys, slow):
    from tether.config import ModelConfig
    from tether.precision import check_settings

    monkeypatch.setattr("tether.precision.slow_bf16", lambda device: slow)
    check_settings(ModelConfig(), TrainConfig(bf16=True), torch.device("cpu"))
    warned = "warning: train.bf16=true on a CPU without bf16 instructions" in \
        capsys.readouterr().out
    assert warned is slow
    check_settings(ModelConfig(), TrainConfig(bf16=False), torch.device("cpu"))
    assert capsys.readouterr().out == ""
