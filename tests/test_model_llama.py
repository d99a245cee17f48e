"""The default backend with the real embedded model (Gemma 3 270M GGUF via llama.cpp), loaded once per session."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from model.analyzer import Analyzer
from model.backends.base import BackendError, load_backend
from model.backends.llama_cpp import LlamaCppBackend
from model.backends.llama_decoder import StepDecoder
from model.prompt import PROMPT_VERSION, build_prompt
from model.schema import CATEGORIES, POLARITIES
from model.settings import ModelSettings

HEADLINES = [
    "Tesla shares slump after quarterly deliveries miss expectations",
    "Microsoft completes $68.7 billion acquisition of Activision Blizzard",
    "FTC sues Amazon, alleging it illegally maintains monopoly power",
    "Nvidia hires former Intel executive to lead data center sales",
]
PARAGRAPHS = [
    "Apple reported fiscal fourth-quarter revenue of $94.9 billion, up 6% from a year earlier, as iPhone sales "
    "rose and services revenue reached an all-time high.",
    "Chief executive Tim Cook said demand for the iPhone 16 lineup was strong in most regions, though sales in "
    "Greater China slipped for a second straight quarter.",
    "The company took a one-time charge of $10.2 billion related to a European Commission state aid decision, "
    "which weighed on net income.",
    "Shares fell about 1% in extended trading after the company guided to low-to-mid single digit revenue growth "
    "for the December quarter.",
]


# One thread: on a busy two-core machine two llama.cpp threads wait on each other at every step, and spin while
# they do unless llama_cpp was first imported after `model` (see model/__init__.py), which a test run can't promise.
THREADS = 1


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> LlamaCppBackend:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SENTIMON_CACHE", str(tmp_path_factory.mktemp("models")))  # assembles the embedded GGUF
        return load_backend(ModelSettings(threads=THREADS))


@pytest.fixture(scope="session")
def analyzer(backend) -> Analyzer:
    return Analyzer(backend, link=lambda entity, hints: "TSLA" if entity.startswith("Tesla") else None)


@pytest.fixture(scope="session")
def results(analyzer):
    return [analyzer.analyze(headline, ticker_hints=("TSLA",)) for headline in HEADLINES]


def test_embedded_model_uses_the_plain_completion_format(backend):
    assert backend.model_id == "embedded:gemma-3-270m-q4_k_m"
    assert backend.chat_template is None  # the base model's GGUF carries no chat template


def test_real_headlines_give_schema_valid_output_first_time(results):
    for result in results:
        assert result.ok and result.attempts == 1, (result.error, result.raw_output)
        assert isinstance(json.loads(result.raw_output), list) and result.entities
        assert result.prompt_version == PROMPT_VERSION and result.completion_tokens > 0
        for entity in result.entities:
            assert entity.polarity in POLARITIES and entity.category in CATEGORIES and entity.entity
    tesla = results[0].entities[0]
    assert tesla.entity.startswith("Tesla") and tesla.ticker == "TSLA"


def test_scores_are_token_probabilities_consistent_with_the_polarity(results):
    entities = [entity for result in results for entity in result.entities]
    for entity in entities:
        assert -1.0 <= entity.score <= 1.0
        # llama_cpp emits the most probable value: its probability is at least a quarter, and at least that
        # of the opposite sign.
        assert 0.25 <= entity.confidence <= 1.0
        if entity.polarity == "+":
            assert entity.score >= 0
        if entity.polarity == "-":
            assert entity.score <= 0
    assert len({round(entity.confidence, 4) for entity in entities}) > 2  # measured, not constants


def test_same_article_gives_identical_output_whatever_came_before(analyzer, results):
    again = analyzer.analyze(HEADLINES[0], ticker_hints=("TSLA",))  # the cache last held HEADLINES[-1]
    assert again.raw_output == results[0].raw_output
    assert again.entities == results[0].entities  # probabilities included, to the last bit


def test_instructions_and_examples_stay_in_the_kv_cache(backend):
    generation = backend.generate(build_prompt(HEADLINES[1], tokenizer_count=backend.count_tokens))
    assert backend.head_tokens > 300
    # llama.cpp's own count of prompt tokens decoded: only the article and the answer cue.
    assert generation.prompt_tokens_evaluated == generation.prompt_tokens - backend.head_tokens
    assert generation.prompt_tokens_evaluated < 40


def test_long_article_is_cut_to_the_token_budget(analyzer, backend):
    body = "\n\n".join(PARAGRAPHS * 12)
    prompt = build_prompt(body, title="Apple beats estimates", tokenizer_count=backend.count_tokens, max_tokens=384)
    assert prompt.truncated and prompt.document.startswith("Apple beats estimates\nApple reported")
    assert 360 <= backend.count_tokens(prompt.document) <= 384
    result = analyzer.analyze(body, title="Apple beats estimates")
    assert result.ok, result.error
    assert result.prompt_tokens - backend.head_tokens <= 384 + backend.count_tokens("\nJSON:\n")


def write_lora(path: Path) -> Path:
    """A small random rank-4 LoRA GGUF for the embedded model, on the first layer's attention query projection
    (640 inputs -> 4 heads x 256)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 4.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", rng.standard_normal((4, 640)).astype(np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", (0.01 * rng.standard_normal((1024, 4))).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_adapter_hot_swap(analyzer, backend, results, tmp_path):
    def same_as_base(result) -> bool:
        return (result.raw_output, result.entities) == (results[3].raw_output, results[3].entities)

    adapter = str(write_lora(tmp_path / "small.gguf"))
    try:
        backend.set_adapter(adapter)
        tuned = analyzer.analyze(HEADLINES[3])
        assert tuned.ok and tuned.adapter == adapter and not same_as_base(tuned)
    finally:
        backend.set_adapter(None)
    assert backend.adapter is None and same_as_base(analyzer.analyze(HEADLINES[3]))


