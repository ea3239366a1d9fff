"""Device and backend choice: the GPU of the process's LOCAL_RANK with NCCL when CUDA is
there, the CPU with gloo otherwise. CUDA is faked here (this machine has none): the checks are
of the choice, not of CUDA itself (bench/gpu_check.py runs the trainers on a real GPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tether import distributed
from tether.device import autocast, pick_device, to_device
from tether.errors import ConfigError


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_without_cuda_auto_is_the_cpu_and_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device=cuda, but this torch sees no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="one of auto, cuda, cpu"):
        pick_device("gpu")


def test_with_cuda_each_process_takes_the_gpu_of_its_local_rank(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("auto") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda", 1)
    assert pick_device("cpu") == torch.device("cpu")  # asked for: the GPU stays unused
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="at most one process per GPU"):
        pick_device("auto")


def test_under_torchrun_gpus_talk_over_nccl_and_cpus_over_gloo(two_gpus, monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, device_id=None: calls.append((backend, device_id)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set", device)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")

    d = distributed.setup("fsdp2")
    gpu = torch.device("cuda", 1)
    assert (d.rank, d.world, d.strategy, d.device) == (1, 2, "fsdp2", gpu)
    assert calls == [("set", gpu), ("nccl", gpu)]  # the GPU is set before the group forms
    assert d.processes == "2 processes, fsdp2, on cuda"

    calls.clear()
    d = distributed.setup("ddp", device="cpu")
    assert d.device == torch.device("cpu")
    assert calls == [("gloo", None)]


def test_one_process_joins_no_group_and_says_where_it_runs(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup("ddp", device="cpu")
    assert d.world == 1 and d.processes == "1 process on cpu"
    assert d.sum(1.0, 2.0) == [1.0, 2.0]


def test_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "groups": [1, 2]}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["groups"] == [1, 2] and moved["input_ids"].device.type == "cpu"


def test_autocast_runs_on_the_devices_type():
    with autocast(True, torch.device("cpu")):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16
    with autocast(False, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tether", "sft", "model.name=tiny", "train.device=cuda",
         f"run_dir={tmp_path / 'run'}", "data.train=x.jsonl"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "device=cuda, but this torch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_gpu_check_says_it_needs_a_gpu():
    result = subprocess.run([sys.executable, "-m", "bench", "gpu-check"], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr
