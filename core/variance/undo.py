"""Undo a counter's last count (撤销), while nothing downstream of it has happened. Never commits.

A count sets things going: the task closes and a variance is created; then it matches (closed), or it is
within tolerance and adjusted at once (an adjustment document, the book and the ledger), or a blind recount
goes to someone else, or it waits for a supervisor's review. Undo takes the count back only while all of
that can be taken back without undoing anything another person did, or anything that left pandian:

- allowed: the variance matched; or was adjusted automatically and that adjustment still waits for
  write-back (not exported, not posted, not merged into a transfer, the book not re-imported since); or its
  recount is assigned but nobody has counted it (it is cancelled); or it waits for a review nobody has
  submitted; or the count was a partial count of a task still being counted.
- refused, saying why: the recount has been counted; a review or an approval step exists; the adjustment
  was exported, posted, failed or merged; the count was itself a recount (its result decided the variance);
  the task was cancelled; another open task exists for the same item and location; the book was
  re-imported after the adjustment; the last count is from before ``since`` or was undone already.

What it does, each step audited:

- the entry stays in history, void: ``superseded_by_id`` points at the entry itself (the model has no
  "voided" column; an entry superseded by itself is never anyone's current count, and no later count can
  supersede it again). Its ``dedup_key`` stays, so a platform retry of the original message records nothing;
- the task reopens (done → open, or in progress when other partial counts remain). The task state table has
  no "reopen" event, so this one change happens here, audited as ``reopened``;
- the variance row is deleted after its full content is written to the audit trail (``Variance.task_id`` is
  unique: the next count of the task needs the place);
- a pending automatic adjustment is deleted with its ledger line, and the book moves back;
- an unstarted recount is cancelled (the caller tells its counter);
- the item-location's last count, last miss and turnover are recomputed from the history that remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.enums import OPEN_STATUSES, AdjustmentKind, MovementType, TaskReason, TaskStatus
from core.models import (
    Adjustment,
    AdjustmentLine,
    ApprovalStep,
    CountEntry,
    CountTask,
    Item,
    ItemLocation,
    Location,
    Movement,
    User,
    Variance,
)
from core.variance import workflow
from core.variance.service import WorkflowError
from core.variance.workflow import ADJUSTMENT, VARIANCE, AdjustmentState, VarianceState

# where a variance may be while its count can still be taken back (the others need someone's decision undone)
UNDOABLE = frozenset(
    {
        VarianceState.AUTO_ACCEPTED,  # matched (closed, nothing adjusted)
        VarianceState.ADJUSTED,  # adjusted automatically: checked further against its adjustment
        VarianceState.OPEN,
        VarianceState.RECOUNT_PENDING,  # checked further: nobody has counted the recount
        VarianceState.IN_REVIEW,  # no review submitted (that moves it on)
    }
)


class UndoBlocked(WorkflowError):
    """Undo refused; ``zh``/``en`` say what blocks it."""


@dataclass
class Undone:
    entry: CountEntry  # the voided count, kept
    task: CountTask  # reopened
    item: Item
    location: Location
    variance_id: int | None = None  # deleted (its content is in the audit trail)
    variance_state: str | None = None
    cancelled_recounts: list[tuple[CountTask, User | None]] = field(default_factory=list)
    adjustment_ids: list[int] = field(default_factory=list)  # deleted, the book moved back


def is_voided(entry: CountEntry) -> bool:
    return entry.superseded_by_id is not None and entry.superseded_by_id == entry.id


async def undo_last_count(
    session: AsyncSession, *, counter_id: int, since: datetime | None = None, now: datetime
) -> Undone:
    """Take back ``counter_id``'s most recent count (counted at or after ``since``), or raise UndoBlocked."""
    entry = (
        await session.execute(
            select(CountEntry)
            .where(CountEntry.counter_id == counter_id)
            .order_by(CountEntry.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if entry is None or (since is not None and entry.counted_at < since):
        raise UndoBlocked(
            "没有可以撤销的盘点：只能撤销今天的最后一条", "nothing to undo: only today's last count"
        )
    if is_voided(entry):
        raise UndoBlocked(
            "最后一条盘点已经撤销过了；只能撤销最后一条",
            "the last count was undone already; only the last one can be",
        )
    task = (
        await session.execute(select(CountTask).where(CountTask.id == entry.task_id).with_for_update())
    ).scalar_one()
    item, loc = await session.get(Item, task.item_id), await session.get(Location, task.location_id)
    assert item is not None and loc is not None
    what = f"库位 {loc.code} · {item.name}"
    done = Undone(entry, task, item, loc)
    if task.status == TaskStatus.CANCELLED:
        raise UndoBlocked(f"{what} 的任务 #{task.id} 已取消，不能撤销", f"task #{task.id} was cancelled")
    if task.status in OPEN_STATUSES:  # a partial count of a task still being counted: nothing downstream
        _void(session, entry, counter_id, now)
        await session.flush()
        if task.status == TaskStatus.IN_PROGRESS and not await _current_entries(session, task.id):
            _task_event(session, task, workflow.TaskEvent.RELEASED, counter_id, now)
        return done
    if task.reason == TaskReason.RECOUNT:
        v = await _variance_of(session, task.parent_task_id)
        state = VARIANCE.state_zh[VarianceState(v.state)] if v else "已处理"
        raise UndoBlocked(
            f"这是一次复盘，结果已用于判定差异{f' #{v.id}' if v else ''}（{state}），不能撤销；如有错误请联系主管",
            "this was a recount and its result decided the variance; ask your supervisor",
        )
    other = (
        await session.execute(
            select(CountTask.id).where(
                CountTask.item_location_id == task.item_location_id,
                CountTask.id != task.id,
                CountTask.status.in_(OPEN_STATUSES),
                CountTask.reason != TaskReason.RECOUNT,
            )
        )
    ).scalar()
    if other is not None:
        raise UndoBlocked(
            f"{what} 已有新的盘点任务 #{other}，不能撤销；请直接盘点那一项",
            f"another open task #{other} exists for this item and location",
        )
    # lock in the order record_count takes them: the recount tasks before the variance
    recounts = list(
        (
            await session.execute(
                select(CountTask)
                .where(CountTask.parent_task_id == task.id)
                .order_by(CountTask.id)
                .with_for_update()
            )
        ).scalars()
    )
    v = await _variance_of(session, task.id, lock=True)
    il = (
        await session.execute(
            select(ItemLocation).where(ItemLocation.id == task.item_location_id).with_for_update()
        )
    ).scalar_one()
    lines: list[tuple[AdjustmentLine, Adjustment]] = []
    if v is not None:
        await _check_variance(session, v, recounts, what)
        lines = await _check_adjustment(session, v, il)
        done.variance_id, done.variance_state = v.id, v.state

    # nothing blocks: take it all back
    _void(session, entry, counter_id, now, variance_id=v.id if v else None)
    for r in recounts:
        if r.status in OPEN_STATUSES:
            _task_event(session, r, workflow.TaskEvent.CANCELLED, counter_id, now, why="first count undone")
            done.cancelled_recounts.append(
                (r, await session.get(User, r.assignee_id) if r.assignee_id else None)
            )
    if v is not None:
        done.adjustment_ids = await _reverse_adjustment(session, v, il, lines, counter_id, now)
        audit.record(session, "variance", v.id, "voided", actor_id=counter_id, from_state=v.state,
                     to_state="voided", at=now, task_id=task.id, book=v.book_qty, counted=v.counted_qty,
                     qty=v.qty, value=v.value, severity=v.severity, hit=v.hit, count_time=v.count_time,
                     created_at=v.created_at, why="count undone by its counter")  # fmt: skip
        await session.delete(v)
    await session.flush()
    remaining = await _current_entries(session, task.id)
    old = task.status
    task.status = TaskStatus.IN_PROGRESS if remaining else TaskStatus.OPEN
    task.closed_at = None
    audit.record(session, "task", task.id, "reopened", actor_id=counter_id, from_state=old.value,
                 to_state=task.status.value, at=now, variance_id=done.variance_id, entry=entry.id)  # fmt: skip
    await _recompute_item_location(session, il, item)
    await session.flush()
    return done


# ------------------------------------------------------------------------------------------------ checks


async def _variance_of(session: AsyncSession, task_id: int | None, *, lock: bool = False) -> Variance | None:
    if task_id is None:
        return None
    stmt = select(Variance).where(Variance.task_id == task_id)
    return (await session.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()


async def _check_variance(session: AsyncSession, v: Variance, recounts: list[CountTask], what: str) -> None:
    state = VarianceState(v.state)
    steps = await session.scalar(select(func.count()).where(ApprovalStep.variance_id == v.id))
    if state not in UNDOABLE or steps or v.reviewer_id is not None:
        raise UndoBlocked(
            f"{what} 的差异 #{v.id} 已有人处理（状态：{VARIANCE.state_zh[state]}），不能撤销；如有错误请联系主管",
            f"variance #{v.id} is {state.value}: someone has acted on it; ask your supervisor",
        )
    for r in recounts:
        counted = (
            await session.execute(
                select(User.name).join(CountEntry, CountEntry.counter_id == User.id)
                .where(CountEntry.task_id == r.id).limit(1)
            )
        ).scalar()  # fmt: skip
        if counted is not None:
            raise UndoBlocked(
                f"{what} 的复盘（任务 #{r.id}）已由 {counted} 盘点，不能撤销；如有错误请联系主管",
                f"the recount #{r.id} has been counted; ask your supervisor",
            )


async def _check_adjustment(
    session: AsyncSession, v: Variance, il: ItemLocation
) -> list[tuple[AdjustmentLine, Adjustment]]:
    """The automatic adjustment of ``v`` when it can be taken back whole, else UndoBlocked."""
    rows = [
        (line, doc)
        for line, doc in (
            await session.execute(
                select(AdjustmentLine, Adjustment)
                .join(Adjustment, Adjustment.id == AdjustmentLine.adjustment_id)
                .where(AdjustmentLine.variance_id == v.id)
                .with_for_update()
            )
        ).all()
    ]
    if VarianceState(v.state) is not VarianceState.ADJUSTED and not rows:
        return []
    for _, doc in rows:
        doc_state = AdjustmentState(doc.state)
        if doc_state is not AdjustmentState.PENDING_WRITE_BACK:
            raise UndoBlocked(
                f"库存调整单 #{doc.id} {ADJUSTMENT.state_zh[doc_state]}，不能撤销；请联系主管冲销",
                f"adjustment #{doc.id} is {doc_state.value}; ask your supervisor to reverse it",
            )
        if doc.kind == AdjustmentKind.TRANSFER:
            raise UndoBlocked(
                f"这笔差异已与其他库位合并为移库单 #{doc.id}，不能撤销；请联系主管",
                f"this variance was merged into transfer #{doc.id}",
            )
        others = await session.scalar(
            select(func.count()).where(
                AdjustmentLine.adjustment_id == doc.id, AdjustmentLine.variance_id != v.id
            )
        )
        if others:
            raise UndoBlocked(
                f"库存调整单 #{doc.id} 还包含其他差异，不能撤销；请联系主管",
                f"adjustment #{doc.id} holds other variances too",
            )
    if sum((Decimal(line.qty) for line, _ in rows), Decimal(0)) != Decimal(v.qty):
        # a later count elsewhere paired with this loss or gain and turned part of it into a transfer
        raise UndoBlocked(
            "这笔调整已有部分被其他库位的差异合并为移库，不能撤销；请联系主管",
            "part of this adjustment was merged into a transfer",
        )
    if il.book_as_of is not None and any(doc.created_at < il.book_as_of for _, doc in rows):
        raise UndoBlocked(
            f"账面在调整之后已重新导入（{il.book_as_of:%Y-%m-%d %H:%M}），不能自动撤销；请联系主管",
            "the book was re-imported after the adjustment",
        )
    return rows


# --------------------------------------------------------------------------------------------- changes


def _void(
    session: AsyncSession, entry: CountEntry, actor_id: int, now: datetime, *, variance_id: int | None = None
) -> None:
    entry.superseded_by_id = entry.id
    audit.record(session, "count", entry.id, "voided", actor_id=actor_id, variance_id=variance_id, at=now,
                 task_id=entry.task_id, qty=entry.qty, outcome=entry.outcome.value, partial=entry.partial,
                 text=entry.raw_text)  # fmt: skip


def _task_event(
    session: AsyncSession,
    task: CountTask,
    event: workflow.TaskEvent,
    actor_id: int,
    now: datetime,
    why: str | None = None,
) -> None:
    old = TaskStatus(task.status)
    new = workflow.COUNT_TASK.transition(old, event)
    task.status = new
    if new in (TaskStatus.DONE, TaskStatus.CANCELLED):
        task.closed_at = now
    audit.record(session, "task", task.id, event.value, actor_id=actor_id, from_state=old.value,
                 to_state=new.value, at=now, why=why)  # fmt: skip


async def _current_entries(session: AsyncSession, task_id: int) -> int:
    n = await session.scalar(
        select(func.count()).where(CountEntry.task_id == task_id, CountEntry.superseded_by_id.is_(None))
    )
    return int(n or 0)


async def _reverse_adjustment(
    session: AsyncSession,
    v: Variance,
    il: ItemLocation,
    rows: list[tuple[AdjustmentLine, Adjustment]],
    actor_id: int,
    now: datetime,
) -> list[int]:
    if not rows:
        return []
    qty = Decimal(v.qty)
    await session.execute(
        delete(Movement)
        .where(
            Movement.item_location_id == il.id,
            Movement.type == MovementType.ADJUSTMENT,
            Movement.source_doc == f"PD-{v.id}",
        )
        .execution_options(synchronize_session=False)
    )
    il.qty = Decimal(il.qty) - qty
    ids = []
    for line, doc in rows:
        audit.record(session, "adjustment", doc.id, "voided", actor_id=actor_id, variance_id=v.id, at=now,
                     from_state=doc.state, to_state="voided", qty=line.qty, value=line.value,
                     book_moved_back=-qty)  # fmt: skip
        await session.delete(line)
        await session.flush()
        await session.delete(doc)
        ids.append(doc.id)
    return ids


async def _recompute_item_location(session: AsyncSession, il: ItemLocation, item: Item) -> None:
    """Last count, last miss and turnover as the remaining history has them (the undone count reset them)."""
    il.last_counted_at = await session.scalar(
        select(func.max(CountEntry.counted_at))
        .join(CountTask, CountTask.id == CountEntry.task_id)
        .where(
            CountTask.item_location_id == il.id,
            CountTask.status == TaskStatus.DONE,
            CountEntry.superseded_by_id.is_(None),
        )
    )
    il.last_miss_at = await session.scalar(
        select(func.max(Variance.count_time)).where(
            Variance.item_location_id == il.id, Variance.hit.is_(False)
        )
    )
    moved = select(Movement.qty).where(
        Movement.item_location_id == il.id, Movement.type != MovementType.ADJUSTMENT
    )  # pandian's own adjustments never add to the turnover (core.stock)
    if il.last_counted_at is not None:
        moved = moved.where(Movement.occurred_at > il.last_counted_at)
    cost = Decimal(item.unit_cost or 0)
    il.turnover_value = sum(
        (abs(Decimal(q)) * cost for q in (await session.execute(moved)).scalars()), Decimal(0)
    )
