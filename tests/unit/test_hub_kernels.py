"""Nothing is fetched at run time: no Hub kernels, no Hub attention, unless a user opts in.

transformers 5.x turns Hub kernels on for every `from_pretrained` model; on a GPU,
`model.train()` then calls `kernelize`, which downloads `kernels-community/*` code (and fails
offline). On the CPU the same call happens and finds nothing to swap, so these tests make
`kernelize` raise: any model that would have been kernelized fails the test on any device.
"""

import json

import pytest
import torch
import transformers.modeling_utils
from conftest import write_jsonl

from tether.cli import main
from tether.models.loading import load_causal_lm
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_llama, tiny_tokenizer


class HubKernelsAsked(RuntimeError):
    pass


@pytest.fixture
def kernelize_calls(monkeypatch):
    """kernelize records its calls and raises, as it does offline on a GPU."""
    calls = []

    def kernelize(model, *args, **kwargs):
        calls.append(type(model).__name__)
        raise HubKernelsAsked("kernelize was called: it would fetch kernels from the Hub")

    monkeypatch.setattr(transformers.modeling_utils, "kernelize", kernelize)
    return calls


@pytest.fixture
def tiny_dir(tmp_path):
    """The tiny model saved as a Hugging Face directory, so loading it goes through
    from_pretrained like any user's model; its config asks for flash_attention_2, which
    transformers would fetch from the Hub when the flash-attn package is missing."""
    path = tmp_path / "tiny-model"
    tiny_llama(seed=0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["_attn_implementation"] = config["attn_implementation"] = "flash_attention_2"
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_the_fixture_catches_transformers_default(tiny_dir, kernelize_calls):
    """Without tether's options, transformers' own default kernelizes: what the fixture sees."""
    with pytest.raises(HubKernelsAsked):
        transformers.AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa")


def test_loaded_models_never_kernelize_and_use_pytorch_attention(tiny_dir, kernelize_calls):
    policy = load_causal_lm(str(tiny_dir))
    policy.train()
    policy.eval()
    assert policy.config._attn_implementation == "sdpa"
    assert load_causal_lm(str(tiny_dir), attention="eager").config._attn_implementation == \
        "eager"
    reward = RewardModel.build(str(tiny_dir))
    reward.model.train()
    saved = tiny_dir.parent / "rm"
    reward.save(saved, merge_lora=True)
    RewardModel.from_pretrained(saved).model.train()
    assert kernelize_calls == []


def test_a_stage_on_a_saved_model_runs_with_kernelize_raising(tmp_path, tiny_dir,
                                                             kernelize_calls, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    assert main(["sft", f"model.name={tiny_dir}", f"data.train={data}", "train.max_steps=2",
                 "data.eval_fraction=0", f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["sft", "model.name=tiny", f"data.train={data}", "train.max_steps=2",
                 "data.eval_fraction=0", f"run_dir={tmp_path / 'run-tiny'}"]) == 0
    assert kernelize_calls == []


def test_hub_kernels_is_an_opt_in(tiny_dir, kernelize_calls):
    with pytest.raises(HubKernelsAsked):
        load_causal_lm(str(tiny_dir), hub_kernels=True)
    assert kernelize_calls == ["LlamaForCausalLM"]


def test_random_shapes_are_built_not_loaded(kernelize_calls, monkeypatch):
    """`random:<shape>`: the real architecture at random init, for speed figures on a GPU
    without copying weights. The shape is checked on the config, not built (1.7B params)."""
    from tether.models import loading

    monkeypatch.setattr(loading, "_smollm2_tokenizer", tiny_tokenizer)
    config = loading.random_config("random:smollm2-1.7b")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == \
        (2048, 24, 8192)
    model = load_causal_lm("random:smollm2-135m", seed=3)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(
        134.5e6 - (49152 - 512) * 576, rel=0.01)  # the real count, less the tiny vocabulary
    same = load_causal_lm("random:smollm2-135m", seed=3)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight,
                       same.model.layers[0].mlp.up_proj.weight)
    assert RewardModel.build("random:smollm2-135m").kind == "policy"
    assert kernelize_calls == []


def test_an_unknown_random_shape_names_the_known_ones(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    code = main(["sft", "model.name=random:gpt5", f"data.train={data}",
                 f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "random:smollm2-135m" in err and "Traceback" not in err
