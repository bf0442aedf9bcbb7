"""The simulator's bodies are what lark-oapi (Feishu's own SDK) accepts, and we read them the same way.

This is the one place tests import ``lark_oapi`` (~4 s): it pins our hand-written crypto and envelope to the
SDK's ``EventDispatcherHandler`` without putting the SDK on the inbound path.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.events import CardAction, TextMessage
from integrations.feishu.settings import FeishuSettings
from integrations.feishu.webhook import FeishuWebhook
from tests.fakes.feishu import FeishuSimulator

lark = pytest.importorskip("lark_oapi")
from lark_oapi.event.callback.model.p2_card_action_trigger import P2CardActionTriggerResponse  # noqa: E402


def _lark_do(handler: Any, headers: dict[str, str], body: bytes) -> Any:
    req = lark.RawRequest()
    req.uri = "/feishu/events"
    req.headers = headers
    req.body = body
    return handler.do(req)


def test_lark_oapi_and_our_webhook_agree_on_simulated_bodies() -> None:
    now = datetime.now(UTC)
    sim = FeishuSimulator(clock=now.timestamp)
    seen: dict[str, Any] = {}

    def on_message(data: Any) -> None:
        seen["message"] = (data.event.message.message_id, json.loads(data.event.message.content)["text"])

    def on_card(data: Any) -> Any:
        seen["card"] = (data.header.event_id, data.event.action.value, data.event.context.open_message_id)
        return P2CardActionTriggerResponse({})

    handler = (
        lark.EventDispatcherHandler.builder(sim.encrypt_key, sim.verification_token)
        .register_p2_im_message_receive_v1(on_message)
        .register_p2_card_action_trigger(on_card)
        .build()
    )
    ours = FeishuWebhook(
        FeishuSettings(
            app_id=sim.app_id,
            app_secret="s",
            verification_token=sim.verification_token,
            encrypt_key=sim.encrypt_key,
        )
    )

    headers, body = sim.wire(sim.url_verification("ch-9"))
    resp = _lark_do(handler, headers, body)
    assert (
        json.loads(resp.content) == json.loads(ours.handle(headers, body, now).body) == {"challenge": "ch-9"}
    )

    headers, body = sim.wire(sim.text("ou_u1", "盘点", message_id="om_5"))
    assert _lark_do(handler, headers, body).status_code == 200
    (msg,) = ours.handle(headers, body, now).events
    assert isinstance(msg, TextMessage)
    assert seen["message"] == ("om_5", msg.text)

    headers, body = sim.wire(sim.card_action("ou_u1", "pl", event_id="ev_c1", open_message_id="om_c"))
    assert _lark_do(handler, headers, body).status_code == 200
    (card,) = ours.handle(headers, body, now).events
    assert isinstance(card, CardAction)
    assert seen["card"] == ("ev_c1", {"p": card.payload}, card.card_ref)

    forged = {**headers, "X-Lark-Signature": "0" * 64}
    assert _lark_do(handler, forged, body).status_code != 200  # lark answers 500; we raise Forged (401)
