"""tether's Python API: the commands as functions, and the model card every final/ gets."""

import pytest
import yaml
from conftest import ranking_rows, write_jsonl

import tether
from tether.config import SFTConfig, load_config
from tether.errors import ConfigError
from tether.model_card import model_card
from tether.rundir import read_metrics


def test_sft_from_python_takes_a_mapping_and_returns_final_with_its_card(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    final = tether.sft(overrides={"model.name": "tiny", "data.train": str(data),
                                  "run_dir": str(tmp_path / "run"), "train.max_steps": 3,
                                  "optim.lr": 3e-3, "data.eval_fraction": 0.125,
                                  "train.eval_every": 3})
    assert final == tmp_path / "run" / "final" and (final / "model.safetensors").exists()
    card = (final / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "sft" in front["tags"]
    assert "`tether sft`" in card and f"`{data}`" in card and "lr 0.003" in card
    last_eval = [m["eval/loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")
                 if "eval/loss" in m][-1]
    assert f"| eval/loss | {last_eval:.4g} |" in card
    saved = load_config(SFTConfig, str(final / "tether_config.yaml"))
    assert saved.train.max_steps == 3 and saved.model.name == "tiny"


def test_a_config_object_or_key_value_strings_run_the_same(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    common = ["model.name=tiny", f"data.train={data}", "train.max_steps=1",
              "data.eval_fraction=0"]
    cfg = load_config(SFTConfig, None, [*common, f"run_dir={tmp_path / 'a'}"])
    a = tether.sft(cfg)
    b = tether.sft(None, [*common, f"run_dir={tmp_path / 'b'}"])
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    with pytest.raises(TypeError):
        tether.sft(cfg, {"train.max_steps": 2})


def test_a_mistake_raises_the_command_lines_error_instead_of_exiting(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        tether.sft(overrides={"optim.lrr": 1e-5, "run_dir": str(tmp_path / "run")})
    with pytest.raises(AttributeError):
        tether.nothing_here  # noqa: B018


def test_the_reward_models_card_says_what_it_is(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", ranking_rows(16, k=3))
    final = tether.rm(overrides={"model.name": "tiny", "data.train": str(data),
                                 "run_dir": str(tmp_path / "rm"), "train.max_steps": 2,
                                 "data.eval_fraction": 0.25})
    card = (final / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "Bradley-Terry" in card
    assert "| eval/accuracy |" in card and "tether score" in card


def test_the_card_names_hub_bases_and_keeps_only_finite_last_values():
    cfg = load_config(SFTConfig, None, ["model.name=smollm2-135m", "data.train=d.jsonl",
                                        "model.lora.enabled=true"])
    metrics = [{"step": 1, "loss/train": 2.0, "eval/loss": 1.5},
               {"step": 2, "loss/train": 1.0, "eval/x": float("nan")}]
    card = model_card("sft", cfg, metrics, lora_adapter=True)
    assert "base_model: HuggingFaceTB/SmolLM2-135M" in card and "library_name: peft" in card
    assert "| loss/train | 1 |" in card and "| eval/loss | 1.5 |" in card
    assert "eval/x" not in card and "**Steps:** 2" in card and "an unmerged adapter" in card
    assert "AutoPeftModelForCausalLM" in card


def test_every_command_function_is_reachable_from_the_package():
    from tether import api

    public = {n for n, f in vars(api).items() if callable(f) and not n.startswith("_")
              and getattr(f, "__module__", "") == "tether.api"}
    assert public == set(tether._COMMANDS) | {"sample", "evaluate"}
    # the package's modules of those names are not shadowed
    from tether import evaluate, sample
    assert hasattr(sample, "run") and hasattr(evaluate, "run")


def test_a_jinja_chat_template_file_trains_and_stays_in_final(tmp_path, sft_rows, capsys):
    from transformers import AutoTokenizer

    from tether.cli import main

    template = ("{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n"
                "{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
    (tmp_path / "chat.jinja").write_text(template)
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    final = tether.sft(overrides={"model.name": "tiny", "data.train": str(data),
                                  "run_dir": str(tmp_path / "run"), "train.max_steps": 1,
                                  "data.eval_fraction": 0,
                                  "data.chat_template": str(tmp_path / "chat.jinja")})
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template == template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "[USER] hi\n[ASSISTANT] "
    assert main(["sft", "model.name=tiny", f"data.train={data}", "data.chat_template=nope.j2",
                 f"run_dir={tmp_path / 'bad'}"]) == 2
    assert "data.chat_template: 'nope.j2' is neither auto, always, never nor a readable " \
           "Jinja file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_every_trainer_has_a_card():
    from tether.config import DPOConfig, KTOConfig, PPOConfig, RMConfig

    for stage, cls, extra in (("sft", SFTConfig, ["data.train=d.jsonl"]),
                              ("rm", RMConfig, ["data.train=d.jsonl"]),
                              ("dpo", DPOConfig, ["data.train=d.jsonl"]),
                              ("kto", KTOConfig, ["data.train=d.jsonl"]),
                              ("ppo", PPOConfig, ["rollout.prompts=p.jsonl"])):
        card = model_card(stage, load_config(cls, None, extra), [])
        assert f"`tether {stage}`" in card and "**Method:**" in card, stage
