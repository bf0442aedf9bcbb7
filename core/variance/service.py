"""The count-to-adjustment workflow: use cases called by the CLI and the chat bot. Never commits.

record_count → (auto-accept | blind recount by someone else) → review with a reason → approval steps by
severity (segregation of duties, one outcome when two decide at once) → adjustment (book and ledger) →
export. Every state change goes through the transition tables in ``core.variance.workflow`` and leaves an
audit event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, people
from core.config import Settings
from core.enums import (
    OPEN_STATUSES,
    AdjustmentKind,
    ApprovalDecision,
    CountOutcome,
    EntryMethod,
    MovementType,
    Role,
    TaskReason,
    TaskStatus,
)
from core.models import (
    Adjustment,
    AdjustmentLine,
    ApprovalStep,
    AuditEvent,
    CountEntry,
    CountTask,
    Item,
    ItemLocation,
    ItemUnit,
    Location,
    Movement,
    User,
    Variance,
    Warehouse,
)
from core.quantity import QuantityError, UnitSpec, parse_quantity
from core.stock import book_at
from core.variance import rules, workflow
from core.variance.tolerance import Severity, assess, compute_variance
from core.variance.workflow import AdjustmentState, VarianceEvent, VarianceState

WEIGHED_UNITS = {"kg", "千克", "公斤", "克", "g", "吨", "t", "米", "m", "升", "l", "斤"}


class WorkflowError(Exception):
    """A request the workflow refuses, with a message for people in Chinese and English."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.zh, self.en = zh, en


# What a counter is told about a finished count, whatever came of it: counts are blind, so a match, a difference
# within tolerance, a recount, a review and a recount's verdict all read the same (the outcome is for supervisors
# and approvers, on their cards and in the CLI's `show`).
RECORDED_ZH, RECORDED_EN = "已记录", "Recorded"


@dataclass
class CountResult:
    """The outcome of a count. ``message_zh`` / ``message_en`` are for the counter: the same neutral words for
    every outcome (never the book, never whether the count matched it); ``understood`` echoes their own
    quantity as parsed. Whoever may see the outcome reads it from ``variance``."""

    entry: CountEntry
    variance: Variance | None = None
    duplicate: bool = False
    recount_task: CountTask | None = None
    message_zh: str = RECORDED_ZH
    message_en: str = RECORDED_EN
    understood: str | None = None
    events: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ helpers


async def _user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None or not user.active:
        raise WorkflowError("未登记或已停用的用户", "unknown or inactive user")
    return user


async def unit_spec(session: AsyncSession, item: Item) -> UnitSpec:
    packs = dict(
        (
            await session.execute(select(ItemUnit.unit, ItemUnit.factor).where(ItemUnit.item_id == item.id))
        ).all()
    )
    decimals = 3 if item.base_unit.lower() in WEIGHED_UNITS else 0
    return UnitSpec(base_unit=item.base_unit, packs={k: Decimal(v) for k, v in packs.items() if k != item.base_unit},
                    decimals=decimals)  # fmt: skip


def _move_variance(
    v: Variance, event: VarianceEvent, actor_id: int | None, now: datetime, **data: Any
) -> None:
    old = VarianceState(v.state)
    new = workflow.transition(old, event)
    v.state = new.value
    v.version += 1
    audit.record(
        _session_of(v), "variance", v.id, event.value, actor_id=actor_id, from_state=old.value,
        to_state=new.value, at=now, **data,
    )  # fmt: skip


def _session_of(obj: Any) -> AsyncSession:
    from sqlalchemy.orm import object_session

    s = object_session(obj)
    assert s is not None
    return s  # type: ignore[return-value]


async def _counters_of(session: AsyncSession, task_id: int) -> set[int]:
    """Everyone who counted this task or any of its recounts."""
    ids = {task_id}
    ids |= set(
        (await session.execute(select(CountTask.id).where(CountTask.parent_task_id == task_id))).scalars()
    )
    return set(
        (await session.execute(select(CountEntry.counter_id).where(CountEntry.task_id.in_(ids)))).scalars()
    )


async def _fresh_variance_id(session: AsyncSession) -> int:
    """A variance id never used before. SQLite gives a new row the highest id + 1, so the variance of a count
    that was undone (deleted, with a "voided" audit record) would hand its id to the next one; and ids key the
    cards and messages about a variance (``review:<id>``), which would then look already sent. The audit trail
    remembers every id ever created. (PostgreSQL's sequence never reuses one; SQLite's writers take turns, so
    there is no race.)"""
    rows = await session.scalar(select(func.max(Variance.id)))
    audited = await session.scalar(
        select(func.max(AuditEvent.entity_id)).where(AuditEvent.entity == "variance")
    )
    return max(int(rows or 0), int(audited or 0)) + 1


async def _moved_near(session: AsyncSession, il_id: int, at: datetime, minutes: int) -> bool:
    if minutes <= 0:
        return False
    window = timedelta(minutes=minutes)
    n = await session.scalar(
        select(func.count()).where(
            Movement.item_location_id == il_id,
            Movement.occurred_at >= at - window,
            Movement.occurred_at <= at + window,
        )
    )
    return bool(n)


async def _movements_around(
    session: AsyncSession, il_id: int, at: datetime, hours: float
) -> list[rules.Movement]:
    window = timedelta(hours=hours)
    rows = await session.execute(
        select(Movement.qty, Movement.type, Movement.occurred_at).where(
            Movement.item_location_id == il_id,
            Movement.occurred_at >= at - window,
            Movement.occurred_at <= at + window,
        )
    )
    return [rules.Movement(Decimal(q), MovementType(t), o) for q, t, o in rows]


# ----------------------------------------------------------------------------------------------- counting


