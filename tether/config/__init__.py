"""Typed configs: what each command's config holds, and how a config is loaded.

- schema.py: one dataclass per command and the sections they share; each field with its
  default, help text and allowed values.
- loader.py: YAML files and dotted overrides into those dataclasses, strictly checked
  (ConfigError naming the key, the file and line, the closest valid key); to_yaml and to_dict
  back out; field_docs for `--help`.

Import from here (`from tether.config import PPOConfig, load_config`): a command, a test or a
script wants a config and the way to load it, not which of the two modules defines which, so
this package is the one public place for both.
"""

from tether.config.loader import field_docs, given_settings, load_config, to_dict, to_yaml
from tether.config.schema import (
    PIPELINE_STAGES,
    PIPELINE_WIRED,
    BatchTrainConfig,
    DataConfig,
    DPOConfig,
    DPOLossConfig,
    DPOTrainConfig,
    EvalConfig,
    HumanLabelsConfig,
    KTOConfig,
    KTOLossConfig,
    KTOTrainConfig,
    LabelAnnotatorConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelServeConfig,
    LabelStatsConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PipelineConfig,
    PipelineEvalConfig,
    PPOConfig,
    PPOLossConfig,
    PPORewardConfig,
    PPOTrainConfig,
    PushConfig,
    ReferenceConfig,
    ReportConfig,
    RewardConfig,
    RMConfig,
    RMTrainConfig,
    RolloutConfig,
    SampleConfig,
    SampledEvalConfig,
    ScoreConfig,
    SFTConfig,
    SFTTrainConfig,
    SimulateLabelsConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "PIPELINE_STAGES", "PIPELINE_WIRED", "BatchTrainConfig", "DPOConfig", "DPOLossConfig",
    "DPOTrainConfig", "DataConfig", "EvalConfig", "HumanLabelsConfig", "KTOConfig",
    "KTOLossConfig", "KTOTrainConfig", "LabelAnnotatorConfig",
    "LabelExportConfig", "LabelImportConfig", "LabelServeConfig", "LabelStatsConfig",
    "LoraConfig", "ModelConfig", "OptimConfig", "PPOConfig", "PPOLossConfig",
    "PPORewardConfig", "PPOTrainConfig", "PipelineConfig", "PipelineEvalConfig", "RMConfig",
    "PushConfig", "RMTrainConfig", "ReferenceConfig", "ReportConfig", "RewardConfig",
    "RolloutConfig", "SFTConfig", "SFTTrainConfig", "SampleConfig", "SampledEvalConfig",
    "ScoreConfig", "SimulateLabelsConfig", "TaskConfig", "TrainConfig",
    "field_docs", "given_settings", "load_config", "to_dict", "to_yaml",
]
