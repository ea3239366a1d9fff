"""What each command's config holds: one dataclass per command, and the sections they share.

Every leaf is declared with `option` (its default, help text and allowed values) and every
nested section with `section`; tether.config.loader reads those declarations to load, check
and document a config. A `validate` method checks what involves several fields, once the
whole config is loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tether.choices import (
    ATTENTION,
    BACKENDS,
    DEVICES,
    DPO_LOSSES,
    GENERATION_DTYPES,
    GROUP_METHODS,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LABEL_MODES,
    LOSS_TYPES,
    STRATEGIES,
)
from tether.errors import ConfigError
from tether.tasks.rewards import parse_functions


def option(default: Any, help: str, *, choices: Sequence | None = None,
           min: float | None = None, max: float | None = None) -> Any:
    """A config field with its help text and allowed values (which load_config checks)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str, **defaults: Any) -> Any:
    """A nested config; `defaults` override the section's own defaults for this stage."""
    return field(default_factory=lambda: cls(**defaults), metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# Sections shared by the stages
# ---------------------------------------------------------------------------------------------

# The fields of a data row that data.columns may map to a dataset's own column names.
DATA_FIELDS = ("prompt", "completion", "messages", "chosen", "rejected", "responses", "ranks",
               "label")
# Whether prompts are wrapped in the tokenizer's chat template (tether.data.tokenize).
CHAT_TEMPLATE = ("auto", "always", "never")
# Whether PPO reweights its policy gradient for the sampler's mismatch (rollout.is_correction).
# Not on/off: YAML reads those as booleans.
IS_CORRECTION = ("auto", "always", "never")
# Experiment trackers (train.report_to; tether.tracking).
REPORT_TO = ("tensorboard", "wandb", "mlflow")


@dataclass
class LoraConfig:
    enabled: bool = option(False, "Train LoRA adapters (peft) instead of all weights.")
    r: int = option(16, "LoRA rank.", min=1)
    alpha: float = option(32.0, "LoRA scaling numerator (scale = alpha / r).", min=0)
    dropout: float = option(0.0, "Dropout on the LoRA branch.", min=0, max=1)
    target_modules: str = option(
        "all-linear", "Modules to adapt: 'all-linear' or a comma list such as 'q_proj,v_proj'.")
    merge_on_save: bool = option(
        True, "Merge the adapter into the weights in final/ so plain transformers loads it; "
        "if false, final/ holds a peft adapter.")
    qlora: bool = option(
        False, "QLoRA: load the frozen base's linear layers in 4-bit NF4 (bitsandbytes, double "
        "quantisation, bf16 compute) and train the adapters over them: the base takes about a "
        "quarter of its bf16 memory. Needs enabled=true and `pip install bitsandbytes`; for "
        "policies (sft, dpo, kto, grpo, rloo, ppo with ppo.value_model=head). final/ holds "
        "the dequantised base with the adapter merged in: the model that was trained.")


@dataclass
class ModelConfig:
    name: str = option(
        "smollm2-135m", "Model to start from: an embedded name (smollm2-135m; tiny, a random "
        "~1M-parameter model for tests; for a reward model also minilm-l6, an encoder), a local "
        "Hugging Face directory (e.g. a previous run's final/), or a hub id (needs a network).")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters.")
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass: less memory, ~30% more compute.")
    attention: str = option(
        "sdpa", "Attention implementation, all PyTorch's own: sdpa (scaled_dot_product_attention, "
        "which picks a fused kernel on a GPU), flex_attention (FlexAttention: packed rows "
        "(train.max_tokens_per_microbatch) skip the blocks their mask leaves empty; compiled "
        "on first use; trains on a CUDA GPU only) or eager. Whatever a model directory's "
        "config.json asks for (e.g. flash_attention_2, which transformers would fetch from the "
        "Hub) is replaced by this.", choices=ATTENTION)
    hub_kernels: bool = option(
        False, "Let transformers swap in kernels downloaded from the Hugging Face Hub "
        "(`use_kernels`; it needs a network and runs remote code). Off: every model tether "
        "loads runs PyTorch's own kernels, offline.")


@dataclass
class DataConfig:
    train: str = option("", "Training data: .jsonl, .json, .parquet, a `datasets` directory, "
                            "a hub dataset name, or for preferences a labeling database "
                            "(labels.db or labels.db#project: its labels exported as `tether "
                            "label export` does). Required.")
    eval: str = option("", "Held-out data in the same formats. Empty: hold out eval_fraction "
                           "of train.")
    eval_fraction: float = option(0.05, "Share of train held out for eval when `eval` is empty.",
                                  min=0, max=0.5)
    max_length: int = option(512, "Longest tokenised prompt + response, in tokens.", min=8)
    truncation: str = option(
        "prompt_left", "What to do with an example longer than max_length. prompt_left: drop "
        "tokens from the start of the prompt (keeping at least a quarter of max_length of it), "
        "then cut the end of the response; drop: skip the example (counted and reported).",
        choices=["prompt_left", "drop"])
    chat_template: str = option(
        "auto", "Wrap prompts in the tokenizer's chat template: auto (if it has one), always, "
        "never (plain text: prompt then response), or a Jinja file (e.g. my_chat.jinja, in "
        "transformers' chat-template format) that replaces the tokenizer's own: final/ keeps "
        "it, so later stages that start from this model use it too.")
    skip_bad_rows: bool = option(
        False, "Skip malformed rows (counted and logged) instead of stopping with an error.")
    allow_empty_responses: bool = option(
        False, "Accept responses (completion, chosen, rejected, responses) that are empty or "
        "only whitespace, e.g. samples of a policy that ended at once. Off: such a row is an "
        "error naming its file:line, as a broken export or a misnamed field usually gives them.")
    split: str = option(
        "train", "The split of `train` to read, where it has several (a hub dataset, a "
        "`datasets` directory, a JSON object of lists). A split it lacks is an error naming "
        "those it has.")
    eval_split: str = option(
        "test", "The split of `eval` to read, where it has several (never `split` in its place: "
        "a split it lacks is an error naming those it has).")
    subset: str = option(
        "", "The configuration (subset) of a hub dataset or a directory of data files, e.g. "
        "'harmless-base' of Anthropic/hh-rlhf. Empty: its default.")
    columns: dict[str, str] = option(
        {}, "Which column holds each field tether reads, where a dataset names them otherwise, "
        "e.g. {prompt: question, chosen: good} or data.columns.prompt=question. A row without "
        "a mapped column is a bad row naming the columns it has.", choices=DATA_FIELDS)


@dataclass
class OptimConfig:
    lr: float = option(2e-5, "Peak learning rate (AdamW).", min=0)
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (matrices only).", min=0)
    beta1: float = option(0.9, "AdamW beta1.", min=0, max=1)
    beta2: float = option(0.999, "AdamW beta2.", min=0, max=1)
    eps: float = option(1e-8, "AdamW epsilon.", min=0)
    schedule: str = option(
        "cosine", "Learning-rate decay after warmup, to final_lr_fraction * lr at the last step.",
        choices=["cosine", "linear", "constant"])
    final_lr_fraction: float = option(
        0.0, "Where cosine and linear decay end, as a fraction of lr (0: at zero).", min=0, max=1)
    warmup_steps: int = option(0, "Linear warmup steps from 0 to lr.", min=0)
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this; 0 disables.",
                                  min=0)


def device_option() -> str:
    return option("auto", "Where the models run: auto (a CUDA GPU when there is one, else the "
                          "CPU), cuda or cpu.", choices=DEVICES)


@dataclass
class TrainConfig:
    """The loop as every trainer (sft, rm, dpo, ppo) reads it. Each command's train section
    adds the keys its own loop reads, so none offers a key it ignores; the keys of another
    loop that a user may reach for are in the section's `instead`, which the unknown-key
    error quotes."""

    strategy: str = option(
        "ddp", "Under torchrun: ddp (every process holds the whole model) or fsdp2 (parameters, "
        "gradients and optimizer state sharded over the processes). Changes memory, not the "
        "result.", choices=STRATEGIES)
    device: str = option(
        "auto", "Where to train: auto (a CUDA GPU when there is one, else the CPU), cuda or "
        "cpu. Under torchrun each process takes the GPU of its LOCAL_RANK, and the processes "
        "talk over NCCL (gloo on the CPU).", choices=DEVICES)
    epochs: int = option(
        1, "Passes over the training data (ignored if max_steps > 0). 0: auto, as many as give "
        "at least 70 optimizer steps, at most 4 (small data still gets enough updates, large "
        "data one pass).", min=0)
    max_steps: int = option(0, "Optimizer steps to run; 0 means `epochs` full passes.", min=0)
    eval_every: int = option(50, "Evaluate every N steps (and always at the end); 0: only at "
                                 "the end.", min=0)
    save_every: int = option(100, "Write a resumable checkpoint every N steps (and at the "
                                  "end); 0: only at the end.", min=0)
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep.", min=1)
    log_every: int = option(1, "Write metrics every N steps.", min=1)
    bf16: bool = option(False, "bf16 autocast for forward/backward (weights and optimizer "
                               "stay fp32).")
    bf16_weights: bool = option(
        False, "With bf16: hold the trained model's weights (and frozen models) in bf16, with "
        "fp32 master copies and AdamW state in the optimizer, so no forward casts them. "
        "Faster where casts dominate (a GPU at small batches); the update is still fp32, and "
        "checkpoints and final/ hold the fp32 masters. Not with strategy=fsdp2.")
    compile: bool = option(
        False, "torch.compile the model (sft, rm, dpo and PPO's update). Pays off on a GPU "
        "for long runs of same-shaped batches; the first steps are slower while it compiles.")
    seed: int = option(0, "Seed for initialisation, data order and sampling.")
    report_to: list[str] = option(
        [], "Experiment trackers that also receive metrics.jsonl's metrics (same names and "
        "steps; the config as hyperparameters; rank 0 under torchrun), e.g. "
        "train.report_to=[tensorboard,wandb]. tensorboard: event files in RUN_DIR/tensorboard "
        "(pip install tensorboard). wandb: a W&B run in RUN_DIR/wandb, offline unless an API "
        "key is set (pip install wandb). mlflow: a run at MLFLOW_TRACKING_URI, else in "
        "RUN_DIR/mlflow.db (pip install mlflow). A resumed run continues the same curves.",
        choices=REPORT_TO)


@dataclass
class BatchTrainConfig(TrainConfig):
    """The loop of sft, rm and dpo, which step through their data in batches of items (ppo's
    batches are rollout.batch_size, ppo.minibatch_size and ppo.micro_batch_size)."""

    batch_size: int = option(
        8, "Items per optimizer step, in all: sequences for sft; prompts for rm and dpo, each "
        "with all its responses (a pair row or a K-way ranking is one item, not 2 or K "
        "sequences). Under torchrun each of N processes takes batch_size / N of them.", min=1)
    micro_batch_size: int = option(
        8, "Items (as batch_size counts them) per forward pass; batch_size / micro_batch_size "
        "gradient accumulation steps. Changes memory, not the result.", min=1)
    max_tokens_per_microbatch: int = option(
        0, "Padding-free packing: >0 packs a micro-batch's sequences (or shared-prompt groups) "
        "into one row of at most this many tokens, each attending to itself only, instead of "
        "micro_batch_size padded rows; 0: off. Must hold the longest sequence (or group). "
        "Changes speed and memory, not the result.", min=0)

    def check_accumulation(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"train.batch_size ({self.batch_size}) must be a multiple of "
                              f"train.micro_batch_size ({self.micro_batch_size})")


def logits_chunk_option() -> int:
    """train.logits_chunk, in the loops of a model with an output head over the vocabulary
    (sft, dpo, ppo; a reward model has a scalar head)."""
    return option(
        4096, "Tokens per chunk of the output head and log-softmax: logits of at most this "
        "many tokens exist at once (forward and backward), never [tokens, vocab] for a whole "
        "micro-batch; 0: all at once. Changes memory, not the result.", min=0)


def share_prompt_option(where: str = "") -> bool:
    """train.share_prompt, in the loops that read several responses to one prompt (rm, dpo,
    ppo's grpo and rloo); `where` says when it applies, if not always."""
    return option(
        True, f"The responses of one prompt packed into one row with the prompt read once (a "
        f"block attention mask), not a row per response{where}. The same results to float "
        f"rounding, fewer tokens through the model.")


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


@dataclass
class SFTTrainConfig(BatchTrainConfig):
    logits_chunk: int = logits_chunk_option()

    instead: ClassVar[dict[str, str]] = {
        "share_prompt": "sft has one response per prompt: no prompt to share"}


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations; the loss covers response tokens only."""

    run_dir: str = option("runs/sft", "Directory for config.yaml, metrics.jsonl, checkpoints/ "
                                      "and final/.")
    resume: bool = option(False, "Continue from the newest checkpoint in run_dir.")
    model: ModelConfig = section(ModelConfig, "Model.")
    data: DataConfig = section(DataConfig, "Demonstrations.")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.")
    train: SFTTrainConfig = section(SFTTrainConfig, "Loop.")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is required: the demonstrations to train on "
                              "(e.g. data.train=examples/sft/reviews.jsonl)")
        self.train.check_accumulation()


@dataclass
class SampleConfig:
    """Sample K responses per prompt from a policy: the candidates people (or a simulated
    labeler) rank next."""

    policy: str = option("smollm2-135m", "Model to sample from: an embedded name, a local HF "
                                         "directory (e.g. an SFT run's final/), or a hub id.")
    prompts: str = option("", "Prompts: rows with a 'prompt' (string or messages), in any "
                              "supported data format. A dataset of several splits or other "
                              "column names: SOURCE?split=test&prompt=question. Required.")
    num_prompts: int = option(0, "Use only the first N prompts; 0: all.", min=0)
    output: str = option("runs/sample/candidates.jsonl", "Where to write candidates.jsonl.")
    k: int = option(4, "Responses per prompt.", min=1)
    temperature: float = option(1.0, "Sampling temperature.", min=0.01)
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens with this "
                               "much probability.", min=0.01, max=1)
    max_new_tokens: int = option(48, "Longest response, in tokens.", min=1)
    max_prompt_length: int = option(256, "Prompts longer than this (in tokens) lose their "
                                         "beginning.", min=1)
    batch_size: int = option(8, "Prompts per generate call (each with its k responses).",
                             min=1)
    chat_template: str = option("auto", "Wrap prompts in the tokenizer's chat template.",
                                choices=CHAT_TEMPLATE)
    backend: str = option("auto", "Generation backend: static (tether's static-cache decode "
                                  "loop on a copy of the policy; on 2 CPU cores about 1.9x hf "
                                  "in fp32, 2.7x with bf16), hf (transformers generate with a "
                                  "KV cache), vllm (GPUs only) or auto: static on a CPU, hf on "
                                  "a GPU.", choices=BACKENDS)
    bf16: bool = option(False, "Generate in bf16: hf under autocast, static on a bf16 copy.")
    device: str = device_option()
    skip_bad_rows: bool = option(False, "Skip malformed prompt rows instead of stopping.")
    seed: int = option(0, "Seed: the same seed and batch_size give the same samples.")

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts is required: a file of {\"prompt\": ...} rows")


@dataclass
class SimulateLabelsConfig:
    """A simulated labeler: noisy Bradley-Terry choices from a gold scoring function."""

    candidates: str = option("", "candidates.jsonl from `tether sample`. Required.")
    output: str = option("runs/labels/labels.jsonl", "Where to write the labels.")
    gold: str = option("sentiment", "Gold scorer: a built-in task name (sentiment, answers, "
                                    "arithmetic) or 'module:function' taking a list of texts, "
                                    "or TRL's keyword form f(prompts=, completions=, **columns) "
                                    "given the candidates' prompts and other fields.")
    format: str = option("rankings", "rankings: one K-way ranking per prompt (Plackett-Luce "
                                     "on gold / temperature); pairs: chosen/rejected pairs; "
                                     "thumbs: a thumbs up or down on every response, as "
                                     "{prompt, completion, label} rows for `tether kto`.",
                         choices=["rankings", "pairs", "thumbs"])
    pairs_per_prompt: int = option(1, "With format=pairs: pairs drawn per prompt; 0: all "
                                      "C(K, 2).", min=0)
    temperature: float = option(
        0.5, "Noise: P(a over b) = sigmoid((g_a - g_b) / temperature); with format=thumbs, "
        "P(up) = sigmoid((g - threshold) / temperature). On the sentiment task 0.5 gives about "
        "25% disagreement with gold.", min=1e-6)
    threshold: float | None = option(
        None, "format=thumbs: the gold score at which a response is as likely up as down. "
        "null: the median gold score of the rated responses, so about half are thumbs up: "
        "KTO's default weights (1 and 1) then meet the paper's class-balance rule, and the "
        "labels carry as much information as a thumb can.")
    flip_rate: float = option(
        0.0, "Extra label noise: a pair's label is flipped with this probability (rankings: the "
        "whole order is reversed, so each implied pair flips with it; thumbs: each thumb).",
        min=0, max=1)
    seed: int = option(0, "Seed for the labeler's noise.")

    def validate(self) -> None:
        if not self.candidates:
            raise ConfigError("candidates is required: the output of `tether sample`")
        if self.threshold is not None and self.format != "thumbs":
            raise ConfigError(f"threshold is for format=thumbs, not format={self.format}")


# A `gold` key names a gold scorer (label simulate, eval, ppo's reward, dpo's sampled_eval, the
# pipeline's task); the file of gold items to mix into labeling has a name of its own, which
# a config written for the old one is pointed to.
GOLD_ITEMS_RENAMED = {"gold": "renamed gold_items: a `gold` key names a gold scorer",
                      "gold_rate": "renamed gold_items_rate"}

LABEL_DB_HELP = ("The labeling database: a file path (SQLite, created if missing) or a "
                 "SQLAlchemy URL such as postgresql://user@host/labels for a team.")


@dataclass
class LabelServeConfig:
    """Serve the labeling web app."""

    db: str = option("runs/label/labels.db", LABEL_DB_HELP)
    host: str = option("127.0.0.1", "Address to listen on; 0.0.0.0 lets other machines in "
                                    "(put it behind HTTPS then: tokens travel in cookies).")
    port: int = option(8000, "Port to listen on.", min=1, max=65535)


@dataclass
class LabelImportConfig:
    """Import candidates (to compare or rate) into a new labeling project, or add them to one."""

    db: str = option("runs/label/labels.db", LABEL_DB_HELP)
    project: str = option("", "Name of the new project. Required.")
    candidates: str = option("", "candidates.jsonl from `tether sample`: {prompt, responses} "
                                 "rows with K >= 2. Required unless ratings are given.")
    gold_items: str = option("", "Gold items: preference rows with a known answer (pairs or "
                                 "rankings), or responses known good or bad ({prompt, "
                                 "completion, label: true|false}), mixed in to measure each "
                                 "annotator's accuracy.")
    overlap: int = option(1, "How many different annotators label each item.", min=1)
    gold_items_rate: float = option(0.1, "Share of the items served that are gold items (when "
                                         "there are any).", min=0, max=1)
    lease_minutes: float = option(30.0, "An item shown but not answered within this time "
                                        "goes to someone else.", min=0.1)
    reward_model: str = option(
        "", "Active sampling: reward model directories (comma-separated). One: items whose "
        "responses it scores closest are served first; several: items whose margins they "
        "disagree on most.")
    batch_size: int = option(16, "Sequences per reward-model forward pass.", min=1)
    mode: str = option("compare", "What the candidates become. compare: each row's responses "
                                  "are ranked side by side; rate: each response is shown alone "
                                  "and rated good or bad (thumbs, exported as KTO rows); both: "
                                  "each row compared, and each of its responses rated.",
                       choices=LABEL_MODES)
    ratings: str = option("", "Responses to rate, as {prompt, completion} rows; a row with "
                              "label: true|false is a gold rating (a known good or bad one).")
    guidelines: str = option("", "A Markdown file of labeling guidelines, shown to annotators "
                                 "on the labeling page (with add=true: replaces the old ones).")
    add: bool = option(False, "Add the items to the existing project (the next round of "
                              "labeling); its overlap, gold rate and lease stay as they were.")

    instead: ClassVar[dict[str, str]] = GOLD_ITEMS_RENAMED

    def validate(self) -> None:
        if not self.project or not (self.candidates or self.ratings):
            raise ConfigError("project is required, and candidates or ratings (or both)")


@dataclass
class LabelAnnotatorConfig:
    """Create an annotator and print their access token."""

    db: str = option("runs/label/labels.db", LABEL_DB_HELP)
    name: str = option("", "The annotator's name (letters, digits, _ . -). Required.")
    admin: bool = option(False, "Admin role: import, export and statistics through the API.")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("name is required")


@dataclass
class LabelStatsConfig:
    """Quality of a project's labels."""

    db: str = option("runs/label/labels.db", LABEL_DB_HELP)
    project: str = option("", "The project; empty: the database's only project.")
    output: str = option("", "Also write the statistics as JSON to this file.")


