"""Output schema, settings and prompt building (no model needed: token counts here are word counts)."""

import json

import pytest
from pydantic import ValidationError

from model.prompt import (
    EXAMPLES,
    INSTRUCTION,
    PROMPT_VERSION,
    ChatTemplate,
    build_prompt,
    format_training_example,
)
from model.schema import (
    MAX_MENTIONS,
    EntityMention,
    OutputValidationError,
    output_json_schema,
    parse_output,
    serialize_mentions,
)
from model.settings import ModelSettings, OpenAISettings

APPLE = (
    '[{"entity":"Apple","polarity":"+","category":"NewsRelease"},'
    '{"entity":"Apple Intelligence","polarity":"+","category":"NewsRelease"},'
    '{"entity":"ChatGPT","polarity":"-","category":"NewsRelease"}]'
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def words(text: str) -> int:
    return len(text.split())


def test_brief_example_parses():
    mentions = parse_output(APPLE)
    assert [(m.entity, m.polarity, m.category) for m in mentions] == [
        ("Apple", "+", "NewsRelease"),
        ("Apple Intelligence", "+", "NewsRelease"),
        ("ChatGPT", "-", "NewsRelease"),
    ]
    assert parse_output("  []\n") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[{"entity": "Apple", "polarity": "+", "categ', "not valid JSON"),
        ('{"entity": "Apple"}', "expected a JSON list of mentions, got a JSON dict"),
        ('[{"entity": "Apple", "polarity": "up", "category": "Legal"}]', "mention 0.polarity"),
        ('[{"entity": "Apple", "polarity": "+", "category": "Rumour"}]', "mention 0.category"),
        ('[{"entity": "", "polarity": "+", "category": "Legal"}]', "mention 0.entity"),
        ('[{"entity": "A", "polarity": "+", "category": "Legal", "score": 0.9}]', "mention 0.score: Extra inputs"),
        ('[{"entity": "A", "polarity": "+"}]', "mention 0.category: Field required"),
        (json.dumps([{"entity": "A", "polarity": "+", "category": "Legal"}] * (MAX_MENTIONS + 1)), "more than"),
    ],
)
def test_invalid_output_is_rejected_with_reason_and_raw_text(text, reason):
    with pytest.raises(OutputValidationError) as caught:
        parse_output(text)
    assert reason in caught.value.reason
    assert caught.value.raw == text


def test_json_schema_matches_the_model():
    schema = output_json_schema()
    assert schema["type"] == "array" and schema["maxItems"] == MAX_MENTIONS
    item = schema["items"]
    assert list(item["properties"]) == ["entity", "polarity", "category"]  # grammar key order
    assert item["properties"]["polarity"]["enum"] == ["+", "-", "0", "~"]
    assert item["additionalProperties"] is False and "$ref" not in json.dumps(schema)


def test_settings_reject_unknown_keys_and_impossible_combinations():
    with pytest.raises(ValidationError, match="extra"):
        ModelSettings(thread=4)
    with pytest.raises(ValidationError, match="cannot load adapter files"):
        ModelSettings(backend="openai", adapter="lora.gguf")
    with pytest.raises(ValidationError, match="leave no room"):
        ModelSettings(context_tokens=512, max_input_tokens=384, max_output_tokens=256)


def test_every_setting_is_described_for_the_commented_config():
    for model in (ModelSettings, OpenAISettings):
        assert all(field.description for field in model.model_fields.values()), model.__name__


def test_fixed_head_comes_first_and_is_identical_for_every_article():
    first = build_prompt("Tesla deliveries missed estimates.", title="Tesla slides", tokenizer_count=words)
    second = build_prompt("Nvidia beat estimates.", tokenizer_count=words)
    head, document, tail = first.segments(None)
    assert head == second.segments(None)[0]
    assert head.startswith(INSTRUCTION) and head.endswith("Article:\n")
    assert document == "Tesla slides\nTesla deliveries missed estimates."
    assert tail == "\nJSON:\n"
    assert serialize_mentions(list(EXAMPLES[0][1])) in head
    assert first.version == PROMPT_VERSION


def test_headline_repeated_at_the_start_of_the_body_is_not_doubled():
    prompt = build_prompt("Tesla slides\n\n  Deliveries   missed.", title="Tesla slides", tokenizer_count=words)
    assert prompt.document == "Tesla slides\nDeliveries missed."
    same = build_prompt("", title="Tesla slides", summary="Tesla slides", tokenizer_count=words)
    assert same.document == "Tesla slides"


def test_long_article_keeps_headline_summary_and_lead_within_budget():
    body = "\n\n".join(f"Paragraph {i} says something about the quarter." for i in range(200))
    prompt = build_prompt(body, title="Apple beats", summary="Record revenue.", tokenizer_count=words, max_tokens=30)
    assert prompt.truncated
    assert words(prompt.document) == 30  # as much as fits: whole words up to the budget
    assert prompt.document.startswith("Apple beats\nRecord revenue.\nParagraph 0 says")


def test_short_article_is_kept_whole():
    prompt = build_prompt("Short news.", tokenizer_count=words, max_tokens=30)
    assert not prompt.truncated and prompt.document == "Short news."


def test_empty_article_is_an_error():
    with pytest.raises(ValueError, match="nothing to analyze"):
        build_prompt(" \n ", title="", tokenizer_count=words)


def test_chat_template_renders_examples_as_turns_and_the_article_last():
    template = ChatTemplate(CHATML, "<|im_end|>")
    prompt = build_prompt("Oracle <|im_end|> lost a lawsuit.", tokenizer_count=words)
    head, document, tail = prompt.segments(template)
    assert head.startswith("<|im_start|>user\n" + INSTRUCTION)
    assert head.count("<|im_start|>assistant\n") == len(EXAMPLES)
    assert document == "Oracle <|im_end|> lost a lawsuit."  # kept apart: backends tokenize it without specials
    assert tail == "<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.messages()[-1] == {"role": "user", "content": "Article:\n" + document}


def test_broken_chat_template_is_a_clear_error():
    prompt = build_prompt("News.", tokenizer_count=words)
    with pytest.raises(ValueError, match="chat template cannot render the prompt: roles must alternate"):
        prompt.segments(ChatTemplate("{{ raise_exception('roles must alternate') }}"))


def test_training_example_is_the_inference_prompt_plus_the_canonical_answer():
    mentions = [EntityMention(entity="Boeing", polarity="-", category="Legal")]
    text = "The FAA grounded Boeing jets."
    prompt, completion = format_training_example(text, mentions, tokenizer_count=words)
    assert prompt == build_prompt(text, tokenizer_count=words, tuned=True).text(None)  # what an adapter is given
    assert prompt == f"{INSTRUCTION}\n\nArticle:\nThe FAA grounded Boeing jets.\nJSON:\n"
    assert completion == '[{"entity": "Boeing", "polarity": "-", "category": "Legal"}]'
    assert parse_output(completion) == mentions
