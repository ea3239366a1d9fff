"""A tiny random Llama (~1.2M parameters) and a tokenizer trained in-process, for tests.

Nothing is downloaded: the byte-level BPE tokenizer is trained on a short built-in text in a
few milliseconds (deterministically), and carries a ChatML chat template like SmolLM2's so
chat-template code paths are exercised by fast tests.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY = "tiny"
VOCAB_SIZE = 512
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, bos, eos (as in SmolLM2)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The film opens slowly, but the acting is warm and the score is lovely. I loved the ending.
The plot was dull and the pacing felt endless; the dialogue was wooden and the jokes fell flat.
A quiet, thoughtful drama with a great cast. The director knows exactly what she is doing.
This movie is a mess: bad writing, poor editing, and a story that goes nowhere at all.
Continue this movie review: the characters were likeable, the camera work was beautiful.
Honestly, it was fine. Not great, not terrible, just an ordinary evening at the cinema.
The special effects were impressive, yet the second half dragged and the villain was weak.
What a wonderful surprise! Funny, moving, and smart from the first scene to the last.
"""


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # any text stays encodable
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        pad_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token=None, model_max_length=2048)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng():  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config._name_or_path = TINY
    return model
