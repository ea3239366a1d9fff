"""Responses that share a prompt, packed into one row: the prompt once, then each response.

A DPO pair, a K-way ranking or a GRPO group is one prompt under several responses. As
separate rows a causal LM reads the prompt once per response; packed, once per group:

    row        p0 p1 p2 | a0 a1 a2 | b0 b1
    positions   0  1  2 |  3  4  5 |  3  4

Each response's tokens attend to the prompt and to their own earlier tokens only (a block of
a causal mask), at the positions they have in a row of their own, so every hidden state,
log-prob and reward is the unpacked one up to float rounding. What is shared is the group's
longest common prefix of token ids, so a prompt truncated differently under two responses
just shares less. On the sentiment task's pairs (prompts of ~50 tokens, responses of ~20) a
pair is ~92 tokens packed against ~142 as two rows; a ranking of 4, ~135 against ~285.

The same layout packs without padding (train.max_tokens_per_microbatch): with `one_row`,
many groups lie side by side in a single row, each attending to itself only and numbering its
positions from 0; a sequence without others to share with is a group of one:

    row        p0 p1 p2 | a0 a1 | b0 | s0 s1 s2 s3 | t0 t1
    positions   0  1  2 |  3  4 |  3 |  0  1  2  3 |  0  1

This needs a model whose attention takes an explicit 4-D mask and position ids: Hugging Face
causal LMs with the sdpa or eager attention do (a dense L x L mask), and with flex attention (a
BlockMask, which skips the tiles of a long packed row that no query attends to: see
flex_block_mask). Bidirectional encoders cannot share (their prompt tokens would see the
responses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from tether.data.collate import collate
from tether.data.tokenize import Encoded
from tether.device import model_device, to_device
from tether.distributed import unwrap
from tether.models.head import forward_hidden
from tether.models.logprobs import autocast_now, chunked_head, first_scored, forward_logprobs


@dataclass
class PackedGroups:
    """Groups of sequences laid into rows: one group per row (padded on the right to the
    longest row), or every group side by side in one row with no padding at all."""

    input_ids: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [N, L]
    # [N, L] what the attention mask is made of (see block_mask): the group of each column
    # (each padding column a group of its own), and its segment: 0 for the group's shared
    # prefix, else one number per response.
    groups: torch.Tensor
    segments: torch.Tensor
    # [R, T]: for token t of sequence r (as in collate's right-padded [R, T] layout), its
    # column in the flattened [N * L] rows; 0 past the end of the sequence.
    columns: torch.Tensor
    lengths: torch.Tensor  # [R] each sequence's own length
    num_tokens: int  # tokens the model reads: the rows without their padding

    @property
    def attention_mask(self) -> torch.Tensor:
        """[N, 1, L, L] bool: True where a query may attend to a key."""
        return self.attention_mask_on("cpu")

    def attention_mask_on(self, device: torch.device | str) -> torch.Tensor:
        """The attention mask made on `device`: a long row's L x L mask is made on the GPU
        from 2 x L numbers rather than copied there."""
        return block_mask(self.groups.to(device), self.segments.to(device))

    def attention_mask_for(self, model: torch.nn.Module, device: torch.device | str
                           ) -> torch.Tensor | BlockMask:
        """The attention mask as `model`'s attention takes it, made on `device`: a BlockMask
        for flex attention (see flex_block_mask), else the dense mask (attention_mask_for)."""
        if _attention(model) == "flex_attention":
            return flex_block_mask(self.groups.to(device), self.segments.to(device))
        return attention_mask_for(model, self.attention_mask_on(device))

    @property
    def last_columns(self) -> torch.Tensor:
        """[R] the column of each sequence's last token (where a reward is read)."""
        return self.columns.gather(1, (self.lengths - 1).unsqueeze(1)).squeeze(1)


