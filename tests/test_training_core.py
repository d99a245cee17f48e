"""LoRA training core on the real embedded model: conversion, tokenization, packing, training, resume, export.

The Gemma 3 270M GGUF is converted to Hugging Face weights once (cached next to the model) and shared by
every test. Training runs are tiny (rank 4, eight headline-sized examples, a few steps) but real.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from llama_cpp import Llama
from peft import PeftModel
from safetensors.torch import load_file

from model.embedded import embedded_model_path
from model.prompt import INSTRUCTION, format_training_example
from model.schema import EntityMention, serialize_mentions
from training.adapter_file import AdapterFileError, tensor_names
from training.attention import use_packed_attention
from training.convert import ConversionError, hf_base_dir, load_base_model, load_tokenizer
from training.export import ExportError, check_export, export_gguf_adapter
from training.lora import CHECKPOINT_FILE, TrainingError, TrainSettings, completion_loss, lora_model, main, train_lora
from training.mlx_adapter import mlx_adapter_copy
from training.packing import TrainingDataError, TrainingExample, build_pack, encode, plan_batches
from training.trainers import pick_trainer
from training.vocab_loss import projected_cross_entropy

DEV_SET = Path(__file__).parents[1] / "datasets" / "dev.jsonl"
# Two steps per epoch with these examples; a high rate so that four steps visibly teach something.
TINY = TrainSettings(
    rank=4, alpha=8, learning_rate=5e-3, warmup_ratio=0, epochs=2, batch_tokens=200, nice=0, checkpoint_every=1,
    threads=1,  # tiny rows: a second thread would mostly wait at barriers on a shared machine
)


def _records(count: int, max_chars: int, max_mentions: int) -> list[dict]:
    records = [json.loads(line) for line in DEV_SET.read_text(encoding="utf-8").splitlines()]
    return [r for r in records if len(r["text"]) <= max_chars and 1 <= len(r["extractions"]) <= max_mentions][:count]


def _mentions(record: dict) -> list[EntityMention]:
    return [EntityMention(**m) for m in record["extractions"]]


@pytest.fixture(scope="session")
def base_gguf() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def hf_dir(base_gguf: Path) -> Path:
    return hf_base_dir(base_gguf, progress=False)


@pytest.fixture(scope="session")
def tokenizer(hf_dir: Path):
    return load_tokenizer(hf_dir)


@pytest.fixture(scope="session")
def llama_vocab(base_gguf: Path) -> Llama:
    return Llama(str(base_gguf), vocab_only=True, verbose=False)


@pytest.fixture(scope="session")
def short_examples() -> list[TrainingExample]:
    """Eight one-mention headlines in a short prompt; the first has its category excluded from the loss."""
    examples = []
    for record in _records(8, 100, max_mentions=1):
        completion = serialize_mentions(_mentions(record))
        examples.append(TrainingExample(f"Article:\n{record['text']}\nJSON:\n", completion))
    first = examples[0]
    category = json.loads(first.completion)[0]["category"]
    start = first.completion.index(category)
    examples[0] = TrainingExample(first.prompt, first.completion, ((start, start + len(category)),))
    return examples


@pytest.fixture(scope="session")
def prompt_examples(tokenizer) -> list[TrainingExample]:
    """Three examples in the prompt training builds (model.prompt.format_training_example: the instruction
    first, then the article)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [
        TrainingExample(*format_training_example(r["text"], _mentions(r), tokenizer_count=count))
        for r in _records(3, 200, max_mentions=3)
    ]


