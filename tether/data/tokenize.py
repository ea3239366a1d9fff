"""Turn (prompt messages, response text) into token ids and a response-only loss mask.

The prompt is rendered with the tokenizer's chat template and its generation prompt (or as
plain text), and the response is encoded on its own followed by EOS: exactly the tokens a
policy produces when it generates after that prompt and stops. So the loss mask covers the
response and its EOS, and nothing of the prompt.

A row may be megabytes long (a pasted log, a runaway sample) while an example keeps at most
max_length tokens of it, so only the part of a text that can be kept, and a little more, is
ever tokenised (`tokenize_capped`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tether.errors import ConfigError

Messages = list[dict[str, str]]


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on response tokens (EOS included), 0 on the prompt
    truncated: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return self.loss_mask.index(1) if 1 in self.loss_mask else len(self.loss_mask)


def chat_setting(tokenizer: PreTrainedTokenizerBase, setting: str) -> str:
    """auto, always or never as given. Anything else is a Jinja file (data.chat_template=
    my_template.jinja): it becomes the tokenizer's chat template, which final/ then keeps
    for every later stage, and it means always."""
    if setting in ("auto", "always", "never"):
        return setting
    path = Path(setting).expanduser()
    try:
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.chat_template: '{setting}' is neither auto, always, never nor "
                          f"a readable Jinja file ({getattr(e, 'strerror', None) or e})"
                          ) from None
    return "always"


def wants_chat_template(tokenizer: PreTrainedTokenizerBase, setting: str) -> bool:
    setting = chat_setting(tokenizer, setting)
    if setting == "always":
        if not tokenizer.chat_template:
            raise ConfigError("data.chat_template=always, but the tokenizer has no chat "
                              "template (use auto or never)")
        return True
    return setting == "auto" and bool(tokenizer.chat_template)


# Tokens read beyond the `limit` a caller keeps: the token cut in two where the text is cut is
# never among those kept, and a text that does not fit still shows more than `limit` tokens.
MARGIN = 16
CHARS_PER_TOKEN = 8  # a first guess, generous for prose; doubled until it holds


def tokenize_capped(tokenizer: PreTrainedTokenizerBase, text: str, limit: int | None,
                    from_end: bool = False, **kwargs) -> list[int]:
    """The token ids of `text`, or, where it is longer than `limit` tokens, of a stretch of its
    characters from the start (`from_end`: to the end) long enough to give limit + MARGIN
    tokens: their first (last) `limit` are the whole text's. None: the whole text.
    Tokenising a 5 MB row whole took 18 s and 1.4 GB, for at most `limit` tokens kept."""
    chars = len(text) if limit is None else CHARS_PER_TOKEN * (limit + MARGIN)
    while True:
        cut = len(text) > chars
        piece = (text[-chars:] if from_end else text[:chars]) if cut else text
        # verbose=False: transformers warns of ids longer than the model's maximum, for a
        # caller that would feed them to it whole; these are cut to `limit` first.
        ids = tokenizer(piece, verbose=False, **kwargs).input_ids
        if not cut or len(ids) >= limit + MARGIN:
            return ids
        chars *= 2  # fewer characters a token than guessed (digits, CJK, ...)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages,
                  chat_template: bool, limit: int | None = None) -> list[int]:
    """The prompt's token ids: all of them, or where there are more than `limit`, at least
    the last `limit` (the end is what a response continues: what truncation keeps)."""
    if chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return tokenize_capped(tokenizer, text, limit, from_end=True, add_special_tokens=False)
    # Plain text: the turns joined, with the tokenizer's own BOS handling.
    return tokenize_capped(tokenizer, "\n\n".join(m["content"] for m in messages), limit,
                           from_end=True)


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str,
                    limit: int | None = None, eos: bool = True) -> list[int]:
    """The response's token ids and (with `eos`) EOS; where it has more than `limit` tokens,
    only its first ones (at least `limit`, so truncation still sees that it does not fit)."""
    return tokenize_capped(tokenizer, response, limit, add_special_tokens=False) + \
        ([tokenizer.eos_token_id] if eos else [])


def encode_example(tokenizer: PreTrainedTokenizerBase, messages: Messages, response: str, *,
                   chat_template: bool, max_length: int, truncation: str,
                   eos: bool = True) -> Encoded | None:
    """None when the example is too long and `truncation` is 'drop'. `eos=False` for a
    sampled response that never ended (it reached the token limit): its likelihood is that
    of its tokens alone, not of ending there."""
    prompt = encode_prompt(tokenizer, messages, chat_template, max_length)
    reply = encode_response(tokenizer, response, max_length, eos)
    truncated = len(prompt) + len(reply) > max_length
    if truncated:
        if truncation == "drop":
            return None
        # prompt_left: the response matters most, but keep enough prompt to condition on.
        keep_prompt = max(min(len(prompt), max_length // 4), max_length - len(reply))
        prompt = prompt[len(prompt) - keep_prompt:]
        reply = reply[: max_length - len(prompt)]
    return Encoded(prompt + reply, [0] * len(prompt) + [1] * len(reply), truncated)
