"""train.report_to: TensorBoard and W&B (offline) receive metrics.jsonl's metrics, under the
same names and steps, and a resumed run continues the same curves without repeating a step."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ranking_rows, write_jsonl

from tether.cli import main
from tether.config import SFTConfig, load_config
from tether.errors import ConfigError
from tether.rundir import read_metrics
from tether.tracking import flat_config, wandb_mode
from tether.trainers.common import Hooks
from tether.trainers.sft import train


class Crash(Exception):
    pass


def _cfg(tmp_path, data, *overrides):
    return load_config(SFTConfig, None, [
        f"run_dir={tmp_path / 'run'}", "model.name=tiny", f"data.train={data}",
        "data.eval_fraction=0.125", "optim.lr=3e-3", "train.batch_size=4",
        "train.micro_batch_size=4", "train.max_steps=6", "train.eval_every=3",
        "train.save_every=2", *overrides])


def _crash_at(step: int) -> Hooks:
    """A run that dies after logging `step` (its newest checkpoint is an earlier one)."""
    def stepped(done, metrics):
        if done == step:
            raise Crash
    return Hooks(stepped=stepped)


def _jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run / "metrics.jsonl"):
        for key, value in row.items():
            if key not in ("step", "time"):
                out.setdefault(key, []).append((row["step"], float(value)))
    return out


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={
        accumulator.SCALARS: 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _assert_same(found, expected):
    assert sorted(found) == sorted(expected)
    for key, points in expected.items():
        assert [s for s, _ in found[key]] == [s for s, _ in points], key
        # TensorBoard keeps float32
        assert [v for _, v in found[key]] == pytest.approx([v for _, v in points], rel=1e-6)


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path, sft_rows):
    pytest.importorskip("tensorboard")
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    train(_cfg(tmp_path, data, "train.report_to=[tensorboard]"), progress_bar=False)
    run = tmp_path / "run"
    expected = _jsonl_scalars(run)
    assert {"loss/train", "optim/lr", "eval/loss"} <= set(expected)
    _assert_same(_tensorboard_scalars(run), expected)
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    hparams = b"".join(events.PluginTagToContent("hparams").values())
    assert b"optim.lr" in hparams and b"train.report_to" in hparams  # the config, flattened
    assert "config/text_summary" in events.PluginTagToContent("text")  # and as YAML


def test_tensorboard_resumed_run_repeats_no_step(tmp_path, sft_rows):
    pytest.importorskip("tensorboard")
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    cfg = _cfg(tmp_path, data, "train.report_to=[tensorboard]")
    with pytest.raises(Crash):
        train(cfg, progress_bar=False, hooks=_crash_at(5))  # checkpoint at 4, 5 runs again
    train(_cfg(tmp_path, data, "train.report_to=[tensorboard]", "resume=true"),
          progress_bar=False)
    run = tmp_path / "run"
    expected = _jsonl_scalars(run)
    assert [s for s, _ in expected["loss/train"]] == [1, 2, 3, 4, 5, 6]
    _assert_same(_tensorboard_scalars(run), expected)


def _wandb_records(run_file: Path) -> list:
    """The records of an offline W&B run file: LevelDB-log framed protobuf records (a 7-byte
    header, then 32 KiB blocks of records, each with a 7-byte header of its own)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero-filled padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_history(run_file: Path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): item.value_json
             for item in record.history.item} for record in _wandb_records(run_file)
            if record.WhichOneof("record_type") == "history"]


def _wandb_config(run_file: Path) -> dict:
    """The config the run started with (its "run" record's)."""
    return {item.key: json.loads(item.value_json) for record in _wandb_records(run_file)
            if record.WhichOneof("record_type") == "run" for item in record.run.config.update}


