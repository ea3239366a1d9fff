"""The output head and the log-softmax over the vocabulary, a chunk of tokens at a time.

The plain path (tether.models.logprobs, shared_prompt.PackedLogits) has the model return
logits [tokens, vocab] and then upcasts them to fp32 and log-softmaxes them: for 16k tokens and
SmolLM2's 49k vocabulary that is 3 GB of fp32 logits, as much again for their softmax in the
backward, plus the bf16 logits. Here the model stops at its final hidden states and the head is
applied `chunk` tokens at a time, inside an autograd function that keeps only the hidden states
and one float per token between forward and backward, and recomputes each chunk's logits in the
backward. Peak memory for the head is then a few chunk x vocab fp32 buffers (plus the
vocab x hidden weight gradient, which the plain path makes too), whatever the number of tokens.
Values and gradients are the plain path's up to float rounding (exact, not an approximation).

Three calls:

    hidden, head = forward_hidden(model, input_ids=..., attention_mask=..., logits_to_keep=...)
    logprobs = chunked_logprobs(hidden, head.weight, head.bias, targets, temperature=0.7)

    # or both at once, the head applied inside the model's forward (needed under FSDP2):
    logprobs = forward_logprobs(model, targets, temperature=0.7, input_ids=..., ...)

Conventions
-----------
- Tokens are flat: `chunked_logprobs` takes hidden [..., H] and targets [...] with the same
  leading shape (usually [N]) and returns [...]: entry i is log p(targets[i]) under the
  distribution predicted from hidden[i]. There is no shift and no padding here: the caller
  picks the positions (hidden[t] predicts token t + 1), gathers the targets, and scatters the
  result back into its [B, T] layout (tether.models.logprobs.shift_to_tokens for the
  `logits_to_keep=int` layout, PackedLogits.index for the packed one). Positions whose value
  nobody reads still need a valid target id (any, e.g. 0). A position that predicts several
  tokens (a shared prompt's last position, under each response) is simply gathered once per
  token, `hidden[index[rows, tokens]]` with targets `input_ids[rows, tokens]`: the gather's
  backward sums the gradients of the copies.
- `forward_hidden` returns hidden states at exactly the positions where the same forward would
  have returned logits: [B, K, H] for `logits_to_keep=K` (an int; 0 means all T positions),
  [num_true, H] for a boolean [B, T] mask (row-major order, as `hidden_states[mask]`).
- dtypes follow the plain path: the head's matmul runs in the autocast dtype when autocast is
  on for the hidden states' device (bf16 under tether.device.autocast), else in the inputs'
  dtype; the log-softmax, the outputs and the temperature division are in fp32 (fp64 when the
  inputs are fp64). The weight gradient is accumulated over chunks in the weight's dtype.
- Logits are divided by `temperature` before the log-softmax, as token_logprobs does.
- Double backward is not supported (the backward is hand-written).

Which models: Hugging Face causal LMs whose forward ends with
`logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))` and does nothing
to the logits afterwards: Llama (SmolLM2), Qwen2/3, Mistral and most others. Models that scale
or soft-cap their logits after the head (Gemma 2's final_logit_softcapping, Cohere's
logit_scale) are refused, as is a head that is not a plain `torch.nn.Linear` (peft adapters on
lm_head itself; peft's default 'all-linear' leaves lm_head alone). Do not pass `labels`.

Wrappers: the head is found through DDP's `.module`, peft's `get_base_model()` and
torch.compile's `_orig_mod`, and swapped on the inner model for the duration of one call (in a
try/finally; a compiled model would recompile on the swap). The call itself is the wrapper's
own `model(...)`, so DDP's and peft's forward logic and hooks run as usual. Tied embeddings
work: `head.weight` is the embedding matrix, and its gradient sums both uses.
- DDP: `forward_hidden` then `chunked_logprobs` is fine with the default
  find_unused_parameters=False; with find_unused_parameters=True an untied head would be marked
  unused by the forward and then receive a gradient: use `forward_logprobs` there.
- FSDP2 (fully_shard on the root with reshard_after_forward=True, as tether.distributed does):
  after the forward the root's parameters, the head among them, are sharded again, so
  `head.weight` is no longer the whole matrix. Use `forward_logprobs`, which applies the head
  inside the forward while FSDP2 holds the weight whole (and in the backward, after FSDP2's
  pre-backward unshard), exactly like the model's own lm_head would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 4096


# -- finding and bypassing the head ------------------------------------------------------------

def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP / DataParallel, peft and torch.compile wrappers."""
    while True:
        if type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            model = model.module
        elif _is_peft(model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The output head (`lm_head`) of a causal LM, through DDP, peft and torch.compile wrappers.
    Raises TypeError if the model has none or it is not a plain torch.nn.Linear."""
    inner = _inner_model(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(inner).__name__}: the output head is "
                        f"{type(head).__name__ if head is not None else 'missing'}, not a "
                        f"torch.nn.Linear (an adapter on lm_head?); use the plain logits path")
    config = getattr(inner, "config", None)
    for key, neutral in (("final_logit_softcapping", None), ("logit_scale", None),
                         ("logits_scaling", 1.0)):
        value = getattr(config, key, neutral)
        if value not in (neutral, 0, 1.0, None):
            raise TypeError(f"{type(inner).__name__} transforms its logits after the head "
                            f"(config.{key}={value}); use the plain logits path")
    return head


@contextlib.contextmanager
def _head_replaced(model: torch.nn.Module, replacement: torch.nn.Module
                   ) -> Iterator[torch.nn.Linear]:
    """The inner model's head swapped for `replacement` for the duration; yields the head."""
    head = output_head(model)
    inner = _inner_model(model)
    for parent in inner.modules():
        name = next((n for n, child in parent._modules.items() if child is head), None)
        if name is not None:
            break
    else:  # get_output_embeddings returned a module that is not in the tree
        raise TypeError(f"{type(inner).__name__}: its output head is not one of its submodules")
    setattr(parent, name, replacement)
    try:
        yield head
    finally:
        setattr(parent, name, head)


def _check_kwargs(forward_kwargs: dict) -> None:
    if forward_kwargs.get("labels") is not None:
        raise ValueError("labels: the forward would compute a loss from logits it no longer "
                         "has; compute log-probs with chunked_logprobs instead")


def forward_hidden(model: torch.nn.Module, **forward_kwargs
                   ) -> tuple[torch.Tensor, torch.nn.Linear]:
    """`model(**forward_kwargs)` with the output head bypassed: (hidden, head).

    hidden: the final hidden states (after the final norm) at exactly the positions the
    forward would have returned logits for: [B, K, H] with `logits_to_keep=K` (an int, 0 or
    absent: all T positions), [num_true, H] with a boolean [B, T] `logits_to_keep` mask.
    `hidden @ head.weight.T (+ head.bias)` is the forward's `.logits`.
    head: the model's torch.nn.Linear head, to pass as `chunked_logprobs(hidden, head.weight,
    head.bias, ...)`; gradients reach its weight (the embeddings when tied) through that call.

    The wrapper's own forward runs (DDP, peft hooks and adapters), so gradients flow to every
    parameter as in the plain path. The head is restored even if the forward raises. Under
    FSDP2 use forward_logprobs instead (see the module docstring)."""
    _check_kwargs(forward_kwargs)
    with _head_replaced(model, torch.nn.Identity()) as head:
        hidden = model(**forward_kwargs).logits
    if hidden.shape[-1] != head.in_features:
        raise TypeError(f"the forward returned [..., {hidden.shape[-1]}] with its head "
                        f"bypassed, not the hidden size {head.in_features}")
    return hidden, head


class _Apply(torch.nn.Module):
    """A stand-in head: calls `fn(hidden)` (a plain attribute, so nothing is registered)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fn(hidden)


def forward_logprobs(model: torch.nn.Module, targets: torch.Tensor, *,
                     temperature: float = 1.0, chunk: int = DEFAULT_CHUNK,
                     entropy: bool = False, **forward_kwargs
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`model(**forward_kwargs)` with chunked_logprobs applied in place of the output head,
    inside the forward: log-probs (and entropies with entropy=True) shaped like `targets`.

    `targets` has the shape the forward's logits have without their vocab dimension: [B, K]
    for `logits_to_keep=K` (int; [B, T] for 0 / absent), [num_true] for a boolean mask. Entry
    i is the token the position's hidden state predicts (the next token); give any valid id
    (0) where no value is wanted, e.g. the last position, which predicts nothing.

    The same values and gradients as forward_hidden followed by chunked_logprobs; use this one
    under FSDP2 or DDP with find_unused_parameters=True (the module docstring says why)."""
    _check_kwargs(forward_kwargs)
    head = output_head(model)

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:-1] != targets.shape:
            raise ValueError(f"targets {list(targets.shape)} do not match the kept positions "
                             f"{list(hidden.shape[:-1])}")
        out = chunked_logprobs(hidden, head.weight, head.bias, targets, temperature=temperature,
                               chunk=chunk, entropy=entropy)
        return torch.stack(out, -1) if entropy else out

    with _head_replaced(model, _Apply(apply)):
        out = model(**forward_kwargs).logits
    return (out[..., 0], out[..., 1]) if entropy else out


