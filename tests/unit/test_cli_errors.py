"""The command line: user mistakes end with one line on stderr and exit code 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tether import cli
from tether.config import SFTConfig, field_docs, load_config, to_dict
from tether.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def run_main(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tether sft: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in out + err


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: t.jsonl\n"
                    f"optim:\n  lr: 1e-4\n  lrr: 3\n")
    return path


def test_unknown_key_with_suggestion_from_file(capsys, config_file):
    code, out, err = run_main(capsys, ["sft", "--config", str(config_file)])
    assert_one_line_error(code, out, err, f"{config_file}:6:", "unknown key 'optim.lrr'",
                          "did you mean 'optim.lr'")


@pytest.mark.parametrize("override, needles", [
    ("optim.lrr=1", ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    ("model.lora.rank=4", ["unknown key 'model.lora.rank'", "did you mean 'model.lora.r'"]),
    ("bogus=1", ["unknown key 'bogus'"]),
    ("optim.lr=fast", ["optim.lr must be a number", "'fast'"]),
    ("train.batch_size=2.5", ["train.batch_size must be an integer"]),
    ("train.bf16=1", ["train.bf16 must be", "got 1"]),
    ("optim.schedule=cosin", ["optim.schedule must be one of", "did you mean 'cosine'"]),
    ("train.batch_size=0", ["train.batch_size must be >= 1"]),
    ("optim.lr", ["'optim.lr' is not of the form key=value"]),
    ("train.micro_batch_size=3", ["train.batch_size (8)", "train.micro_batch_size (3)"]),
])
def test_config_mistakes_in_process(capsys, tmp_path, override, needles):
    argv = ["sft", "data.train=t.jsonl", f"run_dir={tmp_path / 'run'}", override]
    code, out, err = run_main(capsys, argv)
    assert_one_line_error(code, out, err, *needles)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_missing_data_train(capsys):
    code, out, err = run_main(capsys, ["sft"])
    assert_one_line_error(code, out, err, "data.train is required")


def test_missing_config_file(capsys, tmp_path):
    code, out, err = run_main(capsys, ["sft", "--config", str(tmp_path / "nope.yaml")])
    assert_one_line_error(code, out, err, "nope.yaml")


def test_bad_data_row_names_file_and_line(capsys, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n'
                    '\n'
                    '{"prompt": "c", "completion": "d"}\n'
                    '{"prompt": "e", "completion": }\n')
    code, out, err = run_main(capsys, ["sft", f"data.train={data}", "model.name=tiny",
                                       f"run_dir={tmp_path / 'run'}"])
    assert_one_line_error(code, out, err, f"{data}:4:", "invalid JSON", "skip_bad_rows")
    assert not (tmp_path / "run" / "final").exists()


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sft", "--help"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    lines = out.splitlines()
    for key, type_name, _, _ in field_docs(SFTConfig):
        entries = [line for line in lines if line.startswith(f"  {key} (")]
        assert len(entries) == 1, key
        assert type_name in entries[0] and "default" in entries[0], entries[0]
    assert "--print-config" in out and "--config" in out


def test_ppo_neither_documents_nor_takes_the_batch_keys_it_never_reads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ppo", "--help"])
    out = capsys.readouterr().out
    assert "  train.max_steps (" in out and "  rollout.batch_size (" in out
    for key in ("train.batch_size", "train.micro_batch_size", "train.max_tokens_per_microbatch"):
        assert f"  {key} (" not in out, key
    code, out, err = run_main(capsys, ["ppo", "rollout.prompts=p.jsonl", "train.batch_size=8"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tether ppo: error: unknown key 'train.batch_size' (ppo's batches "
                          "are rollout.batch_size"), err


def test_sft_does_not_document_share_prompt(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sft", "--help"])
    assert "train.share_prompt" not in capsys.readouterr().out


def test_print_config_prints_yaml_and_does_not_train(capsys, tmp_path, monkeypatch):
    def no_import(name):
        raise AssertionError(f"--print-config imported {name}")

    monkeypatch.setattr(cli.importlib, "import_module", no_import)
    overrides = ["data.train=t.jsonl", "optim.lr=3e-4", f"run_dir={tmp_path / 'run'}"]
    code, out, err = run_main(capsys, ["sft", *overrides, "--print-config"])
    assert code == 0, err
    printed = yaml.safe_load(out)  # the header is a YAML comment
    assert printed == to_dict(load_config(SFTConfig, None, overrides))
    assert printed["optim"]["lr"] == 3e-4
    assert not (tmp_path / "run").exists()


def test_no_command_prints_help(capsys):
    code, out, err = run_main(capsys, [])
    assert code == 0
    assert "usage: tether" in out and "sft" in out and "COMMAND" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code in (0, None)
    assert "tether " in capsys.readouterr().out


def _subprocess(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = Path(sys.executable).parent / "tether"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tether"]
    return subprocess.run(command + args, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=60)


def test_real_process_exit_codes(tmp_path, config_file):
    done = _subprocess(["sft", "--config", str(config_file), "train.seed=x"], tmp_path)
    # The file's typo is found before the override's type.
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert f"{config_file}:6:" in done.stderr and "did you mean 'optim.lr'" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr

    done = _subprocess(["sft", "data.train=t.jsonl", "train.bf16=1"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("tether sft: error: train.bf16 must be ")
    assert done.stderr.count("\n") == 1 and "got 1" in done.stderr

    done = _subprocess(["sft", "data.train=t.jsonl", "--print-config"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["data"]["train"] == "t.jsonl"

    done = _subprocess(["sft", "--help"], tmp_path)
    assert done.returncode == 0 and "\n  model.lora.r (" in done.stdout

    done = _subprocess([], tmp_path)
    assert done.returncode == 0 and "usage: tether" in done.stdout


def test_python_dash_m_tether(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "tether", "sft", "optim.lrr=1",
                           "data.train=t.jsonl"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1  # exactly one line
    assert "unknown key 'optim.lrr'" in done.stderr and "Traceback" not in done.stderr


def test_real_process_data_error(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    done = _subprocess(["sft", f"data.train={data}", "model.name=tiny",
                        f"run_dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tether sft: error: ")
    assert f"{data}:2: missing field 'completion'" in last


def test_options_may_follow_overrides(capsys):
    code, out, _ = run_main(capsys, ["sft", "data.train=x.jsonl", "--print-config",
                                     "optim.lr=0.25"])
    assert code == 0
    assert yaml.safe_load(out.split("\n", 1)[1])["optim"]["lr"] == 0.25


def test_missing_data_file_is_one_line(capsys, tmp_path):
    code, out, err = run_main(capsys, ["sft", "model.name=tiny",
                                       f"data.train={tmp_path / 'nope.jsonl'}",
                                       f"run_dir={tmp_path / 'run'}"])
    assert_one_line_error(code, out, err, "nope.jsonl", "no such file")
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.parametrize("override,needles", [
    # PyTorch has no FlexAttention backward on the CPU: refused before any model loads.
    ("model.attention=flex_attention", ["model.attention=flex_attention", "CUDA GPU"]),
    ("train.bf16_weights=true", ["train.bf16_weights=true", "train.bf16=true"]),
    ("train.logits_chunk=-1", ["train.logits_chunk"]),
])
def test_fast_path_settings_that_cannot_run_here(capsys, tmp_path, override, needles):
    data = tmp_path / "t.jsonl"
    data.write_text("{\"prompt\": \"a\", \"completion\": \"b\"}\n" * 16)
    code, out, err = run_main(capsys, ["sft", "model.name=tiny", f"data.train={data}",
                                       f"run_dir={tmp_path / 'run'}", "train.device=cpu",
                                       override])
    assert_one_line_error(code, out, err, *needles)
    assert not (tmp_path / "run" / "final").exists()


def test_compile_where_it_cannot_run_is_one_line(capsys, tmp_path, monkeypatch):
    from tether import precision

    monkeypatch.setattr(precision, "compile_unavailable",
                        lambda *a, **k: "inductor on the CPU needs a working C++ compiler")
    data = tmp_path / "t.jsonl"
    data.write_text("{\"prompt\": \"a\", \"completion\": \"b\"}\n" * 16)
    code, out, err = run_main(capsys, ["sft", "model.name=tiny", f"data.train={data}",
                                       f"run_dir={tmp_path / 'run'}", "train.compile=true"])
    assert_one_line_error(code, out, err, "train.compile=true", "C++ compiler")


@pytest.mark.parametrize("name", list(cli.STAGES))
def test_each_command_s_help_example_override_is_one_it_takes(capsys, name):
    stage = cli.STAGES[name]
    with pytest.raises(SystemExit):
        cli.main([*name.split(), "--help"])
    assert f"e.g. {stage.override}" in " ".join(capsys.readouterr().out.split())
    key = stage.override.split("=")[0]
    assert key in [row[0] for row in field_docs(stage.config)]

    def error(overrides):
        try:
            load_config(stage.config, None, overrides)
        except UserError as e:
            return str(e)

    # A command's required keys are missing here: the example adds no error of its own.
    assert error([stage.override]) in (None, error([]))


def test_rm_help_names_every_embedded_model(capsys):
    from tether.models.loading import EMBEDDED

    with pytest.raises(SystemExit):
        cli.main(["rm", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    help = out[out.index("model.name ("):out.index("model.lora")]
    assert all(name in help for name in EMBEDDED), help


def test_a_closed_stdout_ends_quietly(tmp_path):
    command = [sys.executable, "-m", "tether", "sft", "data.train=t.jsonl", "--print-config"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path, env=env)
    process.stdout.close()  # as `| head -0` would, before a line is read
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""


def test_a_command_echoes_the_settings_given_not_every_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data:\n  train: missing.jsonl\noptim:\n  lr: 1e-4\n")
    code, out, err = run_main(capsys, ["sft", "--config", "c.yaml", "optim.lr=3e-4",
                                       "model.name=tiny", "run_dir=run"])
    assert code == 2 and "missing.jsonl" in err  # it got as far as reading the data
    assert out.splitlines() == [
        "# tether sft: the settings given (every other key: their defaults)",
        "data:",
        f"{'  train: missing.jsonl':<40}  # c.yaml:2",  # where each was set, aligned
        "optim:",
        f"{'  lr: 0.0003':<40}  # command line",
        "model:",
        f"{'  name: tiny':<40}  # command line",
        f"{'run_dir: run':<40}  # command line",
        "# the whole resolved config: run/config.yaml, or --print-config",
    ]


def test_eval_asks_for_gold_unless_the_policies_runs_name_the_task(capsys, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    code, out, err = run_main(capsys, ["eval", "policies=tiny", f"prompts={prompts}",
                                       f"output={tmp_path / 'e.json'}"])
    assert code == 2 and err.startswith("tether eval: error: gold is required"), err
    assert "or gold= for no gold score" in err and len(err.strip().splitlines()) == 1


def test_eval_takes_gold_from_the_runs_that_trained_its_policies(tmp_path):
    from tether.eval.task_gold import AUTO, choose_gold

    def run(path, config):
        (tmp_path / path / "final").mkdir(parents=True)
        (tmp_path / path / "config.yaml").write_text(yaml.safe_dump(config))
        return str(tmp_path / path / "final")

    pipeline = tmp_path / "pipe"
    sft = run("pipe/sft", {"data": {"train": "d.jsonl"}})
    (pipeline / "config.yaml").write_text(yaml.safe_dump({"task": {"name": "answers",
                                                                   "gold": ""}}))
    assert choose_gold(AUTO, [sft]) == ("answers", f"gold: answers (the task of "
                                                   f"{pipeline / 'config.yaml'})")
    ppo = run("ppo", {"reward": {"gold": "my_scorers:score"}})
    dpo = run("dpo", {"sampled_eval": {"gold": "my_scorers:score"}})
    assert choose_gold(AUTO, ["tiny", ppo, dpo])[0] == "my_scorers:score"
    assert choose_gold("sentiment", [ppo]) == ("sentiment", "")  # given: used as it is
    assert choose_gold("", [ppo]) == ("", "")  # none
    with pytest.raises(UserError, match="different gold scorers.*answers.*my_scorers:score"):
        choose_gold(AUTO, [sft, ppo])
    (pipeline / "config.yaml").write_text(yaml.safe_dump({"task": {"name": "", "gold": ""}}))
    assert choose_gold(AUTO, [sft]) == ("", f"gold: none (the task of "
                                            f"{pipeline / 'config.yaml'})")  # people's labels
