"""Reward models: a backbone that reads (prompt, response) and returns one number.

Two backbones:
- policy: a causal LM (usually the SFT model) whose unembedding is replaced by a scalar head,
  read at the last response token (the EOS), as in InstructGPT;
- encoder: a bidirectional encoder (e.g. minilm-l6) over [CLS] prompt [SEP] response [SEP],
  read by default at the mean of its token states (how sentence encoders are trained: it
  holds what was said) plus the state of the closing [SEP] (which sees how long the response
  is and how it ends, where the mean dilutes both: README, Reward models).

Both are saved as ordinary Hugging Face sequence-classification models (num_labels=1).
The config also records what scoring needs beyond the weights: the backbone kind, how text
was encoded, and the normalisation (r = gain * raw + bias) fitted after training. Plain
`transformers` gives the raw score; tether's scorers apply the normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
)

from tether.checkpoint import save_final
from tether.data.collate import collate
from tether.data.order import chunks
from tether.data.tokenize import (
    Encoded,
    Messages,
    chat_setting,
    encode_example,
    tokenize_capped,
)
from tether.device import autocast, model_device, to_device
from tether.errors import UserError
from tether.models.loading import (
    load_tokenizer,
    pretrained_options,
    random_config,
    random_shape,
    resolve,
)
from tether.models.logprobs import position_ids_from_mask
from tether.models.lora import is_lora
from tether.models.shared_prompt import pack_groups
from tether.models.tiny import TINY, tiny_llama

ENCODER_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra",
                 "xlm-roberta", "modernbert", "mpnet"}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _head(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return getattr(model, name)
    raise UserError(f"{type(model).__name__} has no scalar head ('score' or 'classifier')")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if is_lora(model) else model


class Scorer(torch.nn.Module):
    """Raw rewards [N] of a collated batch as a module's forward, so that DDP and FSDP2 (whose
    hooks run on a module's forward) can wrap the whole computation: the backbone, the pooled
    hidden state, the scalar head. A causal LM is read at its last real token whatever the
    pooling. An encoder by `pooling`: "last", the state of its last real token (the [SEP]
    closing the response); "mean", its mean token state; "mean_last", the sum of the two;
    "token", its own head on [CLS]."""

    def __init__(self, model: torch.nn.Module, kind: str, pooling: str = "token"):
        super().__init__()
        self.model, self.kind, self.pooling = model, kind, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                last_columns: torch.Tensor | None = None) -> torch.Tensor:
        """A collated batch, or (policy backbone) responses packed under shared prompts
        (RewardModel.collate with group sizes): a 4-D attention mask, the position ids, and
        the flat column of each response's last token."""
        inner = _unwrap(self.model)
        if self.kind == "encoder" and self.pooling == "token":
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
            return out.logits[:, 0].float()
        backbone = getattr(inner, inner.base_model_prefix)
        if self.kind == "encoder":
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
            # mean_last sums both: the mean holds what was said, the closing [SEP] where the
            # response ends and how (README, Reward models)
            pooled = 0
            if self.pooling in ("mean", "mean_last"):
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            if self.pooling in ("last", "mean_last"):
                pooled = pooled + hidden[torch.arange(hidden.shape[0], device=hidden.device),
                                         last_token_index(attention_mask)]
            head = _head(inner)
            # a plain linear head takes [N, d]; RoBERTa-style heads read features[:, 0]
            return (head(pooled) if isinstance(head, torch.nn.Linear)
                    else head(pooled.unsqueeze(1)))[:, 0].float()
        if last_columns is None:
            position_ids = position_ids_from_mask(attention_mask)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          position_ids=position_ids).last_hidden_state
        if last_columns is None:
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device),
                          last_token_index(attention_mask)]
        else:
            last = hidden.flatten(0, 1)[last_columns]
        return _head(inner)(last)[:, 0].float()


