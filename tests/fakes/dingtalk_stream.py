"""A fake DingTalk Stream gateway (platforms.md §3.1 B, §5.4), speaking the protocol the dingtalk-stream SDK
speaks.

1. ``POST {api_base}/v1.0/gateway/connections/open`` with ``{clientId, clientSecret, subscriptions: [{type,
   topic}], ua, localIp}`` answers ``{endpoint, ticket}``; wrong credentials answer 401.
2. The client opens a WebSocket to ``endpoint?ticket=...`` (a ticket is good for one connection).
3. JSON text frames: ``{"specVersion": "1.0", "type": "CALLBACK" | "EVENT" | "SYSTEM", "headers": {"appId",
   "connectionId", "contentType", "messageId", "time", "topic"}, "data": "<JSON string>"}``. The client
   answers every frame with an ACK ``{"code": 200, "headers": {"messageId", "contentType"}, "message": "OK",
   "data": "<JSON string>"}``; for a CALLBACK the data is ``{"response": ...}``.
4. ``SYSTEM`` frames: topic ``ping`` (answered with its ``data`` echoed) and ``disconnect`` (the client should
   connect again).

Frames are at least once: one not acknowledged when its connection drops is pushed again on the next
connection. Frames pushed while no client is connected wait for one. Robot message bodies and card callback
bodies come from :class:`tests.fakes.dingtalk.DingTalkSimulator` (the Stream ``data`` equals the HTTP body).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMessage, WSMsgType, web

from tests.fakes.long_connection import LongConnectionFake

OPEN_PATH = "/v1.0/gateway/connections/open"
GATEWAY_PATH = "/gw"
ROBOT_TOPIC = "/v1.0/im/bot/messages/get"
CARD_TOPIC = "/v1.0/card/instances/callback"


@dataclass
class DingTalkStreamFake(LongConnectionFake):
    client_id: str = "dingappkey"
    client_secret: str = "appsecret"
    opens: list[dict[str, Any]] = field(default_factory=list)  # the open-connection bodies, as received
    acks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # messageId -> ACK frames
    refuse_open: int = 0  # the next n open calls answer 503
    _tickets: set[str] = field(default_factory=set)
    _unacked: dict[str, str] = field(default_factory=dict)  # messageId -> the frame, as sent

    # -- what tests call --------------------------------------------------------------------------------

    def frame(
        self, kind: str, topic: str, data: Mapping[str, Any] | str, message_id: str | None = None
    ) -> tuple[str, str]:
        """(messageId, the frame's JSON) for a frame of ``kind`` on ``topic``; ``data`` is JSON-encoded unless
        it is a string already."""
        mid = message_id or f"msg-{next(self._ids)}"
        frame = {
            "specVersion": "1.0",
            "type": kind,
            "headers": {
                "appId": "app-1",
                "connectionId": f"conn-{self.connects}",
                "contentType": "application/json",
                "messageId": mid,
                "time": str(int(time.time() * 1000)),
                "topic": topic,
            },
            "data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
        }
        return mid, json.dumps(frame, ensure_ascii=False)

    async def push(
        self, kind: str, topic: str, data: Mapping[str, Any] | str, message_id: str | None = None
    ) -> str:
        mid, text = self.frame(kind, topic, data, message_id)
        self._unacked[mid] = text
        await self._deliver(text)
        return mid

    async def push_robot(self, message: Mapping[str, Any], message_id: str | None = None) -> str:
        return await self.push("CALLBACK", ROBOT_TOPIC, message, message_id)

    async def push_card(self, callback: Mapping[str, Any], message_id: str | None = None) -> str:
        return await self.push("CALLBACK", CARD_TOPIC, callback, message_id)

    async def ping(self) -> str:
        return await self.push("SYSTEM", "ping", {"opaque": f"op-{next(self._ids)}"})

    async def disconnect(self) -> str:
        """Ask the client to move to a new connection (what the gateway does before a restart)."""
        return await self.push("SYSTEM", "disconnect", {"reason": "gateway restart"})

    async def push_raw(self, text: str) -> None:
        """Send text that may not be a frame at all, to the current connection."""
        await (await self._current()).send_str(text)

    async def ack(self, message_id: str) -> dict[str, Any]:
        """The first ACK for ``message_id``, with its ``data`` decoded."""
        await self.wait_for(lambda: bool(self.acks.get(message_id)))
        ack = dict(self.acks[message_id][0])
        ack["data"] = json.loads(ack["data"]) if isinstance(ack.get("data"), str) else ack.get("data")
        return ack

    # -- internals ----------------------------------------------------------------------------------------

    async def _deliver(self, text: str) -> None:
        if (ws := self._live()) is not None:
            await ws.send_str(text)

    async def open(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.opens.append(body)
        await self._notify()
        if self.refuse_open > 0:
            self.refuse_open -= 1
            return web.json_response({"code": "ServiceUnavailable", "message": "busy"}, status=503)
        if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
            return web.json_response({"code": "InvalidAuthentication", "message": "bad client"}, status=401)
        ticket = f"ticket-{next(self._ids)}"
        self._tickets.add(ticket)
        return web.json_response({"endpoint": f"ws://{request.host}{GATEWAY_PATH}", "ticket": ticket})

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.json_response({"code": "InvalidTicket", "message": "ticket"}, status=401)
        self._tickets.discard(ticket)
        return await self._serve(request)

    async def _replay(self, ws: web.WebSocketResponse) -> None:
        for text in list(self._unacked.values()):  # redelivered, or pushed while nobody was connected
            await ws.send_str(text)

    async def _received(self, ws: web.WebSocketResponse, msg: WSMessage) -> None:
        if msg.type == WSMsgType.TEXT:
            ack = json.loads(msg.data)
            mid = ack.get("headers", {}).get("messageId", "")
            self.acks.setdefault(mid, []).append(ack)
            self._unacked.pop(mid, None)


def add_dingtalk_stream_routes(app: web.Application, fake: DingTalkStreamFake) -> web.Application:
    """Serve the gateway on ``app`` (for instance the open API fake of tests/fakes/dingtalk.py, which shares
    ``api_base``)."""
    app.router.add_post(OPEN_PATH, fake.open)
    app.router.add_get(GATEWAY_PATH, fake.gateway)
    return app


def build_dingtalk_stream_fake_app(fake: DingTalkStreamFake) -> web.Application:
    return add_dingtalk_stream_routes(web.Application(), fake)
