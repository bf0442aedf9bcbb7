"""Feishu webhook: verify, decrypt and parse one request into neutral events. Pure and synchronous.

Order (shared/research/platforms.md §2.1):

1. With an Encrypt Key, ``X-Lark-Signature`` must equal ``sha256(ts + nonce + encrypt_key + raw_body)``
   and ``X-Lark-Request-Timestamp`` must be within ``timestamp_window_s`` of ``now`` (24 h by default, never
   less than 8 h: see ``FeishuWebhook._verify_signature`` for why). The one exception is
   ``url_verification``, which lark-oapi answers without a signature check (its decryption and the
   verification token authenticate it), so an unsigned body is accepted for that type only.
2. ``{"encrypt": ...}`` is decrypted; the verification token (``header.token`` or ``token``) must match.
3. ``url_verification`` is answered with ``{"challenge": ...}``. Schema 2.0 ``im.message.receive_v1``
   (text, image) and ``card.action.trigger`` become events; anything else is answered ``{}``. This step is
   :func:`parse_event`, shared with the long connection (``integrations/feishu/ws.py``).

Dedup keys: ``feishu:msg:<message_id>`` for messages (the platform's doc says message_id, not event_id),
``feishu:card:<event_id>`` for card callbacks. A card callback is answered ``{}`` here; the caller may swap
in a toast with :func:`with_toast` if it answers within Feishu's 3 s.

Written without lark-oapi: ``EventDispatcherHandler`` would need the 4 s / 175 MB import on the inbound
path, answers a bad signature with 500, and silently drops coroutine handlers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from bot.events import (
    CardAction,
    Forged,
    ImageMessage,
    InboundEvent,
    Malformed,
    Platform,
    Replayed,
    Sender,
    TextMessage,
    WebhookReply,
)
from integrations.feishu import crypto
from integrations.feishu.settings import FeishuSettings

TIMESTAMP = "x-lark-request-timestamp"
NONCE = "x-lark-request-nonce"
SIGNATURE = "x-lark-signature"

PAYLOAD_KEY = "p"  # bot/cards/render/feishu.py packs the button payload under action.value.p

ToastKind = Literal["info", "success", "error", "warning"]

_JSON = "application/json"
_EMPTY = b"{}"
_SPACES = re.compile(r"[ \t\u3000]+")


def json_reply(body: Mapping[str, Any], events: tuple[InboundEvent, ...] = ()) -> WebhookReply:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return WebhookReply(status=200, body=data, content_type=_JSON, events=events)


def toast_body(content: str, kind: ToastKind = "info") -> dict[str, Any]:
    """The card-callback answer that shows a toast: ``{"toast": {"type": ..., "content": ...}}``."""
    return {"toast": {"type": kind, "content": content}}


def with_toast(reply: WebhookReply, content: str, kind: ToastKind = "info") -> WebhookReply:
    """The same reply (same events) answering the card callback with a toast instead of ``{}``."""
    data = json.dumps(toast_body(content, kind), ensure_ascii=False, separators=(",", ":")).encode()
    return replace(reply, body=data, content_type=_JSON)


class FeishuWebhook:
    def __init__(self, settings: FeishuSettings) -> None:
        self.settings = settings

    def handle(self, headers: Mapping[str, str], body: bytes, now: datetime) -> WebhookReply:
        h = {k.lower(): v for k, v in headers.items()}
        key = self.settings.encrypt_key
        signed = False
        if key and (SIGNATURE in h or TIMESTAMP in h or NONCE in h):
            self._verify_signature(h, body, now)
            signed = True

        doc = _load_object(body)
        if "encrypt" in doc:
            if not key:
                raise Malformed("encrypted body but no encrypt key configured")
            if not isinstance(doc["encrypt"], str):
                raise Malformed("encrypt is not a string")
            try:
                doc = _load_object(crypto.decrypt(key, doc["encrypt"]))
            except (crypto.DecryptError, Malformed) as exc:
                # Unsigned: nothing shows it came from Feishu. Signed: the sender knew the key. CBC has no
                # MAC: a wrong key passes the padding check about once in 256 and yields garbage, not JSON.
                raise (Malformed if signed else Forged)(f"cannot decrypt: {exc}") from exc
        elif key:
            raise Forged("plaintext body while an encrypt key is configured")

        header = doc.get("header")
        token = header.get("token") if isinstance(header, dict) else doc.get("token")
        if not isinstance(token, str) or not crypto.signature_matches(
            self.settings.verification_token, token
        ):
            raise Forged("bad verification token")

        if doc.get("type") == "url_verification":
            challenge = doc.get("challenge")
            if not isinstance(challenge, str):
                raise Malformed("url_verification without a challenge")
            return json_reply({"challenge": challenge})
        if key and not signed:
            raise Forged("missing signature headers")

        return json_reply({}, parse_event(doc, now))

    def _verify_signature(self, h: Mapping[str, str], body: bytes, now: datetime) -> None:
        """The signature, then the timestamp window (issue 10 §6).

        Why the window is hours, not minutes. Feishu re-pushes an event it got no HTTP 200 for after 15 s,
        5 min, 1 h and 6 h (shared/research/platforms.md §2.1). Its documentation (事件订阅 / 安全校验) defines
        the signature over ``X-Lark-Request-Timestamp``, the nonce, the key and the body, and says nothing of
        a freshness window or of what timestamp a re-push carries; the official SDKs (lark-oapi's
        ``EventDispatcherHandler._verify_sign``, the Node SDK) check the signature and never the timestamp's
        age. So a re-push may well carry the first push's timestamp, up to 7 h 5 min old, and a 300 s window
        refused every late retry of a message the server missed while it was down: the very case retries are
        for. The window therefore covers the whole retry ladder (``RETRY_WINDOW_FLOOR_S``, 8 h, is the least
        the settings accept; the default is 24 h).

        What a wide window costs: nothing a replay can use. The signature binds the timestamp, nonce and the
        whole (encrypted) body, so a replay is a byte-for-byte copy of a genuine push; its dedup key
        (``feishu:msg:<message_id>`` / ``feishu:card:<event_id>``) is already in ``inbound_seen``, which is
        kept durably and never pruned, so the copy is acknowledged and dropped. (Anything that ever prunes
        ``inbound_seen`` must keep its rows longer than this window.) Outside the window a request is still
        refused as ``Replayed``: a copy older than any retry cannot be genuine."""
        ts, nonce, sig = h.get(TIMESTAMP), h.get(NONCE), h.get(SIGNATURE)
        if not ts or nonce is None or not sig:
            raise Forged("incomplete signature headers")
        expected = crypto.signature(ts, nonce, self.settings.encrypt_key, body)
        if not crypto.signature_matches(expected, sig):
            raise Forged()
        try:
            sent = int(ts)
        except ValueError as exc:
            raise Malformed("timestamp is not an integer") from exc
        if abs(now.timestamp() - sent) > self.settings.timestamp_window_s:
            raise Replayed()


def parse_event(doc: Mapping[str, Any], now: datetime) -> tuple[InboundEvent, ...]:
    """The neutral events in one decoded event body: a webhook body once verified and decrypted, or the
    payload of a long-connection frame (plaintext there, the connection itself being authenticated).

    Schema 2.0 ``im.message.receive_v1`` (text, image) and ``card.action.trigger`` give one event; other
    schemas and event types give none. Raises ``Malformed`` for a body that claims schema 2.0 but cannot be
    read."""
    header = doc.get("header")
    if doc.get("schema") != "2.0" or not isinstance(header, dict):
        return ()  # v1 events are not subscribed to
    event = doc.get("event")
    if not isinstance(event, dict):
        raise Malformed("schema 2.0 body without an event")
    event_type = header.get("event_type")
    received = now.astimezone(UTC)
    if event_type == "im.message.receive_v1":
        parsed = _message(event, doc, received)
    elif event_type == "card.action.trigger":
        parsed = _card_action(event, header, doc, received)
    else:
        parsed = None
    return (parsed,) if parsed else ()


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed("body is not JSON") from exc
    if not isinstance(doc, dict):
        raise Malformed("body is not a JSON object")
    return doc


def _str(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise Malformed(f"{what} without {key}")
    return v


def _sender(ids: Any, what: str) -> Sender:
    if not isinstance(ids, dict):
        raise Malformed(f"{what} without sender ids")
    union = ids.get("union_id")
    return Sender(
        platform=Platform.FEISHU,
        user_id=_str(ids, "open_id", what),
        union_id=union if isinstance(union, str) and union else None,
    )


def _message(event: dict[str, Any], doc: Mapping[str, Any], received: datetime) -> InboundEvent | None:
    sender = event.get("sender")
    message = event.get("message")
    if not isinstance(sender, dict) or not isinstance(message, dict):
        raise Malformed("message event without sender or message")
    if sender.get("sender_type", "user") != "user":
        return None  # our own or another app's messages
    message_id = _str(message, "message_id", "message")
    who = _sender(sender.get("sender_id"), "message")
    chat_id = message.get("chat_id") if message.get("chat_type") != "p2p" else None
    try:
        content = json.loads(_str(message, "content", "message"))
    except ValueError as exc:
        raise Malformed("message content is not a JSON string") from exc
    if not isinstance(content, dict):
        raise Malformed("message content is not an object")
    common: dict[str, Any] = {
        "platform": Platform.FEISHU,
        "dedup_key": f"feishu:msg:{message_id}",
        "sender": who,
        "received_at": received,
        "chat_id": chat_id if isinstance(chat_id, str) else None,
        "raw": doc,
    }
    kind = message.get("message_type")
    if kind == "text":
        text = content.get("text")
        if not isinstance(text, str):
            raise Malformed("text message without text")
        return TextMessage(**common, text=_strip_mentions(text, message.get("mentions")))
    if kind == "image":
        return ImageMessage(**common, media_ref=_str(content, "image_key", "image"), message_id=message_id)
    return None  # post, file, sticker...: not used by the bot


def _strip_mentions(text: str, mentions: Any) -> str:
    keys = ["@_all"]
    if isinstance(mentions, list):
        keys += [m["key"] for m in mentions if isinstance(m, dict) and isinstance(m.get("key"), str)]
    for k in sorted(keys, key=len, reverse=True):  # "@_user_10" before "@_user_1"
        text = text.replace(k, " ")
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()).strip()


def _form_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ",".join(v)
    return json.dumps(v, ensure_ascii=False)


def _card_action(
    event: dict[str, Any], header: dict[str, Any], doc: Mapping[str, Any], received: datetime
) -> CardAction | None:
    event_id = _str(header, "event_id", "card callback")
    action = event.get("action")
    if not isinstance(action, dict):
        raise Malformed("card callback without action")
    value = action.get("value")
    payload = value.get(PAYLOAD_KEY) if isinstance(value, dict) else None
    if not isinstance(payload, str) or not payload:
        return None  # not a card we built
    form = action.get("form_value")
    context = event.get("context")
    card_ref = context.get("open_message_id") if isinstance(context, dict) else None
    chat_id = context.get("open_chat_id") if isinstance(context, dict) else None
    token = event.get("token")
    return CardAction(
        platform=Platform.FEISHU,
        dedup_key=f"feishu:card:{event_id}",
        sender=_sender(event.get("operator"), "card callback"),
        received_at=received,
        chat_id=chat_id if isinstance(chat_id, str) else None,
        raw=doc,
        payload=payload,
        form={str(k): _form_value(v) for k, v in form.items()} if isinstance(form, dict) else {},
        card_ref=card_ref if isinstance(card_ref, str) else None,
        update_token=token if isinstance(token, str) and token else None,
    )
