"""Platform access tokens, cached and shared: one ``TokenKeeper`` per channel, one ``TokenCache`` per server.

WeCom (``gettoken``), Feishu (``tenant_access_token``) and DingTalk (``accessToken``) all hand out a token that
lives about two hours, and each channel refreshes it once when an API call refuses it (the expiry codes, see
shared/research/platforms.md §1.3, §2.3, §3.3). With several server processes, each used to fetch its own and
a refresh in one went unseen by the others. The keeper does the get-or-fetch; the channel keeps only what is
platform-specific, a ``fetch`` that calls the token API and answers ``(token, seconds it lives)``.

``TokenKeeper.get(stale=…)``, under a local lock:

1. the token it holds, while more than ``margin_s`` of its life remains and it is not ``stale`` (the token the
   API just refused);
2. otherwise the shared cache's token on the same terms (another process may have refreshed it);
3. otherwise it takes the cache's refresh lock (waiting a short while: several processes refreshing at once
   fetch once), looks in the cache again, and only then fetches and stores the new token in the cache. A lock
   not obtained in time does not stop it: it fetches anyway.

Two caches share that contract: ``MemoryTokenCache`` (one process; a channel's default, today's behaviour)
and ``RedisTokenCache`` (``redis.asyncio``; keys ``pandian:token:<platform>:<app id>:<fingerprint>``, see
``token_key``; the value is the token with its expiry as Unix time, and the key's TTL is that expiry). A Redis
that is down costs sharing, never sending: the keeper logs it and fetches as a single process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("pandian.tokens")

Fetch = Callable[[], Awaitable[tuple[str, float]]]  # -> (token, seconds it lives from the request)


def token_key(platform: str, app_id: str, *, endpoint: str, secret: str) -> str:
    """``<platform>:<app id>:<fingerprint>``. The fingerprint, a digest of the API endpoint and the secret
    (never the secret itself), keeps apart tokens that share an app id but not an issuer: a sandbox or test
    server (``pandian demo``, a fake on another port) and the real platform, or a secret before and after it
    was reset."""
    digest = hashlib.sha256(f"{endpoint.rstrip('/')}\n{secret}".encode()).hexdigest()[:12]
    return f"{platform}:{app_id}:{digest}"


class TokenCacheUnavailable(Exception):
    """The shared cache could not be reached: the keeper falls back to fetching on its own."""


@dataclass(frozen=True)
class CachedToken:
    token: str
    ttl_s: float  # seconds of life left, counted by the cache


class TokenCache(Protocol):
    async def get(self, key: str) -> CachedToken | None: ...

    async def put(self, key: str, token: str, ttl_s: float) -> None: ...

    def refresh_lock(self, key: str) -> AbstractAsyncContextManager[bool]:
        """Held while one keeper refreshes ``key``; yields False when it was not obtained in time."""
        ...

    async def close(self) -> None: ...


class MemoryTokenCache:
    """Tokens in this process, with their expiry on ``clock`` (a channel passes its own)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, lock_wait_s: float = 5.0) -> None:
        self._clock = clock
        self._lock_wait_s = lock_wait_s
        self._tokens: dict[str, tuple[str, float]] = {}  # key -> (token, expires at)
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str) -> CachedToken | None:
        item = self._tokens.get(key)
        if item is None:
            return None
        ttl_s = item[1] - self._clock()
        return CachedToken(item[0], ttl_s) if ttl_s > 0 else None

    async def put(self, key: str, token: str, ttl_s: float) -> None:
        self._tokens[key] = (token, self._clock() + ttl_s)

    @asynccontextmanager
    async def refresh_lock(self, key: str) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), self._lock_wait_s)
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    async def close(self) -> None:
        self._tokens.clear()


