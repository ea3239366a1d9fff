"""The output head applied a chunk of tokens at a time (tether.models.head): the same values and
gradients as log_softmax of the whole logits, memory bounded by chunk x vocab, and on the tiny
model the same log-probs and parameter gradients as the plain logits path (with LoRA, under
bf16 autocast, with int and boolean logits_to_keep)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tether.config import LoraConfig
from tether.models.head import (
    chunked_logprobs,
    forward_hidden,
    forward_logprobs,
    output_head,
)
from tether.models.logprobs import (
    forward_logits,
    position_ids_from_mask,
    shift_to_tokens,
    token_entropy,
    token_logprobs,
)
from tether.models.lora import apply_lora
from tether.models.tiny import VOCAB_SIZE, tiny_llama

N, H, V = 11, 6, 13


def _inputs(dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(V, (N,), generator=g)
    # Weights on the outputs, so that every token's gradient differs.
    w_lp = torch.randn(N, generator=g, dtype=dtype)
    w_ent = torch.randn(N, generator=g, dtype=dtype)
    return hidden, weight, b, targets, w_lp, w_ent


def _reference(hidden, weight, bias, targets, temperature):
    logp = F.log_softmax(F.linear(hidden, weight, bias) / temperature, dim=-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [1, 3, N, 0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy", [False, True])
def test_values_and_gradients_match_the_whole_log_softmax(dtype, chunk, temperature, entropy):
    hidden, weight, bias, targets, w_lp, w_ent = _inputs(dtype, bias=chunk != 3)
    params = (hidden, weight, bias)
    ref_lp, ref_ent = _reference(hidden, weight, bias, targets, temperature)
    out = chunked_logprobs(hidden, weight, bias, targets, temperature, chunk=chunk,
                           entropy=entropy)
    lp, ent = out if entropy else (out, None)
    assert lp.dtype == dtype and lp.shape == (N,)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    ref_loss = (ref_lp * w_lp).sum()
    loss = (lp * w_lp).sum()
    if entropy:
        torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
        ref_loss = ref_loss + (ref_ent * w_ent).sum()
        loss = loss + (ent * w_ent).sum()
    for got, want in zip(_grads(loss, params), _grads(ref_loss, params), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_entropy_alone_and_logprobs_alone_get_exact_gradients():
    hidden, weight, bias, targets, w_lp, w_ent = _inputs(torch.float64)
    params = (hidden, weight, bias)
    for which, w in ((1, w_ent), (0, w_lp)):  # only the entropy used, then only the log-probs
        ref = _reference(hidden, weight, bias, targets, 1.3)[which]
        out = chunked_logprobs(hidden, weight, bias, targets, 1.3, chunk=4, entropy=True)
        for got, want in zip(_grads((out[which] * w).sum(), params),
                             _grads((ref * w).sum(), params), strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(7, (5,), generator=g)
    torch.autograd.gradcheck(
        lambda h, w, b: chunked_logprobs(h, w, b, targets, 0.8, chunk=2, entropy=True),
        (hidden, weight, bias))


def test_leading_dimensions_frozen_weight_and_no_grad():
    hidden, weight, bias, targets, *_ = _inputs(torch.float32)
    flat = chunked_logprobs(hidden, weight, bias, targets, chunk=4)
    batched = chunked_logprobs(hidden[:10].view(2, 5, H), weight, bias, targets[:10].view(2, 5),
                               chunk=4)
    assert batched.shape == (2, 5)
    torch.testing.assert_close(batched.flatten(), flat[:10])
    # Only the hidden states train (a LoRA policy's frozen head): no weight gradient.
    frozen = weight.detach()
    chunked_logprobs(hidden, frozen, None, targets, chunk=4).sum().backward()
    assert hidden.grad is not None and frozen.grad is None
    with torch.no_grad():
        out = chunked_logprobs(hidden, weight, bias, targets, chunk=4)
    assert not out.requires_grad
    torch.testing.assert_close(out, flat.detach())
    with pytest.raises(ValueError, match="one target per hidden state"):
        chunked_logprobs(hidden, weight, bias, targets[:3])


class _Largest(TorchDispatchMode):
    """The largest tensor any op returns (numel), forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_bounded_by_chunk_times_vocab():
    n, h, v, chunk = 64, 2, 100, 4  # n x v = 6400; chunk x v = 400; v x h, n x h <= 200
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(v, (n,), generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    for entropy in (False, True):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = chunked_logprobs(hidden, weight, None, targets, chunk=chunk, entropy=entropy)
        # Between forward and backward: the inputs and one float or two per token, no logits.
        assert max(saved) == v * h and sum(saved) <= v * h + n * h + 3 * n
        loss = sum(o.sum() for o in out) if entropy else out.sum()
        with _Largest() as mode:
            chunked_logprobs(hidden, weight, None, targets, chunk=chunk, entropy=entropy)
            loss.backward()
        assert mode.largest == chunk * v  # never anything bigger than one chunk's logits
    # The plain computation, for contrast, holds all n x v logits (and saves them).
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _Largest() as mode:
        _reference(hidden, weight, None, targets, 1.0)[0].sum().backward()
    assert mode.largest == n * v and max(saved) == n * v


# -- on the tiny model ---------------------------------------------------------------------------

def _batch(seed=0, b=3, t=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row
    mask[2, -2:] = 0  # a right-padded one
    return ids, mask


def _model(lora=False):
    model = tiny_llama(seed=3)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, target_modules="q_proj,v_proj"))
        with torch.no_grad():  # B starts at zero: give the adapters a part in the output
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model


