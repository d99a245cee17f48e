"""Model benchmark: seconds per article through `Analyzer.analyze` against the bare llama.cpp bound, in one run.

    python -m bench.model [--threads 2] [--articles 6] [--passes 2] [--json out.json] [--markdown]

Ours is the whole path the pipeline takes for one article: prompt build, grammar-constrained decoding with the
polarity logits processor, validation (and its retry, if any), linking. The bound is a plain `llama_cpp.Llama` on
the same GGUF with the same threads and context, doing the least llama.cpp must do for the same answer: the same
head evaluated once and kept in the KV cache, the article's tokens on top of it, and greedy generation of exactly
as many tokens as ours sampled (its completion plus the end token), with no grammar and no logits processor.
Ours and the bound alternate article by article, so both see the same machine load; ratio = bound / ours. When
ours retries (invalid first output), the bound generates the tokens of both attempts on the retry's prompt.

The prefix-cache gain is measured on the bound's model: the full prompt evaluated from an empty cache against
the article tokens evaluated on top of the cached head. Every article runs `--passes` times: the later passes
check that the output is identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from bench._common import Machine, machine
from model.analyzer import MIN_RETRY_INPUT_TOKENS, AnalysisResult, Analyzer
from model.backends.llama_cpp import LlamaCppBackend
from model.prompt import build_prompt
from model.settings import ModelSettings

# Headline and lead, as a feed gives them.
ARTICLES = [
    ("Tesla shares slump after quarterly deliveries miss expectations",
     "Tesla delivered 384,122 vehicles in the first quarter, below the 449,000 analysts expected, as price cuts "
     "failed to lift demand in China and Europe."),
    ("Microsoft completes $68.7 billion acquisition of Activision Blizzard",
     "The deal closed after the UK competition regulator approved a restructured agreement that hands cloud "
     "streaming rights to Ubisoft."),
    ("FTC sues Amazon, alleging it illegally maintains monopoly power",
     "The Federal Trade Commission and 17 states accuse Amazon of punishing sellers who offer lower prices "
     "elsewhere and of pushing them to use its logistics service."),
    ("Nvidia hires former Intel executive to lead data center sales",
     "The chipmaker named a 20-year Intel veteran as senior vice president as it expands its sales team for AI "
     "accelerators."),
    ("JPMorgan profit beats estimates as trading revenue jumps",
     "JPMorgan Chase reported second-quarter earnings of $4.37 a share, above the $4.19 expected, while Wells "
     "Fargo set aside more for bad loans."),
    ("WeWork files for bankruptcy after failing to restructure leases",
     "The flexible office provider listed liabilities of $18.6 billion; SoftBank, its largest shareholder, "
     "will write down its stake."),
    ("Pfizer cuts full-year revenue forecast on weak Covid product sales",
     "Pfizer lowered its 2023 outlook by $9 billion as demand for Paxlovid and its vaccine fell; shares dropped "
     "4% before the bell."),
    ("Apple names new chief operating officer as Jeff Williams retires",
     "Sabih Khan, who has run Apple's supply chain, takes over the role; analysts expect no change in strategy."),
]


@dataclass(frozen=True)
class ArticleRun:
    title: str
    prompt_tokens: int
    evaluated_tokens: int  # prompt tokens on top of the cached head
    completion_tokens: int
    attempts: int
    ours_s: float  # median over passes
    bound_s: float
    cold_prompt_s: float  # full prompt from an empty cache
    warm_prompt_s: float  # article tokens on top of the cached head
    ok: bool
    identical: bool  # every pass gave the same output


@dataclass(frozen=True)
class ModelBenchResult:
    machine: Machine
    model: str
    threads: int
    context_tokens: int
    head_tokens: int
    passes: int
    load_s: float
    load_average: tuple[float, float, float]
    articles: list[ArticleRun]

    @property
    def ours_s(self) -> float:
        return statistics.median(a.ours_s for a in self.articles)

    @property
    def bound_s(self) -> float:
        return statistics.median(a.bound_s for a in self.articles)

    @property
    def ratio(self) -> float:
        return sum(a.bound_s for a in self.articles) / sum(a.ours_s for a in self.articles)


class Bound:
    """The bare llama.cpp path: the same model file, threads and context as the backend, nothing on top."""

    def __init__(self, backend: LlamaCppBackend, settings: ModelSettings) -> None:
        from llama_cpp import Llama  # after `model`, which sets how llama.cpp's threads wait (model/__init__.py)

        self._backend = backend
        with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp's loading chatter, as the backend does
            self._llm = Llama(
                str(backend.model_path), n_ctx=settings.context_tokens, n_threads=settings.threads,
                n_threads_batch=settings.threads, seed=settings.seed, swa_full=True, verbose=False,
            )
        self._max_output = settings.max_output_tokens
        self._budget = settings.max_input_tokens

    def split(self, result: AnalysisResult, text: str, title: str) -> tuple[list[int], list[int]]:
        """(head, rest) tokens of the prompt ours ran last, tokenized as the backend does."""
        # The analyzer's retry, if it took one, halved the article budget.
        budget = self._budget if result.attempts == 1 else max(self._budget // 2, MIN_RETRY_INPUT_TOKENS)
        prompt = build_prompt(text, title=title, tokenizer_count=self._backend.count_tokens, max_tokens=budget)
        head, document, tail = prompt.segments(self._backend.chat_template)
        tokenize = self._llm.tokenize
        head_tokens = tokenize(head.encode(), add_bos=True, special=True)
        rest = tokenize(document.encode(), add_bos=False, special=False) + tokenize(
            tail.encode(), add_bos=False, special=True
        )
        return head_tokens, rest

    def warm(self, head: list[int]) -> None:
        self._llm.reset()
        self._llm.eval(head)

    def generate(self, head: list[int], rest: list[int], completion_tokens: int) -> float:
        """Seconds to evaluate `rest` on the cached head and sample as many tokens as ours did (its completion,
        plus the end token it stopped at when it did not hit the output cap)."""
        samples = completion_tokens + (completion_tokens < self._max_output)
        self._llm.n_tokens = len(head)
        started = time.perf_counter()
        for produced, _ in enumerate(self._llm.generate(head + rest, temp=0.0, top_k=1, repeat_penalty=1.0), 1):
            if produced >= samples:
                break
        return time.perf_counter() - started

    def prompt_costs(self, head: list[int], rest: list[int]) -> tuple[float, float]:
        """(full prompt from an empty cache, rest on the cached head) in seconds; leaves the head cached."""
        self._llm.reset()
        started = time.perf_counter()
        self._llm.eval(head + rest)
        cold = time.perf_counter() - started
        self._llm.n_tokens = len(head)
        started = time.perf_counter()
        self._llm.eval(rest)
        return cold, time.perf_counter() - started


def run_benchmark(threads: int, articles: int, passes: int) -> ModelBenchResult:
    settings = ModelSettings(threads=threads)
    started = time.perf_counter()
    analyzer = Analyzer.from_settings(settings)
    load_s = time.perf_counter() - started
    backend = analyzer.backend
    assert isinstance(backend, LlamaCppBackend)
    bound = Bound(backend, settings)
    runs = []
    for title, lead in ARTICLES[:articles]:
        ours, bounds, results = [], [], []
        for _ in range(passes):
            result = analyzer.analyze(lead, title=title)
            results.append(result)
            ours.append(result.latency_ms / 1000)
            head, rest = bound.split(result, lead, title)
            if not bounds:
                bound.warm(head)
            bounds.append(bound.generate(head, rest, result.completion_tokens))
        cold, warm = bound.prompt_costs(head, rest)
        first = results[0]
        runs.append(ArticleRun(
            title=title,
            prompt_tokens=len(head) + len(rest),
            evaluated_tokens=len(rest),
            completion_tokens=first.completion_tokens,
            attempts=first.attempts,
            ours_s=statistics.median(ours),
            bound_s=statistics.median(bounds),
            cold_prompt_s=cold,
            warm_prompt_s=warm,
            ok=first.ok,
            identical=all(_output(r) == _output(first) for r in results),
        ))
    return ModelBenchResult(
        machine(), backend.model_id, threads, settings.context_tokens, backend.head_tokens, passes, load_s,
        os.getloadavg(), runs,
    )


def _output(result: AnalysisResult) -> tuple:
    return result.raw_output, [asdict(e) for e in result.entities]


HEADER = ("article", "prompt tok (on head)", "out tok", "ours s", "bound s", "ratio", "cold / warm prompt ms",
          "valid", "identical")


def _rows(result: ModelBenchResult) -> list[tuple[str, ...]]:
    rows = [
        (
            a.title[:40], f"{a.prompt_tokens} ({a.evaluated_tokens})", str(a.completion_tokens), f"{a.ours_s:.2f}",
            f"{a.bound_s:.2f}", f"{a.bound_s / a.ours_s:.2f}",
            f"{a.cold_prompt_s * 1000:.0f} / {a.warm_prompt_s * 1000:.0f}",
            "yes" if a.ok else f"no ({a.attempts} attempts)", "yes" if a.identical else "no",
        )
        for a in result.articles
    ]
    n = len(result.articles)
    rows.append((
        f"median of {n}", f"{statistics.median(a.prompt_tokens for a in result.articles):.0f} "
        f"({statistics.median(a.evaluated_tokens for a in result.articles):.0f})",
        f"{statistics.median(a.completion_tokens for a in result.articles):.0f}",
        f"{result.ours_s:.2f}", f"{result.bound_s:.2f}", f"{result.ratio:.2f} (of sums)",
        f"{statistics.median(a.cold_prompt_s for a in result.articles) * 1000:.0f} / "
        f"{statistics.median(a.warm_prompt_s for a in result.articles) * 1000:.0f}",
        f"{sum(a.ok for a in result.articles)}/{n}", f"{sum(a.identical for a in result.articles)}/{n}",
    ))
    return rows


def _summary(result: ModelBenchResult) -> str:
    return (
        f"{result.model} on {result.threads} threads, n_ctx {result.context_tokens}, head {result.head_tokens} "
        f"tokens cached; load incl. head warm-up {result.load_s:.1f} s; {result.passes} passes per article "
        f"(times are medians over passes); load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in result.load_average)}."
    )


def markdown(result: ModelBenchResult) -> str:
    return "\n".join([
        f"Machine: {result.machine.describe()}. {_summary(result)}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(result)),
    ])


def table(result: ModelBenchResult) -> Table:
    view = Table(*HEADER, title=f"Analyzer.analyze vs bare llama.cpp, {result.machine.describe()}")
    for row in _rows(result):
        view.add_row(*row)
    return view


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (2)")
    parser.add_argument("--articles", type=int, default=6, help=f"articles, at most {len(ARTICLES)} (6)")
    parser.add_argument("--passes", type=int, default=2, help="runs per article; 2 or more checks determinism (2)")
    parser.add_argument("--json", help="also write the result to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    if not 1 <= args.articles <= len(ARTICLES):
        parser.error(f"--articles must be between 1 and {len(ARTICLES)}, got {args.articles}")
    for name in ("threads", "passes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    console = Console()
    with console.status(f"{args.articles} articles x {args.passes} passes, ours and the bound…"):
        result = run_benchmark(args.threads, args.articles, args.passes)
    console.print(table(result))
    console.print(_summary(result))
    if args.markdown:
        print(markdown(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(asdict(result) | {"ours_s": result.ours_s, "bound_s": result.bound_s, "ratio": result.ratio},
                      out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
