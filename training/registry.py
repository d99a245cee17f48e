"""The adapter registry: every trained LoRA adapter as a numbered version, and a pointer to the one in use.

    <adapters_dir>/
        v001/adapter.gguf     the llama.cpp LoRA adapter
        v001/manifest.json    version, data hash, base model, train settings, dev-set metrics, decision, dates
        v002/...
        current               the label in use: "v002", "bundled" or "base"; replaced atomically
        mlx/<sha256[:16]>/    an adapter in mlx-lm's format, converted for backend "mlx" (training/hotswap.py)

Without a `current` file the bundled default adapter shipped with sentimon is in use (the base model when there is
none). The daemon stats `current` between two articles and switches adapters when it changes (training/hotswap.py).

Promotion: a candidate becomes current only if it beats the adapter in use (or the base model) on the development
set's entity F1 without lowering its valid-JSON rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from monitor.config import Config
from training.files import write_atomically

ADAPTER_FILE = "adapter.gguf"
MANIFEST_FILE = "manifest.json"
POINTER_FILE = "current"
MLX_CACHE = "mlx"
BUNDLED = "bundled"
BASE = "base"
# The default adapter shipped with sentimon, in use while the registry has no `current` pointer.
BUNDLED_ADAPTER = Path(__file__).parents[1] / "model" / "adapters" / "default.gguf"
VERSION_LABEL = re.compile(r"^v(\d{3,})$")


class RegistryError(RuntimeError):
    """The registry can't do what was asked; the message names the version or file."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    created_at: datetime
    data_hash: str
    base_model: str  # file name of the base GGUF
    base_model_sha256: str
    train_settings: dict[str, Any]
    examples: dict[str, int]  # per source: review, team, finentity
    reviews_through: int  # id of the newest review in the training data
    steps_done: int
    total_steps: int
    train_seconds: float | None = None  # wall time of the training steps of the run that finished it
    metrics: dict[str, Any] | None = None  # evaluate() JSON on the development set
    baseline: dict[str, Any] | None = None  # {"version": what it was compared with, "metrics": {...}}
    finentity_metrics: dict[str, Any] | None = None  # on the held-out FinEntity fold
    decision: Literal["pending", "promoted", "rejected"] = "pending"
    reason: str | None = None
    promoted_at: datetime | None = None
    retired_at: datetime | None = None  # when another version took its place
    previous: str | None = None  # the label in use before it was promoted: where a rollback returns
    merged_from: list[str] | None = None  # an average of these adapters (`sentimon adapters merge`), not trained


@dataclass(frozen=True)
class Adapter:
    label: str  # "v003" or "bundled"
    path: Path