def test_bad_adapter_is_refused_and_the_current_model_kept(analyzer, backend, results, tmp_path):
    with pytest.raises(BackendError, match="LoRA adapter .*missing.gguf does not exist"):
        backend.set_adapter(str(tmp_path / "missing.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(BackendError, match="cannot load LoRA adapter .*junk.gguf: is it a GGUF LoRA made for"):
        backend.set_adapter(str(tmp_path / "junk.gguf"))
    assert backend.adapter is None
    again = analyzer.analyze(HEADLINES[3])
    assert (again.raw_output, again.entities) == (results[3].raw_output, results[3].entities)


def test_without_grammar_a_cut_answer_fails_validation_twice(backend):
    settings = ModelSettings(model=str(backend.model_path), threads=THREADS, grammar=False, max_output_tokens=16)
    result = Analyzer.from_settings(settings).analyze(HEADLINES[0])
    assert not result.ok and result.attempts == 2 and result.entities == []
    assert result.completion_tokens == 32 and result.raw_output.startswith("[")
    assert result.error.startswith("output cut off at model.max_output_tokens = 16 (not valid JSON")


def test_a_failing_decoding_step_stops_generation_and_is_kept():
    def broken_piece(token: int) -> str:
        raise KeyError(token)

    decoder = StepDecoder(broken_piece, gate=None, stop_token=1)
    forced = decoder(np.array([], dtype=np.intc), np.array([0.1, 0.2, 3.0, 0.4], dtype=np.float32))
    assert forced.tolist() == [-np.inf, 0.0, -np.inf, -np.inf]  # only the stop token remains
    assert isinstance(decoder.failure, KeyError)


def test_context_too_small_for_the_budgets_is_a_startup_error(backend):
    settings = ModelSettings(
        model=str(backend.model_path), context_tokens=700, max_input_tokens=300, max_output_tokens=200
    )
    with pytest.raises(BackendError, match="context_tokens = 700 is too small: instructions and examples take"):
        LlamaCppBackend(settings)
