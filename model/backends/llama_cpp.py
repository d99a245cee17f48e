"""llama-cpp-python backend (the default): a GGUF model on CPU, greedy decoding constrained by a JSON grammar.

llama-cpp-python ignores `response_format` json_schema, so the output schema is turned into a GBNF grammar
(applied by `StepDecoder`). Prompts are tokenized as head + article + tail. The head (instructions and worked
examples) never changes: it is evaluated once when the model loads, and llama-cpp-python's reuse of the longest
common token prefix keeps it in the KV cache, so each article costs only its own tokens.

Thread-safe: calls are serialized with a lock (one llama.cpp context, one KV cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama, LogitsProcessorList

from model.backends.base import BackendError, Generation
from model.backends.grammar import GrammarGate, output_grammar
from model.backends.llama_decoder import StepDecoder
from model.embedded import gguf_model_name, resolve_model_path
from model.prompt import ChatTemplate, Prompt
from model.settings import ModelSettings


class LlamaCppBackend:
    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self.model_path = resolve_model_path(settings)
        self.model_id = gguf_model_name(settings, self.model_path)
        self._lock = threading.Lock()
        self._llm = self._load()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._pieces: dict[int, str] = {}
        self._grammar = output_grammar() if settings.grammar else None
        source = self._llm.metadata.get("tokenizer.chat_template")
        eos = self._llm.detokenize([self._llm.token_eos()], special=True).decode("utf-8", "replace")
        self.chat_template = ChatTemplate(source, eos) if source else None
        self._check_context_fits()
        self.adapter: str | None = None
        self._lora: Any = None  # the llama.cpp adapter handle
        self.head_tokens: int | None = None  # tokens of the fixed head in the KV cache, None until evaluated
        self.set_adapter(settings.adapter)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def generate(self, prompt: Prompt) -> Generation:
        with self._lock:
            return self._generate(prompt)

    def set_adapter(self, path: str | None) -> None:
        """Swap LoRA adapters on the loaded model (no reload); the KV cache is rebuilt since outputs change."""
        if path is not None and not Path(path).is_file():
            raise BackendError(f"LoRA adapter {path} does not exist")
        with self._lock:
            lora = self._load_lora(path) if path else None
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora) if lora else None
            scales = (ctypes.c_float * 1)(1.0) if lora else None
            if llama_cpp.llama_set_adapters_lora(self._llm.ctx, handles, 1 if lora else 0, scales) != 0:
                if lora:
                    llama_cpp.llama_adapter_lora_free(lora)
                raise BackendError(f"llama.cpp could not apply LoRA adapter {path}")
            if self._lora:
                llama_cpp.llama_adapter_lora_free(self._lora)
            self._lora, self.adapter = lora, path
            self._llm.reset()
            self.head_tokens = None  # warmed by the next article, so a switch right after loading costs nothing

    def _load(self) -> Llama:
        with _llama_chatter() as chatter:
            try:
                return Llama(
                    str(self.model_path),
                    n_ctx=self._settings.context_tokens,
                    n_threads=self._settings.threads,
                    n_threads_batch=self._settings.threads,
                    seed=self._settings.seed,
                    # Gemma 3 and other sliding-window models can only drop a token suffix from a full-size
                    # SWA cache; without it the instruction prefix is evaluated again for every article.
                    swa_full=True,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"llama.cpp cannot load model {self.model_path}: {exc}{_said(chatter)}") from exc

    def _load_lora(self, path: str) -> Any:
        # Not Llama(lora_path=...): llama-cpp-python 0.3.36 misses a failed load there and crashes later.
        with _llama_chatter() as chatter:
            lora = llama_cpp.llama_adapter_lora_init(self._llm.model, path.encode("utf-8"))
        if not lora:
            raise BackendError(
                f"llama.cpp cannot load LoRA adapter {path}: is it a GGUF LoRA made for {self.model_path.name}?"
                + _said(chatter)
            )
        return lora

    def _check_context_fits(self) -> None:
        head, _, tail = Prompt("", truncated=False).segments(self.chat_template)  # the longer, few-shot frame
        fixed = self.count_tokens(head) + self.count_tokens(tail) + 1
        needed = fixed + self._settings.max_input_tokens + self._settings.max_output_tokens
        if needed > self._settings.context_tokens:
            raise BackendError(
                f"context_tokens = {self._settings.context_tokens} is too small: instructions and examples take "
                f"{fixed} tokens, plus max_input_tokens {self._settings.max_input_tokens} and max_output_tokens "
                f"{self._settings.max_output_tokens} need {needed}"
            )

    def _tokens(self, prompt: Prompt) -> list[int]:
        head, document, tail = prompt.segments(self.chat_template)
        return (
            self._tokenize_head(head)
            + self._llm.tokenize(document.encode("utf-8"), add_bos=False, special=False)
            + self._llm.tokenize(tail.encode("utf-8"), add_bos=False, special=True)
        )

    def _tokenize_head(self, head: str) -> list[int]:
        return self._llm.tokenize(head.encode("utf-8"), add_bos=True, special=True)

    def _warm_head(self) -> int:
        """Evaluate the fixed head once, on its own, so every article continues from the same cached state."""
        head, _, _ = Prompt("", truncated=False, tuned=self.adapter is not None).segments(self.chat_template)
        tokens = self._tokenize_head(head)
        self._llm.eval(tokens)
        return len(tokens)

    def _generate(self, prompt: Prompt) -> Generation:
        llm = self._llm
        tokens = self._tokens(prompt)
        if len(tokens) + self._settings.max_output_tokens > llm.n_ctx():
            raise BackendError(f"prompt of {len(tokens)} tokens leaves no room for output in context_tokens")
        # Keep only the head of the previous prompt: the article is then always evaluated as one batch over the
        # same cached state, so its result can't depend on which article came before (batch sizes change the
        # floating-point sums). llama-cpp-python reuses exactly the first `n_tokens` cached tokens that match.
        if self.head_tokens is None:
            self.head_tokens = self._warm_head()
        llm.n_tokens = min(llm.n_tokens, self.head_tokens)
        gate = GrammarGate(self._vocab, self._grammar) if self._grammar else None
        decoder = StepDecoder(self._piece, gate, stop_token=llm.token_eos())
        evaluated_before = self._prompt_tokens_evaluated()
        generated: list[int] = []
        try:
            for token in llm.generate(
                tokens, temp=0.0, top_k=1, repeat_penalty=1.0, logits_processor=LogitsProcessorList([decoder])
            ):
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    break
                generated.append(token)
                if len(generated) >= self._settings.max_output_tokens:
                    break
        finally:
            if gate:
                gate.close()
        if decoder.failure:
            raise BackendError(f"decoding failed: {decoder.failure}") from decoder.failure
        return Generation(
            text=llm.detokenize(generated).decode("utf-8", errors="replace"),
            polarity_probs=decoder.tracker.distributions,
            prompt_tokens=len(tokens),
            completion_tokens=len(generated),
            prompt_tokens_evaluated=self._prompt_tokens_evaluated() - evaluated_before,
        )

    def _prompt_tokens_evaluated(self) -> int:
        """llama.cpp's own count of prompt tokens decoded so far (it settles pending decodes first)."""
        llama_cpp.llama_synchronize(self._llm.ctx)
        return llama_cpp.llama_perf_context(self._llm.ctx).n_p_eval

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llm.detokenize([token]).decode("utf-8", errors="replace")
        return piece


@contextlib.contextmanager
def _llama_chatter() -> Iterator[io.StringIO]:
    """llama.cpp logs loading chatter and load errors through Python's stderr even when not verbose: keep it
    out of the logs, and at hand to explain a failure."""
    chatter = io.StringIO()
    with contextlib.redirect_stderr(chatter):
        yield chatter


def _said(chatter: io.StringIO) -> str:
    lines = chatter.getvalue().strip().splitlines()[-2:]
    return f" ({' | '.join(lines)})" if lines else ""