class RewardModel:
    """A sequence-classification model with the encoding and normalisation it was trained
    with. `model` is the torch module (what an optimizer trains)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 chat_template: bool, max_length: int, truncation: str = "prompt_left"):
        self.model = model
        self.tokenizer = tokenizer
        config = _unwrap(model).config
        self.kind = config.tether_backbone
        self.pooling = getattr(config, "tether_pooling", "token")  # older models: token
        self.chat_template = chat_template
        self.max_length = max_length
        self.truncation = truncation
        self.gain, self.bias = 1.0, 0.0
        # Under torchrun: a LastTokenScorer of `model` wrapped in DDP or FSDP2 (the trainer
        # sets it); scores then go through it.
        self.parallel: torch.nn.Module | None = None
        norm = getattr(config, "tether_reward_norm", None)
        if norm:
            self.gain, self.bias = float(norm["gain"]), float(norm["bias"])

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def build(cls, name: str, backbone: str = "auto", *, seed: int = 0, chat_template: str = "auto",
              max_length: int = 512, truncation: str = "prompt_left", hub_kernels: bool = False,
              attention: str = "sdpa", pooling: str = "auto") -> RewardModel:
        """A fresh reward model from a causal LM or an encoder; the head is N(0, 1/sqrt(d+1)).
        `pooling` (reward.pooling): last, mean, mean_last, token, or auto (mean_last for an
        encoder, last for a causal LM)."""
        tokenizer = load_tokenizer(name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if name == TINY:
                base = tiny_llama(seed=seed)
                base.config.num_labels = 1
                model = LlamaForSequenceClassification(base.config)
                model.model.load_state_dict(base.model.state_dict())
            elif random_shape(name):
                config = random_config(name)
                config.num_labels, config._attn_implementation = 1, attention
                model = LlamaForSequenceClassification(config)
            else:
                verbosity = transformers.logging.get_verbosity()
                transformers.logging.set_verbosity_error()  # "score is newly initialised"
                try:
                    model = AutoModelForSequenceClassification.from_pretrained(
                        resolve(name), num_labels=1, dtype=torch.float32,
                        ignore_mismatched_sizes=True,  # an old classifier head is replaced
                        **pretrained_options(hub_kernels, attention))
                except (OSError, ValueError) as e:
                    raise UserError(f"cannot build a reward model from '{name}': {e}") from None
                finally:
                    transformers.logging.set_verbosity(verbosity)
            kind = "encoder" if model.config.model_type in ENCODER_TYPES else "policy"
            if backbone != "auto" and backbone != kind:
                raise UserError(f"reward.backbone={backbone}, but '{name}' is a "
                                f"{model.config.model_type} model, i.e. a {kind} backbone")
            head = _head(model)
            if not isinstance(head, torch.nn.Linear):  # e.g. RoBERTa's two-layer head
                head = head.out_proj
            torch.nn.init.normal_(head.weight, std=1 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                torch.nn.init.zeros_(head.bias)
        if pooling == "auto":
            pooling = "mean_last" if kind == "encoder" else "last"
        if pooling in ("mean", "mean_last") and kind == "policy":
            raise UserError(f"reward.pooling={pooling} needs an encoder backbone; '{name}' is "
                            f"a causal LM, read at its last response token (pooling=last)")
        model.config.tether_backbone = kind
        model.config.tether_pooling = pooling
        model.config.pad_token_id = tokenizer.pad_token_id
        chat_template = chat_setting(tokenizer, chat_template)
        use_template = kind == "policy" and chat_template != "never" and bool(
            tokenizer.chat_template)
        if chat_template == "always" and not use_template:
            raise UserError("data.chat_template=always, but this backbone has no chat template")
        return cls(model, tokenizer, chat_template=use_template, max_length=max_length,
                   truncation=truncation)

    @classmethod
    def from_pretrained(cls, path: str | Path, hub_kernels: bool = False,
                        attention: str = "sdpa") -> RewardModel:
        path = Path(path)
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a reward model directory (no config.json)")
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, **pretrained_options(hub_kernels, attention))
        if not hasattr(model.config, "tether_backbone"):
            model.config.tether_backbone = ("encoder" if model.config.model_type in ENCODER_TYPES
                                            else "policy")
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model.eval(), tokenizer,
                   chat_template=getattr(model.config, "tether_chat_template", False),
                   max_length=getattr(model.config, "tether_max_length", 512),
                   truncation=getattr(model.config, "tether_truncation", "prompt_left"))

    # -- encoding and scoring ------------------------------------------------------------------

    def encode(self, messages: Messages, response: str, finished: bool = True) -> Encoded | None:
        """Token ids with loss_mask marking the response (for the encoder, its segment ids).
        `finished` is not read: a reward model scores a response's text, as it scores the
        rollouts it rewards, whether or not its sampler ended it."""
        if self.kind == "policy":
            return encode_example(self.tokenizer, messages, response,
                                  chat_template=self.chat_template, max_length=self.max_length,
                                  truncation=self.truncation)
        tok = self.tokenizer
        budget = self.max_length - 3  # [CLS] prompt [SEP] response [SEP]
        p = tokenize_capped(tok, "\n\n".join(m["content"] for m in messages), budget,
                            from_end=True, add_special_tokens=False)
        r = tokenize_capped(tok, response, budget, add_special_tokens=False)
        truncated = len(p) + len(r) > budget
        if truncated:
            if self.truncation == "drop":
                return None
            keep = max(min(len(p), budget // 4), budget - len(r))
            p, r = p[len(p) - keep:], r[: budget - keep]
        ids = [tok.cls_token_id] + p + [tok.sep_token_id] + r + [tok.sep_token_id]
        return Encoded(ids, [0] * (len(p) + 2) + [1] * (len(r) + 1), truncated)

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    def head_names(self, module: torch.nn.Module) -> list[str]:
        """The names, in `module` (the model, possibly compiled or wrapped), of the scalar
        head's parameters."""
        head = {id(p) for p in _head(_unwrap(self.model)).parameters()}
        return [n for n, p in module.named_parameters() if id(p) in head]

    def scorer(self, model: torch.nn.Module | None = None) -> Scorer:
        """A Scorer of `model` (default: self.model) as this reward model reads it."""
        return Scorer(self.model if model is None else model, self.kind, self.pooling)

    def raw_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalised rewards [N] for a collated batch (differentiable), on the model's
        device."""
        scorer = self.parallel or self.scorer()
        batch = to_device(batch, model_device(self.model))
        return scorer(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"),
                      batch.get("position_ids"), batch.get("last_columns"))

    def collate(self, encoded: Sequence[Encoded], group_sizes: Sequence[int] | None = None,
                one_row: bool = False) -> dict[str, torch.Tensor]:
        """A batch for raw_scores. With `group_sizes` (the responses of each prompt, in order)
        a policy backbone reads each prompt once, its responses packed into one row
        (tether.models.shared_prompt); with `one_row`, all of them (each group, or each
        response on its own) in a single row without padding. An encoder is bidirectional:
        it can neither share nor pack (its tokens would see the other sequences), ignores
        both and gets padded rows."""
        if (group_sizes is not None or one_row) and self.kind == "policy":
            packed = pack_groups([e.input_ids for e in encoded],
                                 group_sizes or [1] * len(encoded), self.tokenizer.pad_token_id,
                                 one_row)
            # The mask is made on the model's device: a long row's L x L mask is not copied
            # there, and a BlockMask (flex attention) would not be moved by raw_scores.
            model = _unwrap(self.model)
            return {"input_ids": packed.input_ids, "position_ids": packed.position_ids,
                    "attention_mask": packed.attention_mask_for(model, model_device(model)),
                    "last_columns": packed.last_columns}
        # Encoders use absolute positions: always pad on the right for them.
        return collate(encoded, self.tokenizer.pad_token_id, "right")

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.gain + self.bias

    @torch.no_grad()
    def raw_scores_of(self, encoded: Sequence[Encoded], batch_size: int = 16,
                      bf16: bool = False, progress: str = "") -> torch.Tensor:
        """Unnormalised rewards [N] of `encoded`, a float32 CPU tensor. `progress`: the
        description of a progress bar over the batches; empty, no bar."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for part in tqdm(chunks(list(encoded), batch_size), desc=progress or None,
                         unit="batch", dynamic_ncols=True, leave=False, disable=not progress):
            with autocast(bf16, model_device(self.model)):
                out.append(self.raw_scores(self.collate(part)).cpu())
        self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: Sequence[Messages], responses: Sequence[str], batch_size: int = 16,
              bf16: bool = False) -> list[float]:
        """Normalised rewards for (prompt messages, response) pairs."""
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        if any(e is None for e in encoded):  # only with truncation=drop
            raise UserError("a response is longer than the reward model's max_length")
        return self.normalize(self.raw_scores_of(encoded, batch_size, bf16)).tolist()

    # -- normalisation and saving --------------------------------------------------------------

    def fit_normalization(self, raw: torch.Tensor, mode: str) -> None:
        """Choose gain and bias so the reference scores have mean 0 (and std 1 for mean_std)."""
        if mode == "none" or raw.numel() == 0:
            self.gain, self.bias = 1.0, 0.0
            return
        std = raw.std().item() if raw.numel() > 1 else 1.0
        self.gain = 1.0 / std if mode == "mean_std" and std > 0 else 1.0
        self.bias = -raw.mean().item() * self.gain

    def save(self, out_dir: Path, merge_lora: bool = True,
             texts: dict[str, str] | None = None) -> Path:
        config = _unwrap(self.model).config
        config.tether_reward_norm = {"gain": self.gain, "bias": self.bias}
        config.tether_chat_template = self.chat_template
        config.tether_max_length = self.max_length
        config.tether_truncation = self.truncation
        return save_final(self.model, self.tokenizer, out_dir, merge_lora, texts)
