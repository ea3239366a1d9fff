"""Reward model construction, read-out, normalisation, save/load, and preference data."""


import pytest
import torch
from conftest import write_jsonl
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from tether.config import DataConfig
from tether.data.collate import collate
from tether.data.preferences import load_preference_data
from tether.errors import DataError
from tether.models.loading import load_tokenizer
from tether.models.reward import RewardModel, last_token_index

PROMPT = [{"role": "user", "content": "Continue this movie review: the plot"}]
REPLIES = [" was lovely.", " was dull and slow, sadly.", " fine.", " was a wonderful surprise!"]


@pytest.fixture
def rm():
    return RewardModel.build("tiny", seed=0, max_length=128)


def test_head_init_and_config(rm):
    head = rm.model.score
    assert head.weight.shape == (1, 128) and head.bias is None  # no bias: it is fitted later
    assert head.weight.std().item() == pytest.approx(1 / (129 ** 0.5), rel=0.3)
    assert rm.kind == "policy" and rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    assert rm.model.config.pad_token_id != rm.tokenizer.eos_token_id


def test_last_token_index_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_reward_is_read_at_the_last_token_whatever_the_padding(rm):
    rm.model.eval()
    encoded = [rm.encode(PROMPT, r) for r in REPLIES]
    with torch.no_grad():
        right = rm.raw_scores(collate(encoded, rm.tokenizer.pad_token_id, "right"))
        left = rm.raw_scores(collate(encoded, rm.tokenizer.pad_token_id, "left"))
        alone = torch.cat([rm.raw_scores(collate([e], rm.tokenizer.pad_token_id, "right"))
                           for e in encoded])
        # Much more padding: a long neighbour in the batch.
        long = rm.encode(PROMPT, " word" * 60)
        wide = rm.raw_scores(collate(encoded + [long], rm.tokenizer.pad_token_id, "left"))[:-1]
    assert (right - left).abs().max().item() < 1e-5
    assert (right - alone).abs().max().item() < 1e-5
    assert (right - wide).abs().max().item() < 1e-5
    # The score is that of the EOS position: changing a token before it changes the score.
    assert encoded[0].input_ids[-1] == rm.tokenizer.eos_token_id


def test_normalisation_gives_mean_zero_and_unit_std_on_the_reference(rm):
    encoded = [rm.encode(PROMPT, r) for r in REPLIES * 3]
    raw = rm.raw_scores_of(encoded)
    rm.fit_normalization(raw, "mean")
    assert rm.normalize(raw).mean().item() == pytest.approx(0.0, abs=1e-6)
    rm.fit_normalization(raw, "mean_std")
    normalized = rm.normalize(raw)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-5)
    rm.fit_normalization(raw, "none")
    assert torch.equal(rm.normalize(raw), raw)


