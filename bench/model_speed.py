"""Speed of the embedded model (llama_cpp backend): seconds per short article, token counts, prefix-cache gain.

    .venv/bin/python bench/model_speed.py [--threads 2] [--runs 2]

The instruction-and-examples head is evaluated once when the backend loads; each article then evaluates only
its own tokens. The gain is measured with llama.cpp itself: the full prompt evaluated from an empty cache
versus the article part evaluated on top of the cached head.
"""

from __future__ import annotations

import argparse
import statistics
import time

from model.backends.llama_cpp import LlamaCppBackend
from model.prompt import build_prompt
from model.settings import ModelSettings

HEADLINES = [
    "Tesla shares slump after quarterly deliveries miss expectations",
    "Microsoft completes $68.7 billion acquisition of Activision Blizzard",
    "FTC sues Amazon, alleging it illegally maintains monopoly power",
    "Nvidia hires former Intel executive to lead data center sales",
    "JPMorgan profit beats estimates as trading revenue jumps",
    "WeWork files for bankruptcy after failing to restructure leases",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="passes over the headlines")
    args = parser.parse_args()
    settings = ModelSettings(threads=args.threads)

    started = time.perf_counter()
    backend = LlamaCppBackend(settings)
    print(f"load incl. assembly check and head warm-up ({backend.head_tokens} tokens): "
          f"{time.perf_counter() - started:.2f} s")

    seconds, prompt_tokens, evaluated, completion = [], [], [], []
    for _ in range(args.runs):
        for headline in HEADLINES:
            prompt = build_prompt(headline, tokenizer_count=backend.count_tokens)
            started = time.perf_counter()
            generation = backend.generate(prompt)
            seconds.append(time.perf_counter() - started)
            prompt_tokens.append(generation.prompt_tokens)
            evaluated.append(generation.prompt_tokens_evaluated)
            completion.append(generation.completion_tokens)
    print(f"{len(seconds)} short articles on {args.threads} threads: median {statistics.median(seconds):.2f} s, "
          f"min {min(seconds):.2f}, max {max(seconds):.2f}")
    print(f"prompt tokens median {statistics.median(prompt_tokens):.0f} "
          f"(evaluated per article {statistics.median(evaluated):.0f}), "
          f"completion tokens median {statistics.median(completion):.0f} "
          f"({sum(completion) / sum(seconds):.1f} tokens/s overall)")
    cold, warm = prefix_gain(backend, settings)
    print(f"prompt evaluation, first call (empty cache): {cold * 1000:.0f} ms; "
          f"later calls (head cached): {warm * 1000:.0f} ms; saved {cold - warm:.2f} s per article")


def prefix_gain(backend: LlamaCppBackend, settings: ModelSettings) -> tuple[float, float]:
    from llama_cpp import Llama  # after `model`, which sets how llama.cpp's threads wait (model/__init__.py)

    llm = Llama(str(backend.model_path), n_ctx=settings.context_tokens, n_threads=settings.threads,
                n_threads_batch=settings.threads, swa_full=True, verbose=False)
    head, document, tail = build_prompt(HEADLINES[0], tokenizer_count=backend.count_tokens).segments(None)
    head_tokens = llm.tokenize(head.encode(), add_bos=True, special=True)
    rest = llm.tokenize((document + tail).encode(), add_bos=False, special=False)
    colds, warms = [], []
    for _ in range(3):
        llm.reset()
        started = time.perf_counter()
        llm.eval(head_tokens + rest)
        colds.append(time.perf_counter() - started)
        llm.n_tokens = len(head_tokens)
        started = time.perf_counter()
        llm.eval(rest)
        warms.append(time.perf_counter() - started)
    return statistics.median(colds), statistics.median(warms)


if __name__ == "__main__":
    main()
