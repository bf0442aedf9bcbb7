"""DingTalk Stream mode (``mode: stream``): callbacks over a WebSocket the bot opens itself, DingTalk's
recommended mode, for a company without a public HTTPS domain.

The protocol (platforms.md §3.1 B; dingtalk-stream 0.24): ``POST {api_base}/v1.0/gateway/connections/open``
with ``{clientId, clientSecret, subscriptions, ua, localIp}`` gives ``{endpoint, ticket}``; the client opens
``endpoint?ticket=...`` and receives JSON frames ``{"type": "CALLBACK" | "EVENT" | "SYSTEM", "headers":
{"messageId", "topic", ...}, "data": "<JSON string>"}``, answering each with an ACK carrying its messageId.
Subscribed here: robot messages (``/v1.0/im/bot/messages/get``) and card callbacks
(``/v1.0/card/instances/callback``). ``SYSTEM`` ``ping`` is answered at once (never behind a database
write); ``SYSTEM`` ``disconnect`` means: finish what is in hand and connect again.

Each robot message or card callback becomes neutral events through the HTTP mode's parsers
(:class:`integrations.dingtalk.webhook.DingTalkWebhook`, since the Stream ``data`` is the HTTP body), each
handed to ``submit`` (the dispatcher's durable dedup, then background work) before the ACK. The dedup keys
are the payload's own ids, as in HTTP mode: robot ``msgId``, card ``outTrackId+userId+actionIds+params``
(bot/events.py). They catch everything ``headers.messageId`` would (a redelivered frame carries the same
payload) and also a message pushed again in a new frame, or one that arrived over HTTP just before a switch to
Stream. A frame that cannot be read is logged and answered 400; ``submit`` failing sends no ACK, so
DingTalk delivers the frame again.

What comes from the SDK: the frame classes and their parsing (``CallbackMessage``, ``SystemMessage``), the
ACK (``AckMessage``, built by the handlers' ``raw_process``), the topics and the ua string. Its
``DingTalkStreamClient.start()`` is not used: the open call is blocking ``requests`` with no timeout, its URL
is fixed from an environment variable at import, it probes 8.8.8.8 for the local IP, it retries on fixed
10 s / 3 s sleeps with no cap on a flapping server, it swallows the first cancellation (0.24.3), and it sends
a late ACK on whatever socket is current. So the connection loop is ours: an aiohttp open call to the
configured ``api_base``, and the loop the Feishu long connection shares (:mod:`integrations.long_connection`:
capped exponential back-off with jitter, one task per callback frame, :meth:`DingTalkStreamConnection.close`).

``dingtalk_stream`` is imported only here and only when :meth:`DingTalkStreamConnection.run` starts, so HTTP
mode never loads it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from bot.events import InboundEvent, Malformed
from integrations.dingtalk.settings import DingTalkSettings
from integrations.dingtalk.webhook import DingTalkWebhook
from integrations.long_connection import LongConnection, Submit

log = logging.getLogger("pandian.dingtalk.stream")

__all__ = ["OPEN_PATH", "DingTalkStreamConnection", "Submit"]

OPEN_PATH = "/v1.0/gateway/connections/open"
_DISCONNECT = "disconnect"


class _SubmitFailed(Exception):
    """``submit`` raised: the frame gets no ACK and DingTalk delivers it again."""


class DingTalkStreamConnection(LongConnection[DingTalkSettings]):
    """One Stream connection for one app. ``await run()`` until :meth:`close`; it reconnects by itself."""

    label, platform, task_name, _log = "dingtalk stream", "DingTalk", "dingtalk-stream", log
    trust_env = True
    # set by _load_sdk when run() starts (the constructor is LongConnection's)
    _sdk: Any = None  # the dingtalk_stream package, once imported
    _callbacks: dict[str, Any]  # topic -> the SDK CallbackHandler answering it
    _system: Any

    # -- connections --------------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._sdk is None:
            await asyncio.to_thread(self._load_sdk)

    def _load_sdk(self) -> None:
        sdk: Any = importlib.import_module("dingtalk_stream")
        self._sdk, owner, parser = sdk, self, DingTalkWebhook(self.cfg)

        class Handler(sdk.CallbackHandler):
            def __init__(self, parse: Callable[[Mapping[str, Any]], list[InboundEvent]], answer: Any) -> None:
                super().__init__()
                self.parse, self.answer = parse, answer

            async def process(self, message: Any) -> tuple[int, Any]:
                return await owner._callback(message, self.parse, self.answer)

        self._callbacks = {
            sdk.ChatbotMessage.TOPIC: Handler(lambda d: parser.parse_robot(d, self._clock()), "OK"),
            sdk.CallbackHandler.TOPIC_CARD_CALLBACK: Handler(
                lambda d: [parser.parse_card(d, self._clock())],
                {},  # {}: the card stays as it is
            ),
        }
        self._system = sdk.SystemHandler()

    async def _open(self, http: aiohttp.ClientSession) -> str:
        """The gateway URL for one connection (its ticket is good once)."""
        sdk = self._sdk
        body = {
            "clientId": self.cfg.app_key,
            "clientSecret": self.cfg.secret(),
            "subscriptions": [{"type": "CALLBACK", "topic": topic} for topic in self._callbacks],
            "ua": f"dingtalk-sdk-python/v{sdk.version.VERSION_STRING}-union",
            "localIp": "",  # the SDK finds it by probing 8.8.8.8; it sends "" when that fails, as here
        }
        async with http.post(self.cfg.api_base.rstrip("/") + OPEN_PATH, json=body) as resp:
            text = await resp.text()
            if resp.status != 200:
                level = logging.ERROR if resp.status in (400, 401, 403) else logging.WARNING
                log.log(level, "dingtalk stream: open refused (%s): %s", resp.status, text[:300])
                raise ConnectionError(f"open connection: HTTP {resp.status}")
        answer = json.loads(text)
        return f"{answer['endpoint']}?ticket={quote_plus(answer['ticket'])}"

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection, until it drops or DingTalk asks to move. True when the server spoke on it."""
        import websockets  # the SDK's own dependency

        url = await self._open(http)
        ws = await websockets.connect(url, open_timeout=self.cfg.request_timeout_s, close_timeout=2)
        self.stats["connects"] += 1
        log.info("dingtalk stream open")

        async def on_frame(raw: str | bytes) -> bool:
            if await self._frame(ws, raw) != _DISCONNECT:
                return False
            log.info("dingtalk stream: the gateway asked to reconnect")
            await self._finish_frames()  # their ACKs still go out on this connection
            return True

        try:
            return await self._receive(ws, on_frame)
        finally:
            await ws.close()

    # -- frames -------------------------------------------------------------------------------------------

    async def _frame(self, ws: Any, raw: str | bytes) -> str | None:
        """Answer a SYSTEM frame at once; hand a CALLBACK to its own task. Returns ``"disconnect"`` when asked."""
        sdk = self._sdk
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("headers"), dict):
                raise ValueError("not a frame object with headers")
        except ValueError as exc:
            self._malformed("ignored a message that is not a frame: %s", exc)
            return None
        kind, headers = doc.get("type"), doc["headers"]
        if kind == sdk.SystemMessage.TYPE:
            try:
                ack = await self._system.raw_process(sdk.SystemMessage.from_dict(doc))
            except (ValueError, TypeError) as exc:
                await self._refuse(ws, headers, exc)
                return None
            await ws.send(json.dumps(ack.to_dict()))
            return _DISCONNECT if headers.get("topic") == sdk.SystemMessage.TOPIC_DISCONNECT else None
        self._spawn(self._other(ws, doc))
        return None

    async def _other(self, ws: Any, doc: dict[str, Any]) -> None:
        sdk = self._sdk
        headers = doc["headers"]
        try:
            if doc.get("type") == sdk.CallbackMessage.TYPE and headers.get("topic") in self._callbacks:
                message = sdk.CallbackMessage.from_dict(doc)
                ack = await self._callbacks[headers["topic"]].raw_process(message)
            else:  # an EVENT or a topic not subscribed to: "not implemented", as the SDK answers
                log.warning(
                    "dingtalk stream: unexpected %s frame on %s", doc.get("type"), headers.get("topic")
                )
                ack = await sdk.EventHandler().raw_process(sdk.EventMessage.from_dict(doc))
        except _SubmitFailed:
            return
        except (ValueError, TypeError) as exc:  # data that is not a JSON string
            await self._refuse(ws, headers, exc)
            return
        try:
            await ws.send(json.dumps(ack.to_dict(), ensure_ascii=False))
        except Exception as exc:  # the connection went away: the frame comes again on the next one
            log.warning("dingtalk stream: ACK for %s not sent: %r", headers.get("messageId"), exc)

    async def _refuse(self, ws: Any, headers: Mapping[str, Any], exc: Exception) -> None:
        """Answer a frame that cannot be read with 400 (when it has a messageId to answer)."""
        sdk = self._sdk
        self._malformed("frame %s unreadable: %s", headers.get("messageId"), exc)
        if not isinstance(headers.get("messageId"), str):
            return
        ack = sdk.AckMessage()
        ack.code = sdk.AckMessage.STATUS_BAD_REQUEST
        ack.headers.message_id = headers["messageId"]
        ack.headers.content_type = sdk.frames.Headers.CONTENT_TYPE_APPLICATION_JSON
        ack.message = f"unreadable: {exc}"[:200]
        try:
            await ws.send(json.dumps(ack.to_dict(), ensure_ascii=False))
        except Exception as send_exc:
            log.warning("dingtalk stream: 400 for %s not sent: %r", headers.get("messageId"), send_exc)

    async def _callback(
        self, message: Any, parse: Callable[[Mapping[str, Any]], list[InboundEvent]], answer: Any
    ) -> tuple[int, Any]:
        """A robot message or card callback (the SDK's ``CallbackHandler.process``): (ACK code, response)."""
        sdk, mid = self._sdk, message.headers.message_id
        try:
            if not isinstance(message.data, dict):
                raise Malformed("data is not a JSON object")
            events = parse(message.data)
        except Malformed as exc:
            self._malformed("frame %s unreadable: %s", mid, exc.reason)
            return sdk.AckMessage.STATUS_BAD_REQUEST, f"unreadable: {exc.reason}"
        if await self._submit_all(events, mid) is None:
            raise _SubmitFailed
        return sdk.AckMessage.STATUS_OK, answer
