"""Data: readers with precise locations, SFT row parsing, loading with stats, eval split."""

import json
from types import SimpleNamespace

import pytest

from tether.config import DataConfig
from tether.data.readers import BadRow, read_rows
from tether.data.records import LoadStats, load_records
from tether.data.sft import load_sft_data, parse_sft
from tether.data.tokenize import (
    MARGIN,
    encode_example,
    encode_prompt,
    encode_response,
    tokenize_capped,
)
from tether.errors import DataError
from tether.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def write_jsonl(path, rows, raw_lines=()):
    """rows are JSON-encoded, one a line; raw_lines: (index, bytes) put in as they are."""
    lines = [json.dumps(r).encode() if not isinstance(r, bytes) else r for r in rows]
    for index, raw in raw_lines:
        lines.insert(index, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


GOOD = [{"prompt": f"prompt {i}", "completion": f"answer {i}"} for i in range(3)]


# --- readers ----------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \n{"a": 2}\r\n\t\n{"a": 3}')  # CRLF; no final newline
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:4", f"{path}:6"]


def test_jsonl_bad_lines_become_bad_rows_in_place(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n\xff\xfe{"a": 2}\n{"a": 3}\n')
    rows = list(read_rows(str(path)))
    assert [r.where for r in rows] == [f"{path}:{i}" for i in (1, 2, 3, 4)]
    assert rows[0].record == {"a": 1} and rows[3].record == {"a": 3}
    assert isinstance(rows[1].record, BadRow)
    assert str(rows[1].record).startswith(f"{path}:2: invalid JSON")
    assert isinstance(rows[2].record, BadRow)
    assert str(rows[2].record).startswith(f"{path}:3: not valid UTF-8")


def test_json_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(GOOD, indent=2))
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == GOOD
    assert [r.where for r in rows] == [f"{path}: record {i}" for i in range(3)]


def test_json_object_holding_train_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 1, "train": GOOD}))
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == GOOD
    assert rows[2].where == f"{path}: record 2"


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"a": 1},\n  {"a": }\n]\n')
    with pytest.raises(DataError, match=rf"^{bad}:3: invalid JSON"):
        list(read_rows(str(bad)))
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(DataError, match="expected a list of records"):
        list(read_rows(str(scalar)))
    no_list = tmp_path / "nolist.json"
    no_list.write_text('{"a": 1}')
    with pytest.raises(DataError, match="expected a list of records"):
        list(read_rows(str(no_list)))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'["\xff"]')
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(read_rows(str(binary)))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD), path)
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == GOOD
    assert [r.where for r in rows] == [f"{path}: row {i}" for i in range(3)]


def test_damaged_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{path}: cannot read Parquet"):
        list(read_rows(str(path)))


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "ds"
    datasets.Dataset.from_list(GOOD).save_to_disk(str(path))
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == GOOD
    assert [r.where for r in rows] == [f"{path}: row {i}" for i in range(3)]


def test_datasets_dict_uses_train_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "dd"
    datasets.DatasetDict({
        "test": datasets.Dataset.from_list([{"prompt": "t", "completion": "t"}]),
        "train": datasets.Dataset.from_list(GOOD),
    }).save_to_disk(str(path))
    rows = list(read_rows(str(path)))
    assert [r.record for r in rows] == GOOD
    assert rows[1].where == f"{path}: row 1"

    no_train = tmp_path / "nt"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(GOOD)}).save_to_disk(str(no_train))
    with pytest.raises(DataError, match=r"no split 'train' \(its splits: test\)"):
        list(read_rows(str(no_train)))


def test_plain_directory_and_unsupported_suffix(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one saved by datasets.save_to_disk nor one "
                                        "holding data files"):
        list(read_rows(str(tmp_path / "plain")))
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match=r"unsupported data file type '\.csv'"):
        list(read_rows(str(csv)))
    with pytest.raises(DataError, match="no such file"):
        list(read_rows(str(tmp_path / "missing.txt")))


# --- SFT rows ---------------------------------------------------------------------------------


def test_parse_prompt_completion_strings():
    prompt, response = parse_sft({"prompt": "Hi", "completion": " there"}, "f:1")
    assert prompt == [{"role": "user", "content": "Hi"}]
    assert response == " there"


def test_parse_conversational_prompt_and_completion():
    record = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello!"}],
    }
    prompt, response = parse_sft(record, "f:1")
    assert prompt == record["prompt"]
    assert response == "Hello!"


