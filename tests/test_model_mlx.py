"""The mlx backend with a stand-in `mlx_lm` module (MLX runs on Apple Silicon only); prompt building, parsing and
probability capture around it are the real code."""

import math
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest

from model.analyzer import Analyzer
from model.backends.base import BackendError, load_backend
from model.prompt import INSTRUCTION
from model.settings import ModelSettings

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ANSWER = ['[{"entity": "', "Boeing", '", "polarity": "', "-", '", "category": "', "Legal", '"}]']
FIRST_TEXT_ID = 258  # after <bos>, <eos> and the unused specials
AT_VALUE = {3: [("-", -0.1), ('-"', -3.0), ("+", -2.5), ("0", -4.0)]}


class FakeTokenizer:
    """Longest-match tokenizer that grows its vocabulary as it meets new text; padded like a real vocabulary."""

    eos_token = "<eos>"
    chat_template = CHATML

    def __init__(self) -> None:
        alternatives = sorted({piece for step in AT_VALUE.values() for piece, _ in step})
        self.vocab = ["<bos>", "<eos>", *(f"<unused{i}>" for i in range(FIRST_TEXT_ID - 2)), *alternatives, *ANSWER]
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}

    def id(self, piece: str) -> int:
        if piece not in self.ids:
            self.ids[piece] = len(self.vocab)
            self.vocab.append(piece)
        return self.ids[piece]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [0] if add_special_tokens else []
        while text:
            piece = max((p for p in self.vocab[FIRST_TEXT_ID:] if text.startswith(p)), key=len, default=text[0])
            ids.append(self.id(piece))
            text = text[len(piece) :]
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i >= FIRST_TEXT_ID)


@dataclass
class Response:  # the fields of mlx_lm.generate.GenerationResponse the backend reads
    text: str
    token: int
    logprobs: np.ndarray
    finish_reason: str | None = None


class FakeMlxLm(types.ModuleType):
    """Stands in for `mlx_lm`: `load` and `stream_generate` with mlx-lm's semantics, replaying `ANSWER`."""

    def __init__(self, answer: list[str] = ANSWER) -> None:
        super().__init__("mlx_lm")
        self.answer = answer
        self.loads: list[tuple[str, str | None]] = []
        self.prompts: list[list[int]] = []
        self.tokenizer = FakeTokenizer()

    def load(self, path_or_hf_repo: str, adapter_path: str | None = None):
        if path_or_hf_repo == "mlx-community/missing":
            raise FileNotFoundError("No safetensors found in mlx-community/missing")
        self.loads.append((path_or_hf_repo, adapter_path))
        return object(), self.tokenizer

    def stream_generate(self, model, tokenizer, prompt, max_tokens=256):
        self.prompts.append(list(prompt))
        for n, piece in enumerate(self.answer):
            scores = np.full(len(tokenizer.vocab), -30.0, dtype=np.float32)
            for alternative, logprob in AT_VALUE.get(n, [(piece, -0.05)]):
                scores[tokenizer.id(alternative)] = logprob
            token = tokenizer.id(piece)
            if n + 1 == max_tokens:  # mlx-lm: the last token comes with the final response
                yield Response(piece, token, scores, "length")
                return
            yield Response(piece, token, scores)
        yield Response("", 1, scores, "stop")


@pytest.fixture
def fake_mlx(monkeypatch) -> FakeMlxLm:
    fake = FakeMlxLm()
    monkeypatch.setitem(sys.modules, "mlx_lm", fake)
    return fake


def settings(**overrides) -> ModelSettings:
    return ModelSettings(backend="mlx", model="mlx-community/gemma-3-270m-it-4bit", **overrides)


def test_analysis_through_mlx_uses_its_chat_template_and_logprobs(fake_mlx):
    analyzer = Analyzer(load_backend(settings()))
    result = analyzer.analyze("The FAA grounded Boeing 737 MAX 9 jets.", title="FAA grounds jets")
    assert result.ok and result.model == "mlx-community/gemma-3-270m-it-4bit"
    [boeing] = result.entities
    assert (boeing.entity, boeing.polarity, boeing.category) == ("Boeing", "-", "Legal")
    total = math.exp(-0.1) + math.exp(-3.0) + math.exp(-2.5) + math.exp(-4.0)
    assert boeing.confidence == pytest.approx((math.exp(-0.1) + math.exp(-3.0)) / total)
    assert boeing.score == pytest.approx((math.exp(-2.5) - math.exp(-0.1) - math.exp(-3.0)) / total)

    [prompt] = fake_mlx.prompts
    text = fake_mlx.tokenizer.decode(prompt)
    assert prompt[0] == 0 and prompt.count(0) == 1  # BOS from the tokenizer, once
    assert text.startswith("<|im_start|>user\n" + INSTRUCTION)
    article = "Article:\nFAA grounds jets\nThe FAA grounded Boeing 737 MAX 9 jets."
    assert text.endswith(article + "<|im_end|>\n<|im_start|>assistant\n")


def test_output_cut_by_the_token_limit_fails_validation_twice(fake_mlx):
    analyzer = Analyzer.from_settings(settings(max_output_tokens=16))
    assert analyzer.analyze("Boeing news.").ok  # the answer fits in 16 tokens
    fake_mlx.answer = ANSWER * 3  # a model that does not stop
    result = analyzer.analyze("Boeing news.")
    assert not result.ok and result.attempts == 2
    assert result.raw_output == "".join((ANSWER * 3)[:16])
    assert result.error.startswith("output cut off at model.max_output_tokens = 16 (not valid JSON")


def test_adapter_swap_reloads_and_a_bad_one_keeps_the_current(fake_mlx, tmp_path):
    backend = load_backend(settings())
    backend.set_adapter(str(tmp_path))
    assert backend.adapter == str(tmp_path)
    assert fake_mlx.loads[-1] == ("mlx-community/gemma-3-270m-it-4bit", str(tmp_path))
    with pytest.raises(BackendError, match="adapter directory .*missing does not exist"):
        backend.set_adapter(str(tmp_path / "missing"))
    assert backend.adapter == str(tmp_path)


def test_unloadable_model_is_a_clear_error(fake_mlx):
    with pytest.raises(BackendError, match="mlx-lm cannot load mlx-community/missing: No safetensors"):
        load_backend(ModelSettings(backend="mlx", model="mlx-community/missing"))


def test_missing_mlx_lm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # what an import on Linux amounts to
    with pytest.raises(BackendError, match="runs on Apple Silicon only"):
        load_backend(settings())
