"""Config loading: YAML + dotted overrides into typed, validated dataclasses."""

import dataclasses
import typing

import pytest
import yaml

from tether.cli import STAGES
from tether.config import (
    DPOConfig,
    EvalConfig,
    LabelImportConfig,
    PipelineConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    ScoreConfig,
    SFTConfig,
    field_docs,
    load_config,
    to_dict,
    to_yaml,
)
from tether.errors import ConfigError, UserError

TRAIN = "data.train=train.jsonl"  # the one required key


def write(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(SFTConfig, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line for the CLI
    return message


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


# --- defaults and overrides -------------------------------------------------------------------


def test_defaults_with_only_overrides():
    cfg = load_config(SFTConfig, None, [TRAIN])
    assert cfg.data.train == "train.jsonl"
    default = SFTConfig()
    assert cfg.optim == default.optim
    assert cfg.train == default.train
    assert cfg.model == default.model
    assert cfg.data.truncation == "prompt_left"
    assert cfg.optim.lr == 2e-5


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)
    assert ConfigError.exit_code == 2


def test_yaml_file_then_nested_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file's paths are relative to it: here, as written
    path = write(tmp_path, """\
run_dir: runs/x
data:
  train: a.jsonl
optim:
  lr: 0.001
  schedule: linear
model:
  lora:
    enabled: true
    r: 4
""")
    cfg = load_config(SFTConfig, path, ["optim.lr=3e-4", "model.lora.r=8", "train.bf16=true",
                                        "data.eval=b.jsonl"])
    assert cfg.run_dir == "runs/x"
    assert cfg.data.train == "a.jsonl" and cfg.data.eval == "b.jsonl"
    assert cfg.optim.lr == pytest.approx(3e-4)  # override wins over the file
    assert cfg.optim.schedule == "linear"  # the rest of the section is kept
    assert cfg.model.lora.enabled is True and cfg.model.lora.r == 8
    assert cfg.train.bf16 is True
    assert cfg.model.lora.alpha == 32.0  # untouched default inside a set section


def test_override_value_with_equals_sign_and_spaces():
    cfg = load_config(SFTConfig, None, [TRAIN, "run_dir=runs/a=b"])
    assert cfg.run_dir == "runs/a=b"
    cfg = load_config(SFTConfig, None, [TRAIN, "model.name=some dir/with space"])
    assert cfg.model.name == "some dir/with space"


def test_empty_yaml_file_means_defaults(tmp_path):
    cfg = load_config(SFTConfig, write(tmp_path, "# nothing\n"), [TRAIN])
    assert cfg.optim == SFTConfig().optim


def test_exponent_without_dot_parses_as_float(tmp_path):
    # YAML 1.1 reads `1e-5` (no dot) as a string; a float field must still accept it.
    path = write(tmp_path, "data:\n  train: t.jsonl\noptim:\n  lr: 1e-5\n  eps: 1e-6\n")
    cfg = load_config(SFTConfig, path)
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.eps == 1e-6
    cfg = load_config(SFTConfig, None, [TRAIN, "optim.lr=5e-4"])
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)


def test_int_for_float_becomes_float():
    cfg = load_config(SFTConfig, None, [TRAIN, "optim.max_grad_norm=2"])
    assert cfg.optim.max_grad_norm == 2.0 and isinstance(cfg.optim.max_grad_norm, float)


def test_number_for_string_field_is_text():
    cfg = load_config(SFTConfig, None, [TRAIN, "run_dir=42"])
    assert cfg.run_dir == "42"


# --- YAML problems ----------------------------------------------------------------------------


