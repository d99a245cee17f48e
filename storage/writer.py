"""The single writer: the only place the daemon opens the database read-write.

Stages submit operations (functions of an open transaction) and await their results. The writer gathers what
arrives within `interval` seconds into one transaction, run in a worker thread, so the file is held for one short
open-write-commit-close per batch and is free for readers in between. If the file is locked by a reader the batch
waits and is tried again: stages block on their awaits (backpressure) and nothing accepted is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb

from storage.db import Database, DatabaseLocked

log = logging.getLogger(__name__)
T = TypeVar("T")
Operation = Callable[[duckdb.DuckDBPyConnection], Any]


@dataclass
class _Pending:
    operation: Operation
    future: asyncio.Future = field(repr=False)


@dataclass
class WriterStats:
    batches: int = 0
    held_seconds: float = 0.0
    lock_waits: int = 0


class StoreWriter:
    def __init__(self, db: Database, *, interval: float = 0.5, max_batch: int = 500) -> None:
        self.db = db
        self.interval = interval
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> StoreWriter:
        self._task = asyncio.create_task(self._run(), name="store-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._queue.put(None)
        if self._task:
            await self._task

    async def submit(self, operation: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(operation, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.interval
            while len(batch) < self.max_batch:
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        while True:
            try:
                results = await asyncio.to_thread(self._apply, [p.operation for p in batch])
                break
            except DatabaseLocked as exc:
                self.stats.lock_waits += 1
                log.warning("database busy, %d writes waiting: %s", len(batch), exc)
            except Exception:  # one bad operation must not take the others with it
                results = [await asyncio.to_thread(self._apply_one, p.operation) for p in batch]
                break
        for pending, outcome in zip(batch, results):
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)

    def _apply(self, operations: list[Operation]) -> list[Any]:
        started = time.monotonic()
        with self.db.write() as conn:
            results = [operation(conn) for operation in operations]
        self.stats.batches += 1
        self.stats.held_seconds += time.monotonic() - started
        return results

    def _apply_one(self, operation: Operation) -> Any:
        while True:
            try:
                return self._apply([operation])[0]
            except DatabaseLocked:
                self.stats.lock_waits += 1
            except Exception as exc:
                log.error("write failed: %s", exc)
                return exc
