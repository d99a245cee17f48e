"""mlx-lm backend for Apple Silicon; `mlx_lm` is imported only when this backend is chosen.

Greedy decoding with `mlx_lm.stream_generate`, whose per-step log-probabilities over the vocabulary give the
polarity probabilities. mlx-lm has no grammar-constrained decoding: output that breaks the schema is caught by
validation (and retried once by the Analyzer). Calls are serialized with a lock.

A GGUF model (the embedded default, a .gguf path) runs from its Hugging Face conversion (training/convert.py,
made once and cached; the LoRA trainers start from the same one), so the registry's adapters fit it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from model.backends.base import BackendError, Generation
from model.backends.polarity import PolarityTracker, top_ids
from model.embedded import gguf_model_name, resolve_model_path
from model.prompt import ChatTemplate, Prompt
from model.settings import ModelSettings


class MlxBackend:
    def __init__(self, settings: ModelSettings) -> None:
        try:
            import mlx_lm
        except ImportError:
            raise BackendError(
                'backend "mlx" needs mlx-lm, which runs on Apple Silicon only (pip install "sentimon[mlx]")'
            ) from None
        self._mlx_lm = mlx_lm
        self._settings = settings
        self._model_path, self.model_id = _mlx_model(settings)
        self._lock = threading.Lock()
        self._model, self._tokenizer = self._load(settings.adapter)
        self.adapter = settings.adapter
        source = getattr(self._tokenizer, "chat_template", None)
        self.chat_template = ChatTemplate(source, self._tokenizer.eos_token or "") if source else None

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def set_adapter(self, path: str | None) -> None:
        if path is not None and not Path(path).is_dir():
            raise BackendError(f"mlx adapter directory {path} does not exist")
        with self._lock:
            self._model, self._tokenizer = self._load(path)
            self.adapter = path

    def generate(self, prompt: Prompt) -> Generation:
        with self._lock:
            return self._generate(prompt)

    def _load(self, adapter: str | None) -> tuple[Any, Any]:
        try:
            return self._mlx_lm.load(self._model_path, adapter_path=adapter)
        except Exception as exc:  # mlx-lm and huggingface_hub raise many types for a model they can't load
            what = f"adapter {adapter} for {self._settings.model}" if adapter else self._settings.model
            raise BackendError(f"mlx-lm cannot load {what}: {exc}") from exc

    def _generate(self, prompt: Prompt) -> Generation:
        tokenizer = self._tokenizer
        head, document, tail = prompt.segments(self.chat_template)
        tokens = (
            tokenizer.encode(head)
            + tokenizer.encode(document, add_special_tokens=False)
            + tokenizer.encode(tail, add_special_tokens=False)
        )
        tracker = PolarityTracker()
        generated: list[int] = []
        for response in self._mlx_lm.stream_generate(
            self._model, tokenizer, tokens, max_tokens=self._settings.max_output_tokens
        ):
            if response.finish_reason == "stop":  # the end-of-sequence token, not part of the answer
                break
            alternatives = self._alternatives(response.logprobs, response.token) if tracker.awaiting_value() else None
            tracker.advance(tokenizer.decode([response.token]), alternatives)
            generated.append(response.token)
        return Generation(
            text=tokenizer.decode(generated),
            polarity_probs=tracker.distributions,
            prompt_tokens=len(tokens),
            completion_tokens=len(generated),
        )

    def _alternatives(self, logprobs: Any, chosen: int) -> list[tuple[str, float]]:
        scores = np.array(logprobs.tolist(), dtype=np.float32)  # tolist: works for bfloat16 arrays too
        return [(self._tokenizer.decode([int(i)]), float(scores[i])) for i in top_ids(scores, chosen)]


def _mlx_model(settings: ModelSettings) -> tuple[str, str]:
    """What mlx-lm loads for `settings.model` (an MLX folder or repo id as it is, a GGUF's conversion), and the
    model name analyses record."""
    if not settings.gguf_model:
        return settings.model, settings.model
    from training.stack import INSTALL_HINT, training_stack_problem

    if training_stack_problem():
        raise BackendError(f'backend "mlx" runs the GGUF model {settings.model!r} from a one-time conversion that '
                           f"needs the training extras ({INSTALL_HINT}), or set model to an MLX model")  # fmt: skip
    from training.convert import hf_base_dir

    gguf = resolve_model_path(settings)
    return str(hf_base_dir(gguf)), f"mlx:{gguf_model_name(settings, gguf)}"