def test_yaml_parse_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\noptim:\n  lr: [1, 2\n  eps: 3\n")
    message = error(path)
    assert f"{path}:" in message and "invalid YAML" in message
    line = int(message.split(f"{path}:")[1].split(":")[0])
    assert line in (4, 5, 6)  # where the unclosed bracket is noticed
    message = error(write(tmp_path, "a: 1\nb: : :\n", "d.yaml"))
    assert f"{tmp_path / 'd.yaml'}:2:" in message


def test_missing_file(tmp_path):
    message = error(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in message and "cannot read" in message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"run_dir: \xff\xfe\n")
    assert "UTF-8" in error(str(path))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    message = error(path)
    assert path in message and "mapping" in message


def test_section_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\noptim: 5\n")
    message = error(path)
    assert f"{path}:3:" in message and "optim must be a mapping" in message


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_names_line_and_closest_key(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\noptim:\n  warmup_steps: 3\n  lrr: 0.1\n")
    message = error(path)
    assert f"{path}:5:" in message
    assert "unknown key 'optim.lrr'" in message
    assert "did you mean 'optim.lr'" in message
    assert "valid keys here:" in message and "warmup_steps" in message


def test_unknown_key_suggestion_across_sections(tmp_path):
    # A key put under the wrong section still finds the right one.
    path = write(tmp_path, "data:\n  train: a.jsonl\n  seed: 3\n")
    message = error(path)
    assert f"{path}:3:" in message
    assert "unknown key 'data.seed'" in message and "did you mean 'train.seed'" in message
    message = error(None, [TRAIN, "trian.seed=1"])
    assert "unknown key 'trian'" in message and "did you mean 'train.seed'" in message


def test_unknown_key_in_override_has_suggestion_and_no_file_line(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\n")
    message = error(path, ["optim.lrr=0.1"])
    assert "unknown key 'optim.lrr'" in message and "did you mean 'optim.lr'" in message
    assert not message.startswith(path)  # an override has no line in the file


def test_unknown_nested_key(tmp_path):
    message = error(None, [TRAIN, "model.lora.rank=4"])
    assert "unknown key 'model.lora.rank'" in message and "did you mean 'model.lora.r'" in message


def test_unknown_top_level_key_without_close_match():
    message = error(None, [TRAIN, "zzzzzz=1"])
    assert "unknown key 'zzzzzz'" in message and "did you mean" not in message
    assert "run_dir" in message  # lists what is valid there


@pytest.mark.parametrize("cls, key, why", [
    (PPOConfig, "train.batch_size", "rollout.batch_size prompts per iteration"),
    (PPOConfig, "train.micro_batch_size", "ppo.micro_batch_size"),
    (PPOConfig, "train.max_tokens_per_microbatch", "ppo.micro_batch_size"),
    (SFTConfig, "train.share_prompt", "no prompt to share"),
    (RMConfig, "train.logits_chunk", "one score"),
])
def test_a_command_is_not_offered_a_key_its_loop_never_reads(cls, key, why):
    # Another loop has the key, so the error says why this one has not (not a typo's match).
    assert key not in [row[0] for row in field_docs(cls)]  # nor in --help
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, [f"{key}=1"])
    message = str(info.value)
    assert message.startswith(f"unknown key '{key}' (") and why in message, message
    assert "did you mean" not in message


def test_the_pipeline_explains_a_key_its_stage_does_not_read_too(tmp_path):
    path = write(tmp_path, "ppo:\n  train:\n    max_steps: 3\n    batch_size: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(PipelineConfig, path)
    assert str(info.value).startswith(f"{path}:4: unknown key 'ppo.train.batch_size' (ppo's "
                                      f"batches are rollout.batch_size")


def test_gold_names_a_gold_scorer_wherever_it_is_a_key():
    # The file of gold items people are tested on has a name of its own: gold_items.
    gold = [(command, key, help) for command, stage in STAGES.items()
            for key, _, _, help in field_docs(stage.config) if key.rsplit(".", 1)[-1] == "gold"]
    assert {command for command, _, _ in gold} == {"label simulate", "dpo", "kto", "ppo",
                                                  "eval", "run"}
    for command, key, help in gold:
        assert "scorer" in help, (command, key)


@pytest.mark.parametrize("cls, yaml_text, key, required", [
    (LabelImportConfig, "gold: g.jsonl\n", "gold", ["project=p", "candidates=c.jsonl"]),
    (PipelineConfig, "human:\n  gold: g.jsonl\n", "human.gold", []),
])
def test_an_old_gold_items_key_names_the_new_one(tmp_path, cls, yaml_text, key, required):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(cls, path)
    line = yaml_text.count("\n")
    assert str(info.value).startswith(f"{path}:{line}: unknown key '{key}' (renamed gold_items: "
                                      f"a `gold` key names a gold scorer)"), info.value
    with pytest.raises(ConfigError, match=rf"unknown key '{key}_rate' \(renamed gold_items_rate\)"):
        load_config(cls, None, [f"{key}_rate=0.2"])
    cfg = load_config(cls, None, [*required, f"{key}_items=g.jsonl", f"{key}_items_rate=0.2"])
    section = cfg.human if cls is PipelineConfig else cfg
    assert (section.gold_items, section.gold_items_rate) == ("g.jsonl", 0.2)


# --- wrong types, choices, ranges -------------------------------------------------------------


@pytest.mark.parametrize("override, key, expected, got", [
    ("optim.lr=fast", "optim.lr", "number", "'fast'"),          # string for float
    ("train.batch_size=8.5", "train.batch_size", "integer", "8.5"),  # float for int
    ("train.batch_size=8.0", "train.batch_size", "integer", "8.0"),
    ("train.bf16=1", "train.bf16", "true", "1"),                # int for bool
    ("train.bf16=maybe", "train.bf16", "true", "'maybe'"),
    ("train.seed=true", "train.seed", "integer", "True"),       # bool is not an int
    ("optim.lr=true", "optim.lr", "number", "True"),            # nor a number
])
def test_wrong_type(override, key, expected, got):
    message = error(None, [TRAIN, override])
    assert message.startswith(f"{key} must be "), message
    assert expected in message and f"got {got}" in message, message


def test_a_list_in_yaml_is_not_a_string(tmp_path):
    path = write(tmp_path, "data:\n  train: [a, b]\n")
    assert error(path).startswith(f"{path}:2: data.train must be a string, got ['a', 'b']")


def test_string_overrides_keep_the_text_as_typed():
    cfg = load_config(SFTConfig, None, [TRAIN, "run_dir=0123", "model.name=2024-01-01"])
    assert cfg.run_dir == "0123" and cfg.model.name == "2024-01-01"


def test_non_finite_numbers_are_rejected():
    for value in ("nan", "inf", ".inf"):
        assert "(finite)" in error(None, [TRAIN, f"optim.lr={value}"])


def test_dotted_keys_and_duplicates_in_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "data.train: a.jsonl\noptim.lr: 0.5\n")
    cfg = load_config(SFTConfig, str(path))
    assert cfg.data.train == "a.jsonl" and cfg.optim.lr == 0.5
    path = write(tmp_path, "data:\n  train: a.jsonl\ndata:\n  eval: b.jsonl\n")
    assert error(path).startswith(f"{path}:3: key 'data' is given twice (also on line 1)")


def test_wrong_type_in_file_names_line(tmp_path):
    path = write(tmp_path, "data:\n  train: a.jsonl\ntrain:\n  seed: 1\n  micro_batch_size: two\n")
    message = error(path)
    assert message.startswith(f"{path}:5: train.micro_batch_size must be an integer")
    assert "'two'" in message


def test_choices_with_suggestion():
    message = error(None, [TRAIN, "optim.schedule=cosin"])
    assert message.startswith("optim.schedule must be one of cosine, linear, constant")
    assert "did you mean 'cosine'" in message
    message = error(None, [TRAIN, "data.truncation=xyz"])
    assert "data.truncation must be one of prompt_left, drop" in message
    assert "did you mean" not in message


def test_choices_in_file_names_line(tmp_path):
    # (not data.chat_template: it also takes a Jinja file, so any name is a path to one)
    path = write(tmp_path, "data:\n  train: a.jsonl\n  truncation: dorp\n")
    message = error(path)
    assert message.startswith(f"{path}:3: data.truncation must be one of")
    assert "did you mean 'drop'" in message


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-1e-3", "optim.lr must be >= 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("data.eval_fraction=0.9", "data.eval_fraction must be <= 0.5"),
    ("data.max_length=4", "data.max_length must be >= 8"),
    ("optim.beta2=1.5", "optim.beta2 must be <= 1"),
])
def test_range(override, expected):
    assert error(None, [TRAIN, override]).startswith(expected)