@dataclass
class LabelExportConfig:
    """Export a project's labels as preference rows."""

    db: str = option("runs/label/labels.db", LABEL_DB_HELP)
    project: str = option("", "The project; empty: the database's only project.")
    output: str = option("runs/label/labels.jsonl", "Where to write the rows (.jsonl).")
    aggregate: str = option("majority", "majority: one row per item, responses ordered by "
                                        "their mean rank across annotators; all: one row per "
                                        "label, with the annotator's name.",
                            choices=["majority", "all"])
    min_gold_accuracy: float = option(0.0, "Leave out annotators whose accuracy on gold items "
                                           "is below this.", min=0, max=1)
    format: str = option(
        "preferences", "preferences: pairs and rankings, for `tether rm` and `tether dpo` (a "
        "project of ratings alone is an error); kto: {prompt, completion, label: true|false} "
        "rows, one per judged response: ratings as given, a pair's chosen true and rejected "
        "false (as TRL's unpairing), a K-way ranking's best response(s) true and worst false "
        "(the middle ones left out).", choices=["preferences", "kto"])


@dataclass
class RewardConfig:
    backbone: str = option(
        "auto", "policy: the causal LM with its unembedding replaced by a scalar head "
        "(InstructGPT); encoder: a bidirectional encoder (e.g. minilm-l6) with a scalar head; "
        "auto: by the model's architecture.", choices=["auto", "policy", "encoder"])
    pooling: str = option(
        "auto", "What the scalar head reads. last: the hidden state at the last token, a causal "
        "LM's last response token (InstructGPT) or the [SEP] that closes an encoder's response, "
        "which sees how long the response is and how it ends; mean: the mean of an encoder's "
        "token states, as sentence encoders such as all-MiniLM were trained, which holds what "
        "was said but dilutes length and ending; mean_last: the sum of the two (encoders); "
        "token: an encoder's own head on [CLS], what plain transformers computes (a causal LM: "
        "last); auto: mean_last for an encoder, last for a causal LM (measured on both "
        "built-in tasks: README, Reward models).",
        choices=["auto", "last", "mean", "mean_last", "token"])
    head_lr: float = option(
        1e-3, "Learning rate of the freshly initialised scalar head (the pretrained body "
        "trains at optim.lr): at the body's rate the head hardly moves from its random "
        "direction in a few hundred steps. 0: optim.lr.", min=0)
    loss: str = option(
        "bradley_terry", "bradley_terry: -log sigmoid(r_better - r_worse) over every pair of a "
        "ranking (InstructGPT), averaged per prompt; plackett_luce: the likelihood of the whole "
        "order (the best chosen from all K by softmax(r), the next from the rest, ...), the "
        "exact model of a labeler who ranks that way. Equal for pairs (README, Reward models: "
        "what each buys).", choices=["bradley_terry", "plackett_luce"])
    margin: float = option(0.0, "Margin in -log sigmoid(r_better - r_worse - margin) "
                                "(bradley_terry).")
    label_smoothing: float = option(
        0.0, "(bradley_terry) Take each label as flipped with this probability: -(1-eps) log "
        "sigmoid(d) - eps log sigmoid(-d), so no pair pushes the reward gap past "
        "log((1-eps)/eps).", min=0, max=0.49)
    center_coef: float = option(0.0, "Reward centering: this times the mean squared reward "
                                     "is added to the loss.", min=0)
    normalize: str = option(
        "mean", "After training, fit a bias so the reference responses score mean 0 "
        "(mean_std: and a gain so they have std 1); none: leave raw scores.",
        choices=["none", "mean", "mean_std"])
    reference: str = option(
        "", "Reference responses for normalisation ({prompt, response} rows, or candidates). "
        "Empty: the training set's responses (the SFT policy's own samples).")


@dataclass
class RMTrainConfig(BatchTrainConfig):
    share_prompt: bool = share_prompt_option(
        " (with a causal-LM backbone; an encoder reads a row per response)")
    keep_best: bool = option(
        False, "Keep the weights of the held-out evaluation (every eval_every steps, and the "
        "last) with the lowest held-out loss, not the last step's: final/ and the final "
        "evaluation are that step's. Needs held-out data (data.eval or data.eval_fraction); "
        "the held-out figures then come from the split that chose the step, so they flatter "
        "it a little.")
    patience: int = option(
        0, "With keep_best: stop once this many held-out evaluations in a row bring no new "
        "best; 0: run every step.", min=0)

    instead: ClassVar[dict[str, str]] = {
        "logits_chunk": "a reward model's head gives one score, not logits over the vocabulary"}


