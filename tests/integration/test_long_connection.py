"""Long connections: Feishu's WebSocket (the real lark-oapi ws client) and DingTalk's Stream (the real
dingtalk-stream frames and ACKs), each against a fake server speaking the platform's protocol on 127.0.0.1.

What a counter sends arrives at the dispatcher as the same neutral events the webhooks produce; a dropped
connection comes back and keeps delivering; a replayed event reaches ``submit`` again and the dispatcher's
durable dedup keeps it to one; frames that cannot be read are answered or ignored without stopping the loop;
``close()`` ends ``run()``. ``GUARD_S`` only turns a hang into a failure; nothing here is timed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import CardAction, ImageMessage, InboundEvent, Platform, TextMessage
from core.clock import FixedClock
from core.config import Settings
from integrations.dingtalk.settings import DingTalkSettings
from integrations.dingtalk.stream import DingTalkStreamConnection
from integrations.feishu.settings import FeishuSettings
from integrations.feishu.ws import RECEIVED, FeishuLongConnection
from tests.fakes.dingtalk import DingTalkSimulator
from tests.fakes.dingtalk_stream import (
    CARD_TOPIC,
    ROBOT_TOPIC,
    DingTalkStreamFake,
    build_dingtalk_stream_fake_app,
)
from tests.fakes.feishu import FeishuSimulator
from tests.fakes.feishu_ws import DATA, FeishuWsFake, Frame, build_feishu_ws_fake_app, encode_frame

GUARD_S = 60.0
T = TypeVar("T")


async def guarded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, GUARD_S)


class Recorder:
    """``submit`` as the server wires it (the real dispatcher's), recording each call and its answer."""

    def __init__(self, dispatcher: Dispatcher | None = None, fail: int = 0) -> None:
        self.dispatcher, self.fail = dispatcher, fail
        self.calls: list[tuple[InboundEvent, bool]] = []
        self.failures = 0
        self.changed = asyncio.Event()

    async def __call__(self, event: InboundEvent) -> bool:
        try:
            if self.fail > 0:
                self.fail -= 1
                self.failures += 1
                raise RuntimeError("database unavailable")
            accepted = await self.dispatcher.submit(event) if self.dispatcher else True
            self.calls.append((event, accepted))
            return accepted
        finally:
            self.changed.set()

    @property
    def events(self) -> list[InboundEvent]:
        return [e for e, _ in self.calls]


class Connection(Protocol):
    async def run(self) -> None: ...
    async def close(self) -> None: ...


@asynccontextmanager
async def running(conn: Connection) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(conn.run())
    try:
        yield task
    finally:
        await guarded(conn.close())
        await guarded(task)  # run() returns; had it raised, the test would fail here


@pytest.fixture
def dispatcher(sessionmaker: async_sessionmaker[AsyncSession], database_url: str) -> Dispatcher:
    return Dispatcher(
        sessionmaker,
        Settings(database_url=database_url),
        MemoryStore(),
        Router(),
        clock=FixedClock(datetime(2026, 11, 30, 2, 0, tzinfo=UTC)),
    )


# ---- Feishu ---------------------------------------------------------------------------------------------


@pytest.fixture
async def feishu(aiohttp_server: Any) -> tuple[FeishuWsFake, FeishuSettings]:
    fake = FeishuWsFake()
    server = await aiohttp_server(build_feishu_ws_fake_app(fake))
    cfg = FeishuSettings(
        app_id=fake.app_id,
        app_secret=fake.app_secret,
        verification_token="v-token",
        domain=str(server.make_url("")).rstrip("/"),
        mode="websocket",
    )
    return fake, cfg


def feishu_connection(cfg: FeishuSettings, submit: Recorder) -> FeishuLongConnection:
    return FeishuLongConnection(cfg, submit, backoff_initial_s=0.01, backoff_max_s=0.2)


async def test_feishu_events_become_neutral_events_and_cards_get_a_toast(
    feishu: tuple[FeishuWsFake, FeishuSettings], dispatcher: Dispatcher
) -> None:
    fake, cfg = feishu
    sim, submit = FeishuSimulator(), Recorder(dispatcher)
    async with running(feishu_connection(cfg, submit)):
        text = await fake.push_event(sim.text("ou_u1", "@_user_1 /任务", message_id="om_1",
                                             mentions=[{"key": "@_user_1"}]))  # fmt: skip
        image = await fake.push_event(sim.image("ou_u1", "img_v3_abc", message_id="om_2", chat_type="group"))
        card = await fake.push_event(
            sim.card_action("ou_u2", "packed-payload", form={"qty": "12"}, open_message_id="om_card",
                            token="c-tok", event_id="ev_card"),
            parts=3,  # a payload split over three frames, reassembled by the SDK
        )  # fmt: skip
        answers = [await guarded(fake.answer(mid)) for mid in (text, image, card)]
        await guarded(fake.wait_for(lambda: fake.pings >= 1))  # the SDK's ping loop, answered by a pong

    assert [a.code for a in answers] == [200, 200, 200]
    assert answers[0].data is None and answers[1].data is None
    assert answers[2].data == {"toast": {"type": "info", "content": RECEIVED}}
    assert answers[2].headers["message_id"] == card and "biz_rt" in answers[2].headers

    by_kind = {type(e): e for e in submit.events}  # frames are handled concurrently, in no set order
    t, i, c = by_kind[TextMessage], by_kind[ImageMessage], by_kind[CardAction]
    assert isinstance(t, TextMessage) and t.text == "/任务" and t.dedup_key == "feishu:msg:om_1"
    assert t.platform == Platform.FEISHU and t.sender.user_id == "ou_u1" and t.chat_id is None
    assert isinstance(i, ImageMessage) and i.media_ref == "img_v3_abc" and i.message_id == "om_2"
    assert i.chat_id == "oc_chat_1"
    assert isinstance(c, CardAction) and c.payload == "packed-payload" and dict(c.form) == {"qty": "12"}
    assert (c.dedup_key, c.card_ref, c.update_token) == ("feishu:card:ev_card", "om_card", "c-tok")
    assert [ok for _, ok in submit.calls] == [True, True, True]
    await dispatcher.drain()


async def test_feishu_reconnects_after_a_drop_and_a_replay_counts_once(
    feishu: tuple[FeishuWsFake, FeishuSettings], dispatcher: Dispatcher
) -> None:
    fake, cfg = feishu
    sim, submit = FeishuSimulator(), Recorder(dispatcher)
    async with running(feishu_connection(cfg, submit)):
        first = sim.text("ou_u1", "/盘点 7 10", message_id="om_count")
        await guarded(fake.answer(await fake.push_event(first)))
        await guarded(fake.drop())
        # pushed while the connection is down: it waits for the next one
        later = await fake.push_event(sim.text("ou_u1", "/任务", message_id="om_later"))
        # Feishu retries the first event (same message, new event_id): it must not count twice
        again = await fake.push_event(sim.text("ou_u1", "/盘点 7 10", message_id="om_count"))
        await guarded(fake.answer(later))
        await guarded(fake.answer(again))
        assert fake.connects == 2 and fake.endpoint_calls == 2  # a fresh endpoint for each connection

    keys = [(e.dedup_key, ok) for e, ok in submit.calls]
    assert keys[0] == ("feishu:msg:om_count", True)  # the first delivery counts
    assert sorted(keys[1:]) == [("feishu:msg:om_count", False), ("feishu:msg:om_later", True)]
    assert dispatcher.stats["accepted"] == 2 and dispatcher.stats["duplicates"] == 1
    await dispatcher.drain()


async def test_feishu_frames_that_cannot_be_read_do_not_stop_the_loop(
    feishu: tuple[FeishuWsFake, FeishuSettings],
) -> None:
    fake, cfg = feishu
    sim, submit = FeishuSimulator(), Recorder()
    conn = feishu_connection(cfg, submit)
    async with running(conn):
        await guarded(fake.wait_for(lambda: fake.connected == 1))
        await fake.push_raw(b"\xff\xfe not protobuf")
        await fake.push_raw("a text message")
        no_id = Frame(
            service=fake.service_id, method=DATA, headers=[("type", "event"), ("sum", "1")], payload=b"{}"
        )
        await fake.push_raw(encode_frame(no_id))
        not_json = await fake.push_payload(b"{not json")
        no_event = await fake.push_event({"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}})
        no_sender = await fake.push_event(
            sim.envelope("im.message.receive_v1", {"message": {"message_id": "om_x"}, "sender": {}})
        )
        ignored = await fake.push_event(sim.envelope("im.chat.updated_v1", {"chat_id": "oc_1"}))
        good = await fake.push_event(sim.text("ou_u1", "/帮助", message_id="om_ok"))
        codes = [(await guarded(fake.answer(m))).code for m in (not_json, no_event, no_sender, ignored, good)]

    assert codes == [400, 400, 400, 200, 200]
    assert [e.dedup_key for e in submit.events] == ["feishu:msg:om_ok"]
    assert conn.stats["connects"] == 1 and conn.stats["malformed"] == 6


async def test_feishu_a_failed_submit_is_answered_500_so_feishu_sends_it_again(
    feishu: tuple[FeishuWsFake, FeishuSettings],
) -> None:
    fake, cfg = feishu
    sim, submit = FeishuSimulator(), Recorder(fail=1)
    async with running(feishu_connection(cfg, submit)):
        doc = sim.text("ou_u1", "/任务", message_id="om_1")
        assert (await guarded(fake.answer(await fake.push_event(doc)))).code == 500
        assert (await guarded(fake.answer(await fake.push_event(doc)))).code == 200
    assert submit.failures == 1 and [e.dedup_key for e in submit.events] == ["feishu:msg:om_1"]


async def test_feishu_refusals_back_off_and_close_stops_a_waiting_loop(
    feishu: tuple[FeishuWsFake, FeishuSettings],
) -> None:
    fake, cfg = feishu
    fake.refuse_endpoint = 3  # "system busy" three times, then a connection
    async with running(feishu_connection(cfg, Recorder())):
        await guarded(fake.wait_for(lambda: fake.connected == 1))
    assert fake.endpoint_calls == 4 and fake.connected == 0

    wrong = cfg.model_copy(update={"app_secret": "wrong"})
    conn = FeishuLongConnection(wrong, Recorder(), backoff_initial_s=0.01, backoff_max_s=0.05)
    async with running(conn):
        await guarded(fake.wait_for(lambda: fake.endpoint_calls >= 7))  # keeps trying, never raises
    assert fake.connects == 1

    never = FeishuLongConnection(cfg, Recorder())
    await never.close()
    await guarded(never.run())  # closed before it ran: returns at once


# ---- DingTalk -------------------------------------------------------------------------------------------


@pytest.fixture
async def dingtalk(aiohttp_server: Any) -> tuple[DingTalkStreamFake, DingTalkSettings]:
    fake = DingTalkStreamFake()
    server = await aiohttp_server(build_dingtalk_stream_fake_app(fake))
    cfg = DingTalkSettings(
        app_key=fake.client_id,
        app_secret=fake.client_secret,
        robot_code="dingrobotcode",
        card_template_id="tpl.schema",
        api_base=str(server.make_url("")).rstrip("/"),
        mode="stream",
    )
    return fake, cfg


def dingtalk_connection(cfg: DingTalkSettings, submit: Recorder) -> DingTalkStreamConnection:
    return DingTalkStreamConnection(cfg, submit, backoff_initial_s=0.01, backoff_max_s=0.2)


async def test_dingtalk_callbacks_become_neutral_events_and_are_acknowledged(
    dingtalk: tuple[DingTalkStreamFake, DingTalkSettings], dispatcher: Dispatcher
) -> None:
    fake, cfg = dingtalk
    sim, submit = DingTalkSimulator(), Recorder(dispatcher)
    async with running(dingtalk_connection(cfg, submit)):
        text = await fake.push_robot(sim.text(" /任务 ", "user123", msg_id="m1", chat_id="cid-group"))
        picture = await fake.push_robot(sim.picture("DLCODE", "user123", msg_id="m2"))
        rich = await fake.push_robot(
            sim.rich_text([{"text": "A-01 "}, {"downloadCode": "RC1"}, {"text": "12"}], msg_id="m3")
        )
        card = await fake.push_card(
            sim.card_callback(
                "track-1", "manager01", action_ids=["approve"], payload="packed", params={"n": 1}
            )
        )
        ping = await fake.ping()
        acks = {mid: await guarded(fake.ack(mid)) for mid in (text, picture, rich, card, ping)}

    assert fake.opens[0]["subscriptions"] == [
        {"type": "CALLBACK", "topic": ROBOT_TOPIC},
        {"type": "CALLBACK", "topic": CARD_TOPIC},
    ]
    assert {mid: a["code"] for mid, a in acks.items()} == dict.fromkeys(acks, 200)
    assert acks[text]["data"] == {"response": "OK"} and acks[card]["data"] == {"response": {}}
    assert acks[ping]["data"]["opaque"].startswith("op-")  # a ping's data comes back as it was

    by_key = {e.dedup_key: e for e in submit.events}  # frames are handled concurrently, in no set order
    t, p, ri, rt = (by_key[f"dingtalk:msg:{k}"] for k in ("m1", "m2", "m3", "m3:text"))
    c = next(e for e in submit.events if isinstance(e, CardAction))
    assert isinstance(t, TextMessage) and t.text == "/任务" and t.dedup_key == "dingtalk:msg:m1"
    assert t.platform == Platform.DINGTALK and t.sender.user_id == "user123" and t.chat_id == "cid-group"
    assert isinstance(p, ImageMessage) and p.media_ref == "DLCODE" and p.dedup_key == "dingtalk:msg:m2"
    assert isinstance(ri, ImageMessage) and ri.media_ref == "RC1" and ri.dedup_key == "dingtalk:msg:m3"
    assert isinstance(rt, TextMessage) and rt.text == "A-01 12" and rt.dedup_key == "dingtalk:msg:m3:text"
    assert isinstance(c, CardAction) and c.payload == "packed" and dict(c.form) == {"n": "1"}
    assert c.card_ref == "track-1" and c.dedup_key.startswith("dingtalk:card:track-1:manager01:approve:")
    assert all(ok for _, ok in submit.calls)
    await dispatcher.drain()


async def test_dingtalk_reconnects_after_a_drop_or_a_disconnect_and_a_redelivery_counts_once(
    dingtalk: tuple[DingTalkStreamFake, DingTalkSettings], dispatcher: Dispatcher
) -> None:
    fake, cfg = dingtalk
    sim, submit = DingTalkSimulator(), Recorder(dispatcher)
    async with running(dingtalk_connection(cfg, submit)):
        count = sim.text("/盘点 7 10", msg_id="m-count")
        await guarded(fake.ack(await fake.push_robot(count, message_id="frame-1")))
        await guarded(fake.drop())
        later = await fake.push_robot(sim.text("/任务", msg_id="m-later"))  # waits for the next connection
        await guarded(fake.ack(later))
        again = await fake.push_robot(count, message_id="frame-1")  # the gateway delivers frame-1 again
        assert (await guarded(fake.ack(again)))["code"] == 200
        await fake.disconnect()  # the gateway asks the client to move
        await guarded(fake.wait_for(lambda: fake.connects == 3))
        after = await fake.push_robot(sim.text("/帮助", msg_id="m-after"))
        await guarded(fake.ack(after))

    keys = [(e.dedup_key, ok) for e, ok in submit.calls]
    assert keys == [
        ("dingtalk:msg:m-count", True),
        ("dingtalk:msg:m-later", True),
        ("dingtalk:msg:m-count", False),
        ("dingtalk:msg:m-after", True),
    ]
    assert dispatcher.stats["accepted"] == 3 and dispatcher.stats["duplicates"] == 1
    assert len(fake.opens) == 3  # a fresh ticket for each connection
    await dispatcher.drain()


async def test_dingtalk_frames_that_cannot_be_read_do_not_stop_the_loop(
    dingtalk: tuple[DingTalkStreamFake, DingTalkSettings],
) -> None:
    fake, cfg = dingtalk
    sim, submit = DingTalkSimulator(), Recorder()
    conn = dingtalk_connection(cfg, submit)
    async with running(conn):
        await fake.push_raw("not json")
        await fake.push_raw(json.dumps(["a", "list"]))
        not_json = await fake.push("CALLBACK", ROBOT_TOPIC, "{not json")
        a_list = await fake.push("CALLBACK", ROBOT_TOPIC, "[1, 2]")
        no_id = await fake.push_robot({"msgtype": "text", "text": {"content": "hi"}})
        bad_card = await fake.push_card({"outTrackId": "t", "userId": "u", "content": "{broken"})
        other = await fake.push("CALLBACK", "/v1.0/some/other/topic", {"x": 1})
        voice = await fake.push_robot({**sim.text("", msg_id="m-voice"), "msgtype": "audio", "content": {}})
        good = await fake.push_robot(sim.text("/帮助", msg_id="m-ok"))
        acks = [await guarded(fake.ack(m)) for m in (not_json, a_list, no_id, bad_card, other, voice, good)]

    assert [a["code"] for a in acks] == [400, 400, 400, 400, 404, 200, 200]
    assert [e.dedup_key for e in submit.events] == ["dingtalk:msg:m-ok"]
    assert conn.stats["connects"] == 1 and conn.stats["malformed"] == 6


async def test_dingtalk_a_failed_submit_sends_no_ack_and_the_redelivery_is_taken(
    dingtalk: tuple[DingTalkStreamFake, DingTalkSettings],
) -> None:
    fake, cfg = dingtalk
    sim, submit = DingTalkSimulator(), Recorder(fail=1)
    async with running(dingtalk_connection(cfg, submit)):
        mid = await fake.push_robot(sim.text("/任务", msg_id="m1"))
        await guarded(submit.changed.wait())
        assert submit.failures == 1
        ping = await fake.ping()  # the connection still answers
        await guarded(fake.ack(ping))
        assert mid not in fake.acks
        await guarded(fake.drop())  # the unacknowledged frame comes again on the next connection
        assert (await guarded(fake.ack(mid)))["code"] == 200
    assert [e.dedup_key for e in submit.events] == ["dingtalk:msg:m1"] and len(fake.acks[mid]) == 1


async def test_dingtalk_refusals_back_off_and_close_stops_a_waiting_loop(
    dingtalk: tuple[DingTalkStreamFake, DingTalkSettings],
) -> None:
    fake, cfg = dingtalk
    fake.refuse_open = 3
    async with running(dingtalk_connection(cfg, Recorder())):
        await guarded(fake.wait_for(lambda: fake.connected == 1))
    assert len(fake.opens) == 4 and fake.connected == 0

    wrong = cfg.model_copy(update={"app_secret": SecretStr("wrong")})
    conn = DingTalkStreamConnection(wrong, Recorder(), backoff_initial_s=0.01, backoff_max_s=0.05)
    async with running(conn):
        await guarded(fake.wait_for(lambda: len(fake.opens) >= 7))  # keeps trying, never raises
    assert fake.connects == 1


# ---- imports --------------------------------------------------------------------------------------------


def _modules_after(code: str) -> list[str]:
    probe = f"import json, sys; {code}; print(json.dumps([m for m in ('lark_oapi', 'dingtalk_stream') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_webhook_and_http_modes_never_import_the_sdks() -> None:
    """In a fresh interpreter: the server with both platforms in their HTTP modes loads neither SDK."""
    code = (
        "from bot.app import build_app; from core.clock import SystemClock; from core.config import Settings; "
        "build_app(clock=SystemClock(), settings=Settings(database_url='sqlite+aiosqlite:///:memory:', "
        "feishu={'app_id': 'a', 'app_secret': 's', 'verification_token': 't', 'mode': 'webhook'}, "
        "dingtalk={'app_key': 'k', 'app_secret': 's', 'robot_code': 'r', 'card_template_id': 'c', 'mode': 'http'}))"
    )
    assert _modules_after(code) == []


def test_the_long_connection_modules_load_their_sdk_only_when_run() -> None:
    code = (
        "from integrations.feishu.settings import FeishuSettings as F; "
        "from integrations.feishu.ws import FeishuLongConnection as L; "
        "from integrations.dingtalk.settings import DingTalkSettings as D; "
        "from integrations.dingtalk.stream import DingTalkStreamConnection as S; "
        "L(F(app_id='a', app_secret='s', verification_token='t', mode='websocket'), None); "
        "S(D(app_key='k', app_secret='s', robot_code='r', card_template_id='c', mode='stream'), None)"
    )
    assert _modules_after(code) == []
