"""Data as people bring it: splits and subsets of `datasets` sources, column mappings, and
preference pairs whose prompt is implicit in chosen/rejected (Anthropic HH). No network: every
dataset is built in tmp_path."""

import json

import pytest

from tether.config import DataConfig, SFTConfig, load_config
from tether.data.preferences import load_preference_data, parse_preference, parse_responses
from tether.data.readers import BadRow, read_rows
from tether.data.sft import load_sft_data
from tether.errors import ConfigError, DataError
from tether.models.loading import load_tokenizer

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


def rows(n, tag):
    return [{"question": f"{tag} question {i}", "answer": f"{tag} answer {i}"} for i in range(n)]


@pytest.fixture
def dataset_dict(tmp_path):
    """A DatasetDict with train and test splits, columns named as a dataset of Q&A would."""
    path = tmp_path / "qa"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(4, "train")),
                          "test": datasets.Dataset.from_list(rows(2, "test"))}
                         ).save_to_disk(str(path))
    return str(path)


def test_split_of_a_saved_dataset_dict(dataset_dict):
    assert [r.record["question"] for r in read_rows(dataset_dict, split="test")] == \
        ["test question 0", "test question 1"]
    with pytest.raises(DataError, match=r"no split 'validation' \(its splits: train, test\)"):
        list(read_rows(dataset_dict, split="validation"))


def test_eval_reads_its_own_split_never_train(dataset_dict, tokenizer):
    cfg = DataConfig(train=dataset_dict, eval=dataset_dict,
                     columns={"prompt": "question", "completion": "answer"})
    data = load_sft_data(cfg, tokenizer, seed=0)
    assert (len(data.train), len(data.eval)) == (4, 2)  # eval_split defaults to test
    cfg.eval_split = "validation"
    with pytest.raises(DataError, match="no split 'validation' .*train, test"):
        load_sft_data(cfg, tokenizer, seed=0)