async def record_count(
    session: AsyncSession,
    settings: Settings,
    *,
    task_id: int,
    counter_id: int,
    text: str | None = None,
    outcome: CountOutcome = CountOutcome.COUNTED,
    partial: bool = False,
    counted_at: datetime,
    method: EntryMethod = EntryMethod.TYPED,
    photos: list[str] | None = None,
    note: str | None = None,
    lot: str | None = None,
    dedup_key: str | None = None,
    now: datetime,
) -> CountResult:
    """Record one count. A repeated ``dedup_key`` (a platform retry) returns the first result unchanged."""
    if dedup_key is not None and (earlier := await _already_recorded(session, dedup_key)) is not None:
        return earlier
    task = (
        await session.execute(select(CountTask).where(CountTask.id == task_id).with_for_update())
    ).scalar_one_or_none()
    if task is None:
        raise WorkflowError(f"没有任务 #{task_id}", f"no task #{task_id}")
    if task.status not in OPEN_STATUSES:
        raise WorkflowError(
            f"任务 #{task_id} 已结束（{task.status}），不能再盘点", f"task #{task_id} is {task.status}"
        )
    counter = await _user(session, counter_id)
    if "counter" not in (counter.roles or []):
        raise WorkflowError(f"{counter.name} 不是盘点员", f"{counter.name} is not a counter")
    if task.reason == TaskReason.RECOUNT and task.parent_task_id is not None:
        earlier_counters = await _counters_of(session, task.parent_task_id) - await _entries_of(
            session, task.id
        )
        if counter_id in earlier_counters:
            raise WorkflowError("复盘必须由另一位盘点员完成", "a recount must be done by a different counter")
    item = await session.get(Item, task.item_id)
    assert item is not None
    understood = None
    if outcome is CountOutcome.COUNTED:
        if text is None:
            raise WorkflowError("请填写数量", "a quantity is required")
        try:
            parsed = parse_quantity(text, await unit_spec(session, item))
        except QuantityError as exc:
            raise WorkflowError(exc.message_zh, exc.message_en) from exc
        qty, understood = parsed.qty, parsed.understood
    elif outcome in (CountOutcome.EMPTY, CountOutcome.NOT_HERE):
        qty = Decimal(0)
    else:
        raise WorkflowError("请用 record_unlisted 登记计划外物料", "use record_unlisted for unlisted finds")
    entry = CountEntry(
        task_id=task.id, counter_id=counter_id, outcome=outcome, qty=qty, lot=lot, partial=partial,
        counted_at=counted_at, recorded_at=now, method=method, raw_text=text, photos=list(photos or []),
        note=note, recount=task.reason == TaskReason.RECOUNT, dedup_key=dedup_key,
    )  # fmt: skip
    session.add(entry)
    await session.flush()
    # a second full count by the same person replaces the first (which stays in history)
    await session.execute(
        update(CountEntry)
        .where(
            CountEntry.task_id == task.id,
            CountEntry.counter_id == counter_id,
            CountEntry.id != entry.id,
            CountEntry.superseded_by_id.is_(None),
            CountEntry.partial.is_(partial),
        )
        .values(superseded_by_id=entry.id)
        .execution_options(synchronize_session=False)
    )
    audit.record(session, "count", entry.id, "counted", actor_id=counter_id, at=now, task_id=task.id,
                 qty=qty, partial=partial, outcome=outcome.value, text=text)  # fmt: skip
    result = CountResult(entry, understood=understood)
    if partial:
        if task.status == TaskStatus.OPEN:
            _task_to(task, workflow.TaskEvent.STARTED, counter_id, now)
        result.message_zh = f"已记录部分数量 {qty}{item.base_unit}；全部数完后请提交合计或完成任务"
        result.message_en = f"Partial count of {qty} {item.base_unit} recorded; when done, submit the total or finish the task"
        return result
    await _complete_task(session, settings, task, item, counter_id, now, result)
    return result


async def _already_recorded(session: AsyncSession, dedup_key: str) -> CountResult | None:
    """The first result of an inbound event delivered again (platforms retry), or None."""
    seen = (
        await session.execute(select(CountEntry).where(CountEntry.dedup_key == dedup_key))
    ).scalar_one_or_none()
    if seen is None:
        return None
    task = await session.get(CountTask, seen.task_id)
    root = (task.parent_task_id or task.id) if task is not None else seen.task_id
    v = (await session.execute(select(Variance).where(Variance.task_id == root))).scalar_one_or_none()
    return CountResult(
        seen,
        v,
        duplicate=True,
        message_zh="这条盘点已记录过 / already recorded",
        message_en="Already recorded",
    )


async def _entries_of(session: AsyncSession, task_id: int) -> set[int]:
    return set(
        (await session.execute(select(CountEntry.counter_id).where(CountEntry.task_id == task_id))).scalars()
    )


async def finish_partial_count(
    session: AsyncSession, settings: Settings, *, task_id: int, actor_id: int, now: datetime
) -> CountResult:
    """Close a task counted in parts: the current partial counts are summed."""
    task = await session.get(CountTask, task_id)
    if task is None or task.status not in OPEN_STATUSES:
        raise WorkflowError(f"任务 #{task_id} 不能完成", f"task #{task_id} cannot be finished")
    entries = (
        (
            await session.execute(
                select(CountEntry).where(CountEntry.task_id == task_id, CountEntry.superseded_by_id.is_(None))
            )
        )
        .scalars()
        .all()
    )
    if not entries:
        raise WorkflowError("还没有任何盘点数量", "nothing has been counted yet")
    item = await session.get(Item, task.item_id)
    assert item is not None
    result = CountResult(entries[-1])
    await _complete_task(session, settings, task, item, actor_id, now, result)
    return result


def _task_to(task: CountTask, event: workflow.TaskEvent, actor_id: int | None, now: datetime) -> None:
    old = TaskStatus(task.status)
    new = workflow.COUNT_TASK.transition(old, event)
    task.status = new
    if new in (TaskStatus.DONE, TaskStatus.CANCELLED):
        task.closed_at = now
    audit.record(_session_of(task), "task", task.id, event.value, actor_id=actor_id, from_state=old.value,
                 to_state=new.value, at=now)  # fmt: skip


async def _counted_total(session: AsyncSession, task_id: int) -> tuple[Decimal, datetime]:
    """The task's counted quantity: the latest full count, else the sum of the current partial counts."""
    entries = (
        (
            await session.execute(
                select(CountEntry)
                .where(CountEntry.task_id == task_id, CountEntry.superseded_by_id.is_(None))
                .order_by(CountEntry.counted_at, CountEntry.id)
            )
        )
        .scalars()
        .all()
    )
    full = [e for e in entries if not e.partial]
    if full:
        return Decimal(full[-1].qty or 0), full[-1].counted_at
    return sum((Decimal(e.qty or 0) for e in entries), Decimal(0)), max(e.counted_at for e in entries)


async def _complete_task(
    session: AsyncSession, settings: Settings, task: CountTask, item: Item, actor_id: int, now: datetime,
    result: CountResult,
) -> None:  # fmt: skip
    counted, at = await _counted_total(session, task.id)
    _task_to(task, workflow.TaskEvent.COMPLETED, actor_id, now)
    if task.reason == TaskReason.RECOUNT and task.parent_task_id is not None:
        await _evaluate_recount(session, settings, task, item, counted, at, actor_id, now, result)
    else:
        await _evaluate_first_count(session, settings, task, item, counted, at, actor_id, now, result)