@dataclass
class RMConfig:
    """Train a reward model on preference pairs or K-way rankings (Bradley-Terry)."""

    run_dir: str = option("runs/rm", "Directory for config.yaml, metrics.jsonl, checkpoints/ "
                                     "and final/.")
    resume: bool = option(False, "Continue from the newest checkpoint in run_dir.")
    model: ModelConfig = section(ModelConfig, "Backbone to start from (usually the SFT model).")
    reward: RewardConfig = section(RewardConfig, "Reward head, loss options, normalisation.")
    data: DataConfig = section(DataConfig, "Preferences: {prompt, chosen, rejected} pairs or "
                                           "{prompt, responses, ranks} rankings.")
    optim: OptimConfig = section(
        OptimConfig, "Optimizer and schedule: the body at lr, the fresh head at "
        "reward.head_lr, a short warmup, and a cosine decay that ends at a tenth of lr, not 0 "
        "(measured on both built-in tasks: README, Reward models; lr=1e-4 helped one and hurt "
        "the other).", lr=5e-5, warmup_steps=5,
        final_lr_fraction=0.1)
    train: RMTrainConfig = section(
        RMTrainConfig, "Loop; batch_size (and micro_batch_size) count prompts, not sequences: "
        "one item is a row's prompt with all its responses, so a K-way ranking (K sequences) "
        "is one item and a pair row (2 sequences) is one item. epochs=0 (auto): one pass over "
        "large data, as InstructGPT (more overfits), up to 4 over small data so that a few "
        "hundred prompts still give at least 70 optimizer steps (3 passes over 200 prompts).",
        batch_size=8, micro_batch_size=4, eval_every=25, epochs=0)

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is required: preference pairs or rankings")
        if self.model.lora.qlora:
            raise ConfigError("model.lora.qlora is for policies (sft, dpo, kto, ppo); a reward "
                              "model trains its backbone with LoRA in full precision: set "
                              "model.lora.qlora=false")
        if self.reward.loss == "plackett_luce" and (self.reward.margin
                                                    or self.reward.label_smoothing):
            raise ConfigError("reward.margin and reward.label_smoothing are defined for "
                              "reward.loss=bradley_terry, not plackett_luce")
        if (self.train.keep_best or self.train.patience) and not (
                self.data.eval or self.data.eval_fraction):
            raise ConfigError("train.keep_best and train.patience choose by the held-out loss: "
                              "give data.eval or data.eval_fraction > 0")
        if self.train.patience and not self.train.keep_best:
            raise ConfigError("train.patience stops at the best held-out evaluation so far, "
                              "which train.keep_best keeps: set train.keep_best=true too")
        self.train.check_accumulation()


@dataclass
class DPOLossConfig:
    loss: str = option(
        "sigmoid", "sigmoid: DPO (Rafailov et al. 2023; with label_smoothing, conservative "
        "DPO); ipo: IPO (Azar et al. 2023); hinge: SLiC (Zhao et al. 2023); robust: robust DPO "
        "for noisy labels (Chowdhury et al. 2024).", choices=DPO_LOSSES)
    beta: float = option(0.1, "Strength of the KL regularisation to the reference: the implicit "
                              "reward is beta * (log pi - log ref). For ipo, the paper's tau.",
                         min=1e-6)
    label_smoothing: float = option(
        0.0, "Assumed probability that a label is flipped (sigmoid: conservative DPO; robust: "
        "rDPO, must be < 0.5). Not used by ipo and hinge.", min=0, max=0.5)
    sft_weight: float = option(
        0.0, "RPO (Pang et al. 2024): add this times the per-token NLL of the chosen response.",
        min=0)


@dataclass
class ReferenceConfig:
    model: str = option("", "The frozen reference policy. Empty: the model training starts "
                            "from (model.name), as in the DPO paper.")
    precompute: bool = option(
        True, "Compute the reference log-probs of every training and eval response once, before "
        "training (cached in run_dir/ref_logprobs.pt), and free the reference model: less "
        "memory, and no reference forward in the loop. false: run the reference every step.")
    share_base: bool = option(
        True, "With LoRA and the starting model as reference: use the policy itself with its "
        "adapter switched off, so no second copy of the model is loaded.")


@dataclass
class SampledEvalConfig:
    prompts: str = option("", "Held-out prompts: every train.eval_every steps the policy samples "
                              "one response to each, scored for gold, proxy and KL to the "
                              "reference (logged as eval/gold, eval/proxy, eval/kl). Empty: off.")
    num_prompts: int = option(32, "Use the first N of them.", min=1)
    gold: str = option("", "Gold scorer for eval/gold: a built-in task (sentiment) or "
                           "'module:function'. Empty: none.")
    reward_model: str = option("", "Reward model for eval/proxy (a `tether rm` final/ "
                                   "directory). Empty: none.")
    max_new_tokens: int = option(48, "Longest sampled response, in tokens.", min=1)
    max_prompt_length: int = option(256, "Prompts longer than this (in tokens) lose their "
                                         "beginning.", min=1)


@dataclass
class DPOTrainConfig(BatchTrainConfig):
    logits_chunk: int = logits_chunk_option()
    share_prompt: bool = share_prompt_option()


@dataclass
class DPOConfig:
    """Train a policy directly on preference pairs or rankings (DPO, IPO, SLiC, robust DPO)."""

    run_dir: str = option("runs/dpo", "Directory for config.yaml, metrics.jsonl, checkpoints/ "
                                      "and final/.")
    resume: bool = option(False, "Continue from the newest checkpoint in run_dir.")
    model: ModelConfig = section(ModelConfig, "Policy to start from (usually the SFT model).")
    dpo: DPOLossConfig = section(DPOLossConfig, "The preference loss.")
    ref: ReferenceConfig = section(ReferenceConfig, "The frozen reference policy.")
    data: DataConfig = section(DataConfig, "Preferences: {prompt, chosen, rejected} pairs or "
                                           "{prompt, responses, ranks} rankings (each ranking "
                                           "stands for all its pairs).")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.", lr=1e-6,
                                 warmup_steps=5)
    train: DPOTrainConfig = section(
        DPOTrainConfig, "Loop; batch_size and micro_batch_size count prompts (each with all "
        "its responses).", batch_size=8, micro_batch_size=4, eval_every=25)
    sampled_eval: SampledEvalConfig = section(
        SampledEvalConfig, "Optional: sample the policy on held-out prompts during training, "
        "so its gold reward can be plotted against its KL to the reference (a separate "
        "reference model is then kept in memory).")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is required: preference pairs or rankings")
        self.train.check_accumulation()
        if self.sampled_eval.prompts and not (self.sampled_eval.gold
                                              or self.sampled_eval.reward_model):
            raise ConfigError("sampled_eval.prompts needs sampled_eval.gold or "
                              "sampled_eval.reward_model: something to score the samples with")
        if self.dpo.label_smoothing and self.dpo.loss in ("ipo", "hinge"):
            raise ConfigError(f"dpo.label_smoothing is not defined for dpo.loss={self.dpo.loss}; "
                              f"use sigmoid (conservative DPO) or robust")
        if self.dpo.loss == "robust" and self.dpo.label_smoothing >= 0.5:
            raise ConfigError("dpo.loss=robust needs dpo.label_smoothing < 0.5")


@dataclass
class KTOLossConfig:
    beta: float = option(0.1, "Strength of the KL regularisation to the reference, as DPO's "
                              "beta: the implicit reward is beta * (log pi - log ref).",
                         min=1e-6)
    desirable_weight: float = option(
        1.0, "lambda_D, the weight of thumbs-up rows. The KTO paper recommends lambda_D * n_D "
        "/ (lambda_U * n_U) in [1, 4/3] for n_D thumbs-up and n_U thumbs-down rows: with "
        "fewer ups than downs (say 1:4), raise this (to 4-5.3) or lower undesirable_weight. "
        "kto warns when the training data's counts break the rule.", min=1e-6)
    undesirable_weight: float = option(1.0, "lambda_U, the weight of thumbs-down rows.",
                                       min=1e-6)


@dataclass
class KTOTrainConfig(BatchTrainConfig):
    logits_chunk: int = logits_chunk_option()
    share_prompt: bool = share_prompt_option(
        " (kto: a row's completion and the other row's completion paired with its prompt "
        "for the reference point, in the reference model's pass)")


@dataclass
class KTOConfig:
    """Train a policy on unpaired thumbs up / down (KTO, Ethayarajh et al. 2024)."""

    run_dir: str = option("runs/kto", "Directory for config.yaml, metrics.jsonl, checkpoints/ "
                                      "and final/.")
    resume: bool = option(False, "Continue from the newest checkpoint in run_dir.")
    model: ModelConfig = section(ModelConfig, "Policy to start from (usually the SFT model).")
    kto: KTOLossConfig = section(KTOLossConfig, "The KTO loss.")
    ref: ReferenceConfig = section(ReferenceConfig, "The frozen reference policy (its "
                                                    "log-probs of each row's completion and "
                                                    "of its mismatched pair).")
    data: DataConfig = section(
        DataConfig, "Thumbs up / down: {prompt, completion, label} rows (TRL's unpaired "
        "format; label true or 1: desirable, false or 0: undesirable; prompt and completion "
        "as text or chat messages). Both labels must occur.")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.", lr=1e-6,
                                 warmup_steps=5)
    train: KTOTrainConfig = section(
        KTOTrainConfig, "Loop; batch_size and micro_batch_size count rows. The reference point "
        "is averaged over the whole batch (at least 2 rows), however it is split.",
        batch_size=8, micro_batch_size=4, eval_every=25)
    sampled_eval: SampledEvalConfig = section(
        SampledEvalConfig, "Optional: sample the policy on held-out prompts during training, "
        "so its gold reward can be plotted against its KL to the reference (a separate "
        "reference model is then kept in memory).")

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is required: {prompt, completion, label} rows")
        self.train.check_accumulation()
        if self.train.batch_size < 2:
            raise ConfigError("train.batch_size must be at least 2: KTO's reference point pairs "
                              "each prompt with another row's completion of the batch")
        if self.sampled_eval.prompts and not (self.sampled_eval.gold
                                              or self.sampled_eval.reward_model):
            raise ConfigError("sampled_eval.prompts needs sampled_eval.gold or "
                              "sampled_eval.reward_model: something to score the samples with")


