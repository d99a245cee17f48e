"""Article text in, per-entity sentiment out: prompt, backend, validation, one retry, ticker linking.

Scores come from the model's token probabilities, never from numbers the model writes: at the step where it
emits a mention's polarity, the probabilities of the four polarity values (summed over the tokens spelling
each, renormalized over the four) give

    score      = P("+") - P("-")      in [-1, 1]
    confidence = P(emitted polarity)  in [0, 1]

With llama_cpp the emitted polarity is the most probable value, so confidence >= 0.25 and the score's sign
agrees with "+" and "-". Backends that decode token by token elsewhere (openai, mlx) emit the single most
probable token, which can on rare close calls be a value whose summed probability is not the highest.

Thread-safety: an Analyzer keeps no per-call state, but its backend may not take concurrent calls
(llama_cpp serializes them): use one Analyzer from one worker thread at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from model.backends.base import Backend, Generation, load_backend
from model.prompt import build_prompt
from model.schema import EntityMention, OutputValidationError, parse_output
from model.settings import ModelSettings

Linker = Callable[[str, tuple[str, ...]], str | None]
# The retry halves the article budget (a shorter input is the change most likely to get a different answer
# from a greedy decoder), but not below this.
MIN_RETRY_INPUT_TOKENS = 64


@dataclass
class EntitySentiment:
    entity: str
    polarity: str
    category: str
    ticker: str | None
    score: float
    confidence: float


@dataclass
class AnalysisResult:
    entities: list[EntitySentiment]
    ok: bool
    error: str | None
    raw_output: str  # the last attempt's text
    model: str
    adapter: str | None
    prompt_version: str
    latency_ms: float
    attempts: int
    prompt_tokens: int  # summed over attempts, like completion_tokens
    completion_tokens: int


class Analyzer:
    def __init__(
        self, backend: Backend, link: Linker | None = None, *, max_input_tokens: int = 384,
        max_output_tokens: int | None = None,
    ) -> None:  # fmt: skip
        self.backend = backend
        self.link = link
        self.max_input_tokens = max_input_tokens
        self.max_output_tokens = max_output_tokens  # the backend's limit, named in errors when output hits it

    @classmethod
    def from_settings(cls, settings: ModelSettings, link: Linker | None = None) -> Analyzer:
        return cls(load_backend(settings), link, max_input_tokens=settings.max_input_tokens,
                   max_output_tokens=settings.max_output_tokens)  # fmt: skip

    def analyze(
        self,
        text: str,
        *,
        title: str | None = None,
        summary: str | None = None,
        ticker_hints: tuple[str, ...] = (),
    ) -> AnalysisResult:
        """Analyze one article. Output that fails validation is retried once with half the article budget,
        then returned with ok=False, the raw text and the reason; bad model output never raises. A mention that
        repeats an earlier one (same entity and category) is dropped. Raises ValueError for an empty article
        and BackendError when the backend produced nothing at all (server unreachable, decoding failure)."""
        started = time.perf_counter()
        budget = self.max_input_tokens
        prompt_tokens = completion_tokens = 0
        for attempt in (1, 2):
            prompt = build_prompt(
                text, title=title, summary=summary, tokenizer_count=self.backend.count_tokens, max_tokens=budget,
                tuned=self.backend.adapter is not None,
            )
            generation = self.backend.generate(prompt)
            prompt_tokens += generation.prompt_tokens
            completion_tokens += generation.completion_tokens
            try:
                entities = self._entities(generation, ticker_hints)
                error = None
                break
            except OutputValidationError as exc:
                entities, error = [], self._reason(exc, generation)
                budget = max(budget // 2, MIN_RETRY_INPUT_TOKENS)
        return AnalysisResult(
            entities=entities,
            ok=error is None,
            error=error,
            raw_output=generation.text,
            model=self.backend.model_id,
            adapter=self.backend.adapter,
            prompt_version=prompt.version,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=attempt,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _reason(self, exc: OutputValidationError, generation: Generation) -> str:
        if self.max_output_tokens is not None and generation.completion_tokens >= self.max_output_tokens:
            return f"output cut off at model.max_output_tokens = {self.max_output_tokens} ({exc.reason})"
        return exc.reason

    def _entities(self, generation: Generation, hints: tuple[str, ...]) -> list[EntitySentiment]:
        mentions = parse_output(generation.text)
        if len(generation.polarity_probs) != len(mentions):
            raise OutputValidationError(
                generation.text,
                f"{len(mentions)} mentions but token probabilities for "
                f"{len(generation.polarity_probs)} polarity values",
            )
        seen: set[tuple[str, str]] = set()
        entities = []
        for mention, probs in zip(mentions, generation.polarity_probs):
            key = (mention.entity.casefold(), mention.category)
            if key in seen:  # small models repeat themselves; the first mention of an entity and category counts
                continue
            seen.add(key)
            entities.append(self._sentiment(mention, probs, hints))
        return entities

    def _sentiment(self, mention: EntityMention, probs: dict[str, float], hints: tuple[str, ...]) -> EntitySentiment:
        return EntitySentiment(
            entity=mention.entity,
            polarity=mention.polarity,
            category=mention.category,
            ticker=self.link(mention.entity, hints) if self.link else None,
            score=probs["+"] - probs["-"],
            confidence=probs[mention.polarity],
        )
