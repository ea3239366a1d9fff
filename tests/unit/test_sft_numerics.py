"""The SFT objective and the log-prob utilities, on hand-computed values and invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from tether.config import OptimConfig
from tether.data.collate import collate
from tether.data.order import batch_indices, steps_per_epoch
from tether.data.tokenize import Encoded, encode_example, encode_prompt
from tether.losses.sft import masked_nll
from tether.models.logprobs import first_scored, forward_logits, token_entropy, token_logprobs
from tether.optim import lr_multiplier, make_optimizer


def test_masked_nll_hand_computed():
    logprobs = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -4.0, 0.0]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    # Masked tokens: 2, 3, 0.5, 4 -> sum 9.5 over 4 tokens.
    assert masked_nll(logprobs, mask).item() == pytest.approx(9.5 / 4)
    # With the token count of a larger batch, the same sum is divided by that count instead.
    assert masked_nll(logprobs, mask, num_tokens=19).item() == pytest.approx(0.5)
    # An all-zero mask gives 0, not NaN.
    assert masked_nll(logprobs, torch.zeros_like(mask)).item() == 0.0


def test_token_logprobs_hand_computed():
    # Vocabulary of 2: logits [0, ln 3] give p = [1/4, 3/4].
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])
    ids = torch.tensor([[1, 0, 1]])
    out = token_logprobs(logits, ids)
    assert out.shape == ids.shape
    assert out[0, 0].item() == 0.0  # no prediction for the first token
    assert out[0, 1].item() == pytest.approx(math.log(0.25))  # token 0 under [1/4, 3/4]
    assert out[0, 2].item() == pytest.approx(math.log(0.5))  # token 1 under [1/2, 1/2]


def test_temperature_divides_logits():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    assert torch.allclose(token_logprobs(logits, ids, temperature=0.7),
                          token_logprobs(logits / 0.7, ids))
    # Entropy of a uniform distribution is log V; a temperature does not change uniformity.
    uniform = torch.zeros(1, 3, 11)
    assert torch.allclose(token_entropy(uniform, 0.5)[0, 1:], torch.full((2,), math.log(11)))


def test_logprobs_match_transformers_loss(model, tokenizer):
    ids = torch.tensor([tokenizer("The plot was dull but the acting was lovely.").input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss  # transformers' own shifted CE
        ours = masked_nll(token_logprobs(forward_logits(model, ids, mask), ids),
                          torch.cat([torch.zeros(1, 1, dtype=torch.long), mask[:, 1:]], 1))
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_logprobs_match_log_softmax_per_token(model):
    ids = torch.randint(3, 500, (3, 9))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(token_logprobs(logits, ids)[:, 1:], expected, atol=1e-6)


def test_first_scored_column():
    mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]])
    assert first_scored(mask) == 2
    assert first_scored(torch.ones(2, 4)) == 1  # token 0 has no prediction
    assert first_scored(torch.zeros(2, 4)) == 4


@pytest.mark.parametrize("first", [1, 2, 5, 9])
def test_logits_of_the_scored_tokens_only_give_the_same_logprobs(model, first):
    """forward_logits(first_token=k): the output head runs on the last positions only, and the
    log-probs and entropies of tokens k.. are those of the full logits, 0 before."""
    ids = torch.randint(3, 500, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 7 + [0] * 2, [1] * 5 + [0] * 4])
    with torch.no_grad():
        full = forward_logits(model, ids, mask)
        part = forward_logits(model, ids, mask, first)
    assert part.shape[1] == 9 - first + 1
    for per_token in (lambda lg: token_logprobs(lg, ids, 0.8),
                      lambda lg: token_entropy(lg, 0.8, ids.shape[1])):
        want, got = per_token(full), per_token(part)
        assert got.shape == ids.shape
        torch.testing.assert_close(got[:, first:], want[:, first:], atol=1e-5, rtol=1e-5)
        assert (got[:, :first] == 0).all()


def _encode(tokenizer, rows, **kw):
    return [encode_example(tokenizer, [{"role": "user", "content": r["prompt"]}], r["completion"],
                           chat_template=True, max_length=kw.get("max_length", 256),
                           truncation=kw.get("truncation", "prompt_left")) for r in rows]


def test_loss_is_the_same_for_left_and_right_padding(model, tokenizer, sft_rows):
    examples = _encode(tokenizer, sft_rows[:6])
    with torch.no_grad():
        per_side = {}
        for side in ("left", "right"):
            batch = collate(examples, tokenizer.pad_token_id, side)
            logprobs = token_logprobs(forward_logits(model, batch["input_ids"],
                                                     batch["attention_mask"]), batch["input_ids"])
            per_side[side] = (masked_nll(logprobs, batch["loss_mask"]),
                              (logprobs * batch["loss_mask"]).sum(-1))
        # More padding (a long neighbour in the batch) changes nothing either.
        batch = collate(examples + [Encoded([5] * 60, [0] * 60)], tokenizer.pad_token_id, "right")
        logprobs = token_logprobs(forward_logits(model, batch["input_ids"],
                                                 batch["attention_mask"]), batch["input_ids"])
        wide = (logprobs * batch["loss_mask"]).sum(-1)[:-1]
    assert per_side["left"][0].item() == pytest.approx(per_side["right"][0].item(), abs=1e-5)
    assert torch.allclose(per_side["left"][1], per_side["right"][1], atol=1e-5)
    assert torch.allclose(wide, per_side["right"][1], atol=1e-5)


def test_gradient_accumulation_1x8_equals_8x1(tokenizer, sft_rows):
    from tether.models.tiny import tiny_llama

    examples = _encode(tokenizer, sft_rows[:8])  # lengths differ, so token weighting matters
    num_tokens = sum(sum(e.loss_mask) for e in examples)

    def grads(micro: int) -> list[torch.Tensor]:
        model = tiny_llama(seed=1)
        for start in range(0, 8, micro):
            batch = collate(examples[start:start + micro], tokenizer.pad_token_id)
            logprobs = token_logprobs(forward_logits(model, batch["input_ids"],
                                                     batch["attention_mask"]), batch["input_ids"])
            masked_nll(logprobs, batch["loss_mask"], num_tokens).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole, accumulated = grads(8), grads(1)
    for a, b in zip(whole, accumulated, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_chat_template_mask_covers_response_and_eos_only(tokenizer):
    messages = [{"role": "user", "content": "Continue this movie review: the plot"}]
    enc = encode_example(tokenizer, messages, " was dull.", chat_template=True, max_length=256,
                         truncation="prompt_left")
    prompt = encode_prompt(tokenizer, messages, chat_template=True)
    n = len(prompt)
    assert enc.input_ids[:n] == prompt and enc.loss_mask[:n] == [0] * n
    response = enc.input_ids[n:]
    assert enc.loss_mask[n:] == [1] * len(response)
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response[:-1]) == " was dull."
    # Prompt + response is exactly the chat template's rendering of the whole conversation
    # (up to the newline ChatML writes after the assistant's end-of-turn token).
    reply = [{"role": "assistant", "content": " was dull."}]
    full = tokenizer.apply_chat_template(messages + reply, tokenize=False)
    assert tokenizer.decode(enc.input_ids) + "\n" == full
    assert "<|im_start|>assistant\n" in tokenizer.decode(prompt)


def test_plain_text_mode_has_no_template(tokenizer):
    messages = [{"role": "user", "content": "The film"}]
    enc = encode_example(tokenizer, messages, " was fine.", chat_template=False, max_length=64,
                         truncation="prompt_left")
    assert tokenizer.decode(enc.input_ids) == "The film was fine.<|im_end|>"
    assert sum(enc.loss_mask) == len(tokenizer(" was fine.").input_ids) + 1


def test_truncation_policies(tokenizer):
    messages = [{"role": "user", "content": "word " * 100}]
    response = " a short reply."
    reply_len = len(tokenizer(response).input_ids) + 1
    kept = encode_example(tokenizer, messages, response, chat_template=True, max_length=32,
                          truncation="prompt_left")
    assert len(kept.input_ids) == 32 and kept.truncated
    assert sum(kept.loss_mask) == reply_len and kept.input_ids[-1] == tokenizer.eos_token_id
    assert encode_example(tokenizer, messages, response, chat_template=True, max_length=32,
                          truncation="drop") is None
    # A response longer than max_length keeps a quarter of the window for the prompt.
    long = encode_example(tokenizer, messages, " long" * 100, chat_template=True, max_length=32,
                          truncation="prompt_left")
    assert len(long.input_ids) == 32 and long.loss_mask.count(0) == 8


def test_lr_schedule_values():
    kw = dict(warmup_steps=10, total_steps=110)
    assert lr_multiplier(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(60, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_multiplier(100, schedule="constant", **kw) == 1.0
    # A floor: the decay ends at `final` instead of 0, halfway is halfway between.
    assert lr_multiplier(110, schedule="cosine", final=0.1, **kw) == pytest.approx(0.1)
    assert lr_multiplier(60, schedule="cosine", final=0.1, **kw) == pytest.approx(0.55)
    assert lr_multiplier(60, schedule="linear", final=0.2, **kw) == pytest.approx(0.6)
    assert lr_multiplier(5, schedule="linear", final=0.2, **kw) == pytest.approx(0.6)  # warmup


def test_batch_order_visits_each_example_once_per_epoch():
    n, bs = 23, 4
    per_epoch = steps_per_epoch(n, bs)
    for epoch in range(2):
        seen = [i for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
                for i in batch_indices(n, bs, s, seed=3)]
        assert len(seen) == len(set(seen)) == per_epoch * bs
    assert batch_indices(n, bs, 0, seed=3) == batch_indices(n, bs, 0, seed=3)
    assert batch_indices(n, bs, 0, seed=3) != batch_indices(n, bs, per_epoch, seed=3)


def test_optimizer_groups_decay_and_per_prefix_learning_rates():
    model = torch.nn.ModuleDict({"policy": torch.nn.Linear(4, 4),
                                 "value": torch.nn.Linear(4, 1, bias=False)})
    cfg = OptimConfig(lr=1e-5, weight_decay=0.1)
    plain = make_optimizer(model, cfg)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in plain.param_groups] == [
        (1e-5, 0.1, 2), (1e-5, 0.0, 1)]  # the two matrices decay, the bias does not
    split = make_optimizer(model, cfg, {"value.": 1e-3})
    by_lr: dict[float, int] = {}
    for g in split.param_groups:
        by_lr[g["lr"]] = by_lr.get(g["lr"], 0) + sum(p.numel() for p in g["params"])
    assert by_lr == {1e-5: 4 * 4 + 4, 1e-3: 4}
