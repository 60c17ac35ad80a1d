"""Chat messages (``[{"role": ..., "content": ...}, ...]``) rendered into prompt text.

A conversation is rendered with the tokenizer's own chat template when it has one
(``apply_chat_template(..., add_generation_prompt=True)``), so an instruction-tuned model sees the
format it was trained on. Without a template (base models, the toy task) the plain template is::

    System: <content>

    User: <content>

    Assistant: <content>

    User: <content>

    Assistant:

one block per message, blocks separated by a blank line, ending with ``Assistant:`` for the reply
(the response then follows after a space, as every response does: :data:`rlhf_lab.data.RESPONSE_SEPARATOR`).
"""

from __future__ import annotations

from typing import Optional

ROLES = ("system", "user", "assistant", "tool")
PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def check_messages(messages, what: str = "messages") -> list[dict]:
    """The messages as plain dicts; ``ValueError`` naming the first one that is not ``{role, content}``."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{what}' must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("role") not in ROLES:
            raise ValueError(f"'{what}'[{i}] must be {{\"role\": one of {list(ROLES)}, \"content\": text}}, got {message!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_prompt(messages: list[dict], tokenizer=None) -> str:
    """The conversation so far as prompt text, ready for the assistant's reply."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [f"{PLAIN_ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in messages]
    return "\n\n".join(blocks + ["Assistant:"])


def split_reply(messages: list[dict], what: str = "messages") -> tuple[list[dict], Optional[str]]:
    """(conversation before the last message, its text) when the last message is the assistant's,
    else (all messages, None)."""
    messages = check_messages(messages, what)
    if messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"].strip()
    return messages, None


def load_chat_tokenizer(name_or_path: Optional[str], key: str):
    """The tokenizer whose chat template renders messages (None: the plain template)."""
    if not name_or_path:
        return None
    from rlhf_lab.models.loading import load_tokenizer

    return load_tokenizer(name_or_path, key)
