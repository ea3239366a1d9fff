"""final/README.md: a model card saying what was trained, from what, on what data, with which
settings, and how it did, so that a final/ directory copied or pushed elsewhere explains
itself. The full resolved configuration goes beside it as tether_config.yaml.

The card is Hugging Face's format: YAML metadata between `---` lines (library, base model,
tags, read by the Hub), then Markdown.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from tether import __version__
from tether.metric_names import EVAL_PREFIX, LOSS_TRAIN

# The Hub ids of the embedded models, so a card names where its weights came from.
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
           "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}

WHAT = {
    "sft": "supervised fine-tuning on demonstrations (loss on the response tokens only)",
    "rm": "a reward model: the backbone with a scalar head, trained on preferences with the "
          "Bradley-Terry loss",
    "dpo": "preference optimisation on pairs or rankings, against a frozen reference",
    "ppo": "online reinforcement learning against a reward, with a KL penalty to the reference",
    "kto": "KTO on thumbs up/down (unpaired good/bad responses), against a frozen reference",
}


def model_card(stage: str, cfg: Any, metrics: list[dict], lora_adapter: bool = False) -> str:
    """The card of a `tether <stage>` run from its resolved config and its metrics.jsonl rows.
    lora_adapter: final/ holds an unmerged peft adapter rather than whole weights."""
    base = cfg.model.name
    meta = ["---", f"library_name: {'peft' if lora_adapter else 'transformers'}"]
    hub_base = HUB_IDS.get(base) or (base if _is_hub_id(base) else None)
    if hub_base:
        meta.append(f"base_model: {hub_base}")
    meta += ["tags:", "- tether", f"- {stage}", "- rlhf" if stage != "sft" else "- sft",
             f"pipeline_tag: {'text-classification' if stage == 'rm' else 'text-generation'}",
             "---"]
    method = _method(stage, cfg)
    lines = [
        f"# {Path(cfg.run_dir).name}: {WHAT[stage]}", "",
        f"Trained with [tether](https://pypi.org/project/tether/) {__version__} "
        f"(`tether {stage}`) on {datetime.date.today().isoformat()}.", "",
        "## Training", "",
        f"- **Started from:** `{base}`" + (f" ({hub_base})" if hub_base and hub_base != base
                                          else ""),
        *[f"- **{k}:** {v}" for k, v in _data(stage, cfg)],
        f"- **Method:** {method}",
        f"- **Optimiser:** AdamW, lr {cfg.optim.lr:g} ({cfg.optim.schedule} schedule)",
        f"- **Steps:** {_last(metrics, 'step') or 'none logged'}",
    ]
    if cfg.model.lora.enabled:
        lines.append(f"- **LoRA:** r={cfg.model.lora.r}, alpha={cfg.model.lora.alpha:g}, "
                     f"modules {cfg.model.lora.target_modules}; "
                     + ("an unmerged adapter" if lora_adapter else "merged into the weights")
                     + ("; trained over the base in 4-bit NF4 (QLoRA)"
                        + ("" if lora_adapter else ", which these weights hold dequantised")
                        if cfg.model.lora.qlora else ""))
    lines += ["", "The full resolved configuration is `tether_config.yaml` beside this file.", ""]
    results = _results(metrics)
    if results:
        lines += ["## Results", "", "The last logged value of each metric "
                  "(`eval/` ones on held-out data):", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in results], ""]
    lines += ["## Use", "", _usage(stage, lora_adapter), ""]
    return "\n".join(meta + lines)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists()


def _data(stage: str, cfg: Any) -> list[tuple[str, str]]:
    if stage == "ppo":
        rows = [("Prompts", f"`{cfg.rollout.prompts}`")]
        if cfg.reward.model:
            rows.append(("Reward model", f"`{cfg.reward.model}`"))
        if cfg.reward.functions:
            rows.append(("Reward functions", f"`{cfg.reward.functions}`"))
        if not cfg.reward.model and not cfg.reward.functions:
            rows.append(("Reward", f"the gold scorer `{cfg.reward.gold}`"))
        return rows
    rows = [("Training data", f"`{cfg.data.train}`")]
    if cfg.data.eval:
        rows.append(("Held-out data", f"`{cfg.data.eval}`"))
    elif cfg.data.eval_fraction:
        rows.append(("Held-out data", f"{cfg.data.eval_fraction:.0%} of the training data"))
    return rows


def _method(stage: str, cfg: Any) -> str:
    if stage == "rm":
        objective = ("the Plackett-Luce likelihood of each ranking"
                     if cfg.reward.loss == "plackett_luce"
                     else "Bradley-Terry over every pair of each ranking")
        read = {"last": "the last token", "mean": "the mean token state", "token": "[CLS]",
                "mean_last": "the mean token state plus the last token's",
                "auto": "the last token (a causal LM) or the mean token state plus the last "
                        "token's (an encoder)"}[cfg.reward.pooling]
        return (f"{objective}, the reward read at {read}"
                + (f", label smoothing {cfg.reward.label_smoothing:g}"
                   if cfg.reward.label_smoothing else ""))
    if stage == "dpo":
        return f"`{cfg.dpo.loss}` loss, beta {cfg.dpo.beta:g}"
    if stage == "ppo":
        return f"`{cfg.algo}`, KL coefficient {cfg.ppo.kl_coef:g}"
    if stage == "kto":
        return (f"beta {cfg.kto.beta:g}, desirable weight {cfg.kto.desirable_weight:g}, "
                f"undesirable weight {cfg.kto.undesirable_weight:g}")
    return "next-token cross-entropy on the response tokens"


def _last(metrics: list[dict], key: str) -> Any:
    return next((row[key] for row in reversed(metrics) if key in row), None)


def _results(metrics: list[dict]) -> list[tuple[str, str]]:
    keys = [LOSS_TRAIN] if _last(metrics, LOSS_TRAIN) is not None else []
    keys += sorted({k for row in metrics for k in row if k.startswith(EVAL_PREFIX)})
    out = []
    for key in keys:
        value = _last(metrics, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value):
            out.append((key, f"{value:.4g}"))
    return out


def _usage(stage: str, lora_adapter: bool) -> str:
    if stage == "rm":
        return ("Score responses with `tether score reward_model=PATH input=rows.jsonl`, or "
                "optimise a policy against it with `tether ppo reward.model=PATH`. It loads in "
                "`transformers` as a sequence classifier with one output; tether's pooling and "
                "normalisation are in its config.json (`tether_*`).")
    if lora_adapter:
        return ("```python\nfrom peft import AutoPeftModelForCausalLM\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(PATH)\n```")
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "tokenizer = AutoTokenizer.from_pretrained(PATH)\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH)\n```")
