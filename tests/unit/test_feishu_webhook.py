"""Feishu webhook: crypto, refusals, and each event parsed into a neutral event with its dedup key."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from bot.events import CardAction, Forged, ImageMessage, Malformed, Platform, Replayed, TextMessage
from integrations.feishu import crypto
from integrations.feishu.settings import FeishuSettings
from integrations.feishu.webhook import FeishuWebhook, toast_body, with_toast
from tests.fakes.feishu import FeishuSimulator, encrypt

NOW = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def sim() -> FeishuSimulator:
    return FeishuSimulator(clock=NOW.timestamp)


@pytest.fixture
def hook() -> FeishuWebhook:
    return FeishuWebhook(
        FeishuSettings(app_id="cli_test", app_secret="s", verification_token="v-token", encrypt_key="enc-key")
    )


def test_decrypts_the_documented_vector() -> None:
    # Feishu's encryption doc / lark-oapi README: key "test key" -> "hello world".
    assert crypto.decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=") == b"hello world"


@pytest.mark.parametrize("plain", [b"", b"x", b"0123456789abcdef", "盘点 A-01".encode() * 40])
def test_crypto_round_trip_with_the_simulator(plain: bytes) -> None:
    assert crypto.decrypt("k", encrypt("k", plain)) == plain


# A fixed IV: under a wrong key, about one random IV in 256 passes the padding check (CBC has no MAC).
@pytest.mark.parametrize("bad", ["not base64!", "AAAA", encrypt("other key", b"hello", iv=bytes(16))])
def test_decrypt_refuses_garbage(bad: str) -> None:
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt("k", bad)


def _wrong_key_bodies(sim: FeishuSimulator, n: int) -> list[tuple[dict[str, str], bytes, bool]]:
    """``n`` callbacks encrypted under another key, with IVs 0..n-1, each with whether its padding decrypts."""
    plain = json.dumps(sim.text("ou_u1", "hi")).encode()
    out = []
    for i in range(n):
        enc = encrypt("other key", plain, iv=i.to_bytes(16, "big"))
        try:
            crypto.decrypt(sim.encrypt_key, enc)
            padded = True
        except crypto.DecryptError:
            padded = False
        out.append(({}, json.dumps({"encrypt": enc}).encode(), padded))
    return out


def test_wrong_key_is_refused_even_when_the_padding_happens_to_check(
    hook: FeishuWebhook, sim: FeishuSimulator
) -> None:
    bodies = _wrong_key_bodies(sim, 1024)
    assert sum(padded for *_, padded in bodies) >= 1  # the case CI once hit by chance is in the set
    for headers, body, _ in bodies:
        with pytest.raises(Forged):  # unsigned: nothing shows it came from Feishu
            hook.handle(headers, body, NOW)
        signed = sim.signed_headers(body)
        with pytest.raises(Malformed):  # signed with our key: the sender knew it, the body is broken
            hook.handle(signed, body, NOW)


def test_signature_is_sha256_of_ts_nonce_key_body() -> None:
    import hashlib

    assert crypto.signature("1", "n", "k", b"{}") == hashlib.sha256(b"1nk{}").hexdigest()


def test_url_verification_answers_the_challenge(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    for sign in (True, False):  # lark-oapi answers it before checking a signature; so do we
        headers, body = sim.wire(sim.url_verification("abc"), sign=sign)
        reply = hook.handle(headers, body, NOW)
        assert (reply.status, json.loads(reply.body), reply.events) == (200, {"challenge": "abc"}, ())
        assert reply.content_type == "application/json"


def test_text_message_strips_mentions_and_dedups_on_message_id(
    hook: FeishuWebhook, sim: FeishuSimulator
) -> None:
    doc = sim.text(
        "ou_u1",
        "@_user_1 盘点  A-01-03\u3000@_user_10 ",
        message_id="om_42",
        chat_type="group",
        mentions=[{"key": "@_user_1", "name": "盘点助手"}, {"key": "@_user_10", "name": "x"}],
    )
    reply = hook.handle(*sim.wire(doc), NOW)
    assert reply.body == b"{}"
    (ev,) = reply.events
    assert isinstance(ev, TextMessage)
    assert ev.text == "盘点 A-01-03"
    assert ev.dedup_key == "feishu:msg:om_42"
    assert (ev.platform, ev.sender.user_id, ev.sender.union_id) == (Platform.FEISHU, "ou_u1", "on_ou_u1")
    assert ev.chat_id == "oc_chat_1"
    assert ev.received_at == NOW


def test_a_retry_with_a_new_event_id_keeps_the_message_dedup_key(
    hook: FeishuWebhook, sim: FeishuSimulator
) -> None:
    a = hook.handle(*sim.wire(sim.text("ou_u1", "hi", message_id="om_1", event_id="ev_a")), NOW).events
    b = hook.handle(*sim.wire(sim.text("ou_u1", "hi", message_id="om_1", event_id="ev_b")), NOW).events
    assert a[0].dedup_key == b[0].dedup_key == "feishu:msg:om_1"
    assert a[0].chat_id is None  # p2p


def test_image_message(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    (ev,) = hook.handle(*sim.wire(sim.image("ou_u1", "img_v3_abc", message_id="om_7")), NOW).events
    assert isinstance(ev, ImageMessage)
    assert (ev.media_ref, ev.message_id, ev.dedup_key) == ("img_v3_abc", "om_7", "feishu:msg:om_7")


def test_card_action_with_form(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    doc = sim.card_action(
        "ou_u2",
        "cnt:A1:123:tag",
        form={"qty": "112", "reasons": ["a", "b"], "ok": True},
        open_message_id="om_card_9",
        token="c-3d9f",
        event_id="ev_card_1",
    )
    reply = hook.handle(*sim.wire(doc), NOW)
    assert reply.body == b"{}"
    (ev,) = reply.events
    assert isinstance(ev, CardAction)
    assert ev.payload == "cnt:A1:123:tag"
    assert dict(ev.form) == {"qty": "112", "reasons": "a,b", "ok": "true"}
    assert (ev.card_ref, ev.update_token, ev.dedup_key) == ("om_card_9", "c-3d9f", "feishu:card:ev_card_1")
    assert ev.sender.user_id == "ou_u2"

    toasted = with_toast(reply, "已提交 112 件", "success")
    assert json.loads(toasted.body) == toast_body("已提交 112 件", "success")
    assert json.loads(toasted.body) == {"toast": {"type": "success", "content": "已提交 112 件"}}
    assert toasted.events == reply.events


def test_card_action_without_our_payload_is_acknowledged_and_ignored(
    hook: FeishuWebhook, sim: FeishuSimulator
) -> None:
    doc = sim.card_action("ou_u2", "x")
    doc["event"]["action"]["value"] = {"act": "foreign"}
    reply = hook.handle(*sim.wire(doc), NOW)
    assert (reply.status, reply.body, reply.events) == (200, b"{}", ())


def test_other_events_and_app_messages_get_an_empty_answer(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    other = sim.envelope("im.chat.member.bot.added_v1", {"chat_id": "oc_1"})
    assert hook.handle(*sim.wire(other), NOW).events == ()
    own = sim.text("ou_u1", "hi")
    own["event"]["sender"]["sender_type"] = "app"
    assert hook.handle(*sim.wire(own), NOW).events == ()
    sticker = sim.message("ou_u1", "sticker", {"file_key": "f"})
    assert hook.handle(*sim.wire(sticker), NOW).events == ()


def test_forged_signature(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    headers, body = sim.wire(sim.text("ou_u1", "hi"))
    with pytest.raises(Forged):
        hook.handle({**headers, "X-Lark-Signature": "0" * 64}, body, NOW)
    with pytest.raises(Forged):
        hook.handle(headers, body.replace(b'"}', b'A"}'), NOW)


def test_unsigned_events_are_refused(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    with pytest.raises(Forged):
        hook.handle(*sim.wire(sim.text("ou_u1", "hi"), sign=False), NOW)


def test_wrong_key_or_token_is_forged(sim: FeishuSimulator) -> None:
    other = FeishuWebhook(
        FeishuSettings(app_id="a", app_secret="s", verification_token="v-token", encrypt_key="x")
    )
    with pytest.raises(Forged):
        other.handle(*sim.wire(sim.url_verification(), sign=False), NOW)
    wrong_token = FeishuWebhook(
        FeishuSettings(app_id="a", app_secret="s", verification_token="nope", encrypt_key="enc-key")
    )
    for doc in (sim.url_verification(), sim.text("ou_u1", "hi")):
        with pytest.raises(Forged):
            wrong_token.handle(*sim.wire(doc), NOW)


def test_plaintext_body_refused_when_a_key_is_set(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    with pytest.raises(Forged):
        hook.handle({}, json.dumps(sim.url_verification()).encode(), NOW)


@pytest.mark.parametrize("skew", [timedelta(hours=24, seconds=1), -timedelta(hours=24, seconds=1)])
def test_old_or_future_timestamps_are_replays(
    hook: FeishuWebhook, sim: FeishuSimulator, skew: timedelta
) -> None:
    headers, body = sim.wire(sim.text("ou_u1", "hi"))
    with pytest.raises(Replayed):
        hook.handle(headers, body, NOW + skew)
    assert hook.handle(headers, body, NOW + timedelta(hours=23, minutes=59)).events


# Feishu re-pushes after 15 s, 5 min, 1 h and 6 h; nothing promises a re-push a fresh timestamp
@pytest.mark.parametrize(
    "late",
    [
        timedelta(seconds=15),
        timedelta(minutes=6),
        timedelta(hours=1, minutes=6),
        timedelta(hours=7, minutes=6),
    ],
)
def test_a_late_retry_with_its_first_timestamp_is_accepted(
    hook: FeishuWebhook, sim: FeishuSimulator, late: timedelta
) -> None:
    """The last retry of the ladder, signed with the first push's timestamp, over 7 h later (a 300 s window
    refused everything from the 5 min retry on). A copy of it is harmless: its dedup key is the same."""
    headers, body = sim.wire(sim.text("ou_u1", "hi", message_id="om_late"))
    (event,) = hook.handle(headers, body, NOW + late).events
    assert event.dedup_key == "feishu:msg:om_late"


def test_the_window_never_drops_below_the_retry_ladder() -> None:
    from pydantic import ValidationError

    from integrations.feishu.settings import RETRY_WINDOW_FLOOR_S

    base = {"app_id": "a", "app_secret": "s", "verification_token": "v"}
    assert FeishuSettings(**base).timestamp_window_s == 24 * 3600
    assert RETRY_WINDOW_FLOOR_S >= 15 + 5 * 60 + 3600 + 6 * 3600
    with pytest.raises(ValidationError, match="timestamp_window_s"):
        FeishuSettings(**base, timestamp_window_s=300)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"encrypt": 5}', "\xff".encode("latin-1")])
def test_malformed_bodies(hook: FeishuWebhook, sim: FeishuSimulator, body: bytes) -> None:
    headers, _ = sim.wire({})
    ts, nonce = headers["X-Lark-Request-Timestamp"], headers["X-Lark-Request-Nonce"]
    headers["X-Lark-Signature"] = crypto.signature(ts, nonce, "enc-key", body)
    with pytest.raises(Malformed):
        hook.handle(headers, body, NOW)


def test_malformed_events(hook: FeishuWebhook, sim: FeishuSimulator) -> None:
    no_id = sim.text("ou_u1", "hi")
    del no_id["event"]["message"]["message_id"]
    bad_content = sim.text("ou_u1", "hi")
    bad_content["event"]["message"]["content"] = "{not json"
    no_event = sim.envelope("im.message.receive_v1", {})
    del no_event["event"]
    for doc in (no_id, bad_content, no_event):
        with pytest.raises(Malformed):
            hook.handle(*sim.wire(doc), NOW)


def test_without_an_encrypt_key_only_the_token_is_checked() -> None:
    sim = FeishuSimulator(encrypt_key="", clock=NOW.timestamp)
    hook = FeishuWebhook(FeishuSettings(app_id="a", app_secret="s", verification_token="v-token"))
    (ev,) = hook.handle(*sim.wire(sim.text("ou_u1", "hi", message_id="om_3")), NOW).events
    assert ev.dedup_key == "feishu:msg:om_3"
    with pytest.raises(Malformed):  # an encrypted body we cannot read
        hook.handle({}, b'{"encrypt": "AAAA"}', NOW)


def test_the_webhook_path_does_not_import_lark_oapi() -> None:
    code = (
        "import sys, integrations.feishu.webhook, integrations.feishu.client, integrations.feishu.settings; "
        "sys.exit(1 if any(m == 'lark_oapi' or m.startswith('lark_oapi.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
