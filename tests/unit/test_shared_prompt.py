"""Responses packed under a shared prompt: the layout by hand, and the same log-probs, rewards
and gradients as one row per response."""

import pytest
import torch

from tether.data.collate import collate
from tether.data.tokenize import Encoded
from tether.models.logprobs import forward_logits, token_logprobs
from tether.models.reward import RewardModel
from tether.models.shared_prompt import pack_groups, shared_prompt_logprobs


def test_layout_by_hand():
    packed = pack_groups([[5, 6, 7, 1, 2], [5, 6, 7, 3], [8, 9]], [2, 1], pad_id=0)
    # Row 0: the prompt 5 6 7 once, then 1 2 and 3 at the positions they have alone.
    assert packed.input_ids.tolist() == [[5, 6, 7, 1, 2, 3], [8, 9, 0, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 0, 0, 0, 0]]
    T, F = True, False
    assert packed.attention_mask[0, 0].tolist() == [
        [T, F, F, F, F, F],
        [T, T, F, F, F, F],
        [T, T, T, F, F, F],
        [T, T, T, T, F, F],
        [T, T, T, T, T, F],
        [T, T, T, F, F, T]]  # token 3 sees the prompt and itself, not the other response
    assert packed.attention_mask[1, 0].tolist() == [
        [T, F, F, F, F, F],
        [T, T, F, F, F, F],
        [F, F, T, F, F, F],  # padding sees itself only (no row of the softmax is empty)
        [F, F, F, T, F, F],
        [F, F, F, F, T, F],
        [F, F, F, F, F, T]]
    # Each sequence's tokens in the flattened rows (row 1 starts at column 6).
    assert packed.columns.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, 0], [6, 7, 0, 0, 0]]
    assert packed.last_columns.tolist() == [4, 5, 7]
    assert packed.num_tokens == 8  # against 11 as three rows


def test_what_is_shared_is_the_common_prefix_and_each_keeps_a_token():
    # Prompts truncated differently share only their common start.
    packed = pack_groups([[1, 2, 3, 4], [1, 2, 9, 9]], [2], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 9, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 3]]
    # A sequence that is all prefix keeps its last token to itself (its reward is read there).
    packed = pack_groups([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2]], [3], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 2, 9, 9, 2]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 1, 2, 3, 1]]
    assert packed.last_columns.tolist() == [3, 6, 7]
    assert pack_groups([[4, 4, 4]], [1], 0).num_tokens == 3
    with pytest.raises(ValueError, match="do not cover"):
        pack_groups([[1], [2]], [1], 0)


def _groups(vocab, seed=0):
    """Two prompts (7 and 4 tokens) under 2 and 3 responses of various lengths, one of them a
    single token (its EOS alone)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    def encoded(prompt, n):
        return Encoded(prompt + ids(n), [0] * len(prompt) + [1] * n)

    first, second = ids(7), ids(4)
    return [encoded(first, 3), encoded(first, 5), encoded(second, 2), encoded(second, 6),
            encoded(second, 1)], [2, 3]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_gradients_equal_one_row_per_response(model, temperature):
    responses, groups = _groups(model.config.vocab_size)
    batch = collate(responses, 0)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
    rows = token_logprobs(logits, batch["input_ids"], temperature) * batch["loss_mask"]
    rows_grads = grads(rows.sum())
    packed, mask, tokens = shared_prompt_logprobs(model, responses, groups, 0, temperature)
    packed_grads = grads(packed.sum())
    torch.testing.assert_close(packed, rows, atol=1e-5, rtol=0)
    assert torch.equal(mask, batch["loss_mask"])
    assert tokens == 7 + 3 + 5 + 4 + 2 + 6 + 1 < sum(len(r.input_ids) for r in responses)
    for a, b in zip(packed_grads, rows_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_eager_attention_takes_the_mask_as_an_additive_one(model):
    responses, groups = _groups(model.config.vocab_size, seed=1)
    sdpa, _, _ = shared_prompt_logprobs(model, responses, groups, 0)
    model.config._attn_implementation = "eager"
    eager, _, _ = shared_prompt_logprobs(model, responses, groups, 0)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


def test_reward_model_scores_equal_one_row_per_response():
    rm = RewardModel.build("tiny", seed=0)
    responses, groups = _groups(rm.model.config.vocab_size, seed=2)
    rows = rm.raw_scores(rm.collate(responses))
    packed = rm.raw_scores(rm.collate(responses, groups))
    assert packed.shape == (5,)
    torch.testing.assert_close(packed, rows, atol=1e-5, rtol=0)
