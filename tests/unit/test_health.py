"""Rollout health checks (tether.eval.health): each provoked by hand-made numbers, quiet on
healthy ones; and the PPO loop prints a warning once and logs its flag every iteration."""

from conftest import write_jsonl

from tether.cli import main
from tether.eval.health import (
    KINDS,
    collapse,
    constant_reward,
    health_flags,
    no_eos_penalty,
    rollout_health,
)
from tether.rundir import read_metrics

HEALTHY = {"lengths": [12, 9, 15, 7], "finished": [True, True, False, True],
           "scores": [0.1, 0.5, -1.0, 0.3]}


def test_healthy_rollout_is_quiet():
    assert rollout_health(HEALTHY["lengths"], HEALTHY["finished"], HEALTHY["scores"],
                          True, -1.0, first_mean_length=11.0) == {}
    assert health_flags({}) == {f"health/{k}": 0.0 for k in KINDS}


def test_collapse():
    assert collapse([12, 9, 15, 7]) is None
    assert collapse([12, 9, 15, 7], first_mean_length=14.0) is None
    assert "collapse" in collapse([1, 2, 1, 1])  # below the 2-token floor
    assert "down from 40.0" in collapse([6, 8, 7, 9], first_mean_length=40.0)  # < 25% of first
    assert "75% of responses are empty" in collapse([0, 0, 0, 30])  # mean 7.5, but empty
    assert collapse([0, 0, 10, 10]) is None  # half empty is not more than half


def test_constant_reward():
    assert constant_reward([0.1, 0.5, -1.0]) is None
    assert "constant reward" in constant_reward([0.0] * 8)
    assert "constant reward" in constant_reward([0.7, 0.7 + 1e-8, 0.7])
    assert constant_reward([0.3]) is None  # one response has no spread to speak of


def test_no_eos_penalty():
    finished = [False, False, False, True]
    text = no_eos_penalty(finished, True, -1.0)
    assert "75%" in text and "reward.no_eos_score=-1" in text
    assert "rollout.max_new_tokens" in text and "reward.penalize_no_eos=false" in text
    assert no_eos_penalty(finished, False, -1.0) is None  # penalty off
    assert no_eos_penalty([False, False, True, True], True, -1.0) is None  # half is not most


def test_rollout_health_names_each_kind():
    warnings = rollout_health([0, 0, 0, 1], [False] * 4, [-1.0] * 4, True, -1.0, 10.0)
    assert list(warnings) == list(KINDS)
    assert health_flags(warnings) == {f"health/{k}": 1.0 for k in KINDS}
    assert list(rollout_health([0, 0, 0, 1], [False] * 4, [-1.0] * 4, False, -1.0)) == \
        ["collapse", "constant_reward"]


def share_of_e(texts: list[str]) -> list[float]:
    """Toy gold reward: how much of the response is the letter 'e'."""
    return [t.count("e") / max(len(t), 1) for t in texts]


def _run(tmp_path, capsys, penalize: str):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Write something about item {i}."} for i in range(16)])
    run = tmp_path / f"run_{penalize}"
    assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", f"run_dir={run}",
                 "reward.gold=test_health:share_of_e", f"reward.penalize_no_eos={penalize}",
                 "rollout.batch_size=8", "rollout.max_new_tokens=8", "ppo.minibatch_size=8",
                 "ppo.micro_batch_size=8", "train.max_steps=2", "train.save_every=0"]) == 0
    return capsys.readouterr().out, read_metrics(run / "metrics.jsonl")


def test_ppo_warns_once_when_the_no_eos_penalty_drives_the_reward(tmp_path, capsys):
    out, metrics = _run(tmp_path, capsys, "true")
    assert out.count("no-EOS penalty:") == 1, out
    steps = [m for m in metrics if "health/no_eos_penalty" in m]
    assert len(steps) == 2 and all(m["health/no_eos_penalty"] == 1 for m in steps)

    out, metrics = _run(tmp_path, capsys, "false")
    assert "warning" not in out, out  # gold varies and nothing collapses: no warning at all
    steps = [m for m in metrics if "health/no_eos_penalty" in m]
    assert len(steps) == 2 and all(m[f"health/{k}"] == 0 for m in steps for k in KINDS)