def block_mask(groups: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """[N, 1, L, L] bool from [N, L] groups and segments: a query attends to the keys at or
    before it in its own group that are in its own segment or in the shared prefix (segment
    0)."""
    query, key = (slice(None), slice(None), None), (slice(None), None, slice(None))
    causal = torch.ones(groups.shape[1], groups.shape[1], dtype=torch.bool,
                        device=groups.device).tril()
    own = (segments[query] == segments[key]) | (segments[key] == 0)
    return ((groups[query] == groups[key]) & own & causal).unsqueeze(1)


def flex_block_mask(groups: torch.Tensor, segments: torch.Tensor) -> BlockMask:
    """block_mask's rule as a FlexAttention BlockMask, on the device of `groups`.

    A packed row of L columns holds many short groups, so the dense [N, 1, L, L] mask is
    almost all False, yet sdpa with an explicit mask attends over all L x L pairs: ~300-token
    sequences packed into a 16k row are ~50x the attention work of the sequences alone. A
    BlockMask records which 128 x 128 tiles hold any True (and which are full), and flex
    attention skips the empty tiles, doing work in proportion to the groups' own squares. The
    mask_mod only indexes tensors with q_idx / kv_idx (no Python branching on values), as
    create_block_mask vmaps it and the flex kernel inlines it."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor
                 ) -> torch.Tensor:
        key_segment = segments[b, kv]
        own = (key_segment == 0) | (key_segment == segments[b, q])
        return (groups[b, q] == groups[b, kv]) & own & (kv <= q)

    n, length = groups.shape
    return create_block_mask(mask_mod, n, None, length, length, device=groups.device)


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token of its
    own (its last token is where a reward is read)."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def _layouts(sequences: Sequence[Sequence[int]], group_sizes: Sequence[int]
             ) -> list[tuple[int, list[int], int]]:
    """Per group: (shared prefix length, the start column of each own segment, row width)."""
    if sum(group_sizes) != len(sequences) or min(group_sizes, default=1) < 1:
        raise ValueError(f"group sizes {list(group_sizes)} do not cover {len(sequences)} "
                         f"sequences")
    layouts = []
    start = 0
    for size in group_sizes:
        group = sequences[start:start + size]
        prefix = _common_prefix(group) if size > 1 else 0
        starts, column = [], prefix
        for s in group:
            starts.append(column)
            column += len(s) - prefix
        layouts.append((prefix, starts, column))
        start += size
    return layouts


def row_widths(sequences: Sequence[Sequence[int]], group_sizes: Sequence[int]) -> list[int]:
    """The tokens of each packed row (what pack_groups would read), without building it."""
    return [width for _, _, width in _layouts(sequences, group_sizes)]


def pack_groups(sequences: Sequence[Sequence[int]], group_sizes: Sequence[int],
                pad_id: int, one_row: bool = False) -> PackedGroups:
    """Pack consecutive runs of `sequences` (`group_sizes` of them each) into one row each,
    or with `one_row` all the groups side by side in a single row [1, L], with no padding:
    each group attends only to itself, its positions starting at 0 (padding-free packing;
    a group of size 1 is a sequence on its own)."""
    layouts = _layouts(sequences, group_sizes)
    widths = [w for _, _, w in layouts]
    if one_row:
        rows, offsets = [0] * len(widths), [sum(widths[:g]) for g in range(len(widths))]
        num_rows, width = 1, sum(widths)
    else:
        rows, offsets = list(range(len(widths))), [0] * len(widths)
        num_rows, width = len(widths), max(widths)
    input_ids = torch.full((num_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros(num_rows, width, dtype=torch.long)
    # Padding columns are groups of their own, so they attend to themselves only: a query
    # that sees no key at all would make the attention's softmax NaN. Their outputs are never
    # read.
    groups = -1 - torch.arange(num_rows * width).view(num_rows, width)
    segments = torch.zeros(num_rows, width, dtype=torch.long)
    columns = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long)
    r, segment = 0, 0
    for g, ((prefix, starts, row_width), row, offset) in enumerate(
            zip(layouts, rows, offsets, strict=True)):
        groups[row, offset:offset + row_width] = g
        base = row * width + offset
        if prefix:
            input_ids[row, offset:offset + prefix] = torch.as_tensor(sequences[r][:prefix])
            position_ids[row, offset:offset + prefix] = torch.arange(prefix)
        for seg_start in starts:
            s = sequences[r]
            end = seg_start + len(s) - prefix
            own = slice(offset + seg_start, offset + end)
            segment += 1
            input_ids[row, own] = torch.as_tensor(s[prefix:])
            position_ids[row, own] = torch.arange(prefix, len(s))
            segments[row, own] = segment
            columns[r, :prefix] = base + torch.arange(prefix)
            columns[r, prefix:len(s)] = base + torch.arange(seg_start, end)
            r += 1
    return PackedGroups(input_ids, position_ids, groups, segments, columns,
                        torch.tensor([len(s) for s in sequences]), sum(widths))


def _attention(model: torch.nn.Module) -> str:
    """The model's attention implementation (inside a DDP wrapper, which hides the config)."""
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def attention_mask_for(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The dense boolean mask as the model's attention takes it: sdpa a boolean one, eager an
    additive float one. (Flex attention takes a BlockMask: PackedGroups.attention_mask_for.)"""
    if _attention(model) != "eager":
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(
        ~mask, torch.finfo(torch.float32).min)


@dataclass
class PackedLogits:
    """Logits of responses packed under shared prompts, only at the positions that predict a
    scored token, each position once (the last prompt position predicts the first token of
    every response of its group); `index` says which row predicts which token. Chunked
    (train.logits_chunk), the logits are not made here: `hidden` holds the hidden states at
    those positions and the head runs `chunk` tokens at a time when values are asked for
    (tether.models.head)."""

    logits: torch.Tensor | None  # [K, vocab]; None when chunked
    index: torch.Tensor  # [R, T]: the row of `logits` that predicts token t of response r
    scored: torch.Tensor  # [R, T] bool: the tokens with a prediction here
    num_tokens: int  # tokens the model read
    hidden: torch.Tensor | None = None  # [K, hidden size], when chunked
    head: torch.nn.Linear | None = None
    chunk: int = 0
    autocast: torch.dtype | None = None  # see tether.models.logprobs.chunked_head

    def logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """[R, T] as tether.models.logprobs.token_logprobs gives them, 0 where not scored."""
        if self.hidden is not None:
            return self._chunked(input_ids, temperature, entropy=False)[0]
        logits = self._tempered(temperature)
        rows, tokens = self.scored.nonzero(as_tuple=True)
        at = self.index[rows, tokens]
        picked = logits[at, input_ids[rows, tokens]] - logits.logsumexp(-1)[at]
        return self._scatter(rows, tokens, picked)

    def entropy(self, temperature: float = 1.0) -> torch.Tensor:
        """[R, T] entropy of the distribution each scored token was drawn from, else 0."""
        if self.hidden is not None:
            return self._chunked(torch.zeros_like(self.index), temperature, entropy=True)[1]
        logp = torch.log_softmax(self._tempered(temperature), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return torch.where(self.scored, entropy[self.index], 0.0)

    def logprobs_and_entropy(self, input_ids: torch.Tensor, temperature: float = 1.0
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both, from one pass of the head when chunked."""
        if self.hidden is not None:
            return self._chunked(input_ids, temperature, entropy=True)
        return self.logprobs(input_ids, temperature), self.entropy(temperature)

    def _chunked(self, input_ids: torch.Tensor, temperature: float, entropy: bool
                 ) -> tuple[torch.Tensor, ...]:
        # A position that predicts several tokens (a shared prompt's last) is gathered once
        # per token: one extra row of the head per response.
        rows, tokens = self.scored.nonzero(as_tuple=True)
        out = chunked_head(self.hidden[self.index[rows, tokens]], self.head,
                           input_ids[rows, tokens], temperature, self.chunk, entropy,
                           self.autocast)
        return tuple(self._scatter(rows, tokens, v) for v in (out if entropy else (out,)))

    def _scatter(self, rows: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor
                 ) -> torch.Tensor:
        return torch.zeros(self.scored.shape, dtype=values.dtype,
                           device=values.device).index_put((rows, tokens), values)

    def _tempered(self, temperature: float) -> torch.Tensor:
        logits = self.logits.float()
        return logits / temperature if temperature != 1.0 else logits


def packed_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  scored_mask: torch.Tensor, group_sizes: Sequence[int],
                  one_row: bool = False, chunk: int = 0) -> PackedLogits:
    """One forward pass over right-padded [R, T] rows, the rows of each group (`group_sizes`
    consecutive rows) packed into one row under their common prefix (with `one_row`, every
    group into a single row: see pack_groups); logits only where a token of `scored_mask` is
    predicted, or with chunk > 0 the hidden states there (see PackedLogits). The packing is
    laid out on the CPU and moved to the device of `input_ids`, the model's; the attention
    mask is made there."""
    device = input_ids.device
    lengths = attention_mask.sum(-1).tolist()
    sequences = [row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True)]
    packed = pack_groups(sequences, group_sizes, pad_id=0, one_row=one_row)  # pads never read
    scored = scored_mask.to("cpu", torch.bool, copy=True)
    scored[:, 0] = False  # token 0 has no prediction
    rows, tokens = scored.nonzero(as_tuple=True)
    predictors = packed.columns[rows, tokens - 1]  # the flat columns whose logits predict them
    keep = torch.zeros(packed.input_ids.numel(), dtype=torch.bool)
    keep[predictors] = True
    index = torch.zeros(scored.shape, dtype=torch.long)
    index[rows, tokens] = (keep.cumsum(0) - 1)[predictors]
    inputs = {"input_ids": packed.input_ids.to(device),
              "position_ids": packed.position_ids.to(device),
              "attention_mask": packed.attention_mask_for(model, device),
              "use_cache": False, "logits_to_keep": keep.view_as(packed.input_ids).to(device)}
    if 0 < chunk < int(keep.sum()):  # what fits in one chunk takes the plain head
        hidden, head = forward_hidden(model, **inputs)
        return PackedLogits(None, index.to(device), scored.to(device), packed.num_tokens,
                            hidden, head, chunk, autocast_now(hidden.device))
    logits = model(**inputs).logits
    return PackedLogits(logits.reshape(-1, logits.shape[-1]), index.to(device),
                        scored.to(device), packed.num_tokens)


