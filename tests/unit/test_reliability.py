"""What a run does when things go wrong around it: damaged checkpoints, Ctrl-C, outputs that
cannot be written, and the file modes of what it writes (tether.files, tether.checkpoint)."""

import functools
import os
import signal
import stat

import pytest
import torch
from conftest import write_jsonl
from report_example import example_data
from safetensors.torch import load_file

from tether.checkpoint import list_checkpoints, load_checkpoint
from tether.cli import main
from tether.report import write_report
from tether.trainers import sft as sft_trainer
from tether.trainers.common import Hooks


def _sft(tmp_path, sft_rows, *overrides):
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, sft_rows * 2)
    return ["sft", "model.name=tiny", f"data.train={data}", "optim.lr=3e-3",
            "train.batch_size=4", "train.micro_batch_size=2", "data.eval_fraction=0",
            "train.eval_every=0", "train.keep_checkpoints=10", *overrides]


def _weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, sft_rows, capsys):
    run = tmp_path / "run"
    args = _sft(tmp_path, sft_rows, "train.max_steps=4", "train.save_every=2",
                f"run_dir={run}")
    assert main(args) == 0
    whole = _weights(run)
    step2, step4 = list_checkpoints(run)
    with open(step4 / "state.pt", "r+b") as f:  # a copy cut short
        f.truncate(os.path.getsize(step4 / "state.pt") // 2)
    capsys.readouterr()
    assert main([*args, "resume=true"]) == 0
    out = capsys.readouterr().out
    assert "skipped a damaged checkpoint, step-00000004: state.pt has" in out
    assert f"resumed from {step2} at step 2" in out
    assert _same(whole, _weights(run))  # steps 3 and 4 again, exactly


def test_no_intact_checkpoint_is_exit_2_and_leaves_the_run_as_it_was(tmp_path, sft_rows,
                                                                      capsys):
    run = tmp_path / "run"
    args = _sft(tmp_path, sft_rows, "train.max_steps=2", "train.save_every=1",
                f"run_dir={run}")
    assert main(args) == 0
    for checkpoint in list_checkpoints(run):
        flipped = bytearray((checkpoint / "state.pt").read_bytes())
        flipped[len(flipped) // 2] ^= 0xFF  # one bit of rot: same size, wrong checksum
        (checkpoint / "state.pt").write_bytes(bytes(flipped))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([*args, "resume=true", "optim.lr=1e-2"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: no intact checkpoint to resume from" in err
    assert "step-00000002: state.pt does not match the checksum" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_disk_that_fills_during_a_checkpoint_is_exit_2_naming_it(tmp_path, sft_rows, capsys,
                                                                     monkeypatch):
    """torch.save reports a full disk as its own RuntimeError (an enforce failure); the run
    says which checkpoint could not be written, leaves no half-written one, and resumes from
    the last that was."""
    import errno

    from tether import checkpoint

    run = tmp_path / "run"
    args = _sft(tmp_path, sft_rows, "train.max_steps=4", "train.save_every=2",
                f"run_dir={run}")
    write, calls = checkpoint._HashingWriter.write, []

    def fill_on_the_second_checkpoint(self, data):
        calls.append(self)
        if len({id(w) for w in calls}) > 1 and self.size > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(checkpoint._HashingWriter, "write", fill_on_the_second_checkpoint)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write checkpoint {run}/checkpoints/step-00000004: No space left on " \
           "device (" in err and "GiB free" in err
    assert "Traceback" not in err and "enforce" not in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.setattr(checkpoint._HashingWriter, "write", write)
    assert main([*args, "resume=true"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_resume_that_fails_its_data_check_keeps_the_old_config(tmp_path, sft_rows, capsys):
    run = tmp_path / "run"
    args = _sft(tmp_path, sft_rows, "train.max_steps=2", "train.save_every=1",
                f"run_dir={run}")
    assert main(args) == 0
    config = (run / "config.yaml").read_text()
    write_jsonl(tmp_path / "train.jsonl", sft_rows)  # fewer examples than the checkpoint's
    assert main([*args, "resume=true", "optim.lr=1e-2"]) == 2
    assert "resuming would not continue the same data order" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == config


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tmp_path, sft_rows,
                                                                          capsys, monkeypatch,
                                                                          presses):
    whole_run, run = tmp_path / "whole", tmp_path / "run"
    args = _sft(tmp_path, sft_rows, "train.max_steps=5", "train.save_every=100")
    assert main([*args, f"run_dir={whole_run}"]) == 0

    def ctrl_c_in_step_3(step):
        if step == 3:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)

    # Through the CLI (its exit code and message are checked here), which calls
    # sft.train(cfg): the hooks are bound to that on the way.
    train = sft_trainer.train
    monkeypatch.setattr(sft_trainer, "train",
                        functools.partial(train, hooks=Hooks(step_started=ctrl_c_in_step_3)))
    capsys.readouterr()
    handler = signal.getsignal(signal.SIGINT)
    assert main([*args, f"run_dir={run}"]) == 130
    monkeypatch.setattr(sft_trainer, "train", train)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if presses == 2:  # stops at once: nothing saved, the step not finished
        assert list_checkpoints(run) == []
        assert "interrupted; rerun the same command with resume=true" in captured.err
        return
    (checkpoint,) = list_checkpoints(run)
    assert load_checkpoint(checkpoint)["step"] == 3
    assert "stopping after this step" in captured.out + captured.err
    assert (f"tether sft: interrupted: stopped after step 3, checkpoint {checkpoint}; rerun "
            f"the same command with resume=true to continue from it") in captured.err
    assert signal.getsignal(signal.SIGINT) is handler  # the loop's own is gone
    assert main([*args, f"run_dir={run}", "resume=true"]) == 0
    assert _same(_weights(whole_run), _weights(run))


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_have_the_modes_the_umask_asks_for(tmp_path, sft_rows, mask):
    previous = os.umask(mask)
    try:
        run = tmp_path / "run"
        assert main(_sft(tmp_path, sft_rows, "train.max_steps=1", f"run_dir={run}")) == 0
        report = write_report(example_data(), tmp_path / "report.html")
    finally:
        os.umask(previous)
    files = [run / "config.yaml", run / "metrics.jsonl", run / "final" / "model.safetensors",
             report, next((run / "checkpoints").iterdir()) / "state.pt"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    for path in (run / "final", next((run / "checkpoints").iterdir())):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask, path


def test_an_output_that_cannot_be_written_fails_first_naming_it(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}])
    sample = ["sample", "policy=tiny", f"prompts={prompts}", "k=2", "max_new_tokens=4"]
    assert main([*sample, f"output={tmp_path}"]) == 2  # an existing directory
    captured = capsys.readouterr()
    assert f"output {tmp_path} is a directory" in captured.err
    assert "; using " not in captured.out and "Traceback" not in captured.err  # before any work
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*sample, f"output={blocker}/out.jsonl"]) == 2  # its directory is a file
    assert f"cannot write output {blocker}/out.jsonl" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "prompts.jsonl"]


def test_a_run_that_stops_on_its_data_leaves_no_run_directory(tmp_path, sft_rows, capsys):
    run = tmp_path / "runs" / "sft"
    assert main(_sft(tmp_path, sft_rows[:1], "train.batch_size=8", f"run_dir={run}")) == 2
    assert "fewer than train.batch_size=8" in capsys.readouterr().err
    assert not run.exists() and not run.parent.exists()


def test_a_run_dir_that_cannot_be_written_fails_first_naming_it(tmp_path, sft_rows, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(_sft(tmp_path, sft_rows, f"run_dir={blocker}/run")) == 2
    err = capsys.readouterr().err
    assert f"cannot write run_dir {blocker}/run: {blocker} is not a writable directory" in err
    assert "Traceback" not in err and blocker.read_text() == ""
    labels = ["label", "simulate", f"candidates={blocker}", f"output={blocker}/labels.jsonl"]
    assert main(labels) == 2  # checked before the candidates are read
    assert f"cannot write output {blocker}/labels.jsonl" in capsys.readouterr().err
