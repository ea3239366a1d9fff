"""Flex attention on packed rows (model.attention=flex_attention): the BlockMask made from a
layout's groups and segments is block_mask's dense mask, token for token, and has the empty
128 x 128 tiles that flex skips; the tiny model's packed log-probs, gradients and rewards with
it are sdpa's with the dense mask.

FlexAttention has no backward on CPU in torch 2.13 (flex_attention raises NotImplementedError
when q, k or v requires grad, compiled or not), so on CPU the model runs under no_grad (the
compiled, C++ kernel: a few seconds to compile on the first call) and the gradient tests skip;
on a GPU (python -m bench gpu-check) they run."""

import pytest
import torch
from conftest import ranking_rows
from torch.nn.attention.flex_attention import BlockMask, create_mask

from tether.data.tokenize import encode_example
from tether.models.reward import RewardModel
from tether.models.shared_prompt import (
    block_mask,
    flex_block_mask,
    pack_groups,
    sequence_logprobs,
    shared_prompt_logprobs,
)
from tether.models.tiny import tiny_llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _fresh_compile():
    """Each test compiles flex attention afresh, for its own shapes: on CPU, a recompile
    where both the batch and the row length changed (dynamic in both) fails in inductor's C++
    flex template (torch 2.13: 'cur_kvSplitSize8' was not declared)."""
    torch._dynamo.reset()


def _with_flex(model, fn):
    """fn() with the model on flex attention; a skip where flex has no backward (CPU)."""
    model.config._attn_implementation = "flex_attention"
    try:
        return fn()
    except NotImplementedError as e:
        if "does not support backward" not in str(e):
            raise
        pytest.skip(f"{e} (torch {torch.__version__}): the gradients are checked on a GPU")
    finally:
        model.config._attn_implementation = "sdpa"


# -- the mask ----------------------------------------------------------------------------------

def _layouts():
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 500, (n,), generator=g).tolist()

    p, q = ids(7), ids(40)
    return {
        # Two rows: a pair under a shared prompt, a sequence alone and right padding.
        "rows": pack_groups([[5, 6, 7, 1, 2], [5, 6, 7, 3], [8, 9]], [2, 1], pad_id=0),
        # One row: groups with shared prefixes (one response all prefix but its last token)
        # and sequences alone.
        "one_row": pack_groups([p + ids(3), p + ids(1), ids(5), p[:3], p[:3] + ids(2),
                                p[:3] + ids(4), ids(2)], [2, 1, 3, 1], pad_id=0, one_row=True),
        # One row of several 128-column tiles (not a whole number of them): most tiles empty.
        "long": pack_groups([q + ids(60), q + ids(90), q + ids(20), q + ids(75)]
                            + [ids(n) for n in (130, 9, 64, 150, 33, 200)],
                            [4, 1, 1, 1, 1, 1, 1], pad_id=0, one_row=True),
        # Rows of different widths, the short ones padded past a tile.
        "long_rows": pack_groups([q + ids(100), q + ids(150), ids(12), ids(250)], [2, 1, 1],
                                 pad_id=0),
    }


@pytest.mark.parametrize("name", ["rows", "one_row", "long", "long_rows"])
def test_block_mask_is_the_dense_mask(name):
    packed = _layouts()[name]
    dense = block_mask(packed.groups, packed.segments)
    n, length = packed.groups.shape
    mask = flex_block_mask(packed.groups, packed.segments)
    assert isinstance(mask, BlockMask) and mask.shape == (n, 1, length, length)
    assert torch.equal(create_mask(mask.mask_mod, n, 1, length, length, device="cpu"), dense)
    # The tiles flex reads are those with any True in them: the others are skipped.
    tiles = -(-length // 128)
    padded = torch.zeros(n, 1, tiles * 128, tiles * 128, dtype=torch.bool)
    padded[..., :length, :length] = dense
    in_use = padded.view(n, 1, tiles, 128, tiles, 128).any(5).any(3)
    assert torch.equal(mask.to_dense().bool(), in_use)
    if name == "long":
        assert in_use.sum() < tiles * (tiles + 1) // 2  # fewer than the causal mask's


def test_the_mask_is_what_the_attention_takes():
    packed = _layouts()["rows"]
    model = tiny_llama()
    assert torch.equal(packed.attention_mask_for(model, "cpu"), packed.attention_mask)
    model.config._attn_implementation = "eager"
    additive = packed.attention_mask_for(model, "cpu")
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, packed.attention_mask)
    model.config._attn_implementation = "flex_attention"
    assert isinstance(packed.attention_mask_for(model, "cpu"), BlockMask)


