"""The durable outbox: every outbound message is a row written with the change that causes it.

- ``enqueue`` adds a row inside the caller's transaction (no network): if the transaction rolls back, nothing
  is sent; if it commits, the message will be sent even if the process dies right after.
- ``deliver_due`` claims due rows with one compare-and-set UPDATE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
  several server processes share the work; a lease in ``locked_until`` covers SQLite and crashed workers),
  sends them through the channel with the row's idempotency key (WeCom ``enable_duplicate_check``, Feishu
  ``uuid``, DingTalk ``outTrackId``), and records each outcome as soon as it is known (outcomes that arrive
  together share one transaction: ``core.batching.GroupCommit``). One recipient's messages go out one after
  the other, in order; different recipients' go out concurrently (``SENDS_IN_FLIGHT`` at most). Retryable
  failures back off (the platform's hint first, else exponential with a cap); permanent ones are marked
  failed with the error.
- Per-recipient rate limits (WeCom: 30 messages per user per minute) are respected by deferring, not dropping.
- Messages for a platform this process has not configured are not claimed: they wait (a server started once
  without its ``[wecom]`` section must not fail the queue), and a warning says so every ``WAITING_NOTE``.
- Failed attempts are logged at WARNING with their cause, one line per platform and cause per pass, with
  credentials cut out of the text (``redact``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Address, Channel, ChannelError, SentRef
from bot.events import Platform
from bot.logs import tracing
from core.batching import GroupCommit
from core.db import insert_ignoring
from core.models import OutboxMessage

log = logging.getLogger("pandian.outbox")

MAX_ATTEMPTS = 8
LEASE = timedelta(seconds=60)
PER_USER_PER_MINUTE = {Platform.WECOM: 30, Platform.FEISHU: 5 * 60, Platform.DINGTALK: 20 * 60}
WAITING_NOTE = timedelta(minutes=10)  # how often a pass says that messages wait for an unconfigured platform

# query parameters and JSON fields that carry credentials, as they may appear in an error's text (a URL)
_CREDENTIAL = re.compile(
    r"(?i)\b(access_token|corpsecret|app_secret|appsecret|secret|tenant_access_token|password|sign)"
    r"(['\"]?\s*[=:]\s*['\"]?)[^&\s'\",;)}]+"
)


def redact(text: str) -> str:
    """``text`` with credential values cut out (``access_token=***``): error texts go to logs and to
    ``outbox.last_error``."""
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


async def enqueue(
    session: AsyncSession,
    *,
    idempotency_key: str,
    to: Address,
    kind: str,
    body: Mapping[str, Any],
    trace_id: str | None = None,
    now: datetime,
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
    row = {
        "idempotency_key": idempotency_key, "platform": to.platform.value, "kind": kind,
        "address": {"user_id": to.user_id, "chat_id": to.chat_id}, "body": dict(body), "state": "pending",
        "attempts": 0, "next_attempt_at": now, "trace_id": trace_id, "created_at": now, "subject": subject,
    }  # fmt: skip
    result = await session.execute(insert_ignoring(session, OutboxMessage, on=("idempotency_key",)), row)
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


SENDS_IN_FLIGHT = 16  # sends waiting on the platforms at once, over all recipients of a pass

Recipient = tuple[str, str | None, str | None]  # platform, user_id, chat_id
Outcome = tuple[int, dict[str, Any]]  # a row's id and the columns to write


@dataclass(frozen=True, slots=True)
class _Claimed:
    """What a pass needs of a claimed row (a plain value: the sends run outside any session)."""

    id: int
    platform: str
    kind: str
    address: dict[str, Any]
    body: dict[str, Any]
    key: str
    attempts: int
    trace_id: str | None

    @property
    def user_id(self) -> str | None:
        return self.address.get("user_id")

    @property
    def recipient(self) -> Recipient:
        return self.platform, self.address.get("user_id"), self.address.get("chat_id")


async def _claim(session: AsyncSession, now: datetime, limit: int, platforms: list[str]) -> list[_Claimed]:
    """Take up to ``limit`` due rows of the configured ``platforms``, in due order, with one compare-and-set
    UPDATE: a row is claimed only if it is still due when the UPDATE reaches it, and RETURNING says which ones
    were. So two workers can never both take one row, whatever the isolation level (SKIP LOCKED on PostgreSQL
    just lets them pass each other without waiting; on SQLite the transaction holds the write lock from its
    start). Rows of other platforms stay pending, untouched, until a process that has their platform runs."""
    if not platforms:
        return []
    due = (
        select(OutboxMessage.id)
        .where(_due(now), OutboxMessage.platform.in_(platforms))
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
    )
    due = due.limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list((await session.execute(due)).scalars())
    if not ids:
        return []
    o = OutboxMessage
    result = await session.execute(
        update(o)
        .where(o.id.in_(ids), _due(now))
        .values(state="sending", locked_until=now + LEASE)
        .returning(o.id, o.platform, o.kind, o.address, o.body, o.idempotency_key, o.attempts, o.trace_id)
        .execution_options(synchronize_session=False)
    )
    got = {
        r.id: _Claimed(r.id, r.platform, r.kind, dict(r.address or {}), dict(r.body or {}), r.idempotency_key,
                       r.attempts, r.trace_id)
        for r in result
    }  # fmt: skip
    return [got[i] for i in ids if i in got]  # RETURNING's order is not the claim's


def _caps() -> dict[str, int]:
    return {platform.value: cap for platform, cap in PER_USER_PER_MINUTE.items()}


async def _recent_sends(
    session: AsyncSession, rows: list[_Claimed], now: datetime
) -> dict[tuple[str, str], int]:
    """Messages sent in the last minute to each capped recipient among ``rows``: one grouped query per pass,
    not one count per row (the pass then keeps the count itself, send by send)."""
    caps = _caps()
    wanted = {(r.platform, r.user_id) for r in rows if r.user_id is not None and r.platform in caps}
    if not wanted:
        return {}
    user_id = OutboxMessage.address["user_id"].as_string().label("user_id")
    result = await session.execute(
        select(OutboxMessage.platform, user_id, func.count())
        .where(
            OutboxMessage.state == "sent",
            # a sent row's next_attempt_at is its sent_at (see _Pass._deliver): this bound lets the scan use
            # ix_outbox_due (state, next_attempt_at) instead of reading every row ever sent
            OutboxMessage.next_attempt_at > now - timedelta(minutes=1),
            OutboxMessage.sent_at > now - timedelta(minutes=1),
            OutboxMessage.platform.in_(sorted({p for p, _ in wanted})),
            user_id.in_(sorted({u for _, u in wanted if u is not None})),
        )
        .group_by(OutboxMessage.platform, user_id)
    )
    return {(p, u): int(n) for p, u, n in result if (p, u) in wanted}


async def deliver_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    channels: Mapping[str, Channel],
    *,
    now: datetime,
    limit: int = 50,
) -> dict[str, int]:
    """One pass: claim due rows and count their recipients' recent sends (one transaction), send them
    (each recipient's rows in order, recipients concurrently, at most ``SENDS_IN_FLIGHT`` at once), and
    record each outcome as soon as it is known, outcomes that arrive together in one transaction."""
    counts = {"sent": 0, "retry": 0, "failed": 0, "deferred": 0}
    platforms = sorted(p for p, ch in channels.items() if ch is not None)
    async with sessionmaker() as s, s.begin():
        claimed = await _claim(s, now, limit, platforms)
        recent = await _recent_sends(s, claimed, now) if claimed else {}
        await _note_waiting(s, sessionmaker, platforms, now)
    if not claimed:
        return counts
    groups: dict[Recipient, list[_Claimed]] = {}
    for row in claimed:
        groups.setdefault(row.recipient, []).append(row)
    delivery = _Pass(sessionmaker, channels, now, counts, recent)
    try:
        results = await asyncio.gather(
            *(delivery.group(rows) for rows in groups.values()), return_exceptions=True
        )
    finally:
        await delivery.recorder.close()
    for (platform, outcome, error), n in sorted(delivery.causes.items()):
        log.warning("outbox: %d message(s) to %s not sent (%s): %s", n, platform, outcome, error)
    if any(counts.values()):
        log.info(
            "outbox pass: %(sent)d sent, %(retry)d to retry, %(failed)d failed, %(deferred)d deferred", counts
        )
    for result in results:
        if isinstance(result, BaseException):
            # the rows of that recipient not yet recorded stay claimed until their lease runs out
            raise result
    return counts


_last_waiting_note: weakref.WeakKeyDictionary[Any, datetime] = weakref.WeakKeyDictionary()


async def _note_waiting(
    session: AsyncSession, sessionmaker: Any, platforms: list[str], now: datetime
) -> None:
    """Every ``WAITING_NOTE`` (per database), warn about pending messages for platforms not configured here:
    they are kept, and go out once the platform's section is back."""
    last = _last_waiting_note.get(sessionmaker)
    if last is not None and now - last < WAITING_NOTE:
        return
    _last_waiting_note[sessionmaker] = now
    waiting = await session.execute(
        select(OutboxMessage.platform, func.count())
        .where(OutboxMessage.state == "pending", OutboxMessage.platform.not_in(platforms))
        .group_by(OutboxMessage.platform)
    )
    for platform, n in waiting.all():
        log.warning(
            "outbox: %d message(s) for %s wait: that platform is not configured in this process (add its "
            "[%s] section and restart; they are kept)", n, platform, platform,
        )  # fmt: skip


class _Pass:
    """One pass's sends and bookkeeping. Rows over a recipient's rate cap are deferred, never dropped."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        now: datetime,
        counts: dict[str, int],
        recent: dict[tuple[str, str], int],
    ) -> None:
        self.sessionmaker, self.channels, self.now, self.counts = sessionmaker, channels, now, counts
        # sends to each capped user in the last minute, plus this pass's sends in flight or done
        self.recent = recent
        self.caps = _caps()
        self.sending = asyncio.Semaphore(SENDS_IN_FLIGHT)
        self.recorder: GroupCommit[Outcome, None] = GroupCommit(self._flush)
        # failed attempts of this pass, per (platform, "retry" or "failed", cause): logged once each at its end
        self.causes: dict[tuple[str, str, str], int] = {}

    async def _flush(self, outcomes: list[Outcome]) -> list[None]:
        """Write a batch of outcomes in one transaction (an executemany per set of columns)."""
        async with self.sessionmaker() as s, s.begin():
            await s.execute(update(OutboxMessage), [{"id": row_id, **values} for row_id, values in outcomes])
        return [None] * len(outcomes)

    async def _record(self, outcome: str, rows: list[_Claimed], values: dict[str, Any]) -> None:
        if len(rows) == 1:
            await self.recorder.submit((rows[0].id, values))
        else:  # a recipient's rows deferred or failed together: one batch
            await asyncio.gather(*(self.recorder.submit((row.id, values)) for row in rows))
        self.counts[outcome] += len(rows)

    async def group(self, rows: list[_Claimed]) -> None:
        """One recipient's rows, one after the other in claim order (people read them in that order)."""
        if self.channels.get(rows[0].platform) is None:  # not claimed (see _claim); if ever, it waits
            await self._record("deferred", rows, {"state": "pending", "locked_until": None})
            return
        for n, row in enumerate(rows):
            if not self._reserve(row):
                # over the cap: this and the rest of the recipient's rows wait a minute, in order
                later = self.now + timedelta(seconds=60)
                await self._record("deferred", rows[n:], {"state": "pending", "next_attempt_at": later,
                                                          "locked_until": None})  # fmt: skip
                return
            with tracing(row.trace_id):
                await self._deliver(row)

    def _cause(self, platform: str, outcome: str, error: str) -> None:
        key = (platform, outcome, error)
        self.causes[key] = self.causes.get(key, 0) + 1

    def _reserve(self, row: _Claimed) -> bool:
        cap, user_id = self.caps.get(row.platform), row.user_id
        if cap is None or user_id is None:
            return True
        if self.recent.get((row.platform, user_id), 0) >= cap:
            return False
        self.recent[row.platform, user_id] = self.recent.get((row.platform, user_id), 0) + 1
        return True

    def _release(self, row: _Claimed) -> None:
        if row.user_id is not None and row.platform in self.caps:
            self.recent[row.platform, row.user_id] -= 1

    async def _deliver(self, row: _Claimed) -> None:
        channel = self.channels[row.platform]
        to = Address(Platform(row.platform), row.user_id, row.address.get("chat_id"))
        try:
            async with self.sending:
                ref = await _send(channel, row.kind, to, row.body, row.key)
        except ChannelError as exc:
            self._release(row)  # not sent: it does not count against the cap
            attempts = row.attempts + 1
            error = redact(f"{exc.code}: {exc}" if exc.code is not None else str(exc))
            values: dict[str, Any] = {"attempts": attempts, "last_error": error, "locked_until": None}
            if exc.retryable and attempts < MAX_ATTEMPTS:
                values |= {
                    "state": "pending",
                    "next_attempt_at": self.now + backoff(attempts, exc.retry_after),
                }
                await self._record("retry", [row], values)
                self._cause(row.platform, "will retry", error)
            else:
                await self._record("failed", [row], values | {"state": "failed"})
                log.warning("outbox %s failed for good after %d attempt(s): %s", row.key, attempts, error)
            return
        except BaseException:
            self._release(row)
            raise
        # next_attempt_at = sent_at: the last attempt, and what the rate-cap query finds recent sends by
        values = {"state": "sent", "sent_at": self.now, "next_attempt_at": self.now,
                  "attempts": row.attempts + 1, "sent_ref": _ref_json(ref), "locked_until": None}  # fmt: skip
        await self._record("sent", [row], values)
        log.debug(
            "sent %s %s to %s:%s", row.kind, row.key, row.platform, row.user_id or row.address.get("chat_id")
        )


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