@dataclass
class RolloutConfig:
    prompts: str = option("", "Prompts to train on: rows with a 'prompt', in any supported data "
                              "format. A dataset of several splits or other column names: "
                              "SOURCE?split=test&prompt=question. Required.")
    batch_size: int = option(16, "Prompts per iteration (each sampled group_size times).", min=1)
    group_size: int = option(1, "Samples per prompt. grpo and rloo compare the samples of a "
                                "prompt with each other, so need at least 2.", min=1)
    max_new_tokens: int = option(40, "Longest response, in tokens.", min=1)
    temperature: float = option(1.0, "Sampling temperature; log-probs use the same one.",
                                min=0.01)
    top_p: float = option(1.0, "Nucleus sampling (1: off). Below 1 the samples no longer come "
                               "from the distribution the log-probs describe.", min=0.01, max=1)
    max_prompt_length: int = option(128, "Prompts longer than this (in tokens) lose their "
                                         "beginning.", min=1)
    stop_string: str = option("", "Cut each response after the first occurrence of this text "
                                  "(it then counts as finished). Empty: only EOS ends one.")
    chat_template: str = option("auto", "Wrap prompts in the tokenizer's chat template.",
                                choices=CHAT_TEMPLATE)
    backend: str = option(
        "auto", "Generation backend: static (tether's decode loop over a static KV cache, on a "
        "copy of the policy in rollout.dtype with any LoRA adapter merged in; on 2 CPU cores "
        "about 1.9x hf's tokens/s in fp32 and 2.7x in bf16, see BENCHMARKS.md), hf "
        "(transformers generate on the policy itself), vllm (GPUs only) or auto: static on a "
        "CPU, hf on a GPU (static is not measured there yet) or under train.strategy=fsdp2.",
        choices=BACKENDS)
    dtype: str = option(
        "auto", "Precision of the static backend's copy of the policy. auto: the trainer's "
        "(bf16 with train.bf16, else fp32), in which static draws hf's tokens up to float "
        "rounding. bf16 with an fp32 trainer reads half the bytes per decode step; its samples "
        "then come from a slightly different policy than the one trained, which "
        "rollout.is_correction corrects for (fp32 on a CPU without bf16 instructions, no "
        "avx512_bf16 or AMX, where bf16 matmuls are slow).",
        choices=GENERATION_DTYPES)
    compile: bool = option(
        False, "static backend: torch.compile its decode step (on a GPU as CUDA graphs). It "
        "costs a compilation per batch shape; on 2 CPU cores it was slower than eager.")
    is_correction: str = option(
        "auto", "Truncated importance sampling (Yao et al. 2025): weight each response "
        "token's policy-gradient term by min(pi_trainer / pi_sampler, is_cap), the trainer's "
        "probability of the token over the one the backend sampled it with. A backend with "
        "other kernels or another precision (vllm) samples from a slightly different policy "
        "than the one trained, which makes every rollout a little off-policy; this corrects "
        "for it. auto: on when the backend's numerics are not the trainer's (vllm; hf runs the "
        "policy itself) and it returns its log-probs (vllm: at top_p = 1 only); always (an "
        "error where the backend returns none); never. The mismatch itself (mismatch/*) is "
        "logged whenever the backend returns its log-probs.", choices=IS_CORRECTION)
    is_cap: float = option(
        2.0, "Upper bound C of the importance weights of rollout.is_correction: a token the "
        "sampler found much less likely than the trainer does weighs at most this much, which "
        "bounds the variance the weights add (2: TRL's vllm_importance_sampling_cap).", min=1)


@dataclass
class PPORewardConfig:
    model: str = option("", "Reward model directory (a `tether rm` run's final/): the proxy "
                            "that is optimised. Empty: optimise the functions, else the gold "
                            "score.")
    model_weight: float = option(1.0, "Weight of the reward model's score in the score "
                                      "optimised, when there are reward functions too.")
    functions: str | list[str] = option(
        "", "Reward functions optimised (with the reward model's score, if any), as a list or "
        "one comma-separated string of NAME or WEIGHT*NAME (weight 1 if not given), e.g. "
        "'arithmetic, 0.2*arithmetic:format_reward'. A NAME is a built-in task (its gold "
        "scorer), TASK:function, or 'module:function': a function of the response texts, or "
        "TRL's f(prompts=, completions=, **columns) receiving the prompt rows' other fields "
        "(e.g. answer=[...]). The score optimised is model_weight * proxy + the weighted sum; "
        "each function is logged as reward/<its name>. Empty: none.")
    gold: str = option("sentiment", "Gold scorer (a built-in task or 'module:function', in "
                                    "either form reward.functions takes): logged next to the "
                                    "proxy and evaluated on held-out prompts (eval/gold); "
                                    "optimised when there is neither a reward model nor a "
                                    "function. Empty: none.")
    no_eos_score: float = option(
        -1.0, "Score given instead to a response that hit max_new_tokens without EOS.")
    penalize_no_eos: bool = option(True, "Apply no_eos_score (InstructGPT-style penalty).")
    no_eos_min_finished: float = option(
        0.5, "Apply the no-EOS penalty only if at least this share of the run's first rollout "
        "(the starting policy) ends with EOS within rollout.max_new_tokens. A policy that "
        "rarely finishes would mostly learn from the penalty to stop early, not to answer "
        "well; below the share the penalty is off for the run, and the run says so. 0: "
        "always apply it.", min=0, max=1)
    whiten: bool = option(False, "Whiten the scores of each rollout (keep their mean).")
    clip: float = option(0.0, "Clip scores to [-clip, clip] after whitening; 0: off.", min=0)
    overlong_buffer: int = option(
        0, "DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): over the last this many "
        "tokens before rollout.max_new_tokens a response's score loses linearly up to "
        "overlong_penalty (added after the no-EOS penalty, before whitening). 0: off.", min=0)
    overlong_penalty: float = option(
        1.0, "The overlong punishment at rollout.max_new_tokens (DAPO and TRL: 1; verl's "
        "penalty_factor).", min=0)


@dataclass
class PPOLossConfig:
    epochs: int = option(4, "Passes over each rollout.", min=1)
    minibatch_size: int = option(16, "Sequences per optimizer step within an epoch.", min=1)
    micro_batch_size: int = option(8, "Sequences per forward pass (gradient accumulation "
                                      "within a minibatch; changes memory, not the result).",
                                   min=1)
    clip_range: float = option(0.2, "Policy ratio clip epsilon (both sides, unless "
                                     "clip_range_low / clip_range_high say otherwise).", min=0)
    clip_range_low: float = option(0.0, "Lower clip epsilon: the ratio is kept above 1 - this. "
                                        "0: clip_range (TRL's epsilon).", min=0, max=1)
    clip_range_high: float = option(0.0, "Upper clip epsilon: the ratio is kept below 1 + this. "
                                         "0: clip_range. DAPO's clip-higher: 0.28 with 0.2 "
                                         "below (TRL's epsilon_high).", min=0)
    loss_type: str = option(
        "dapo", "How the policy loss (and the KL loss) sums its tokens, TRL's loss_type names. "
        "dapo: token sum / the minibatch's tokens (every token weighs the same; DAPO, TRL's "
        "default); grpo: mean over sequences of each one's token mean (the GRPO paper; short "
        "responses' tokens weigh more); dr_grpo: token sum / (sequences x "
        "rollout.max_new_tokens) (Dr. GRPO, a constant normaliser). Exact under micro-batching "
        "and across processes.", choices=LOSS_TYPES)
    importance_sampling_level: str = option(
        "token", "token: PPO's ratio per token; sequence: GSPO (Zheng et al. 2025), one ratio per "
        "response, exp of the mean of its tokens' log-ratios, clipped as a whole (with "
        "loss_type=grpo as in the paper; TRL's importance_sampling_level). grpo and rloo only.",
        choices=IMPORTANCE_SAMPLING_LEVELS)
    dynamic_sampling: bool = option(
        False, "grpo and rloo: drop from the loss (and its normaliser) the groups whose scores "
               "all agree, which carry no policy gradient (DAPO's dynamic sampling; the "
               "optimised scores, before any KL in the reward); logged as ppo/dropped_frac.")
    dynamic_sampling_rounds: int = option(
        0, "With dynamic_sampling: sample up to this many more batches of prompts "
           "(rollout.batch_size each) to refill the dropped groups with groups whose scores "
           "differ, until the rollout is full (DAPO; verl's max_num_gen_batches); logged as "
           "ppo/refill_rounds. 0: drop only.", min=0)
    clip_range_value: float = option(0.2, "Value clip range around the rollout's values; 0: "
                                          "no value clipping.", min=0)
    vf_coef: float = option(0.1, "Weight of the value loss.", min=0)
    entropy_coef: float = option(0.0, "Entropy bonus weight.", min=0)
    gamma: float = option(1.0, "Discount.", min=0, max=1)
    lam: float = option(0.95, "GAE lambda.", min=0, max=1)
    whiten_advantages: bool = option(True, "Whiten advantages over the rollout's response "
                                           "tokens.")
    kl_coef: float = option(0.05, "Weight of the KL penalty to the reference (initial value "
                                  "with adaptive_kl).", min=0)
    kl_estimator: str = option("k1", "Per-token KL estimator: k1 = log pi - log ref, k2, k3 "
                                     "(Schulman 2020).", choices=KL_ESTIMATORS)
    kl_in: str = option("reward", "reward: -kl_coef * KL per token in the reward (PPO, "
                                  "InstructGPT); loss: a KL loss term (GRPO).",
                        choices=["reward", "loss"])
    adaptive_kl: bool = option(False, "Adapt kl_coef toward kl_target (Ziegler et al. 2019).")
    kl_target: float = option(6.0, "Target sequence KL of the adaptive controller.", min=1e-6)
    kl_horizon: int = option(10000, "Horizon (in samples) of the adaptive controller.", min=1)
    target_approx_kl: float = option(0.0, "Stop an iteration's epochs early once a "
                                          "minibatch's approximate KL exceeds this; 0: never.",
                                     min=0)
    value_model: str = option(
        "separate", "separate: a value model of its own, initialised from the reward model "
        "when it is a causal LM with the policy's vocabulary, else from the policy; head: a "
        "value head on the policy (shared trunk).", choices=["separate", "head"])
    value_lr: float = option(
        0.0, "Learning rate of the value model or head; 0: optim.lr. A value head starts from "
        "zero and learns slowly at a policy's small rate; critics often get their own, higher "
        "one.", min=0)
    group_scale: bool = option(True, "grpo: divide group-centred scores by the group std "
                                     "(false: Dr. GRPO, centring only).")

    def clip_bounds(self) -> tuple[float, float]:
        """(eps_low, eps_high): clip_range_low and clip_range_high, each clip_range if 0."""
        return self.clip_range_low or self.clip_range, self.clip_range_high or self.clip_range