# -- the model ---------------------------------------------------------------------------------

def _cases(tokenizer):
    """(sequences, group sizes or None) of each case."""

    def encode(prompt, response):
        return encode_example(tokenizer, [{"role": "user", "content": prompt}], response,
                              chat_template=True, max_length=128, truncation="prompt_left")

    sft = [encode(f"Continue this movie review, part {i}:", " the acting" + " was lovely" * i)
           for i in range(6)]
    rankings = ranking_rows(3, k=4, seed=1)
    ranked = [encode(r["prompt"], text) for r in rankings for text in r["responses"]]
    return {"sft": (sft, None), "groups": (ranked, [4] * len(rankings))}


def _logprobs(model, tokenizer, case, one_row):
    sequences, sizes = _cases(tokenizer)[case]
    if sizes is None:
        return sequence_logprobs(model, sequences, tokenizer.pad_token_id, one_row=one_row)
    logprobs, mask, _ = shared_prompt_logprobs(model, sequences, sizes,
                                               tokenizer.pad_token_id, one_row=one_row)
    return logprobs, mask


@pytest.mark.parametrize("case, one_row", [("sft", True), ("groups", True), ("groups", False)])
def test_logprobs_equal_sdpa(tokenizer, case, one_row):
    model = tiny_llama().to(DEVICE).eval()
    with torch.no_grad():
        sdpa, mask = _logprobs(model, tokenizer, case, one_row)
        flex, _ = _with_flex(model, lambda: _logprobs(model, tokenizer, case, one_row))
    assert mask.sum() > 20
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case, one_row", [("sft", True), ("groups", True), ("groups", False)])
def test_loss_and_gradients_equal_sdpa(tokenizer, case, one_row):
    model = tiny_llama().to(DEVICE).train()

    def run():
        logprobs, mask = _logprobs(model, tokenizer, case, one_row)
        loss = -(logprobs * mask).sum() / mask.sum()
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (loss_sdpa, grads_sdpa), (loss_flex, grads_flex) = run(), _with_flex(model, run)
    torch.testing.assert_close(loss_flex, loss_sdpa, atol=1e-5, rtol=1e-5)
    for flex, sdpa in zip(grads_flex, grads_sdpa, strict=True):
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-4)


def _rm_batch():
    rm = RewardModel.build("tiny", seed=0).to(DEVICE)
    rankings = ranking_rows(4, k=4, seed=2)
    encoded = [rm.encode([{"role": "user", "content": r["prompt"]}], text)
               for r in rankings for text in r["responses"]]
    return rm, encoded, [4] * len(rankings)


def test_reward_model_scores_equal_sdpa():
    rm, encoded, sizes = _rm_batch()
    rm.model.eval()
    with torch.no_grad():
        sdpa = rm.raw_scores(rm.collate(encoded, sizes, one_row=True))
        batch = _with_flex(rm.model, lambda: rm.collate(encoded, sizes, one_row=True))
        assert isinstance(batch["attention_mask"], BlockMask)
        flex = _with_flex(rm.model, lambda: rm.raw_scores(batch))
    assert flex.shape == (len(encoded),)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_reward_model_gradients_equal_sdpa():
    rm, encoded, sizes = _rm_batch()

    def run():
        raw = rm.raw_scores(rm.collate(encoded, sizes, one_row=True))
        loss = (raw * torch.linspace(-1, 1, len(raw), device=raw.device)).sum()
        rm.model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in rm.model.parameters()
                               if p.grad is not None]

    (loss_sdpa, grads_sdpa), (loss_flex, grads_flex) = run(), _with_flex(rm.model, run)
    torch.testing.assert_close(loss_flex, loss_sdpa, atol=1e-5, rtol=1e-5)
    for flex, sdpa in zip(grads_flex, grads_sdpa, strict=True):
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-4)