@pytest.fixture(scope="session")
def lora(hf_dir: Path):
    """A LoRA model with small random B matrices, so that the adapter changes the outputs."""
    torch.manual_seed(0)
    model = lora_model(load_base_model(hf_dir), TrainSettings(rank=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    return model.eval()


@pytest.fixture(scope="session")
def runs(tmp_path_factory, base_gguf: Path, short_examples: list[TrainingExample]):
    """The same 4-step run done twice: stopped after 2 steps and resumed, and straight through."""
    resumed_dir, straight_dir = tmp_path_factory.mktemp("resumed"), tmp_path_factory.mktemp("straight")
    stopped = train_lora(
        short_examples, base_gguf=base_gguf, out_dir=resumed_dir, settings=TINY.model_copy(update={"max_steps": 2}),
        progress=False,
    )  # fmt: skip
    resumed = train_lora(short_examples, base_gguf=base_gguf, out_dir=resumed_dir, settings=TINY, progress=False)
    straight = train_lora(short_examples, base_gguf=base_gguf, out_dir=straight_dir, settings=TINY, progress=False)
    return types.SimpleNamespace(stopped=stopped, resumed=resumed, straight=straight)


# -- conversion and tokenizer ---------------------------------------------------------------------------------------


def test_conversion_is_cached_by_content(hf_dir: Path, base_gguf: Path) -> None:
    assert hf_base_dir(base_gguf, progress=False) == hf_dir
    source = json.loads((hf_dir / "source.json").read_text())
    assert hf_dir.name.endswith(source["sha256"][:16])
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "gemma3_text"


def test_conversion_names_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="missing.gguf does not exist"):
        hf_base_dir(tmp_path / "missing.gguf")


def test_tokenizer_matches_llama_cpp(tokenizer, llama_vocab: Llama, prompt_examples) -> None:
    texts = [
        "Nvidia's Q3 revenue: $35.1bn (+94% y/y) beat estimates.",
        "  Société Générale ↑ 3,5 % ; 日本郵船 — emoji 🚀 and <b>tags</b>\n\n\tend",
        *(part for example in prompt_examples for part in (example.prompt, example.completion)),
    ]
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ours == llama_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False), text[:60]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (llama_vocab.token_bos(), llama_vocab.token_eos())


# -- encoding, masking, packing -------------------------------------------------------------------------------------


