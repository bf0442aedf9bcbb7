"""The WeCom webhook behind a minimal aiohttp route, driven over HTTP by the simulator.

Checks what only HTTP shows: the URL-encoded ``echostr`` (base64 with ``+``, ``/``, ``=``) survives the query
string, the handshake answer is the bare plaintext, acknowledgements are empty 200s and refusals are 4xx.
The adapter here is a stand-in for the bot's route, not the bot's route.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from bot.events import InboundEvent, TextMessage, WebhookRefused
from integrations.wecom.settings import WeComSettings
from integrations.wecom.webhook import WeComWebhook
from tests.fakes.wecom import SignedRequest, WeComSimulator

SETTINGS = WeComSettings(
    corp_id="ww_test_corp",
    agent_id=1000002,
    secret="s",
    token="tok3n",
    encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
)
NOW = datetime(2024, 6, 1, 8, 20, tzinfo=UTC)
TS = int(NOW.timestamp())
SIM = WeComSimulator(SETTINGS.token, SETTINGS.encoding_aes_key, SETTINGS.corp_id, SETTINGS.agent_id)


def adapter(hook: WeComWebhook, seen: list[InboundEvent], now: Callable[[], datetime]) -> web.Application:
    async def route(request: web.Request) -> web.Response:
        try:
            reply = hook.handle(request.method, request.query, await request.read(), now())
        except WebhookRefused as e:
            return web.Response(status=e.status, text=e.reason)
        seen.extend(reply.events)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    app = web.Application()
    app.router.add_route("*", "/wecom/callback", route)
    return app


@pytest.fixture
async def post(aiohttp_client: Any) -> tuple[Callable[[SignedRequest], Any], list[InboundEvent]]:
    seen: list[InboundEvent] = []
    client = await aiohttp_client(adapter(WeComWebhook(SETTINGS), seen, lambda: NOW))

    async def send(req: SignedRequest) -> tuple[int, bytes]:
        async with client.request(req.method, "/wecom/callback", params=req.query, data=req.body) as resp:
            return resp.status, await resp.read()

    return send, seen


async def test_url_handshake_over_http(post: Any) -> None:
    send, _ = post
    for echo in ("5927782489442352469", "回声+/=?&"):
        # the random prefix changes the ciphertext: take one whose base64 needs quoting in a URL
        req = next(
            r for r in (SIM.verify_url(echo, timestamp=TS) for _ in range(200)) if "+" in r.query["echostr"]
        )
        assert await send(req) == (200, echo.encode())


async def test_text_is_acknowledged_with_an_empty_200(post: Any) -> None:
    send, seen = post
    assert await send(SIM.text("zhangsan", "/status", msg_id=1, timestamp=TS)) == (200, b"")
    (event,) = seen
    assert isinstance(event, TextMessage) and event.dedup_key == "wecom:msg:1"


async def test_refusals_over_http(post: Any) -> None:
    send, seen = post
    good = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS)
    forged = SignedRequest("POST", good.query | {"msg_signature": "0" * 40}, good.body)
    assert (await send(forged))[0] == 401
    assert (await send(SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS - 3600)))[0] == 401
    assert (await send(SignedRequest("POST", good.query, b"<xml>")))[0] == 400
    assert seen == []
