"""DingTalk HTTP-mode callbacks: verify, parse, answer. Pure and synchronous: no I/O, the clock comes in.

Robot messages (platforms.md §3.1 A, §3.6): headers ``timestamp`` (ms) and ``sign`` =
``base64(HMAC-SHA256(key=appSecret, msg=timestamp + "\\n" + appSecret))``; refuse a timestamp more than an hour
away from now. The body is the robot message JSON (the same as the Stream ``data``).

Card callbacks (§3.2): ``{"outTrackId", "userId", "userIdType", "spaceType", "spaceId",
"content": "{\\"cardPrivateData\\":{\\"actionIds\\":[..],\\"params\\":{..}}}"}``. How DingTalk signs an
HTTP-mode card callback (the ``apiSecret`` given to ``/v1.0/card/callbacks/register``) is **unverified**
(platforms.md §7), so this module requires the robot's ``timestamp``/``sign`` headers on card callbacks too,
keyed by the app secret: register the callback with ``apiSecret`` = the app secret, and check against the real
platform before relying on it. Stream mode (recommended by DingTalk) avoids the question.

Dedup keys: robot ``dingtalk:msg:<msgId>``; card ``dingtalk:card:<outTrackId>:<userId>:<actionIds>:<params
digest>``. The digest is there because one template action (say ``submit``) can carry different packed
payloads, and §3.1 names the params as part of the card callback's identity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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
from integrations.dingtalk.settings import DingTalkSettings

#: The action parameter our Card Builder template sends back with a button's packed payload (template contract).
PAYLOAD_PARAM = "p"

_GROUP_CONVERSATION = "2"
_UNION_ID_TYPE = 2


def robot_sign(timestamp: str, secret: str) -> str:
    """The ``sign`` header DingTalk sends with an HTTP-mode robot callback."""
    mac = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class DingTalkWebhook:
    def __init__(self, settings: DingTalkSettings) -> None:
        self._settings = settings

    # -- verification -----------------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], now: datetime) -> None:
        """Raise ``Forged`` for a missing or wrong signature, ``Replayed`` for a stale (or future) timestamp."""
        h = _lower(headers)
        timestamp, sign = h.get("timestamp", ""), h.get("sign", "")
        if not timestamp or not sign:
            raise Forged("missing timestamp or sign header")
        if not timestamp.isascii() or not timestamp.isdigit():
            raise Forged("timestamp is not a number of milliseconds")
        expected = robot_sign(timestamp, self._settings.secret())
        if not hmac.compare_digest(expected.encode(), sign.encode("utf-8", "replace")):
            raise Forged()
        # The window (1 h) is DingTalk's own rule: its receive-message doc tells the receiver to refuse a
        # timestamp more than an hour from now, so a push DingTalk means to be accepted, retry or not, is
        # signed within the hour (its HTTP retry schedule is unverified, platforms.md §3.1; Stream mode acks per
        # frame and has no window). A replay inside it is a copy whose dedup key is already kept (issue 10 §6).
        now_ms = now.timestamp() * 1000
        if abs(now_ms - int(timestamp)) > self._settings.timestamp_window_s * 1000:
            raise Replayed()

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Malformed("body is not JSON") from exc
        if not isinstance(data, dict):
            raise Malformed("body is not a JSON object")
        return data

    # -- robot messages ---------------------------------------------------------------------------------

    def handle_robot(self, headers: Mapping[str, str], body: bytes, now: datetime) -> WebhookReply:
        self.verify(headers, now)
        msg = self._json(body)
        return WebhookReply(status=200, events=tuple(self.parse_robot(msg, now)))

    def parse_robot(self, msg: Mapping[str, Any], now: datetime) -> list[InboundEvent]:
        """Events in a robot message (HTTP body or Stream ``data``). Unsupported kinds (voice, file, video) and
        senders without an org userid (``senderStaffId``) give no events: they are answered, not retried."""
        msg_id = _str(msg.get("msgId"))
        msgtype = _str(msg.get("msgtype"))
        if msg_id is None or msgtype is None:
            raise Malformed("robot message without msgId or msgtype")
        staff_id = _str(msg.get("senderStaffId"))
        if staff_id is None:
            return []
        sender = Sender(Platform.DINGTALK, staff_id, name=_str(msg.get("senderNick")))
        chat_id = (
            _str(msg.get("conversationId"))
            if str(msg.get("conversationType")) == _GROUP_CONVERSATION
            else None
        )
        base: dict[str, Any] = {
            "platform": Platform.DINGTALK,
            "sender": sender,
            "received_at": now,
            "chat_id": chat_id,
            "raw": dict(msg),  # includes sessionWebhook and sessionWebhookExpiredTime for quick replies
        }
        key = f"dingtalk:msg:{msg_id}"
        content = msg.get("content")

        if msgtype == "text":
            text = msg.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("content"), str):
                raise Malformed("text message without text.content")
            return [TextMessage(dedup_key=key, text=text["content"].strip(), **base)]

        if msgtype == "picture":
            if not isinstance(content, dict):
                raise Malformed("picture message without content")
            code = _str(content.get("downloadCode")) or _str(content.get("pictureDownloadCode"))
            if code is None:
                raise Malformed("picture message without downloadCode")
            return [ImageMessage(dedup_key=key, media_ref=code, message_id=msg_id, **base)]

        if msgtype == "richText":
            items = content.get("richText") if isinstance(content, dict) else None
            if not isinstance(items, list):
                raise Malformed("richText message without content.richText")
            codes = [
                code
                for item in items
                if isinstance(item, dict)
                and (code := _str(item.get("downloadCode")) or _str(item.get("pictureDownloadCode")))
            ]
            text = "".join(
                item["text"] for item in items if isinstance(item, dict) and isinstance(item.get("text"), str)
            ).strip()
            events: list[InboundEvent] = [
                ImageMessage(
                    dedup_key=key if i == 0 else f"{key}:{i}", media_ref=code, message_id=msg_id, **base
                )
                for i, code in enumerate(codes)
            ]
            if text:
                events.append(TextMessage(dedup_key=f"{key}:text" if codes else key, text=text, **base))
            return events

        return []

    # -- card callbacks ---------------------------------------------------------------------------------

    def handle_card(self, headers: Mapping[str, str], body: bytes, now: datetime) -> WebhookReply:
        self.verify(headers, now)
        event = self.parse_card(self._json(body), now)
        # An empty object leaves the card as it is; updates go out later through PUT /v1.0/card/instances.
        return WebhookReply(status=200, body=b"{}", content_type="application/json", events=(event,))

    def parse_card(self, data: Mapping[str, Any], now: datetime) -> CardAction:
        """A card callback (HTTP body or Stream ``data`` of ``/v1.0/card/instances/callback``)."""
        out_track_id = _str(data.get("outTrackId"))
        user_id = _str(data.get("userId"))
        if out_track_id is None or user_id is None:
            raise Malformed("card callback without outTrackId or userId")
        raw_value = data.get("content", data.get("value"))
        if isinstance(raw_value, str):
            try:
                value = json.loads(raw_value)
            except ValueError as exc:
                raise Malformed("card callback content is not JSON") from exc
        else:
            value = raw_value
        private = value.get("cardPrivateData") if isinstance(value, dict) else None
        if not isinstance(private, dict):
            raise Malformed("card callback without cardPrivateData")
        action_ids = private.get("actionIds") or []
        params = private.get("params") or {}
        if not isinstance(action_ids, list) or not all(isinstance(a, str) for a in action_ids):
            raise Malformed("actionIds is not a list of strings")
        if not isinstance(params, dict):
            raise Malformed("params is not an object")
        form = {
            str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            for k, v in params.items()
            if k != PAYLOAD_PARAM
        }
        payload = params.get(PAYLOAD_PARAM, "")
        if not isinstance(payload, str):
            raise Malformed("payload parameter is not a string")
        digest = hashlib.sha256(
            json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        ).hexdigest()[:16]
        union = data.get("userIdType") == _UNION_ID_TYPE
        space_type = _str(data.get("spaceType")) or ""
        return CardAction(
            platform=Platform.DINGTALK,
            dedup_key=f"dingtalk:card:{out_track_id}:{user_id}:{','.join(action_ids)}:{digest}",
            sender=Sender(Platform.DINGTALK, user_id, union_id=user_id if union else None),
            received_at=now,
            chat_id=_str(data.get("spaceId")) if space_type.upper() == "IM_GROUP" else None,
            raw=dict(data),
            payload=payload,
            form=form,
            card_ref=out_track_id,
        )
