"""`tether eval` and tether.eval.policy: KL by hand, log-probs, summaries, the CLI end to end."""

import json
import math

import pytest
import torch
from conftest import write_jsonl

from tether import cli
from tether.config import EvalConfig
from tether.eval.policy import (
    evaluate_policy,
    format_table,
    response_logprobs,
    sequence_kl,
    summarize,
    win_rate,
)
from tether.models.logprobs import forward_logits, token_logprobs
from tether.models.reward import RewardModel
from tether.models.tiny import tiny_llama, tiny_tokenizer
from tether.rollout.base import SamplingParams

PROMPTS = [{"prompt": "The acting was"}, {"prompt": "A quiet drama with a great cast, and"},
           {"prompt": [{"role": "user", "content": "Continue this movie review: the plot"}]}]


def count_e(texts):
    """A gold scorer loaded as 'test_eval_policy:count_e': the number of e's in the text."""
    return [float(t.count("e")) for t in texts]


# --- sequence_kl -------------------------------------------------------------------------------


def test_sequence_kl_by_hand():
    logprobs = torch.tensor([[0.0, -1.0, -2.0, -0.5], [0.0, -0.25, -3.0, -1.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -3.0], [0.0, -1.25, -1.0, -2.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    # row 0: (-1 + 1.5) + (-2 + 1) = -0.5; row 1: 1 - 2 + 1 = 0
    assert sequence_kl(logprobs, ref, mask).tolist() == [-0.5, 0.0]


def test_sequence_kl_ignores_padding_whatever_it_holds():
    logprobs = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.5]])
    mask = torch.tensor([[1, 1]])
    expected = sequence_kl(logprobs, ref, mask)
    assert expected.item() == 1.5
    # right padding with garbage, and left padding: the same value
    pad = torch.tensor([[float("nan"), float("inf")]])
    right = sequence_kl(torch.cat([logprobs, pad], 1), torch.cat([ref, -pad], 1),
                        torch.tensor([[1, 1, 0, 0]]))
    left = sequence_kl(torch.cat([pad, logprobs], 1), torch.cat([pad, ref], 1),
                       torch.tensor([[0, 0, 1, 1]]))
    assert right.tolist() == left.tolist() == expected.tolist()


# --- log-probs and KL of real models -----------------------------------------------------------


def _pairs(tokenizer):
    prompts = ["The acting was", "A quiet drama with a great cast, and the ending"]
    responses = [" lovely and warm.", " fell flat", " was a wonderful surprise!"]
    return [(tokenizer(p).input_ids, tokenizer(r).input_ids + [tokenizer.eos_token_id])
            for p in prompts for r in responses]


def test_response_logprobs_match_one_sequence_at_a_time(model, tokenizer):
    pairs = _pairs(tokenizer)
    batched = response_logprobs(model, pairs, tokenizer.pad_token_id, batch_size=4)
    assert [len(x) for x in batched] == [len(r) for _, r in pairs]
    for (prompt, response), lp in zip(pairs, batched, strict=True):
        ids = torch.tensor([prompt + response])
        alone = token_logprobs(forward_logits(model, ids, torch.ones_like(ids)), ids)
        torch.testing.assert_close(lp, alone[0, len(prompt):], rtol=1e-5, atol=1e-5)
        assert (lp < 0).all()


def test_kl_of_a_policy_against_itself_is_exactly_zero(model, tokenizer):
    pairs = _pairs(tokenizer)
    copy = tiny_llama(seed=0)  # the same weights in another module
    lp = response_logprobs(model, pairs, tokenizer.pad_token_id, batch_size=3)
    ref = response_logprobs(copy, pairs, tokenizer.pad_token_id, batch_size=3)
    pad = torch.nn.utils.rnn.pad_sequence
    mask = pad([torch.ones(len(x)) for x in lp], batch_first=True)
    assert sequence_kl(pad(lp, batch_first=True), pad(ref, batch_first=True), mask).tolist() \
        == [0.0] * len(pairs)
    other = response_logprobs(tiny_llama(seed=1), pairs, tokenizer.pad_token_id)
    assert sequence_kl(pad(lp, batch_first=True), pad(other, batch_first=True), mask).abs() \
        .min() > 0


def test_evaluate_policy_records(model, tokenizer):
    prompt_ids = [tokenizer(p["prompt"]).input_ids for p in PROMPTS[:2]]
    params = SamplingParams(max_new_tokens=5)
    records = evaluate_policy(model, tokenizer, prompt_ids, n=3, params=params, seed=4,
                              batch_size=1, reference=tiny_llama(seed=0), gold=count_e)
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == \
        [(p, s) for p in range(2) for s in range(3)]
    for r in records:
        assert r["kl"] == 0.0 and r["proxy"] is None
        assert r["gold"] == r["response"].count("e")
        assert 1 <= r["num_tokens"] <= 5 and (r["finished"] or r["num_tokens"] == 5)
    again = evaluate_policy(model, tokenizer, prompt_ids, n=3, params=params, seed=4,
                            batch_size=1)
    assert [r["response"] for r in again] == [r["response"] for r in records]
    assert all(r["kl"] is None and r["gold"] is None for r in again)


