"""Reports for managers: record accuracy, progress, open variances, the reason Pareto, counters.

Two layers, as in the rest of ``core``:

- **pure functions** over plain rows (the ``*Fact`` dataclasses): no SQLAlchemy, no I/O, time comes in as a
  parameter; unit-tested with hand-built rows;
- **async query functions** (``*_report``) that fetch those rows for a :class:`ReportFilter` with SQLAlchemy
  ``select``\\ s and call the pure functions. They take an ``AsyncSession`` and never commit.

Periods are local dates (``settings.tz``), both ends included; timestamps in the database are UTC, so a
period becomes ``[start 00:00 local, end + 1 day 00:00 local)`` in UTC, and every timestamp is turned back
into a local date before it is grouped by day or ISO week.

Definitions
-----------
accuracy
    Over *first counts*: one :class:`~core.models.Variance` per counted task whose task is not a recount,
    in the period by the time of the count (``Variance.count_time``).

    - hit rate (inventory record accuracy, IRA) = hits / counts, a hit being a count within the hit/miss
      tolerance (``Variance.hit``; an exact match is always a hit). A first count a recount later proved
      wrong still counts as a miss: the figure measures the counts as they were made.
    - unit accuracy = 1 − Σ|counted − book| / Σ|book| over the same counts, clamped at 0. When Σ|book| is 0
      it is 1 if nothing was found and 0 otherwise (anything found against an empty book is all error).
    - value accuracy: the same with quantities times unit cost.
    - gross adjustment = Σ|line value|, net adjustment = Σ line value, over :class:`AdjustmentLine` whose
      document was created in the period (transfer lines carry value 0). Grouped by the class of the line's
      variance, the document's warehouse and the ISO week of the document.

    Rows: ``class=A``…, ``warehouse=WH1``…, ``week=2026-W49``…, then ``total``.
progress
    Count tasks by plan date in the period (cancelled tasks left out): planned, done (status done), open
    (planned − done), overdue (flagged overdue by the planner: more than the allowed working days late,
    whether counted since or not) and done rate. Rows per ``day=``, ``counter=`` (the assignee),
    ``zone=WAREHOUSE/ZONE`` (the location's zone), then ``total``. Recount tasks are tasks too.
variances
    Variances not closed (``closed_at IS NULL``; exact matches, auto-accepted with nothing to adjust and so
    never closed, are left out), oldest first: state, age in hours since the variance was
    detected, severity, quantity and value, item and location, and who acts next: the role of the open
    approval step for ``pending_approval``; the counter of the open recount for ``recount_pending`` and
    ``recount_requested``; a supervisor for ``open``/``confirmed``/``disputed``/``in_review``; the system
    for ``auto_accepted``/``approved`` (the adjustment is being recorded). The period, when given, filters
    on the time of the count.
reasons
    Variances with a reason code counted in the period, per reason code: count and Σ|value|, sorted by value
    (then count) descending; share = value / total value, cumulative share = running value / total value
    (so it never decreases and ends at exactly 1). Shares are empty when the total value is 0.
counters
    Count entries in the period by counter, superseded entries left out (a counter's second full or partial
    count replaces the first): counts; of which recounts of someone else's count; **average minutes per
    count**: the entries of one counter are sorted by time within each local day, the time between two
    consecutive entries is taken as the time the second one took, and gaps longer than 60 minutes (a break,
    other work) are dropped; the average is Σ kept gaps / number of kept gaps, so the first count of a day or
    after a break has no time of its own (``timed_counts`` says how many were timed). Overturned = first
    counts a blind recount proved wrong (``CountEntry.overturned``), overturn rate = overturned / first
    counts (recounts cannot be overturned).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.enums import OPEN_STATUSES, ROLE_LABEL_ZH, ApprovalDecision, TaskReason, TaskStatus
from core.models import (
    Adjustment,
    AdjustmentLine,
    ApprovalStep,
    CountEntry,
    CountTask,
    Item,
    Location,
    User,
    Variance,
    Warehouse,
    Zone,
)
from core.variance.workflow import VARIANCE, VarianceState

CLASSES = ("A", "B", "C")
MAX_GAP = timedelta(minutes=60)
TOTAL = "total"
UNASSIGNED = "未分配"
NO_ZONE = "未分区"

ROLE_ZH: dict[str, str] = {**{r.value: zh for r, zh in ROLE_LABEL_ZH.items()}, "system": "系统"}


class ReportError(Exception):
    """A report request that cannot be answered, with a message in Chinese and English."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.zh, self.en = zh, en


