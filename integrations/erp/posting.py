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
3. **Post.** The connector works on the ERP's own document id once it has one (``progress``, saved before the
   next step; the ERP's id and number also go on the row at once): a numbering rule that replaces our bill
   number changes nothing. A write is marked sent before it goes out; when its answer does not come (timeout,
   lost answer, 5xx, unreadable answer) the next try resolves it on the ERP's side, by our bill number in a
   field the ERP keeps (and the ERP's idempotency key where it has one), and writes again only when absence is
   proven: the lookup, made ``erp.settle_s`` after the write, does not find it but does find an earlier
   document of ours (the witness). Until then the row waits. Timeouts, 5xx and unreadable answers are retried
   at once a few times (``erp.step_retries``), then the row waits with exponential back-off
   (``erp.backoff_base_s`` … ``erp.backoff_max_s``). Expired sessions are renewed by the connector, which
   repeats the call.
4. **Outcome.** Posted: the adjustment becomes ``posted`` with the ERP's own document number (audit trail). The
   ERP refused (validation error, closed period), or ``erp.max_attempts`` attempts failed: the adjustment
   becomes ``failed`` with the ERP's message, and every active finance user is told in chat (``bot.notify``, in
   the same transaction). Whether the ERP holds the document cannot be proven (several documents carry our
   number, the one we saved is gone, the lookup cannot be trusted, or attempts ran out with a write's outcome
   unknown): the row is ``held`` with the reason, the adjustment ``failed``, finance told; nothing more is
   written until a person looks. ``retry`` puts failed and held ones back in the queue (a held one is looked up
   again); ``confirm_absent`` is a person saying the ERP does not hold it. Every attempt is kept in
   ``erp_posting_attempt``. Nothing is dropped without a row saying why.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
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
from integrations.erp.base import (
    ApiConnector,
    DocLine,
    ErpError,
    ErpHeld,
    ErpInDoubt,
    ErpRejected,
    Journal,
    Posted,
    PostingDoc,
    Witness,
)

log = logging.getLogger("pandian.erp.posting")

