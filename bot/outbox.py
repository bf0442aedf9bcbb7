"""The durable outbox: every outbound message is a row written with the change that causes it.

- ``enqueue`` adds a row inside the caller's transaction (no network): if the transaction rolls back, nothing
  is sent; if it commits, the message will be sent even if the process dies right after.
- ``deliver_due`` claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several server processes share
  the work; a lease in ``locked_until`` covers SQLite and crashed workers), sends them through the channel with
  the row's idempotency key (WeCom ``enable_duplicate_check``, Feishu ``uuid``, DingTalk ``outTrackId``), and
  records the outcome. Retryable failures back off (the platform's hint first, else exponential with a cap);
  permanent ones are marked failed with the error.
- Per-recipient rate limits (WeCom: 30 messages per user per minute) are respected by deferring, not dropping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Address, Channel, ChannelError, SentRef
from bot.events import Platform
from bot.logs import tracing
from core.db import dialect_insert
from core.models import InboundSeen, OutboxMessage

log = logging.getLogger("pandian.outbox")

MAX_ATTEMPTS = 8
LEASE = timedelta(seconds=60)
PER_USER_PER_MINUTE = {Platform.WECOM: 30, Platform.FEISHU: 5 * 60, Platform.DINGTALK: 20 * 60}


async def first_delivery(
    session: AsyncSession,
    dedup_key: str,
    now: datetime | None = None,
    event: dict[str, Any] | None = None,
) -> bool:
    """Record an inbound event's dedup key (and the event, until it is processed); False when it was seen
    before (a platform retry)."""
    stmt = dialect_insert(session, InboundSeen).values(
        dedup_key=dedup_key, received_at=now or datetime.now(UTC), event=event, attempts=0
    )
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["dedup_key"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def enqueue(
    session: AsyncSession,
    *,
    idempotency_key: str,
    to: Address,
    kind: str,
    body: Mapping[str, Any],
    trace_id: str | None = None,
    now: datetime | None = None,
    subject: str | None = None,
) -> bool:
    """Queue one send in the caller's transaction. The same key twice queues it once. Returns True if new.

    An ``image`` row carries a reference, never the picture: ``{"image": "<sha256>.png", "path": "/abs/…"}``
    as :class:`bot.photos.PhotoStore` saved it (content-addressed, so the file cannot change under the row).
    """
    if kind not in ("text", "card", "update", "image"):
        raise ValueError(f"unknown outbox kind {kind!r}")
    if kind == "image" and not (isinstance(body.get("image"), str) and isinstance(body.get("path"), str)):
        raise ValueError("an image row needs the stored picture's reference: {'image': ref, 'path': file}")
    now = now or datetime.now(UTC)
    stmt = dialect_insert(session, OutboxMessage).values(
        idempotency_key=idempotency_key,
        platform=to.platform.value,
        kind=kind,
        address={"user_id": to.user_id, "chat_id": to.chat_id},
        body=dict(body),
        state="pending",
        attempts=0,
        next_attempt_at=now,
        trace_id=trace_id,
        created_at=now,
        subject=subject,
    )
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["idempotency_key"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def backoff(attempts: int, hint: float | None) -> timedelta:
    if hint is not None and hint > 0:
        return timedelta(seconds=min(hint, 3600))
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))


def _due(now: datetime) -> Any:
    return (
        or_(
            OutboxMessage.state == "pending",
            # a worker that died mid-send left its lease behind: take the row over after the lease
            (OutboxMessage.state == "sending") & (OutboxMessage.locked_until < now),
        )
    ) & (OutboxMessage.next_attempt_at <= now)


async def _claim(session: AsyncSession, now: datetime, limit: int) -> list[OutboxMessage]:
    """Take up to ``limit`` due rows. Each claim is a compare-and-set on the row's state, so two workers
    can never both take one row, whatever the isolation level (SKIP LOCKED on PostgreSQL just lets them
    pass each other without waiting)."""
    due = select(OutboxMessage).where(_due(now)).order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
    due = due.limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list((await session.execute(due.with_only_columns(OutboxMessage.id))).scalars())
    claimed = []
    for row_id in ids:
        result = await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row_id, _due(now))
            .values(state="sending", locked_until=now + LEASE)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            claimed.append(row_id)
    if not claimed:
        return []
    rows = await session.execute(select(OutboxMessage).where(OutboxMessage.id.in_(claimed)))
    return sorted(rows.scalars(), key=lambda r: claimed.index(r.id))


async def _recent_sends(session: AsyncSession, platform: str, user_id: str | None, now: datetime) -> int:
    if user_id is None:
        return 0
    n = await session.scalar(
        select(func.count()).where(
            OutboxMessage.platform == platform,
            OutboxMessage.state == "sent",
            OutboxMessage.sent_at > now - timedelta(minutes=1),
            OutboxMessage.address["user_id"].as_string() == user_id,
        )
    )
    return int(n or 0)


async def deliver_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    channels: Mapping[str, Channel],
    *,
    now: datetime | None = None,
    limit: int = 50,
) -> dict[str, int]:
    """One pass: claim due rows (committed), send each, record each outcome (committed per row)."""
    now = now or datetime.now(UTC)
    counts = {"sent": 0, "retry": 0, "failed": 0, "deferred": 0}
    async with sessionmaker() as s, s.begin():
        claimed = [(r.id, r.platform, r.kind, dict(r.address), dict(r.body), r.idempotency_key, r.attempts,
                    r.trace_id) for r in await _claim(s, now, limit)]  # fmt: skip
    for row_id, platform, kind, address, body, key, attempts, trace_id in claimed:
        with tracing(trace_id):
            await _deliver_one(sessionmaker, channels, now, counts, row_id, platform, kind, address, body, key,
                               attempts)  # fmt: skip
    return counts


async def _deliver_one(
    sessionmaker: async_sessionmaker[AsyncSession], channels: Mapping[str, Channel], now: datetime,
    counts: dict[str, int], row_id: int, platform: str, kind: str, address: dict[str, Any], body: dict[str, Any],
    key: str, attempts: int,
) -> None:  # fmt: skip
    channel = channels.get(platform)
    async with sessionmaker() as s, s.begin():
        row = await s.get(OutboxMessage, row_id)
        assert row is not None
        if channel is None:
            row.state, row.last_error = "failed", f"platform {platform} is not configured"
            counts["failed"] += 1
            return
        cap = PER_USER_PER_MINUTE.get(Platform(platform))
        if cap is not None and await _recent_sends(s, platform, address.get("user_id"), now) >= cap:
            row.state, row.next_attempt_at = "pending", now + timedelta(seconds=60)
            counts["deferred"] += 1
            return
    to = Address(Platform(platform), address.get("user_id"), address.get("chat_id"))
    try:
        ref = await _send(channel, kind, to, body, key)
    except ChannelError as exc:
        async with sessionmaker() as s, s.begin():
            row = await s.get(OutboxMessage, row_id)
            assert row is not None
            row.attempts = attempts + 1
            row.last_error = f"{exc.code}: {exc}" if exc.code is not None else str(exc)
            if exc.retryable and row.attempts < MAX_ATTEMPTS:
                row.state, row.next_attempt_at = "pending", now + backoff(row.attempts, exc.retry_after)
                counts["retry"] += 1
            else:
                row.state = "failed"
                counts["failed"] += 1
                log.warning("outbox %s failed for good: %s", key, row.last_error)
        return
    async with sessionmaker() as s, s.begin():
        await s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row_id)
            .values(
                state="sent",
                sent_at=now,
                attempts=attempts + 1,
                sent_ref=_ref_json(ref),
                locked_until=None,
            )
        )
    counts["sent"] += 1
    log.info("sent %s %s to %s:%s", kind, key, platform, address.get("user_id") or address.get("chat_id"))


async def _send(channel: Channel, kind: str, to: Address, body: dict[str, Any], key: str) -> SentRef:
    if kind == "text":
        return await channel.send_text(to, str(body["text"]), idempotency_key=key)
    if kind == "card":
        return await channel.send_card(to, dict(body["card"]), idempotency_key=key)
    if kind == "image":  # the channel reads the file; one gone (pruned) fails the row for good
        return await channel.send_image(to, Path(body["path"]), idempotency_key=key)
    ref = body["ref"]
    return await channel.update_card(
        SentRef(
            Platform(ref["platform"]), ref.get("message_id"), ref.get("card_ref"), ref.get("update_token")
        ),
        dict(body["card"]),
    )


def _ref_json(ref: SentRef) -> dict[str, Any]:
    out = asdict(ref)
    out["platform"] = ref.platform.value
    out["sent_at"] = ref.sent_at.isoformat() if ref.sent_at else None
    return out


async def depth(session: AsyncSession) -> dict[str, int]:
    """Rows per state (for /metrics)."""
    rows = await session.execute(select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state))
    return {state: int(n) for state, n in rows.all()}