# -- the chunked log-softmax -------------------------------------------------------------------

def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float, float_dtype: torch.dtype) -> torch.Tensor:
    """[c, V] tempered logits in float_dtype; h, weight, bias already in the matmul dtype."""
    logits = F.linear(h, weight, bias).to(float_dtype)
    if temperature != 1.0:
        logits = logits.div_(temperature)  # in place: .to may have returned the matmul's output
    return logits


def _spans(n: int, chunk: int) -> list[tuple[int, int]]:
    step = n if chunk <= 0 or chunk >= n else chunk
    return [(s, min(s + step, n)) for s in range(0, n, max(step, 1))]


class _ChunkedLogprobs(torch.autograd.Function):
    """Autograd over (hidden [N, H], weight [V, H], bias [V] | None); targets [N] int.
    Saves hidden, weight, bias, targets, the log-sum-exp [N] (and the entropy [N]); the logits
    of a chunk exist only while that chunk is processed, in forward and again in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, entropy,
                matmul_dtype, float_dtype):
        w = weight.to(matmul_dtype)  # one cast per call (autocast caches it the same way)
        b = bias.to(matmul_dtype) if bias is not None else None
        n = hidden.shape[0]
        logprobs = hidden.new_empty(n, dtype=float_dtype)
        lse = hidden.new_empty(n, dtype=float_dtype)
        ent = hidden.new_empty(n, dtype=float_dtype) if entropy else None
        for s, e in _spans(n, chunk):
            logits = _chunk_logits(hidden[s:e].to(matmul_dtype), w, b, temperature, float_dtype)
            lse[s:e] = logits.logsumexp(-1)
            logprobs[s:e] = logits.gather(1, targets[s:e, None]).squeeze(1) - lse[s:e]
            if entropy:
                logp = logits.sub_(lse[s:e, None])  # the logits buffer becomes log p
                ent[s:e] = -(logp.exp().mul_(logp)).sum(-1)
            del logits
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.config = (temperature, chunk, entropy, matmul_dtype, float_dtype)
        if entropy:
            return logprobs, ent
        return logprobs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy=None):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are explicit
            return _ChunkedLogprobs._backward(ctx, hidden, weight, bias, targets, lse, ent,
                                              grad_logprobs, grad_entropy)

    @staticmethod
    def _backward(ctx, hidden, weight, bias, targets, lse, ent, grad_logprobs, grad_entropy):
        temperature, chunk, entropy, matmul_dtype, float_dtype = ctx.config
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(matmul_dtype)
        b = bias.to(matmul_dtype) if bias is not None else None
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=float_dtype, device=weight.device) \
            if need_b else None
        if grad_logprobs is None:
            grad_logprobs = lse.new_zeros(n)
        for s, e in _spans(n, chunk):
            h = hidden[s:e].to(matmul_dtype)
            g_lp = grad_logprobs[s:e, None].to(float_dtype)
            # d logp[y] / dz = onehot(y) - p;  d entropy / dz = -p * (log p + entropy)
            logp = _chunk_logits(h, w, b, temperature, float_dtype).sub_(lse[s:e, None])
            p = logp.exp()
            if entropy and grad_entropy is not None:
                grad = logp.add_(ent[s:e, None]).mul_(p).mul_(-grad_entropy[s:e, None])
                grad.sub_(p.mul_(g_lp))
            else:
                grad = p.mul_(-g_lp)
            del logp, p
            rows = torch.arange(e - s, device=grad.device)
            grad[rows, targets[s:e]] += g_lp[:, 0]
            if temperature != 1.0:
                grad.div_(temperature)  # d z / d logits
            if need_b:
                grad_b += grad.sum(0)
            grad = grad.to(matmul_dtype)
            if need_h:
                grad_h[s:e] = grad @ w
            if need_w:
                if grad_w.dtype == matmul_dtype:
                    grad_w.addmm_(grad.T, h)
                else:  # e.g. bf16 matmul under autocast, fp32 weight: accumulate in fp32
                    grad_w += grad.T @ h
            del grad
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     targets: torch.Tensor, temperature: float = 1.0,
                     chunk: int = DEFAULT_CHUNK, entropy: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) under softmax((hidden @ weight.T + bias) / temperature), `chunk` tokens
    at a time: [...] from hidden [..., H] and targets [...] (usually flat: [N, H], [N]).

    With entropy=True, (logprobs, entropy): also the entropy of each position's whole
    tempered distribution. Gradients w.r.t. hidden, weight and bias are exact (for the entropy
    too); targets get none. Logits are recomputed chunk by chunk in the backward, so memory
    beyond the inputs is a few [chunk, V] fp32 buffers, plus the [V, H] weight gradient.
    chunk <= 0 or >= N: one chunk (the plain computation, memory like the plain path's).

    dtypes (see the module docstring): the matmul in the autocast dtype when autocast is on
    for hidden's device, else in the promoted dtype of hidden and weight; the softmax and the
    outputs in fp32 (fp64 for fp64 inputs)."""
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., {hidden.shape[-1]}] and weight {list(weight.shape)} "
                         f"do not match (weight is [vocab, hidden])")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {list(targets.shape)} and hidden {list(hidden.shape)}: "
                         f"one target per hidden state")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shape = targets.shape
    device_type = hidden.device.type
    matmul_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type) \
            and matmul_dtype != torch.float64:
        matmul_dtype = torch.get_autocast_dtype(device_type)
    float_dtype = torch.promote_types(matmul_dtype, torch.float32)
    with torch.autocast(device_type, enabled=False):  # the function casts explicitly
        out = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias,
                                     targets.reshape(-1).long(), float(temperature), int(chunk),
                                     bool(entropy), matmul_dtype, float_dtype)
    if entropy:
        return out[0].view(shape), out[1].view(shape)
    return out.view(shape)
