"""Averaging LoRA adapters (training/merge.py): the merged file's update is the mean of theirs, llama.cpp runs it,
and adapters that can't be averaged are named."""

import contextlib
import io
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from model.embedded import resolve_model_path
from model.settings import ModelSettings
from training.adapter_file import AdapterFileError, read_adapter_gguf, write_adapter_gguf
from training.merge import MergeError, merge_adapters

SHIPPED = Path(__file__).parents[1] / "model" / "adapters" / "default.gguf"


def update(alpha: float, tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """What llama.cpp adds to the weight `name`: alpha / r · B·A."""
    a, b = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
    return alpha / a.shape[0] * (b.astype(np.float64) @ a.astype(np.float64))


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """A second adapter of another rank and alpha: the shipped one cut to rank 8, its updates turned around."""
    shipped = read_adapter_gguf(SHIPPED)
    cut = {name: (t[:8] if name.endswith("_a") else -0.5 * t[:, :8]) for name, t in shipped.tensors.items()}
    return write_adapter_gguf(tmp_path_factory.mktemp("other") / "other.gguf", shipped.arch, 8.0, cut)


def test_the_merged_update_is_the_mean_of_the_adapters_updates(tmp_path, other):
    exact = merge_adapters([SHIPPED, other], tmp_path / "mean.gguf")
    assert (exact.rank, exact.energy_kept) == (16 + 8, 1.0)
    merged = read_adapter_gguf(exact.path)
    parts = [read_adapter_gguf(SHIPPED), read_adapter_gguf(other)]
    weights = sorted(name.removesuffix(".lora_a") for name in merged.tensors if name.endswith(".lora_a"))
    assert len(weights) == 126
    for name in weights[::10]:
        mean = sum(update(part.alpha, part.tensors, name) for part in parts) / 2
        np.testing.assert_allclose(update(merged.alpha, merged.tensors, name), mean, rtol=1e-4, atol=1e-7)


def test_a_narrower_merge_is_the_best_approximation_of_that_rank(tmp_path, other):
    narrow = merge_adapters([SHIPPED, other], tmp_path / "narrow.gguf", rank=6)
    merged = read_adapter_gguf(narrow.path)
    exact = read_adapter_gguf(merge_adapters([SHIPPED, other], tmp_path / "mean.gguf").path)
    assert narrow.rank == 6 and merged.tensors["blk.0.attn_q.weight.lora_a"].shape == (6, 640)
    energies = []
    for name in sorted(n.removesuffix(".lora_a") for n in merged.tensors if n.endswith(".lora_a"))[::25]:
        u, s, vt = np.linalg.svd(update(exact.alpha, exact.tensors, name), full_matrices=False)
        best = (u[:, :6] * s[:6]) @ vt[:6]  # Eckart-Young: the closest rank-6 matrix
        np.testing.assert_allclose(update(merged.alpha, merged.tensors, name), best, rtol=1e-3, atol=1e-6)
        energies.append((s[:6] ** 2).sum() / (s**2).sum())
    assert narrow.energy_kept <= min(energies) + 1e-6 and narrow.energy_kept > 0.5


def last_logits(adapter: Path, text: str) -> np.ndarray:
    with contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(str(resolve_model_path(ModelSettings())), lora_path=str(adapter), n_ctx=256,
                              n_threads=2, verbose=False)  # fmt: skip
    llm.eval(llm.tokenize(text.encode(), add_bos=True))
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    llm.close()
    return logits


def test_llama_cpp_reads_the_merged_rank_and_scale(tmp_path, other):
    # [A; A] and [B B] at rank 2r with alpha / 2r is the shipped update in exact float arithmetic, so the logits
    # must match to the bit: a wrong rank or scale anywhere would move them. (Other averages can't be checked
    # this way: this Q4 model's logits move by up to ~1 when an adapter's weights change by one part in a
    # million, llama.cpp quantizing activations for its matmuls.)
    text = "Apple shares jumped after record iPhone sales, while Samsung lost share"
    shipped = last_logits(SHIPPED, text)
    twice = merge_adapters([SHIPPED, SHIPPED], tmp_path / "twice.gguf").path
    np.testing.assert_array_equal(last_logits(twice, text), shipped)
    assert not np.array_equal(last_logits(merge_adapters([SHIPPED, other], tmp_path / "mean.gguf").path, text), shipped)


def test_what_cannot_be_averaged_is_named(tmp_path, other):
    shipped = read_adapter_gguf(SHIPPED)
    with pytest.raises(MergeError, match="at least two"):
        merge_adapters([SHIPPED], tmp_path / "x.gguf")
    with pytest.raises(AdapterFileError, match=r"README.md: not a readable GGUF file"):
        merge_adapters([SHIPPED, Path(__file__).parents[1] / "README.md"], tmp_path / "x.gguf")
    with pytest.raises(AdapterFileError, match="not a LoRA adapter"):
        merge_adapters([SHIPPED, resolve_model_path(ModelSettings())], tmp_path / "x.gguf")
    qwen = write_adapter_gguf(tmp_path / "qwen.gguf", "qwen2", shipped.alpha, shipped.tensors)
    with pytest.raises(MergeError, match=r"qwen.gguf adapts a qwen2 model, .*default.gguf a gemma3 model"):
        merge_adapters([SHIPPED, qwen], tmp_path / "x.gguf")
    fewer = dict(list(shipped.tensors.items())[2:])
    partial = write_adapter_gguf(tmp_path / "partial.gguf", shipped.arch, shipped.alpha, fewer)
    with pytest.raises(MergeError, match="partial.gguf adapts other weights"):
        merge_adapters([SHIPPED, partial], tmp_path / "x.gguf")
    narrower = {**shipped.tensors, "blk.0.attn_q.weight.lora_a": shipped.tensors["blk.0.attn_q.weight.lora_a"][:, :320]}
    skewed = write_adapter_gguf(tmp_path / "skewed.gguf", shipped.arch, shipped.alpha, narrower)
    with pytest.raises(MergeError, match=r"skewed.gguf: blk.0.attn_q.weight.lora_a has shape \(16, 320\)"):
        merge_adapters([SHIPPED, skewed], tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
