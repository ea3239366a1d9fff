"""bf16 autocast against fp32: how much precision the switch costs, on the SFT objective.

The same model, the same batch, two ways: fp32 throughout, and bf16 autocast (matmuls in bf16,
weights, gradients and optimizer state in fp32, as `train.bf16=true` does). Printed: the loss's
relative difference, the cosine similarity and relative norm difference of the gradients, and
after --steps AdamW steps from the same start, the gap between the two loss curves and the
relative distance between the weights (set against how far the fp32 weights moved).
"""

from __future__ import annotations

import argparse

import torch

from bench import machine, save_results
from tether.config import OptimConfig
from tether.data.collate import collate
from tether.data.tokenize import Encoded
from tether.device import autocast
from tether.losses.sft import masked_nll
from tether.models.loading import load_causal_lm
from tether.models.logprobs import forward_logits, token_logprobs
from tether.optim import make_optimizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="tiny or smollm2-135m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)


def sft_loss(model: torch.nn.Module, batch: dict, bf16: bool) -> torch.Tensor:
    with autocast(bf16):
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
    return masked_nll(token_logprobs(logits, batch["input_ids"]), batch["loss_mask"])


def compare(model_name: str, steps: int, batch_size: int, seq_len: int) -> dict[str, float]:
    """Figures of bf16 autocast against fp32 from the same weights on the same batch."""
    models = {bf16: load_causal_lm(model_name, seed=0) for bf16 in (False, True)}
    vocab = models[False].config.vocab_size
    g = torch.Generator().manual_seed(0)
    examples = [Encoded(torch.randint(3, vocab, (seq_len,), generator=g).tolist(),
                        [0] * (seq_len // 4) + [1] * (seq_len - seq_len // 4))
                for _ in range(batch_size)]
    batch = collate(examples, 0)
    start = {k: v.clone() for k, v in models[False].state_dict().items()}
    losses, grads = {}, {}
    for bf16, model in models.items():
        model.train()
        loss = sft_loss(model, batch, bf16)
        loss.backward()
        losses[bf16] = loss.item()
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        model.zero_grad()
    cos = torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0).item()
    curves = {}
    for bf16, model in models.items():
        optimizer = make_optimizer(model, OptimConfig(lr=1e-4))
        curves[bf16] = []
        for _ in range(steps):
            loss = sft_loss(model, batch, bf16)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curves[bf16].append(loss.item())
    w32, w16 = (torch.cat([p.detach().flatten() for p in models[b].parameters()])
                for b in (False, True))
    moved = (w32 - torch.cat([start[n].flatten() for n, _ in
                              models[False].named_parameters()])).norm().item()
    return {
        "loss_fp32": losses[False], "loss_bf16": losses[True],
        "loss_rel_diff": abs(losses[True] - losses[False]) / abs(losses[False]),
        "grad_cosine": cos,
        "grad_norm_rel_diff": abs(grads[True].norm().item() - grads[False].norm().item())
        / grads[False].norm().item(),
        "curve_max_abs_gap": max(abs(a - b) for a, b in zip(curves[False], curves[True],
                                                             strict=True)),
        "final_loss_fp32": curves[False][-1], "final_loss_bf16": curves[True][-1],
        "weights_gap_over_movement": (w16 - w32).norm().item() / moved,
    }


def run(args: argparse.Namespace) -> None:
    figures = compare(args.model, args.steps, args.batch, args.seq_len)
    print(f"{args.model}, batch {args.batch} x {args.seq_len} tokens, {args.steps} AdamW steps "
          f"at lr 1e-4:")
    for key, value in figures.items():
        print(f"  {key:28s} {value:.6g}")
    save_results(f"precision-{args.model}", {**figures, "machine": machine()})
