"""Feishu's long connection (长连接, ``mode: websocket``): events over a WebSocket the bot opens itself, for a
company without a public HTTPS domain.

The protocol, as lark-oapi 1.7.5's ws client speaks it (platforms.md §2.1, §4.2): ``POST {domain}/callback/
ws/endpoint`` with the app's credentials gives a ``wss://`` URL and a ClientConfig (ping interval); over the
socket travel protobuf ``Frame``s: CONTROL ping / pong, and DATA frames carrying one event's JSON (split in
``sum`` parts when large), each answered with the same frame whose payload is ``{"code": 200, "data":
base64(JSON answer)}``. Card callbacks (``card.action.trigger``) arrive as events too and must be answered
within 3 s; the answer here is a toast. Delivery is at least once: Feishu replays unanswered events after a
reconnect, and the dispatcher's durable dedup absorbs the repeats.

Events become the same neutral events as the webhook's (:func:`integrations.feishu.webhook.parse_event`);
each is handed to ``submit`` (the dispatcher's durable dedup, then background work) before the frame is
answered. A frame that cannot be read is logged and answered 400 (or ignored when it is not even a frame);
``submit`` failing answers 500, so Feishu delivers the event again.

What comes from the SDK and what does not. lark-oapi gives the endpoint answer's model and error mapping
and applies its ClientConfig, the protobuf ``Frame``, control-frame handling (a pong's new config), the
reassembly of split payloads, the ping loop, the answer's encoding and the handshake-error mapping. Its
``start()`` is not used: it blocks in ``run_until_complete`` on a loop captured at import time, schedules its
receive loop on that loop, reconnects on the server's fixed 120 s interval, cannot be stopped, and calls
event handlers synchronously (ours must await ``submit``). Its endpoint fetch (``_get_conn_url``) is a
blocking ``requests`` call without a timeout, so the same request is made here with aiohttp. The connection
loop is ours, shared with DingTalk's Stream (:mod:`integrations.long_connection`: capped exponential back-off
with jitter, one task per frame, :meth:`FeishuLongConnection.close`). This leans on private members of ``lark_oapi.ws.Client``; the dependency
is pinned below 2 and the tests run the real SDK against a fake server (tests/fakes/feishu_ws.py), so a
change there shows up as a failing test.

``import lark_oapi`` costs about 4-6 s and 175 MB (it loads every service module), so nothing else imports it
and this module imports it only when :meth:`FeishuLongConnection.run` starts, in a worker thread, so the event
loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from bot.events import CardAction, Malformed
from integrations.feishu.settings import FeishuSettings
from integrations.feishu.webhook import parse_event, toast_body
from integrations.long_connection import LongConnection, Submit, utc_now

log = logging.getLogger("pandian.feishu.ws")

__all__ = ["RECEIVED", "CardReply", "FeishuLongConnection", "Submit", "received_toast"]

CardReply = Callable[[CardAction, bool], Mapping[str, Any]]

RECEIVED = "已收到 / Received"
_CARD_EVENT = "card.action.trigger"
_CONTROL, _DATA = 0, 1


def received_toast(event: CardAction, accepted: bool) -> Mapping[str, Any]:
    """The default answer to a card click: a toast saying it arrived (the work happens afterwards)."""
    return toast_body(RECEIVED, "info")


class FeishuLongConnection(LongConnection[FeishuSettings]):
    """One long connection for one app. ``await run()`` until :meth:`close`; it reconnects by itself."""

    label, platform, task_name, _log = "feishu long connection", "Feishu", "feishu-long-connection", log

    def __init__(
        self,
        cfg: FeishuSettings,
        submit: Submit,
        *,
        card_reply: CardReply = received_toast,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        grace_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            cfg, submit, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s, grace_s=grace_s,
            clock=clock, rand=rand,
        )  # fmt: skip
        self._card_reply = card_reply
        self._sdk: Any = None  # the lark_oapi.ws.client module, once imported
        self._client: Any = None  # its Client: endpoint fetch, config, split payloads, pings

    # -- connections --------------------------------------------------------------------------------------

    async def close(self) -> None:
        await super().close()
        cron = getattr(getattr(self._client, "_cache", None), "_cron", None)
        if cron is not None:
            cron.cancel()  # the SDK's cache sweeper for split payloads

    async def _prepare(self) -> None:
        if self._sdk is None:
            self._sdk = await asyncio.to_thread(importlib.import_module, "lark_oapi.ws.client")
        sdk = self._sdk
        if self._client is None:
            self._client = sdk.Client(
                self.cfg.app_id,
                self.cfg.app_secret,
                log_level=sdk.LogLevel.WARNING,
                domain=self.cfg.domain.rstrip("/"),
                auto_reconnect=False,
            )

    def _refusals(self) -> tuple[type[Exception], ...]:
        return (self._sdk.ClientException, self._sdk.ServerException)

    async def _endpoint(self, http: aiohttp.ClientSession) -> str:
        """The SDK's ``_get_conn_url`` (same request, same answer model and error mapping, the server's
        ClientConfig applied) without its blocking ``requests`` call that has no timeout."""
        sdk, client = self._sdk, self._client
        headers = {"locale": "zh", "User-Agent": getattr(client, "_user_agent", "oapi-sdk-python")}
        body = {"AppID": self.cfg.app_id, "AppSecret": self.cfg.app_secret}
        url = self.cfg.domain.rstrip("/") + sdk.GEN_ENDPOINT_URI
        async with http.post(url, json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise sdk.ServerException(resp.status, text[:200] or "system busy")
        answer = sdk.JSON.unmarshal(text, sdk.EndpointResp)
        if answer.code in (sdk.SYSTEM_BUSY, sdk.INTERNAL_ERROR):
            raise sdk.ServerException(answer.code, answer.msg or "system busy")
        if answer.code != sdk.OK or answer.data is None or not answer.data.URL:
            raise sdk.ClientException(answer.code, answer.msg)
        if answer.data.ClientConfig is not None:
            client._configure(answer.data.ClientConfig)
        return str(answer.data.URL)

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection, until it drops. True when the server spoke on it (a pong, an event)."""
        import websockets  # lark-oapi's own dependency, loaded with it

        sdk, client = self._sdk, self._client
        url = await self._endpoint(http)
        query = parse_qs(urlsplit(url).query)
        try:
            ws = await websockets.connect(
                url, open_timeout=self.cfg.request_timeout_s, close_timeout=2, **sdk._ws_connect_kwargs(None)
            )
        except websockets.InvalidHandshake as exc:
            sdk._parse_ws_conn_exception(exc)  # raises the SDK's Client/ServerException
            raise
        client._conn, client._conn_url = ws, url
        client._conn_id = query.get(sdk.DEVICE_ID, [""])[0]
        client._service_id = query.get(sdk.SERVICE_ID, ["0"])[0]
        self.stats["connects"] += 1
        log.info("feishu long connection open (device %s)", client._conn_id)
        pings = asyncio.create_task(client._ping_loop())

        async def on_frame(raw: str | bytes) -> bool:
            self._spawn(self._frame(ws, raw))
            return False

        try:
            return await self._receive(ws, on_frame)
        finally:
            pings.cancel()
            client._conn = None
            await ws.close()

    # -- frames -------------------------------------------------------------------------------------------

    async def _frame(self, ws: Any, raw: bytes | str) -> None:
        sdk = self._sdk
        try:
            if not isinstance(raw, bytes):
                raise ValueError("a text message, not a frame")
            frame = sdk.Frame()
            frame.ParseFromString(raw)
        except Exception as exc:
            self._malformed("ignored a message that is not a frame: %s", exc)
            return
        try:
            if frame.method == _CONTROL:
                await self._client._handle_control_frame(frame)  # pong: the server's new ClientConfig
            elif frame.method == _DATA:
                await self._data(ws, frame)
        except sdk.websockets.ConnectionClosed:  # Feishu delivers it again on the next connection
            log.warning("feishu long connection: frame %s not answered, the connection closed", frame.SeqID)
        except Exception:
            log.exception("feishu long connection: frame %s not handled", frame.SeqID)

    async def _data(self, ws: Any, frame: Any) -> None:
        sdk = self._sdk
        headers = {h.key: h.value for h in frame.headers}
        message_id, kind = headers.get(sdk.HEADER_MESSAGE_ID), headers.get(sdk.HEADER_TYPE)
        if not message_id:
            self._malformed("ignored a data frame without a message_id")
            return
        payload = frame.payload
        try:
            parts, seq = int(headers.get(sdk.HEADER_SUM, "1")), int(headers.get(sdk.HEADER_SEQ, "0"))
        except ValueError:
            parts, seq = 0, 0
        if not 0 <= seq < parts:
            code, answer = 400, None
            self._malformed("frame %s has sum/seq %r", message_id, headers)
        elif parts > 1 and (payload := self._client._combine(message_id, parts, seq, payload)) is None:
            return  # more parts to come
        elif kind != "event":
            log.info("feishu long connection: ignored a %r frame", kind)  # as the SDK does ("card": v1 cards)
            return
        else:
            started = time.perf_counter()
            code, answer = await self._answer(message_id, payload)
            frame.headers.add(key=sdk.HEADER_BIZ_RT, value=str(int((time.perf_counter() - started) * 1000)))
        response = sdk.Response(code=code)
        if answer is not None:
            response.data = base64.b64encode(sdk.JSON.marshal(answer).encode())
        frame.payload = sdk.JSON.marshal(response).encode()
        await ws.send(frame.SerializeToString())

    async def _answer(self, message_id: str, payload: bytes) -> tuple[int, Mapping[str, Any] | None]:
        """Submit the frame's events; the answer code, and the answer for a card callback."""
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise Malformed("payload is not a JSON object")
            events = parse_event(doc, self._clock())
        except (ValueError, Malformed) as exc:
            self._malformed("frame %s unreadable: %s", message_id, exc)
            return 400, None
        accepted = await self._submit_all(events, message_id)
        if accepted is None:
            return 500, None
        header = doc.get("header")
        is_card = isinstance(header, dict) and header.get("event_type") == _CARD_EVENT
        answer: Mapping[str, Any] | None = {} if is_card else None  # a card we did not build: left as it is
        for event, new in zip(events, accepted, strict=True):
            if isinstance(event, CardAction):
                answer = self._card_reply(event, new)
        return 200, answer