def test_split_and_subset_of_a_directory_of_data_files(tmp_path, monkeypatch):
    """A hub dataset's files, cloned: one folder per subset, one file per split."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    repo = tmp_path / "repo"
    for subset in ("easy", "hard"):
        (repo / subset).mkdir(parents=True)
        for split, n in (("train", 3), ("test", 2)):
            pq.write_table(pa.Table.from_pylist(rows(n, f"{subset}-{split}")),
                           repo / subset / f"{split}-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n" + "".join(
            f"- config_name: {s}\n  data_files:\n  - split: train\n    path: {s}/train-*\n"
            f"  - split: test\n    path: {s}/test-*\n" for s in ("easy", "hard")) + "---\n")
    got = [r.record["question"] for r in read_rows(str(repo), split="test", subset="hard")]
    assert got == ["hard-test question 0", "hard-test question 1"]
    with pytest.raises(DataError, match="Unknown split \"dev\".*train.*test"):
        list(read_rows(str(repo), split="dev", subset="hard"))
    with pytest.raises(DataError, match="'medium' not found.*easy.*hard"):
        list(read_rows(str(repo), subset="medium"))


def test_json_object_of_lists_gives_the_split_asked_for(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": rows(2, "train"), "test": rows(1, "test")}))
    assert [r.record["question"] for r in read_rows(str(path), split="test")] == \
        ["test question 0"]
    with pytest.raises(DataError, match="'dev' list.*train, test"):
        list(read_rows(str(path), split="dev"))
    only_train = tmp_path / "t.json"
    only_train.write_text(json.dumps({"train": rows(2, "train")}))
    with pytest.raises(DataError, match="'test' list.*found: train"):
        list(read_rows(str(only_train), split="test"))  # as data.eval: never train instead
    one_list = tmp_path / "o.json"
    one_list.write_text(json.dumps({"data": rows(2, "x")}))
    assert len(list(read_rows(str(one_list), split="test"))) == 2  # the file's one set of rows


def test_column_mapping_renames_and_names_a_missing_column(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows(3, "x") + [{"question": "q"}]) + "\n")
    got = list(read_rows(str(path), columns={"prompt": "question", "completion": "answer"}))
    assert got[0].record == {"prompt": "x question 0", "completion": "x answer 0"}
    both = next(read_rows(str(path), columns={"prompt": "question", "completion": "question"}))
    assert both.record == {"prompt": "x question 0", "completion": "x question 0",
                           "answer": "x answer 0"}
    assert isinstance(got[3].record, BadRow)
    assert str(got[3].record) == (f"{path}:4: no column 'answer' (mapped to 'completion'); "
                                  f"the row's columns: question")
    cfg = DataConfig(train=str(path), columns={"prompt": "question", "completion": "answer"},
                     skip_bad_rows=True)
    data = load_sft_data(cfg, tokenizer, seed=0)
    assert data.stats["train"].bad_rows == 1 and data.stats["train"].rows == 3


def test_column_mapping_from_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("data:\n  train: d.jsonl\n  columns: {prompt: question}\n")
    cfg = load_config(SFTConfig, str(path), ["data.columns.completion=answer"])
    assert cfg.data.columns == {"prompt": "question", "completion": "answer"}
    with pytest.raises(ConfigError, match=r"sft.yaml:3: data.columns: 'promt' is not one of "
                                          r".*did you mean 'prompt'"):
        path.write_text("data:\n  train: d.jsonl\n  columns:\n    promt: question\n")
        load_config(SFTConfig, str(path))
    with pytest.raises(ConfigError, match="data.columns must be a mapping of names to names"):
        load_config(SFTConfig, None, ["data.train=d.jsonl", "data.columns=question"])


# --- implicit prompts (Anthropic HH) ------------------------------------------------------------

HH_PROMPT = "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers?" \
            "\n\nHuman: Another one?\n\nAssistant:"
HH_ROW = {"chosen": HH_PROMPT + " How about Mittens?", "rejected": HH_PROMPT + " No."}


def test_hh_text_pair_is_split_at_the_last_assistant_turn():
    pref = parse_preference(HH_ROW, "hh.jsonl:1")
    assert pref.prompt == [{"role": "user", "content": HH_PROMPT}]
    assert pref.responses == [" How about Mittens?", " No."]
    assert pref.ranks == [0, 1]


def test_hh_text_pair_whose_responses_begin_alike():
    """The common prefix runs into the responses; the prompt still ends at the turn boundary."""
    row = {"chosen": HH_PROMPT + " Mittens is nice.", "rejected": HH_PROMPT + " Mittens, no."}
    assert parse_preference(row, "w").responses == [" Mittens is nice.", " Mittens, no."]


def test_conversation_pair_is_split_before_the_last_assistant_message():
    turns = [{"role": "user", "content": "Name a cat."},
             {"role": "assistant", "content": "Whiskers."},
             {"role": "user", "content": "Another?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "Mittens."}],
           "rejected": turns + [{"role": "assistant", "content": "No."}]}
    pref = parse_preference(row, "w")
    assert pref.prompt == turns and pref.responses == ["Mittens.", "No."]
    assert parse_responses(row, "w") == (turns, ["Mittens.", "No."])


@pytest.mark.parametrize("row, message", [
    ({"chosen": "Great film.", "rejected": "Bad film."}, "share no prompt: no 'Assistant:'"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: and?\n\nAssistant: so",
      "rejected": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: ok\n\nAssistant: so"},
     "differ before their last assistant turn"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
     "share no prompt: their turns before the last assistant message differ"),
    ({"chosen": [{"role": "assistant", "content": "b"}],
      "rejected": [{"role": "assistant", "content": "d"}]}, "must be a whole conversation"),
    ({"chosen": "text", "rejected": [{"role": "assistant", "content": "d"}]},
     "both strings or both lists"),
])
def test_pair_without_a_shared_prompt_is_a_bad_row(row, message):
    with pytest.raises(BadRow, match=f"^hh.jsonl:3: no 'prompt'.*{message}"):
        parse_preference(row, "hh.jsonl:3")


def test_hh_dataset_with_a_test_split_trains_a_reward_model_on_its_pairs(tmp_path, tokenizer):
    """The whole path: a saved HH-style DatasetDict, its train and test splits, implicit
    prompts, tokenised."""
    path = tmp_path / "hh"
    make = lambda n: datasets.Dataset.from_list([  # noqa: E731
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}",
         "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"} for i in range(n)])
    datasets.DatasetDict({"train": make(4), "test": make(2)}).save_to_disk(str(path))
    data = load_preference_data(DataConfig(train=str(path), eval=str(path), max_length=64),
                                tokenizer, seed=0)
    assert (len(data.train), len(data.eval)) == (4, 2)
    assert data.train[0].source.prompt == [{"role": "user", "content": "\n\nHuman: q0\n\n"
                                                                       "Assistant:"}]


def test_a_source_carries_its_split_subset_and_columns_as_a_query(dataset_dict, tmp_path):
    """The form every prompts setting takes (sample, eval, ppo, the pipeline's task)."""
    from tether.data.prompts import load_prompts

    rows, _ = load_prompts(f"{dataset_dict}?split=test&prompt=question")
    assert [r.prompt for r in rows] == ["test question 0", "test question 1"]
    assert rows[0].columns == {"answer": "test answer 0"}  # reaches the scorers, as in TRL
    rows, _ = load_prompts(f"{dataset_dict}?prompt=question&reference=answer")
    assert len(rows) == 4 and rows[0].columns == {"reference": "train answer 0"}
    with pytest.raises(DataError, match="'prompt' is not key=value"):
        load_prompts(f"{dataset_dict}?prompt")
    with pytest.raises(DataError, match="no split 'dev'"):
        load_prompts(f"{dataset_dict}?split=dev&prompt=question")
