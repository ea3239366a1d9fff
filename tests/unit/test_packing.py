"""Padding-free packing (train.max_tokens_per_microbatch) and the chunked output head
(train.logits_chunk): the split by hand, the packed layout by hand, and that both give the
plain path's losses, gradients and trained weights on the tiny model."""

from dataclasses import dataclass

import pytest
import torch
from conftest import ranking_rows, write_jsonl
from safetensors.torch import load_file

from tether.cli import main
from tether.config import DPOConfig, RMConfig, SFTConfig, load_config
from tether.data.packing import (
    Microbatches,
    balance,
    check_budget,
    group_tokens,
    token_microbatches,
)
from tether.data.preferences import EncodedPreference, parse_preference
from tether.data.tokenize import encode_example
from tether.distributed import Dist
from tether.errors import ConfigError
from tether.losses.reward import bradley_terry_loss
from tether.losses.sft import masked_nll
from tether.models.reward import RewardModel
from tether.models.shared_prompt import pack_groups, sequence_logprobs
from tether.trainers import dpo as dpo_trainer
from tether.trainers import rm as rm_trainer
from tether.trainers import sft as sft_trainer
from tether.trainers.dpo import dpo_objective, preference_pairs, prefs_logps
from tether.trainers.rm import rewards_grid

T, F = True, False


# -- the split ---------------------------------------------------------------------------------

def test_greedy_split_keeps_order_and_budget():
    costs = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 1, "f": 7}
    parts = token_microbatches(list("abcdef"), costs.get, 7)
    assert parts == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    assert all(sum(map(costs.get, p)) <= 7 for p in parts)
    assert token_microbatches(list("abcdef"), costs.get, 100) == [list("abcdef")]
    assert token_microbatches([], costs.get, 7) == []
    # An item over the budget goes alone (check_budget is what refuses it in training).
    assert token_microbatches([1, 9, 2], int, 7) == [[1], [9], [2]]


def test_balance_splits_the_largest_micro_batches_in_order():
    cost = {"a": 1, "b": 1, "c": 1, "d": 5, "e": 4}.get
    assert balance([["a", "b", "c", "d"]], cost, 2) == [["a", "b", "c"], ["d"]]
    assert balance([["a", "b", "c", "d"]], cost, 3) == [["a"], ["b", "c"], ["d"]]
    # The one with the most tokens is split first, and only where it has 2 items or more.
    assert balance([["d"], ["a", "e"], ["b", "c"]], cost, 4) == [["d"], ["a"], ["e"],
                                                                ["b", "c"]]
    assert balance([["a"], ["b"]], cost, 2) == [["a"], ["b"]]
    with pytest.raises(ValueError, match="cannot make 3"):
        balance([["a"], ["b"]], cost, 3)


@dataclass
class _Rank(Dist):
    """One rank of a simulated world: `counts` are every rank's micro-batch counts."""

    counts: tuple[int, ...] = ()

    def max(self, *values: float) -> list[float]:
        assert values[0] == self.counts[self.rank]
        return [max(self.counts)]


def test_every_rank_runs_as_many_micro_batches():
    costs = [10, 10, 10, 10, 1, 1, 1, 1, 6, 6, 6, 6]
    indices = list(range(12))  # 4 items a rank: the long ones, the short ones, the middling
    counts = tuple(len(token_microbatches(indices[4 * r:4 * r + 4], costs.__getitem__, 20))
                   for r in range(3))
    assert counts == (2, 1, 2)
    split = [Microbatches(8, 20, costs, _Rank(rank=r, world=3, counts=counts))(indices)
             for r in range(3)]
    assert split == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9, 10], [11]]]
    # Off, micro_batch_size sequences each.
    assert Microbatches(3, 0, costs, Dist())(indices[:7]) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_budget_below_the_longest_item_is_a_config_error():
    check_budget([3, 9, 2], 9)
    check_budget([3, 9, 2], 0)  # off
    with pytest.raises(ConfigError) as e:
        check_budget([3, 9, 2], 8, unit="prompt with its responses")
    assert str(e.value) == (
        "train.max_tokens_per_microbatch=8 is less than the longest prompt with its responses "
        "(9 tokens); raise it to at least 9, or 0 for micro-batches of train.micro_batch_size")