def _kwargs(ids, mask, keep):
    return dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=False, logits_to_keep=keep)


def _weighted(values, seed=1):
    return (values * torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
            ).sum()


def _param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return dict(zip([n for n, p in model.named_parameters() if p.requires_grad],
                    torch.autograd.grad(loss, params), strict=True))


def _assert_grads_close(got, want, atol=1e-6, rtol=1e-4):
    """atol is relative to each tensor's largest gradient: an element's rounding error comes
    from the terms summed into it, in an order that differs between CPUs' kernels (AVX2 and
    AVX512 block the products differently), not from its own size."""
    assert got.keys() == want.keys()
    for name in want:
        scale = max(1.0, want[name].abs().max().item())
        torch.testing.assert_close(got[name], want[name], atol=atol * scale, rtol=rtol,
                                   msg=name)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("first", [1, 4])
def test_hidden_states_give_the_plain_paths_logprobs_and_gradients(lora, first):
    model = _model(lora)
    ids, mask = _batch()
    temperature = 0.8
    logits = forward_logits(model, ids, mask, first_token=first)
    plain_lp = token_logprobs(logits, ids, temperature)
    plain_ent = token_entropy(logits, temperature, ids.shape[1])
    plain = _param_grads(model, _weighted(plain_lp) + _weighted(plain_ent, seed=2))

    hidden, head = forward_hidden(model, **_kwargs(ids, mask, ids.shape[1] - first + 1))
    assert head is output_head(model) and isinstance(head, torch.nn.Linear)
    assert head.weight is output_head(model).weight  # tied: the embedding matrix
    torch.testing.assert_close(F.linear(hidden, head.weight, head.bias), logits)
    lp, ent = chunked_logprobs(hidden[:, :-1], head.weight, head.bias, ids[:, first:],
                               temperature, chunk=5, entropy=True)
    lp, ent = shift_to_tokens(lp, ids.shape[1]), shift_to_tokens(ent, ids.shape[1])
    torch.testing.assert_close(lp, plain_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, plain_ent, atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(model, _weighted(lp) + _weighted(ent, seed=2)), plain)
    # The head is back in place.
    assert output_head(model) is head
    inner = model.get_base_model() if lora else model
    assert inner.lm_head is head


@pytest.mark.parametrize("lora", [False, True])
def test_boolean_logits_to_keep(lora):
    model = _model(lora)
    ids, mask = _batch(seed=4)
    keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)) < 0.5
    keep[:, -1] = False  # the last position predicts nothing
    targets = ids[:, 1:][keep[:, :-1]]
    logits = model(**_kwargs(ids, mask, keep)).logits
    assert logits.shape == (int(keep.sum()), VOCAB_SIZE)
    plain_lp = F.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    plain = _param_grads(model, _weighted(plain_lp))

    hidden, head = forward_hidden(model, **_kwargs(ids, mask, keep))
    assert hidden.shape == (int(keep.sum()), head.in_features)
    torch.testing.assert_close(F.linear(hidden, head.weight, head.bias), logits)
    lp = chunked_logprobs(hidden, head.weight, head.bias, targets, chunk=3)
    torch.testing.assert_close(lp, plain_lp, atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(model, _weighted(lp)), plain)

    # The same with the head applied inside the forward.
    lp2 = forward_logprobs(model, targets, chunk=3, **_kwargs(ids, mask, keep))
    torch.testing.assert_close(lp2, lp)
    _assert_grads_close(_param_grads(model, _weighted(lp2)), plain)


def test_forward_logprobs_with_int_logits_to_keep_and_entropy():
    model = _model()
    ids, mask = _batch(seed=6)
    logits = forward_logits(model, ids, mask, first_token=3)
    plain = token_logprobs(logits, ids, 1.5) + token_entropy(logits, 1.5, ids.shape[1])
    targets = torch.cat([ids[:, 3:], torch.zeros_like(ids[:, :1])], 1)  # the last: any id
    lp, ent = forward_logprobs(model, targets, temperature=1.5, chunk=7, entropy=True,
                               **_kwargs(ids, mask, ids.shape[1] - 2))
    assert lp.shape == ent.shape == targets.shape
    mine = shift_to_tokens(lp[:, :-1] + ent[:, :-1], ids.shape[1])
    torch.testing.assert_close(mine, plain, atol=1e-5, rtol=1e-5)
    _assert_grads_close(_param_grads(model, _weighted(mine)),
                        _param_grads(model, _weighted(plain)))
    with pytest.raises(ValueError, match="do not match the kept positions"):
        forward_logprobs(model, targets[:, 1:], **_kwargs(ids, mask, ids.shape[1] - 2))
    assert model.lm_head is output_head(model)


def test_head_is_restored_when_the_forward_raises():
    model = _model()
    head = model.lm_head
    ids, mask = _batch()
    with pytest.raises(IndexError):
        forward_hidden(model, **_kwargs(ids + VOCAB_SIZE, mask, 0))  # ids past the embedding
    assert model.lm_head is head and model.get_output_embeddings() is head
    with pytest.raises(ValueError, match="labels"):
        forward_hidden(model, labels=ids, **_kwargs(ids, mask, 0))
    assert model.lm_head is head
    # Still the whole model's logits afterwards.
    torch.testing.assert_close(model(**_kwargs(ids, mask, 0)).logits,
                               F.linear(forward_hidden(model, **_kwargs(ids, mask, 0))[0],
                                        head.weight))


def test_an_adapter_on_the_head_itself_is_refused():
    model = apply_lora(tiny_llama(), LoraConfig(enabled=True, r=2, target_modules="lm_head"))
    ids, mask = _batch()
    with pytest.raises(TypeError, match="not a torch.nn.Linear"):
        forward_hidden(model, **_kwargs(ids, mask, 0))
    assert type(model.get_base_model().lm_head).__name__ != "Identity"


@pytest.mark.parametrize("lora", [False, True])
def test_under_bf16_autocast_close_to_the_plain_path(lora):
    model = _model(lora)
    ids, mask = _batch(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = forward_logits(model, ids, mask, first_token=2)
        plain_lp = token_logprobs(logits, ids, 0.9)
        hidden, head = forward_hidden(model, **_kwargs(ids, mask, ids.shape[1] - 1))
        lp = shift_to_tokens(chunked_logprobs(hidden[:, :-1], head.weight, head.bias,
                                              ids[:, 2:], 0.9, chunk=4), ids.shape[1])
    assert logits.dtype == torch.bfloat16 and lp.dtype == torch.float32
    # The same bf16 matmul as autocast's lm_head, then the same fp32 log-softmax.
    torch.testing.assert_close(lp, plain_lp, atol=1e-6, rtol=1e-6)
    plain = _param_grads(model, _weighted(plain_lp))
    mine = _param_grads(model, _weighted(lp))
    # Within bf16 rounding: the head's weight gradient (the tied embeddings, when trained) is
    # summed over chunks in fp32 here, in one bf16 matmul there; the rest is the same.
    for name in plain:
        scale = plain[name].abs().max()
        assert scale > 0 and (mine[name] - plain[name]).abs().max() <= 1e-2 * scale, name