class RedisTokenCache:
    """Tokens shared by every process on one Redis: ``{"token", "expires_at"}`` (Unix time) under a key whose
    TTL is that expiry. Redis errors become ``TokenCacheUnavailable``; the client fails fast (one retry, short
    timeouts), because fetching the token ourselves is always the way out."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "pandian:token:",
        lock_wait_s: float = 5.0,
        lock_ttl_s: float = 30.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._lock_wait_s, self._lock_ttl_s = lock_wait_s, lock_ttl_s
        self._wall = wall

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "pandian:token:", timeout_s: float = 2.0, lock_wait_s: float = 5.0
    ) -> RedisTokenCache:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix=prefix, lock_wait_s=lock_wait_s)

    async def get(self, key: str) -> CachedToken | None:
        from redis.exceptions import RedisError

        try:
            raw = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            raise TokenCacheUnavailable(f"get {self._prefix}{key}: {type(exc).__name__}: {exc}") from exc
        if not raw:
            return None
        try:
            value = json.loads(raw)
            token, expires_at = value["token"], float(value["expires_at"])
        except (ValueError, TypeError, KeyError):
            return None  # not ours to read: a new token is fetched and overwrites it
        ttl_s = expires_at - self._wall()
        return CachedToken(token, ttl_s) if isinstance(token, str) and token and ttl_s > 0 else None

    async def put(self, key: str, token: str, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        if ttl_s <= 0:
            return
        value = json.dumps({"token": token, "expires_at": self._wall() + ttl_s})
        try:
            await self._redis.set(self._prefix + key, value, px=max(int(ttl_s * 1000), 1))
        except (RedisError, OSError) as exc:
            raise TokenCacheUnavailable(f"set {self._prefix}{key}: {type(exc).__name__}: {exc}") from exc

    @asynccontextmanager
    async def refresh_lock(self, key: str) -> AsyncIterator[bool]:
        from redis.exceptions import RedisError

        # the lock expires by itself if its holder dies mid-fetch
        lock = self._redis.lock(
            f"{self._prefix}lock:{key}", timeout=self._lock_ttl_s, blocking_timeout=self._lock_wait_s
        )
        try:
            held = bool(await lock.acquire())
        except (RedisError, OSError) as exc:
            raise TokenCacheUnavailable(f"lock {self._prefix}{key}: {type(exc).__name__}: {exc}") from exc
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(RedisError, OSError):  # expired or unreachable: it expires anyway
                    await lock.release()

    async def close(self) -> None:
        await self._redis.aclose()


class TokenKeeper:
    """One channel's token: held locally, shared through ``cache``, fetched with ``fetch`` (module docstring).

    ``clock`` measures the life of the token held here (a channel's monotonic clock); the cache measures its
    own."""

    def __init__(
        self,
        cache: TokenCache,
        key: str,
        fetch: Fetch,
        *,
        margin_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache, self._key, self._fetch = cache, key, fetch
        self._margin_s = margin_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    async def get(self, *, stale: str | None = None) -> str:
        async with self._lock:
            if self._token is not None and self._usable(self._token, self._expires_at - self._clock(), stale):
                return self._token
            try:
                found = await self._shared(stale)
                if found is None:
                    async with self._cache.refresh_lock(self._key):
                        # obtained or not, look again: the holder may have stored a new token meanwhile
                        found = await self._shared(stale)
                        if found is None:
                            found = await self._fetch_and_share()
            except TokenCacheUnavailable as exc:
                log.warning("token cache unavailable, fetching the %s token unshared: %s", self._key, exc)
                found = await self._fetch_now()
            self._token, self._expires_at = found.token, self._clock() + found.ttl_s
            return found.token

    def _usable(self, token: str, ttl_s: float, stale: str | None) -> bool:
        return token != stale and ttl_s > self._margin_s

    async def _shared(self, stale: str | None) -> CachedToken | None:
        found = await self._cache.get(self._key)
        return found if found is not None and self._usable(found.token, found.ttl_s, stale) else None

    async def _fetch_and_share(self) -> CachedToken:
        fetched = await self._fetch_now()
        try:
            await self._cache.put(self._key, fetched.token, fetched.ttl_s)
        except TokenCacheUnavailable as exc:
            log.warning("token cache unavailable, the new %s token is not shared: %s", self._key, exc)
        return fetched

    async def _fetch_now(self) -> CachedToken:
        started = self._clock()
        token, lives_s = await self._fetch()
        return CachedToken(token, lives_s - (self._clock() - started))  # its life counted from the request
