"""Pinned first losses: each trainer's first two steps on the tiny model, against numbers
recorded when they were known good (as torchtune's recipe tests do).

The equivalence tests (batch split, padding, processes, TRL) compare tether with itself or with
another implementation: a change that moves both sides at once passes them. These catch it. A
deliberate change to a loss, an initialisation or the data order moves these numbers: check
the new ones are right by other means, then update them here, saying why in the commit.
"""

import pytest
from conftest import ranking_rows, write_jsonl

from tether.config import DPOConfig, PPOConfig, RMConfig, SFTConfig, load_config
from tether.rundir import read_metrics
from tether.trainers import dpo, ppo, rm, sft

# float32 on CPU: the same numbers to ~1e-6 across machines; the tolerance leaves room for
# different vector instructions, not for a changed computation.
TOLERANCE = 1e-4

SFT_ROWS = [{"prompt": f"Tell me about the {s}.", "completion": f"The {s} was {v}."}
            for s in ("plot", "acting", "score", "ending") for v in ("lovely", "dull", "fine")]
PROMPTS = [{"prompt": f"Write something about item {i}."} for i in range(8)]


def share_of_e(texts: list[str]) -> list[float]:
    """Toy gold reward: how much of the response is the letter 'e'."""
    return [t.count("e") / max(len(t), 1) for t in texts]


def _first_two(run_dir, keys):
    rows = [m for m in read_metrics(run_dir / "metrics.jsonl") if keys[0] in m][:2]
    return {k: [round(m[k], 6) for m in rows] for k in keys}


def _run(tmp_path, kind):
    common = [f"run_dir={tmp_path / 'run'}", "model.name=tiny", "train.max_steps=2",
              "train.eval_every=0", "optim.lr=1e-3", "optim.warmup_steps=0"]
    if kind == "sft":
        data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
        sft.train(load_config(SFTConfig, None, [*common, f"data.train={data}",
                                                "data.eval_fraction=0", "train.batch_size=4",
                                                "train.micro_batch_size=2"]))
        return _first_two(tmp_path / "run", ["loss/train", "optim/grad_norm"])
    if kind in ("rm", "dpo"):
        data = write_jsonl(tmp_path / "prefs.jsonl", ranking_rows(8, k=3))
        config = RMConfig if kind == "rm" else DPOConfig
        trainer = rm if kind == "rm" else dpo
        trainer.train(load_config(config, None, [*common, f"data.train={data}",
                                                 "data.eval_fraction=0", "train.batch_size=4",
                                                 "train.micro_batch_size=2"]))
        return _first_two(tmp_path / "run", ["loss/train", "optim/grad_norm"])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    ppo.train(load_config(PPOConfig, None, [
        *common, f"algo={kind}", f"rollout.prompts={prompts}",
        "reward.gold=test_pinned_losses:share_of_e", "rollout.batch_size=4",
        f"rollout.group_size={1 if kind == 'ppo' else 2}", "rollout.max_new_tokens=6",
        "ppo.minibatch_size=4", "ppo.micro_batch_size=2", "reward.penalize_no_eos=false"]))
    keys = ["loss/policy", "kl/seq", "reward/gold", "optim/grad_norm"]
    return _first_two(tmp_path / "run", keys + (["loss/value"] if kind == "ppo" else []))


PINNED = {
    "sft": {"loss/train": [6.345053, 5.752712], "optim/grad_norm": [9.54007, 5.885661]},
    "rm": {"loss/train": [0.724437, 0.332906], "optim/grad_norm": [6.414904, 4.325436]},
    "dpo": {"loss/train": [0.693147, 0.536596], "optim/grad_norm": [3.427895, 1.745213]},
    "ppo": {"loss/policy": [-0.112227, -0.111442], "kl/seq": [0.0, -0.41919],
            "reward/gold": [0.075, 0.103704], "optim/grad_norm": [1.905126, 1.181092],
            "loss/value": [0.002442, 0.001291]},
    "grpo": {"loss/policy": [-0.079954, -0.095059], "kl/seq": [0.0, -0.290485],
             "reward/gold": [0.070773, 0.074575], "optim/grad_norm": [1.008492, 0.956706]},
}


@pytest.mark.parametrize("kind", list(PINNED))
def test_first_losses_are_the_pinned_ones(tmp_path, kind):
    got = _run(tmp_path, kind)
    for key, values in PINNED[kind].items():
        assert got[key] == pytest.approx(values, rel=TOLERANCE, abs=TOLERANCE), key
