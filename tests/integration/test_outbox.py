"""The outbox and inbound dedup on the suite's database, with an in-memory channel that records sends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cards.capabilities import WECOM
from bot.channel import Address, ChannelError, SentRef
from bot.events import Platform
from bot.outbox import MAX_ATTEMPTS, deliver_due, enqueue, first_delivery
from core.models import OutboxMessage

NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


class RecordingChannel:
    """A channel that records what it was asked to send and fails on request (a fake, not a mock)."""

    platform = Platform.WECOM
    capabilities = WECOM

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.failures: list[ChannelError] = []

    async def _go(self, kind: str, key: str, what: Any) -> SentRef:
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((kind, key, what))
        return SentRef(Platform.WECOM, f"m{len(self.sent)}", update_token=f"rc{len(self.sent)}")

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        return await self._go("text", idempotency_key, (to.user_id, text))

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef:
        return await self._go("card", idempotency_key, card)

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef:
        return await self._go("update", ref.update_token or "", card)

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes:
        return b""

    async def close(self) -> None:
        return None


TO = Address(Platform.WECOM, "zhangwei")


async def test_enqueue_is_transactional_and_idempotent(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s:
        await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "早上好"}, now=NOW)
        await s.rollback()  # the change that caused it failed: nothing is sent
    async with sessionmaker() as s, s.begin():
        assert await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "早上好"}, now=NOW)
        assert not await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "again"}, now=NOW)
    ch = RecordingChannel()
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW))["sent"] == 1
    assert ch.sent == [("text", "k1", ("zhangwei", "早上好"))]
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(minutes=5)))["sent"] == 0


async def test_retry_backoff_then_success_and_permanent_failure(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="a", to=TO, kind="card", body={"card": {"x": 1}}, now=NOW)
        await enqueue(s, idempotency_key="b", to=TO, kind="text", body={"text": "hi"}, now=NOW)
    ch = RecordingChannel()
    ch.failures = [ChannelError("rate limited", code=45009, retryable=True, retry_after=30),
                   ChannelError("bad user", code=40003)]  # fmt: skip
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW)
    assert counts == {"sent": 0, "retry": 1, "failed": 1, "deferred": 0}
    async with sessionmaker() as s:
        rows = {r.idempotency_key: r for r in (await s.execute(select(OutboxMessage))).scalars()}
    assert rows["a"].state == "pending" and rows["a"].next_attempt_at == NOW + timedelta(seconds=30)
    assert rows["b"].state == "failed" and "40003" in (rows["b"].last_error or "")
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=10)))[
        "sent"
    ] == 0  # not yet
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=31)))["sent"] == 1
    async with sessionmaker() as s:
        sent = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.idempotency_key == "a"))
        ).scalar_one()
    assert sent.state == "sent" and sent.sent_ref and sent.sent_ref["update_token"] == "rc1"


async def test_gives_up_after_max_attempts(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="z", to=TO, kind="text", body={"text": "x"}, now=NOW)
    ch = RecordingChannel()
    t = NOW
    for _ in range(MAX_ATTEMPTS):
        ch.failures = [ChannelError("timeout", retryable=True)]
        await deliver_due(sessionmaker, {"wecom": ch}, now=t)
        t += timedelta(hours=1)
    async with sessionmaker() as s:
        row = (await s.execute(select(OutboxMessage))).scalar_one()
    assert row.state == "failed" and row.attempts == MAX_ATTEMPTS


async def test_crashed_worker_lease_is_taken_over(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="c", to=TO, kind="text", body={"text": "x"}, now=NOW)
        row = (await s.execute(select(OutboxMessage))).scalar_one()
        row.state, row.locked_until = "sending", NOW + timedelta(seconds=60)  # a worker died mid-send
    ch = RecordingChannel()
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=30)))["sent"] == 0
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=61)))["sent"] == 1


async def test_rate_limit_per_user_defers(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        for i in range(32):
            await enqueue(s, idempotency_key=f"r{i}", to=TO, kind="text", body={"text": str(i)}, now=NOW)
    ch = RecordingChannel()
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=100)
    assert counts["sent"] == 30 and counts["deferred"] == 2
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=61), limit=100))[
        "sent"
    ] == 2


async def test_two_workers_send_each_message_once(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        for i in range(20):
            await enqueue(s, idempotency_key=f"w{i}", to=Address(Platform.WECOM, f"u{i}"), kind="text",
                          body={"text": str(i)}, now=NOW)  # fmt: skip
    ch = RecordingChannel()

    async def worker() -> None:
        for _ in range(5):
            try:
                await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=4)
            except Exception as exc:  # SQLite: a concurrent writer may find the file busy; try again
                if "locked" not in str(exc):
                    raise
            await asyncio.sleep(0)

    await asyncio.gather(worker(), worker())
    keys = [k for _, k, _ in ch.sent]
    assert sorted(keys) == sorted(f"w{i}" for i in range(20)) and len(keys) == len(set(keys))


async def test_inbound_dedup(session: AsyncSession) -> None:
    assert await first_delivery(session, "wecom:msg:1", NOW)
    assert not await first_delivery(session, "wecom:msg:1", NOW)
    assert await first_delivery(session, "wecom:msg:2", NOW)