def test_range_bounds_are_inclusive():
    cfg = load_config(SFTConfig, None, [TRAIN, "data.eval_fraction=0.5", "optim.lr=0",
                                        "data.max_length=8"])
    assert cfg.data.eval_fraction == 0.5 and cfg.optim.lr == 0 and cfg.data.max_length == 8


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim.lr 3"])
def test_override_without_equals(override):
    message = error(None, [TRAIN, override])
    assert "key=value" in message and repr(override) in message


# --- cross-field validation -------------------------------------------------------------------


def test_batch_size_multiple_of_micro_batch_size():
    message = error(None, [TRAIN, "train.batch_size=8", "train.micro_batch_size=3"])
    assert "train.batch_size (8)" in message and "train.micro_batch_size (3)" in message
    cfg = load_config(SFTConfig, None, [TRAIN, "train.batch_size=8", "train.micro_batch_size=2"])
    assert cfg.train.micro_batch_size == 2


def test_data_train_required(tmp_path):
    assert "data.train is required" in error(None, [])
    assert "data.train is required" in error(write(tmp_path, "optim:\n  lr: 0.1\n"))


# --- to_yaml, field_docs ----------------------------------------------------------------------


def test_to_yaml_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, [
        TRAIN, "optim.lr=1e-5", "optim.eps=1e-12", "model.lora.enabled=true",
        "data.truncation=drop", "run_dir=runs/2024", "model.name=C:/a dir/x:y",
        "train.batch_size=16", "train.micro_batch_size=4", "data.eval=", "train.seed=-3"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text)["optim"]["lr"] == 1e-5
    again = load_config(SFTConfig, write(tmp_path, text))
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert to_yaml(again) == text


