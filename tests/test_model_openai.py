"""The OpenAI-compatible backend against a real aiohttp server on 127.0.0.1 speaking the chat-completions API."""

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from model.analyzer import Analyzer
from model.backends.base import BackendError
from model.backends.openai_compat import TOP_LOGPROBS, OpenAIBackend
from model.prompt import build_prompt
from model.schema import output_json_schema
from model.settings import ModelSettings, OpenAISettings

ARTICLE = "Apple launched generative AI features across iPhone and Mac, positioning Apple Intelligence against ChatGPT."
# What llama-server streams back for Gemma, token by token, with the alternatives it considered at the polarity.
TOKENS = [
    '[{"', "entity", '":', ' "', "Apple", '",', ' "', "polar", "ity", '":', ' "', "+", '",', ' "', "category",
    '":', ' "', "News", "Release", '"},', ' {"', "entity", '":', ' "', "Chat", "GPT", '",', ' "', "polar", "ity",
    '":', ' "', "-", '",', ' "', "category", '":', ' "', "News", "Release", '"}]',
]  # fmt: skip
ALTERNATIVES = {
    11: [("+", -0.22), ('+"', -2.9), ("-", -1.9), ("0", -3.1), ("~", -4.6), ("Apple", -7.0)],
    32: [("-", -0.51), ("+", -1.4), ("0", -2.2), ('0"', -3.3), ("~", -3.9)],
}


def completion(tokens: list[str], finish_reason: str = "stop") -> dict:
    steps = []
    for index, token in enumerate(tokens):
        alternatives = ALTERNATIVES.get(index, [(token, -0.01), ("}", -5.2)])
        logprob = dict(alternatives).get(token, -0.01)
        steps.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives],
            }
        )
    return {
        "id": "chatcmpl-8d1c",
        "object": "chat.completion",
        "created": 1732160000,
        "model": "gemma-3-270m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": {"content": steps},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": 412,
            "completion_tokens": len(tokens),
            "total_tokens": 412 + len(tokens),
            "prompt_tokens_details": {"cached_tokens": 398},
        },
    }


