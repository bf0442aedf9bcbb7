"""The connection loop the two long connections share: Feishu's WebSocket (:mod:`integrations.feishu.ws`) and
DingTalk's Stream (:mod:`integrations.dingtalk.stream`).

Both open a connection the bot makes itself, read frames until it drops, and connect again; neither SDK's own
loop is used (each module says why). What is the same for both lives here: ``run()`` until ``close()``,
capped exponential back-off with jitter (reset after a connection on which the server spoke), one task per
frame (none taken while closing: the platform delivers those again), a grace period for the frames in hand on
close, reading a socket until it closes, handing a frame's events to ``submit`` and the ``stats``.

A subclass says how to get ready (load its SDK, in a worker thread), which exceptions mean the platform
refused the app, and what one connection is (:meth:`LongConnection._session`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from bot.events import InboundEvent

Submit = Callable[[InboundEvent], Awaitable[bool]]
FrameHandler = Callable[[str | bytes], Awaitable[bool]]


class _Timeouts(Protocol):
    @property
    def request_timeout_s(self) -> float: ...


C = TypeVar("C", bound=_Timeouts)


def utc_now() -> datetime:
    return datetime.now(UTC)


class LongConnection(Generic[C]):
    """One long connection for one app. ``await run()`` until :meth:`close`; it reconnects by itself."""

    label: str  # how the logs name the connection ("feishu long connection")
    platform: str  # who delivers a frame again ("Feishu")
    task_name: str
    trust_env: bool = False  # the HTTP session's proxy settings from the environment
    _log: logging.Logger

    def __init__(
        self,
        cfg: C,
        submit: Submit,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        grace_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg, self._submit = cfg, submit
        self._backoff_initial, self._backoff_max, self._grace = backoff_initial_s, backoff_max_s, grace_s
        self._clock, self._rand = clock, rand
        self._closing = False
        self._main: asyncio.Task[None] | None = None
        self._frames: set[asyncio.Task[None]] = set()
        self.stats = {"connects": 0, "events": 0, "duplicates": 0, "malformed": 0, "submit_errors": 0}

    # -- what a subclass says -----------------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Get ready to connect (load the SDK); called before the first connection."""

    def _refusals(self) -> tuple[type[Exception], ...]:
        """Exceptions from :meth:`_session` that mean the platform refused the app (logged as errors)."""
        return ()

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection, until it drops. True when the server spoke on it."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, deliver events, reconnect after drops; return once :meth:`close` is called."""
        if self._main is not None:
            raise RuntimeError("run() was already called")
        if self._closing:
            return
        self._main = asyncio.create_task(self._loop(), name=self.task_name)
        try:
            await self._main
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._closing or (task is not None and task.cancelling()):
                raise  # cancelled from outside, not by close()

    async def close(self) -> None:
        """Stop taking frames, let those in hand finish (``grace_s``), then close the connection."""
        self._closing = True
        await self._finish_frames()
        if self._main is not None and not self._main.done():
            self._main.cancel()
            await asyncio.wait({self._main})

    async def _finish_frames(self) -> None:
        if self._frames:
            await asyncio.wait(set(self._frames), timeout=self._grace)
        for task in set(self._frames):
            task.cancel()

    def _backoff(self, failures: int) -> float:
        base = min(self._backoff_max, self._backoff_initial * 2 ** min(failures, 32))
        return base * (0.5 + 0.5 * self._rand())

    async def _loop(self) -> None:
        await self._prepare()
        refused = self._refusals()
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=self.trust_env) as http:
            failures = 0
            while not self._closing:
                healthy = False
                try:
                    healthy = await self._session(http)
                except refused as exc:
                    self._log.error("%s refused: %s", self.label, exc)
                except Exception as exc:
                    self._log.warning("%s failed: %r", self.label, exc)
                if self._closing:
                    break
                failures = 0 if healthy else failures + 1
                delay = self._backoff(failures)
                self._log.info("%s: reconnecting in %.1f s", self.label, delay)
                await asyncio.sleep(delay)

    # -- one connection -----------------------------------------------------------------------------------

    async def _receive(self, ws: Any, on_frame: FrameHandler) -> bool:
        """Read ``ws`` until it closes or ``on_frame`` returns True. True when the server spoke on it. The
        caller closes ``ws``."""
        import websockets  # both SDKs' own dependency, loaded with them

        spoke = False
        try:
            async for raw in ws:
                spoke = True
                if await on_frame(raw):
                    break
            else:
                self._log.info("%s closed by the server (%s)", self.label, ws.close_code)
        except websockets.ConnectionClosed as exc:
            self._log.warning("%s dropped: %s", self.label, exc)
        return spoke

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Handle a frame in its own task; none while closing (the platform delivers those frames again)."""
        if self._closing:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._frames.add(task)
        task.add_done_callback(self._frames.discard)

    # -- frames -------------------------------------------------------------------------------------------

    def _malformed(self, message: str, *args: object) -> None:
        self.stats["malformed"] += 1
        self._log.warning("%s: " + message, self.label, *args)

    async def _submit_all(self, events: Sequence[InboundEvent], frame: object) -> list[bool] | None:
        """Hand each of a frame's events to ``submit``: whether each was new, or None when one could not be
        taken (logged; the frame must not be acknowledged, so the platform delivers it again)."""
        accepted: list[bool] = []
        for event in events:
            try:
                new = await self._submit(event)
            except Exception:
                self.stats["submit_errors"] += 1
                self._log.exception("%s: %s (frame %s) not accepted; %s will deliver it again",
                                    self.label, event.dedup_key, frame, self.platform)  # fmt: skip
                return None
            self.stats["events" if new else "duplicates"] += 1
            accepted.append(new)
        return accepted
