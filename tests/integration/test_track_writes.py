"""core.db.track_writes (what a chat event wrote, so the dispatcher can skip the card sync when it wrote
nothing) and core.db.insert_ignoring (the prepared insert the outbox uses for every reply)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import insert_ignoring, track_writes
from core.models import OutboxMessage, Team

NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


def _row(key: str) -> dict[str, object]:
    return {"idempotency_key": key, "platform": "wecom", "kind": "text", "address": {"user_id": "u"},
            "body": {"text": "hi"}, "state": "pending", "attempts": 0, "next_attempt_at": NOW, "created_at": NOW}  # fmt: skip


async def test_a_tracked_session_sees_its_own_writes_only(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as tracked:
        written = track_writes(tracked)
        # another session's writes are not ours (one after the other: SQLite has one writer at a time)
        async with sessionmaker() as other, other.begin():
            other.add(Team(name="别组"))
            await other.execute(insert_ignoring(other, OutboxMessage, on=("idempotency_key",)), _row("other"))
        async with tracked.begin():
            await tracked.execute(select(Team))  # reads are not writes
            assert written == set()
            tracked.add(Team(name="本组"))
            await tracked.flush()  # an ORM flush
            assert written == {"team"}
            await tracked.execute(
                insert_ignoring(tracked, OutboxMessage, on=("idempotency_key",)), _row("ours")
            )
            assert written == {"team", "outbox_message"}  # a statement through session.execute


async def test_insert_ignoring_inserts_a_key_once(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        stmt = insert_ignoring(s, OutboxMessage, on=("idempotency_key",))
        assert stmt is insert_ignoring(s, OutboxMessage, on=("idempotency_key",))  # built once
        first = await s.execute(stmt, _row("k1"))
        again = await s.execute(stmt, _row("k1") | {"body": {"text": "changed"}})
        assert (first.rowcount, again.rowcount) == (1, 0)  # type: ignore[attr-defined]
    async with sessionmaker() as s:
        rows = (
            (await s.execute(select(OutboxMessage).where(OutboxMessage.idempotency_key == "k1")))
            .scalars()
            .all()
        )
        assert [(r.body, r.address, r.next_attempt_at) for r in rows] == [
            ({"text": "hi"}, {"user_id": "u"}, NOW)
        ]
        assert await s.scalar(select(func.count()).select_from(OutboxMessage)) == 1
