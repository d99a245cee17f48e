"""Keeping the daemon's model on the registry's current adapter, without a restart.

`AdapterWatcher.check` runs in the model thread just before each analysis: one stat of the registry's `current`
pointer, and when it changed, `backend.set_adapter` with the new file. An analysis already running finishes on the
adapter it started with; the next one runs on the new adapter and records it (`analyses.adapter`). Backend "mlx"
gets each GGUF adapter as an mlx-lm adapter directory, converted once into the registry's `mlx/` folder.
`starting_adapter` is what the model is loaded with in the first place, so that it is loaded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from model.backends.base import Backend, BackendError
from monitor.config import Config
from training.registry import MLX_CACHE, Adapter, AdapterRegistry, RegistryError, registry_for

if TYPE_CHECKING:
    from model.analyzer import Analyzer

log = logging.getLogger(__name__)
_UNSEEN = ("unseen",)
SWITCH_ERRORS = (OSError, RegistryError, BackendError)
CURRENT = "current"


class AdapterWatcher:
    def __init__(self, registry: AdapterRegistry, backend: Backend, loadable: Callable[[Path], str]) -> None:
        self.registry = registry
        self.backend = backend
        self.loadable = loadable  # the registry's adapter file -> what backend.set_adapter takes
        self._stamp: object = _UNSEEN

    def check(self) -> None:
        """Switch to the current adapter if the pointer changed since the last check. A failed switch is logged
        once and the adapter in use stays; the next change of the pointer is tried again."""
        try:
            stamp = self.registry.pointer_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            adapter, path = _registry_current(self.registry, self.loadable)
            if path != self.backend.adapter:
                self.backend.set_adapter(path)
                log.info("analyzing with %s", _named(adapter, path))
        except SWITCH_ERRORS as exc:  # never a reason to fail the article itself
            log.error("keeping adapter %s: cannot switch to the registry's current one: %s", self.backend.adapter, exc)


def adapter_watch(config: Config, analyzer: Analyzer | None) -> Callable[[], None] | None:
    """The check to run before each analysis, or None when adapters don't follow the registry: no model, an
    adapter pinned in the config (model.adapter), or a model that is not the GGUF the registry's adapters are
    trained on (an MLX repo, an openai server)."""
    if analyzer is None or not follows_registry(config):
        return None
    return AdapterWatcher(registry_for(config), analyzer.backend, adapter_loader(config)).check


def follows_registry(config: Config) -> bool:
    return config.model.adapter is None and config.model.gguf_model


def starting_adapter(config: Config, choice: str = CURRENT) -> str | None:
    """What to load the model with (the backend's `adapter` setting; None: the base model) for an adapter choice:
    "current" (model.adapter if pinned, else the registry's current adapter where the model follows the registry),
    "base", "bundled", a version (v003), a GGUF adapter file, or for backend mlx an mlx-lm adapter folder.
    Loading with it from the start spares mlx a second load (mlx-lm applies adapters at load time). Raises
    OSError, RegistryError or BackendError naming what is wrong."""
    if choice == CURRENT:
        if not follows_registry(config):
            return config.model.adapter
        adapter, path = _registry_current(registry_for(config), adapter_loader(config))
        log.info("analyzing with %s", _named(adapter, path))
        return path
    loadable = adapter_loader(config)
    if Path(choice).is_dir():
        if config.model.backend != "mlx":
            raise BackendError(f"{choice} is a folder; backend {config.model.backend} loads a GGUF adapter file")
        return choice
    if Path(choice).is_file():
        return loadable(Path(choice))
    chosen = registry_for(config).resolve(choice)
    return loadable(chosen.path) if chosen else None


def _registry_current(
    registry: AdapterRegistry, loadable: Callable[[Path], str]
) -> tuple[Adapter | None, str | None]:
    adapter = registry.current()
    return adapter, loadable(adapter.path) if adapter else None


def _named(adapter: Adapter | None, path: str | None) -> str:
    return f"adapter {adapter.label} ({path})" if adapter else "the base model"


def adapter_loader(config: Config) -> Callable[[Path], str]:
    """GGUF adapter file -> what the configured backend's `set_adapter` takes: the file itself, or for mlx the
    folder of its mlx-lm copy in the registry's `mlx/`, converted on first use."""
    if config.model.backend != "mlx":
        return str
    from training.adapter_file import AdapterFileError  # gguf and safetensors: installed with sentimon[mlx]
    from training.mlx_adapter import mlx_adapter_copy

    cache = registry_for(config).root / MLX_CACHE

    def mlx_copy(adapter_gguf: Path) -> str:
        try:
            return str(mlx_adapter_copy(adapter_gguf, cache))
        except AdapterFileError as exc:
            raise BackendError(f"cannot convert {adapter_gguf} for mlx-lm: {exc}") from exc

    return mlx_copy
