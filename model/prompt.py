"""The prompt: a fixed instruction with worked examples first, then the article, then the answer cue.

The fixed part comes first and is byte-identical for every article, so backends that keep a prefix cache
(llama.cpp reuses the longest common token prefix with the previous prompt) evaluate it once. Inference and
LoRA training both build their text here (`Prompt.segments`, `format_training_example`), so they can't drift.

Two renderings of the same conversation: a model whose GGUF/tokenizer carries a chat template gets it (the
examples become earlier user/assistant turns); a model without one (the embedded Gemma 3 270M base) gets the
plain completion format:

    <instruction>

    Article:
    <example article>
    JSON:
    <example answer>

    Article:
    <the article>
    JSON:
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model.schema import EntityMention, serialize_mentions

PROMPT_VERSION = "1"
# A fine-tuned adapter learned the task: it gets the instruction alone, no worked examples. That keeps every
# training example short (training cost on a CPU grows with tokens) and inference with an adapter fast.
TUNED_PROMPT_VERSION = "1-tuned"

INSTRUCTION = """\
List the companies, products, people and institutions named in a financial news article, with the sentiment \
the article expresses toward each, as a JSON list.
polarity: "+" positive, "-" negative, "0" neutral, "~" depends on the reader.
category: Legal, Business, Performance, Recruitment, NewsRelease or Bankruptcy."""


def _m(entity: str, polarity: str, category: str) -> EntityMention:
    return EntityMention(entity=entity, polarity=polarity, category=category)


EXAMPLES: tuple[tuple[str, tuple[EntityMention, ...]], ...] = (
    (
        "Apple launched its first generative AI features across iPhone and Mac, positioning Apple Intelligence "
        "as a privacy-first alternative to ChatGPT.",
        (
            _m("Apple", "+", "NewsRelease"),
            _m("Apple Intelligence", "+", "NewsRelease"),
            _m("ChatGPT", "-", "NewsRelease"),
        ),
    ),
    (
        "Boeing shares fell 8% after the FAA grounded 737 MAX 9 jets following a cabin panel blowout on an "
        "Alaska Airlines flight.",
        (_m("Boeing", "-", "Legal"), _m("FAA", "0", "Legal"), _m("Alaska Airlines", "-", "Business")),
    ),
    (
        "Nvidia reported record quarterly revenue of $35.1 billion, beating estimates, while AMD named a new "
        "chief financial officer.",
        (_m("Nvidia", "+", "Performance"), _m("AMD", "0", "Recruitment")),
    ),
    (
        "WeWork filed for Chapter 11 bankruptcy protection; landlords such as Vornado may have to renegotiate leases.",
        (_m("WeWork", "-", "Bankruptcy"), _m("Vornado", "~", "Bankruptcy")),
    ),
)

ARTICLE_LABEL = "Article:\n"
ANSWER_LABEL = "JSON:\n"
# Stands for the article while a chat template renders the frame around it; it can't occur in a template.
_SLOT = "\x00ARTICLE\x00"


@dataclass(frozen=True)
class ChatTemplate:
    """A model's Jinja chat template (GGUF `tokenizer.chat_template`) and the EOS text its turns may end with.

    The BOS token is left to the tokenizer, so templates render with an empty `bos_token`."""

    source: str
    eos_token: str = ""


@dataclass(frozen=True)
class Prompt:
    document: str  # the article as the model sees it: headline, summary, body, cut to the token budget
    truncated: bool
    tuned: bool = False  # the short prompt of a fine-tuned adapter, without worked examples

    @property
    def version(self) -> str:
        return TUNED_PROMPT_VERSION if self.tuned else PROMPT_VERSION

    def messages(self) -> list[dict[str, str]]:
        """The conversation, for servers that apply their own chat template."""
        return _conversation(self.document, self.tuned)

    def segments(self, template: ChatTemplate | None) -> tuple[str, str, str]:
        """(head, document, tail). The head is identical for every article; backends tokenize the document
        apart from head and tail, with special tokens off, so article text can never pose as a control token."""
        head, tail = _frame(template, self.tuned)
        return head, self.document, tail

    def text(self, template: ChatTemplate | None) -> str:
        return "".join(self.segments(template))


def build_prompt(
    text: str,
    *,
    title: str | None = None,
    summary: str | None = None,
    tokenizer_count: Callable[[str], int],
    max_tokens: int = 384,
    tuned: bool = False,
) -> Prompt:
    """The prompt for one article. Past `max_tokens` (counted with the model's tokenizer) the document keeps
    its start: headline, then summary, then lead paragraphs, cut at a word boundary."""
    document = _document(text, title, summary)
    if not document:
        raise ValueError("nothing to analyze: the text, title and summary are all empty")
    if tokenizer_count(document) <= max_tokens:
        return Prompt(document, truncated=False, tuned=tuned)
    return Prompt(_cut(document, tokenizer_count, max_tokens), truncated=True, tuned=tuned)


def format_training_example(
    text: str,
    mentions: list[EntityMention],
    *,
    title: str | None = None,
    summary: str | None = None,
    tokenizer_count: Callable[[str], int],
    max_tokens: int = 384,
    template: ChatTemplate | None = None,
) -> tuple[str, str]:
    """(prompt, completion) for LoRA training, exactly as inference with an adapter builds them (the tuned
    prompt). The prompt has no BOS and the completion is the bare JSON: the trainer adds BOS and the model's
    end-of-sequence token."""
    prompt = build_prompt(
        text, title=title, summary=summary, tokenizer_count=tokenizer_count, max_tokens=max_tokens, tuned=True
    )
    return prompt.text(template), serialize_mentions(mentions)


def _document(text: str, title: str | None, summary: str | None) -> str:
    body = _clean(text)
    # Extracted articles often repeat the headline (and feed summaries the lead) at the start of the body,
    # and a feed's summary may just repeat the title: each text goes in once.
    heads = [part for part in (_clean(title or ""), _clean(summary or "")) if part and not body.startswith(part)]
    return "\n".join(dict.fromkeys(part for part in [*heads, body] if part))


def _clean(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _cut(document: str, tokenizer_count: Callable[[str], int], max_tokens: int) -> str:
    words = re.findall(r"\S+\s*", document)[: max_tokens * 2]  # a word is rarely less than half a token
    low, high = 0, len(words)  # invariant: the first `low` words fit
    while low < high:
        middle = (low + high + 1) // 2
        if tokenizer_count("".join(words[:middle]).rstrip()) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return "".join(words[:low]).rstrip()


def _conversation(document: str, tuned: bool) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for article, mentions in () if tuned else EXAMPLES:
        messages.append({"role": "user", "content": ARTICLE_LABEL + article})
        messages.append({"role": "assistant", "content": serialize_mentions(list(mentions))})
    messages.append({"role": "user", "content": ARTICLE_LABEL + document})
    messages[0]["content"] = f"{INSTRUCTION}\n\n{messages[0]['content']}"
    return messages


@functools.lru_cache(maxsize=8)
def _frame(template: ChatTemplate | None, tuned: bool) -> tuple[str, str]:
    messages = _conversation(_SLOT, tuned)
    rendered = _render_plain(messages) if template is None else _render_chat(template, messages)
    if rendered.count(_SLOT) != 1:
        raise ValueError("the chat template does not render the last user message exactly once")
    head, tail = rendered.split(_SLOT)
    return head, tail


def _render_plain(messages: list[dict[str, str]]) -> str:
    return "".join(
        f"{m['content']}\n{ANSWER_LABEL}" if m["role"] == "user" else f"{m['content']}\n\n" for m in messages
    )


def _render_chat(template: ChatTemplate, messages: list[dict[str, str]]) -> str:
    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template.source).render(
            messages=messages, add_generation_prompt=True, bos_token="", eos_token=template.eos_token
        )
    except TemplateError as exc:
        raise ValueError(f"the model's chat template cannot render the prompt: {exc}") from exc