def test_loss_covers_the_completion_only_minus_excluded_spans(tokenizer, short_examples) -> None:
    example = short_examples[0]
    (encoded,) = encode([example], tokenizer, max_tokens=512)
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(example.completion, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded.tokens == (tokenizer.bos_token_id, *prompt_ids, *completion["input_ids"], tokenizer.eos_token_id)
    assert encoded.prompt_len == 1 + len(prompt_ids)

    (start, end), = example.exclude_spans  # fmt: skip
    excluded = [i for i, (a, b) in enumerate(completion["offset_mapping"]) if a < end and start < b]
    assert excluded and "".join(tokenizer.decode(completion["input_ids"][i]) for i in excluded).strip('"') == (
        example.completion[start:end]
    )
    pack = build_pack([encoded])
    kept = [i for i in range(len(completion["input_ids"])) if i not in excluded]
    # Every prediction is made from a position at or after the prompt's last token; prompt tokens are never targets.
    assert pack.predict_at.tolist() == [encoded.prompt_len - 1 + i for i in kept] + [len(encoded.tokens) - 2]
    assert pack.targets.tolist() == [completion["input_ids"][i] for i in kept] + [tokenizer.eos_token_id]
    assert pack.weights.tolist() == [1.0] * (len(kept) + 1)


def test_label_values_weigh_label_weight_and_an_excluded_span_nothing(tokenizer, short_examples) -> None:
    example = short_examples[0]  # its category value is excluded
    (encoded,) = encode([example], tokenizer, max_tokens=512, label_weight=4.0)
    completion_ids = encoded.tokens[encoded.prompt_len :]
    by_weight: dict[float, str] = {}
    for token, weight in zip(completion_ids, encoded.loss_weights, strict=True):
        by_weight[weight] = by_weight.get(weight, "") + tokenizer.decode([token])
    (mention,) = json.loads(example.completion)
    assert by_weight[4.0].strip(' "') == mention["polarity"]
    assert by_weight[0.0].strip(' "') == mention["category"]
    assert '"entity"' in by_weight[1.0] and by_weight[1.0].endswith("<eos>")
    assert build_pack([encoded]).weights.tolist() == [w for w in encoded.loss_weights if w]


@pytest.mark.parametrize(
    ("example", "problem"),
    [
        (TrainingExample("Article:\nx\nJSON:\n", ""), "training example 1: the completion is empty"),
        (TrainingExample("", "[]"), "training example 1: the prompt is empty"),
        (TrainingExample("p", "[]", ((1, 5),)), r"exclude span \(1, 5\) is not a non-empty range inside"),
        (TrainingExample("word " * 600, "[]"), r"tokens, more than max_tokens \(512\)"),
    ],
)
def test_bad_examples_are_named(tokenizer, short_examples, example: TrainingExample, problem: str) -> None:
    with pytest.raises(TrainingDataError, match=problem):
        encode([short_examples[1], example], tokenizer, max_tokens=512)


def test_batches_respect_the_token_budget_and_share_the_prompt_prefix(tokenizer, prompt_examples) -> None:
    encoded = encode(prompt_examples * 4, tokenizer, max_tokens=2048)
    instruction_tokens = len(tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"])
    budget = 400
    batches = plan_batches(encoded, budget, seed=0, epoch=1)
    assert sorted(i for batch in batches for i in batch) == list(range(len(encoded)))
    assert 1 < len(batches) < len(encoded)
    for batch in batches:
        pack = build_pack([encoded[i] for i in batch])
        assert pack.input_ids.shape[1] <= budget
        assert pack.shared > instruction_tokens  # the instruction is in the row once
        assert pack.example_tokens == sum(len(encoded[i].tokens) for i in batch)
    assert plan_batches(encoded, budget, seed=0, epoch=1) == batches
    assert plan_batches(encoded, budget, seed=0, epoch=2) != batches


def _separate_losses(model, encoded) -> list[tuple[float, float]]:
    """(weighted summed loss, summed weights) of each example run alone through the model's ordinary forward pass."""
    results = []
    for example in encoded:
        completion = len(example.tokens) - example.prompt_len
        logits = model(input_ids=torch.tensor([example.tokens]), logits_to_keep=completion + 1).logits[0, :-1]
        targets = torch.tensor(example.tokens[example.prompt_len :])
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        weights = torch.tensor(example.loss_weights)
        results.append(((losses * weights).sum().item(), weights.sum().item()))
    return results


def test_packed_loss_equals_the_examples_run_one_by_one(lora, tokenizer, short_examples) -> None:
    """Two examples behind a shared instruction, one whose prompt repeats another's, one from another prompt,
    with a sliding window shorter than the shared prefix so that the sliding layers cut into it."""
    instructed = [TrainingExample(f"{INSTRUCTION}\n\n{e.prompt}", e.completion) for e in short_examples[1:3]]
    duplicate = TrainingExample(instructed[0].prompt, serialize_mentions([]))
    encoded = encode([*instructed, duplicate, short_examples[0]], tokenizer, max_tokens=512, label_weight=3.0)
    window = 24
    attention = [m for m in lora.modules() if getattr(m, "sliding_window", None)]
    config = lora.get_base_model().config
    original = config.sliding_window
    config.sliding_window = window
    for module in attention:
        module.sliding_window = window
    try:
        with torch.no_grad():
            separate = _separate_losses(lora, encoded)
            for size, shared in ((3, range(window + 1, 200)), (4, [1])):  # only BOS is common to all four
                pack = build_pack(encoded[:size])
                assert pack.shared in shared
                expected = sum(loss for loss, _ in separate[:size]) / sum(n for _, n in separate[:size])
                assert completion_loss(lora, pack).item() == pytest.approx(expected, abs=1e-4)
    finally:
        config.sliding_window = original
        for module in attention:
            module.sliding_window = original


@pytest.mark.parametrize(("softcap", "weighted"), [(None, False), (3.0, False), (None, True)])
def test_chunked_vocabulary_loss_matches_plain_cross_entropy(softcap: float | None, weighted: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 16, generator=generator)
    targets = torch.randint(0, 1000, (300,), generator=generator)  # more than two chunks, the last one partial
    hidden = torch.randn(300, 16, generator=generator, requires_grad=True)
    target_weights = torch.rand(300, generator=generator) * 4 + 0.5 if weighted else None
    reference_hidden = hidden.detach().clone().requires_grad_()
    logits = reference_hidden @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (losses * target_weights).sum() / target_weights.sum() if weighted else losses.mean()
    (2 * expected).backward()
    loss = projected_cross_entropy(hidden, weight, targets, softcap, target_weights)
    (2 * loss).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(hidden.grad, reference_hidden.grad, atol=1e-6)
    with pytest.raises(ValueError, match="freeze it"):
        projected_cross_entropy(hidden, weight.requires_grad_(), targets)


# -- training and resuming ------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_on_its_examples(runs, hf_dir: Path, tokenizer, short_examples) -> None:
    pack = build_pack(encode(short_examples, tokenizer, max_tokens=512))
    model = load_base_model(hf_dir)
    use_packed_attention(model)
    with torch.no_grad():
        before = completion_loss(model, pack).item()
        after = completion_loss(PeftModel.from_pretrained(model, runs.straight.adapter_dir).eval(), pack).item()
    assert runs.straight.finished and runs.straight.steps_done == 4
    assert after < 0.7 * before, (before, after)


def test_a_resumed_run_continues_where_it_stopped(runs) -> None:
    assert (runs.stopped.steps_done, runs.stopped.total_steps, runs.stopped.finished) == (2, 4, False)
    assert runs.resumed.resumed_from_step == 2 and runs.resumed.steps_done == 4
    log = [json.loads(line) for line in (runs.resumed.adapter_dir.parent / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    # Same weights, optimizer moments, schedule and dropout draws as the run that never stopped.
    assert runs.resumed.losses == pytest.approx(runs.straight.losses, abs=1e-5)
    resumed = load_file(runs.resumed.adapter_dir / "adapter_model.safetensors")
    straight = load_file(runs.straight.adapter_dir / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-5) for k in resumed)


def test_a_checkpoint_of_other_examples_is_refused(runs, base_gguf: Path, short_examples) -> None:
    out_dir = runs.resumed.adapter_dir.parent
    with pytest.raises(TrainingError, match="belongs to a different run"):
        train_lora(short_examples[:-1], base_gguf=base_gguf, out_dir=out_dir, settings=TINY, progress=False)


def test_a_damaged_checkpoint_is_named(tmp_path: Path, base_gguf: Path, short_examples) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="can't be read.*delete it"):
        train_lora(short_examples, base_gguf=base_gguf, out_dir=tmp_path, settings=TINY, progress=False)


def test_no_examples_is_an_error(tmp_path: Path, base_gguf: Path) -> None:
    with pytest.raises(TrainingError, match="no training examples"):
        train_lora([], base_gguf=base_gguf, out_dir=tmp_path, settings=TINY, progress=False)


def test_command_line_names_bad_input_files(tmp_path: Path, base_gguf: Path, capsys) -> None:
    examples = tmp_path / "train.jsonl"
    examples.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', encoding="utf-8")
    command = ["--examples", str(examples), "--base", str(base_gguf), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(command) == 1
    assert f"{examples} line 2: expected" in capsys.readouterr().err

    settings = tmp_path / "settings.json"
    settings.write_text('{"rank": 0, "learning_rate": "fast"}', encoding="utf-8")
    assert main([*command, "--settings", str(settings)]) == 1
    error = capsys.readouterr().err
    assert f"{settings}: rank: Input should be greater than or equal to 1" in error and "learning_rate" in error
    assert not (tmp_path / "run").exists()


# -- export to llama.cpp --------------------------------------------------------------------------------------------


def test_exported_adapter_runs_in_llama_cpp_like_torch(runs, tmp_path: Path, base_gguf: Path, short_examples,
                                                       prompt_examples) -> None:  # fmt: skip
    trained = runs.straight.adapter_dir
    adapter = export_gguf_adapter(trained, base_gguf, tmp_path / "adapter.gguf")
    probes = [short_examples[1].prompt + short_examples[1].completion,
              prompt_examples[0].prompt + prompt_examples[0].completion]  # fmt: skip
    check = check_export(trained, base_gguf, adapter, probes, last_tokens=12)
    assert check.positions == 24
    assert check.base.top1_agreement >= 0.9  # the same weights: Q4 in llama.cpp, dequantized float32 in torch
    assert check.ok, check
    # The adapter moves the logits far more than llama.cpp and torch disagree about them.
    assert check.adapter_shift > 5 * check.adapted.mean_abs, check

    # The check has teeth: an adapter file whose alpha is 25% off fails it.
    skewed = tmp_path / "skewed"
    skewed.mkdir()
    config = json.loads((trained / "adapter_config.json").read_text())
    (skewed / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": config["lora_alpha"] * 1.25}))
    (skewed / "adapter_model.safetensors").write_bytes((trained / "adapter_model.safetensors").read_bytes())
    wrong = export_gguf_adapter(skewed, base_gguf, tmp_path / "skewed.gguf")
    assert not check_export(trained, base_gguf, wrong, probes, last_tokens=12).ok


def test_export_refuses_what_llama_cpp_cannot_express(runs, tmp_path: Path, base_gguf: Path) -> None:
    with pytest.raises(ExportError, match="is not a peft adapter directory"):
        export_gguf_adapter(tmp_path, base_gguf, tmp_path / "a.gguf")
    rslora = tmp_path / "rslora"
    rslora.mkdir()
    config = json.loads((runs.straight.adapter_dir / "adapter_config.json").read_text())
    (rslora / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    weights = (runs.straight.adapter_dir / "adapter_model.safetensors").read_bytes()
    (rslora / "adapter_model.safetensors").write_bytes(weights)
    with pytest.raises(ExportError, match="can't express use_rslora"):
        export_gguf_adapter(rslora, base_gguf, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_module_names_map_to_llama_cpp_tensor_names() -> None:
    names = tensor_names("gemma3", 18)
    assert names.get_name("model.layers.3.self_attn.q_proj") == "blk.3.attn_q"
    assert names.get_name("model.layers.17.mlp.down_proj") == "blk.17.ffn_down"
    with pytest.raises(AdapterFileError, match="permutes q/k weights"):
        tensor_names("llama", 2)
    with pytest.raises(AdapterFileError, match="does not know architecture 'nonesuch'"):
        tensor_names("nonesuch", 2)


# -- the MLX path: mlx-lm's trainer, for real (mlx[cpu] on Linux is slow, so on a six-layer Gemma 3) -----------------


@pytest.fixture(scope="session")
def small_gemma(hf_dir: Path, tokenizer, tmp_path_factory) -> Path:
    """A randomly initialised Gemma 3 of six narrow layers (one full-attention cycle) with the real model's
    configuration otherwise and its tokenizer, in the same Hugging Face layout: small enough for mlx on a CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 2,
                   "head_dim": 32, "query_pre_attn_scalar": 32, "layer_types": config.layer_types[:6]})  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("small-gemma")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_mlx_training_masks_like_torch_and_its_adapter_runs_the_same_in_mlx_and_torch(
    tmp_path: Path, small_gemma: Path, base_gguf: Path, tokenizer, short_examples
) -> None:
    mx = pytest.importorskip("mlx.core", reason="mlx is not installed (the test extra installs mlx[cpu] on Linux)")
    from mlx_lm import load

    from training.mlx_backend import MLX_DIR, iterate_batches, train_lora_mlx

    encoded = encode(short_examples, tokenizer, max_tokens=TINY.max_tokens, label_weight=2.0)
    by_tokens = {e.tokens: e for e in encoded}
    for tokens, weights in iterate_batches(encoded, batch_size=3, max_seq_length=TINY.max_tokens):
        for row, row_weights in zip(np.array(tokens), np.array(weights), strict=True):
            example = by_tokens[tuple(int(t) for t in row[row != 0])]  # no example holds the pad id 0
            expected = np.zeros_like(row_weights)
            expected[example.prompt_len - 1 : len(example.tokens) - 1] = example.loss_weights
            assert (row_weights == expected).all()

    result = train_lora_mlx(short_examples[1:3], model_path=small_gemma, out_dir=tmp_path, progress=False,
                            settings=TINY.model_copy(update={"max_steps": 1}))  # one batch of both, of two epochs
    assert (result.steps_done, len(result.losses), result.total_steps) == (1, 1, 2) and not result.finished

    probe = min(by_tokens, key=len)
    model, _ = load(str(small_gemma), adapter_path=str(tmp_path / MLX_DIR))  # mlx-lm reads its own format
    mlx_adapted = np.array(model(mx.array([probe]))[0, -12:].astype(mx.float32))
    with torch.no_grad():
        base = load_base_model(small_gemma)
        torch_base = base(torch.tensor([probe])).logits[0, -12:].float().numpy()
        merged = PeftModel.from_pretrained(base, result.adapter_dir).merge_and_unload()  # the peft copy
        torch_adapted = merged(torch.tensor([probe])).logits[0, -12:].float().numpy()
    shift = np.abs(torch_adapted - torch_base).mean()
    assert np.abs(mlx_adapted - torch_adapted).mean() < shift / 5, "the peft copy is not the adapter mlx trained"

    adapter = gguf.GGUFReader(export_gguf_adapter(result.adapter_dir, base_gguf, tmp_path / "adapter.gguf"))
    assert len(adapter.tensors) == len(load_file(result.adapter_dir / "adapter_model.safetensors"))

    # and back: the GGUF adapter as backend "mlx" gets a registry version runs as the adapter mlx trained
    model, _ = load(str(small_gemma), adapter_path=str(mlx_adapter_copy(tmp_path / "adapter.gguf", tmp_path / "mlx")))
    converted = np.array(model(mx.array([probe]))[0, -12:].astype(mx.float32))
    assert np.abs(converted - mlx_adapted).max() < 1e-4 * max(1.0, np.abs(mlx_adapted).max())


@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac, auto may pick mlx-lm")
def test_auto_trains_with_torch_off_apple_silicon_and_mlx_when_asked() -> None:
    assert pick_trainer("auto") == pick_trainer("torch") == "torch"
    assert pick_trainer("mlx") == "mlx"  # the test extra installs mlx-lm
