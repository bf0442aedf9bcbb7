"""Per-user conversation state ("scanned A-01-03, waiting for a quantity") with a TTL, and a per-user lock.

Conversation state is not workflow state: counts, variances and approvals live in the database. This is the
cursor of a chat, and it may expire. Two backends share one contract (tests/integration/test_conversation.py):
``MemoryStore`` for a single process and ``RedisStore`` when several server processes share the work.

Handlers take the lock first, then load the state (aiogram#1317): a photo, a typed quantity and a platform
retry arriving together are processed one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

DEFAULT_TTL = 30 * 60  # a counter who walks away for half an hour starts again


class LockTimeout(Exception):
    pass


class ConversationStore(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, state: dict[str, Any], ttl: float = DEFAULT_TTL) -> None: ...

    async def delete(self, key: str) -> None: ...

    def lock(self, key: str, wait: float = 10.0) -> Any: ...  # an async context manager

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self, clock: Any = time.monotonic) -> None:
        self._data: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._clock = clock

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, raw = item
        if self._clock() >= expires:
            self._data.pop(key, None)
            return None
        return dict(json.loads(raw))

    async def set(self, key: str, state: dict[str, Any], ttl: float = DEFAULT_TTL) -> None:
        self._data[key] = (self._clock() + ttl, json.dumps(state, ensure_ascii=False, default=str))

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    @asynccontextmanager
    async def lock(self, key: str, wait: float = 10.0) -> AsyncIterator[None]:
        lk = self._locks.setdefault(key, asyncio.Lock())
        try:
            await asyncio.wait_for(lk.acquire(), wait)
        except TimeoutError as exc:
            raise LockTimeout(key) from exc
        try:
            yield
        finally:
            lk.release()

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    """States as JSON strings with a TTL; the lock is redis-py's Lock (a token in a key with an expiry)."""

    def __init__(self, url: str, prefix: str = "pandian:conv:") -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._prefix = prefix

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._prefix + key)
        return dict(json.loads(raw)) if raw else None

    async def set(self, key: str, state: dict[str, Any], ttl: float = DEFAULT_TTL) -> None:
        await self._redis.set(
            self._prefix + key, json.dumps(state, ensure_ascii=False, default=str), px=int(ttl * 1000)
        )

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)

    @asynccontextmanager
    async def lock(self, key: str, wait: float = 10.0) -> AsyncIterator[None]:
        from redis.exceptions import LockError

        # the lock expires by itself if its holder dies (twice the wait, so a live holder keeps it)
        lk = self._redis.lock(f"{self._prefix}lock:{key}", timeout=max(wait * 2, 5), blocking_timeout=wait)
        if not await lk.acquire():
            raise LockTimeout(key)
        try:
            yield
        finally:
            with contextlib.suppress(LockError):  # it expired while we worked: nothing to release
                await lk.release()

    async def close(self) -> None:
        await self._redis.aclose()


def make_store(redis_url: str | None) -> ConversationStore:
    return RedisStore(redis_url) if redis_url else MemoryStore()
