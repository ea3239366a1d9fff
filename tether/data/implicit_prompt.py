"""Preference rows without a prompt: `chosen` and `rejected` are whole transcripts sharing their
first turns, as in Anthropic's HH-RLHF ("\\n\\nHuman: ... \\n\\nAssistant: ...") or TRL's
"implicit prompt" conversations. The prompt is the longest common beginning up to the last
assistant turn boundary; what follows it in each is the response.
"""

from __future__ import annotations

import os
from typing import Any

from tether.data.readers import BadRow

# Where an assistant turn begins in an HH-style transcript; the prompt ends with it.
ASSISTANT_TURN = "\n\nAssistant:"
HUMAN_TURN = "\n\nHuman:"


def has_implicit_prompt(record: Any) -> bool:
    return isinstance(record, dict) and "prompt" not in record \
        and "chosen" in record and "rejected" in record


def split_implicit_prompt(record: dict, where: str) -> dict:
    """The row with its shared prompt moved into 'prompt', and 'chosen' and 'rejected' cut
    to their responses; a bad row when the two share no prompt."""
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, responses = _split_texts(chosen, rejected, where)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, responses = _split_conversations(chosen, rejected, where)
    else:
        raise BadRow(f"{where}: no 'prompt', so 'chosen' and 'rejected' must be whole texts or "
                     f"whole conversations (both strings or both lists of messages)")
    return {**record, "prompt": prompt, "chosen": responses[0], "rejected": responses[1]}


def _split_texts(chosen: str, rejected: str, where: str) -> tuple[str, tuple[str, str]]:
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise BadRow(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no prompt: no "
                     f"'{ASSISTANT_TURN.strip()}' turn begins both the same way (give a "
                     f"'prompt' field, or whole transcripts sharing their first turns)")
    end = cut + len(ASSISTANT_TURN)
    responses = chosen[end:], rejected[end:]
    for name, response in zip(("chosen", "rejected"), responses, strict=True):
        if HUMAN_TURN in response:
            raise BadRow(f"{where}: no 'prompt', and 'chosen' and 'rejected' differ before "
                         f"their last assistant turn ('{name}' goes on to another "
                         f"'{HUMAN_TURN.strip()}' turn), so they share no prompt")
    return chosen[:end], responses


def _split_conversations(chosen: list, rejected: list, where: str
                         ) -> tuple[list, tuple[list, list]]:
    """Both end with one assistant message, after the same turns."""
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if len(conversation) < 2 or not isinstance(conversation[-1], dict) \
                or conversation[-1].get("role") != "assistant":
            raise BadRow(f"{where}: no 'prompt', so '{name}' must be a whole conversation: "
                         f"turns, then the assistant's response last")
    if chosen[:-1] != rejected[:-1]:
        raise BadRow(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no prompt: "
                     f"their turns before the last assistant message differ")
    return chosen[:-1], ([chosen[-1]], [rejected[-1]])
