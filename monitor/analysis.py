"""Building the analyzer the daemon and the CLI use: the configured model plus the entity->ticker linker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.config import Config

if TYPE_CHECKING:
    from model.analyzer import Analyzer


class ModelUnavailable(Exception):
    """The configured model can't be loaded; raised at startup, never mid-run."""


def build_analyzer(config: Config) -> Analyzer:
    from model.analyzer import Analyzer
    from model.linking import EntityLinker

    from training.hotswap import adapter_watch

    try:
        analyzer = Analyzer.from_settings(config.model, link=EntityLinker(extra_aliases=config.aliases).link)
    except Exception as exc:  # missing file, offline hub, bad GGUF: all mean the same to the user
        raise ModelUnavailable(f"cannot load the model {config.model.model!r}: {exc}") from exc
    if watch := adapter_watch(config, analyzer):  # start on the registry's promoted adapter, if there is one
        watch()
    return analyzer
