"""What every benchmark needs: a fresh process per measurement, event-loop lag, peak memory, the machine's name."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import resource
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not produce a trustworthy figure; the message says why."""


# -- a fresh process per measurement ---------------------------------------------------------------------------------


def _call_and_send(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send((True, fn(*args)))
    except BaseException:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def run_in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a newly spawned process, so its memory peak and CPU are its own; raises BenchError with the
    child's traceback when it fails or dies."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_call_and_send, args=(sender, fn, args), name=fn.__name__)
    process.start()
    sender.close()  # so that recv() sees EOF if the child dies without answering
    try:
        ok, payload = receiver.recv()
    except EOFError:
        process.join()
        raise BenchError(f"{fn.__name__} died in its process (exit code {process.exitcode})") from None
    finally:
        receiver.close()
    process.join()
    if not ok:
        raise BenchError(f"{fn.__name__} failed in its process:\n{payload}")
    return payload


# -- event-loop lag --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagSummary:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class LoopLagProbe:
    """While active, sleeps `interval` seconds over and over on the running loop and records how late each wake-up
    was: the time other callbacks held the loop. Use as `async with LoopLagProbe() as probe: ...`."""

    def __init__(self, interval: float = 0.005) -> None:
        if interval <= 0:
            raise ValueError(f"probe interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self.lags: list[float] = []  # seconds
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - expected))

    def summary(self) -> LagSummary:
        if not self.lags:
            raise BenchError("the loop-lag probe never woke up: the measured run was shorter than one interval")
        p50, p99 = np.percentile(self.lags, [50, 99]) * 1000
        return LagSummary(len(self.lags), float(p50), float(p99), max(self.lags) * 1000)


# -- CPU time and memory -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """getrusage of this process and of its finished (waited-for) child processes."""

    cpu_s: float  # user + system
    children_cpu_s: float  # summed over the children
    peak_rss_mb: float
    children_peak_rss_mb: float  # the largest child's peak


def usage() -> Usage:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return Usage(
        me.ru_utime + me.ru_stime,
        children.ru_utime + children.ru_stime,
        me.ru_maxrss / 1024,  # Linux gives KiB
        children.ru_maxrss / 1024,
    )


# -- the machine -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    cpus: int  # usable by this process (what nproc prints)
    cpu_model: str
    python: str

    def describe(self) -> str:
        return f"{self.cpus} CPUs ({self.cpu_model}), Python {self.python}"


def machine() -> Machine:
    cpu_model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    return Machine(len(os.sched_getaffinity(0)), cpu_model, platform.python_version())
