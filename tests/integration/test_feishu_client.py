"""FeishuChannel against the fake Feishu Open API (tests/fakes/feishu.py) on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.channel import Address, ChannelError, SentRef
from bot.events import Platform
from integrations.feishu.client import FeishuChannel, send_uuid
from integrations.feishu.settings import FeishuSettings
from tests.fakes.feishu import RATE_LIMITED, Fault, FeishuFake, build_feishu_fake_app

CARD: dict[str, Any] = {
    "schema": "2.0",
    "config": {"update_multi": True},
    "header": {"title": {"tag": "plain_text", "content": "今日盘点任务"}, "template": "blue"},
    "body": {"elements": [{"tag": "div", "text": {"tag": "plain_text", "content": "A-01-03"}}]},
}
USER = Address(Platform.FEISHU, user_id="ou_u1")


@dataclass
class Clock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Env:
    fake: FeishuFake
    channel: FeishuChannel
    clock: Clock


@pytest.fixture
async def env(aiohttp_server: Callable[[web.Application], Any]) -> AsyncIterator[Env]:
    clock = Clock()
    fake = FeishuFake(clock=clock)
    server: TestServer = await aiohttp_server(build_feishu_fake_app(fake))
    settings = FeishuSettings(
        app_id=fake.app_id,
        app_secret=fake.app_secret,
        verification_token="v",
        encrypt_key="k",
        domain=str(server.make_url("")),
    )
    channel = FeishuChannel(settings, monotonic=clock, now=lambda: datetime(2024, 6, 1, tzinfo=UTC))
    yield Env(fake, channel, clock)
    await channel.close()


async def test_send_text_and_card_with_json_string_content(env: Env) -> None:
    ref = await env.channel.send_text(USER, "你好", idempotency_key="k1")
    card_ref = await env.channel.send_card(
        Address(Platform.FEISHU, chat_id="oc_g"), CARD, idempotency_key="k2"
    )
    text, card = env.fake.sent()
    assert (text["receive_id_type"], text["msg_type"], json.loads(text["content"])) == (
        "open_id",
        "text",
        {"text": "你好"},
    )
    assert (card["receive_id_type"], card["receive_id"], json.loads(card["content"])) == (
        "chat_id",
        "oc_g",
        CARD,
    )
    assert ref.message_id == text["message_id"] and ref.card_ref is None
    assert card_ref == SentRef(
        Platform.FEISHU,
        card["message_id"],
        card_ref=card["message_id"],
        sent_at=datetime(2024, 6, 1, tzinfo=UTC),
    )


async def test_token_is_cached_and_refreshed_when_under_30_minutes_remain(env: Env) -> None:
    for i in range(3):
        await env.channel.send_text(USER, "x", idempotency_key=f"a{i}")
        env.clock.t += 1.0  # stay under the fake's 5 QPS
    assert [r for r, _ in env.fake.requests].count("token") == 1
    env.clock.t += 7200 - 1800 + 1  # now < 30 min remain: Feishu issues a new one
    await env.channel.send_text(USER, "x", idempotency_key="b")
    assert env.fake.issued == ["t-1", "t-2"]


async def test_an_invalid_token_is_refreshed_once_and_the_call_retried(env: Env) -> None:
    await env.channel.send_text(USER, "x", idempotency_key="a")
    env.fake.revoke_tokens()
    ref = await env.channel.send_text(USER, "y", idempotency_key="b")
    assert ref.message_id == "om_2"
    assert env.fake.issued == ["t-1", "t-2"]


async def test_uuid_dedups_repeated_sends(env: Env) -> None:
    a = await env.channel.send_card(USER, CARD, idempotency_key="task-42:prompt")
    b = await env.channel.send_card(USER, CARD, idempotency_key="task-42:prompt")
    assert a.message_id == b.message_id and len(env.fake.sent()) == 1
    long_key = "x" * 80
    assert len(send_uuid(long_key)) <= 50 and send_uuid(long_key) == send_uuid(long_key)
    await env.channel.send_text(USER, "long", idempotency_key=long_key)
    assert len(env.fake.sent()) == 2


async def test_rate_limit_is_retryable_with_the_reset_hint(env: Env) -> None:
    for i in range(5):
        await env.channel.send_text(USER, "x", idempotency_key=f"r{i}")
    with pytest.raises(ChannelError) as info:
        await env.channel.send_text(USER, "x", idempotency_key="r5")
    err = info.value
    assert (err.code, err.retryable, err.retry_after) == (RATE_LIMITED, True, 1.0)
    # other receivers are not limited, and the limit passes after the reset
    await env.channel.send_text(Address(Platform.FEISHU, user_id="ou_u2"), "x", idempotency_key="o")
    env.clock.t += 1.0
    await env.channel.send_text(USER, "x", idempotency_key="r5")


async def test_injected_faults_map_to_retryable_or_not(env: Env) -> None:
    env.fake.fail_next("send", Fault(status=400, code=RATE_LIMITED, headers={"x-ogw-ratelimit-reset": "7"}))
    with pytest.raises(ChannelError) as info:
        await env.channel.send_text(USER, "x", idempotency_key="f1")
    assert (info.value.retryable, info.value.retry_after) == (True, 7.0)
    env.fake.fail_next("send", Fault(status=503))
    with pytest.raises(ChannelError) as info:
        await env.channel.send_text(USER, "x", idempotency_key="f2")
    assert info.value.retryable and info.value.retry_after is None
    env.fake.fail_next("send", Fault(status=400, code=230013, msg="bot has no availability to this user"))
    with pytest.raises(ChannelError) as info:
        await env.channel.send_text(USER, "x", idempotency_key="f3")
    assert (info.value.code, info.value.retryable) == (230013, False)


async def test_bad_app_secret_is_not_retryable(env: Env) -> None:
    env.channel.settings = env.channel.settings.model_copy(update={"app_secret": "wrong"})
    with pytest.raises(ChannelError) as info:
        await env.channel.send_text(USER, "x", idempotency_key="s")
    assert not info.value.retryable


async def test_unreachable_platform_is_retryable() -> None:
    settings = FeishuSettings(app_id="a", app_secret="s", verification_token="v", domain="http://127.0.0.1:9")
    channel = FeishuChannel(settings)
    try:
        with pytest.raises(ChannelError) as info:
            await channel.send_text(USER, "x", idempotency_key="u")
        assert info.value.retryable
    finally:
        await channel.close()


async def test_patch_updates_a_card_with_update_multi(env: Env) -> None:
    ref = await env.channel.send_card(USER, CARD, idempotency_key="c")
    done = {**CARD, "header": {"title": {"tag": "plain_text", "content": "已提交"}, "template": "green"}}
    assert await env.channel.update_card(ref, done) == ref
    stored = env.fake.messages[ref.message_id or ""]
    assert json.loads(stored["content"]) == done and stored["updates"] == 1


async def test_patch_fails_without_update_multi(env: Env) -> None:
    ref = await env.channel.send_card(USER, CARD, idempotency_key="c")
    with pytest.raises(ChannelError) as info:
        await env.channel.update_card(ref, {**CARD, "config": {}})
    assert not info.value.retryable
    legacy = await env.channel.send_card(USER, {**CARD, "config": {}}, idempotency_key="d")
    with pytest.raises(ChannelError):
        await env.channel.update_card(legacy, CARD)


async def test_download_image(env: Env) -> None:
    env.fake.resources[("om_in_1", "img_v3_abc")] = b"\x89PNG fake"
    assert await env.channel.download_image("img_v3_abc", message_id="om_in_1") == b"\x89PNG fake"
    assert ("resource", "om_in_1/img_v3_abc") in env.fake.requests
    with pytest.raises(ChannelError) as info:
        await env.channel.download_image("img_missing", message_id="om_in_1")
    assert info.value.code == 234003 and not info.value.retryable
    with pytest.raises(ChannelError):
        await env.channel.download_image("img_v3_abc")
