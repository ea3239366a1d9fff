"""The static backend's decode step for Llama-family models, written out: one token per row
through every layer, against a KV cache of fixed length.

Why not the model's own forward (what `LayerDecode` below still does for other architectures):
a decode step multiplies a handful of rows by every weight, so it is the time to read the
weights plus per-call overhead, and the model's forward adds overhead a rollout does not need
(a 4-D mask rebuilt every step, a cache object per layer, attention kernels made for long
queries). Here, measured on 2 CPU cores for SmolLM2-135M at 16 rows (bench/generation.py):
- q, k and v are one matrix product, as are gate and up;
- on the CPU the weights are laid out once per sync the way oneDNN multiplies them fastest
  (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's CPU backend uses for frozen
  weights): 1.4-1.7x faster products than `F.linear` on the same bf16 weights (where the CPU
  has bf16 instructions; an AVX2-only CPU gets `F.linear`);
- attention for one query per row is two small batched products over the cache, which is
  kept in float32: the precision attention kernels accumulate in, with no conversion per step
  (keys and values computed in bf16 are exact in float32; the cache takes twice the memory of a
  bf16 one, small beside the weights for a rollout's rows and lengths).
The results are the model's own up to float rounding; tests/unit/test_static_generate.py
checks the logits against the model's forward, step by step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache

from tether.device import cpu_has_bf16

# Decoder-only models whose layers are exactly: RMSNorm, attention with rotary positions
# (biases allowed), RMSNorm, SiLU-gated MLP. Sliding-window attention is not written out.
ARCHITECTURES = ("llama", "mistral", "qwen2")


def writes_out(model: torch.nn.Module) -> bool:
    """Whether `LlamaDecode` can run this model's decode step."""
    config = model.config
    return (config.model_type in ARCHITECTURES and config.hidden_act == "silu"
            and (getattr(config, "sliding_window", None) is None
                 or getattr(config, "use_sliding_window", True) is False))