async def _evaluate_first_count(
    session: AsyncSession, settings: Settings, task: CountTask, item: Item, counted: Decimal, at: datetime,
    actor_id: int, now: datetime, result: CountResult,
) -> None:  # fmt: skip
    il = await session.get(ItemLocation, task.item_location_id)
    assert il is not None
    book = await book_at(session, il.id, at)
    var = compute_variance(book, counted, Decimal(item.unit_cost))
    a = assess(var, task.abc_class, item.sku, settings.tolerance)
    moved = await _moved_near(session, il.id, at, settings.counting.moved_window_minutes)
    state = workflow.initial_state(a.within_tolerance and not moved)
    v = Variance(
        task_id=task.id, item_location_id=il.id, item_id=item.id, location_id=task.location_id,
        warehouse_id=task.warehouse_id, abc_class=task.abc_class, state=state.value, count_time=at,
        book_qty=book, counted_qty=counted, qty=var.qty, pct=var.pct, unit_cost=var.unit_cost, value=var.value,
        severity=a.severity.value if not moved or not a.within_tolerance else Severity.MINOR.value,
        within_tolerance=a.within_tolerance, hit=a.hit, moved_during_count=moved, created_at=now,
    )  # fmt: skip
    if session.get_bind().dialect.name == "sqlite":
        v.id = await _fresh_variance_id(session)
    session.add(v)
    await session.flush()
    audit.record(session, "variance", v.id, "created", actor_id=actor_id, to_state=state.value, at=now,
                 book=book, counted=counted, qty=var.qty, value=var.value, severity=v.severity, moved=moved)  # fmt: skip
    il.last_counted_at = at
    il.turnover_value = Decimal(0)
    if not a.hit:
        il.last_miss_at = at
    result.variance = v
    if state is VarianceState.AUTO_ACCEPTED:
        if var.qty != 0:
            await _adjust(session, settings, v, actor_id, now)
        else:
            v.closed_at = now  # a match: nothing to adjust
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN  # blind: never "matches"
        return
    # out of tolerance, or stock moved while counting: a blind recount by someone else
    if settings.counting.max_recounts > 0:
        result.recount_task = await _open_recount(session, v, task, actor_id, now, settings.tz)
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN  # blind: never "a recount follows"
    else:
        _move_variance(v, VarianceEvent.RECOUNT_WAIVED, actor_id, now)
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN


async def _recounters(
    session: AsyncSession, task: CountTask, exclude: set[int]
) -> tuple[list[User], list[User]]:
    """The other counters, and those of them who may recount ``task``: someone of its warehouse (never a counter
    of another site, however alike the bin codes), else a counter tied to no warehouse."""
    others = await people.holders(session, Role.COUNTER, exclude=exclude)
    where = await people.sites(session, others)
    own = [u for u in others if task.warehouse_id in where[u.id]]
    return others, own or [u for u in others if not where[u.id]]


async def _open_recount(
    session: AsyncSession, v: Variance, task: CountTask, actor_id: int | None, now: datetime, tz: Any = UTC
) -> CountTask | None:
    """A blind recount by a different counter, preferably from the same team."""
    exclude = await _counters_of(session, task.id)
    first = await session.get(User, next(iter(exclude))) if exclude else None
    others, candidates = await _recounters(session, task, exclude)
    if not candidates:
        _move_variance(v, VarianceEvent.RECOUNT_WAIVED, actor_id, now, why="no other counter available",
                       elsewhere=len(others))  # fmt: skip
        return None
    team = first.team_id if first else None
    loads = dict(
        (await session.execute(
            select(CountTask.assignee_id, func.count()).where(CountTask.status.in_(OPEN_STATUSES))
            .group_by(CountTask.assignee_id)
        )).all()
    )  # fmt: skip
    # a counter who is not a supervisor first (a supervisor who recounts may no longer review the line); then the
    # same team; then whoever has the fewest open tasks; then employee number
    chosen = min(
        candidates,
        key=lambda u: (
            Role.SUPERVISOR.value in (u.roles or []),
            u.team_id != team,
            loads.get(u.id, 0),
            u.employee_no,
        ),
    )
    v.recounts += 1
    # keyed by the counted task and its recounts so far, cancelled ones included: an undone count's variance is
    # deleted, and SQLite hands its id to the next one, so a key from the variance id could repeat
    earlier = await session.scalar(
        select(func.count()).where(
            CountTask.parent_task_id == task.id, CountTask.reason == TaskReason.RECOUNT
        )
    )
    recount = CountTask(
        plan_date=now.astimezone(tz).date(), due_date=now.astimezone(tz).date(), warehouse_id=task.warehouse_id,
        location_id=task.location_id,
        item_id=task.item_id, item_location_id=task.item_location_id, abc_class=task.abc_class,
        reason=TaskReason.RECOUNT, priority=1, status=TaskStatus.OPEN, assignee_id=chosen.id,
        est_minutes=float(task.est_minutes), cycle_key=f"recount:{task.id}:{int(earlier or 0) + 1}", parent_task_id=task.id,
        created_at=now,
    )  # fmt: skip
    session.add(recount)
    await session.flush()
    _move_variance(
        v, VarianceEvent.RECOUNT_ASSIGNED, actor_id, now, recount_task=recount.id, assignee=chosen.employee_no
    )
    return recount


