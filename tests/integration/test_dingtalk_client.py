"""DingTalkChannel against the fake DingTalk API (tests/fakes/dingtalk.py) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from bot.channel import Address, Channel, ChannelError, SentRef
from bot.events import ImageMessage, Platform
from integrations.dingtalk.client import (
    BATCH_SEND_PATH,
    CREATE_CARD_PATH,
    MESSAGE_FILE_PATH,
    UPDATE_CARD_PATH,
    DingTalkChannel,
)
from integrations.dingtalk.settings import DingTalkSettings
from integrations.dingtalk.webhook import DingTalkWebhook
from tests.fakes.dingtalk import DingTalkFakeState, DingTalkSimulator, build_dingtalk_fake_app

USER = Address(Platform.DINGTALK, user_id="manager01")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Any]) -> tuple[DingTalkFakeState, str]:
    state = DingTalkFakeState()
    server = await aiohttp_server(build_dingtalk_fake_app(state))
    return state, str(server.make_url("")).rstrip("/")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def channel(
    fake: tuple[DingTalkFakeState, str], clock: Clock, sleeps: list[float]
) -> AsyncIterator[DingTalkChannel]:
    state, base = fake

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = DingTalkSettings(
        app_key=state.app_key,
        app_secret=state.app_secret,
        robot_code=state.robot_code,
        card_template_id="1234abcd.schema",
        api_base=base,
        oapi_base=base,
    )
    ch = DingTalkChannel(settings, clock=clock, sleep=sleep, jitter=lambda: 0.5)
    yield ch
    await ch.close()


@pytest.fixture
def state(fake: tuple[DingTalkFakeState, str]) -> DingTalkFakeState:
    return fake[0]


def test_channel_satisfies_the_protocol(channel: DingTalkChannel) -> None:
    ch: Channel = channel
    assert ch.platform is Platform.DINGTALK and ch.capabilities.name == "dingtalk"


async def test_send_text_uses_batch_send_with_a_json_string_param(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    ref = await channel.send_text(USER, "今日盘点 3 项", idempotency_key="k1")
    assert ref.message_id and ref.message_id.startswith("pqk-")
    (sent,) = state.sent
    assert sent["userIds"] == ["manager01"] and sent["msgKey"] == "sampleText"
    assert json.loads(sent["msgParam"]) == {"content": "今日盘点 3 项"}
    (call,) = state.calls(BATCH_SEND_PATH)
    assert call.headers["x-acs-dingtalk-access-token"] == "dt-1"


async def test_token_is_cached_and_refreshed_five_minutes_early(
    channel: DingTalkChannel, state: DingTalkFakeState, clock: Clock
) -> None:
    await channel.send_text(USER, "a", idempotency_key="1")
    clock.now += 7200 - 301
    await channel.send_text(USER, "b", idempotency_key="2")
    assert state.token_requests == 1
    clock.now += 2
    await channel.send_text(USER, "c", idempotency_key="3")
    assert state.token_requests == 2
    tokens = [c.headers["x-acs-dingtalk-access-token"] for c in state.calls(BATCH_SEND_PATH)]
    assert tokens == ["dt-1", "dt-1", "dt-2"]


async def test_an_expired_token_is_refreshed_once_and_the_call_retried(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    await channel.send_text(USER, "a", idempotency_key="1")
    state.expire_tokens()
    await channel.send_text(USER, "b", idempotency_key="2")
    assert state.token_requests == 2
    assert len(state.sent) == 2


async def test_a_token_refused_twice_is_retryable(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    state.inject(BATCH_SEND_PATH, 401, {"code": "InvalidAuthentication"}, times=2)
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert exc.value.retryable and state.token_requests == 2 and not state.sent


async def test_wrong_credentials_are_not_retryable(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    state.app_secret = "rotated"
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert not exc.value.retryable


async def test_flow_controlled_users_make_a_retryable_error(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    state.throttled_users.add("manager01")
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert exc.value.retryable and exc.value.code == "flow_controlled" and exc.value.retry_after


async def test_batch_send_takes_at_most_twenty_users(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    users = [f"u{i}" for i in range(21)]
    with pytest.raises(ValueError):
        await channel.batch_send(users, "sampleText", {"content": "x"})
    assert not state.calls(BATCH_SEND_PATH)
    await channel.batch_send(users[:20], "sampleText", {"content": "x"})
    assert len(state.sent[0]["userIds"]) == 20


async def test_the_fake_refuses_more_than_twenty_users(fake: tuple[DingTalkFakeState, str]) -> None:
    state, base = fake
    state.tokens.add("t")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base + BATCH_SEND_PATH,
            json={
                "robotCode": state.robot_code,
                "userIds": [str(i) for i in range(21)],
                "msgKey": "sampleText",
                "msgParam": "{}",
            },
            headers={"x-acs-dingtalk-access-token": "t"},
        ) as resp,
    ):
        assert resp.status == 400


async def test_qps_limit_is_retried_with_back_off(
    channel: DingTalkChannel, state: DingTalkFakeState, sleeps: list[float]
) -> None:
    state.inject_qps_limit(BATCH_SEND_PATH, times=2)
    await channel.send_text(USER, "a", idempotency_key="1")
    assert sleeps == [0.5, 1.0] and len(state.sent) == 1


async def test_qps_limit_that_persists_is_retryable(
    channel: DingTalkChannel, state: DingTalkFakeState, sleeps: list[float]
) -> None:
    state.inject_qps_limit(CREATE_CARD_PATH, times=3)
    with pytest.raises(ChannelError) as exc:
        await channel.send_card(USER, {"title": "x"}, idempotency_key="c1")
    assert exc.value.retryable and exc.value.retry_after == 2.0
    assert exc.value.code == "Forbidden.AccessDenied.QpsLimitForApi"
    assert len(sleeps) == 2 and not state.cards


async def test_a_permission_403_is_not_retried(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    state.inject(BATCH_SEND_PATH, 403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied"})
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert not exc.value.retryable


async def test_5xx_on_a_send_is_retryable_and_not_repeated_here(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    state.inject_server_error(BATCH_SEND_PATH)
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert exc.value.retryable
    assert len(state.calls(BATCH_SEND_PATH)) == 1


async def test_400_is_not_retryable(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    state.inject(BATCH_SEND_PATH, 400, {"code": "invalidParameter", "message": "bad"})
    with pytest.raises(ChannelError) as exc:
        await channel.send_text(USER, "a", idempotency_key="1")
    assert not exc.value.retryable and exc.value.code == "invalidParameter"


async def test_card_create_then_update_by_key(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    card = {"title": "盘点差异待审批", "diff": "-8", "status": "待审批", "buttons": "[]"}
    ref = await channel.send_card(USER, card, idempotency_key="cc-20240601-42-manager01")
    assert ref == SentRef(Platform.DINGTALK, None, card_ref="cc-20240601-42-manager01", sent_at=ref.sent_at)
    (delivery,) = state.deliveries
    assert delivery["cardTemplateId"] == "1234abcd.schema"
    assert delivery["openSpaceId"] == "dtv1.card//IM_ROBOT.manager01"
    assert delivery["imRobotOpenDeliverModel"] == {"spaceType": "IM_ROBOT", "robotCode": state.robot_code}
    assert delivery["callbackType"] == "HTTP" and delivery["userIdType"] == 1

    assert await channel.update_card(ref, {"status": "已通过"}) == ref
    assert state.cards["cc-20240601-42-manager01"] == {**card, "status": "已通过"}
    assert state.card_versions["cc-20240601-42-manager01"] == 2
    (put,) = state.calls(UPDATE_CARD_PATH)
    assert put.method == "PUT" and put.body["cardUpdateOptions"] == {"updateCardDataByKey": True}


async def test_card_to_a_group(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    await channel.send_card(Address(Platform.DINGTALK, chat_id="cidG"), {"t": "x"}, idempotency_key="g1")
    assert state.deliveries[0]["openSpaceId"] == "dtv1.card//IM_GROUP.cidG"


async def test_idempotency_keys_become_safe_stable_out_track_ids(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    key = "approval:42/manager 01:" + "x" * 80
    a = await channel.send_card(USER, {"t": "x"}, idempotency_key=key)
    b = await channel.send_card(USER, {"t": "x"}, idempotency_key=key)
    assert a.card_ref == b.card_ref
    assert a.card_ref is not None and len(a.card_ref) <= 64
    assert all(c.isalnum() or c in "-_" for c in a.card_ref)


async def test_non_string_card_values_are_refused_before_sending(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    with pytest.raises(ChannelError) as exc:
        await channel.send_card(USER, {"title": "x", "count": 3}, idempotency_key="c1")
    assert exc.value.code == "card_param_not_string" and not exc.value.retryable
    await channel.send_card(USER, {"title": "x"}, idempotency_key="c1")
    with pytest.raises(ChannelError):
        await channel.update_card(SentRef(Platform.DINGTALK, None, card_ref="c1"), {"flag": True})
    assert len(state.calls(CREATE_CARD_PATH)) == 1 and not state.calls(UPDATE_CARD_PATH)


async def test_the_fake_rejects_non_string_card_values(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    body = {
        "cardTemplateId": "t.schema",
        "outTrackId": "o1",
        "cardData": {"cardParamMap": {"n": 1}},
        "openSpaceId": "dtv1.card//IM_ROBOT.u",
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT", "robotCode": state.robot_code},
    }
    with pytest.raises(ChannelError) as exc:
        await channel._call("POST", CREATE_CARD_PATH, body, idempotent=False)
    assert exc.value.code == "invalidParameter.cardParamMap" and not state.cards


async def test_updating_an_unknown_card_fails(channel: DingTalkChannel) -> None:
    with pytest.raises(ChannelError) as exc:
        await channel.update_card(SentRef(Platform.DINGTALK, None, card_ref="nope"), {"s": "x"})
    assert not exc.value.retryable


async def test_card_update_is_retried_on_5xx(
    channel: DingTalkChannel, state: DingTalkFakeState, sleeps: list[float]
) -> None:
    ref = await channel.send_card(USER, {"s": "a"}, idempotency_key="c1")
    state.inject_server_error(UPDATE_CARD_PATH)
    await channel.update_card(ref, {"s": "b"})
    assert state.cards["c1"] == {"s": "b"} and len(sleeps) == 1


async def test_download_image_resolves_the_code_then_fetches_the_bytes(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    state.files["DLCODE1"] = b"\xff\xd8jpeg bytes"
    assert await channel.download_image("DLCODE1") == b"\xff\xd8jpeg bytes"
    (call,) = state.calls(MESSAGE_FILE_PATH)
    assert call.body == {"downloadCode": "DLCODE1", "robotCode": state.robot_code}


async def test_download_image_survives_a_qps_limit_and_a_5xx(
    channel: DingTalkChannel, state: DingTalkFakeState, sleeps: list[float]
) -> None:
    state.files["D"] = b"img"
    state.inject_qps_limit(MESSAGE_FILE_PATH)
    state.inject_server_error("/files/D")
    assert await channel.download_image("D") == b"img"
    assert len(sleeps) == 2


async def test_an_unknown_download_code_is_not_retryable(channel: DingTalkChannel) -> None:
    with pytest.raises(ChannelError) as exc:
        await channel.download_image("missing")
    assert not exc.value.retryable


async def test_unreachable_platform_is_retryable(
    clock: Clock, sleeps: list[float], unused_tcp_port: int
) -> None:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = DingTalkSettings(
        app_key="k",
        app_secret="s",
        robot_code="r",
        card_template_id="t.schema",
        api_base=f"http://127.0.0.1:{unused_tcp_port}",
    )
    ch = DingTalkChannel(settings, clock=clock, sleep=sleep)
    try:
        with pytest.raises(ChannelError) as exc:
            await ch.send_text(USER, "a", idempotency_key="1")
        assert exc.value.retryable and exc.value.code == "network"
    finally:
        await ch.close()


async def test_the_session_webhook_sink_records_replies(
    aiohttp_client: Callable[..., Any], state: DingTalkFakeState
) -> None:
    client = await aiohttp_client(build_dingtalk_fake_app(state))
    resp = await client.post(
        "/robot/sendBySession?session=s-u", json={"msgtype": "text", "text": {"content": "收到"}}
    )
    assert resp.status == 200
    assert state.session_replies == [
        {"session": "s-u", "body": {"msgtype": "text", "text": {"content": "收到"}}}
    ]


async def test_concurrent_calls_share_one_token(channel: DingTalkChannel, state: DingTalkFakeState) -> None:
    await asyncio.gather(*(channel.send_text(USER, str(i), idempotency_key=str(i)) for i in range(5)))
    assert state.token_requests == 1 and len(state.sent) == 5


async def test_a_photo_sent_to_the_robot_is_downloaded_by_its_code(
    channel: DingTalkChannel, state: DingTalkFakeState
) -> None:
    sim = DingTalkSimulator(state.app_secret, robot_code=state.robot_code)
    webhook = DingTalkWebhook(channel._settings)
    now = datetime.now(UTC)
    headers, body = sim.signed(sim.picture("DL-42"), int(now.timestamp() * 1000))
    (event,) = webhook.handle_robot(headers, body, now).events
    assert isinstance(event, ImageMessage)
    state.files["DL-42"] = b"barcode photo"
    assert await channel.download_image(event.media_ref, message_id=event.message_id) == b"barcode photo"