def test_parse_messages_with_assistant_last():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                {"role": "assistant", "content": "A2", "name": "extra fields are dropped"}]
    prompt, response = parse_sft({"messages": messages}, "f:1")
    assert prompt == messages[:4]
    assert response == "A2"


def test_the_three_forms_encode_the_same(tmp_path, tokenizer):
    rows = [
        {"prompt": "Rate this film.", "completion": "Lovely."},
        {"prompt": [{"role": "user", "content": "Rate this film."}],
         "completion": [{"role": "assistant", "content": "Lovely."}]},
        {"messages": [{"role": "user", "content": "Rate this film."},
                      {"role": "assistant", "content": "Lovely."}]},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_sft_data(DataConfig(train=path, eval_fraction=0), tokenizer, seed=0)
    assert len(data.train) == 3 and data.eval == []
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "Rate this film."}], True)
    reply = encode_response(tokenizer, "Lovely.")
    assert reply[-1] == tokenizer.eos_token_id
    for e in data.train:
        assert e.input_ids == prompt + reply
        assert e.loss_mask == [0] * len(prompt) + [1] * len(reply)
        assert not e.truncated
    assert data.stats["train"].rows == 3 and data.stats["train"].bad_rows == 0


BAD_ROWS = [
    (b'{"prompt": "a", "completion": ', "invalid JSON"),
    (b'{"prompt": "caf\xe9", "completion": "b"}', "not valid UTF-8"),
    (b'{"prompt": "a"}', "missing field 'completion'"),
    (b'{"completion": "a"}', "missing field 'prompt'"),
    (b'{"prompt": 3, "completion": "b"}', "'prompt' must be a string or a list of messages"),
    (b'{"prompt": "a", "completion": 5}', "'completion' must be a string, got int"),
    (b'["prompt", "completion"]', "expected a JSON object, got list"),
    (b'{"prompt": "a", "completion": "   "}', "'completion' is empty or only whitespace"),
    (b'{"prompt": " ", "completion": "b"}', "empty prompt"),
    (b'{"prompt": "a", "completion": [{"role": "user", "content": "b"}]}',
     "single assistant message"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
     b'{"role": "user", "content": "c"}]}', "last of 'messages' must be the assistant"),
    (b'{"messages": [{"role": "assistant", "content": "b"}]}', "needs a prompt turn"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}',
     "'messages[-1]' is empty"),
    (b'{"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]}',
     "messages[0] must be an object with 'role'"),
    (b'{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "b"}]}',
     "messages[0] must be an object with 'role'"),
    (b'{"messages": []}', "'messages' must be a non-empty list"),
    (b'{"messages": "hi"}', "'messages' must be a non-empty list"),
]


@pytest.mark.parametrize("raw, expected", BAD_ROWS, ids=[e for _, e in BAD_ROWS])
def test_bad_row_reports_file_and_line(tmp_path, raw, expected):
    # Good row on line 1, a blank line 2, the bad row on line 3, a good row after it.
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], b"", raw, GOOD[1]])
    with pytest.raises(DataError) as info:
        load_records(path, parse_sft, skip_bad_rows=False, stats=LoadStats())
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert expected in message
    assert "data.skip_bad_rows=true" in message

    stats = LoadStats()
    records = load_records(path, parse_sft, skip_bad_rows=True, stats=stats)
    assert [response for _, response in records] == ["answer 0", "answer 1"]
    assert stats.bad_rows == 1 and stats.rows == 2
    assert stats.first_bad.startswith(f"{path}:3: ") and expected in stats.first_bad


def test_bad_rows_in_json_file_name_the_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD[0], {"prompt": "x"}]))
    with pytest.raises(DataError, match=rf"^{path}: record 1: missing field 'completion'"):
        load_records(str(path), parse_sft, skip_bad_rows=False, stats=LoadStats())


# --- load_sft_data ----------------------------------------------------------------------------


def test_load_stops_at_first_bad_row(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], {"prompt": "x"}, b"{oops", GOOD[1]])
    with pytest.raises(DataError, match=rf"^{path}:2: missing field 'completion'"):
        load_sft_data(DataConfig(train=path), tokenizer, seed=0)