# --- summaries ---------------------------------------------------------------------------------


def _records(golds, n=2):
    return [{"prompt_index": i // n, "sample_index": i % n, "response": "", "gold": g,
             "proxy": -g, "kl": 0.5, "num_tokens": 4 + i, "finished": i % 2 == 0}
            for i, g in enumerate(golds)]


def test_summarize_means_and_win_rates_by_hand():
    ours, base = _records([1.0, 2.0, 3.0, 0.0]), _records([1.0, 1.0, 4.0, 0.0])
    s = summarize(ours, base)
    assert (s["prompts"], s["samples"]) == (2, 4)
    assert s["gold"]["mean"] == 1.5 and s["kl"]["mean"] == 0.5 and s["kl"]["ci"] == [0.5, 0.5]
    assert s["num_tokens"]["mean"] == 5.5 and s["eos_fraction"] == 0.5
    lo, hi = s["gold"]["ci"]
    assert lo <= 1.5 <= hi
    # gold: tie, win, loss, tie = (0.5 + 1 + 0 + 0.5) / 4; proxy is -gold: the other way round
    assert s["win_rate"]["gold"]["mean"] == 0.5
    assert win_rate(ours[:2], base[:2], "gold")["mean"] == 0.75
    assert win_rate(ours[:2], base[:2], "proxy")["mean"] == 0.25
    itself = summarize(ours, ours)["win_rate"]["gold"]
    assert itself == {"mean": 0.5, "ci": [0.5, 0.5]}
    assert "win_rate" not in summarize(ours)


def test_summarize_leaves_out_what_was_not_measured_and_checks_pairing():
    records = _records([1.0, 2.0])
    for r in records:
        r["gold"] = r["kl"] = None
    s = summarize(records, records)
    assert s["gold"] is None and s["kl"] is None and s["proxy"] is not None
    assert s["win_rate"]["gold"] is None and s["win_rate"]["proxy"]["mean"] == 0.5
    table = format_table({"a": s}, "a")
    assert "proxy" in table and "gold" not in table.splitlines()[0].replace("(gold)", "")
    with pytest.raises(ValueError, match="same prompts"):
        summarize(records, _records([1.0, 2.0, 3.0]))


def test_policy_names_are_derived_from_paths():
    derive = EvalConfig.derive_names
    assert derive(["runs/sft/final", "runs/dpo/final"]) == ["sft", "dpo"]
    assert derive(["a/x/final", "b/x/final", "tiny"]) == ["a/x", "b/x", "tiny"]
    assert derive(["runs/sft/final/", "runs/sft/final"]) == ["sft", "sft#2"]
    assert derive(["/abs/model"]) == ["model"]


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two tiny policies and a tiny reward model, saved as Hugging Face directories."""
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        tiny_llama(seed=seed).save_pretrained(root / f"policy{seed}")
        tiny_tokenizer().save_pretrained(root / f"policy{seed}")
    RewardModel.build("tiny", seed=2).save(root / "rm")
    return root


def _main(capsys, *argv):
    code = cli.main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end(tmp_path, saved, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    output = tmp_path / "out" / "eval.json"
    # policy0 has tiny's weights: loaded twice, it must match the reference ('tiny') exactly.
    code, out, err = _main(
        capsys, f"policies={saved / 'policy0'},{saved / 'policy1'},{saved / 'policy0'}",
        "names=sft,other,sft_again", "baseline=other", "reference=tiny", f"prompts={prompts}",
        "n=2", "max_new_tokens=6", "batch_size=2", "gold=test_eval_policy:count_e",
        f"reward_model={saved / 'rm'}", f"output={output}", "seed=3")
    assert code == 0, err
    result = json.loads(output.read_text())
    assert set(result) == {"config", "prompts", "baseline", "warnings", "policies"}
    assert result["prompts"] == [p["prompt"] for p in PROMPTS] and result["baseline"] == "other"
    assert result["warnings"] == [] and result["config"]["n"] == 2
    assert list(result["policies"]) == ["sft", "other", "sft_again"]
    for entry in result["policies"].values():
        assert set(entry) == {"policy", "summary", "samples"}
        summary, samples = entry["summary"], entry["samples"]
        assert set(summary) == {"prompts", "samples", "gold", "proxy", "kl", "num_tokens",
                                "eos_fraction", "win_rate"}
        assert (summary["prompts"], summary["samples"], len(samples)) == (3, 6, 6)
        for key in ("gold", "proxy", "kl", "num_tokens"):
            assert set(summary[key]) == {"mean", "ci"}
            assert summary[key]["ci"][0] <= summary[key]["mean"] <= summary[key]["ci"][1]
        assert set(summary["win_rate"]) == {"gold", "proxy"}
        for s in samples:
            assert set(s) == {"prompt_index", "sample_index", "response", "gold", "proxy",
                              "kl", "num_tokens", "finished"}
            assert s["gold"] == s["response"].count("e") and math.isfinite(s["proxy"])
    sft, other, again = (result["policies"][k] for k in ("sft", "other", "sft_again"))
    assert all(s["kl"] == 0.0 for s in sft["samples"] + again["samples"])
    assert any(s["kl"] != 0.0 for s in other["samples"])
    # the same policy with the same seed: the same samples, so it ties with itself
    assert again["samples"] == sft["samples"]
    assert again["summary"]["win_rate"] == sft["summary"]["win_rate"]
    assert other["summary"]["win_rate"]["gold"] == {"mean": 0.5, "ci": [0.5, 0.5]}
    assert other["summary"]["win_rate"]["proxy"] == {"mean": 0.5, "ci": [0.5, 0.5]}
    table = out[out.index("policy  "):]
    assert "sft_again" in table and "win vs other (gold)" in table and "-> " in out


def test_cli_static_backend_in_fp32_gives_hf_s_samples(tmp_path, saved, capsys):
    """backend=static samples from an fp32 copy of each policy: the same tokens as hf, so the
    same records (log-probs and scores come from the policy itself either way)."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    results = {}
    for backend in ("hf", "static"):
        output = tmp_path / f"{backend}.json"
        code, _, err = _main(capsys, f"policies={saved / 'policy1'}", "reference=tiny",
                             f"prompts={prompts}", "n=2", "max_new_tokens=6",
                             "gold=test_eval_policy:count_e", f"output={output}",
                             f"backend={backend}")
        assert code == 0, err
        results[backend] = json.loads(output.read_text())["policies"]["policy1"]["samples"]
    assert results["static"] == results["hf"]


