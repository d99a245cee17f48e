"""Writing files and folders that another process may read at any moment (registry pointer and manifests,
exports, converted models and adapters)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a part: write aside, flush to disk, rename over. A failed
    write leaves the old file and no partial one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def publish_dir(target: Path, build: Callable[[Path], object], marker: str) -> Path:
    """`target`, built by `build(folder)` on first use: built aside and renamed into place whole, so a folder
    holding `marker` is complete. When another process publishes it first, its copy is kept."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        build(partial)
        try:
            os.replace(partial, target)
        except OSError:
            if not (target / marker).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