@dataclass
class PPOTrainConfig(TrainConfig):
    logits_chunk: int = logits_chunk_option()
    share_prompt: bool = share_prompt_option(
        " (grpo and rloo; algo=ppo keeps a row per sample, as its value model reads every "
        "position)")

    instead: ClassVar[dict[str, str]] = {
        "batch_size": "ppo's batches are rollout.batch_size prompts per iteration, and "
                      "ppo.minibatch_size samples per optimizer step",
        "micro_batch_size": "ppo's forward passes take ppo.micro_batch_size samples",
        "max_tokens_per_microbatch": "ppo packs no micro-batches by tokens: its forward passes "
                                     "take ppo.micro_batch_size samples"}


@dataclass
class PPOConfig:
    """Online RL against a reward: PPO with a KL penalty to the reference, or GRPO / RLOO."""

    run_dir: str = option("runs/ppo", "Directory for config.yaml, metrics.jsonl, samples.jsonl, "
                                      "checkpoints/ and final/.")
    resume: bool = option(False, "Continue from the newest checkpoint in run_dir.")
    algo: str = option("ppo", "ppo: clipped policy and value losses with GAE; grpo: "
                              "group-normalised advantages, no value model; rloo: "
                              "leave-one-out baseline, no value model.",
                       choices=("ppo", *GROUP_METHODS))
    model: ModelConfig = section(ModelConfig, "Policy to start from (usually the SFT model); "
                                              "it is also the frozen reference.")
    reward: PPORewardConfig = section(PPORewardConfig, "What the policy is rewarded for.")
    rollout: RolloutConfig = section(RolloutConfig, "Sampling the rollouts.")
    ppo: PPOLossConfig = section(PPOLossConfig, "The policy-gradient objective.")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule (policy and value "
                                              "model together).", lr=1e-5, schedule="constant")
    train: PPOTrainConfig = section(
        PPOTrainConfig, "Loop: a step is one iteration (rollout + epochs of updates); "
        "max_steps iterations, or `epochs` passes over the prompts. The batches are "
        "rollout.batch_size, ppo.minibatch_size and ppo.micro_batch_size.",
        max_steps=20, eval_every=10, save_every=10)
    eval_prompts: str = option("", "Held-out prompts for periodic evaluation (gold, proxy, KL "
                                   "of fresh samples). Empty: none.")
    eval_num_prompts: int = option(32, "Evaluate on the first N held-out prompts.", min=1)
    sample_every: int = option(5, "Log a few sample responses to samples.jsonl every N "
                                  "iterations.", min=1)

    def validate(self) -> None:
        if not self.rollout.prompts:
            raise ConfigError("rollout.prompts is required: the prompts to train on")
        functions = parse_functions(self.reward.functions)  # a malformed entry: ConfigError
        if not self.reward.model and not functions and not self.reward.gold:
            raise ConfigError("nothing to optimise: set reward.model (a reward model), "
                              "reward.functions (reward functions) or reward.gold (a gold "
                              "scorer)")
        if self.algo in ("grpo", "rloo") and self.rollout.group_size < 2:
            raise ConfigError(f"algo={self.algo} compares samples of the same prompt: set "
                              f"rollout.group_size >= 2 (e.g. 4)")
        if self.algo == "ppo" and self.ppo.importance_sampling_level == "sequence":
            raise ConfigError("ppo.importance_sampling_level=sequence (GSPO) gives each response "
                              "one ratio, for one advantage per response: use algo=grpo or "
                              "rloo (algo=ppo's GAE advantages differ token by token)")
        if self.model.lora.qlora and self.algo == "ppo" and self.ppo.value_model == "separate":
            raise ConfigError("model.lora.qlora with ppo.value_model=separate would train a "
                              "full-precision copy of the policy as the value model: set "
                              "ppo.value_model=head, or use algo=grpo or rloo (no value model)")
        if self.algo == "ppo" and self.ppo.dynamic_sampling:
            raise ConfigError("ppo.dynamic_sampling drops groups whose scores all agree, which "
                              "grpo and rloo give no gradient: use algo=grpo or rloo (ppo's "
                              "value baseline learns from every sample)")
        if self.ppo.dynamic_sampling_rounds and not self.ppo.dynamic_sampling:
            raise ConfigError("ppo.dynamic_sampling_rounds refills what ppo.dynamic_sampling "
                              "drops: set ppo.dynamic_sampling=true")
        if self.reward.overlong_buffer > self.rollout.max_new_tokens:
            raise ConfigError(f"reward.overlong_buffer ({self.reward.overlong_buffer}) is the "
                              f"last stretch before rollout.max_new_tokens "
                              f"({self.rollout.max_new_tokens}): it cannot be longer")
        rollout = self.rollout.batch_size * self.rollout.group_size
        if rollout % self.ppo.minibatch_size or self.ppo.minibatch_size % \
                self.ppo.micro_batch_size:
            raise ConfigError(
                f"rollout.batch_size x rollout.group_size ({rollout}) must be a multiple of "
                f"ppo.minibatch_size ({self.ppo.minibatch_size}), and that a multiple of "
                f"ppo.micro_batch_size ({self.ppo.micro_batch_size})")


@dataclass
class ScoreConfig:
    """Score (prompt, response) rows with a trained reward model."""

    reward_model: str = option("", "A reward model directory (a `tether rm` run's final/). "
                                   "Texts are encoded as in training.  Required.")
    input: str = option("", "Rows of {prompt, response}, or candidates {prompt, responses}. "
                            "Required.")
    output: str = option("scores.jsonl", "Where to write the rows with their scores.")
    batch_size: int = option(16, "Sequences per forward pass.", min=1)
    bf16: bool = option(False, "Score under bf16 autocast.")
    device: str = device_option()

    def validate(self) -> None:
        if not self.reward_model or not self.input:
            raise ConfigError("reward_model and input are required")


