"""WeCom callback: the official vector, the three refusals, and each event type with its dedup key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.events import (
    CardAction,
    Forged,
    ImageMessage,
    Malformed,
    Platform,
    Replayed,
    TextMessage,
    WebhookRefused,
    WebhookReply,
)
from integrations.wecom.settings import WeComSettings
from integrations.wecom.webhook import WeComWebhook, signature
from tests.fakes.wecom import SignedRequest, WeComSimulator, encrypt_raw, frame

# shared/research/platforms.md §5.1: the official WeCom test vector
VECTOR = WeComSettings(
    corp_id="wx5823bf96d3bd56c7",
    agent_id=218,
    secret="unused",
    token="QDG6eK",
    encoding_aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
)
VECTOR_TS, VECTOR_NONCE = "1409659813", "1372623149"
VECTOR_SIG = "477715d11cdb4164915debcba66cb864d751f3e6"
VECTOR_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3"
    "TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gs"
    "ijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUa"
    "x5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIG"
    "HBZZIs2pDBS8R07+qN+E7Q=="
)
VECTOR_BODY = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"
    f"<Encrypt><![CDATA[{VECTOR_ENCRYPT}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
).encode()
VECTOR_QUERY = {"msg_signature": VECTOR_SIG, "timestamp": VECTOR_TS, "nonce": VECTOR_NONCE}

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
HOOK = WeComWebhook(SETTINGS)


def handle(req: SignedRequest, now: datetime = NOW) -> WebhookReply:
    return HOOK.handle(req.method, req.query, req.body, now)


def at(ts: str, plus: int = 0) -> datetime:
    return datetime.fromtimestamp(int(ts) + plus, UTC)


# -- the official vector ------------------------------------------------------------------------------


def test_vector_signature() -> None:
    assert signature(VECTOR.token, VECTOR_TS, VECTOR_NONCE, VECTOR_ENCRYPT) == VECTOR_SIG


def test_vector_decrypts_to_hello_from_mycreate() -> None:
    reply = WeComWebhook(VECTOR).handle("POST", VECTOR_QUERY, VECTOR_BODY, at(VECTOR_TS, 30))
    assert (reply.status, reply.body) == (200, b"")
    (event,) = reply.events
    assert isinstance(event, TextMessage)
    assert event.text == "hello" and event.sender.user_id == "mycreate"
    assert event.platform is Platform.WECOM and event.chat_id is None
    assert event.dedup_key == "wecom:msg:4561255354251345929"
    assert event.raw["AgentID"] == "218" and event.raw["MsgId"] == "4561255354251345929"


def test_vector_wrong_receive_id_is_malformed() -> None:
    other = VECTOR.model_copy(update={"corp_id": "wx_someone_else"})
    with pytest.raises(Malformed, match="receive id"):
        WeComWebhook(other).handle("POST", VECTOR_QUERY, VECTOR_BODY, at(VECTOR_TS))


def test_vector_outside_the_window_is_replayed() -> None:
    with pytest.raises(Replayed):
        WeComWebhook(VECTOR).handle("POST", VECTOR_QUERY, VECTOR_BODY, at(VECTOR_TS, 301))
    with pytest.raises(Replayed):
        WeComWebhook(VECTOR).handle("POST", VECTOR_QUERY, VECTOR_BODY, at(VECTOR_TS, -301))


# -- URL verification ---------------------------------------------------------------------------------


def test_url_verification_answers_the_bare_plaintext() -> None:
    reply = handle(SIM.verify_url("1616140317555161061", timestamp=TS))
    assert (reply.status, reply.body, reply.events) == (200, b"1616140317555161061", ())


def test_url_verification_with_a_bad_signature_is_forged() -> None:
    req = SIM.verify_url("42", timestamp=TS)
    with pytest.raises(Forged):
        HOOK.handle("GET", req.query | {"msg_signature": "0" * 40}, b"", NOW)


def test_url_verification_missing_echostr_is_malformed() -> None:
    req = SIM.verify_url("42", timestamp=TS)
    with pytest.raises(Malformed):
        HOOK.handle("GET", {k: v for k, v in req.query.items() if k != "echostr"}, b"", NOW)


# -- events -------------------------------------------------------------------------------------------


def test_text_message() -> None:
    (event,) = handle(SIM.text("zhangsan", "/status 盘点", msg_id=77, timestamp=TS)).events
    assert isinstance(event, TextMessage)
    assert (event.text, event.sender.user_id, event.dedup_key) == ("/status 盘点", "zhangsan", "wecom:msg:77")
    assert event.received_at == NOW


def test_image_message() -> None:
    (event,) = handle(SIM.image("zhangsan", "MEDIA_1", msg_id=78, timestamp=TS)).events
    assert isinstance(event, ImageMessage)
    assert (event.media_ref, event.message_id, event.dedup_key) == ("MEDIA_1", "78", "wecom:msg:78")
    assert event.download_url == "https://wework.qpic.cn/fake/MEDIA_1"


def test_template_card_event() -> None:
    req = SIM.card_event(
        "manager01",
        event_key="ap:42:1:1717230000:tag",
        task_id="approval-42-1",
        response_code="RC9",
        timestamp=TS,
    )
    (event,) = handle(req).events
    assert isinstance(event, CardAction)
    assert (event.payload, event.card_ref, event.update_token) == (
        "ap:42:1:1717230000:tag",
        "approval-42-1",
        "RC9",
    )
    assert event.dedup_key == f"wecom:card:manager01:{TS}:ap:42:1:1717230000:tag:approval-42-1"
    assert event.form == {}


def test_template_card_event_with_selected_items() -> None:
    req = SIM.card_event(
        "manager01",
        event_key="submit",
        task_id="review-7",
        response_code="RC10",
        timestamp=TS,
        selected={"reason": ["rs:7:MISSLOT"], "multi": ["a", "b"]},
    )
    (event,) = handle(req).events
    assert isinstance(event, CardAction)
    assert event.form == {"reason": "rs:7:MISSLOT", "multi": "a,b"}


def test_two_clicks_in_one_second_have_different_keys() -> None:
    a = handle(SIM.card_event("m", event_key="ap:1", task_id="t1", response_code="R1", timestamp=TS)).events[
        0
    ]
    b = handle(SIM.card_event("m", event_key="rj:2", task_id="t2", response_code="R2", timestamp=TS)).events[
        0
    ]
    assert a.dedup_key != b.dedup_key


@pytest.mark.parametrize("event", ["enter_agent", "template_card_menu_event", "subscribe"])
def test_other_events_are_acknowledged_and_ignored(event: str) -> None:
    reply = handle(SIM.event("zhangsan", event, timestamp=TS))
    assert (reply.status, reply.body, reply.events) == (200, b"", ())


def test_other_message_types_are_ignored() -> None:
    inner = SIM._inner("zhangsan", TS, "voice", MediaId="V1", MsgId="5")
    assert handle(SIM.post(inner, timestamp=TS)).events == ()


# -- refusals -----------------------------------------------------------------------------------------


def test_bad_signature_is_forged() -> None:
    req = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS)
    with pytest.raises(Forged) as e:
        HOOK.handle("POST", req.query | {"msg_signature": "f" * 40}, req.body, NOW)
    assert e.value.status == 401


def test_tampered_body_is_forged() -> None:
    req = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS)
    other = SIM.text("zhangsan", "hi", msg_id=2, timestamp=TS)
    with pytest.raises(Forged):
        HOOK.handle("POST", req.query, other.body, NOW)


def test_other_token_is_forged() -> None:
    other = WeComSimulator("not-the-token", SETTINGS.encoding_aes_key, SETTINGS.corp_id, SETTINGS.agent_id)
    with pytest.raises(Forged):
        handle(other.text("zhangsan", "hi", msg_id=1, timestamp=TS))


def test_old_and_future_timestamps_are_replayed() -> None:
    old = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS - 301)
    future = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS + 301)
    for req in (old, future):
        with pytest.raises(Replayed) as e:
            handle(req)
        assert e.value.status == 401
    assert handle(SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS - 300)).events


@pytest.mark.parametrize(
    "body",
    [b"not xml", b"<xml><Nothing/></xml>", b"<other><Encrypt>x</Encrypt></other>", b""],
)
def test_bad_outer_xml_is_malformed(body: bytes) -> None:
    req = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS)
    with pytest.raises(Malformed) as e:
        HOOK.handle("POST", req.query, body, NOW)
    assert e.value.status == 400


def test_doctype_is_malformed() -> None:
    body = b'<!DOCTYPE xml [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>'
    with pytest.raises(Malformed):
        HOOK.handle("POST", {"msg_signature": "x", "timestamp": str(TS), "nonce": "n"}, body, NOW)


def test_missing_query_parameters_are_malformed() -> None:
    req = SIM.text("zhangsan", "hi", msg_id=1, timestamp=TS)
    for name in ("msg_signature", "timestamp", "nonce"):
        with pytest.raises(Malformed):
            HOOK.handle("POST", {k: v for k, v in req.query.items() if k != name}, req.body, NOW)


def test_wrong_receive_id_is_malformed() -> None:
    enc = SIM.encrypt(SIM._inner("zhangsan", TS, "text", Content="hi", MsgId="1"), receive_id="ww_other")
    with pytest.raises(Malformed, match="receive id"):
        handle(SIM.post("", timestamp=TS, encrypt=enc))


@pytest.mark.parametrize("pad", [0, 33, 200])
def test_bad_padding_is_malformed(pad: int) -> None:
    raw = frame(b"<xml><MsgType>text</MsgType></xml>", SETTINGS.corp_id.encode(), pad=pad)
    with pytest.raises(Malformed):
        handle(SIM.post("", timestamp=TS, encrypt=encrypt_raw(SIM.key, raw)))


def test_inconsistent_padding_is_malformed() -> None:
    raw = bytearray(frame(b"<xml/>", SETTINGS.corp_id.encode()))
    raw[-2] ^= 0x01  # last byte still says n, the one before disagrees
    with pytest.raises(Malformed, match="padding"):
        handle(SIM.post("", timestamp=TS, encrypt=encrypt_raw(SIM.key, bytes(raw))))


def test_lying_length_is_malformed() -> None:
    raw = bytearray(frame(b"<xml/>", SETTINGS.corp_id.encode()))
    raw[16:20] = (10_000).to_bytes(4, "big")
    with pytest.raises(Malformed):
        handle(SIM.post("", timestamp=TS, encrypt=encrypt_raw(SIM.key, bytes(raw))))


@pytest.mark.parametrize("encrypt", ["not base64!!", "QUJD", "A" * 44])
def test_bad_ciphertext_is_malformed(encrypt: str) -> None:
    with pytest.raises(Malformed):
        handle(SIM.post("", timestamp=TS, encrypt=encrypt))


@pytest.mark.parametrize(
    "inner",
    [
        "plain text, not xml",
        f"<xml><FromUserName>u</FromUserName><CreateTime>{TS}</CreateTime></xml>",  # no MsgType
        "<xml><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>",  # no FromUserName
        "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content>hi</Content></xml>",  # no MsgId
        "<xml><FromUserName>u</FromUserName><MsgType>image</MsgType><MsgId>3</MsgId></xml>",  # no MediaId
        "<xml><FromUserName>u</FromUserName><MsgType>event</MsgType><Event>template_card_event</Event>"
        f"<CreateTime>{TS}</CreateTime><EventKey>k</EventKey></xml>",  # no TaskId
    ],
)
def test_missing_inner_fields_are_malformed(inner: str) -> None:
    with pytest.raises(Malformed):
        handle(SIM.post(inner, timestamp=TS))


def test_message_for_another_agent_is_malformed() -> None:
    other = WeComSimulator(SETTINGS.token, SETTINGS.encoding_aes_key, SETTINGS.corp_id, 999)
    with pytest.raises(Malformed, match="agent"):
        handle(other.text("zhangsan", "hi", msg_id=1, timestamp=TS))


def test_other_methods_are_refused() -> None:
    with pytest.raises(WebhookRefused) as e:
        HOOK.handle("PUT", {}, b"", NOW)
    assert e.value.status == 405


def test_bad_key_in_settings_is_rejected() -> None:
    with pytest.raises(ValueError):
        WeComSettings(corp_id="c", agent_id=1, secret="s", token="t", encoding_aes_key="short")