def test_cli_first_policy_is_the_baseline_and_warns_about_tempered_kl(tmp_path, saved,
                                                                     capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    output = tmp_path / "eval.json"
    policy = saved / "policy1"
    code, out, err = _main(capsys, f"policies={policy}", f"reference={policy}",
                           f"prompts={prompts}", "num_prompts=2", "n=1", "max_new_tokens=4",
                           "temperature=0.7", "gold=", f"output={output}")
    assert code == 0, err
    result = json.loads(output.read_text())
    entry = result["policies"]["policy1"]
    assert result["baseline"] == "policy1" and entry["summary"]["samples"] == 2
    assert entry["summary"]["gold"] is None and entry["summary"]["proxy"] is None
    assert entry["summary"]["kl"] == {"mean": 0.0, "ci": [0.0, 0.0]}
    assert entry["summary"]["win_rate"] == {"gold": None, "proxy": None}
    assert len(result["warnings"]) == 1 and "temperature 0.7" in result["warnings"][0]
    assert "warning: KL is measured" in out


@pytest.mark.parametrize("args, needle", [
    (["prompts={tmp}/nope.jsonl"], "nope.jsonl: no such file or directory"),
    (["gold=sentimnet"], "unknown gold scorer 'sentimnet' (did you mean 'sentiment'?)"),
    (["gold=test_eval_policy:nope"], "has no 'nope'"),
    (["names=a,b"], "names has 2 entries but policies has 1"),
    (["baseline=zzz"], "baseline 'zzz' is not one of the policies' names"),
    (["policies={tmp}/missing_model"], "missing_model' not found"),
    (["prompts="], "prompts is required"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    argv = ["policies=tiny", f"prompts={prompts}", "gold=test_eval_policy:count_e",
            f"output={tmp_path / 'eval.json'}"]
    argv += [a.format(tmp=tmp_path) for a in args]
    code, out, err = _main(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tether eval: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "eval.json").exists()


def test_heldout_metrics_log_the_standard_error_of_gold(monkeypatch):
    """One sample per prompt: eval/gold_se = sd / sqrt(prompts), what the over-optimisation
    warning weighs a fall of gold against."""
    from tether.eval import policy

    records = [{"gold": g, "proxy": None, "kl": 0.0, "num_tokens": 5, "response": text}
               for g, text in [(0., " "), (1., "a"), (2., "b"), (3., "c")]]
    monkeypatch.setattr(policy, "evaluate_policy", lambda *a, **k: records)
    metrics = policy.heldout_metrics(None, None, [], [], params=None, seed=0, batch_size=1,
                                     reference=None, gold=None, reward_model=None, bf16=False)
    assert metrics["eval/gold"] == 1.5
    assert metrics["eval/gold_se"] == pytest.approx((5 / 3) ** 0.5 / 2)  # sd of 0..3 is sqrt(5/3)
    assert "eval/proxy" not in metrics
    assert metrics["eval/empty"] == 0.25  # the whitespace-only response