class ChatServer:
    """Answers POST /v1/chat/completions from a script of reply kinds, one per request ("ok" once it runs out)."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        kind = self.script.pop(0) if self.script else "ok"
        if kind == "ok":
            return web.json_response(completion(TOKENS))
        if kind == "slow":  # holds the request a moment, so concurrent callers overlap
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            await asyncio.sleep(0.05)
            self.in_flight -= 1
            return web.json_response(completion(TOKENS))
        if kind == "truncated":
            return web.json_response(completion(TOKENS[:17], finish_reason="length"))
        if kind == "repeated":  # Apple twice, same category
            return web.json_response(completion([*TOKENS[:19], '"},', ' {"', *TOKENS[1:19], '"}]']))
        if kind == "short-logprobs":  # a server whose logprobs stop before its content does
            reply = completion(TOKENS)
            reply["choices"][0]["logprobs"]["content"] = reply["choices"][0]["logprobs"]["content"][:20]
            return web.json_response(reply)
        if kind == "no-logprobs":
            reply = completion(TOKENS)
            reply["choices"][0]["logprobs"] = None
            return web.json_response(reply)
        if kind == "not-json":
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        status = int(kind)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = {"error": {"message": f"canned {status}", "type": kind}}
        return web.json_response(error, status=status, headers={"Retry-After": "0"})


@pytest.fixture
async def chat_server() -> AsyncIterator[tuple[ChatServer, str]]:
    server = ChatServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def backend_for(base_url: str, **openai: object) -> OpenAIBackend:
    # A generous timeout: no test here waits on one, and a busy CI machine once stalled a loopback reply past 5 s.
    settings = OpenAISettings(base_url=base_url, model="gemma-3-270m", timeout_seconds=30, **openai)
    return OpenAIBackend(ModelSettings(backend="openai", openai=settings))


def share(values: list[float], others: list[float]) -> float:
    return sum(map(math.exp, values)) / sum(map(math.exp, values + others))


async def test_success_gives_scores_from_top_logprobs(chat_server, monkeypatch):
    server, url = chat_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    analyzer = Analyzer(backend_for(url), link=lambda entity, hints: {"Apple": "AAPL"}.get(entity))
    result = await asyncio.to_thread(analyzer.analyze, ARTICLE, ticker_hints=("AAPL",))
    assert result.ok and result.attempts == 1 and result.error is None
    assert result.model == "openai:gemma-3-270m" and result.prompt_tokens == 412
    apple, chatgpt = result.entities
    assert (apple.entity, apple.polarity, apple.category, apple.ticker) == ("Apple", "+", "NewsRelease", "AAPL")
    p_plus, p_minus = share([-0.22, -2.9], [-1.9, -3.1, -4.6]), share([-1.9], [-0.22, -2.9, -3.1, -4.6])
    assert apple.confidence == pytest.approx(p_plus)
    assert apple.score == pytest.approx(p_plus - p_minus)
    assert chatgpt.ticker is None and chatgpt.polarity == "-"
    assert chatgpt.confidence == pytest.approx(share([-0.51], [-1.4, -2.2, -3.3, -3.9]))

    [request] = server.requests
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "entity_sentiments", "schema": output_json_schema()},
    }
    assert request["logprobs"] is True and request["top_logprobs"] == TOP_LOGPROBS
    assert request["temperature"] == 0 and request["model"] == "gemma-3-270m"
    assert request["messages"][-1] == {"role": "user", "content": "Article:\n" + ARTICLE}
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


async def test_cached_prompt_tokens_are_reported(chat_server):
    _, url = chat_server
    backend = backend_for(url)
    generation = await asyncio.to_thread(backend.generate, build_prompt(ARTICLE, tokenizer_count=backend.count_tokens))
    assert (generation.prompt_tokens, generation.prompt_tokens_evaluated) == (412, 14)


async def test_concurrency_is_capped_across_threads(chat_server):
    server, url = chat_server
    server.script = ["slow"] * 6
    analyzer = Analyzer(backend_for(url, concurrency=2))
    results = await asyncio.gather(*(asyncio.to_thread(analyzer.analyze, ARTICLE) for _ in range(6)))
    assert all(result.ok for result in results) and len(server.requests) == 6
    assert server.most_in_flight <= 2


async def test_rate_limit_is_retried_then_succeeds(chat_server):
    server, url = chat_server
    server.script = ["429", "503", "ok"]
    result = await asyncio.to_thread(Analyzer(backend_for(url, max_retries=2)).analyze, ARTICLE)
    assert result.ok and len(server.requests) == 3


async def test_invalid_json_output_is_retried_once_then_reported(chat_server):
    server, url = chat_server
    server.script = ["truncated", "truncated"]
    result = await asyncio.to_thread(Analyzer(backend_for(url)).analyze, ARTICLE)
    assert not result.ok and result.attempts == 2 and len(server.requests) == 2
    assert result.entities == []
    assert result.raw_output == "".join(TOKENS[:17])
    assert "not valid JSON" in result.error


async def test_repeated_mention_counts_once(chat_server):
    server, url = chat_server
    server.script = ["repeated"]
    result = await asyncio.to_thread(Analyzer(backend_for(url)).analyze, ARTICLE)
    assert result.ok and result.raw_output.count('"Apple"') == 2
    [apple] = result.entities
    assert apple.confidence == pytest.approx(share([-0.22, -2.9], [-1.9, -3.1, -4.6]))  # the first one's


async def test_probabilities_missing_for_a_mention_fail_validation(chat_server):
    server, url = chat_server
    server.script = ["short-logprobs", "short-logprobs"]
    result = await asyncio.to_thread(Analyzer(backend_for(url)).analyze, ARTICLE)
    assert not result.ok and result.attempts == 2
    assert result.error == "2 mentions but token probabilities for 1 polarity values"


async def test_server_errors_past_the_retry_budget_name_the_url_and_status(chat_server):
    server, url = chat_server
    server.script = ["503", "503"]
    with pytest.raises(BackendError, match=r"chat/completions failed after 2 attempts; last: HTTP 503: canned 503"):
        await asyncio.to_thread(Analyzer(backend_for(url, max_retries=1)).analyze, ARTICLE)


async def test_client_error_is_not_retried(chat_server):
    server, url = chat_server
    server.script = ["400"]
    with pytest.raises(BackendError, match="failed with HTTP 400: canned 400"):
        await asyncio.to_thread(Analyzer(backend_for(url)).analyze, ARTICLE)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [("no-logprobs", "returned no logprobs"), ("not-json", "answered with something that is not JSON")],
)
async def test_unusable_replies_are_clear_errors(chat_server, kind, message):
    server, url = chat_server
    server.script = [kind]
    with pytest.raises(BackendError, match=message):
        await asyncio.to_thread(Analyzer(backend_for(url)).analyze, ARTICLE)


def test_unreachable_server_is_a_clear_error(unused_tcp_port):
    backend = backend_for(f"http://127.0.0.1:{unused_tcp_port}/v1", max_retries=0)
    with pytest.raises(BackendError, match="failed after 1 attempts; last: cannot connect"):
        backend.generate(build_prompt(ARTICLE, tokenizer_count=backend.count_tokens))


def test_adapter_files_are_refused():
    backend = backend_for("http://127.0.0.1:9/v1")
    backend.set_adapter(None)
    with pytest.raises(BackendError, match="cannot load adapter files"):
        backend.set_adapter("lora.gguf")
    assert backend.adapter is None
    with pytest.raises(BackendError, match="cannot load adapter files"):  # `sentimon eval --adapter v003` with it
        OpenAIBackend(ModelSettings(backend="openai").model_copy(update={"adapter": "lora.gguf"}))
