"""Unpaired thumbs up / down rows: parsing, errors naming file:line, DPO's tokenisation, and
the mismatched pairs of KTO's reference point."""

import json

import pytest
from conftest import write_jsonl

from tether.config import DataConfig
from tether.data.tokenize import encode_example
from tether.data.unpaired import load_unpaired_data, mismatched_partners, parse_unpaired
from tether.errors import DataError
from tether.models.tiny import tiny_tokenizer


def thumbs_rows(n: int) -> list[dict]:
    return [{"prompt": f"Review {i}:", "label": bool(i % 2),
             "completion": f" The film was {'great' if i % 2 else 'dull'}."} for i in range(n)]


def load(tmp_path, rows, **kw):
    path = write_jsonl(tmp_path / "thumbs.jsonl", rows)
    return load_unpaired_data(DataConfig(train=str(path), eval_fraction=0, **kw),
                              tiny_tokenizer(), seed=0), path


def test_rows_are_encoded_as_dpo_encodes_a_response(tmp_path, tokenizer):
    rows = thumbs_rows(6)
    rows[0] = {"prompt": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Review 0:"}],
               "completion": [{"role": "assistant", "content": " Dull."}], "label": False}
    data, _ = load(tmp_path, rows)
    assert len(data.train) == 6 and data.eval == []
    by_prompt = {r.source.where: r for r in data.train}
    first = by_prompt[f"{tmp_path / 'thumbs.jsonl'}:1"]
    assert first.source.completion == " Dull." and first.desirable is False
    want = encode_example(tokenizer, first.source.prompt, " Dull.", chat_template=True,
                          max_length=512, truncation="prompt_left")
    assert first.responses[0] == want
    assert [r.desirable for r in sorted(data.train, key=lambda r: r.source.where)] == \
        [False, True, False, True, False, True]


def test_a_completion_that_never_ended_is_read_and_still_ends_with_eos(tmp_path, tokenizer):
    """A sampled completion cut at the token limit (finished: false, as `tether sample` and
    the simulated thumbs write it) keeps its flag, and KTO still encodes it with an EOS, in
    its own row and as another row's mismatched partner: without one, the thumbs down on
    cut-off completions taught the policy to stop early (see tether.data.unpaired)."""
    rows = thumbs_rows(4)
    rows[1] = {**rows[1], "completion": " The film was", "finished": False}
    rows[2] = {**rows[2], "finished": True}
    data, _ = load(tmp_path, rows)
    partners = mismatched_partners([r.source for r in data.train], seed=0)
    for row, j in zip(data.train, partners, strict=True):
        for encoded, source in zip(row.responses, (row.source, data.train[j].source),
                                   strict=True):
            ended = encode_example(tokenizer, row.source.prompt, source.completion,
                                   chat_template=True, max_length=512,
                                   truncation="prompt_left")
            assert ended.input_ids[-1] == tokenizer.eos_token_id
            assert encoded.input_ids == ended.input_ids
    assert [r.source.finished for r in sorted(data.train, key=lambda r: r.source.where)] == \
        [True, False, True, True]


def test_each_row_has_its_prompt_with_another_rows_completion(tmp_path, tokenizer):
    rows = [{**r, "completion": f" Film {i} was fine."} for i, r in enumerate(thumbs_rows(8))]
    data, _ = load(tmp_path, rows)
    partners = []
    for row in data.train:
        own, other = row.responses
        n = own.num_prompt_tokens
        assert other.input_ids[:n] == own.input_ids[:n]  # the same prompt
        text = tokenizer.decode(other.input_ids[other.num_prompt_tokens:],
                                skip_special_tokens=True)
        assert text != row.source.completion
        partners.append(text)
    assert sorted(partners) == sorted(r["completion"] for r in rows)  # each used once


def test_partners_skip_rows_with_the_same_prompt():
    from tether.data.unpaired import Unpaired

    prompts = ["a", "a", "a", "b", "c", "c"]
    rows = [Unpaired([{"role": "user", "content": p}], f"r{i}", True, f"row {i}")
            for i, p in enumerate(prompts)]
    for seed in range(10):
        partners = mismatched_partners(rows, seed)
        assert all(prompts[j] != prompts[i] for i, j in enumerate(partners))
        assert partners == mismatched_partners(rows, seed)  # seeded
    # One prompt only: every row keeps a partner (another row where there is one).
    same = rows[:3]
    assert sorted(mismatched_partners(same, 0)) == [0, 1, 2]


def test_partners_of_rows_mostly_on_one_prompt_are_found_in_linear_time():
    from tether.data.unpaired import Unpaired

    rows = [Unpaired([{"role": "user", "content": "a" if i else "b"}], f"r{i}", True, "")
            for i in range(20000)]  # walking back past every "a" row would be quadratic
    partners = mismatched_partners(rows, 0)
    assert all(p == 0 for p in partners[1:]) and partners[0] != 0


def test_labels_one_and_zero_are_true_and_false():
    assert parse_unpaired({"prompt": "p", "completion": "c", "label": 1}, "f:1").desirable
    assert not parse_unpaired({"prompt": "p", "completion": "c", "label": 0}, "f:1").desirable


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c", "label": "true"}, "'label' must be true"),
    ({"prompt": "p", "completion": "c", "label": 2}, "'label' must be true"),
    ({"prompt": "p", "completion": "c", "label": None}, "'label' must be true"),
    ({"prompt": "p", "completion": "c"}, "missing field 'label'"),
    ({"prompt": "p", "label": True}, "missing field 'completion'"),
    ({"completion": "c", "label": True}, "missing field 'prompt'"),
    ({"prompt": "p", "completion": "  ", "label": True}, "'completion' is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "tether dpo"),
    ({"prompt": "p", "completion": "c", "label": True, "finished": "no"},
     "'finished' must be true or false"),
    ({"prompt": "p", "completion": "c", "label": True, "finished": 0},
     "'finished' must be true or false"),
])
def test_bad_rows_name_their_line(tmp_path, row, message):
    rows = thumbs_rows(4)
    rows.insert(2, row)
    with pytest.raises(DataError) as e:
        load(tmp_path, rows)
    assert "thumbs.jsonl:3: " in str(e.value) and message in str(e.value)


def test_empty_completions_only_where_allowed(tmp_path):
    rows = thumbs_rows(4) + [{"prompt": "p", "completion": "", "label": False}]
    data, _ = load(tmp_path, rows, allow_empty_responses=True)
    assert len(data.train) == 5


@pytest.mark.parametrize("label", [True, False])
def test_one_class_is_an_error(tmp_path, label):
    rows = [{**r, "label": label} for r in thumbs_rows(4)]
    with pytest.raises(DataError, match="KTO needs both"):
        load(tmp_path, rows)


def test_holding_out_must_leave_both_classes_to_train_on(tmp_path):
    rows = thumbs_rows(2)  # one of each: holding one out leaves a single class
    path = write_jsonl(tmp_path / "two.jsonl", rows)
    with pytest.raises(DataError, match="training rows left after holding out"):
        load_unpaired_data(DataConfig(train=str(path), eval_fraction=0.5), tiny_tokenizer(), 0)


def test_a_json_file_reads_the_same(tmp_path):
    path = tmp_path / "thumbs.json"
    path.write_text(json.dumps(thumbs_rows(4)))
    data = load_unpaired_data(DataConfig(train=str(path), eval_fraction=0), tiny_tokenizer(), 0)
    assert sorted(r.desirable for r in data.train) == [False, False, True, True]