@dataclass
class EvalConfig:
    """Evaluate policies by sampling: gold score, proxy reward, KL to a reference, win rate."""

    policies: str = option("", "Policies to evaluate, comma-separated: embedded names, local HF "
                               "directories (e.g. runs/sft/final,runs/dpo/final) or hub ids. "
                               "Required.")
    names: str = option("", "Labels for the policies, comma-separated, one per policy. Empty: "
                            "derived from the paths (runs/dpo/final -> dpo).")
    reference: str = option("", "Model the KL is measured against (usually the SFT model); it "
                                "must share the policies' tokenizer. Empty: no KL.")
    baseline: str = option("", "The policy (a name, or a policy as listed) that win rates are "
                               "computed against. Empty: the first policy.")
    prompts: str = option("", "Prompts: rows with a 'prompt' (string or messages), in any "
                              "supported data format. A dataset of several splits or other "
                              "column names: SOURCE?split=test&prompt=question. Required.")
    num_prompts: int = option(0, "Use only the first N prompts; 0: all.", min=0)
    n: int = option(4, "Samples per prompt and policy.", min=1)
    temperature: float = option(1.0, "Sampling temperature. The KL estimate is of the "
                                     "policy itself only at 1.", min=0.01)
    top_p: float = option(1.0, "Nucleus sampling: keep the smallest set of tokens with this "
                               "much probability. The KL estimate is of the policy itself only "
                               "at 1.", min=0.01, max=1)
    max_new_tokens: int = option(48, "Longest response, in tokens.", min=1)
    max_prompt_length: int = option(256, "Prompts longer than this (in tokens) lose their "
                                         "beginning.", min=1)
    batch_size: int = option(8, "Prompts per generate call (each with its n samples); also "
                                "sequences per forward pass when computing log-probs.", min=1)
    chat_template: str = option("auto", "Wrap prompts in the tokenizer's chat template.",
                                choices=CHAT_TEMPLATE)
    gold: str = option("auto", "Gold scorer of the responses: a built-in task name "
                               "(sentiment, answers, arithmetic) or 'module:function' "
                               "taking a list of texts, or TRL's keyword form "
                               "f(prompts=, completions=, **columns) given the prompt "
                               "rows' other fields. auto: the task's, as the policies' run "
                               "directories record it (a `tether run` pipeline's task, a PPO "
                               "run's reward.gold, a DPO run's sampled_eval.gold); where they "
                               "name none, an error asking for it. Empty: no gold score.")
    reward_model: str = option("", "Reward model directory (a `tether rm` run's final/) whose "
                                   "score is reported as the proxy reward. Empty: none.")
    output: str = option("runs/eval/eval.json", "Where to write the summaries and every "
                                                "sample (JSON).")
    bf16: bool = option(False, "Generate and compute log-probs under bf16 autocast.")
    backend: str = option("auto", "Generation backend: static (tether's static-cache decode "
                                  "loop on a copy of the policy, bf16 if bf16=true; on 2 CPU "
                                  "cores about 1.9x hf in fp32, 2.7x in bf16), hf "
                                  "(transformers generate), vllm (GPUs only) or auto: static "
                                  "on a CPU, hf on a GPU.", choices=BACKENDS)
    device: str = device_option()
    skip_bad_rows: bool = option(False, "Skip malformed prompt rows instead of stopping.")
    seed: int = option(0, "Seed: every policy is sampled with it, so identical policies give "
                          "identical samples and win rates are paired.")

    def policy_list(self) -> list[str]:
        return [p.strip() for p in self.policies.split(",")]

    def policy_names(self) -> list[str]:
        """The label of each policy: `names` if given, else derived from the paths."""
        if self.names:
            return [n.strip() for n in self.names.split(",")]
        return self.derive_names(self.policy_list())

    def baseline_index(self) -> int:
        if not self.baseline:
            return 0
        names, policies = self.policy_names(), self.policy_list()
        return names.index(self.baseline) if self.baseline in names else \
            policies.index(self.baseline)

    @staticmethod
    def derive_names(policies: list[str]) -> list[str]:
        """The shortest path endings that tell the policies apart, without a trailing
        'final' (every run directory has one): runs/sft/final, runs/dpo/final -> sft, dpo.
        A policy listed twice gets '#2', '#3', ... on its later copies."""
        parts = []
        for p in policies:
            segments = [s for s in p.replace("\\", "/").split("/") if s not in ("", ".")]
            if len(segments) > 1 and segments[-1] == "final":
                segments = segments[:-1]
            parts.append(segments or [p])
        depth = 1
        while depth < max(len(s) for s in parts):
            if len({"/".join(s[-depth:]) for s in parts}) == len(set(map(tuple, parts))):
                break
            depth += 1
        names, seen = [], {}
        for segments in parts:
            name = "/".join(segments[-depth:])
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return names

    def validate(self) -> None:
        if not self.policies:
            raise ConfigError("policies is required: the models to evaluate, comma-separated "
                              "(e.g. policies=runs/sft/final,runs/dpo/final)")
        if not self.prompts:
            raise ConfigError("prompts is required: a file of {\"prompt\": ...} rows")
        policies = self.policy_list()
        if not all(policies):
            raise ConfigError(f"policies has an empty entry: '{self.policies}'")
        names = self.policy_names()
        if len(names) != len(policies):
            raise ConfigError(f"names has {len(names)} entries but policies has "
                              f"{len(policies)}; give one name per policy (or none)")
        if not all(names) or len(set(names)) != len(names):
            raise ConfigError(f"names must be non-empty and distinct, got {', '.join(names)}")
        if self.baseline and self.baseline not in names + policies:
            raise ConfigError(f"baseline '{self.baseline}' is not one of the policies' names "
                              f"({', '.join(names)})")


# ---------------------------------------------------------------------------------------------
# The whole pipeline (`tether run`)
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    name: str = option(
        "sentiment", "A built-in task that generates its prompts and demonstrations and brings "
        "its gold scorer (sentiment: continue movie reviews; gold = VADER positivity. answers: "
        "answer short questions; gold = rules for a helpful, polite, concise answer. "
        "arithmetic: word problems; gold = 1 if the final number is the answer). Empty: "
        "your own task, from the files below (which also replace a built-in task's).")
    prompts: str = option("", "Your prompts: rows with a 'prompt' (string or messages). The "
                              "policy is sampled on them for labels and trained on them. "
                              "A dataset of several splits or other column names: "
                              "SOURCE?split=test&prompt=question.")
    heldout_prompts: str = option("", "Your evaluation prompts. Empty: the last num_heldout "
                                      "of `prompts` are held out.")
    demonstrations: str = option(
        "", "Your SFT data ({prompt, completion} or messages rows). Empty with no built-in task: "
        "no SFT stage; the starting model (sft.model.name) is the policy.")
    gold: str = option("", "Gold scorer: 'module:function' taking a list of texts and "
                           "returning one float each (higher = preferred), or TRL's keyword "
                           "form f(prompts=, completions=, **columns) given the prompt rows' "
                           "other fields. Empty: the built-in task's. Without one, give "
                           "`labels` (people's preferences).")
    labels: str = option("", "Preferences people gave ({prompt, chosen, rejected} pairs or "
                             "{prompt, responses, ranks} rankings): the reward model and DPO "
                             "train on these, and the sample and label stages do not run. "
                             "'human': people label the SFT samples in the labeling app, "
                             "which the label stage starts and waits on (see `human`).")
    num_prompts: int = option(512, "Training prompts: a built-in task generates this many; "
                                   "of your own `prompts`, the first this many train.", min=1)
    num_heldout: int = option(64, "Held-out evaluation prompts, disjoint from the training "
                                  "prompts.", min=1)
    num_demonstrations: int = option(400, "SFT demonstrations a built-in task generates (plus "
                                          "a tenth as many for eval).", min=1)
    seed: int = option(0, "Seed for generating the built-in task's data.")


@dataclass
class HumanLabelsConfig:
    annotators: str = option("annotator1", "Annotators to create, comma-separated; each gets "
                                           "an access token, printed when the server starts.")
    overlap: int = option(1, "How many different annotators label each item.", min=1)
    target: int = option(0, "Labels to wait for before training; 0: every item, times "
                            "overlap.", min=0)
    gold_items: str = option("", "Gold items (preference rows with a known answer) mixed in "
                                 "to measure each annotator.")
    gold_items_rate: float = option(0.1, "Share of the items served that are gold items.",
                                    min=0, max=1)
    min_gold_accuracy: float = option(0.0, "Leave out annotators whose gold accuracy is below "
                                           "this.", min=0, max=1)
    mode: str = option(
        "compare", "What people give. compare: they rank each prompt's samples (the reward "
        "model, PPO and DPO train on the rankings); rate: a thumb up or down on each response "
        "alone, on which KTO trains (rm, ppo and dpo are left out: thumbs make no pairs); "
        "both: each prompt ranked and each response rated, KTO training on the thumbs.",
        choices=LABEL_MODES)
    guidelines: str = option("", "Labeling guidelines for the annotators: a Markdown file, "
                                 "shown in the app.")
    db: str = option("", "Labeling database (a path or SQLAlchemy URL). Empty: labels.db in "
                         "the run directory, which the pipeline never deletes.")
    host: str = option("127.0.0.1", "Address the labeling app listens on.")
    port: int = option(8000, "Port the labeling app listens on.", min=1, max=65535)

    instead: ClassVar[dict[str, str]] = GOLD_ITEMS_RENAMED


