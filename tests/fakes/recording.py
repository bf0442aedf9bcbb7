"""A channel that records what the outbox hands it, and fails on request: a fake, not a mock (the outbox and
the card flows around it run for real)."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.cards.capabilities import DINGTALK, FEISHU, WECOM, Capabilities
from bot.channel import Address, ChannelError, SentRef
from bot.events import Platform

CAPABILITIES: dict[Platform, Capabilities] = {
    Platform.WECOM: WECOM,
    Platform.FEISHU: FEISHU,
    Platform.DINGTALK: DINGTALK,
}


class RecordingChannel:
    def __init__(self, platform: Platform = Platform.WECOM) -> None:
        self.platform = platform
        self.capabilities = CAPABILITIES[platform]
        # (kind, idempotency key, body); an update's key is the message id it replaced
        self.sent: list[tuple[str, str, Any]] = []
        self.failures: list[ChannelError] = []  # raised by the next sends, one each
        self.update_tokens: list[str | None] = []  # the token each update used (WeCom's ResponseCode)

    async def _go(self, kind: str, key: str, what: Any) -> int:
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((kind, key, what))
        return len(self.sent)

    def _ref(self, n: int, card_ref: str | None = None) -> SentRef:
        return SentRef(self.platform, f"m{n}", card_ref=card_ref, update_token=f"rc{n}")

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        return self._ref(await self._go("text", idempotency_key, (to.user_id, text)))

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef:
        n = await self._go("card", idempotency_key, card)
        return self._ref(n, card.get("task_id") or card.get("ref"))

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef:
        await self._go("update", str(ref.message_id), card)
        self.update_tokens.append(ref.update_token)
        return ref

    async def send_image(self, to: Address, data: Any, *, idempotency_key: str) -> SentRef:
        raise ChannelError("this recording channel takes no pictures", retryable=False)

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes:
        return b""

    async def close(self) -> None:
        return None

    def cards(self, key: str) -> list[dict[str, Any]]:
        return [body for kind, k, body in self.sent if kind == "card" and k == key]

    def updates(self) -> list[tuple[str, dict[str, Any]]]:
        return [(mid, body) for kind, mid, body in self.sent if kind == "update"]