def can_prepack(weight: torch.Tensor) -> bool:
    """Whether oneDNN lays out `weight` here: a CPU tensor, with oneDNN in the torch build
    (every x86 and arm64 build has it), in float32 or in a half type this CPU multiplies
    natively (bf16 needs AVX512-BW/VL/DQ or AVX-NE-CONVERT: an AVX2-only CPU refuses it)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return {torch.float32: True, torch.bfloat16: cpu_has_bf16(),
            torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}.get(weight.dtype, False)


class Linear:
    """x @ weight.T + bias; with `prepack`, where oneDNN can (`can_prepack`), the weight is
    laid out for oneDNN's fastest product."""

    # The row count oneDNN lays the weight out for; the product is exact for any count.
    ROWS_HINT = 16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, prepack: bool):
        self.bias = bias
        self.packed = prepack and can_prepack(weight)
        self.weight = (torch.ops.mkldnn._reorder_linear_weight(weight, self.ROWS_HINT)
                       if self.packed else weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _fused(*modules: torch.nn.Linear, prepack: bool) -> Linear:
    """One product for several linear layers reading the same input (outputs concatenated)."""
    weight = torch.cat([m.weight for m in modules])
    biases = [m.bias for m in modules]
    bias = None if all(b is None for b in biases) else torch.cat([
        b if b is not None else m.weight.new_zeros(m.out_features)
        for b, m in zip(biases, modules, strict=True)])
    return Linear(weight, bias, prepack)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm (normalised in float32, scaled in the input's dtype)."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon)
    return norm.weight * normed.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [rows, heads, dim] (cos, sin [rows, 1, dim])."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LlamaDecode:
    """Decode steps of a Llama-family model (see the module): `start` fills the cache from a
    prefill, then each `step` reads one token per row and gives the next logits.

    `prepack=False` keeps the weights in torch's own layout: what torch.compile can trace (its
    CPU backend lays out only weights it may treat as constants, which a policy's are not)."""

    def __init__(self, model: torch.nn.Module, prepack: bool = True):
        self.model = model
        self.prepack = prepack
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = model.model.layers[0].self_attn.scaling
        self.pack()

    def pack(self) -> None:
        """Lays out the weights anew; after every change of the model's weights."""
        prepack, self.layers = self.prepack, []
        for layer in self.model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm,
                _fused(attention.q_proj, attention.k_proj, attention.v_proj, prepack=prepack),
                Linear(attention.o_proj.weight, attention.o_proj.bias, prepack),
                layer.post_attention_layernorm,
                _fused(mlp.gate_proj, mlp.up_proj, prepack=prepack),
                Linear(mlp.down_proj.weight, mlp.down_proj.bias, prepack)))
        head = self.model.get_output_embeddings()
        self.head = Linear(head.weight, head.bias, prepack)

    def start(self, prefill: DynamicCache, n: int, prompt_mask: torch.Tensor, length: int
              ) -> None:
        """A cache of `length` positions for n rows per prompt, holding the prompts' keys and
        values from `prefill`; `prompt_mask` [prompts, width] marks the prompt tokens."""
        rows, width = prompt_mask.shape[0] * n, prompt_mask.shape[1]
        self.keys, self.values = [], []
        for layer in prefill.layers:
            shape = (rows, self.kv_heads, length, self.head_dim)
            keys = layer.keys.new_zeros(shape, dtype=torch.float32)
            values = torch.zeros_like(keys)
            keys[:, :, :width] = layer.keys.repeat_interleave(n, 0)
            values[:, :, :width] = layer.values.repeat_interleave(n, 0)
            self.keys.append(keys)
            self.values.append(values)
        # Added to the attention scores: -inf where a row has no token (left padding, and the
        # positions not generated yet); step opens one position per call.
        self.bias = torch.full((rows, 1, 1, length), float("-inf"), device=prompt_mask.device)
        self.bias[:, 0, 0, :width].masked_fill_(prompt_mask.bool().repeat_interleave(n, 0), 0.0)

    def keep(self, rows: torch.Tensor) -> None:
        """Only these rows (indices into the current ones) are decoded from now on."""
        self.keys = [keys[rows] for keys in self.keys]
        self.values = [values[rows] for values in self.values]
        self.bias = self.bias[rows]

    def step(self, token: torch.Tensor, position: torch.Tensor, at: torch.Tensor
             ) -> torch.Tensor:
        """Logits [rows, vocab] after token [rows] at rotary position [rows, 1], written to
        cache position `at` (a one-element tensor, so a compiled step sees no new constant)."""
        rows, groups = token.shape[0], self.heads // self.kv_heads
        self.bias.index_fill_(-1, at, 0.0)
        hidden = self.model.get_input_embeddings()(token)
        cos, sin = self.model.model.rotary_emb(hidden, position)
        split = [self.heads * self.head_dim, self.kv_heads * self.head_dim,
                 self.kv_heads * self.head_dim]
        for (norm, qkv, out, mlp_norm, gate_up, down), keys, values in zip(
                self.layers, self.keys, self.values, strict=True):
            q, k, v = qkv(_rms_norm(norm, hidden)).split(split, dim=-1)
            q = _rotate(q.view(rows, self.heads, self.head_dim), cos, sin)
            k = _rotate(k.view(rows, self.kv_heads, self.head_dim), cos, sin)
            keys.index_copy_(2, at, k[:, :, None].float())
            values.index_copy_(2, at, v.view(rows, self.kv_heads, 1, self.head_dim).float())
            # [rows, kv_heads, groups, length]: each key/value head serves `groups` queries.
            scores = q.view(rows, self.kv_heads, groups, self.head_dim).float() \
                @ keys.transpose(-1, -2)
            probs = (scores * self.scaling + self.bias).softmax(-1)
            attended = (probs @ values).to(hidden.dtype)
            hidden = hidden + out(attended.reshape(rows, -1))
            gate, up = gate_up(_rms_norm(mlp_norm, hidden)).chunk(2, dim=-1)
            hidden = hidden + down(F.silu(gate) * up)
        return self._logits(_rms_norm(self.model.model.norm, hidden))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output embedding's product, then its forward hooks as a call of the module would
        run them (tests and benchmarks shape the logits with one, e.g. to hold EOS back)."""
        logits = self.head(hidden)
        module = self.model.get_output_embeddings()
        for hook in module._forward_hooks.values():
            result = hook(module, (hidden,), logits)
            logits = logits if result is None else result
        return logits


class LayerDecode:
    """Decode steps through the model's own forward and transformers' StaticCache: for every
    architecture LlamaDecode does not write out."""

    def __init__(self, model: torch.nn.Module, prepack: bool = True):
        self.model = model  # `prepack`: LlamaDecode's; the model's forward keeps torch's layout

    def pack(self) -> None:
        pass  # the forward reads the model's weights as they are

    def start(self, prefill: DynamicCache, n: int, prompt_mask: torch.Tensor, length: int
              ) -> None:
        self.cache = StaticCache(config=self.model.config, max_cache_len=length)
        for i, layer in enumerate(prefill.layers):
            self.cache.update(layer.keys.repeat_interleave(n, 0),
                              layer.values.repeat_interleave(n, 0), i)
        rows, width = prompt_mask.shape[0] * n, prompt_mask.shape[1]
        self.mask = torch.zeros(rows, length, dtype=torch.long, device=prompt_mask.device)
        self.mask[:, :width] = prompt_mask.repeat_interleave(n, 0)

    def step(self, token: torch.Tensor, position: torch.Tensor, at: torch.Tensor
             ) -> torch.Tensor:
        self.mask.index_fill_(1, at, 1)
        return self.model(input_ids=token[:, None], attention_mask=self.mask,
                          position_ids=position, cache=self.cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]
