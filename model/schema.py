"""The JSON the model must produce: a list of entity mentions, each with a polarity and a news category.

Example output for "Apple launched its first generative AI features across iPhone and Mac, positioning
Apple Intelligence as a privacy-first alternative to ChatGPT.":

    [{"entity": "Apple", "polarity": "+", "category": "NewsRelease"},
     {"entity": "Apple Intelligence", "polarity": "+", "category": "NewsRelease"},
     {"entity": "ChatGPT", "polarity": "-", "category": "NewsRelease"}]

Polarity: "+" positive, "-" negative, "0" neutral, "~" depends on context (good for some readers, bad for others).
"""

from __future__ import annotations

import json
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Polarity = Literal["+", "-", "0", "~"]
Category = Literal["Legal", "Business", "Performance", "Recruitment", "NewsRelease", "Bankruptcy"]
POLARITIES: tuple[str, ...] = get_args(Polarity)
CATEGORIES: tuple[str, ...] = get_args(Category)

# Bounds that keep a small model from running away (an endless list, an entity name that never closes);
# they are part of the schema, so grammar-constrained decoding enforces them too.
MAX_MENTIONS = 12
MAX_ENTITY_CHARS = 80


class EntityMention(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: str = Field(min_length=1, max_length=MAX_ENTITY_CHARS, description="The name as written in the article.")
    polarity: Polarity
    category: Category


_MENTIONS = TypeAdapter(list[EntityMention])


class OutputValidationError(ValueError):
    """Model output that is not a valid mention list; `raw` is the text, `reason` says what is wrong."""

    def __init__(self, raw: str, reason: str) -> None:
        super().__init__(reason)
        self.raw = raw
        self.reason = reason


def parse_output(text: str) -> list[EntityMention]:
    """Parse model output (a JSON list, surrounding whitespace allowed) into mentions."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise OutputValidationError(text, reason) from None
    if not isinstance(data, list):
        raise OutputValidationError(text, f"expected a JSON list of mentions, got a JSON {type(data).__name__}")
    if len(data) > MAX_MENTIONS:
        raise OutputValidationError(text, f"{len(data)} mentions, more than the limit of {MAX_MENTIONS}")
    try:
        return _MENTIONS.validate_python(data)
    except ValidationError as exc:
        raise OutputValidationError(text, _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = "mention " + ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def output_json_schema() -> dict:
    """JSON Schema of the output, fit for grammar-constrained decoding (no $refs, fixed key order)."""
    item = EntityMention.model_json_schema()
    item.pop("title", None)
    return {"type": "array", "items": item, "maxItems": MAX_MENTIONS}


def serialize_mentions(mentions: list[EntityMention]) -> str:
    """The one canonical JSON spelling of a mention list, used in worked examples and training targets."""
    return json.dumps([m.model_dump() for m in mentions], ensure_ascii=False)