def test_load_skips_and_counts_bad_rows(tmp_path, tokenizer):
    rows = [GOOD[0], {"prompt": "x"}, b"{oops", GOOD[1], b"", {"prompt": "y", "completion": ""},
            GOOD[2]]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(train=path, skip_bad_rows=True, eval_fraction=0)
    data = load_sft_data(cfg, tokenizer, seed=0)
    stats = data.stats["train"]
    assert stats.bad_rows == 3
    assert stats.first_bad.startswith(f"{path}:2: missing field 'completion'")
    assert stats.rows == 3 and len(data.train) == 3
    assert "3 bad rows skipped" in stats.summary() and f"{path}:2" in stats.summary()


def test_all_rows_bad_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x"}, {"prompt": "y"}])
    with pytest.raises(DataError, match=r"no usable rows \(all 2 skipped as bad\)"):
        load_sft_data(DataConfig(train=path, skip_bad_rows=True), tokenizer, seed=0)


def test_missing_eval_file_is_a_data_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD)
    with pytest.raises(DataError):
        load_sft_data(DataConfig(train=path, eval=str(tmp_path / "eval.csv")), tokenizer, 0)


def test_separate_eval_file(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", GOOD)
    evals = write_jsonl(tmp_path / "e.jsonl", GOOD[:2] + [{"prompt": "x"}])
    cfg = DataConfig(train=train, eval=evals, eval_fraction=0.5, skip_bad_rows=True)
    data = load_sft_data(cfg, tokenizer, seed=0)
    assert len(data.train) == 3 and len(data.eval) == 2  # eval_fraction unused with a file
    assert data.stats["eval"].bad_rows == 1 and data.stats["eval"].rows == 2


def long_rows(tokenizer):
    long_prompt = "The plot was dull and the pacing felt endless. " * 20
    rows = [{"prompt": "Short one.", "completion": "Fine."},
            {"prompt": long_prompt, "completion": "A weak film overall."},
            {"prompt": "Another short.", "completion": "Great cast."},
            {"prompt": "Tell me more.", "completion": "It dragged on. " * 30}]
    return rows, long_prompt


def test_truncation_drop_counts_dropped_rows(tmp_path, tokenizer):
    rows, _ = long_rows(tokenizer)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(train=path, max_length=48, truncation="drop", eval_fraction=0)
    data = load_sft_data(cfg, tokenizer, seed=0)
    stats = data.stats["train"]
    assert stats.dropped_too_long == 2 and stats.truncated == 0
    assert stats.rows == 4 and len(data.train) == 2
    assert all(len(e.input_ids) <= 48 for e in data.train)
    assert "2 dropped as longer than max_length" in stats.summary()

    cfg = DataConfig(train=path, max_length=8, truncation="drop")
    with pytest.raises(DataError, match="every row is longer than data.max_length=8"):
        load_sft_data(cfg, tokenizer, seed=0)


def test_truncation_prompt_left_keeps_the_response(tmp_path, tokenizer):
    rows, long_prompt = long_rows(tokenizer)
    path = write_jsonl(tmp_path / "d.jsonl", rows[:3])
    cfg = DataConfig(train=path, max_length=48, truncation="prompt_left", eval_fraction=0)
    data = load_sft_data(cfg, tokenizer, seed=0)
    stats = data.stats["train"]
    assert stats.truncated == 1 and stats.dropped_too_long == 0 and len(data.train) == 3
    e = data.train[1]  # order is kept when nothing is held out
    full_prompt = encode_prompt(tokenizer, [{"role": "user", "content": long_prompt}], True)
    reply = encode_response(tokenizer, "A weak film overall.")
    assert e.truncated and len(e.input_ids) == 48
    assert e.input_ids[-len(reply):] == reply  # the whole response, EOS included
    assert sum(e.loss_mask) == len(reply)
    assert e.input_ids[:-len(reply)] == full_prompt[-(48 - len(reply)):]  # prompt cut on the left
    assert not data.train[0].truncated and not data.train[2].truncated


def test_truncation_prompt_left_keeps_some_prompt_for_a_long_response(tmp_path, tokenizer):
    rows, _ = long_rows(tokenizer)
    path = write_jsonl(tmp_path / "d.jsonl", [rows[3]])
    data = load_sft_data(DataConfig(train=path, max_length=40, eval_fraction=0), tokenizer, 0)
    (e,) = data.train
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "Tell me more."}], True)
    assert len(e.input_ids) == 40 and e.truncated
    assert e.num_prompt_tokens == min(len(prompt), 40 // 4)
    assert sum(e.loss_mask) == 40 - e.num_prompt_tokens


class Spy:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("long_side", ["prompt", "response"])
def test_a_long_row_is_cut_before_it_is_tokenised(tokenizer, long_side):
    long = "The plot was dull, and the pacing felt endless: 1999, 2001. " * 20_000  # 1.2 MB
    prompt, response = ("Rate this film.", long) if long_side == "response" else \
        (long, "A weak film overall.")
    messages = [{"role": "user", "content": prompt}]
    spy = Spy(tokenizer)
    e = encode_example(spy, messages, response, chat_template=True, max_length=48,
                       truncation="prompt_left")
    assert max(spy.lengths) < 2_000  # never the whole row
    # the same example as from the whole text tokenised, then truncated
    whole_prompt = encode_prompt(tokenizer, messages, True)
    whole_reply = encode_response(tokenizer, response)
    keep = max(min(len(whole_prompt), 48 // 4), 48 - len(whole_reply))
    assert e.truncated and e.input_ids == (whole_prompt[len(whole_prompt) - keep:]
                                           + whole_reply[:48 - keep])
    assert encode_example(spy, messages, response, chat_template=True, max_length=48,
                          truncation="drop") is None


def test_capped_tokenising_reads_more_text_where_tokens_are_long():
    class OneTokenPer40Chars:
        def __call__(self, text, verbose=True):
            return SimpleNamespace(input_ids=list(range(len(text) // 40)))

    ids = tokenize_capped(OneTokenPer40Chars(), "x" * 1_000_000, 100)
    assert len(ids) >= 100 + MARGIN  # enough to keep 100 and see that the text is longer
    assert len(ids) < 4 * (100 + MARGIN)  # and not the whole text's 25,000
    assert len(tokenize_capped(OneTokenPer40Chars(), "x" * 4000, 100)) == 100  # all of it


def many_rows(n):
    return [{"prompt": f"Review number {i}:", "completion": f"my verdict {i}"} for i in range(n)]


def test_eval_split_deterministic_and_disjoint(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", many_rows(40))
    cfg = DataConfig(train=path, eval_fraction=0.25)

    def split(seed):
        data = load_sft_data(cfg, tokenizer, seed=seed)
        return ([tuple(e.input_ids) for e in data.train], [tuple(e.input_ids) for e in data.eval])

    train, evals = split(seed=1)
    assert len(evals) == 10 and len(train) == 30
    assert not set(train) & set(evals)
    everything = load_sft_data(DataConfig(train=path, eval_fraction=0), tokenizer, seed=1).train
    assert set(train) | set(evals) == {tuple(e.input_ids) for e in everything}
    assert split(seed=1) == (train, evals)  # same seed, same split
    other_train, other_evals = split(seed=2)
    assert set(other_evals) != set(evals)
    assert not set(other_train) & set(other_evals)
    # train keeps the file's order
    order = [tuple(e.input_ids) for e in everything]
    assert train == [row for row in order if row in set(train)]


def test_eval_split_edge_cases(tmp_path, tokenizer):
    one = write_jsonl(tmp_path / "one.jsonl", many_rows(1))
    data = load_sft_data(DataConfig(train=one, eval_fraction=0.5), tokenizer, seed=0)
    assert len(data.train) == 1 and data.eval == []  # nothing to hold out from one row
    ten = write_jsonl(tmp_path / "ten.jsonl", many_rows(10))
    data = load_sft_data(DataConfig(train=ten, eval_fraction=0.01), tokenizer, seed=0)
    assert len(data.eval) == 1 and len(data.train) == 9  # at least one held out
    data = load_sft_data(DataConfig(train=ten, eval_fraction=0), tokenizer, seed=0)
    assert len(data.train) == 10 and data.eval == []


def test_missing_local_files_are_data_errors(tmp_path):
    for name in ("missing.jsonl", "missing.json", "sub/dir/missing"):
        with pytest.raises(DataError, match="no such file or directory"):
            list(read_rows(str(tmp_path / name)))


def test_jsonl_with_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n")
    assert [r.record for r in read_rows(str(path))] == [GOOD[0]]


def test_json_object_prefers_its_train_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": GOOD, "test": GOOD[:1]}))
    assert len(list(read_rows(str(path)))) == 3
    path.write_text(json.dumps({"a": GOOD, "b": GOOD}))
    with pytest.raises(DataError, match="'train' list"):
        list(read_rows(str(path)))
