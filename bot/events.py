"""Neutral inbound events: what a platform's webhook (or long connection) turns its payloads into.

Every event carries the platform-correct dedup key (shared/research/platforms.md §0), so a platform retry is
recognised wherever it arrives: WeCom ``MsgId`` (events: ``FromUserName+CreateTime``, card events plus
``EventKey+TaskId``); Feishu ``message.message_id`` for messages, ``header.event_id`` for other events;
DingTalk robot ``msgId``, Stream ``headers.messageId``, card ``outTrackId+userId+actionIds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class Platform(StrEnum):
    WECOM = "wecom"
    FEISHU = "feishu"
    DINGTALK = "dingtalk"


@dataclass(frozen=True, slots=True)
class Sender:
    platform: Platform
    user_id: str  # WeCom UserID, Feishu open_id, DingTalk staff userid
    name: str | None = None
    union_id: str | None = None  # Feishu union_id / user_id when present


@dataclass(frozen=True, slots=True)
class InboundEvent:
    platform: Platform
    dedup_key: str  # "<platform>:<kind>:<platform id>"
    sender: Sender
    received_at: datetime
    chat_id: str | None = None  # group or conversation id, when not a 1:1 chat
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TextMessage(InboundEvent):
    text: str = ""


@dataclass(frozen=True, slots=True)
class ImageMessage(InboundEvent):
    media_ref: str = ""  # WeCom MediaId, Feishu image_key (+ message id), DingTalk downloadCode
    message_id: str | None = None
    download_url: str | None = None  # DingTalk gives a URL to fetch, as given


@dataclass(frozen=True, slots=True)
class CardAction(InboundEvent):
    payload: str = ""  # the packed, signed button payload (bot.cards.payload)
    form: Mapping[str, str] = field(default_factory=dict)  # inputs and selections submitted with it
    card_ref: str | None = None  # WeCom task_id, Feishu message id, DingTalk outTrackId
    update_token: str | None = None  # WeCom response_code (one use, 72 h), Feishu delayed-update token


_KINDS: dict[str, type[InboundEvent]] = {
    "text": TextMessage,
    "image": ImageMessage,
    "card": CardAction,
}


def to_record(event: InboundEvent) -> dict[str, Any]:
    """The event as JSON, to keep until it is processed (the platform's raw payload is left out)."""
    kind = next(k for k, cls in _KINDS.items() if type(event) is cls)
    out: dict[str, Any] = {"kind": kind}
    for f in fields(event):
        if f.name == "raw":
            continue
        value = getattr(event, f.name)
        if isinstance(value, Sender):
            value = {"platform": value.platform.value, "user_id": value.user_id, "name": value.name,
                     "union_id": value.union_id}  # fmt: skip
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Platform):
            value = value.value
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


def from_record(record: Mapping[str, Any]) -> InboundEvent:
    """The event :func:`to_record` kept. Raises ``ValueError`` on a record it did not write."""
    try:
        cls = _KINDS[record["kind"]]
        data = {k: v for k, v in record.items() if k != "kind"}
        data["platform"] = Platform(data["platform"])
        s = data["sender"]
        data["sender"] = Sender(Platform(s["platform"]), s["user_id"], s.get("name"), s.get("union_id"))
        data["received_at"] = datetime.fromisoformat(data["received_at"])
        return cls(**data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an event record: {exc}") from exc


class WebhookRefused(Exception):
    """A request that never reaches a handler: answered with ``status`` and logged."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Forged(WebhookRefused):
    def __init__(self, reason: str = "bad signature") -> None:
        super().__init__(401, reason)


class Replayed(WebhookRefused):
    def __init__(self, reason: str = "timestamp outside the allowed window") -> None:
        super().__init__(401, reason)


class Malformed(WebhookRefused):
    def __init__(self, reason: str = "malformed request") -> None:
        super().__init__(400, reason)


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """What to answer the platform right away (within its deadline), plus the events to process after."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    events: tuple[InboundEvent, ...] = ()
