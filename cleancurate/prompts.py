"""Prompt construction with corpus text kept as quoted data.

Corpus text is untrusted. It only ever appears between ``<query>``/``</query>`` and
``<response>``/``</response>`` delimiters, after any delimiter look-alike inside it
has been neutralised, and never inside the instruction itself.
"""

from __future__ import annotations

import re

TAGS = ("query", "response")
# "<query>", "</ response >", "&lt;query&gt;", "[response]" and the like
_LOOKALIKE = re.compile(r"(<|&lt;|\[)\s*/?\s*(query|response)\s*(>|&gt;|\])", re.IGNORECASE)
_CHAT_MARKERS = re.compile(r"<\|[^|<>]{1,40}\|>")


def has_delimiter_lookalike(text: str) -> bool:
    """True when text contains something that could pass for a prompt delimiter or chat marker."""
    return bool(_LOOKALIKE.search(text) or _CHAT_MARKERS.search(text))


def neutralize(text: str) -> str:
    """Defuse delimiter look-alikes and chat-template markers inside corpus text.

    ``<query>`` becomes ``‹query›`` and ``<|im_start|>`` becomes ``‹|im_start|›``, so the
    model sees the words but no structure that could close the quoted block.
    """
    text = _LOOKALIKE.sub(lambda m: f"‹{'/' if '/' in m.group(0) else ''}{m.group(2).lower()}›", text)
    return _CHAT_MARKERS.sub(lambda m: "‹" + m.group(0)[1:-1] + "›", text)


def user_message(instruction: str, query: str, response: str) -> str:
    """The revision request: instruction first, then the quoted corpus text."""
    return (
        f"{instruction}\n\n<query>\n{neutralize(query)}\n</query>\n\n"
        f"<response>\n{neutralize(response)}\n</response>"
    )


def chat_messages(user: str, system: str | None = None) -> list[dict]:
    """A single-turn chat as messages: the system prompt if any, then the user's."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """Render a single-turn chat with the model's own template, ready for generation."""
    messages = chat_messages(user, system)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = f"{system}\n\n" if system else ""
    return f"{head}{user}\n\nRevised response:\n"


def scoring_context(tokenizer, query: str) -> str:
    """The text a response is conditioned on when its perplexity is measured."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
        )
    return f"{query}\n"


def background_query(background: str, query: str) -> str:
    """A user turn that gives ``background`` text before the query (for the retention score).

    The background is corpus-derived, so delimiter look-alikes in it are neutralised.
    """
    return f"Background: {neutralize(background.strip())}\n\n{query}"