@dataclass
class PipelineEvalConfig:
    num_prompts: int = option(64, "Held-out prompts every policy is compared on; more than "
                                  "task.num_heldout: all of them (as for ppo.eval_num_prompts "
                                  "and dpo.sampled_eval.num_prompts).", min=1)
    n: int = option(2, "Samples per prompt and policy.", min=1)
    max_new_tokens: int = option(40, "Longest response, in tokens.", min=1)
    batch_size: int = option(16, "Prompts per generate call.", min=1)
    best_of_n: int = option(
        64, "Best-of-n baseline: this many SFT samples per prompt, ranked by the reward model; "
        "the curve for n = 1, 2, 4, ... up to it (unbiased estimates from the same samples). "
        "0: no best-of-n.", min=0)
    best_of_n_prompts: int = option(16, "Held-out prompts for the best-of-n baseline.", min=1)
    samples_in_report: int = option(6, "Prompts whose responses the report shows side by "
                                       "side.", min=0)
    bf16: bool = option(True, "Generate and score under bf16 autocast.")
    device: str = device_option()
    seed: int = option(0, "Sampling seed shared by every policy (paired comparisons).")


PIPELINE_STAGES = ("data", "sft", "sample", "label", "rm", "ppo", "dpo", "kto", "eval",
                   "report")
# The keys `tether run` sets itself, per stage: the paths from one stage to the next.
PIPELINE_WIRED = {
    "sft": ("run_dir", "resume", "data.train", "data.eval"),
    "sample": ("policy", "prompts", "output"),
    "label": ("candidates", "output", "gold"),
    "rm": ("run_dir", "resume", "data.train"),
    "ppo": ("run_dir", "resume", "model.name", "reward.model", "reward.gold",
            "rollout.prompts", "eval_prompts"),
    "dpo": ("run_dir", "resume", "model.name", "data.train", "sampled_eval.prompts",
            "sampled_eval.gold", "sampled_eval.reward_model"),
    "kto": ("run_dir", "resume", "model.name", "data.train", "sampled_eval.prompts",
            "sampled_eval.gold", "sampled_eval.reward_model"),
}


@dataclass
class PipelineConfig:
    """The whole RLHF pipeline: SFT -> sample -> label -> reward model -> PPO and DPO ->
    evaluation -> report, in one run directory, each stage skipped when already done."""

    run_dir: str = option("runs/pipeline", "Directory for every stage's outputs, "
                                           "pipeline.json (stage state) and report.html.")
    skip: str = option("", "Stages not to run, comma-separated, from: sft, ppo, dpo (and kto, "
                           "which runs with compare_kto=true or people's thumbs).")
    rerun: str = option("", "Stages to run again even if unchanged, comma-separated (the "
                            "stages reading their outputs rerun too).")
    rm_check: str = option(
        "stop", "When the reward model's held-out accuracy cannot be told from chance (its 95% "
        "interval reaches 0.5): stop before PPO and best-of-n, which would optimise noise "
        "(exit code 1; rerun with rm_check=warn to go on, every finished stage kept), or warn "
        "and go on.", choices=["stop", "warn"])
    rounds: int = option(
        1, "Rounds of sample -> label -> reward model -> PPO/DPO, InstructGPT's way: round r "
        "samples the newest policy (see rounds_from) on its own share of the training prompts "
        "(so the label budget is the same for any number of rounds), labels the samples "
        "(simulated, or people in the app with task.labels=human), retrains the reward model "
        "on every label so far, and continues PPO, DPO (and KTO) from their previous round's "
        "policy, which is also their reference. Stages of round r >= 2 are named sample-r, "
        "label-r, rm-r, ppo-r, dpo-r (kto-r); eval compares the last round's policies with "
        "SFT.", min=1)
    rounds_from: str = option(
        "auto", "Whose policy the next round samples: ppo, dpo, kto (when it runs), or auto "
        "(the first of these that runs).", choices=["auto", "ppo", "dpo", "kto"])
    compare_kto: bool = option(
        False, "Also run the kto stage: KTO on a thumb for each of the candidates, evaluated "
        "beside PPO and DPO on the same held-out prompts. With simulated labels the thumbs are "
        "simulated (label's temperature, flip_rate and seed; the threshold the median gold "
        "score); with people's rankings (task.labels) each ranking's best response is a thumb "
        "up and its worst a thumb down. People who rate (human.mode rate or both) give KTO "
        "their thumbs, and the stage runs without this. Off by default: in the default "
        "pipeline it took 2.4x the dpo stage's time (BENCHMARKS.md).")
    task: TaskConfig = section(TaskConfig, "What to learn: prompts, demonstrations, and the "
                                           "preference (a gold scorer or people's labels).")
    # The stages. Paths between them (run_dir, data, models) are set by the pipeline.
    sft: SFTConfig = section(SFTConfig, "Supervised fine-tuning (`tether sft` keys).")
    sample: SampleConfig = section(SampleConfig, "Sampling K candidates per prompt from the "
                                                 "SFT policy (`tether sample` keys).")
    label: SimulateLabelsConfig = section(SimulateLabelsConfig, "The simulated labeler "
                                                                "(`tether label simulate` keys).")
    human: HumanLabelsConfig = section(HumanLabelsConfig, "People's labels in the labeling app, "
                                                          "with task.labels=human.")
    rm: RMConfig = section(RMConfig, "The reward model (`tether rm` keys); model.name=sft "
                                     "starts it from the SFT policy.")
    ppo: PPOConfig = section(PPOConfig, "Online RL against the reward model (`tether ppo` keys; "
                                        "the gold scorer is only logged).")
    dpo: DPOConfig = section(DPOConfig, "DPO on the same labels (`tether dpo` keys).")
    kto: KTOConfig = section(KTOConfig, "KTO on thumbs of the same candidates (`tether kto` "
                                        "keys), with compare_kto=true.")
    eval: PipelineEvalConfig = section(PipelineEvalConfig, "The final comparison on held-out "
                                                           "prompts, with best-of-n.")

    def stage_list(self, option_name: str) -> list[str]:
        names = [s.strip() for s in getattr(self, option_name).split(",") if s.strip()]
        for name in names:
            if name not in PIPELINE_STAGES:
                close = difflib.get_close_matches(name, PIPELINE_STAGES, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{option_name}: unknown stage '{name}'{hint}; stages are "
                                  f"{', '.join(PIPELINE_STAGES)}")
        return names

    def validate(self) -> None:
        skipped = self.stage_list("skip")
        if set(skipped) - {"sft", "ppo", "dpo", "kto"}:
            raise ConfigError(f"skip: only sft, ppo, dpo and kto can be left out, not "
                              f"{', '.join(sorted(set(skipped) - {'sft', 'ppo', 'dpo', 'kto'}))}")
        self.stage_list("rerun")
        if not self.task.name and not self.task.prompts:
            raise ConfigError("task.prompts is required for a task of your own (task.name is "
                              "empty)")
        if not (self.task.name or self.task.gold or self.task.labels):
            raise ConfigError("the pipeline needs a preference: task.gold (a scorer) for "
                              "simulated labels, or task.labels (people's)")
        if self.rounds > 1:
            if self.task.labels not in ("", "human"):
                raise ConfigError(f"rounds={self.rounds} labels each round's samples afresh; "
                                  f"task.labels={self.task.labels} is a fixed file (use "
                                  f"task.labels=human, or simulated labels from task.gold)")
            rated = self.task.labels == "human" and self.human.mode != "compare"
            kto = self.compare_kto or rated
            if {"ppo", "dpo"} <= set(skipped) and not (kto and "kto" not in skipped):
                raise ConfigError("rounds > 1 needs a policy to sample the next round from: "
                                  "do not skip both ppo and dpo (or run kto)")
            if self.rounds_from in skipped or (self.rounds_from == "kto" and not kto) or (
                    self.rounds_from in ("ppo", "dpo") and rated
                    and self.human.mode == "rate"):
                raise ConfigError(f"rounds_from={self.rounds_from}, but {self.rounds_from} does "
                                  f"not run" + (" (set compare_kto=true)"
                                                if self.rounds_from == "kto" else ""))


@dataclass
class ReportConfig:
    """Write report.html for a `tether run` directory, or one of tether sft, rm, dpo or ppo,
    finished or not."""

    run_dir: str = option("", "The run directory (the bare argument: tether report RUN_DIR): "
                              "a pipeline's, or a single stage's. Required.")

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("give the run directory: tether report RUN_DIR")


@dataclass
class PushConfig:
    """Upload a final/ directory to the Hugging Face Hub."""

    path: str = option("", "The directory to upload (the bare argument: tether push PATH), "
                           "e.g. a run's final/ with its model card. Required.")
    repo: str = option("", "Hub repository, user/name or org/name; created if it does not "
                           "exist. Required.")
    private: bool = option(True, "Create the repository private (an existing one keeps its "
                                 "visibility).")
    message: str = option("Upload with tether", "Commit message.")

    def validate(self) -> None:
        if not self.path or not self.repo:
            raise ConfigError("give what to push and where: tether push PATH repo=user/name")
