"""One interface for every inference backend; `load_backend` picks one by name and imports it lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from model.prompt import Prompt
from model.settings import ModelSettings


class BackendError(RuntimeError):
    """The backend could not produce any output (server unreachable, bad adapter): not a bad answer."""


@dataclass(frozen=True)
class Generation:
    text: str
    polarity_probs: list[dict[str, float]]  # one {"+", "-", "0", "~"} distribution per polarity value, in order
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens the backend actually computed; the rest came from its prefix cache. None when unknown.
    prompt_tokens_evaluated: int | None = None


class Backend(Protocol):
    model_id: str
    adapter: str | None

    def generate(self, prompt: Prompt) -> Generation: ...

    def count_tokens(self, text: str) -> int: ...

    def set_adapter(self, path: str | None) -> None:
        """Swap the LoRA adapter (None: base model). Safe between calls; a failed swap keeps the old one."""
        ...


def load_backend(settings: ModelSettings) -> Backend:
    if settings.backend == "llama_cpp":
        from model.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(settings)
    if settings.backend == "mlx":
        from model.backends.mlx import MlxBackend

        return MlxBackend(settings)
    from model.backends.openai_compat import OpenAIBackend

    return OpenAIBackend(settings)