# ------------------------------------------------------------------------------------------------ filters


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """Local dates (both included; ``None`` is open-ended), a warehouse code and an ABC class."""

    start: date | None = None
    end: date | None = None
    warehouse: str | None = None
    abc_class: str | None = None

    def checked(self) -> ReportFilter:
        """The filter with the class upper-cased, or :class:`ReportError` for a period or class that is wrong."""
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ReportError(
                f"开始日期 {self.start} 晚于结束日期 {self.end}",
                f"--from {self.start} is after --to {self.end}",
            )
        cls = self.abc_class.strip().upper() if self.abc_class is not None else None
        if cls is not None and cls not in CLASSES:
            raise ReportError(
                f"未知的 ABC 类别 {self.abc_class!r}，可选 A、B、C",
                f"unknown ABC class {self.abc_class!r}; use A, B or C",
            )
        return ReportFilter(self.start, self.end, self.warehouse, cls)


def utc_bounds(start: date | None, end: date | None, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    """The local period ``[start, end]`` as a half-open UTC interval ``[lo, hi)``."""
    lo = datetime.combine(start, time(0), tzinfo=tz).astimezone(UTC) if start else None
    hi = datetime.combine(end + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC) if end else None
    return lo, hi


def local_day(at: datetime, tz: tzinfo) -> date:
    return at.astimezone(tz).date()


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


# ------------------------------------------------------------------------------------------ pure: accuracy


@dataclass(frozen=True, slots=True)
class CountFact:
    """One first count (one variance)."""

    abc_class: str
    warehouse: str
    day: date  # local date of the count
    hit: bool
    book_qty: Decimal
    counted_qty: Decimal
    unit_cost: Decimal


@dataclass(frozen=True, slots=True)
class AdjustmentFact:
    """One adjustment line."""

    abc_class: str | None  # the class of the line's variance
    warehouse: str
    day: date  # local date the document was created
    value: Decimal  # signed


@dataclass(slots=True)
class AccuracyRow:
    group: str
    counts: int
    hits: int
    hit_rate: float | None
    unit_accuracy: float | None
    value_accuracy: float | None
    gross_adjustment: Decimal
    net_adjustment: Decimal


def hit_rate(hits: int, counts: int) -> float | None:
    return hits / counts if counts else None


def accuracy_ratio(pairs: Iterable[tuple[Decimal, Decimal]]) -> float | None:
    """``1 − Σ|counted − book| / Σ|book|`` over ``(book, counted)`` pairs, clamped at 0; ``None`` if empty.

    With Σ|book| = 0 it is 1 when nothing was found and 0 otherwise.
    """
    n, diff, base = 0, Decimal(0), Decimal(0)
    for book, counted in pairs:
        n += 1
        diff += abs(counted - book)
        base += abs(book)
    if n == 0:
        return None
    if base == 0:
        return 1.0 if diff == 0 else 0.0
    return max(0.0, float(1 - diff / base))


def _accuracy_row(
    group: str, counts: Sequence[CountFact], adjustments: Sequence[AdjustmentFact]
) -> AccuracyRow:
    hits = sum(1 for c in counts if c.hit)
    return AccuracyRow(
        group=group,
        counts=len(counts),
        hits=hits,
        hit_rate=hit_rate(hits, len(counts)),
        unit_accuracy=accuracy_ratio((c.book_qty, c.counted_qty) for c in counts),
        value_accuracy=accuracy_ratio(
            (c.book_qty * c.unit_cost, c.counted_qty * c.unit_cost) for c in counts
        ),
        gross_adjustment=sum((abs(a.value) for a in adjustments), Decimal(0)),
        net_adjustment=sum((a.value for a in adjustments), Decimal(0)),
    )


def accuracy_rows(counts: Sequence[CountFact], adjustments: Sequence[AdjustmentFact]) -> list[AccuracyRow]:
    """Rows per class, per warehouse and per ISO week, then the total."""
    dims: list[tuple[str, Callable[[CountFact | AdjustmentFact], str | None]]] = [
        ("class", lambda f: f.abc_class),
        ("warehouse", lambda f: f.warehouse),
        ("week", lambda f: iso_week(f.day)),
    ]
    rows = []
    for name, key in dims:
        facts: list[CountFact | AdjustmentFact] = [*counts, *adjustments]
        keys = sorted({k for f in facts if (k := key(f)) is not None})
        for k in keys:
            rows.append(
                _accuracy_row(
                    f"{name}={k}", [c for c in counts if key(c) == k], [a for a in adjustments if key(a) == k]
                )
            )
    rows.append(_accuracy_row(TOTAL, counts, adjustments))
    return rows


# ------------------------------------------------------------------------------------------ pure: progress


@dataclass(frozen=True, slots=True)
class TaskFact:
    day: date  # plan date
    counter: str | None  # assignee label
    zone: str | None  # "WH1/A"
    status: str
    overdue: bool


@dataclass(slots=True)
class ProgressRow:
    group: str
    planned: int
    done: int
    open: int
    overdue: int
    done_rate: float | None


def _progress_row(group: str, tasks: Sequence[TaskFact]) -> ProgressRow:
    done = sum(1 for t in tasks if t.status == TaskStatus.DONE)
    return ProgressRow(
        group=group,
        planned=len(tasks),
        done=done,
        open=len(tasks) - done,
        overdue=sum(1 for t in tasks if t.overdue),
        done_rate=done / len(tasks) if tasks else None,
    )


def _grouped(tasks: Sequence[TaskFact], key: Callable[[TaskFact], Hashable]) -> dict[Any, list[TaskFact]]:
    out: dict[Any, list[TaskFact]] = defaultdict(list)
    for t in tasks:
        out[key(t)].append(t)
    return out


def progress_rows(tasks: Sequence[TaskFact]) -> list[ProgressRow]:
    """Rows per day, per counter (unassigned last), per zone, then the total; cancelled tasks are left out."""
    live = [t for t in tasks if t.status != TaskStatus.CANCELLED]
    rows = [
        _progress_row(f"day={d.isoformat()}", ts) for d, ts in sorted(_grouped(live, lambda t: t.day).items())
    ]
    by_counter = _grouped(live, lambda t: t.counter)
    rows += [
        _progress_row(f"counter={c or UNASSIGNED}", by_counter[c])
        for c in sorted(by_counter, key=lambda c: (c is None, c or ""))
    ]
    by_zone = _grouped(live, lambda t: t.zone)
    rows += [
        _progress_row(f"zone={z or NO_ZONE}", by_zone[z])
        for z in sorted(by_zone, key=lambda z: (z is None, z or ""))
    ]
    rows.append(_progress_row(TOTAL, live))
    return rows


# ----------------------------------------------------------------------------------- pure: open variances


@dataclass(frozen=True, slots=True)
class OpenVarianceFact:
    id: int
    warehouse: str
    location: str
    sku: str
    item_name: str
    abc_class: str
    state: str
    severity: str
    qty: Decimal
    value: Decimal
    created_at: datetime
    approval_role: str | None = None  # the role of the open approval step
    recount_counter: str | None = None  # the assignee of the open recount task


@dataclass(slots=True)
class OpenVarianceRow:
    id: int
    warehouse: str
    location: str
    sku: str
    item_name: str
    abc_class: str
    state: str
    state_zh: str
    age_hours: float
    severity: str
    qty: Decimal
    value: Decimal
    next_role: str
    next_role_zh: str
    next_person: str | None


_NEXT_ROLE: dict[str, str] = {
    VarianceState.OPEN: "supervisor",
    VarianceState.CONFIRMED: "supervisor",
    VarianceState.DISPUTED: "supervisor",
    VarianceState.IN_REVIEW: "supervisor",
    VarianceState.RECOUNT_PENDING: "counter",
    VarianceState.RECOUNT_REQUESTED: "counter",
    VarianceState.AUTO_ACCEPTED: "system",
    VarianceState.APPROVED: "system",
}


def next_actor(state: str, approval_role: str | None, recount_counter: str | None) -> tuple[str, str | None]:
    """Who is expected to act next on a variance: ``(role, person or None)``."""
    if state == VarianceState.PENDING_APPROVAL:
        return approval_role or "supervisor", None
    role = _NEXT_ROLE.get(state, "supervisor")
    return role, recount_counter if role == "counter" else None


def open_variance_rows(facts: Sequence[OpenVarianceFact], now: datetime) -> list[OpenVarianceRow]:
    rows = []
    for f in facts:
        role, person = next_actor(f.state, f.approval_role, f.recount_counter)
        try:
            state_zh = VARIANCE.state_zh[VarianceState(f.state)]
        except ValueError:
            state_zh = f.state
        rows.append(
            OpenVarianceRow(
                id=f.id, warehouse=f.warehouse, location=f.location, sku=f.sku, item_name=f.item_name,
                abc_class=f.abc_class, state=f.state, state_zh=state_zh,
                age_hours=round((now - f.created_at).total_seconds() / 3600, 1), severity=f.severity,
                qty=f.qty, value=f.value, next_role=role, next_role_zh=ROLE_ZH.get(role, role),
                next_person=person,
            )
        )  # fmt: skip
    rows.sort(key=lambda r: (-r.age_hours, r.id))
    return rows


# ------------------------------------------------------------------------------------------- pure: reasons


@dataclass(frozen=True, slots=True)
class ReasonFact:
    code: str
    value: Decimal  # signed variance value


@dataclass(slots=True)
class ReasonRow:
    reason_code: str
    reason_zh: str
    count: int
    value: Decimal  # Σ|value|
    share: float | None
    cumulative_share: float | None


def pareto(facts: Iterable[ReasonFact], labels: Mapping[str, str]) -> list[ReasonRow]:
    """The reason Pareto: per code, count and Σ|value|, by value descending, with shares of the total value."""
    counts: dict[str, int] = defaultdict(int)
    values: dict[str, Decimal] = defaultdict(Decimal)
    for f in facts:
        counts[f.code] += 1
        values[f.code] += abs(f.value)
    order = sorted(counts, key=lambda c: (-values[c], -counts[c], c))
    total = sum(values.values(), Decimal(0))
    rows, running = [], Decimal(0)
    for code in order:
        running += values[code]
        rows.append(
            ReasonRow(
                reason_code=code,
                reason_zh=labels.get(code, code),
                count=counts[code],
                value=values[code],
                share=float(values[code] / total) if total else None,
                cumulative_share=float(running / total) if total else None,
            )
        )
    return rows


# ------------------------------------------------------------------------------------------ pure: counters


@dataclass(frozen=True, slots=True)
class EntryFact:
    counter: str
    counted_at: datetime
    recount: bool
    overturned: bool


@dataclass(slots=True)
class CounterRow:
    counter: str
    counts: int
    recounts: int
    avg_minutes: float | None
    timed_counts: int
    overturned: int
    overturn_rate: float | None


def count_intervals(times: Iterable[datetime], tz: tzinfo, max_gap: timedelta = MAX_GAP) -> list[float]:
    """Minutes between consecutive counts on the same local day, gaps longer than ``max_gap`` dropped."""
    out: list[float] = []
    prev: datetime | None = None
    for t in sorted(times):
        if prev is not None and local_day(prev, tz) == local_day(t, tz) and t - prev <= max_gap:
            out.append((t - prev).total_seconds() / 60)
        prev = t
    return out


def counter_rows(entries: Iterable[EntryFact], tz: tzinfo, max_gap: timedelta = MAX_GAP) -> list[CounterRow]:
    by: dict[str, list[EntryFact]] = defaultdict(list)
    for e in entries:
        by[e.counter].append(e)
    rows = []
    for who in sorted(by):
        es = by[who]
        gaps = count_intervals((e.counted_at for e in es), tz, max_gap)
        recounts = sum(1 for e in es if e.recount)
        first = len(es) - recounts
        overturned = sum(1 for e in es if e.overturned and not e.recount)
        rows.append(
            CounterRow(
                counter=who,
                counts=len(es),
                recounts=recounts,
                avg_minutes=round(sum(gaps) / len(gaps), 2) if gaps else None,
                timed_counts=len(gaps),
                overturned=overturned,
                overturn_rate=overturned / first if first else None,
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------ queries


def _user_label(name: str | None, employee_no: str | None) -> str | None:
    return f"{name} ({employee_no})" if employee_no else None


async def _warehouse_id(session: AsyncSession, code: str | None) -> int | None:
    if code is None:
        return None
    wid = (await session.execute(select(Warehouse.id).where(Warehouse.code == code))).scalar_one_or_none()
    if wid is None:
        known = list((await session.execute(select(Warehouse.code).order_by(Warehouse.code))).scalars())
        names = "、".join(known) or "（无）"
        raise ReportError(
            f"没有仓库 {code}，已有：{names}",
            f"unknown warehouse {code}; known: {', '.join(known) or 'none'}",
        )
    return wid


async def _prepare(session: AsyncSession, flt: ReportFilter) -> tuple[ReportFilter, int | None]:
    flt = flt.checked()
    return flt, await _warehouse_id(session, flt.warehouse)


def _conditions(
    flt: ReportFilter, wh_id: int | None, tz: tzinfo, *, at: Any, wh: Any, cls: Any
) -> list[ColumnElement[bool]]:
    """WHERE clauses for the period (on the timestamp ``at``), the warehouse and the class."""
    lo, hi = utc_bounds(flt.start, flt.end, tz)
    out: list[ColumnElement[bool]] = []
    if lo is not None:
        out.append(at >= lo)
    if hi is not None:
        out.append(at < hi)
    if wh_id is not None:
        out.append(wh == wh_id)
    if flt.abc_class is not None:
        out.append(cls == flt.abc_class)
    return out


async def accuracy_report(session: AsyncSession, settings: Settings, flt: ReportFilter) -> list[AccuracyRow]:
    flt, wh_id = await _prepare(session, flt)
    tz = settings.tz
    counts_q = (
        select(Variance.abc_class, Warehouse.code, Variance.count_time, Variance.hit, Variance.book_qty,
               Variance.counted_qty, Variance.unit_cost)
        .join(CountTask, CountTask.id == Variance.task_id)
        .join(Warehouse, Warehouse.id == Variance.warehouse_id)
        .where(CountTask.reason != TaskReason.RECOUNT)
    )  # fmt: skip
    counts_q = counts_q.where(
        *_conditions(flt, wh_id, tz, at=Variance.count_time, wh=Variance.warehouse_id, cls=Variance.abc_class)
    )
    counts = [
        CountFact(cls, wh, local_day(at, tz), bool(hit), Decimal(book), Decimal(counted), Decimal(cost))
        for cls, wh, at, hit, book, counted, cost in (await session.execute(counts_q)).all()
    ]
    adj_q = (
        select(Variance.abc_class, Warehouse.code, Adjustment.created_at, AdjustmentLine.value)
        .select_from(AdjustmentLine)
        .join(Adjustment, Adjustment.id == AdjustmentLine.adjustment_id)
        .join(Warehouse, Warehouse.id == Adjustment.warehouse_id)
        .outerjoin(Variance, Variance.id == AdjustmentLine.variance_id)
    )
    adj_q = adj_q.where(
        *_conditions(
            flt, wh_id, tz, at=Adjustment.created_at, wh=Adjustment.warehouse_id, cls=Variance.abc_class
        )
    )
    adjustments = [
        AdjustmentFact(cls, wh, local_day(at, tz), Decimal(value))
        for cls, wh, at, value in (await session.execute(adj_q)).all()
    ]
    return accuracy_rows(counts, adjustments)


async def progress_report(session: AsyncSession, settings: Settings, flt: ReportFilter) -> list[ProgressRow]:
    flt, wh_id = await _prepare(session, flt)
    stmt = (
        select(CountTask.plan_date, CountTask.status, CountTask.overdue, User.name, User.employee_no,
               Warehouse.code, Zone.code)
        .join(Location, Location.id == CountTask.location_id)
        .join(Warehouse, Warehouse.id == CountTask.warehouse_id)
        .outerjoin(Zone, Zone.id == Location.zone_id)
        .outerjoin(User, User.id == CountTask.assignee_id)
    )  # fmt: skip
    if flt.start is not None:
        stmt = stmt.where(CountTask.plan_date >= flt.start)
    if flt.end is not None:
        stmt = stmt.where(CountTask.plan_date <= flt.end)
    if wh_id is not None:
        stmt = stmt.where(CountTask.warehouse_id == wh_id)
    if flt.abc_class is not None:
        stmt = stmt.where(CountTask.abc_class == flt.abc_class)
    tasks = [
        TaskFact(day, _user_label(name, emp), f"{wh}/{zone}" if zone else None, str(status), bool(overdue))
        for day, status, overdue, name, emp, wh, zone in (await session.execute(stmt)).all()
    ]
    return progress_rows(tasks)


async def open_variances_report(
    session: AsyncSession, settings: Settings, flt: ReportFilter, *, now: datetime
) -> list[OpenVarianceRow]:
    flt, wh_id = await _prepare(session, flt)
    stmt = (
        select(Variance, Warehouse.code, Location.code, Item.sku, Item.name)
        .join(Warehouse, Warehouse.id == Variance.warehouse_id)
        .join(Location, Location.id == Variance.location_id)
        .join(Item, Item.id == Variance.item_id)
        .where(
            Variance.closed_at.is_(None),
            # an exact match is auto-accepted and never closed, as nothing needs adjusting: not a variance
            ~and_(Variance.state == VarianceState.AUTO_ACCEPTED.value, Variance.qty == 0),
        )
    )
    stmt = stmt.where(
        *_conditions(
            flt, wh_id, settings.tz, at=Variance.count_time, wh=Variance.warehouse_id, cls=Variance.abc_class
        )
    )
    found = (await session.execute(stmt)).all()
    ids = [v.id for v, *_ in found]
    task_ids = [v.task_id for v, *_ in found]
    roles: dict[int, str] = {}
    counters: dict[int, str] = {}
    if ids:
        steps = await session.execute(
            select(ApprovalStep.variance_id, ApprovalStep.role)
            .where(
                ApprovalStep.variance_id.in_(ids),
                ApprovalStep.opened_at.is_not(None),
                ApprovalStep.decision == ApprovalDecision.PENDING,
            )
            .order_by(ApprovalStep.seq)
        )
        roles = {vid: role for vid, role in steps.all()}  # the latest open step wins
        recounts = await session.execute(
            select(CountTask.parent_task_id, User.name, User.employee_no)
            .join(User, User.id == CountTask.assignee_id)
            .where(
                CountTask.parent_task_id.in_(task_ids),
                CountTask.reason == TaskReason.RECOUNT,
                CountTask.status.in_(OPEN_STATUSES),
            )
            .order_by(CountTask.id)
        )
        counters = {tid: f"{name} ({emp})" for tid, name, emp in recounts.all() if tid is not None}
    facts = [
        OpenVarianceFact(
            id=v.id, warehouse=wh, location=loc, sku=sku, item_name=name, abc_class=v.abc_class, state=v.state,
            severity=v.severity, qty=Decimal(v.qty), value=Decimal(v.value), created_at=v.created_at,
            approval_role=roles.get(v.id), recount_counter=counters.get(v.task_id),
        )
        for v, wh, loc, sku, name in found
    ]  # fmt: skip
    return open_variance_rows(facts, now)


async def reasons_report(session: AsyncSession, settings: Settings, flt: ReportFilter) -> list[ReasonRow]:
    flt, wh_id = await _prepare(session, flt)
    stmt = select(Variance.reason_code, Variance.value).where(Variance.reason_code.is_not(None))
    stmt = stmt.where(
        *_conditions(
            flt, wh_id, settings.tz, at=Variance.count_time, wh=Variance.warehouse_id, cls=Variance.abc_class
        )
    )
    facts = [ReasonFact(str(code), Decimal(value)) for code, value in (await session.execute(stmt)).all()]
    return pareto(facts, {c.code: c.zh for c in settings.reasons.codes})


async def counters_report(session: AsyncSession, settings: Settings, flt: ReportFilter) -> list[CounterRow]:
    flt, wh_id = await _prepare(session, flt)
    stmt = (
        select(User.name, User.employee_no, CountEntry.counted_at, CountEntry.recount, CountEntry.overturned)
        .join(User, User.id == CountEntry.counter_id)
        .join(CountTask, CountTask.id == CountEntry.task_id)
        .where(CountEntry.superseded_by_id.is_(None))
    )
    stmt = stmt.where(
        *_conditions(
            flt,
            wh_id,
            settings.tz,
            at=CountEntry.counted_at,
            wh=CountTask.warehouse_id,
            cls=CountTask.abc_class,
        )
    )
    entries = [
        EntryFact(f"{name} ({emp})", at, bool(recount), bool(overturned))
        for name, emp, at, recount, overturned in (await session.execute(stmt)).all()
    ]
    return counter_rows(entries, settings.tz)
