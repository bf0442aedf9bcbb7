"""DingTalk HTTP-mode callbacks: signature, replay window, parsing and dedup keys (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.events import CardAction, Forged, ImageMessage, Malformed, Platform, Replayed, TextMessage
from integrations.dingtalk.settings import DingTalkSettings
from integrations.dingtalk.webhook import DingTalkWebhook, robot_sign
from tests.fakes.dingtalk import DingTalkSimulator

SECRET = "appsecret"
NOW = datetime(2024, 6, 1, 8, 20, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@pytest.fixture
def webhook() -> DingTalkWebhook:
    return DingTalkWebhook(
        DingTalkSettings(
            app_key="k", app_secret=SECRET, robot_code="dingrobotcode", card_template_id="t.schema"
        )
    )


@pytest.fixture
def sim() -> DingTalkSimulator:
    return DingTalkSimulator(SECRET)


def test_sign_matches_a_pinned_vector() -> None:
    # base64(HMAC-SHA256(key=secret, msg=timestamp + "\n" + secret)); cross-checked with
    # `printf '1717230000123\nthis-is-a-test-secret' | openssl dgst -sha256 -hmac this-is-a-test-secret -binary | base64`
    assert (
        robot_sign("1717230000123", "this-is-a-test-secret") == "9D79a4y6va0mNwUqQPfoOnrgsvrCvRv4juWeBmtGlzI="
    )


def test_text_message_becomes_a_text_event(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    headers, body = sim.signed(sim.text("  /status ", "user123", msg_id="msgA1"), NOW_MS)
    reply = webhook.handle_robot(headers, body, NOW)
    assert reply.status == 200
    (event,) = reply.events
    assert isinstance(event, TextMessage)
    assert event.text == "/status"
    assert event.dedup_key == "dingtalk:msg:msgA1"
    assert event.sender.platform is Platform.DINGTALK
    assert (event.sender.user_id, event.sender.name) == ("user123", "nick-user123")
    assert event.chat_id is None
    assert event.raw["sessionWebhook"].endswith("session=s-user123")
    assert event.received_at == NOW


def test_group_text_carries_the_conversation(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    headers, body = sim.signed(sim.text("3箱5个", chat_id="cidGROUP==", msg_id="m2"), NOW_MS)
    (event,) = webhook.handle_robot(headers, body, NOW).events
    assert event.chat_id == "cidGROUP=="


def test_picture_becomes_an_image_event_with_its_download_code(
    webhook: DingTalkWebhook, sim: DingTalkSimulator
) -> None:
    headers, body = sim.signed(sim.picture("DLCODE1", msg_id="msgP"), NOW_MS)
    (event,) = webhook.handle_robot(headers, body, NOW).events
    assert isinstance(event, ImageMessage)
    assert (event.media_ref, event.message_id, event.dedup_key) == ("DLCODE1", "msgP", "dingtalk:msg:msgP")
    assert event.raw["robotCode"] == "dingrobotcode"


def test_rich_text_gives_each_picture_and_the_text(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    parts = [
        {"text": "A-01 "},
        {"type": "picture", "downloadCode": "D1"},
        {"downloadCode": "D2"},
        {"text": "3箱"},
    ]
    headers, body = sim.signed(sim.rich_text(parts, msg_id="msgR"), NOW_MS)
    events = webhook.handle_robot(headers, body, NOW).events
    assert [(type(e).__name__, e.dedup_key) for e in events] == [
        ("ImageMessage", "dingtalk:msg:msgR"),
        ("ImageMessage", "dingtalk:msg:msgR:1"),
        ("TextMessage", "dingtalk:msg:msgR:text"),
    ]
    assert [e.media_ref for e in events if isinstance(e, ImageMessage)] == ["D1", "D2"]
    assert isinstance(events[2], TextMessage) and events[2].text == "A-01 3箱"


def test_rich_text_without_pictures_is_plain_text(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    headers, body = sim.signed(sim.rich_text([{"text": "hello"}], msg_id="m"), NOW_MS)
    (event,) = webhook.handle_robot(headers, body, NOW).events
    assert isinstance(event, TextMessage) and event.dedup_key == "dingtalk:msg:m"


def test_unsupported_kinds_and_outside_senders_are_answered_without_events(
    webhook: DingTalkWebhook, sim: DingTalkSimulator
) -> None:
    audio = sim.text("x") | {"msgtype": "audio", "content": {"downloadCode": "A"}}
    outsider = sim.text("hi")
    del outsider["senderStaffId"]
    for msg in (audio, outsider):
        headers, body = sim.signed(msg, NOW_MS)
        reply = webhook.handle_robot(headers, body, NOW)
        assert (reply.status, reply.events) == (200, ())


def test_header_names_are_case_insensitive(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    headers, body = sim.signed(sim.text("hi"), NOW_MS)
    upper = {k.title(): v for k, v in headers.items()}
    assert len(webhook.handle_robot(upper, body, NOW).events) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"timestamp": str(NOW_MS)},
        {"timestamp": str(NOW_MS), "sign": "AAAA"},
        {"timestamp": str(NOW_MS), "sign": robot_sign(str(NOW_MS), "another-secret")},
        {"timestamp": str(NOW_MS + 1), "sign": robot_sign(str(NOW_MS), SECRET)},
        {"timestamp": "１２３", "sign": robot_sign("１２３", SECRET)},
        {"timestamp": "abc", "sign": robot_sign("abc", SECRET)},
    ],
    ids=["none", "no-sign", "garbage", "wrong-secret", "other-timestamp", "fullwidth-digits", "not-a-number"],
)
def test_forged_requests_are_refused(webhook: DingTalkWebhook, sim: DingTalkSimulator, headers: dict) -> None:
    body = json.dumps(sim.text("hi")).encode()
    with pytest.raises(Forged) as exc:
        webhook.handle_robot(headers, body, NOW)
    assert exc.value.status == 401
    with pytest.raises(Forged):
        webhook.handle_card(headers, json.dumps(sim.card_callback("t", "u")).encode(), NOW)


@pytest.mark.parametrize("offset", [timedelta(hours=1, seconds=1), -timedelta(hours=1, seconds=1)])
def test_timestamps_outside_an_hour_are_replays(
    webhook: DingTalkWebhook, sim: DingTalkSimulator, offset: timedelta
) -> None:
    headers, body = sim.signed(sim.text("hi"), NOW_MS)
    with pytest.raises(Replayed):
        webhook.handle_robot(headers, body, NOW + offset)
    assert webhook.handle_robot(headers, body, NOW + timedelta(minutes=59)).events


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b"{}",
        json.dumps({"msgId": "m", "msgtype": "text", "senderStaffId": "u"}).encode(),
    ],
    ids=["not-json", "list", "empty", "text-without-content"],
)
def test_malformed_robot_messages_are_refused(
    webhook: DingTalkWebhook, sim: DingTalkSimulator, body: bytes
) -> None:
    with pytest.raises(Malformed) as exc:
        webhook.handle_robot(sim.headers(NOW_MS), body, NOW)
    assert exc.value.status == 400


def test_card_callback_becomes_a_card_action(webhook: DingTalkWebhook, sim: DingTalkSimulator) -> None:
    cb = sim.card_callback(
        "cc-42-manager01",
        "manager01",
        action_ids=["approve"],
        payload="ap:42:1717:abc",
        params={"reason": "R1"},
    )
    headers, body = sim.signed(cb, NOW_MS)
    reply = webhook.handle_card(headers, body, NOW)
    assert (reply.status, reply.body, reply.content_type) == (200, b"{}", "application/json")
    (event,) = reply.events
    assert isinstance(event, CardAction)
    assert event.payload == "ap:42:1717:abc"
    assert event.form == {"reason": "R1"}
    assert event.card_ref == "cc-42-manager01"
    assert event.sender.user_id == "manager01"
    assert event.chat_id is None
    assert event.dedup_key.startswith("dingtalk:card:cc-42-manager01:manager01:approve:")


def test_card_dedup_key_is_stable_and_tells_payloads_apart(
    webhook: DingTalkWebhook, sim: DingTalkSimulator
) -> None:
    def key(payload: str) -> str:
        headers, body = sim.signed(sim.card_callback("t1", "u1", payload=payload), NOW_MS)
        return webhook.handle_card(headers, body, NOW).events[0].dedup_key

    assert key("a") == key("a")
    assert key("a") != key("b")


def test_card_value_may_arrive_as_an_object_and_form_values_become_strings(
    webhook: DingTalkWebhook, sim: DingTalkSimulator
) -> None:
    cb = sim.card_callback("t", "u", space="cidG")
    del cb["content"]
    cb["value"] = {"cardPrivateData": {"actionIds": ["pick"], "params": {"qty": 3, "loc": "A-01"}}}
    (event,) = webhook.handle_card(*sim.signed(cb, NOW_MS), NOW).events
    assert isinstance(event, CardAction)
    assert (event.payload, dict(event.form), event.chat_id) == ("", {"qty": "3", "loc": "A-01"}, "cidG")


@pytest.mark.parametrize(
    "change",
    [
        {"outTrackId": None},
        {"userId": ""},
        {"content": "not json"},
        {"content": json.dumps({"nothing": 1})},
        {"content": json.dumps({"cardPrivateData": {"actionIds": "approve"}})},
        {"content": json.dumps({"cardPrivateData": {"actionIds": ["a"], "params": {"p": 5}}})},
    ],
    ids=[
        "no-track-id",
        "no-user",
        "content-not-json",
        "no-private-data",
        "action-ids-not-list",
        "payload-not-str",
    ],
)
def test_malformed_card_callbacks_are_refused(
    webhook: DingTalkWebhook, sim: DingTalkSimulator, change: dict
) -> None:
    cb = sim.card_callback("t", "u", payload="x") | change
    with pytest.raises(Malformed):
        webhook.handle_card(*sim.signed(cb, NOW_MS), NOW)


def test_settings_defaults_point_at_dingtalk() -> None:
    s = DingTalkSettings(app_key="k", app_secret="s", robot_code="r", card_template_id="t.schema")
    assert (s.api_base, s.oapi_base, s.mode, s.timestamp_window_s) == (
        "https://api.dingtalk.com",
        "https://oapi.dingtalk.com",
        "http",
        3600,
    )
    assert s.secret() == "s" and "'s'" not in repr(s)