def test_save_then_plain_transformers_gives_the_same_raw_scores(rm, tmp_path):
    rm.fit_normalization(rm.raw_scores_of([rm.encode(PROMPT, r) for r in REPLIES]), "mean_std")
    out = rm.save(tmp_path / "rm")
    encoded = [rm.encode(PROMPT, r) for r in REPLIES]
    batch = collate(encoded, rm.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        ours = rm.raw_scores_of(encoded)
        plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    theirs = logits[:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    loaded = RewardModel.from_pretrained(out)
    assert (loaded.gain, loaded.bias) == pytest.approx((rm.gain, rm.bias))
    assert loaded.score([PROMPT] * 4, REPLIES) == pytest.approx(
        rm.normalize(ours).tolist(), abs=1e-5)


@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A tiny random BERT with the embedded MiniLM's tokenizer: the encoder path, fast."""
    tokenizer = load_tokenizer("minilm-l6")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def test_encoder_backbone_pairs_prompt_and_response(tiny_bert_dir):
    rm = RewardModel.build(str(tiny_bert_dir), max_length=64)
    assert rm.kind == "encoder" and not rm.chat_template
    enc = rm.encode(PROMPT, " was lovely.")
    tok = rm.tokenizer
    assert enc.input_ids[0] == tok.cls_token_id and enc.input_ids[-1] == tok.sep_token_id
    assert enc.input_ids.count(tok.sep_token_id) == 2
    assert tok.decode(enc.input_ids[enc.loss_mask.index(1):], skip_special_tokens=True) == \
        "was lovely."
    assert rm.model.classifier.bias.abs().sum().item() == 0.0
    rm.model.eval()
    scores = rm.raw_scores_of([rm.encode(PROMPT, r) for r in REPLIES])
    alone = rm.raw_scores_of([rm.encode(PROMPT, REPLIES[1])])
    assert scores[1].item() == pytest.approx(alone.item(), abs=1e-5)
    with pytest.raises(Exception, match="policy"):
        RewardModel.build(str(tiny_bert_dir), backbone="policy")


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_last"])
def test_encoder_pooling_reads_the_token_states_it_names(tiny_bert_dir, tmp_path, pooling):
    rm = RewardModel.build(str(tiny_bert_dir), max_length=64, pooling=pooling)
    assert rm.pooling == pooling
    rm.model.eval()
    encoded = [rm.encode(PROMPT, r) for r in REPLIES]
    # By hand, row by row: the head on the closing [SEP]'s last hidden state, on the mean of
    # every real token's, or on their sum.
    by_hand = []
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            hidden = rm.model.bert(input_ids=ids, token_type_ids=torch.tensor([e.loss_mask])
                                   ).last_hidden_state[0]
            assert e.input_ids[-1] == rm.tokenizer.sep_token_id
            pooled = {"last": hidden[-1], "mean": hidden.mean(0),
                      "mean_last": hidden.mean(0) + hidden[-1]}[pooling]
            by_hand.append(rm.model.classifier(pooled)[0].item())
    # Batched with padding: the padding is neither read as the last token nor averaged.
    assert rm.raw_scores_of(encoded).tolist() == pytest.approx(by_hand, abs=1e-5)
    # The choice is saved with the model and read back.
    rm.save(tmp_path / "rm")
    assert RewardModel.from_pretrained(tmp_path / "rm").pooling == pooling


def test_encoder_pooling_defaults_and_token(tiny_bert_dir):
    assert RewardModel.build(str(tiny_bert_dir), max_length=64).pooling == "mean_last"  # auto
    assert RewardModel.build("tiny").pooling == "last"
    # token: the model's own head on [CLS], what plain transformers computes.
    token = RewardModel.build(str(tiny_bert_dir), max_length=64, pooling="token")
    token.model.eval()
    encoded = [token.encode(PROMPT, r) for r in REPLIES]
    with torch.no_grad():
        plain = [token.model(input_ids=torch.tensor([e.input_ids]),
                             token_type_ids=torch.tensor([e.loss_mask])).logits[0, 0].item()
                 for e in encoded]
    assert token.raw_scores_of(encoded).tolist() == pytest.approx(plain, abs=1e-5)
    for encoder_only in ("mean", "mean_last"):
        with pytest.raises(Exception, match="encoder"):
            RewardModel.build("tiny", pooling=encoder_only)


def _prefs(tmp_path, rows, **kw):
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = DataConfig(train=str(path), eval_fraction=0.0, **kw)
    return load_preference_data(cfg, load_tokenizer("tiny"), seed=0)


def test_pairs_and_rankings_load_as_one_shape(tmp_path):
    data = _prefs(tmp_path, [
        {"prompt": "p", "chosen": " good", "rejected": " bad"},
        {"prompt": "p", "responses": [" a", " b", " c"], "ranks": [1, 0, 1]},
        {"prompt": "p", "responses": [" a", " b"], "ranks": [0, 0]},  # all ties: no pairs
    ])
    assert len(data.train) == 2 and data.stats["train"].no_pairs == 1
    assert data.train[0].ranks == [0, 1]
    assert data.train[1].source.pairs() == [(1, 0), (1, 2)]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": [" a", " b", " c"], "ranks": [0, 1]}, "2 ranks for 3 responses"),
    ({"prompt": "p", "responses": [" a"], "ranks": [0]}, "at least 2 responses"),
    ({"prompt": "p", "chosen": " same", "rejected": " same"}, "the same text"),
    ({"prompt": "p", "chosen": " a"}, "no 'rejected'"),
    ({"prompt": "p", "responses": [" a", " b"], "ranks": ["x", 1]}, "list of integers"),
    ({"prompt": "p", "responses": [" a", 7], "ranks": [0, 1]}, "must be a string"),
])
def test_bad_preference_rows_name_file_and_line(tmp_path, row, message):
    good = {"prompt": "p", "chosen": " good", "rejected": " bad"}
    with pytest.raises(DataError) as info:
        _prefs(tmp_path, [good, row])
    assert "prefs.jsonl:2: " in str(info.value) and message in str(info.value)


def test_an_empty_sample_can_be_ranked_where_allowed(tmp_path):
    # A policy may end its response at once, and a labeler still ranks that (usually last);
    # but an empty text is more often a broken export, so it takes data.allow_empty_responses.
    rows = [{"prompt": "p", "responses": [" a fine film", ""], "ranks": [0, 1]}]
    with pytest.raises(DataError, match=r"prefs.jsonl:1: 'responses\[1\]' is empty or only "
                                        r"whitespace \(set data.allow_empty_responses=true"):
        _prefs(tmp_path, rows)
    data = _prefs(tmp_path, rows, allow_empty_responses=True)
    empty = data.train[0].responses[1]
    assert sum(empty.loss_mask) == 1  # the EOS alone: the model is scored on ending there
