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

This needs a model whose attention takes an explicit 4-D mask and position ids: Hugging Face
causal LMs with the sdpa or eager attention do. Bidirectional encoders cannot share (their
prompt tokens would see the responses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tether.data.collate import collate
from tether.data.tokenize import Encoded
from tether.device import model_device, to_device


@dataclass
class PackedGroups:
    """Groups of sequences, one group per row (padded on the right to the longest row)."""

    input_ids: torch.Tensor  # [G, L]
    position_ids: torch.Tensor  # [G, L]
    attention_mask: torch.Tensor  # [G, 1, L, L] bool: True where a query may attend to a key
    # [R, T]: for token t of sequence r (as in collate's right-padded [R, T] layout), its
    # column in the flattened [G * L] rows; 0 past the end of the sequence.
    columns: torch.Tensor
    lengths: torch.Tensor  # [R] each sequence's own length
    num_tokens: int  # tokens the model reads: the rows without their padding

    @property
    def last_columns(self) -> torch.Tensor:
        """[R] the column of each sequence's last token (where a reward is read)."""
        return self.columns.gather(1, (self.lengths - 1).unsqueeze(1)).squeeze(1)


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
                pad_id: int) -> PackedGroups:
    """Pack consecutive runs of `sequences` (`group_sizes` of them each) into one row each."""
    layouts = _layouts(sequences, group_sizes)
    width = max(w for _, _, w in layouts)
    longest = max(len(s) for s in sequences)
    num_groups = len(group_sizes)
    input_ids = torch.full((num_groups, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros(num_groups, width, dtype=torch.long)
    mask = torch.zeros(num_groups, 1, width, width, dtype=torch.bool)
    columns = torch.zeros(len(sequences), longest, dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    r = 0
    for g, (prefix, starts, row_width) in enumerate(layouts):
        base = g * width
        if prefix:
            input_ids[g, :prefix] = torch.as_tensor(sequences[r][:prefix])
            position_ids[g, :prefix] = torch.arange(prefix)
            mask[g, 0, :prefix, :prefix] = causal[:prefix, :prefix]
        for seg_start in starts:
            s = sequences[r]
            own = len(s) - prefix
            end = seg_start + own
            input_ids[g, seg_start:end] = torch.as_tensor(s[prefix:])
            position_ids[g, seg_start:end] = torch.arange(prefix, len(s))
            mask[g, 0, seg_start:end, :prefix] = True
            mask[g, 0, seg_start:end, seg_start:end] = causal[:own, :own]
            columns[r, :prefix] = base + torch.arange(prefix)
            columns[r, prefix:len(s)] = base + torch.arange(seg_start, end)
            r += 1
        # Padding columns attend to themselves only: a query that sees no key at all would
        # make the attention's softmax NaN. Their outputs are never read.
        pad = torch.arange(row_width, width)
        mask[g, 0, pad, pad] = True
    return PackedGroups(input_ids, position_ids, mask, columns,
                        torch.tensor([len(s) for s in sequences]),
                        sum(w for _, _, w in layouts))


def attention_mask_for(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The boolean mask as the model's attention takes it: sdpa (and flex) a boolean one,
    eager an additive float one."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", "sdpa") != "eager":
        return mask
    return torch.zeros(mask.shape, device=mask.device).masked_fill(
        ~mask, torch.finfo(torch.float32).min)


@dataclass
class PackedLogits:
    """Logits of responses packed under shared prompts, only at the positions that predict a
    scored token, each position once (the last prompt position predicts the first token of
    every response of its group); `index` says which row predicts which token."""

    logits: torch.Tensor  # [K, vocab]
    index: torch.Tensor  # [R, T]: the row of `logits` that predicts token t of response r
    scored: torch.Tensor  # [R, T] bool: the tokens with a prediction here
    num_tokens: int  # tokens the model read

    def logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """[R, T] as tether.models.logprobs.token_logprobs gives them, 0 where not scored."""
        logits = self._tempered(temperature)
        rows, tokens = self.scored.nonzero(as_tuple=True)
        at = self.index[rows, tokens]
        picked = logits[at, input_ids[rows, tokens]] - logits.logsumexp(-1)[at]
        return torch.zeros(self.scored.shape, dtype=picked.dtype,
                           device=picked.device).index_put((rows, tokens), picked)

    def entropy(self, temperature: float = 1.0) -> torch.Tensor:
        """[R, T] entropy of the distribution each scored token was drawn from, else 0."""
        logp = torch.log_softmax(self._tempered(temperature), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return torch.where(self.scored, entropy[self.index], 0.0)

    def _tempered(self, temperature: float) -> torch.Tensor:
        logits = self.logits.float()
        return logits / temperature if temperature != 1.0 else logits


def packed_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  scored_mask: torch.Tensor, group_sizes: Sequence[int]) -> PackedLogits:
    """One forward pass over right-padded [R, T] rows, the rows of each group (`group_sizes`
    consecutive rows) packed into one row under their common prefix; logits only where a
    token of `scored_mask` is predicted. The packing is laid out on the CPU and moved to the
    device of `input_ids`, the model's."""
    device = input_ids.device
    lengths = attention_mask.sum(-1).tolist()
    sequences = [row[:n].tolist() for row, n in zip(input_ids, lengths, strict=True)]
    packed = pack_groups(sequences, group_sizes, pad_id=0)  # padding is never read
    scored = scored_mask.to("cpu", torch.bool, copy=True)
    scored[:, 0] = False  # token 0 has no prediction
    rows, tokens = scored.nonzero(as_tuple=True)
    predictors = packed.columns[rows, tokens - 1]  # the flat columns whose logits predict them
    keep = torch.zeros(packed.input_ids.numel(), dtype=torch.bool)
    keep[predictors] = True
    logits = model(input_ids=packed.input_ids.to(device),
                   position_ids=packed.position_ids.to(device),
                   attention_mask=attention_mask_for(model, packed.attention_mask.to(device)),
                   use_cache=False, logits_to_keep=keep.view_as(packed.input_ids).to(device)
                   ).logits
    index = torch.zeros(scored.shape, dtype=torch.long)
    index[rows, tokens] = (keep.cumsum(0) - 1)[predictors]
    return PackedLogits(logits.reshape(-1, logits.shape[-1]), index.to(device),
                        scored.to(device), packed.num_tokens)


def shared_prompt_logprobs(model: torch.nn.Module, responses: Sequence[Encoded],
                           group_sizes: Sequence[int], pad_id: int, temperature: float = 1.0
                           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token log-probs of each response's scored tokens (its loss_mask), with the
    responses of a group packed into one row: [R, T] as collate lays them out (0 where the
    loss_mask is 0), the loss_mask [R, T], and the tokens the model read. The same as
    token_logprobs(forward_logits(...)) on the collated batch, masked."""
    batch = to_device(collate(responses, pad_id), model_device(model))
    out = packed_logits(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                        group_sizes)
    return out.logprobs(batch["input_ids"], temperature), batch["loss_mask"], out.num_tokens


def group_runs(keys: Sequence[int]) -> list[int]:
    """Lengths of the runs of equal consecutive keys: [7, 7, 3, 7] -> [2, 1, 1]."""
    runs: list[int] = []
    for i, key in enumerate(keys):
        if i and key == keys[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs
