"""Keeping the daemon's model on the registry's current adapter, without a restart.

`AdapterWatcher.check` runs in the model thread just before each analysis: one stat of the registry's `current`
pointer, and when it changed, `backend.set_adapter` with the new file. An analysis already running finishes on the
adapter it started with; the next one runs on the new adapter and records it (`analyses.adapter`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from model.backends.base import Backend, BackendError
from monitor.config import Config
from training.registry import AdapterRegistry, RegistryError, registry_for

if TYPE_CHECKING:
    from model.analyzer import Analyzer

log = logging.getLogger(__name__)
_UNSEEN = ("unseen",)


class AdapterWatcher:
    def __init__(self, registry: AdapterRegistry, backend: Backend) -> None:
        self.registry = registry
        self.backend = backend
        self._stamp: object = _UNSEEN

    def check(self) -> None:
        """Switch to the current adapter if the pointer changed since the last check. A failed switch is logged
        once and the adapter in use stays; the next change of the pointer is tried again."""
        try:
            stamp = self.registry.pointer_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            adapter = self.registry.current()
            path = str(adapter.path) if adapter else None
            if path != self.backend.adapter:
                self.backend.set_adapter(path)
                log.info("analyzing with %s", f"adapter {adapter.label} ({path})" if adapter else "the base model")
        except (OSError, RegistryError, BackendError) as exc:  # never a reason to fail the article itself
            log.error("keeping adapter %s: cannot switch to the registry's current one: %s", self.backend.adapter, exc)


def adapter_watch(config: Config, analyzer: Analyzer | None) -> Callable[[], None] | None:
    """The check to run before each analysis, or None when adapters don't follow the registry: no model, an
    adapter pinned in the config (model.adapter), or a backend other than llama_cpp (the registry holds GGUF
    adapters)."""
    if analyzer is None or config.model.adapter is not None or config.model.backend != "llama_cpp":
        return None
    return AdapterWatcher(registry_for(config), analyzer.backend).check
