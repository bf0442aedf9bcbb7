"""HTTP for the ERP connectors: one aiohttp session, timeouts, error classes, and no credentials in logs.

- Timeouts, dropped connections and HTTP 5xx become ``ErpUnavailable``. Reads are repeated a few times at once
  (``read_retries``, doubling ``retry_backoff_s``); writes never are: whether the ERP did a write whose answer
  was lost is for the posting code to find out (it looks the document up before trying again).
- Logs carry the method and the path only: query strings hold tokens (U8, YonBIP), bodies hold passwords
  (Kingdee login), and every configured secret is masked in any text that leaves this module.
- JSON is parsed with ``Decimal`` for numbers; an unreadable body is ``ErpBadResponse`` with a short, masked
  excerpt of what came back.
- ``Login`` holds what a connector logs in with (a token, a session id, a CSRF token): fetched once under a
  lock, renewed shortly before it expires, and when the ERP refuses it, dropped and the call repeated once
  with a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from integrations.erp.base import Connector, ErpBadResponse, ErpSessionExpired, ErpUnavailable

REFRESH_MARGIN_S = 300.0  # a token that expires is renewed this long before it does
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def json_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def dumps(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, default=json_default)


class Http:
    def __init__(
        self,
        system: str,
        label: str,
        *,
        timeout_s: float,
        read_retries: int,
        retry_backoff_s: float,
        secrets: Callable[[], Iterable[str | None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.system, self.label = system, label
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.read_retries, self.retry_backoff_s = read_retries, retry_backoff_s
        self._secrets, self._sleep = secrets, sleep
        self._session: aiohttp.ClientSession | None = None
        self.log = logging.getLogger(f"pandian.erp.{system}")
        self.requests = 0  # for reports and tests

    @classmethod
    def of(
        cls,
        connector: Connector,
        *,
        secrets: Callable[[], Iterable[str | None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Http:
        """The connector's HTTP, with the timeout and read retries of its ``[erp]`` settings."""
        erp = connector.erp
        return cls(connector.system, connector.label, timeout_s=erp.timeout_s, read_retries=erp.read_retries,
                   retry_backoff_s=erp.retry_backoff_s, secrets=secrets, sleep=sleep)  # fmt: skip

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # unsafe: keep cookies from IP-address hosts too (on-premise ERPs are often reached by address)
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, cookie_jar=aiohttp.CookieJar(unsafe=True)
            )
        return self._session

    def forget_cookies(self) -> None:
        if self._session is not None:
            self._session.cookie_jar.clear()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def mask(self, text: str) -> str:
        for s in self._secrets():
            if s and len(s) >= 4:
                text = text.replace(s, "***")
        return text

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        write: bool = False,
    ) -> Response:
        """One request (a read is repeated after timeouts and 5xx; a write never)."""
        tries = 1 if write else 1 + self.read_retries
        hdrs = dict(headers or {})
        data: str | None = None
        if body is not None:
            data = dumps(body)
            hdrs.setdefault("Content-Type", "application/json; charset=utf-8")
        path = urlsplit(url).path
        last: ErpUnavailable | None = None
        for i in range(tries):
            if i:
                await self._sleep(self.retry_backoff_s * 2 ** (i - 1))
            self.requests += 1
            try:
                async with self.session.request(method, url, params=params, data=data, headers=hdrs) as resp:
                    raw = await resp.read()
                    status, rh = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                what = type(exc).__name__
                self.log.info("%s %s: %s", method, path, what)
                last = ErpUnavailable(
                    f"{self.label} 无响应或连接中断（{what}）"
                    + ("，结果未知，下次会先查询再决定" if write else ""),
                    f"{self.label} did not answer ({what})"
                    + ("; the outcome is unknown, the next attempt looks it up first" if write else ""),
                    code="timeout" if isinstance(exc, TimeoutError) else "connection",
                )
                continue
            self.log.debug("%s %s -> %s", method, path, status)
            if status >= 500:
                last = ErpUnavailable(
                    f"{self.label} 服务器错误 HTTP {status}：{self.excerpt(raw)}",
                    f"{self.label} server error HTTP {status}: {self.excerpt(raw)}",
                    code=str(status),
                )
                continue
            return Response(status, rh, raw)
        assert last is not None
        raise last

    def excerpt(self, raw: bytes, n: int = 160) -> str:
        return self.mask(raw[:n].decode("utf-8", "replace")).replace("\n", " ")

    def parse(self, resp: Response, what: str) -> Any:
        """The JSON body (numbers as ``Decimal``), or ``ErpBadResponse`` quoting the start of the body."""
        try:
            return json.loads(resp.body.decode("utf-8"), parse_float=Decimal)
        except (UnicodeDecodeError, ValueError):
            raise ErpBadResponse(
                f"{self.label} 对 {what} 的回答不是有效的 JSON（HTTP {resp.status}）：{self.excerpt(resp.body)}",
                f"{self.label} answered {what} with malformed JSON (HTTP {resp.status}): {self.excerpt(resp.body)}",
                code="malformed",
            ) from None


class Login:
    """What a connector logs in with: a token or a session id.

    ``fetch`` logs in and answers the value with the seconds it lives (None: until the ERP refuses it). The value
    is fetched under a lock, so calls that need it at once log in once, and renewed ``REFRESH_MARGIN_S`` before
    it expires. ``forget`` runs when a refused value is dropped (a session's cookies go with it)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float | None]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        forget: Callable[[], None] | None = None,
    ) -> None:
        self._fetch, self._clock, self._forget = fetch, clock, forget
        self._lock = asyncio.Lock()
        self.value: str | None = None
        self._expires: float | None = None
        self.count = 0  # logins so far (for reports and tests)

    async def get(self) -> str:
        async with self._lock:
            if self.value and (self._expires is None or self._clock() < self._expires - REFRESH_MARGIN_S):
                return self.value
            value, lives_s = await self._fetch()
            self.value, self._expires = value, None if lives_s is None else self._clock() + lives_s
            self.count += 1
            return value

    async def drop(self, value: str) -> None:
        """Forget ``value`` (the ERP refused it), unless another call has replaced it already."""
        async with self._lock:
            if self.value == value:
                self.value = None
                if self._forget is not None:
                    self._forget()

    async def renewing(self, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(value)``; when it raises ``ErpSessionExpired`` (the ERP refused the value and did nothing), the
        value is dropped and the call repeated once with a new one."""
        for again in (False, True):
            value = await self.get()
            try:
                return await call(value)
            except ErpSessionExpired:
                await self.drop(value)
                if again:
                    raise
        raise AssertionError("unreachable")
