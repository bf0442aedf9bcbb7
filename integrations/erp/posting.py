"""Write-back: approved adjustments into the ERP through a durable queue, each posted exactly once.

The queue is the ``erp_posting`` table, one row per adjustment:

1. **Enqueue.** An adjustment in ``pending_write_back`` gets its row once the mis-slot window
   (``reasons.misslot_window_days``) has passed since it was made: until then a later count may still pair it
   with its partner into a transfer (``core.variance.service._adjust``), which changes or deletes it; after
   that it never changes. The row holds the document as it will be sent (``payload``) and our bill number
   (``doc_key``: ``erp.bill_prefix`` + the adjustment id, as in the spreadsheet export).
2. **Claim.** Due rows are taken by compare-and-set on ``state`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets
   drainers pass each other), with a lease and a fresh ``claim_token``. Every step re-checks the token and
   renews the lease before the ERP is touched, so a drainer whose lease ran out stops instead of racing the
   one that took over. A drainer that dies leaves the lease behind; the row is taken over when it expires.
3. **Post.** The connector looks the document up by our bill number before it writes anything and resumes
   from the state the ERP reports (saved, submitted, counted…); what it learns (the ERP's ids) is saved in
   ``progress`` before the next step. So a response lost after the ERP posted is found again, not posted
   twice. Timeouts, 5xx and unreadable answers are retried at once a few times (``erp.step_retries``), then
   the row waits with exponential back-off (``erp.backoff_base_s`` … ``erp.backoff_max_s``). Expired sessions
   are renewed by the connector, which repeats the call.
4. **Outcome.** Posted: the adjustment becomes ``posted`` with the ERP's document number (audit trail). The ERP
   refused (validation error, closed period), or ``erp.max_attempts`` attempts failed: the adjustment becomes
   ``failed`` with the ERP's message, and every active finance user is told in chat (``bot.notify``, in the
   same transaction). ``retry`` puts failed ones back in the queue. Every attempt is kept in
   ``erp_posting_attempt``. Nothing is dropped without a row saying why.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from core import audit
from core.config import Settings
from core.db import dialect_insert
from core.enums import AdjustmentKind, Role
from core.models import (
    Adjustment,
    AdjustmentLine,
    ErpPosting,
    ErpPostingAttempt,
    Item,
    Location,
    User,
    Variance,
    Warehouse,
)
from core.variance.workflow import ADJUSTMENT, AdjustmentEvent, AdjustmentState, IllegalTransition
from integrations.erp.base import ApiConnector, DocLine, ErpError, ErpRejected, Posted, PostingDoc

log = logging.getLogger("pandian.erp.posting")

PENDING, POSTING, POSTED, FAILED = "pending", "posting", "posted", "failed"
KIND_ZH = {AdjustmentKind.GAIN: "盘盈", AdjustmentKind.LOSS: "盘亏", AdjustmentKind.TRANSFER: "移库"}
Clock = Callable[[], datetime]


def doc_key(settings: Settings, adjustment_id: int) -> str:
    return f"{settings.erp.bill_prefix}{adjustment_id:08d}"


def hold(settings: Settings) -> timedelta:
    """How long an adjustment waits before it is queued: the mis-slot pairing window."""
    return settings.reasons.misslot_window


# ------------------------------------------------------------------------------------------------ enqueue


async def enqueue_due(session: AsyncSession, settings: Settings, system: str, now: datetime) -> int:
    """Queue the adjustments that are pending and past the mis-slot window. Returns how many were queued."""
    cutoff = now - hold(settings)
    ids = list(
        (
            await session.execute(
                select(Adjustment.id)
                .outerjoin(ErpPosting, ErpPosting.adjustment_id == Adjustment.id)
                .where(
                    Adjustment.state == AdjustmentState.PENDING_WRITE_BACK.value,
                    Adjustment.created_at <= cutoff,
                    ErpPosting.id.is_(None),
                )
                .order_by(Adjustment.id)
                .limit(1000)
            )
        ).scalars()
    )
    if not ids:
        return 0
    docs = await build_docs(session, settings, ids)
    queued = 0
    for adj_id in ids:
        doc = docs.get(adj_id)
        if doc is None:  # no lines left (should not happen: an emptied document is deleted)
            continue
        # another drainer may queue the same adjustment at the same moment: the first one wins, quietly
        stmt = dialect_insert(session, ErpPosting).values(
            adjustment_id=adj_id, system=system, doc_key=doc.key, state=PENDING, attempts=0, next_attempt_at=now,
            payload=doc.to_json(), progress={}, erp_refs=[], created_at=now,
        ).on_conflict_do_nothing()  # fmt: skip
        queued += (await session.execute(stmt)).rowcount  # type: ignore[attr-defined]
    return queued


async def held(session: AsyncSession, settings: Settings, now: datetime) -> tuple[int, datetime | None]:
    """Adjustments still inside the mis-slot window: how many, and when the first becomes due."""
    cutoff = now - hold(settings)
    rows = (
        await session.execute(
            select(Adjustment.created_at)
            .outerjoin(ErpPosting, ErpPosting.adjustment_id == Adjustment.id)
            .where(
                Adjustment.state == AdjustmentState.PENDING_WRITE_BACK.value,
                Adjustment.created_at > cutoff,
                ErpPosting.id.is_(None),
            )
        )
    ).scalars()
    times = sorted(rows)
    return len(times), (times[0] + hold(settings) if times else None)


async def build_docs(session: AsyncSession, settings: Settings, ids: Sequence[int]) -> dict[int, PostingDoc]:
    to_loc = aliased(Location)
    rows = (
        await session.execute(
            select(Adjustment, AdjustmentLine, Item.sku, Item.base_unit, Location.code, to_loc.code,
                   Warehouse.code, Variance)
            .join(AdjustmentLine, AdjustmentLine.adjustment_id == Adjustment.id)
            .join(Item, Item.id == AdjustmentLine.item_id)
            .join(Location, Location.id == AdjustmentLine.location_id)
            .outerjoin(to_loc, to_loc.id == AdjustmentLine.to_location_id)
            .join(Warehouse, Warehouse.id == Adjustment.warehouse_id)
            .outerjoin(Variance, Variance.id == AdjustmentLine.variance_id)
            .where(Adjustment.id.in_(ids))
            .order_by(Adjustment.id, AdjustmentLine.id)
        )
    ).all()  # fmt: skip
    lines: dict[int, list[DocLine]] = {}
    heads: dict[int, tuple[Adjustment, str]] = {}
    for adj, line, sku, unit, loc, to_code, wh, var in rows:
        heads[adj.id] = (adj, wh)
        lines.setdefault(adj.id, []).append(
            DocLine(sku=sku, unit=unit, location=loc, to_location=to_code, qty=Decimal(line.qty),
                    unit_cost=Decimal(line.unit_cost),
                    book_qty=Decimal(var.book_qty) if var is not None else None,
                    counted_qty=Decimal(var.counted_qty) if var is not None else None,
                    variance_id=var.id if var is not None else None,
                    reason=var.reason_code if var is not None else None)
        )  # fmt: skip
    out = {}
    for adj_id, (adj, wh) in heads.items():
        variances = sorted({ln.variance_id for ln in lines[adj_id] if ln.variance_id})
        note = "pandian 盘点差异 " + ", ".join(f"#{v}" for v in variances) if variances else "pandian"
        out[adj_id] = PostingDoc(key=doc_key(settings, adj_id), adjustment_id=adj_id, kind=AdjustmentKind(adj.kind),
                                 warehouse=wh, created_at=adj.created_at, lines=tuple(lines[adj_id]), note=note)  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ claim


def _due(now: datetime) -> Any:
    return or_(
        (ErpPosting.state == PENDING) & (ErpPosting.next_attempt_at <= now),
        # a drainer that died mid-post left its lease behind: take the row over after the lease
        (ErpPosting.state == POSTING) & (ErpPosting.locked_until < now),
    )


async def _claim(session: AsyncSession, now: datetime, limit: int, token: str, lease: timedelta) -> list[int]:
    """Take up to ``limit`` due rows: a compare-and-set per row, so two drainers never both take one."""
    due = (
        select(ErpPosting.id)
        .where(_due(now))
        .order_by(ErpPosting.next_attempt_at, ErpPosting.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    claimed = []
    for row_id in list((await session.execute(due)).scalars()):
        result = await session.execute(
            update(ErpPosting)
            .where(ErpPosting.id == row_id, _due(now))
            .values(state=POSTING, locked_until=now + lease, claim_token=token)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            claimed.append(row_id)
    return claimed


class LeaseLost(Exception):
    """Another drainer took the row over (our lease ran out): stop without touching it."""


# ------------------------------------------------------------------------------------------------ drain


async def drain(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    connector: ApiConnector,
    *,
    now: datetime | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    limit: int | None = None,
) -> dict[str, int]:
    """One pass: queue what is due, claim a batch, post each. Counts: queued, posted, retry, failed, lost,
    claimed."""
    clock = clock or (lambda: datetime.now(UTC))
    now = now or clock()
    counts = {"queued": 0, "posted": 0, "retry": 0, "failed": 0, "lost": 0}
    async with sessionmaker() as s, s.begin():
        counts["queued"] = await enqueue_due(s, settings, connector.system, now)
    token = str(uuid.uuid4())
    lease = timedelta(seconds=settings.erp.lease_s)
    async with sessionmaker() as s, s.begin():
        ids = await _claim(s, now, limit or settings.erp.drain_batch, token, lease)
    for posting_id in ids:
        outcome = await _process(sessionmaker, settings, connector, posting_id, token, now, clock, sleep)
        counts[outcome] += 1
    counts["claimed"] = len(ids)
    return counts


async def drain_backlog(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, *,
    now: datetime | None = None, max_passes: int = 20,
) -> dict[str, int]:  # fmt: skip
    """Drain passes while full batches keep coming (a backlog after an outage), at most ``max_passes``."""
    totals: dict[str, int] = {}
    for _ in range(max_passes):
        counts = await drain(sessionmaker, settings, connector, now=now)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        if counts["claimed"] < settings.erp.drain_batch:
            break
    return totals


@dataclass
class _Attempt:
    posting_id: int
    token: str
    number: int
    started: datetime
    doc: PostingDoc


async def _process(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, posting_id: int,
    token: str, now: datetime, clock: Clock, sleep: Callable[[float], Awaitable[None]],
) -> str:  # fmt: skip
    erp = settings.erp
    lease = timedelta(seconds=erp.lease_s)
    async with sm() as s:
        row = await s.get(ErpPosting, posting_id)
        assert row is not None
        at = _Attempt(posting_id, token, row.attempts + 1, clock(), PostingDoc.from_json(row.payload))
        progress: dict[str, Any] = dict(row.progress or {})

    async def save(update_: dict[str, Any]) -> None:
        progress.update(update_)
        async with sm() as s, s.begin():
            result = await s.execute(
                update(ErpPosting)
                .where(
                    ErpPosting.id == posting_id, ErpPosting.claim_token == token, ErpPosting.state == POSTING
                )
                .values(progress=dict(progress), locked_until=clock() + lease)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost

    errors: list[str] = []
    for step in range(erp.step_retries + 1):
        try:
            await save({})  # still ours? (and a fresh lease) before the ERP is touched
            posted = await connector.post(at.doc, progress, save)
        except LeaseLost:
            log.info("posting %s: lease lost to another drainer", at.doc.key)
            return "lost"
        except ErpRejected as exc:
            return await _fail(sm, settings, connector, at, str(exc), clock, progress)
        except ErpError as exc:
            errors.append(str(exc))
            log.info("posting %s: %s (step %d)", at.doc.key, exc, step + 1)
        except Exception as exc:  # a bug or an answer nobody foresaw: keep the row, say what happened
            log.exception("posting %s failed unexpectedly", at.doc.key)
            errors.append(f"内部错误 / internal error: {type(exc).__name__}: {exc}")
        else:
            return await _posted(sm, settings, connector, at, posted, clock, progress)
        if step < erp.step_retries:
            await sleep(erp.retry_backoff_s * 2**step)
    return await _later(sm, settings, connector, at, errors[-1], now, clock, progress)


def backoff(settings: Settings, attempts: int) -> timedelta:
    s = settings.erp.backoff_base_s * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(s, settings.erp.backoff_max_s))


async def _owned(s: AsyncSession, at: _Attempt) -> ErpPosting | None:
    row = await s.get(ErpPosting, at.posting_id, with_for_update=s.get_bind().dialect.name == "postgresql")
    if row is None or row.claim_token != at.token or row.state != POSTING:
        return None
    return row


def _release(
    s: AsyncSession, row: ErpPosting, at: _Attempt, state: str, finished: datetime, progress: dict[str, Any], *,
    doc_no: str | None = None, error: str | None = None,
) -> None:  # fmt: skip
    """The attempt is over: the row gets its new state, what was learnt and no lease, and the attempt its row."""
    row.state, row.attempts, row.last_error = state, at.number, error
    row.progress, row.locked_until, row.claim_token = dict(progress), None, None
    s.add(ErpPostingAttempt(posting_id=at.posting_id, attempt=at.number, started_at=at.started,
                            finished_at=finished, outcome="retry" if state == PENDING else state,
                            erp_doc_no=doc_no, error=error))  # fmt: skip


async def _transition(
    s: AsyncSession, at: _Attempt, event: AdjustmentEvent, anyway: str
) -> tuple[Adjustment, str]:
    """The adjustment moved on by ``event``, and its state before. One whose state does not allow it (changed
    meanwhile) keeps its state, with ``anyway`` in the log."""
    adj = await s.get(Adjustment, at.doc.adjustment_id)
    assert adj is not None
    before = adj.state
    try:
        adj.state = ADJUSTMENT.transition(AdjustmentState(before), event).value
    except (IllegalTransition, ValueError):
        log.warning("adjustment %s is %s; %s", adj.id, before, anyway)
    return adj, before


async def _posted(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, at: _Attempt,
    posted: Posted, clock: Clock, progress: dict[str, Any],
) -> str:  # fmt: skip
    t = clock()
    async with sm() as s, s.begin():
        row = await _owned(s, at)
        if row is None:
            return "lost"
        _release(s, row, at, POSTED, t, progress, doc_no=posted.doc_no)
        row.posted_at, row.erp_doc_no, row.erp_doc_id = t, posted.doc_no, posted.doc_id
        row.erp_refs = sorted({posted.doc_no, *posted.refs})
        adj, before = await _transition(
            s, at, AdjustmentEvent.POSTED, f"posted to {connector.system} as {posted.doc_no} anyway"
        )
        adj.erp_doc_no, adj.error = posted.doc_no, None
        audit.record(s, "adjustment", adj.id, AdjustmentEvent.POSTED.value, at=t, from_state=before,
                     to_state=adj.state, erp=connector.system, doc_no=posted.doc_no, doc_id=posted.doc_id,
                     key=at.doc.key, attempt=at.number)  # fmt: skip
    return "posted"


async def _later(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, at: _Attempt, error: str,
    now: datetime, clock: Clock, progress: dict[str, Any],
) -> str:  # fmt: skip
    if at.number >= settings.erp.max_attempts:
        message = f"{at.number} 次尝试都没有成功，最后一次：{error} / gave up after {at.number} attempts; last: {error}"
        return await _fail(sm, settings, connector, at, message, clock, progress)
    t = clock()
    async with sm() as s, s.begin():
        row = await _owned(s, at)
        if row is None:
            return "lost"
        _release(s, row, at, PENDING, t, progress, error=error)
        row.next_attempt_at = now + backoff(settings, at.number)
    return "retry"


async def _fail(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, at: _Attempt, error: str,
    clock: Clock, progress: dict[str, Any],
) -> str:  # fmt: skip
    t = clock()
    async with sm() as s, s.begin():
        row = await _owned(s, at)
        if row is None:
            return "lost"
        _release(s, row, at, FAILED, t, progress, error=error)
        adj, before = await _transition(s, at, AdjustmentEvent.FAILED, f"its posting failed: {error}")
        adj.error = error[:4000]
        notified = await notify_finance(s, settings, connector, at.doc, error, at.number, t)
        audit.record(s, "adjustment", adj.id, AdjustmentEvent.FAILED.value, at=t, from_state=before,
                     to_state=adj.state, erp=connector.system, key=at.doc.key, error=error[:1000],
                     attempt=at.number, notified=notified)  # fmt: skip
        if not notified:
            log.warning("posting %s failed and no finance user could be told: %s", at.doc.key, error)
    return "failed"


def failure_text(connector_label: str, doc: PostingDoc, error: str, lang: str) -> str:
    lines = len(doc.lines)
    if lang == "en":
        return (
            f"⚠️ Adjustment {doc.key} ({doc.kind.value}, warehouse {doc.warehouse}, {lines} line(s), value "
            f"{doc.value:,.2f}) could not be posted to {connector_label}: {error}\n"
            f"Fix it in the ERP (or here), then run: pandian erp post --retry {doc.adjustment_id}"
        )
    return (
        f"⚠️ 调整单 {doc.key}（{KIND_ZH[doc.kind]}，仓库 {doc.warehouse}，{lines} 行，金额 {doc.value:,.2f}）"
        f"回写{connector_label}失败：{error}\n处理后执行：pandian erp post --retry {doc.adjustment_id}"
    )


async def notify_finance(
    s: AsyncSession, settings: Settings, connector: ApiConnector, doc: PostingDoc, error: str, attempt: int,
    now: datetime,
) -> int:
    """Tell every active finance user, through the outbox, in this transaction. Returns how many were queued."""
    from bot.notify import notify

    users = [
        u for u in (await s.execute(select(User).where(User.active.is_(True)))).scalars()
        if Role.FINANCE.value in (u.roles or [])
    ]  # fmt: skip
    n = 0
    for user in users:
        locale = user.locale or settings.locale
        lang = "en" if locale.lower().startswith("en") else "zh"
        body = {"text": failure_text(connector.label, doc, error, lang)}
        key = f"erp-failed:{doc.key}:{attempt}:{user.id}"
        if await notify(s, settings, user, key=key, kind="text", body=body, subject=f"erp:{doc.key}",
                        now=now):
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ retry


async def retry(
    session: AsyncSession, settings: Settings, adjustment_ids: Sequence[int] | None, *, now: datetime,
    actor_id: int | None = None,
) -> list[int]:  # fmt: skip
    """Put failed postings (these, or all) back in the queue, due now. Returns the adjustment ids."""
    q = select(ErpPosting).where(ErpPosting.state == FAILED).order_by(ErpPosting.id)
    if adjustment_ids is not None:
        q = q.where(ErpPosting.adjustment_id.in_(adjustment_ids))
    done = []
    for row in (await session.execute(q)).scalars():
        adj = await session.get(Adjustment, row.adjustment_id)
        assert adj is not None
        before = adj.state
        if before == AdjustmentState.FAILED.value:
            adj.state = ADJUSTMENT.transition(AdjustmentState.FAILED, AdjustmentEvent.RETRIED).value
            adj.error = None
        row.state, row.attempts, row.next_attempt_at = PENDING, 0, now
        row.claim_token, row.locked_until = None, None
        audit.record(session, "adjustment", adj.id, AdjustmentEvent.RETRIED.value, actor_id=actor_id, at=now,
                     from_state=before, to_state=adj.state, key=row.doc_key, last_error=row.last_error)  # fmt: skip
        done.append(adj.id)
    await session.flush()
    return done


async def queue_summary(session: AsyncSession) -> dict[str, int]:
    """Postings per state."""
    from sqlalchemy import func

    rows = await session.execute(select(ErpPosting.state, func.count()).group_by(ErpPosting.state))
    return {state: int(n) for state, n in rows.all()}
