"""OpenAI-compatible HTTP backend (llama-server, vLLM, Ollama): POST /v1/chat/completions.

Asks for `response_format` json_schema (the server constrains decoding) and `logprobs` with `top_logprobs`, from
which the polarity probabilities are computed as for the local backends. Greedy (temperature 0), a fixed seed.
HTTP 429, 5xx and connection errors are retried with exponential backoff (a Retry-After header wins);
other failures raise BackendError naming the URL and what the server said.

Thread-safe: any number of threads may share one backend; `concurrency` caps the requests in flight.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from email.message import Message

from model.backends.base import BackendError, Generation
from model.backends.polarity import PolarityTracker
from model.prompt import Prompt
from model.schema import output_json_schema
from model.settings import ModelSettings

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
TOP_LOGPROBS = 20  # the most the OpenAI API allows
# The server's tokenizer is out of reach: article budgets are estimated at this many characters a token.
CHARS_PER_TOKEN = 4


class OpenAIBackend:
    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self._openai = settings.openai
        self.url = self._openai.base_url.rstrip("/") + "/chat/completions"
        self.model_id = f"openai:{self._openai.model}"
        self.adapter: str | None = None
        self.set_adapter(settings.adapter)
        self._slots = threading.BoundedSemaphore(self._openai.concurrency)

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def set_adapter(self, path: str | None) -> None:
        if path is not None:
            raise BackendError("the openai backend cannot load adapter files: serve the adapter on the server")

    def generate(self, prompt: Prompt) -> Generation:
        reply = self._post(
            {
                "model": self._openai.model,
                "messages": prompt.messages(),
                "temperature": 0,
                "seed": self._settings.seed,
                "max_tokens": self._settings.max_output_tokens,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "entity_sentiments", "schema": output_json_schema()},
                },
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
        )
        try:
            return self._generation(reply)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(f"{self.url} answered in an unexpected shape ({exc!r}): {str(reply)[:300]}") from exc

    def _generation(self, reply: dict) -> Generation:
        choice = reply["choices"][0]
        steps = (choice.get("logprobs") or {}).get("content")
        if not steps:
            raise BackendError(
                f"{self.url} returned no logprobs; sentimon needs logprobs with top_logprobs to compute "
                "confidence (llama-server, vLLM and Ollama >= 0.12 provide them)"
            )
        tracker = PolarityTracker()
        for step in steps:
            alternatives = {alt["token"]: alt["logprob"] for alt in step.get("top_logprobs") or ()}
            alternatives.setdefault(step["token"], step["logprob"])
            tracker.advance(step["token"], alternatives.items())
        usage = reply.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return Generation(
            text=choice["message"]["content"] or "",
            polarity_probs=tracker.distributions,
            prompt_tokens=prompt_tokens,
            completion_tokens=usage.get("completion_tokens", len(steps)),
            prompt_tokens_evaluated=None if cached is None else prompt_tokens - cached,
        )

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if api_key := os.environ.get(self._openai.api_key_env):
            headers["Authorization"] = f"Bearer {api_key}"
        attempts = self._openai.max_retries + 1
        attempt = 0
        while True:
            attempt += 1
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with self._slots, urllib.request.urlopen(request, timeout=self._openai.timeout_seconds) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}: {_error_text(exc)}"
                if exc.code not in RETRYABLE_STATUS:
                    raise BackendError(f"POST {self.url} failed with {problem}") from exc
                retry_after = _retry_after(exc.headers)
            except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout, bad status
                problem = f"cannot connect: {getattr(exc, 'reason', None) or exc!r}"
            else:
                try:
                    return json.loads(payload)
                except ValueError:
                    problem = f"{self.url} answered with something that is not JSON: {payload[:200]!r}"
                    raise BackendError(problem) from None
            if attempt == attempts:
                raise BackendError(f"POST {self.url} failed after {attempts} attempts; last: {problem}")
            delay = BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) if retry_after is None else retry_after
            time.sleep(min(BACKOFF_MAX_SECONDS, delay))


def _error_text(exc: urllib.error.HTTPError) -> str:
    body = exc.read().decode("utf-8", errors="replace")
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300] or exc.reason


def _retry_after(headers: Message) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None
