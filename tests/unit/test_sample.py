"""`tether sample` on the tiny model: candidates.jsonl format, seeding, bad rows, truncation."""

import json

import pytest
from conftest import write_jsonl

from tether.config import SampleConfig, load_config
from tether.errors import DataError
from tether.models.tiny import tiny_tokenizer
from tether.rollout.static import StaticGenerator
from tether.sample import run

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Continue this movie review: the plot"}]
PROMPTS = [{"prompt": "The acting was"}, {"prompt": MESSAGES, "id": 7},
           {"prompt": "A quiet drama with a great cast, and"}, {"prompt": "The ending"},
           {"prompt": "Not used: beyond num_prompts"}]


def _cfg(tmp_path, prompts, *overrides):
    return load_config(SampleConfig, None, [
        "policy=tiny", f"prompts={prompts}", f"output={tmp_path / 'out' / 'candidates.jsonl'}",
        "k=3", "max_new_tokens=6", "batch_size=2", "num_prompts=4", *overrides])


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_one_row_per_prompt_with_k_responses(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = run(_cfg(tmp_path, prompts, "seed=5"))
    assert out == tmp_path / "out" / "candidates.jsonl"
    assert [p.name for p in out.parent.iterdir()] == ["candidates.jsonl"]  # no temp file left
    rows = _read(out)
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS[:4]]  # as given
    # a prompt row's other fields come along, for a gold scorer that reads them
    assert [r.get("id") for r in rows] == [None, 7, None, None]
    for row in rows:
        assert set(row) - {"id"} == {"prompt", "responses", "num_tokens", "finished",
                                     "sampling"}
        assert len(row["responses"]) == len(row["num_tokens"]) == len(row["finished"]) == 3
        for text, n, finished in zip(row["responses"], row["num_tokens"], row["finished"],
                                     strict=True):
            assert isinstance(text, str) and "<|im_end|>" not in text
            assert 1 <= n <= 6 and (finished or n == 6)
        assert row["sampling"] == {"policy": "tiny", "temperature": 1.0, "top_p": 1.0,
                                   "max_new_tokens": 6, "seed": 5}
    summary = capsys.readouterr().out
    assert "4 prompts x 3 = 12 responses" in summary and "tokens/s" in summary


def test_same_seed_and_batch_size_reproduce_the_samples(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    first = _read(run(_cfg(tmp_path, prompts)))
    assert _read(run(_cfg(tmp_path, prompts))) == first
    other = _read(run(_cfg(tmp_path, prompts, "seed=1")))
    assert [r["responses"] for r in other] != [r["responses"] for r in first]


def test_long_prompts_keep_their_last_tokens(tmp_path, monkeypatch):
    seen = []
    generate = StaticGenerator.generate  # backend=auto's on the CPU

    def spy(self, prompts, n, params, seed=None):
        seen.append((list(prompts), seed))
        return generate(self, prompts, n, params, seed)

    monkeypatch.setattr(StaticGenerator, "generate", spy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run(_cfg(tmp_path, prompts, "max_prompt_length=5", "chat_template=never", "seed=10"))
    assert [len(batch) for batch, _ in seen] == [2, 2]
    assert [seed for _, seed in seen] == [10, 11]  # seed + batch index
    full = tiny_tokenizer()("A quiet drama with a great cast, and").input_ids
    assert len(full) > 5 and seen[1][0][0] == full[-5:]
    assert all(len(p) <= 5 for batch, _ in seen for p in batch)


def test_bad_prompt_row_stops_with_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'prompt'.*skip_bad_rows=true"):
        run(_cfg(tmp_path, path))
    with pytest.raises(DataError) as e:
        run(_cfg(tmp_path, path))
    assert "data.skip_bad_rows" not in str(e.value)  # this command's key is top-level
    rows = _read(run(_cfg(tmp_path, path, "skip_bad_rows=true")))
    assert [r["prompt"] for r in rows] == ["fine"]
