"""WeComChannel against the fake WeCom server (tests/fakes/wecom.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.channel import Address, Channel, ChannelError, SentRef
from bot.events import Platform
from integrations.wecom.client import WeComChannel
from integrations.wecom.settings import WeComSettings
from tests.fakes.wecom import WeComFakeState, build_wecom_fake_app

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cards"
TO = Address(Platform.WECOM, user_id="manager01")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def state() -> WeComFakeState:
    return WeComFakeState(slow_s=4.0)  # far beyond the channel's timeout, which a loaded machine still meets


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def channel(aiohttp_server: Any, state: WeComFakeState, clock: Clock) -> AsyncIterator[WeComChannel]:
    server = await aiohttp_server(build_wecom_fake_app(state))
    settings = WeComSettings(
        corp_id=state.corp_id,
        agent_id=state.agent_id,
        secret=state.secret,
        token="tok3n",
        encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        api_base=str(server.make_url("")),
    )
    ch = WeComChannel(settings, timeout_s=1.5, clock=clock)  # 0.3 s timed out a plain gettoken under load
    yield ch
    await ch.close()


def card(task_id: str = "approval-42-1") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "approval.wecom.json").read_text(encoding="utf-8"))
    data["task_id"] = task_id
    return data


def test_channel_satisfies_the_protocol() -> None:
    def takes(c: Channel) -> None:
        assert c.platform is Platform.WECOM and c.capabilities.max_buttons == 6

    takes(
        WeComChannel(WeComSettings(corp_id="c", agent_id=1, secret="s", token="t", encoding_aes_key="a" * 43))
    )


async def test_send_text(channel: WeComChannel, state: WeComFakeState) -> None:
    ref = await channel.send_text(TO, "今天有 3 个库位待盘点", idempotency_key="k1")
    assert ref.platform is Platform.WECOM and ref.message_id and ref.update_token is None
    (sent,) = state.delivered
    assert sent["touser"] == "manager01" and sent["agentid"] == state.agent_id
    assert sent["msgtype"] == "text" and sent["text"] == {"content": "今天有 3 个库位待盘点"}
    assert "enable_duplicate_check" not in sent  # WeCom's check is by content: see below


async def test_token_is_cached(channel: WeComChannel, state: WeComFakeState) -> None:
    for i in range(3):
        await channel.send_text(TO, f"n{i}", idempotency_key=str(i))
    assert state.token_fetches == 1


async def test_token_is_fetched_again_five_minutes_before_expiry(
    channel: WeComChannel, state: WeComFakeState, clock: Clock
) -> None:
    await channel.send_text(TO, "a", idempotency_key="a")
    clock.t += 7200 - 301
    await channel.send_text(TO, "b", idempotency_key="b")
    assert state.token_fetches == 1
    clock.t += 2
    await channel.send_text(TO, "c", idempotency_key="c")
    assert state.token_fetches == 2


async def test_expired_token_is_refreshed_once_and_the_call_repeated(
    channel: WeComChannel, state: WeComFakeState
) -> None:
    await channel.send_text(TO, "a", idempotency_key="a")
    state.expire_tokens()
    ref = await channel.send_text(TO, "b", idempotency_key="b")
    assert ref.message_id and state.token_fetches == 2
    sends = [c[1]["access_token"] for c in state.calls_to("/cgi-bin/message/send")]
    assert sends == ["T1", "T1", "T3"]  # the 42001 answer, then the repeat with a new token
    assert [m["text"]["content"] for m in state.delivered] == ["a", "b"]


async def test_concurrent_calls_refused_with_one_token_fetch_one_new_token(
    channel: WeComChannel, state: WeComFakeState
) -> None:
    await channel.send_text(TO, "warm", idempotency_key="w")
    state.expire_tokens()
    await asyncio.gather(*(channel.send_text(TO, f"m{i}", idempotency_key=str(i)) for i in range(5)))
    assert state.token_fetches == 2 and len(state.delivered) == 6


async def test_invalid_token_is_refreshed(channel: WeComChannel, state: WeComFakeState) -> None:
    await channel.send_text(TO, "a", idempotency_key="a")
    state.tokens.clear()  # 40014 from now on for T1
    await channel.send_text(TO, "b", idempotency_key="b")
    assert state.token_fetches == 2 and len(state.delivered) == 2


async def test_token_refused_twice_is_retryable(channel: WeComChannel, state: WeComFakeState) -> None:
    state.inject("42001", times=2, route="/cgi-bin/message/send")
    with pytest.raises(ChannelError) as e:
        await channel.send_text(TO, "a", idempotency_key="a")
    assert e.value.code == 42001 and e.value.retryable
    assert state.token_fetches == 2 and not state.delivered


async def test_wrong_secret_is_permanent(channel: WeComChannel, state: WeComFakeState) -> None:
    state.secret = "rotated"
    with pytest.raises(ChannelError) as e:
        await channel.send_text(TO, "a", idempotency_key="a")
    assert e.value.code == 40001 and not e.value.retryable
    assert len(state.calls_to("/cgi-bin/gettoken")) == 1  # repeated bad secrets get the IP banned


async def test_rate_limit_is_retryable_after_a_minute(channel: WeComChannel, state: WeComFakeState) -> None:
    state.inject("45009")
    with pytest.raises(ChannelError) as e:
        await channel.send_text(TO, "a", idempotency_key="a")
    assert (e.value.code, e.value.retryable, e.value.retry_after) == (45009, True, 60.0)
    await channel.send_text(TO, "a", idempotency_key="a")  # the fault was for one call
    assert len(state.delivered) == 1


@pytest.mark.parametrize(("fault", "code"), [("-1", -1), ("500", 500), ("slow", "timeout")])
async def test_busy_server_error_and_timeout_are_retryable(
    channel: WeComChannel, state: WeComFakeState, fault: str, code: object
) -> None:
    state.inject(fault)
    with pytest.raises(ChannelError) as e:
        await channel.send_text(TO, "a", idempotency_key="a")
    assert e.value.code == code and e.value.retryable


async def test_other_errcodes_are_permanent(channel: WeComChannel, state: WeComFakeState) -> None:
    state.inject("60020")  # IP not trusted
    with pytest.raises(ChannelError) as e:
        await channel.send_text(TO, "a", idempotency_key="a")
    assert e.value.code == 60020 and not e.value.retryable


async def test_group_addresses_are_refused(channel: WeComChannel) -> None:
    with pytest.raises(ChannelError) as e:
        await channel.send_text(Address(Platform.WECOM, chat_id="g1"), "a", idempotency_key="a")
    assert not e.value.retryable


async def test_send_card_returns_task_id_and_response_code(
    channel: WeComChannel, state: WeComFakeState
) -> None:
    ref = await channel.send_card(TO, card(), idempotency_key="c1")
    assert ref.card_ref == "approval-42-1" and ref.message_id
    assert ref.update_token in state.response_codes
    (sent,) = state.delivered
    assert sent["msgtype"] == "template_card" and sent["template_card"] == card()


async def test_duplicate_check_delivers_once(channel: WeComChannel, state: WeComFakeState) -> None:
    first = await channel.send_card(TO, card(), idempotency_key="c1")
    again = await channel.send_card(TO, card(), idempotency_key="c1")  # e.g. the outbox retried
    assert again.message_id == first.message_id and len(state.delivered) == 1
    state.advance(1801)
    with pytest.raises(ChannelError):  # outside the window: a real second send, and task_id is taken
        await channel.send_card(TO, card(), idempotency_key="c1")
    # texts go without it: two different messages with the same words (two items counted "已记录（10个）")
    # must both arrive, and WeCom's check would drop the second
    await channel.send_text(TO, "✓ 已记录（10个）", idempotency_key="t1")
    await channel.send_text(TO, "✓ 已记录（10个）", idempotency_key="t2")
    assert len(state.delivered) == 3


async def test_fake_validates_cards(channel: WeComChannel) -> None:
    bad_id = card("审批 42")
    with pytest.raises(ChannelError) as e:
        await channel.send_card(TO, bad_id, idempotency_key="c")
    assert not e.value.retryable
    many = card("approval-7")
    many["button_list"] = many["button_list"] * 3
    with pytest.raises(ChannelError):
        await channel.send_card(TO, many, idempotency_key="c")


async def test_update_card_once_then_the_code_is_spent(channel: WeComChannel, state: WeComFakeState) -> None:
    ref = await channel.send_card(TO, card(), idempotency_key="c1")
    decided = card() | {"button_list": []}
    after = await channel.update_card(ref, decided)
    assert after.update_token is None and after.card_ref == ref.card_ref
    (update,) = state.updates
    assert update["response_code"] == ref.update_token and update["template_card"] == decided
    with pytest.raises(ChannelError) as e:
        await channel.update_card(ref, decided)
    assert e.value.code == state.update_errcode and not e.value.retryable
    with pytest.raises(ChannelError):
        await channel.update_card(after, decided)  # no code left at all


async def test_update_with_a_click_code_greys_the_buttons(
    channel: WeComChannel, state: WeComFakeState
) -> None:
    await channel.send_card(TO, card(), idempotency_key="c1")
    click_code = state.issue_response_code("manager01", "approval-42-1")
    ref = SentRef(Platform.WECOM, None, card_ref="approval-42-1", update_token=click_code)
    await channel.update_card(ref, {"button": {"replace_name": "已通过"}})
    assert state.updates[-1]["button"] == {"replace_name": "已通过"}
    assert "template_card" not in state.updates[-1]


async def test_update_after_72_hours_is_refused(channel: WeComChannel, state: WeComFakeState) -> None:
    ref = await channel.send_card(TO, card(), idempotency_key="c1")
    state.advance(72 * 3600 + 1)
    with pytest.raises(ChannelError) as e:
        await channel.update_card(ref, card())
    assert not e.value.retryable and not state.updates


async def test_download_image(channel: WeComChannel, state: WeComFakeState) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    media_id = state.add_media(jpeg)
    assert await channel.download_image(media_id, message_id="78") == jpeg


async def test_download_unknown_media_is_an_error_despite_http_200(channel: WeComChannel) -> None:
    with pytest.raises(ChannelError) as e:
        await channel.download_image("MEDIA_GONE")
    assert e.value.code == 40007 and not e.value.retryable


async def test_download_refreshes_an_expired_token(channel: WeComChannel, state: WeComFakeState) -> None:
    media_id = state.add_media(b"\xff\xd8jpeg")
    await channel.download_image(media_id)
    state.expire_tokens()
    assert await channel.download_image(media_id) == b"\xff\xd8jpeg"
    assert state.token_fetches == 2


async def test_close_is_idempotent(channel: WeComChannel) -> None:
    await channel.send_text(TO, "a", idempotency_key="a")
    await channel.close()
    await channel.close()
    await channel.send_text(TO, "b", idempotency_key="b")  # a new session after close