def test_too_small_a_budget_ends_the_cli_with_one_line(tmp_path, sft_rows, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    code = main(["sft", "model.name=tiny", f"data.train={data}", f"run_dir={tmp_path / 'run'}",
                 "train.max_tokens_per_microbatch=8"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tether sft: error: "), captured.err
    assert "train.max_tokens_per_microbatch=8" in lines[0] and "longest sequence" in lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "run" / "final").exists()


# -- the layout --------------------------------------------------------------------------------

def test_packed_row_by_hand():
    # Two groups side by side in one row: a prompt 5 6 7 under 1 2 and 3, then 8 9 alone.
    packed = pack_groups([[5, 6, 7, 1, 2], [5, 6, 7, 3], [8, 9]], [2, 1], pad_id=0,
                         one_row=True)
    assert packed.input_ids.tolist() == [[5, 6, 7, 1, 2, 3, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1]]  # restart per group
    assert packed.attention_mask.shape == (1, 1, 8, 8)
    assert packed.attention_mask[0, 0].tolist() == [
        [T, F, F, F, F, F, F, F],
        [T, T, F, F, F, F, F, F],
        [T, T, T, F, F, F, F, F],
        [T, T, T, T, F, F, F, F],
        [T, T, T, T, T, F, F, F],
        [T, T, T, F, F, T, F, F],
        [F, F, F, F, F, F, T, F],  # the second group sees nothing of the first
        [F, F, F, F, F, F, T, T]]
    assert packed.columns.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 5, 0], [6, 7, 0, 0, 0]]
    assert packed.last_columns.tolist() == [4, 5, 7]
    assert packed.num_tokens == 8 == packed.input_ids.numel()  # no padding


