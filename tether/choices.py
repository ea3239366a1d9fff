"""The names a config option chooses from where a registry keyed by them lives elsewhere.

Each registry sits with the code it picks (a loss function per name, a generation backend per
name, ...), in a module that imports torch or transformers. tether.config loads a config and
prints `--help` without those, so it cannot import the registries: the registry and the
config's `choices` both take the names from here, and an option offers exactly what its
registry holds (tests/unit/test_config.py holds each pair side by side). This module imports
nothing.
"""

# dpo.loss: tether.losses.dpo.LOSSES, one loss function per name.
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
# ppo.kl_estimator: tether.losses.ppo.kl_per_token.
KL_ESTIMATORS = ("k1", "k2", "k3")
# The critic-free algorithms, `algo` besides ppo: tether.losses.ppo.group_advantages.
GROUP_METHODS = ("grpo", "rloo")
# ppo.loss_type, how the policy loss's token terms become one number: tether.losses.ppo.aggregate
# (TRL's GRPOConfig.loss_type names: dapo = token mean over the minibatch, grpo = mean over
# sequences of each one's token mean, dr_grpo = token sum over sequences x max_new_tokens).
LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
# ppo.importance_sampling_level: tether.losses.ppo.policy_loss (token: PPO's ratio per token;
# sequence: GSPO's length-normalised sequence ratio).
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# rollout.backend and sample's backend: tether.rollout.backends.make_generator (auto:
# resolve_backend).
BACKENDS = ("auto", "hf", "static", "vllm")
# rollout.dtype: the precision of the static backend's copy (make_generator's dtype).
GENERATION_DTYPES = ("auto", "bf16", "fp32")
# model.attention: tether.models.loading.pretrained_options.
ATTENTION = ("sdpa", "flex_attention", "eager")
# train.strategy: tether.distributed.setup.
STRATEGIES = ("ddp", "fsdp2")
# train.device, and device in sample, score and eval: tether.device.pick_device.
DEVICES = ("auto", "cuda", "cpu")
# What a labeling project asks people for (tether.labeling.projects).
LABEL_MODES = ("compare", "rate", "both")
