"""What the fake long-connection servers share (tests/fakes/feishu_ws.py, tests/fakes/dingtalk_stream.py): the
sockets clients hold open, cutting them as a network failure would, and a condition tests wait on for what the
server saw. Each fake says what it sends to a new connection and what it does with a message from the client.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMessage, web


@dataclass
class LongConnectionFake:
    connects: int = 0
    _sockets: list[tuple[web.WebSocketResponse, web.Request]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _changed: asyncio.Condition | None = None

    # -- what tests call --------------------------------------------------------------------------------

    @property
    def connected(self) -> int:
        return sum(1 for ws, _ in self._sockets if not ws.closed)

    async def drop(self) -> None:
        """Cut every connection without a close frame, as a network failure would."""
        for _, request in list(self._sockets):
            if request.transport is not None:
                request.transport.abort()
        await self.wait_for(lambda: not self._sockets)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        cond = self._cond()
        async with cond:
            await cond.wait_for(predicate)

    # -- what a fake says ---------------------------------------------------------------------------------

    async def _replay(self, ws: web.WebSocketResponse) -> None:
        """Send a new connection what waits for one (unanswered, or pushed while nobody was connected)."""

    async def _received(self, ws: web.WebSocketResponse, msg: WSMessage) -> None:
        """Take one message from the client."""

    # -- internals ----------------------------------------------------------------------------------------

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._cond()
        async with cond:
            cond.notify_all()

    def _live(self) -> web.WebSocketResponse | None:
        """The newest open connection (the platforms deliver each frame to one client), if any."""
        return next((ws for ws, _ in reversed(self._sockets) if not ws.closed), None)

    async def _current(self) -> web.WebSocketResponse:
        """The newest open connection, once there is one."""
        await self.wait_for(lambda: self.connected > 0)
        ws = self._live()
        assert ws is not None
        return ws

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        """Hold one client connection until it closes: replay what waits, then take its messages."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append((ws, request))
        self.connects += 1
        await self._notify()
        await self._replay(ws)
        try:
            async for msg in ws:
                await self._received(ws, msg)
                await self._notify()
        finally:
            self._sockets = [(w, r) for w, r in self._sockets if w is not ws]
            await self._notify()
        return ws
