"""Per-host politeness: a bounded number of requests in flight and a minimum interval between request starts."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _HostGate:
    def __init__(self, concurrency: int, interval: float) -> None:
        self.semaphore = asyncio.Semaphore(concurrency)
        self.interval = interval
        self.next_start = 0.0

    async def wait_turn(self) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_start)
        # Claim the slot before sleeping so that concurrent waiters queue up behind each other.
        self.next_start = start + self.interval
        await asyncio.sleep(start - now)


class HostThrottle:
    """At most `concurrency` requests in flight and `rate` request starts per second, for each host."""

    def __init__(self, *, concurrency: int, rate: float) -> None:
        self._concurrency = concurrency
        self._interval = 1.0 / rate
        self._gates: dict[str, _HostGate] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = _HostGate(self._concurrency, self._interval)
        async with gate.semaphore:
            await gate.wait_turn()
            yield