def test_to_yaml_of_defaults_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, [TRAIN])
    assert load_config(SFTConfig, write(tmp_path, to_yaml(cfg))) == cfg


def test_field_docs_covers_every_leaf_key():
    rows = field_docs(SFTConfig)
    keys = [key for key, _, _, _ in rows]
    assert keys == leaf_keys(SFTConfig)
    assert len(keys) == len(set(keys))
    assert {"optim.lr", "model.lora.r", "data.train", "train.seed", "run_dir"} <= set(keys)
    defaults = to_dict(SFTConfig())
    for key, type_name, default, help in rows:
        assert help.strip(), f"{key} has no help text"
        assert type_name.strip(), key
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert node == default, key
    helps = {key: help for key, _, _, help in rows}
    assert "One of: cosine, linear, constant." in helps["optim.schedule"]


def test_a_stage_keeps_its_own_section_defaults_under_overrides():
    cfg = load_config(RMConfig, None, [TRAIN, "optim.lr=0.001", "train.epochs=3"])
    assert cfg.optim.lr == 0.001 and cfg.optim.warmup_steps == 5  # RM's warmup, not SFT's 0
    assert cfg.train.micro_batch_size == 4 and cfg.train.epochs == 3


# --- choices ----------------------------------------------------------------------------------


def choices(cls: type, key: str) -> tuple:
    """What the leaf `key` (dotted) of `cls` may be set to."""
    *sections, leaf = key.split(".")
    for name in sections:
        cls = typing.get_type_hints(cls)[name]
    return tuple(next(f for f in dataclasses.fields(cls) if f.name == leaf).metadata["choices"])


