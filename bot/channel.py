"""The one Channel protocol every platform implements. Differences are capability flags, never isinstance.

Channels do I/O only: they send what the outbox hands them and report errors precisely enough for the outbox
to decide between retrying (with the platform's back-off hint) and giving up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.cards.capabilities import Capabilities
from bot.events import Platform


@dataclass(frozen=True, slots=True)
class Address:
    platform: Platform
    user_id: str | None = None  # a person (1:1)
    chat_id: str | None = None  # or a group chat


@dataclass(frozen=True, slots=True)
class SentRef:
    """What is needed later to update a sent card in place."""

    platform: Platform
    message_id: str | None
    card_ref: str | None = None  # WeCom task_id / DingTalk outTrackId
    update_token: str | None = None  # WeCom response_code, Feishu delayed-update token
    sent_at: datetime | None = None


class ChannelError(Exception):
    """A send that failed. ``retryable`` errors (timeouts, 5xx, rate limits, expired tokens after a refresh)
    are retried by the outbox, after ``retry_after`` seconds when the platform says so."""

    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.retryable, self.retry_after = code, retryable, retry_after


class Channel(Protocol):
    platform: Platform
    capabilities: Capabilities

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef: ...

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef: ...

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef: ...

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes: ...

    async def close(self) -> None: ...
