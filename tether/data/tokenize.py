"""Turn (prompt messages, response text) into token ids and a response-only loss mask.

The prompt is rendered with the tokenizer's chat template and its generation prompt (or as
plain text), and the response is encoded on its own followed by EOS: exactly the tokens a
policy produces when it generates after that prompt and stops. So the loss mask covers the
response and its EOS, and nothing of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def wants_chat_template(tokenizer: PreTrainedTokenizerBase, setting: str) -> bool:
    if setting == "always":
        if not tokenizer.chat_template:
            raise ConfigError("data.chat_template=always, but the tokenizer has no chat "
                              "template (use auto or never)")
        return True
    return setting == "auto" and bool(tokenizer.chat_template)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages,
                  chat_template: bool) -> list[int]:
    if chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids
    # Plain text: the turns joined, with the tokenizer's own BOS handling.
    return tokenizer("\n\n".join(m["content"] for m in messages)).input_ids


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def encode_example(tokenizer: PreTrainedTokenizerBase, messages: Messages, response: str, *,
                   chat_template: bool, max_length: int, truncation: str) -> Encoded | None:
    """None when the example is too long and `truncation` is 'drop'."""
    prompt = encode_prompt(tokenizer, messages, chat_template)
    reply = encode_response(tokenizer, response)
    truncated = len(prompt) + len(reply) > max_length
    if truncated:
        if truncation == "drop":
            return None
        # prompt_left: the response matters most, but keep enough prompt to condition on.
        keep_prompt = max(min(len(prompt), max_length // 4), max_length - len(reply))
        prompt = prompt[len(prompt) - keep_prompt:]
        reply = reply[: max_length - len(prompt)]
    return Encoded(prompt + reply, [0] * len(prompt) + [1] * len(reply), truncated)