PENDING, POSTING, POSTED, FAILED, HELD = "pending", "posting", "posted", "failed", "held"
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
    claimed (and held, when some were). The time comes in: ``now``, or a ``clock`` (which also stamps each
    step and renews the lease); given only ``now``, time stands still at it during the pass."""
    if clock is None:
        if now is None:
            raise TypeError("drain needs now or a clock")
        clock = partial(_fixed, now)
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
        counts[outcome] = counts.get(outcome, 0) + 1
    counts["claimed"] = len(ids)
    return counts


def _fixed(now: datetime) -> datetime:
    return now


async def drain_backlog(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, *,
    now: datetime | None = None, clock: Clock | None = None, max_passes: int = 20,
) -> dict[str, int]:  # fmt: skip
    """Drain passes while full batches keep coming (a backlog after an outage), at most ``max_passes``."""
    totals: dict[str, int] = {}
    for _ in range(max_passes):
        counts = await drain(sessionmaker, settings, connector, now=now, clock=clock)
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


async def _witness(s: AsyncSession, system: str, doc: PostingDoc) -> Witness | None:
    """The latest posting of this ERP and kind: a lookup that cannot find it proves nothing about another one."""
    rows = await s.execute(
        select(ErpPosting.doc_key, ErpPosting.erp_doc_id, ErpPosting.erp_doc_no, ErpPosting.progress)
        .join(Adjustment, Adjustment.id == ErpPosting.adjustment_id)
        .where(ErpPosting.system == system, ErpPosting.state == POSTED, ErpPosting.erp_doc_id.is_not(None),
               Adjustment.kind == doc.kind, ErpPosting.adjustment_id != doc.adjustment_id)
        .order_by(ErpPosting.posted_at.desc(), ErpPosting.id.desc())
        .limit(1)
    )  # fmt: skip
    for key, doc_id, doc_no, progress in rows:
        kept = progress.get("key_kept") if isinstance(progress, dict) else None
        return Witness(key, str(doc_id), doc_no, kept if isinstance(kept, bool) else None)
    return None


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
        witness = await _witness(s, connector.system, at.doc)

    async def save(facts: dict[str, Any], *, doc_id: str | None = None, doc_no: str | None = None) -> None:
        """What was learnt, on the row before the next step (and the lease renewed); the ERP's id and number
        also on the row's own columns, in the same transaction."""
        for k, v in facts.items():
            if v is None:
                progress.pop(k, None)
            else:
                progress[k] = v
        values: dict[str, Any] = {"progress": dict(progress), "locked_until": clock() + lease}
        if doc_id is not None:
            values["erp_doc_id"] = doc_id
        if doc_no is not None:
            values["erp_doc_no"] = doc_no
        async with sm() as s, s.begin():
            result = await s.execute(
                update(ErpPosting)
                .where(
                    ErpPosting.id == posting_id, ErpPosting.claim_token == token, ErpPosting.state == POSTING
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost

    journal = Journal(progress, save, clock, timedelta(seconds=erp.settle_s), witness)
    errors: list[str] = []
    retry_at: datetime | None = None
    for step in range(erp.step_retries + 1):
        try:
            await save({})  # still ours? (and a fresh lease) before the ERP is touched
            posted = await connector.post(at.doc, journal)
        except LeaseLost:
            log.info("posting %s: lease lost to another drainer", at.doc.key)
            return "lost"
        except ErpHeld as exc:
            return await _hold(sm, settings, connector, at, str(exc), clock, progress)
        except ErpRejected as exc:
            return await _fail(sm, settings, connector, at, str(exc), clock, progress)
        except ErpInDoubt as exc:  # trying again at once cannot help: the ERP may still be at it
            errors.append(str(exc))
            retry_at = exc.retry_at
            log.info("posting %s: %s", at.doc.key, exc)
            break
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
    return await _later(sm, settings, connector, at, errors[-1], now, clock, progress, retry_at=retry_at)


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
    now: datetime, clock: Clock, progress: dict[str, Any], *, retry_at: datetime | None = None,
) -> str:  # fmt: skip
    if at.number >= settings.erp.max_attempts:
        message = f"{at.number} 次尝试都没有成功，最后一次：{error} / gave up after {at.number} attempts; last: {error}"
        pending = progress.get("pending")
        if isinstance(pending, dict):  # a write whose outcome nobody knows: the ERP may hold the document
            return await _hold(sm, settings, connector, at, f"{unknown_write_text(pending)}\n{message}", clock,
                               progress)  # fmt: skip
        return await _fail(sm, settings, connector, at, message, clock, progress)
    t = clock()
    async with sm() as s, s.begin():
        row = await _owned(s, at)
        if row is None:
            return "lost"
        _release(s, row, at, PENDING, t, progress, error=error)
        row.next_attempt_at = max(now + backoff(settings, at.number), retry_at or now)
    return "retry"


def unknown_write_text(pending: dict[str, Any]) -> str:
    return (f"{pending.get('sent_at', '')} 发出的{pending.get('step', '')}没有收到回答，ERP 里是否已有这张单据未知 / "
            f"the answer to the {pending.get('step', '')} sent at {pending.get('sent_at', '')} never came: whether the "
            "ERP holds the document is unknown")  # fmt: skip


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
        notified = await notify_finance(s, settings, connector, at.doc, error, at.number, now=t)
        audit.record(s, "adjustment", adj.id, AdjustmentEvent.FAILED.value, at=t, from_state=before,
                     to_state=adj.state, erp=connector.system, key=at.doc.key, error=error[:1000],
                     attempt=at.number, notified=notified)  # fmt: skip
        if not notified:
            log.warning("posting %s failed and no finance user could be told: %s", at.doc.key, error)
    return "failed"


async def _hold(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, at: _Attempt, reason: str,
    clock: Clock, progress: dict[str, Any],
) -> str:  # fmt: skip
    """Held for a person: the posting row ``held`` with the reason, the adjustment failed (it needs a person,
    like a refusal), finance told. Nothing more is written to the ERP until someone has looked."""
    t = clock()
    async with sm() as s, s.begin():
        row = await _owned(s, at)
        if row is None:
            return "lost"
        _release(s, row, at, HELD, t, progress, doc_no=row.erp_doc_no, error=reason)
        adj, before = await _transition(s, at, AdjustmentEvent.FAILED, f"its posting is held: {reason}")
        adj.error = reason[:4000]
        notified = await notify_finance(s, settings, connector, at.doc, reason, at.number, now=t, held=True)
        audit.record(s, "adjustment", adj.id, "held", at=t, from_state=before, to_state=adj.state,
                     erp=connector.system, key=at.doc.key, error=reason[:1000], attempt=at.number,
                     erp_doc_no=row.erp_doc_no, notified=notified)  # fmt: skip
        if not notified:
            log.warning("posting %s is held and no finance user could be told: %s", at.doc.key, reason)
    log.warning("posting %s held for a person: %s", at.doc.key, reason)
    return "held"


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


def held_text(connector_label: str, doc: PostingDoc, reason: str, lang: str) -> str:
    lines = len(doc.lines)
    if lang == "en":
        return (
            f"⏸ Adjustment {doc.key} ({doc.kind.value}, warehouse {doc.warehouse}, {lines} line(s), value "
            f"{doc.value:,.2f}) is held: pandian cannot tell whether {connector_label} holds it, so it writes "
            f"nothing more on a guess. {reason}\n"
            f"Look for our number {doc.key} in {connector_label} (in the bill's note). Exactly one bill: run "
            f"pandian erp post --retry {doc.adjustment_id} (pandian carries on with it). None: run pandian erp post "
            f"--confirm-absent {doc.adjustment_id} --as YOUR_EMPLOYEE_NO, and pandian posts it once. Several: delete "
            "the extra ones first, then --retry."
        )
    return (
        f"⏸ 调整单 {doc.key}（{KIND_ZH[doc.kind]}，仓库 {doc.warehouse}，{lines} 行，金额 {doc.value:,.2f}）已暂停回写"
        f"{connector_label}：无法确认{connector_label}里是否已有这张单据，为避免重复过账不再自动写入。{reason}\n"
        f"请在{connector_label}里按我方单号 {doc.key}（单据备注）查找：只有一张时执行 pandian erp post --retry "
        f"{doc.adjustment_id}（继续处理那一张）；没有时执行 pandian erp post --confirm-absent {doc.adjustment_id} --as 工号，"
        "由 pandian 回写一次；有多张时先删除多余的，再 --retry。"
    )


async def notify_finance(
    s: AsyncSession, settings: Settings, connector: ApiConnector, doc: PostingDoc, error: str, attempt: int, *,
    now: datetime, held: bool = False,
) -> int:  # fmt: skip
    """Tell every active finance user, through the outbox, in this transaction. Returns how many were queued."""
    from bot.notify import notify

    users = [
        u for u in (await s.execute(select(User).where(User.active.is_(True)))).scalars()
        if Role.FINANCE.value in (u.roles or [])
    ]  # fmt: skip
    n = 0
    text_of = held_text if held else failure_text
    for user in users:
        locale = user.locale or settings.locale
        lang = "en" if locale.lower().startswith("en") else "zh"
        body = {"text": text_of(connector.label, doc, error, lang)}
        key = f"erp-{'held' if held else 'failed'}:{doc.key}:{attempt}:{now.isoformat()}:{user.id}"
        if await notify(
            s, settings, user, key=key, kind="text", body=body, subject=f"erp:{doc.key}", now=now
        ):
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ retry


async def retry(
    session: AsyncSession, settings: Settings, adjustment_ids: Sequence[int] | None, *, now: datetime,
    actor_id: int | None = None,
) -> list[int]:  # fmt: skip
    """Put failed and held postings (these, or all) back in the queue, due now. Returns the adjustment ids.

    What earlier attempts learnt stays: a held one is looked up again (after a person deleted the extra bills,
    or wrote our number into the right one's note), never written on a guess; see ``confirm_absent``."""
    q = select(ErpPosting).where(ErpPosting.state.in_([FAILED, HELD])).order_by(ErpPosting.id)
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


async def confirm_absent(
    session: AsyncSession, settings: Settings, adjustment_ids: Sequence[int], *, now: datetime,
    actor_id: int | None = None,
) -> list[int]:  # fmt: skip
    """A person looked in the ERP and the document of these held postings is not there: forget the write whose
    answer was lost (and the ERP document it was about), and queue them, so each is written once more (that
    person's decision, recorded). Returns the adjustment ids."""
    q = select(ErpPosting).where(ErpPosting.state == HELD, ErpPosting.adjustment_id.in_(adjustment_ids))
    done = []
    for row in (await session.execute(q.order_by(ErpPosting.id))).scalars():
        progress = dict(row.progress or {})
        forgotten = {k: progress.pop(k) for k in ("pending", "id", "number", "status", "parts", "document",
                                                   "year", "material_document") if k in progress}  # fmt: skip
        progress["generation"] = int(progress.get("generation") or 0) + 1  # fresh idempotency keys
        row.progress, row.erp_doc_id, row.erp_doc_no = progress, None, None
        done.extend(await retry(session, settings, [row.adjustment_id], now=now, actor_id=actor_id))
        audit.record(session, "adjustment", row.adjustment_id, "confirmed_absent", actor_id=actor_id, at=now,
                     key=row.doc_key, forgotten=forgotten)  # fmt: skip
    await session.flush()
    return done


async def queue_summary(session: AsyncSession) -> dict[str, int]:
    """Postings per state."""
    from sqlalchemy import func

    rows = await session.execute(select(ErpPosting.state, func.count()).group_by(ErpPosting.state))
    return {state: int(n) for state, n in rows.all()}