def test_sequences_alone_pack_block_diagonally():
    packed = pack_groups([[4, 5, 6], [7, 8]], [1, 1], pad_id=0, one_row=True)
    assert packed.input_ids.tolist() == [[4, 5, 6, 7, 8]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert packed.attention_mask[0, 0].tolist() == [
        [T, F, F, F, F],
        [T, T, F, F, F],
        [T, T, T, F, F],
        [F, F, F, T, F],
        [F, F, F, T, T]]
    assert group_tokens([[4, 5, 6], [4, 5, 7, 8]], share_prompt=True) == 2 + 1 + 2
    assert group_tokens([[4, 5, 6], [4, 5, 7, 8]], share_prompt=False) == 7


# -- packed (and chunked) equals padded ---------------------------------------------------------

def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    assert len(grads_a) == len(grads_b)
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def _examples(tokenizer, rows):
    return [encode_example(tokenizer, [{"role": "user", "content": r["prompt"]}],
                           r["completion"], chat_template=True, max_length=128,
                           truncation="prompt_left") for r in rows]


@pytest.mark.parametrize("packed, chunk", [(True, 0), (False, 7), (True, 7)])
def test_sft_loss_and_gradients(model, tokenizer, sft_rows, packed, chunk):
    examples = _examples(tokenizer, sft_rows[:6])
    num_tokens = sum(sum(e.loss_mask) for e in examples)

    def run(one_row, chunk):
        logprobs, mask = sequence_logprobs(model, examples, tokenizer.pad_token_id,
                                           one_row=one_row, chunk=chunk)
        loss = masked_nll(logprobs, mask, num_tokens)
        return loss.detach(), _grads(model, loss)

    _assert_same(run(packed, chunk), run(False, 0))


def _prefs(encode, rows):
    prefs = []
    for i, row in enumerate(rows):
        source = parse_preference(row, f"row {i}")
        prefs.append(EncodedPreference([encode([{"role": "user", "content": row["prompt"]}], r)
                                        for r in row["responses"]], row["ranks"], source))
    return [p for p in prefs if p.source.pairs()]


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("k", [2, 4])
def test_reward_model_loss_and_gradients(share, k):
    rm = RewardModel.build("tiny", seed=0)
    prefs = _prefs(rm.encode, ranking_rows(5, k=k, seed=k))
    flat = [e for p in prefs for e in p.responses]
    sizes = [len(p.responses) for p in prefs]

    def run(batch):
        rewards, ranks, mask = rewards_grid(rm.raw_scores(batch), prefs)
        loss = bradley_terry_loss(rewards, ranks, mask, center_coef=0.01)
        return loss.detach(), _grads(rm.model, loss)

    packed = rm.collate(flat, sizes if share else None, one_row=True)
    assert packed["input_ids"].shape[0] == 1
    _assert_same(run(packed), run(rm.collate(flat)))


@pytest.mark.parametrize("share, packed, chunk", [
    (True, True, 0), (False, True, 0), (True, False, 7), (False, False, 7), (True, True, 7)])
def test_dpo_loss_and_gradients(model, tokenizer, share, packed, chunk):
    def encode(messages, response):
        return encode_example(tokenizer, messages, response, chat_template=True,
                              max_length=128, truncation="prompt_left")

    prefs = _prefs(encode, ranking_rows(3, k=2, seed=1) + ranking_rows(3, k=4, seed=2))
    cfg = load_config(DPOConfig, None, ["data.train=x", "dpo.sft_weight=0.5"]).dpo
    ref = torch.randn(sum(len(p.responses) for p in prefs), generator=torch.Generator()
                      .manual_seed(0))

    def run(share, one_row, chunk):
        logps, n = prefs_logps(model, prefs, tokenizer.pad_token_id, False, share, one_row,
                               chunk)
        loss, _ = dpo_objective(logps, ref, n, preference_pairs(prefs, len(prefs)), cfg)
        return loss.detach(), _grads(model, loss)

    _assert_same(run(share, packed, chunk), run(False, False, 0))


def test_chunked_entropy_of_packed_rows(model, tokenizer, sft_rows):
    from tether.data.collate import collate
    from tether.models.shared_prompt import packed_logits

    examples = _examples(tokenizer, sft_rows[:4])
    batch = collate(examples, tokenizer.pad_token_id)
    args = (model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"], [1, 3])
    plain = packed_logits(*args, one_row=True)
    chunked = packed_logits(*args, one_row=True, chunk=5)
    for a, b in zip(chunked.logprobs_and_entropy(batch["input_ids"], 0.7),
                    (plain.logprobs(batch["input_ids"], 0.7), plain.entropy(0.7)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.entropy(0.7), plain.entropy(0.7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared_head, groups", [(True, None), (False, None), (False, [3, 1])])
def test_ppo_passes_chunked(model, tokenizer, sft_rows, shared_head, groups):
    """PPO's forward (policy and value head on one trunk, a row per sample, or a prompt's
    samples sharing a row): chunked log-probs, entropies, values and gradients are plain."""
    from tether.data.collate import collate
    from tether.models.value import value_head
    from tether.trainers.ppo import PolicyAndValue

    batch = collate(_examples(tokenizer, sft_rows[:4]), tokenizer.pad_token_id)
    ids, am, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    head = value_head(model) if shared_head else None
    if head is not None:
        torch.nn.init.normal_(head.weight, std=0.02)

    def run(chunk):
        logits, values = PolicyAndValue(model, head, shared_head, False, chunk)(ids, am, mask,
                                                                              groups)
        logprobs, entropy = logits.logprobs_and_entropy(ids, 0.7)
        torch.testing.assert_close(logits.entropy(0.7), entropy)
        loss = ((logprobs + 0.1 * entropy + (0 if values is None else values)) * mask).sum()
        return loss.detach(), _grads(torch.nn.ModuleList([model, head or model]), loss)

    _assert_same(run(7), run(0))


def test_eval_logprobs_chunked(model):
    from tether.eval.policy import response_logprobs

    pairs = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14])]
    for a, b in zip(response_logprobs(model, pairs, 0, chunk=2, temperature=0.7),
                    response_logprobs(model, pairs, 0, chunk=0, temperature=0.7), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# -- whole runs --------------------------------------------------------------------------------

def _final(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=0, msg=name)


def _runs(tmp_path, train, config_class, data, common, variants):
    """Final weights of one run per variant (a tuple of overrides)."""
    out = []
    for i, overrides in enumerate(variants):
        run = tmp_path / f"v{i}"
        train(load_config(config_class, None, [
            f"run_dir={run}", "model.name=tiny", f"data.train={data}", "train.eval_every=0",
            # AdamW's first steps are lr * sign(g): a larger eps keeps rounding-level
            # differences of a near-zero gradient from becoming a whole step.
            "optim.eps=1e-3", *common, *overrides]))
        out.append(_final(run))
    return out


def test_sft_run_packed_matches_padded(tmp_path, sft_rows):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows)
    common = ["data.eval_fraction=0.125", "optim.lr=3e-3", "train.max_steps=4",
              "train.batch_size=8", "train.micro_batch_size=4"]
    padded, packed = _runs(tmp_path, sft_trainer.train, SFTConfig, data, common,
                           [("train.logits_chunk=0",),
                            ("train.max_tokens_per_microbatch=128", "train.logits_chunk=7")])
    _assert_same_weights(packed, padded)


def test_rm_run_packed_matches_padded(tmp_path):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24))
    common = ["data.eval_fraction=0", "optim.lr=1e-3", "train.max_steps=3",
              "train.batch_size=8", "train.micro_batch_size=8"]
    padded, packed, packed_alone = _runs(
        tmp_path, rm_trainer.train, RMConfig, data, common,
        [("train.share_prompt=false",), ("train.max_tokens_per_microbatch=160",),
         ("train.max_tokens_per_microbatch=160", "train.share_prompt=false")])
    _assert_same_weights(packed, padded)
    _assert_same_weights(packed_alone, padded)


@pytest.mark.parametrize("share", ["true", "false"])
def test_dpo_run_packed_matches_padded(tmp_path, share):
    data = write_jsonl(tmp_path / "rank.jsonl", ranking_rows(24, k=3))
    common = ["data.eval_fraction=0", "optim.lr=1e-3", "optim.warmup_steps=0",
              "train.max_steps=3", "train.batch_size=8", "train.micro_batch_size=4",
              "dpo.beta=0.5", f"train.share_prompt={share}"]
    # Live reference on the one hand, the precomputed one (packed too) on the other.
    padded, live, precomputed = _runs(
        tmp_path, dpo_trainer.train, DPOConfig, data, common,
        [("ref.precompute=false", "train.logits_chunk=0"),
         ("ref.precompute=false", "train.max_tokens_per_microbatch=160"),
         ("ref.precompute=true", "train.max_tokens_per_microbatch=160",
          "train.logits_chunk=7")])
    _assert_same_weights(live, padded)
    _assert_same_weights(precomputed, padded)
