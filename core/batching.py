"""Group commit: many callers, one transaction per batch.

``GroupCommit(flush).submit(item)`` returns that item's result from ``flush(items)``, which is called with
every item that arrived while the previous flush ran. No timer: an item that arrives at an idle moment is
flushed at once, alone; under load, batches grow by themselves (a commit costs the same for 1 row or 200).
This is what the webhook's durable dedup and the outbox's bookkeeping use, so 200 callbacks a second cost
a few transactions a second instead of 200 (on SQLite, each a turn at the single write lock).

``flush`` must return one result per item, in order. If it raises, every item of that batch gets the
exception (the caller answers 500 and the platform retries; nothing was half-written: one transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = 500) -> None:
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        # shield: a caller that gives up (client disconnected) must not cancel the batch for everyone else
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        """Wait for what was submitted to be flushed."""
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