def _wandb_steps(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every offline run file of the run directory, in order, as W&B would merge them."""
    out: dict[str, list[tuple[int, float]]] = {}
    for run_file in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for row in _wandb_history(run_file):
            step = int(row.pop("_step"))
            for key, value in row.items():
                if not key.startswith("_"):
                    out.setdefault(key, []).append((step, float(value)))
    return out


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline because there is no API key
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


def _crash_and_resume(tmp_path, sft_rows, tracker: str) -> tuple[Path, str]:
    """A run reporting to `tracker` that dies after logging step 5 (its newest checkpoint is
    step 4) and is resumed to the end; its directory and the tracker's run id from before
    the crash."""
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    with pytest.raises(Crash):
        train(_cfg(tmp_path, data, f"train.report_to=[{tracker}]"), progress_bar=False,
              hooks=_crash_at(5))
    run = tmp_path / "run"
    run_id = (run / f"{tracker}_run_id").read_text().strip()
    train(_cfg(tmp_path, data, f"train.report_to=[{tracker}]", "resume=true"),
          progress_bar=False)
    return run, run_id


def _assert_resumed_once(found, expected):
    """A tracker's history across a crash at step 5 and a resume from step 4 equals
    metrics.jsonl: step 5, logged before the crash, is not sent again (neither W&B nor MLflow
    would replace it); the timings of that step are the only values that differ between the
    two runs of it."""
    assert sorted(found) == sorted(expected)
    for key, points in expected.items():
        assert [s for s, _ in found[key]] == [s for s, _ in points], key
        if not key.startswith("perf/"):
            assert [v for _, v in found[key]] == pytest.approx([v for _, v in points]), key


def test_wandb_offline_history_equals_metrics_jsonl_and_resumes_the_same_run(
        tmp_path, sft_rows, wandb_offline):
    run, run_id = _crash_and_resume(tmp_path, sft_rows, "wandb")
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    found, expected = _wandb_steps(run), _jsonl_scalars(run)
    _assert_resumed_once(found, expected)
    config = _wandb_config(files[0])  # the hyperparameters: the run's config
    assert config["train"]["report_to"] == ["wandb"] and config["train"]["max_steps"] == 6


def test_mlflow_history_equals_metrics_jsonl_and_resumes_the_same_run(tmp_path, sft_rows,
                                                                      monkeypatch):
    """In RUN_DIR/mlflow.db (SQLite, no server), read back through MLflow's own client."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    run, run_id = _crash_and_resume(tmp_path, sft_rows, "mlflow")
    # The artifacts (config.yaml) stay in the run directory, not ./mlruns where it started.
    assert not any(started_in.iterdir())
    assert list((run / "mlruns").rglob("config.yaml"))
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tether").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the resume reopened the same run
    assert runs[0].info.status == "FINISHED"
    expected = _jsonl_scalars(run)
    found = {key: [(m.step, m.value) for m in
                   sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
             for key in runs[0].data.metrics}
    _assert_resumed_once(found, expected)
    params = runs[0].data.params
    assert params["train.max_steps"] == "6" and params["train.report_to"] == "['mlflow']"


def test_a_missing_tracker_package_is_exit_2_before_any_write(tmp_path, sft_rows,
                                                              monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    code = main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "train.max_steps=2", "train.report_to=[wandb]"])
    assert code == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_report_to_values_are_checked_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        load_config(SFTConfig, None, ["data.train=x.jsonl", "train.report_to=[tensorbord]"])
    for stage in ("sft", "rm", "dpo", "ppo"):  # every stage's train section, in the pipeline
        from tether.config import PipelineConfig
        cfg = load_config(PipelineConfig, None, [f"{stage}.train.report_to=[wandb]"])
        assert getattr(cfg, stage).train.report_to == ["wandb"]


def test_flat_config_has_dotted_scalar_values():
    cfg = load_config(SFTConfig, None, ["data.train=x.jsonl", "train.report_to=[tensorboard]"])
    flat = flat_config(cfg)
    assert flat["optim.lr"] == cfg.optim.lr and flat["data.train"] == "x.jsonl"
    assert flat["train.report_to"] == "['tensorboard']"
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


@pytest.mark.parametrize("stage", ["rm", "dpo", "grpo"])
def test_every_stage_reports_to_tensorboard(tmp_path, stage):
    pytest.importorskip("tensorboard")
    run = tmp_path / stage
    common = ["model.name=tiny", f"run_dir={run}", "train.max_steps=2",
              "train.report_to=[tensorboard]"]
    if stage == "grpo":
        prompts = write_jsonl(tmp_path / "prompts.jsonl",
                              [{"prompt": f"Write something about item {i}."} for i in range(8)])
        argv = ["ppo", "algo=grpo", f"rollout.prompts={prompts}", "rollout.batch_size=2",
                "rollout.group_size=2", "rollout.max_new_tokens=4", "ppo.minibatch_size=4",
                "ppo.micro_batch_size=4", "eval_num_prompts=2"]
    else:
        data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24))
        argv = [stage, f"data.train={data}", "train.batch_size=4", "train.micro_batch_size=4",
                "data.eval_fraction=0.25"]
    assert main([*argv, *common]) == 0
    _assert_same(_tensorboard_scalars(run), _jsonl_scalars(run))


def test_wandb_is_offline_without_an_api_key(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password KEY\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # W&B reads WANDB_MODE itself


@pytest.mark.distributed
def test_under_torchrun_only_rank_0_reports(tmp_path, sft_rows):
    pytest.importorskip("tensorboard")
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=2", "-m", "tether", "sft", "model.name=tiny",
                    f"data.train={data}", f"run_dir={run}", "train.max_steps=2",
                    "train.batch_size=4", "train.micro_batch_size=2", "train.device=cpu",
                    "train.report_to=[tensorboard]"],
                   check=True, capture_output=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    _assert_same(_tensorboard_scalars(run), _jsonl_scalars(run))
