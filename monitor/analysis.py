"""Building the analyzer the daemon and the CLI use: the configured model plus the entity->ticker linker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monitor.config import Config
from training.hotswap import CURRENT, SWITCH_ERRORS, starting_adapter

if TYPE_CHECKING:
    from model.analyzer import Analyzer

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """The configured model can't be loaded; raised at startup, never mid-run."""


def build_analyzer(config: Config, adapter: str = CURRENT) -> Analyzer:
    """The configured model, loaded once, on the adapter `adapter` names (`sentimon eval --adapter`: "current",
    "base", "bundled", a version, a file; see training.hotswap.starting_adapter)."""
    from model.analyzer import Analyzer
    from model.linking import EntityLinker

    settings = config.model.model_copy(update={"adapter": _adapter_to_load(config, adapter)})
    try:
        return Analyzer.from_settings(settings, link=EntityLinker(extra_aliases=config.aliases).link)
    except Exception as exc:  # missing file, offline hub, bad GGUF: all mean the same to the user
        raise ModelUnavailable(f"cannot load the model {config.model.model!r}: {exc}") from exc


def _adapter_to_load(config: Config, choice: str) -> str | None:
    """A chosen adapter that can't be loaded is an error; the registry's current one falls back to the base model,
    so that a broken registry never keeps the daemon from running (the next promotion or rollback is followed)."""
    try:
        return starting_adapter(config, choice)
    except SWITCH_ERRORS as exc:
        if choice != CURRENT:
            raise ModelUnavailable(f"--adapter {choice}: {exc}") from None
        log.error("starting on the base model: cannot load the adapter registry's current adapter: %s", exc)
        return None