async def _evaluate_recount(
    session: AsyncSession, settings: Settings, task: CountTask, item: Item, counted: Decimal, at: datetime,
    actor_id: int, now: datetime, result: CountResult,
) -> None:  # fmt: skip
    v = (await session.execute(select(Variance).where(Variance.task_id == task.parent_task_id))).scalar_one()
    result.variance = v
    book = await book_at(session, v.item_location_id, at)
    vs_book = assess(
        compute_variance(book, counted, Decimal(item.unit_cost)), v.abc_class, item.sku, settings.tolerance
    )
    # the first count, carried to the recount's moment by the movements in between
    moved_between = book - Decimal(v.book_qty)
    first_then = Decimal(v.counted_qty) + moved_between
    vs_first = assess(compute_variance(first_then, counted, Decimal(item.unit_cost)), v.abc_class, item.sku,
                      settings.tolerance)  # fmt: skip
    il = await session.get(ItemLocation, v.item_location_id)
    assert il is not None
    il.last_counted_at = at
    if vs_book.within_tolerance and not vs_first.hit:
        # the recount agrees with the book: the first count was wrong
        _move_variance(v, VarianceEvent.RECOUNT_MATCHED_BOOK, actor_id, now, recount=counted, book=book)
        v.closed_at = now
        for e in (await session.execute(select(CountEntry).where(CountEntry.task_id == v.task_id))).scalars():
            e.overturned = True  # the first counter's quality record
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN  # blind: never "matches the book"
    elif vs_first.hit and Decimal(v.qty) == 0:
        # the first count matched the book as of counting (it went to a recount because stock moved, or a late
        # movement explained its difference since) and the recount agrees: there is nothing to review, approve
        # or adjust
        _close_no_difference(v, actor_id, now, why="recount_agreed", recount=counted, book=book)
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN
    elif vs_first.hit:
        _move_variance(v, VarianceEvent.RECOUNT_CONFIRMED_COUNT, actor_id, now, recount=counted)
        _move_variance(v, VarianceEvent.REVIEW_STARTED, None, now)
        await _suggest(session, settings, v)
        result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN
    else:
        _move_variance(
            v, VarianceEvent.RECOUNT_DISAGREED, actor_id, now, recount=counted, first=v.counted_qty
        )
        if v.recounts < settings.counting.max_recounts:
            parent = await session.get(CountTask, v.task_id)
            assert parent is not None
            result.recount_task = await _open_recount(session, v, parent, actor_id, now, settings.tz)
            result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN
        else:
            result.message_zh, result.message_en = RECORDED_ZH, RECORDED_EN


async def _suggest(session: AsyncSession, settings: Settings, v: Variance) -> None:
    moves = await _movements_around(
        session, v.item_location_id, v.count_time, settings.reasons.suggest_window_hours
    )
    item = await session.get(Item, v.item_id)
    s = rules.suggest_reason(Decimal(v.qty), v.count_time, moves, window=settings.reasons.suggest_window,
                             unit=item.base_unit if item else "个")  # fmt: skip
    if s is not None:
        v.suggested_reason, v.suggestion_text = s.reason_code, s.zh


async def resolve_dispute(
    session: AsyncSession, settings: Settings, *, variance_id: int, supervisor_id: int, count_is_right: bool,
    now: datetime,
) -> Variance:  # fmt: skip
    """The supervisor decides a disputed variance: the count stands (to review) or the book stands (closed)."""
    v = await _variance(session, variance_id)
    sup = await _user(session, supervisor_id)
    if "supervisor" not in (sup.roles or []):
        raise WorkflowError("只有主管可以裁定", "only a supervisor can decide")
    await _check_site(session, v, sup, "裁定", "decide")
    if count_is_right:
        _move_variance(v, VarianceEvent.SUPERVISOR_CONFIRMED_COUNT, supervisor_id, now)
        _move_variance(v, VarianceEvent.REVIEW_STARTED, supervisor_id, now)
        await _suggest(session, settings, v)
    else:
        _move_variance(v, VarianceEvent.SUPERVISOR_CONFIRMED_BOOK, supervisor_id, now)
        v.closed_at = now
    return v


# ------------------------------------------------------------------------------------------------- review


