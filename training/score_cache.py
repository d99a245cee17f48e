"""Development-set scores remembered by everything that decides them, so a refresh does not spend minutes scoring
the adapter in use again: the same adapter file, base model, records, model settings and analysis code give the
same greedy outputs, hence the same scores."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import model
from model.embedded import sha256_file
from model.evaluate import EvalRecord
from model.settings import ModelSettings
from training.files import write_atomically

log = logging.getLogger("sentimon.training")

SCORES_DIR = "scores"


def score_key(adapter: Path | None, base_sha256: str, records: Sequence[EvalRecord], settings: ModelSettings) -> str:
    parts = {
        "adapter": sha256_file(adapter) if adapter else None,
        "base_model": base_sha256,
        "records": hashlib.sha256(json.dumps([dataclasses.asdict(r) for r in records]).encode()).hexdigest(),
        "settings": settings.model_dump(mode="json", exclude={"adapter"}),
        "code": _analysis_code_hash(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@cache
def _analysis_code_hash() -> str:
    """Any change to prompting, decoding, validation, linking or scoring (the `model` package) invalidates."""
    digest = hashlib.sha256()
    package = Path(model.__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def cached_scores(root: Path, key: str, what: str, score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The scores stored under `key` in `root`/scores/, else `score()`'s, stored there for the next time."""
    path = root / SCORES_DIR / f"{key}.json"
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
        log.info("%s: scores reused from %s (same adapter, model, records, settings and code)", what, path.name[:12])
        return scores
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    scores = score()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(scores, indent=2))
    return scores