def beats(candidate: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """The promotion rule: higher entity F1 on the development set, and no lower valid-JSON rate."""
    return (candidate["entity_f1"] or 0.0) > (baseline["entity_f1"] or 0.0) and (
        candidate["valid_json_rate"] >= baseline["valid_json_rate"]
    )


def registry_for(config: Config) -> AdapterRegistry:
    database = config.database
    return AdapterRegistry(config.training.adapters_dir or database.with_name(f"{database.stem}-adapters"))


class AdapterRegistry:
    def __init__(self, root: Path, *, bundled: Path = BUNDLED_ADAPTER) -> None:
        self.root = Path(root).absolute()  # analyses record adapter paths: the same from any directory
        self.bundled = bundled
        self.pointer = self.root / POINTER_FILE

    # -- reading --------------------------------------------------------------------------------------------------

    def versions(self) -> list[Manifest]:
        """Every version with a manifest, oldest first."""
        found = sorted(self.root.glob(f"v*/{MANIFEST_FILE}")) if self.root.is_dir() else []
        return [self.manifest(path.parent.name) for path in found if VERSION_LABEL.match(path.parent.name)]

    def manifest(self, label: str) -> Manifest:
        try:
            return _read_manifest(self.root / label / MANIFEST_FILE)
        except FileNotFoundError:
            raise RegistryError(f"no version {label} in {self.root}") from None

    def bundled_manifest(self) -> Manifest | None:
        """The bundled adapter's record (default.json beside default.gguf): how it was trained, its scores."""
        path = self.bundled.with_suffix(".json")
        if not (path.is_file() and self.bundled.is_file()):
            return None
        return _read_manifest(path)

    def current_label(self) -> str:
        """The label in use: a version, "bundled" or "base"."""
        try:
            label = self.pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return BUNDLED if self.bundled.is_file() else BASE
        if label not in (BUNDLED, BASE) and not VERSION_LABEL.match(label):
            raise RegistryError(
                f"{self.pointer} holds {label!r}, not a version label; `sentimon adapters rollback VERSION` fixes it"
            )
        return label

    def current(self) -> Adapter | None:
        """The adapter in use, None for the base model."""
        return self.resolve(self.current_label())

    def resolve(self, label: str) -> Adapter | None:
        if label == BASE:
            return None
        path = self.bundled if label == BUNDLED else self.root / label / ADAPTER_FILE
        if not path.is_file():
            raise RegistryError(f"adapter {label} has no file at {path}")
        return Adapter(label, path)

    def pointer_stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever `current` is replaced: one stat, cheap enough to check before every article."""
        try:
            stat = self.pointer.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def reviews_through(self) -> int:
        """The newest review any trained version has seen: reviews after it are new."""
        return max((manifest.reviews_through for manifest in self.versions()), default=0)

    # -- changing -------------------------------------------------------------------------------------------------

    def reserve(self) -> str:
        """A fresh version label, its folder created (so two trainings never get the same one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := VERSION_LABEL.match(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            label = f"v{number:03d}"
            try:
                (self.root / label).mkdir()
                return label
            except FileExistsError:
                number += 1

    def save(self, manifest: Manifest) -> None:
        write_atomically(self.root / manifest.version / MANIFEST_FILE, manifest.model_dump_json(indent=2))

    def promote(self, label: str, reason: str) -> Manifest:
        manifest = self.manifest(label)
        self.resolve(label)
        now = datetime.now(UTC)
        manifest = manifest.model_copy(update={
            "decision": "promoted", "reason": reason, "promoted_at": now, "retired_at": None,
            "previous": self.current_label(),
        })  # fmt: skip
        self._switch(manifest, now)
        return manifest

    def reject(self, label: str, reason: str) -> Manifest:
        manifest = self.manifest(label).model_copy(update={"decision": "rejected", "reason": reason})
        self.save(manifest)
        return manifest

    def rollback(self, label: str | None = None) -> str:
        """Switch to `label`, or to the label in use before the current version was promoted. Returns it."""
        current = self.current_label()
        if label is None:
            if not VERSION_LABEL.match(current):
                raise RegistryError(f"the {current} {'adapter' if current == BUNDLED else 'model'} is in use; "
                                    "there is no earlier one to roll back to")  # fmt: skip
            label = self.manifest(current).previous or BASE
        if label not in (BUNDLED, BASE) and not VERSION_LABEL.match(label):
            raise RegistryError(f"{label!r} is not a version label: v001, v002, ..., {BUNDLED} or {BASE}")
        if label == current:
            raise RegistryError(f"{label} is already in use")
        target = self.manifest(label) if VERSION_LABEL.match(label) else None
        self.resolve(label)
        now = datetime.now(UTC)
        if target:
            self._switch(target.model_copy(update={"retired_at": None, "previous": target.previous or current}), now)
        else:
            self._retire_current(now)
            self._point_to(label)
        return label

    def _switch(self, manifest: Manifest, now: datetime) -> None:
        self._retire_current(now)
        self.save(manifest)
        self._point_to(manifest.version)

    def _point_to(self, label: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)  # a fresh install may roll back to base before any training
        write_atomically(self.pointer, label + "\n")

    def _retire_current(self, now: datetime) -> None:
        current = self.current_label()
        if VERSION_LABEL.match(current):
            self.save(self.manifest(current).model_copy(update={"retired_at": now}))


def _read_manifest(path: Path) -> Manifest:
    """A manifest file; FileNotFoundError when there is none, RegistryError when it can't be read or parsed."""
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValidationError) as exc:
        raise RegistryError(f"{path} is damaged: {exc}") from None
