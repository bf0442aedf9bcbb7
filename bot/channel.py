"""The one Channel protocol every platform implements. Differences are capability flags, never isinstance.

Channels do I/O only: they send what the outbox hands them and report errors precisely enough for the outbox
to decide between retrying (with the platform's back-off hint) and giving up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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

    async def send_image(self, to: Address, data: bytes | Path, *, idempotency_key: str) -> SentRef:
        """Upload the picture (PNG or JPEG bytes, or a file holding them) and send it as an image message."""
        ...

    async def close(self) -> None: ...


IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": ("png", "image/png"), b"\xff\xd8\xff": ("jpg", "image/jpeg")}


def image_payload(data: bytes | Path, *, max_bytes: int, min_bytes: int = 1) -> tuple[bytes, str, str]:
    """The bytes of an image to upload with a file name and content type from its magic number, or a
    non-retryable ChannelError (a file gone, an empty or oversized picture, not a PNG or JPEG): sending it
    again would not help."""
    if isinstance(data, Path):
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise ChannelError(f"image file unreadable: {exc}", code="image_missing") from None
    if not min_bytes <= len(data) <= max_bytes:
        raise ChannelError(
            f"image of {len(data)} bytes is outside {min_bytes}..{max_bytes}", code="image_size"
        )
    for magic, (ext, ctype) in IMAGE_TYPES.items():
        if data.startswith(magic):
            return data, f"image.{ext}", ctype
    raise ChannelError("not a PNG or JPEG image", code="image_type")
