"""The mlx backend with a stand-in `mlx_lm` module (MLX runs on Apple Silicon only); prompt building, parsing and
probability capture around it are the real code."""

import json
import logging
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from model.analyzer import Analyzer
from model.backends.base import BackendError, load_backend
from model.embedded import embedded_model_path
from model.prompt import INSTRUCTION
from model.settings import ModelSettings
from monitor.analysis import build_analyzer
from monitor.cli import app
from monitor.config import Config, TrainingSettings
from training.adapter_file import read_adapter_gguf
from training.convert import hf_base_dir
from training.hotswap import adapter_loader, adapter_watch
from training.registry import BUNDLED_ADAPTER, registry_for

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


def test_the_embedded_model_runs_from_its_conversion_on_the_registrys_adapter_in_mlx_format(fake_mlx, tmp_path):
    config = Config(model=ModelSettings(backend="mlx"), training=TrainingSettings(adapters_dir=tmp_path / "adapters"))
    analyzer = Analyzer.from_settings(config.model)
    base = str(hf_base_dir(embedded_model_path(), progress=False))  # what the LoRA trainers start from
    assert fake_mlx.loads == [(base, None)] and analyzer.backend.model_id == "mlx:embedded:gemma-3-270m-q4_k_m"

    watch = adapter_watch(config, analyzer)
    watch()  # no `current` pointer yet: the bundled default adapter, converted for mlx-lm
    copy = Path(analyzer.backend.adapter)
    assert copy.parent == tmp_path / "adapters" / "mlx" and fake_mlx.loads[-1] == (base, str(copy))
    bundled = read_adapter_gguf(BUNDLED_ADAPTER)
    rank = bundled.tensors["blk.0.attn_q.weight.lora_a"].shape[0]
    assert json.loads((copy / "adapter_config.json").read_text()) == {
        "fine_tune_type": "lora", "num_layers": 18,
        "lora_parameters": {"rank": rank, "scale": bundled.alpha / rank, "dropout": 0.0, "keys": [
            "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
            "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]},
    }  # fmt: skip
    weights = load_file(copy / "adapters.safetensors")
    assert len(weights) == len(bundled.tensors) == 18 * 7 * 2
    np.testing.assert_array_equal(  # mlx-lm's x·lora_a·lora_b is llama.cpp's B·A·x transposed
        weights["model.layers.17.mlp.down_proj.lora_b"], bundled.tensors["blk.17.ffn_down.weight.lora_b"].T
    )

    registry_for(config).rollback("base")
    watch()
    assert analyzer.backend.adapter is None and fake_mlx.loads[-1] == (base, None)
    registry_for(config).rollback("bundled")
    watch()
    assert analyzer.backend.adapter == str(copy) and len(list(copy.parent.iterdir())) == 1  # converted once
    assert adapter_loader(config)(BUNDLED_ADAPTER) == str(copy)  # what `sentimon eval --adapter bundled` loads


def test_the_daemon_loads_the_embedded_model_once_on_the_registrys_adapter(fake_mlx, tmp_path, caplog):
    """mlx-lm applies an adapter at load time: starting bare and switching would load the model twice."""
    config = Config(model=ModelSettings(backend="mlx"), training=TrainingSettings(adapters_dir=tmp_path / "adapters"))
    with caplog.at_level(logging.INFO, logger="training.hotswap"):
        analyzer = build_analyzer(config)
    base = str(hf_base_dir(embedded_model_path(), progress=False))
    copy = adapter_loader(config)(BUNDLED_ADAPTER)
    assert fake_mlx.loads == [(base, copy)] and analyzer.backend.adapter == copy
    assert f"analyzing with adapter bundled ({copy})" in caplog.text
    adapter_watch(config, analyzer)()  # the daemon's check before its first article: already on it
    assert fake_mlx.loads == [(base, copy)]


def test_eval_runs_an_mlx_adapter_folder_and_a_folder_is_refused_for_llama_cpp(fake_mlx, tmp_path):
    folder = tmp_path / "my-adapter"
    folder.mkdir()
    data = tmp_path / "one.jsonl"
    gold = [{"entity": "Boeing", "polarity": "-", "category": "Legal"}]
    data.write_text(json.dumps({"id": "b1", "text": "Boeing is sued over the door plug.", "extractions": gold}) + "\n")
    runs = {}
    for backend, model in (("mlx", "mlx-community/gemma-3-270m-it-4bit"), ("llama_cpp", "embedded")):
        config_file = tmp_path / f"{backend}.toml"
        settings_toml = f'database = "{tmp_path / "s.duckdb"}"\n[model]\nbackend = "{backend}"\nmodel = "{model}"\n'
        config_file.write_text(settings_toml)
        runs[backend] = CliRunner().invoke(app, ["eval", "--data", str(data), "--config", str(config_file),
                                                 "--adapter", str(folder), "--format", "json"])  # fmt: skip
    assert runs["mlx"].exit_code == 0, runs["mlx"].output
    report = json.loads(runs["mlx"].stdout)
    assert report["adapter"] == str(folder) and report["entity_polarity_f1"] == 1.0
    assert fake_mlx.loads == [("mlx-community/gemma-3-270m-it-4bit", str(folder))]  # loaded once, on the folder
    assert runs["llama_cpp"].exit_code != 0
    assert f"--adapter {folder}: {folder} is a folder; backend llama_cpp loads a GGUF adapter file" in " ".join(
        runs["llama_cpp"].output.split())


def test_an_mlx_model_keeps_its_own_adapter_and_cannot_be_trained_for(fake_mlx, tmp_path):
    from training.stack import untrainable_model

    config = Config(model=settings(), training=TrainingSettings(adapters_dir=tmp_path / "adapters"))
    assert adapter_watch(config, Analyzer.from_settings(config.model)) is None
    assert "training starts from a GGUF base model" in untrainable_model(config.model)
    assert untrainable_model(ModelSettings(backend="mlx", model="/models/gemma.gguf")) is None


def test_a_gguf_model_without_the_training_extras_names_them(fake_mlx, monkeypatch):
    monkeypatch.setattr("training.stack.TRAINING_PACKAGES", ("torch", "no_such_package"))
    with pytest.raises(BackendError, match=r"conversion that needs the training extras \(pip install 'sentimon\[train"):
        load_backend(ModelSettings(backend="mlx"))
