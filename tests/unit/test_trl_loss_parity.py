"""TRL parity of the policy losses: on identical logits, advantages and masks, tether's dapo,
grpo and dr_grpo aggregations, clip-higher, GSPO (importance_sampling_level="sequence") and the
KL term give TRL's GRPOTrainer loss and gradient to 1e-6; the overlong penalty gives TRL's
soft overlong punishment.

TRL's side is TRL's own code: GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py), called
on a stand-in for the trainer that holds the settings it reads and hands it log-probs of the
given logits (through TRL's selective_log_softmax) instead of running a model. Runs where TRL
is installed, as `bench vs-trl`'s tests do."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tether.losses.ppo import kl_loss, overlong_penalty, policy_loss
from tether.models.logprobs import token_logprobs

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

B, PROMPT, COMPLETION, VOCAB = 6, 3, 7, 11
MAX_COMPLETION = 9  # max_completion_length: larger than the longest completion here


class _Trainer:
    """What GRPOTrainer._compute_loss reads of its trainer, and nothing else."""

    def __init__(self, logits: torch.Tensor, loss_type: str, level: str, beta: float,
                 eps_low: float, eps_high: float):
        self.logits = logits  # [B, PROMPT + COMPLETION, VOCAB]
        self.loss_type, self.importance_sampling_level, self.beta = loss_type, level, beta
        self.epsilon_low, self.epsilon_high = eps_low, eps_high
        self.max_completion_length = MAX_COMPLETION
        self.top_entropy_quantile = 1.0
        self.off_policy_mask_threshold = None
        self.use_vllm = False
        self.vllm_importance_sampling_correction = False
        self._entropy_bonus_enabled = False
        self.aux_loss_enabled = False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None,
                                    steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x,
                                           gather_for_metrics=lambda x: x,
                                           reduce=lambda x, reduction: x)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask,
                                           logits_to_keep, compute_entropy=False, **_):
        # As TRL's: the logits that predict the last logits_to_keep tokens
        logits = self.logits[:, -logits_to_keep - 1:-1]
        logps = trl_utils.selective_log_softmax(logits, input_ids[:, -logits_to_keep:])
        return logps, torch.zeros_like(logps), None


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, PROMPT + COMPLETION, VOCAB, generator=g, dtype=torch.float64)
    input_ids = torch.randint(0, VOCAB, (B, PROMPT + COMPLETION), generator=g)
    lengths = torch.randint(1, COMPLETION + 1, (B,), generator=g)
    lengths[0] = COMPLETION
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    advantages = torch.randn(B, generator=g, dtype=torch.float64)
    # old and reference log-probs off the current ones, so that some ratios are clipped
    with torch.no_grad():
        logps = token_logprobs(logits, input_ids)[:, PROMPT:]
    old = logps + 0.3 * torch.randn(B, COMPLETION, generator=g, dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(B, COMPLETION, generator=g, dtype=torch.float64)
    return logits, input_ids, completion_mask, advantages, old, ref


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_losses_equal_trl_s(loss_type, level, beta, eps_high):
    logits, input_ids, completion_mask, advantages, old, ref = _tensors(24)
    inputs = {"prompt_ids": input_ids[:, :PROMPT],
              "prompt_mask": torch.ones(B, PROMPT, dtype=torch.long),
              "completion_ids": input_ids[:, PROMPT:], "completion_mask": completion_mask,
              "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
    trl_logits = logits.clone().requires_grad_()
    trainer = _Trainer(trl_logits, loss_type, level, beta, 0.2, eps_high)
    trl_loss = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    trl_grad, = torch.autograd.grad(trl_loss, trl_logits)

    # tether: [B, T] tensors over prompt + completion, the mask on completion tokens
    ours_logits = logits.clone().requires_grad_()
    logprobs = token_logprobs(ours_logits, input_ids)
    mask = torch.cat([torch.zeros(B, PROMPT, dtype=torch.long), completion_mask], dim=1)
    pad = torch.zeros(B, PROMPT, dtype=torch.float64)
    aggregation = {"loss_type": loss_type, "max_length": MAX_COMPLETION}
    per_token_advantages = advantages[:, None].expand(-1, PROMPT + COMPLETION)
    loss, _ = policy_loss(logprobs, torch.cat([pad, old], 1), per_token_advantages, mask, 0.2,
                          clip_range_high=eps_high, importance_sampling_level=level,
                          **aggregation)
    if beta:
        loss = loss + beta * kl_loss(logprobs, torch.cat([pad, ref], 1), mask, estimator="k3",
                                     **aggregation)
    grad, = torch.autograd.grad(loss, ours_logits)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-6, rel=1e-6)
    torch.testing.assert_close(grad, trl_grad, atol=1e-6, rtol=1e-6)
    assert grad.abs().max() > 1e-3  # a gradient, not two zeros


def test_overlong_penalty_equals_trl_s_soft_overlong_punishment():
    rewards = pytest.importorskip("trl.rewards")
    punish = rewards.get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=6)
    lengths = list(range(0, 26))
    want = punish([[1] * n for n in lengths])
    got = overlong_penalty(torch.tensor(lengths), 20, 6).tolist()
    assert got == pytest.approx(want, abs=1e-6)  # float32