async def _variance(session: AsyncSession, variance_id: int, lock: bool = True) -> Variance:
    stmt = select(Variance).where(Variance.id == variance_id)
    v = (await session.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()
    if v is None:
        raise WorkflowError(f"没有差异 #{variance_id}", f"no variance #{variance_id}")
    return v


def _guard(v: Variance, event: VarianceEvent) -> None:
    try:
        workflow.transition(VarianceState(v.state), event)
    except workflow.IllegalTransition as exc:
        raise WorkflowError(exc.zh, exc.en) from exc


async def review_variance(
    session: AsyncSession, settings: Settings, *, variance_id: int, reviewer_id: int, reason_code: str | None,
    note: str | None = None, now: datetime,
) -> Variance:  # fmt: skip
    """The supervisor's review: a standard reason (and a note when it needs one); opens the approval steps."""
    v = await _variance(session, variance_id)
    _guard(v, VarianceEvent.REVIEW_SUBMITTED)
    reviewer = await _user(session, reviewer_id)
    if "supervisor" not in (reviewer.roles or []):
        raise WorkflowError("只有主管可以审核差异", "only a supervisor can review a variance")
    await _check_site(session, v, reviewer, "审核", "review")
    try:
        reason = rules.validate_reason(reason_code, note, settings.reasons)
    except rules.RuleViolation as exc:
        raise WorkflowError(exc.zh, exc.en) from exc
    v.reason_code, v.reason_note, v.reviewer_id, v.reviewed_at = reason.code, note, reviewer_id, now
    _move_variance(v, VarianceEvent.REVIEW_SUBMITTED, reviewer_id, now, reason=reason.code, note=note)
    # a variance sent back to a recount and reviewed again starts a new round of steps after the old ones
    # (which stay as its history)
    base = int(
        await session.scalar(select(func.max(ApprovalStep.seq)).where(ApprovalStep.variance_id == v.id)) or 0
    )
    added = [
        ApprovalStep(variance_id=v.id, seq=base + step.seq, role=step.role)
        for step in rules.route(Severity(v.severity), settings.approval)
    ]
    session.add_all(added)
    await session.flush()
    await _open_step(session, settings, v, added[0], now)
    return v


async def _check_site(session: AsyncSession, v: Variance, actor: User, zh: str, en: str) -> None:
    """A warehouse that has supervisors of its own is theirs to review and approve (``core.people``)."""
    if actor.id in {u.id for u in await people.site_holders(session, Role.SUPERVISOR, v.warehouse_id)}:
        return
    wh = await session.get(Warehouse, v.warehouse_id)
    code = wh.code if wh is not None else str(v.warehouse_id)
    raise WorkflowError(
        f"差异 #{v.id} 属于仓库 {code}，应由该仓库的主管{zh}",
        f"variance #{v.id} belongs to warehouse {code}; a supervisor of that warehouse must {en} it",
    )


# ----------------------------------------------------------------------------------------- approval steps


@dataclass(frozen=True, slots=True)
class LinePeople:
    """Who took part in a variance: segregation of duties keeps them off its later steps."""

    counted: frozenset[int]  # counted the task or one of its recounts
    reviewer: int | None
    decided: frozenset[int]  # approved an earlier step of this round
    team_id: int | None  # the team of the task's counter (cards go to that team's supervisors first)

    @property
    def excluded(self) -> frozenset[int]:
        return self.counted | self.decided | ({self.reviewer} if self.reviewer else frozenset())


async def line_people(session: AsyncSession, v: Variance, step: ApprovalStep | None = None) -> LinePeople:
    """The people of ``v``; with ``step``, those who approved the steps before it since the last review."""
    counted = frozenset(await _counters_of(session, v.task_id))
    decided: frozenset[int] = frozenset()
    if step is not None:
        start = await _round_start(session, step)
        decided = frozenset(
            who
            for who in (
                await session.execute(
                    select(ApprovalStep.decided_by_id).where(
                        ApprovalStep.variance_id == v.id, ApprovalStep.seq > start, ApprovalStep.seq < step.seq,
                        ApprovalStep.decision == ApprovalDecision.APPROVED, ApprovalStep.decided_by_id.is_not(None),
                    )
                )
            ).scalars()
            if who is not None
        )  # fmt: skip
    task = await session.get(CountTask, v.task_id)
    assignee = await session.get(User, task.assignee_id) if task is not None and task.assignee_id else None
    return LinePeople(counted, v.reviewer_id, decided, assignee.team_id if assignee else None)


async def _round_start(session: AsyncSession, step: ApprovalStep) -> int:
    """The seq after which ``step``'s round began: that of the last step before it that ended a round (0 for
    the first round)."""
    back = await session.scalar(
        select(func.max(ApprovalStep.seq)).where(
            ApprovalStep.variance_id == step.variance_id, ApprovalStep.seq < step.seq,
            ApprovalStep.decision.in_(_ROUND_ENDS),
        )
    )  # fmt: skip
    return int(back or 0)


async def step_level(session: AsyncSession, step: ApprovalStep) -> int:
    """The step's place in its round (1 = the first step after the review), as cards show it."""
    return step.seq - await _round_start(session, step)


# the decisions that end a round of approval steps before a new review (a rejection closes the variance)
_ROUND_ENDS = (ApprovalDecision.RECOUNT, ApprovalDecision.CANCELLED)


async def deciders(
    session: AsyncSession, v: Variance, step: ApprovalStep, line: LinePeople | None = None
) -> list[User]:
    """Everyone who may decide ``step`` now: its role, at the variance's site, none of the line's people
    (``line``: the step's :func:`line_people`, when the caller has it)."""
    line = line or await line_people(session, v, step)
    return await people.site_holders(session, Role(step.role), v.warehouse_id, exclude=line.excluded)


async def _open_step(
    session: AsyncSession, settings: Settings, v: Variance, step: ApprovalStep, now: datetime
) -> None:
    step.opened_at = now
    step.due_at = now + timedelta(hours=_sla_hours(settings, Role(step.role)))
    await staff_step(session, settings, v, step, now, "no_eligible_approver")


def _sla_hours(settings: Settings, role: Role) -> int:
    return settings.approval.sla_hours_by_role.get(role, settings.approval.sla_hours)


async def staff_step(
    session: AsyncSession, settings: Settings, v: Variance, step: ApprovalStep, now: datetime, why: str
) -> bool:
    """Make sure somebody may decide an open step: while nobody may (everyone holding its role counted,
    reviewed or approved an earlier step, or the site has no such person), the step moves up its escalation
    chain, recorded with ``why``. False when the chain runs out: the step is recorded as ``unstaffed`` and
    the managers and admins are told (``bot.flows``); segregation of duties never quietly shrinks."""
    seen = {step.role}
    while not await deciders(session, v, step):
        target = settings.approval.escalate_to.get(Role(step.role))
        if (target is not None and target.value in seen) or not escalate_step(
            session, settings, step, now, why
        ):
            audit.record(session, "approval", step.id, "unstaffed", variance_id=v.id, at=now, role=step.role)
            return False
        seen.add(step.role)
    return True


# ----------------------------------------------------------------------------------------------- approval


@dataclass
class Decision:
    variance: Variance
    step: ApprovalStep
    outcome: str  # approved (step) | approved (final) | rejected | recount
    final: bool


async def decide(
    session: AsyncSession, settings: Settings, *, variance_id: int, actor_id: int, decision: ApprovalDecision,
    comment: str | None = None, now: datetime, step_seq: int | None = None,
) -> Decision:  # fmt: skip
    """Approve, reject or send back the current approval step. Two people deciding the same step at the same
    moment get exactly one outcome: the second is told who decided first.

    ``step_seq`` is the step the decider was shown (an approval card carries it): when that step has been
    decided meanwhile, the answer is who decided it, never a decision on the step that followed."""
    if decision not in (ApprovalDecision.APPROVED, ApprovalDecision.REJECTED, ApprovalDecision.RECOUNT):
        raise WorkflowError("无效的决定", f"invalid decision {decision}")
    v = await _variance(session, variance_id, lock=False)
    step = (
        await session.execute(
            select(ApprovalStep)
            .where(ApprovalStep.variance_id == v.id, ApprovalStep.opened_at.is_not(None))
            .order_by(ApprovalStep.seq.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if step is None or VarianceState(v.state) is not VarianceState.PENDING_APPROVAL:
        raise WorkflowError(
            f"差异 #{v.id} 当前不在审批中（{v.state}）",
            f"variance #{v.id} is not awaiting approval ({v.state})",
        )
    if step.decision != ApprovalDecision.PENDING:
        raise await _already(session, step)
    if step_seq is not None and step_seq != step.seq:
        shown = (
            await session.execute(
                select(ApprovalStep).where(ApprovalStep.variance_id == v.id, ApprovalStep.seq == step_seq)
            )
        ).scalar_one_or_none()
        if shown is not None and shown.decision != ApprovalDecision.PENDING:
            raise await _already(session, shown)
        raise WorkflowError("这张审批卡片已过期，请以最新卡片为准", "this approval card is out of date")
    actor = await _user(session, actor_id)
    line = await line_people(session, v, step)
    try:
        roles = {Role(r) for r in actor.roles or [] if r in Role._value2member_map_}
        reviewed_by = {v.reviewer_id} if v.reviewer_id else set()
        rules.check_can_decide(actor_id, roles, Role(step.role), set(line.counted), reviewed_by, line.decided)
    except rules.RuleViolation as exc:
        raise WorkflowError(exc.zh, exc.en) from exc
    if Role(step.role) is Role.SUPERVISOR:
        await _check_site(session, v, actor, "审批", "approve")
    if decision is ApprovalDecision.REJECTED and not (comment and comment.strip()):
        raise WorkflowError("驳回时请写明原因", "a rejection needs a reason")
    if decision is ApprovalDecision.RECOUNT:
        task = await session.get(CountTask, v.task_id)
        assert task is not None
        if not (await _recounters(session, task, set(line.counted)))[1]:
            raise WorkflowError(
                "没有还没数过这一行的盘点员可以复盘（该仓库的盘点员都已数过），请通过或驳回这条差异",
                "no counter who has not counted this line yet can recount it (every counter of its warehouse has); "
                "approve or reject the variance instead",
            )
    # the atomic claim: only one decision turns a pending step into a decided one
    claimed = await session.execute(
        update(ApprovalStep)
        .where(ApprovalStep.id == step.id, ApprovalStep.decision == ApprovalDecision.PENDING)
        .values(decision=decision, decided_by_id=actor_id, decided_at=now, comment=comment)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise await _already(session, step)
    await session.refresh(step)
    v = await _variance(session, variance_id)  # lock the variance for the state change
    audit.record(session, "approval", step.id, decision.value, actor_id=actor_id, variance_id=v.id, at=now,
                 role=step.role, comment=comment)  # fmt: skip
    if decision in (ApprovalDecision.REJECTED, ApprovalDecision.RECOUNT):
        # the round ends here: its later steps will never open
        await _cancel_open_steps(
            session, v, now, "rejected" if decision is ApprovalDecision.REJECTED else "sent back"
        )
    if decision is ApprovalDecision.REJECTED:
        _move_variance(v, VarianceEvent.REJECTED, actor_id, now, comment=comment)
        v.closed_at = now
        return Decision(v, step, "rejected", True)
    if decision is ApprovalDecision.RECOUNT:
        _move_variance(v, VarianceEvent.SENT_BACK, actor_id, now, comment=comment)
        task = await session.get(CountTask, v.task_id)
        assert task is not None
        await _open_recount(session, v, task, actor_id, now, settings.tz)
        return Decision(v, step, "recount", True)
    nxt = (
        await session.execute(
            select(ApprovalStep).where(ApprovalStep.variance_id == v.id, ApprovalStep.seq > step.seq)
            .order_by(ApprovalStep.seq).limit(1)
        )
    ).scalar_one_or_none()  # fmt: skip
    if nxt is not None:
        await _open_step(session, settings, v, nxt, now)
        return Decision(v, step, "approved", False)
    _move_variance(v, VarianceEvent.APPROVED, actor_id, now)
    await _adjust(session, settings, v, actor_id, now)
    return Decision(v, step, "approved", True)


_DECISION_ZH = {
    ApprovalDecision.APPROVED: "通过",
    ApprovalDecision.REJECTED: "驳回",
    ApprovalDecision.RECOUNT: "退回复盘",
    ApprovalDecision.ESCALATED: "已升级",
    ApprovalDecision.CANCELLED: "已取消",
}


async def _already(session: AsyncSession, step: ApprovalStep) -> WorkflowError:
    await session.refresh(step)
    who = await session.get(User, step.decided_by_id) if step.decided_by_id else None
    name = who.name if who else "其他人"
    zh = _DECISION_ZH.get(ApprovalDecision(step.decision), str(step.decision))
    return WorkflowError(
        f"{name} 已先一步处理了这一步（{zh}）",
        f"{name} already decided this step ({step.decision})",
    )


# ---------------------------------------------------------------------------------------------- adjustment


def _close_no_difference(v: Variance, actor_id: int | None, now: datetime, why: str, **data: Any) -> None:
    """Close a variance whose quantity is zero: no adjustment, no further step (``closed_no_difference``)."""
    _move_variance(v, VarianceEvent.NO_DIFFERENCE, actor_id, now, why=why, **data)
    v.closed_at = now


async def _adjust(
    session: AsyncSession, settings: Settings, v: Variance, actor_id: int | None, now: datetime
) -> Adjustment | None:
    """Turn an accepted variance into an adjustment and apply it to the book and the ledger. A variance whose
    quantity is zero (a late movement explained it after the review) is closed with nothing to adjust (None).

    A gain here and a loss of the same item at another location of the warehouse, recently adjusted and not
    yet exported, become one transfer document instead of a gain plus a loss.
    """
    qty = Decimal(v.qty)
    if qty == 0 and VarianceState(v.state) is VarianceState.APPROVED:
        _close_no_difference(v, actor_id, now, why="approved_with_zero_quantity")
        await session.flush()
        return None
    partner = None
    if qty != 0:
        since = now - settings.reasons.misslot_window
        partner_row = (
            await session.execute(
                select(AdjustmentLine, Adjustment)
                .join(Adjustment, Adjustment.id == AdjustmentLine.adjustment_id)
                .where(
                    Adjustment.warehouse_id == v.warehouse_id,
                    Adjustment.state == AdjustmentState.PENDING_WRITE_BACK.value,
                    Adjustment.kind == (AdjustmentKind.LOSS if qty > 0 else AdjustmentKind.GAIN),
                    Adjustment.created_at >= since,
                    AdjustmentLine.item_id == v.item_id,
                    AdjustmentLine.location_id != v.location_id,
                )
                .order_by(Adjustment.created_at)
                .limit(1)
            )
        ).first()
        if partner_row is not None:
            partner = partner_row
    unit_cost = Decimal(v.unit_cost)
    if partner is not None:
        line, doc = partner
        moved = min(abs(qty), abs(Decimal(line.qty)))
        src, dst = (line.location_id, v.location_id) if qty > 0 else (v.location_id, line.location_id)
        transfer = Adjustment(warehouse_id=v.warehouse_id, kind=AdjustmentKind.TRANSFER,
                              state=AdjustmentState.PENDING_WRITE_BACK.value, value=Decimal(0), created_at=now)  # fmt: skip
        session.add(transfer)
        await session.flush()
        session.add(AdjustmentLine(adjustment_id=transfer.id, variance_id=v.id, item_id=v.item_id, location_id=src,
                                   to_location_id=dst, qty=moved, unit_cost=unit_cost, value=Decimal(0)))  # fmt: skip
        # the partner's line shrinks by what is now a transfer; an emptied partner document disappears
        rest = abs(Decimal(line.qty)) - moved
        if rest == 0:
            await session.delete(line)
            await session.flush()
            await session.delete(doc)
        else:
            line.qty = rest if line.qty > 0 else -rest
            line.value = line.qty * Decimal(line.unit_cost)
            doc.value = line.value
        audit.record(session, "adjustment", transfer.id, "misslot_paired", actor_id=actor_id, variance_id=v.id,
                     at=now, partner_adjustment=doc.id, qty=moved)  # fmt: skip
        qty_left = abs(qty) - moved
        adjustment = transfer
    else:
        qty_left = abs(qty)
        adjustment = None
    if qty_left != 0:
        signed = qty_left if qty > 0 else -qty_left
        doc2 = Adjustment(warehouse_id=v.warehouse_id, kind=AdjustmentKind.GAIN if qty > 0 else AdjustmentKind.LOSS,
                          state=AdjustmentState.PENDING_WRITE_BACK.value, value=signed * unit_cost, created_at=now)  # fmt: skip
        session.add(doc2)
        await session.flush()
        session.add(AdjustmentLine(adjustment_id=doc2.id, variance_id=v.id, item_id=v.item_id,
                                   location_id=v.location_id, qty=signed, unit_cost=unit_cost,
                                   value=signed * unit_cost))  # fmt: skip
        audit.record(session, "adjustment", doc2.id, "created", actor_id=actor_id, variance_id=v.id, at=now,
                     to_state=AdjustmentState.PENDING_WRITE_BACK.value, qty=signed)  # fmt: skip
        adjustment = adjustment or doc2
    # the book and the ledger follow the count
    il = await session.get(ItemLocation, v.item_location_id)
    assert il is not None
    if qty != 0:
        il.qty = Decimal(il.qty) + qty
        session.add(Movement(item_id=v.item_id, location_id=v.location_id, item_location_id=il.id, qty=qty,
                             type=MovementType.ADJUSTMENT, occurred_at=now, recorded_at=now,
                             source_doc=f"PD-{v.id}"))  # fmt: skip
    _move_variance(
        v, VarianceEvent.ADJUSTMENT_RECORDED, actor_id, now, adjustment=adjustment.id if adjustment else None
    )
    v.closed_at = now
    await session.flush()
    return adjustment


# ------------------------------------------------------------------------------------------------- queries


async def counter_tasks(
    session: AsyncSession, user_id: int, day: Any
) -> list[tuple[CountTask, Item, Location]]:
    """A counter's open tasks due by ``day``, in walking order (never the book quantity: counts are blind)."""
    rows = await session.execute(
        select(CountTask, Item, Location)
        .join(Item, Item.id == CountTask.item_id)
        .join(Location, Location.id == CountTask.location_id)
        .where(
            CountTask.assignee_id == user_id, CountTask.status.in_(OPEN_STATUSES), CountTask.plan_date <= day
        )
        .order_by(CountTask.priority, Location.sequence, Location.code, Item.sku)
    )
    return [(t, i, lo) for t, i, lo in rows.all()]


async def user_by_employee_no(session: AsyncSession, employee_no: str) -> User:
    user = (await session.execute(select(User).where(User.employee_no == employee_no))).scalar_one_or_none()
    if user is None:
        raise WorkflowError(f"没有工号 {employee_no}", f"no employee number {employee_no}")
    return user


# ----------------------------------------------------------------------------------- unlisted finds, jobs


async def record_unlisted(
    session: AsyncSession,
    settings: Settings,
    *,
    counter_id: int,
    item_id: int,
    location_id: int,
    text: str,
    counted_at: datetime,
    method: EntryMethod = EntryMethod.TYPED,
    photos: list[str] | None = None,
    note: str | None = None,
    dedup_key: str | None = None,
    now: datetime,
) -> CountResult:
    """ "Found an item that was not on my list": accepted, as an unscheduled task counted on the spot."""
    from core.stock import ensure_item_locations

    if dedup_key is not None and (earlier := await _already_recorded(session, dedup_key)) is not None:
        return earlier
    item, loc = await session.get(Item, item_id), await session.get(Location, location_id)
    if item is None or loc is None:
        raise WorkflowError("物料或库位不存在", "unknown item or location")
    await ensure_item_locations(session, [(item_id, location_id)])
    il = (
        await session.execute(
            select(ItemLocation).where(
                ItemLocation.item_id == item_id, ItemLocation.location_id == location_id
            )
        )
    ).scalar_one()
    task = (
        await session.execute(
            select(CountTask).where(CountTask.item_location_id == il.id, CountTask.status.in_(OPEN_STATUSES),
                                    CountTask.reason != TaskReason.RECOUNT)
        )
    ).scalar_one_or_none()  # fmt: skip
    if task is None:
        task = CountTask(
            plan_date=counted_at.astimezone(settings.tz).date(), due_date=counted_at.astimezone(settings.tz).date(),
            warehouse_id=loc.warehouse_id,
            location_id=loc.id, item_id=item.id, item_location_id=il.id, abc_class=il.abc_class or item.abc_class,
            reason=TaskReason.UNSCHEDULED, priority=4, status=TaskStatus.OPEN, assignee_id=counter_id,
            est_minutes=3.0, cycle_key=f"unscheduled:{uuid4().hex[:12]}", created_at=now,
        )  # fmt: skip
        session.add(task)
        await session.flush()
        audit.record(session, "task", task.id, "unscheduled_created", actor_id=counter_id, at=now,
                     item=item.sku, location=loc.code)  # fmt: skip
    return await record_count(
        session, settings, task_id=task.id, counter_id=counter_id, text=text, counted_at=counted_at,
        method=method, photos=photos, note=note, dedup_key=dedup_key, now=now,
    )  # fmt: skip


async def escalate_overdue_approvals(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Approval steps past their deadline move up to the next level (by default the manager)."""
    steps = (
        (
            await session.execute(
                select(ApprovalStep).where(
                    ApprovalStep.decision == ApprovalDecision.PENDING,
                    ApprovalStep.opened_at.is_not(None),
                    ApprovalStep.due_at <= now,
                )
            )
        )
        .scalars()
        .all()
    )
    moved = 0
    for step in steps:
        if escalate_step(session, settings, step, now, "overdue"):
            moved += 1
            v = await _variance(session, step.variance_id, lock=False)
            await staff_step(session, settings, v, step, now, "no_eligible_approver")
    return moved


def escalate_step(
    session: AsyncSession, settings: Settings, step: ApprovalStep, now: datetime, why: str
) -> bool:
    """Move one pending step up to its escalation role (``approval.escalate_to``), with a fresh deadline.
    ``why``: "overdue", or "no_eligible_approver" when nobody may decide it at its role (see
    :func:`staff_step`). False when the role has nowhere to go."""
    target = settings.approval.escalate_to.get(Role(step.role))
    if target is None or target.value == step.role:
        return False
    old = step.role
    step.role = target.value
    step.due_at = now + timedelta(hours=_sla_hours(settings, target))
    audit.record(session, "approval", step.id, "escalated", variance_id=step.variance_id, at=now,
                 from_role=old, to_role=target.value, why=why)  # fmt: skip
    return True


async def open_improvement_items(session: AsyncSession, settings: Settings, now: datetime) -> list[int]:
    """The same reason K times in W days in a warehouse opens (or extends) a process-improvement item."""
    from core.models import ImprovementItem

    cfg = settings.reasons
    since = now - timedelta(days=cfg.recurrence_window_days)
    rows = await session.execute(
        select(Variance.id, Variance.warehouse_id, Variance.reason_code, Variance.reviewed_at).where(
            Variance.reason_code.is_not(None), Variance.reviewed_at > since
        )
    )
    events = [rules.ReasonEvent(i, w, r, t) for i, w, r, t in rows if r is not None and t is not None]
    touched: list[int] = []
    for rec in rules.recurring_reasons(events, cfg.recurrence_k, cfg.recurrence_window_days, now=now):
        item = (
            await session.execute(
                select(ImprovementItem).where(
                    ImprovementItem.warehouse_id == rec.warehouse_id,
                    ImprovementItem.reason_code == rec.reason_code,
                    ImprovementItem.state == "open",
                )
            )
        ).scalar_one_or_none()
        if item is None:
            item = ImprovementItem(warehouse_id=rec.warehouse_id, reason_code=rec.reason_code,
                                   window_start=rec.first_at.date(), variance_ids=list(rec.variance_ids),
                                   opened_at=now)  # fmt: skip
            session.add(item)
            await session.flush()
            audit.record(session, "improvement", item.id, "opened", at=now, reason=rec.reason_code,
                         variances=list(rec.variance_ids))  # fmt: skip
        elif set(rec.variance_ids) - set(item.variance_ids):
            item.variance_ids = sorted(set(item.variance_ids) | set(rec.variance_ids))
        touched.append(item.id)
    return touched


async def reevaluate_open_variances(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Movements that arrive late but happened before a count change the book at that count: recompute the
    open variances (their book, quantity, value, severity). Returns how many changed."""
    open_states = [s.value for s in VarianceState if s not in workflow.VARIANCE.finals()]
    rows = (
        await session.execute(
            select(Variance, Item)
            .join(Item, Item.id == Variance.item_id)
            .where(Variance.closed_at.is_(None), Variance.state.in_(open_states))
        )
    ).all()
    changed = 0
    for v, item in rows:
        book = await book_at(session, v.item_location_id, v.count_time)
        if book == Decimal(v.book_qty):
            continue
        var = compute_variance(book, Decimal(v.counted_qty), Decimal(v.unit_cost))
        a = assess(var, v.abc_class, item.sku, settings.tolerance)
        audit.record(session, "variance", v.id, "reevaluated", at=now, old_book=v.book_qty, book=book,
                     qty=var.qty, severity=a.severity.value)  # fmt: skip
        v.book_qty, v.qty, v.pct, v.value = book, var.qty, var.pct, var.value
        v.within_tolerance, v.hit = a.within_tolerance, a.hit
        if VarianceState(v.state) in (VarianceState.OPEN, VarianceState.RECOUNT_PENDING, VarianceState.DISPUTED,
                                      VarianceState.CONFIRMED, VarianceState.IN_REVIEW):  # fmt: skip
            v.severity = a.severity.value if not a.within_tolerance else v.severity
        if var.qty == 0 and VarianceState(v.state) in NO_COUNT_PENDING:
            # the late movement explains the whole difference: nothing is left to review, approve or adjust
            # (a variance still waiting for a count is closed by that count: see _evaluate_recount)
            await _cancel_open_steps(session, v, now)
            _close_no_difference(v, None, now, why="late_movement", book=book)
        changed += 1
    return changed


# where a variance waits for a person's review or decision, never for a count
NO_COUNT_PENDING = frozenset(
    {VarianceState.CONFIRMED, VarianceState.IN_REVIEW, VarianceState.PENDING_APPROVAL}
)


async def _cancel_open_steps(
    session: AsyncSession, v: Variance, now: datetime, why: str = "no difference left"
) -> None:
    """The approval steps still waiting for a decision end as cancelled (their cards then say so)."""
    await session.execute(
        update(ApprovalStep)
        .where(ApprovalStep.variance_id == v.id, ApprovalStep.decision == ApprovalDecision.PENDING)
        .values(decision=ApprovalDecision.CANCELLED, decided_at=now, comment=why)
        .execution_options(synchronize_session=False)
    )


@dataclass
class VarianceDossier:
    """Everything a reviewer needs: item, location, book, each count, photos, movements since the snapshot."""

    variance: Variance
    item: Item
    location: Location
    entries: list[tuple[CountEntry, User]]
    movements: list[Movement]
    steps: list[ApprovalStep]


async def dossier(session: AsyncSession, variance_id: int) -> VarianceDossier:
    v = await _variance(session, variance_id, lock=False)
    item, loc = await session.get(Item, v.item_id), await session.get(Location, v.location_id)
    assert item is not None and loc is not None
    task_ids = [
        v.task_id,
        *(await session.execute(select(CountTask.id).where(CountTask.parent_task_id == v.task_id))).scalars(),
    ]
    entries = [
        (e, u)
        for e, u in (
            await session.execute(
                select(CountEntry, User).join(User, User.id == CountEntry.counter_id)
                .where(CountEntry.task_id.in_(task_ids)).order_by(CountEntry.counted_at, CountEntry.id)
            )
        ).all()
    ]  # fmt: skip
    il = await session.get(ItemLocation, v.item_location_id)
    since = il.book_as_of if il is not None and il.book_as_of else v.count_time - timedelta(days=7)
    movements = list(
        (
            await session.execute(
                select(Movement).where(Movement.item_location_id == v.item_location_id, Movement.occurred_at > since)
                .order_by(Movement.occurred_at)
            )
        ).scalars()
    )  # fmt: skip
    steps = list(
        (
            await session.execute(
                select(ApprovalStep).where(ApprovalStep.variance_id == v.id).order_by(ApprovalStep.seq)
            )
        ).scalars()
    )
    return VarianceDossier(v, item, loc, entries, movements, steps)


async def housekeeping(session: AsyncSession, settings: Settings, now: datetime) -> dict[str, int]:
    """The periodic jobs of the workflow (the bot's scheduler runs them; the CLI can too)."""
    return {
        "escalated": await escalate_overdue_approvals(session, settings, now),
        "improvement_items": len(await open_improvement_items(session, settings, now)),
        "reevaluated": await reevaluate_open_variances(session, settings, now),
    }
