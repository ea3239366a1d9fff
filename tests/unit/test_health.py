"""Rollout health checks (tether.eval.health): each provoked by hand-made numbers, quiet on
healthy ones; and the PPO loop prints a warning once and logs its flag every iteration."""

from conftest import write_jsonl

from tether.cli import main
from tether.eval.health import (
    KINDS,
    RolloutWatch,
    collapse,
    constant_reward,
    health_flags,
    no_eos_penalty,
    rm_prefers_empty,
    rollout_health,
)
from tether.models.reward import RewardModel
from tether.rundir import read_metrics

HEALTHY = {"lengths": [12, 9, 15, 7], "finished": [True, True, False, True],
           "scores": [0.1, 0.5, -1.0, 0.3]}


def test_healthy_rollout_is_quiet():
    assert rollout_health(HEALTHY["lengths"], HEALTHY["finished"], HEALTHY["scores"],
                          True, -1.0, first_mean_length=11.0) == {}
    assert health_flags({}) == {f"health/{k}": 0.0 for k in KINDS}


def test_rollout_watch_compares_with_the_first_rollout_and_warns_once(capsys):
    watch = RolloutWatch(has_reward_model=True)
    assert watch.wants_empty_scores  # the first rollout measures the reward model on empties
    flags = watch.check(1, HEALTHY["lengths"], HEALTHY["finished"], HEALTHY["scores"], True,
                        -1.0, empty_wins=0.1)
    assert flags == {f"health/{k}": 0.0 for k in KINDS} and not watch.wants_empty_scores
    assert capsys.readouterr().out == ""
    short = [1, 2, 1, 2]  # under a quarter of the first rollout's mean length (10.75)
    for iteration in (2, 3):
        flags = watch.check(iteration, short, [True] * 4, HEALTHY["scores"], True, -1.0)
        assert flags["health/collapse"] == 1.0 and flags["health/rm_prefers_empty"] == 0.0
    out = capsys.readouterr().out
    assert out.count("warning (iteration 2):") == 1 and "iteration 3" not in out
    assert RolloutWatch(has_reward_model=False).wants_empty_scores is False


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


def test_rm_prefers_empty():
    assert "outscores 75% of the rollout's responses" in rm_prefers_empty(0.75)
    assert rm_prefers_empty(0.5) is None
    assert rm_prefers_empty(None) is None and rm_prefers_empty(float("nan")) is None


def test_rollout_health_names_each_kind():
    warnings = rollout_health([0, 0, 0, 1], [False] * 4, [-1.0] * 4, True, -1.0, 10.0, 0.9)
    assert list(warnings) == list(KINDS)
    assert health_flags(warnings) == {f"health/{k}": 1.0 for k in KINDS}
    assert list(rollout_health([0, 0, 0, 1], [False] * 4, [-1.0] * 4, False, -1.0)) == \
        ["collapse", "constant_reward"]


def share_of_e(texts: list[str]) -> list[float]:
    """Toy gold reward: how much of the response is the letter 'e'."""
    return [t.count("e") / max(len(t), 1) for t in texts]


def _run(tmp_path, capsys, *overrides: str):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Write something about item {i}."} for i in range(16)])
    run = tmp_path / f"run_{len(list(tmp_path.glob('run_*')))}"
    assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}", f"run_dir={run}",
                 "reward.gold=test_health:share_of_e", *overrides,
                 "rollout.batch_size=8", "rollout.max_new_tokens=8", "ppo.minibatch_size=8",
                 "ppo.micro_batch_size=8", "train.max_steps=2", "train.save_every=0"]) == 0
    return capsys.readouterr().out, read_metrics(run / "metrics.jsonl")


def test_ppo_warns_once_when_the_no_eos_penalty_drives_the_reward(tmp_path, capsys):
    # The tiny model rarely ends within 8 tokens: forced on, the penalty drives the reward.
    out, metrics = _run(tmp_path, capsys, "reward.no_eos_min_finished=0")
    assert out.count("no-EOS penalty:") == 1, out
    steps = [m for m in metrics if "health/no_eos_penalty" in m]
    assert len(steps) == 2 and all(m["health/no_eos_penalty"] == 1 for m in steps)

    # By default the starting policy's EOS rate switches it off, and the run says why.
    out, metrics = _run(tmp_path, capsys)
    assert out.count("the no-EOS penalty is off for this run") == 1, out
    assert "no-EOS penalty:" not in out
    assert all(m["health/no_eos_penalty"] == 0 for m in metrics if "health/no_eos_penalty" in m)

    out, metrics = _run(tmp_path, capsys, "reward.penalize_no_eos=false")
    assert "warning" not in out, out  # gold varies and nothing collapses: no warning at all
    steps = [m for m in metrics if "health/no_eos_penalty" in m]
    assert len(steps) == 2 and all(m[f"health/{k}"] == 0 for m in steps for k in KINDS)


def test_ppo_warns_when_the_reward_model_prefers_empty_responses(tmp_path, capsys,
                                                                 monkeypatch):
    RewardModel.build("tiny").save(tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Write something about item {i}."} for i in range(16)])

    def run(sign: float) -> tuple[str, list]:
        # a stand-in reward model: +-(characters), so the empty response wins or loses all
        monkeypatch.setattr(RewardModel, "score", lambda self, prompts, texts, **kw:
                            [sign * len(t) for t in texts])
        run_dir = tmp_path / f"run{sign:+.0f}"
        assert main(["ppo", "model.name=tiny", f"rollout.prompts={prompts}",
                     f"reward.model={tmp_path / 'rm'}", f"run_dir={run_dir}",
                     "rollout.batch_size=8",
                     "rollout.max_new_tokens=8", "ppo.minibatch_size=8",
                     "ppo.micro_batch_size=8", "train.max_steps=2", "train.save_every=0"]) == 0
        steps = [m for m in read_metrics(run_dir / "metrics.jsonl")
                 if "health/rm_prefers_empty" in m]
        assert len(steps) == 2
        return capsys.readouterr().out, steps

    out, steps = run(-1.0)
    assert out.count("the reward model prefers empty responses") == 1, out
    assert all(m["health/rm_prefers_empty"] == 1 for m in steps)
    out, steps = run(+1.0)
    assert "prefers empty" not in out and all(m["health/rm_prefers_empty"] == 0 for m in steps)
