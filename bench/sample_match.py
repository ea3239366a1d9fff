"""Whether a generation backend samples the policy's distribution: one against hf, paired.

Both backends sample the same prompts of the sentiment task with the same seeds (--prompts x
--n samples of up to --max-new-tokens, for each of --seeds), so responses pair up by prompt and
seed. Printed per backend: mean gold, mean length and EOS rate with 95 % intervals over the
(prompt, seed) means. Printed for the pair: the paired differences with their intervals, and
how the frequencies of the most common response tokens compare (correlation, total
variation), and the share of responses identical to hf's. A backend with hf's numerics (static
in fp32, --no-bf16) should draw nearly the same responses; one with other numerics (static in
bf16) passes when the differences are within their intervals.

    python -m bench sample-match --backend static      # 48 prompts x 4 x 40 tokens, 3 seeds
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from bench import machine, save_results
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.rollout.backends import make_generator
from tether.rollout.base import SamplingParams
from tether.tasks.gold import load_gold_scorer
from tether.tasks.sentiment import make_prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="static", help="compared with hf")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="the compared backend in bf16 (hf stays fp32)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--top-tokens", type=int, default=200)


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The mean and the half-width of its 95 % normal interval."""
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def _sample(generator, tokenizer, gold, prompts, args) -> dict:
    """Per (prompt, seed): mean gold, length and EOS rate of its n samples; token counts."""
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    rows = {"gold": [], "length": [], "eos": []}
    counts: collections.Counter = collections.Counter()
    responses = []
    for seed in range(args.seeds):
        for samples in generator.generate(prompts, args.n, params, seed=seed):
            responses += [g.response_ids for g in samples]
            texts = [tokenizer.decode(g.response_ids, skip_special_tokens=True)
                     for g in samples]
            rows["gold"].append(np.mean(gold(texts)))
            rows["length"].append(np.mean([len(g.response_ids) for g in samples]))
            rows["eos"].append(np.mean([g.finished for g in samples]))
            for g in samples:
                counts.update(g.response_ids)
    return {k: np.array(v) for k, v in rows.items()} | {"counts": counts,
                                                         "responses": responses}


def run(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model)
    gold = load_gold_scorer("sentiment")
    prompts = [tokenizer(t, add_special_tokens=False).input_ids
               for t in make_prompts(args.prompts, seed=11)]
    sides = {"hf": _sample(make_generator("hf", model, tokenizer), tokenizer, gold, prompts,
                           args),
             args.backend: _sample(make_generator(args.backend, model, tokenizer,
                                                  bf16=args.bf16), tokenizer, gold, prompts,
                                   args)}
    figures: dict = {"model": args.model, "backend": args.backend, "bf16": args.bf16,
                     "prompts": args.prompts, "n": args.n, "seeds": args.seeds,
                     "max_new_tokens": args.max_new_tokens}
    for name, side in sides.items():
        figures[name] = {k: _interval(side[k]) for k in ("gold", "length", "eos")}
        print(f"{name:7s} " + "  ".join(f"{k} {m:.3f} +- {h:.3f}"
                                       for k, (m, h) in figures[name].items()))
    ours = sides[args.backend]
    figures["difference"] = {k: _interval(ours[k] - sides["hf"][k])
                             for k in ("gold", "length", "eos")}
    print(f"{args.backend} - hf, paired: " + "  ".join(
        f"{k} {m:+.3f} +- {h:.3f}" for k, (m, h) in figures["difference"].items()))
    same = np.mean([x == y for x, y in zip(sides["hf"]["responses"], ours["responses"],
                                           strict=True)])
    figures["identical_share"] = float(same)
    print(f"responses identical to hf's (same prompt, seed and sample): {same:.3f}")
    a, b = sides["hf"]["counts"], ours["counts"]
    top = [t for t, _ in (a + b).most_common(args.top_tokens)]
    fa, fb = (np.array([c[t] for t in top], dtype=float) for c in (a, b))
    figures["top_tokens"] = {"correlation": float(np.corrcoef(fa, fb)[0, 1]),
                             "total_variation": float(0.5 * np.abs(fa / fa.sum()
                                                                   - fb / fb.sum()).sum())}
    print(f"the {args.top_tokens} most common tokens: frequency correlation "
          f"{figures['top_tokens']['correlation']:.4f}, total variation "
          f"{figures['top_tokens']['total_variation']:.4f}")
    save_results(f"sample_match_{args.backend}", {**figures, "machine": machine()})