def test_an_option_offers_exactly_what_its_registry_holds():
    # The registries import torch or transformers, which loading a config does not.
    from tether import device, distributed
    from tether.losses import dpo, ppo
    from tether.models import loading
    from tether.rollout import backends

    assert choices(DPOConfig, "dpo.loss") == tuple(dpo.LOSSES)
    assert choices(PPOConfig, "ppo.kl_estimator") == ppo.KL_ESTIMATORS
    assert choices(PPOConfig, "algo") == ("ppo", *ppo.GROUP_METHODS)
    assert choices(PPOConfig, "ppo.loss_type") == ppo.LOSS_TYPES
    assert choices(PPOConfig, "ppo.importance_sampling_level") == ppo.IMPORTANCE_SAMPLING_LEVELS
    for cls, key in [(PPOConfig, "rollout.backend"), (SampleConfig, "backend"),
                     (EvalConfig, "backend")]:
        assert choices(cls, key) == backends.BACKENDS
    assert choices(SFTConfig, "model.attention") == loading.ATTENTION
    assert choices(SFTConfig, "train.strategy") == distributed.STRATEGIES
    for cls, key in [(SFTConfig, "train.device"), (SampleConfig, "device"),
                     (ScoreConfig, "device"), (EvalConfig, "device"),
                     (PipelineConfig, "eval.device")]:
        assert choices(cls, key) == device.DEVICES


# --- paths in a config file are relative to the file ------------------------------------------


def test_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    own = tmp_path / "own"
    (own / "base_model").mkdir(parents=True)
    (own / "scorer.py").write_text("def fn(texts):\n    return [0.0 for _ in texts]\n")
    (own / "ppo.yaml").write_text(
        "run_dir: runs/x\n"                      # an output: relative to the file
        "model:\n  name: base_model\n"           # a directory next to it
        "rollout.prompts: prompts.jsonl?prompt=q\n"  # not there yet: still the file's
        "reward:\n  model: org/model\n"          # a hub id: as written
        "  gold: scorer:fn\n"                     # module:function next to it: its file
        "  functions: 0.5*scorer:fn, arithmetic:format_reward, sentiment\n"
        f"eval_prompts: {tmp_path / 'abs.jsonl'}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PPOConfig, "own/ppo.yaml", ["eval_prompts=held/out.jsonl"])
    assert cfg.run_dir == "own/runs/x"
    assert cfg.model.name == "own/base_model"
    assert cfg.reward.model == "org/model"
    assert cfg.rollout.prompts == "own/prompts.jsonl?prompt=q"
    assert cfg.reward.gold == "own/scorer.py:fn"
    assert cfg.reward.functions == "0.5*own/scorer.py:fn, arithmetic:format_reward, sentiment"
    assert load_config(PPOConfig, "own/ppo.yaml").eval_prompts == str(tmp_path / "abs.jsonl")
    assert cfg.eval_prompts == "held/out.jsonl"  # an override: relative to the working directory

    # A run's config.yaml is resolved already: read again, its paths stay as they are.
    (own / "runs").mkdir()
    (own / "runs" / "config.yaml").write_text(to_yaml(cfg))
    assert load_config(PPOConfig, "own/runs/config.yaml") == cfg

    (own / "sft.yaml").write_text("data:\n  train: d.jsonl\n  chat_template: chat.jinja\n")
    cfg = load_config(SFTConfig, "own/sft.yaml", ["data.eval=e.jsonl"])
    assert (cfg.data.train, cfg.data.chat_template, cfg.data.eval) == \
        ("own/d.jsonl", "own/chat.jinja", "e.jsonl")

    monkeypatch.chdir(own)  # run from the file's own directory: every value as written
    cfg = load_config(PPOConfig, "ppo.yaml")
    assert (cfg.run_dir, cfg.model.name, cfg.reward.gold) == ("runs/x", "base_model", "scorer:fn")


def test_a_scorer_next_to_the_config_imports_by_its_path(tmp_path, monkeypatch):
    from tether.tasks.gold import load_gold_scorer

    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "brevity_scorer.py").write_text(
        "def fn(texts):\n    return [float(len(t)) for t in texts]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    monkeypatch.delitem(__import__("sys").modules, "brevity_scorer", raising=False)
    assert load_gold_scorer("own/brevity_scorer.py:fn")(["ab", "c"]) == [2.0, 1.0]
    with pytest.raises(UserError, match="cannot import module 'own/missing.py': no such file"):
        load_gold_scorer("own/missing.py:fn")