def shared_prompt_logprobs(model: torch.nn.Module, responses: Sequence[Encoded],
                           group_sizes: Sequence[int], pad_id: int, temperature: float = 1.0,
                           one_row: bool = False, chunk: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token log-probs of each response's scored tokens (its loss_mask), with the
    responses of a group packed into one row (with `one_row`, all groups into one): [R, T] as
    collate lays them out (0 where the loss_mask is 0), the loss_mask [R, T], and the tokens
    the model read. The same as token_logprobs(forward_logits(...)) on the collated batch,
    masked. chunk > 0: the head chunked, as in PackedLogits."""
    batch = to_device(collate(responses, pad_id), model_device(model))
    out = packed_logits(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                        group_sizes, one_row, chunk)
    return out.logprobs(batch["input_ids"], temperature), batch["loss_mask"], out.num_tokens


def sequence_logprobs(model: torch.nn.Module, sequences: Sequence[Encoded], pad_id: int,
                      group_sizes: Sequence[int] | None = None, one_row: bool = False,
                      temperature: float = 1.0, chunk: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [R, T] of each sequence's scored tokens (its loss_mask; 0
    elsewhere) and the loss_mask [R, T], on the model's device, whatever the layout: a padded
    row per sequence; each group (`group_sizes`) in a row under its shared prompt; or with
    `one_row` every group, or every sequence on its own, in a single padding-free row. The
    same values in every layout, to float rounding. chunk > 0: the head chunked."""
    if group_sizes is None and not one_row:
        batch = to_device(collate(sequences, pad_id), model_device(model))
        mask = batch["loss_mask"]
        logprobs = forward_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                    first_scored(mask), temperature, chunk)
        return logprobs * mask, mask
    logprobs, mask, _ = shared_prompt_logprobs(
        model, sequences, group_sizes or [1] * len(sequences), pad_id, temperature, one_row,
        chunk)
    return logprobs, mask


def group_runs(keys: Sequence[int]) -> list[int]:
    """Lengths of the runs of equal consecutive keys: [7, 7, 3, 7] -> [2, 1, 1]."""
    runs: list[int] = []
    for i, key in enumerate(keys):
        if i and key == keys[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs
