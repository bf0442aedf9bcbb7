"""Planning use cases: ``plan_day`` and ``request_count``.

Reads the rotation in one streamed, index-ordered pass, lets the pure planner decide, writes the new tasks
with ``ON CONFLICT DO NOTHING`` (the unique keys make a re-plan, or two servers planning at once, insert
nothing twice), marks overdue carry-overs, and assigns what is unassigned. Never commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Float,
    Integer,
    Select,
    String,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core.calendar import WorkCalendar
from core.classification_service import apply_pins, refresh_item_location_classes
from core.config import CLASSES, Settings
from core.db import dialect_insert, staged, staging_table
from core.enums import OPEN_STATUSES, REASON_LABEL_ZH, TaskReason, TaskStatus
from core.models import (
    CalendarOverride,
    CountPolicy,
    CountRequest,
    CountTask,
    Item,
    ItemLocation,
    Location,
    PlanRun,
    User,
    UserUnavailability,
    UserZone,
    UTCDateTime,
    Variance,
    Warehouse,
    Zone,
)
from core.scheduling.assignment import Counter, Job, assign
from core.scheduling.planner import (
    DISCRETIONARY,
    ZERO_RECENT_DAYS,
    Candidate,
    Decision,
    RotationPlanner,
    RotationWindow,
    Rules,
)
from core.scheduling.policy import cycle_for
from core.variance.workflow import VARIANCE

BATCH = 5000
PLAN_LOCK_KEY = 0x70616E6469616E  # "pandian": PostgreSQL advisory lock serialising concurrent plans


class PlanningError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class PlanRow:
    task_id: int
    plan_date: date
    due_date: date
    warehouse: str
    location: str
    sku: str
    item_name: str
    abc_class: str
    reason: TaskReason
    priority: int
    assignee: str | None  # employee number
    assignee_name: str | None
    overdue: bool
    est_minutes: float
    status: TaskStatus

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.plan_date.isoformat(),
            "warehouse": self.warehouse,
            "location": self.location,
            "sku": self.sku,
            "abc_class": self.abc_class,
            "reason": self.reason.value,
            "assignee": self.assignee,
            "priority": self.priority,
            "due_date": self.due_date.isoformat(),
            "overdue": self.overdue,
            "est_minutes": self.est_minutes,
        }

    @property
    def reason_zh(self) -> str:
        return REASON_LABEL_ZH[self.reason]


@dataclass(slots=True)
class PlanResult:
    day: date
    working_day: bool
    created: int = 0
    carried_over: int = 0
    overdue: int = 0
    unassigned: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    tasks: list[PlanRow] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- loading


async def load_calendar(session: AsyncSession, settings: Settings) -> WorkCalendar:
    rows = (await session.execute(select(CalendarOverride.day, CalendarOverride.working))).all()
    working = set(settings.calendar.extra_working_days) | {d for d, w in rows if w}
    off = (set(settings.calendar.extra_days_off) | {d for d, w in rows if not w}) - {d for d, w in rows if w}
    working -= {d for d, w in rows if not w}
    return WorkCalendar(settings.calendar.country, working, off)


async def _policies(
    session: AsyncSession, settings: Settings, warehouse_id: int
) -> dict[str, tuple[int, float]]:
    """counts per year and minutes per task for each class in one warehouse (company policy, then overrides)."""
    out = {c: (p.counts_per_year, p.minutes_per_task) for c, p in settings.planning.policies.items()}
    rows = (
        await session.execute(
            select(CountPolicy)
            .where((CountPolicy.warehouse_id == warehouse_id) | CountPolicy.warehouse_id.is_(None))
            .order_by(CountPolicy.warehouse_id.is_(None).desc())  # company rows first, warehouse rows win
        )
    ).scalars()
    for p in rows:
        _, minutes = out[p.abc_class]
        out[p.abc_class] = (
            p.counts_per_year,
            p.minutes_per_task if p.minutes_per_task is not None else minutes,
        )
    return out


async def _windows(
    session: AsyncSession,
    warehouse_id: int,
    day: date,
    cal: WorkCalendar,
    policies: dict[str, tuple[int, float]],
) -> dict[tuple[int, str], RotationWindow]:
    counts = dict(
        (
            await session.execute(
                select(ItemLocation.abc_class, func.count())
                .where(ItemLocation.warehouse_id == warehouse_id)
                .group_by(ItemLocation.abc_class)
            )
        ).all()
    )
    earlier_runs = set(
        (
            await session.execute(
                select(PlanRun.plan_date).where(
                    PlanRun.warehouse_id == warehouse_id,
                    PlanRun.plan_date < day,
                    PlanRun.plan_date >= day - timedelta(days=370),
                )
            )
        ).scalars()
    )
    out = {}
    for cls in CLASSES:
        n = counts.get(cls, 0)
        if not n:
            continue
        cycle = cycle_for(day, policies[cls][0], cls)
        days = cal.working_days(cycle.start, cycle.end)
        if day not in days:
            continue
        first_run = min([d for d in earlier_runs if cycle.contains(d) and d in days] + [day])
        out[(warehouse_id, cls)] = RotationWindow(cycle, n, len(days), days.index(day), days.index(first_run))
    return out


def _busy(il: Any) -> Any:
    """The item-location is being counted already: an open task (a blind recount included) or a variance that
    has not reached a final state. No other count is planned for it then: a trigger count of an item-location
    whose recount is open went to the very counter being checked."""
    return or_(
        exists().where(CountTask.item_location_id == il.id, CountTask.status.in_(OPEN_STATUSES)),
        exists().where(Variance.item_location_id == il.id, Variance.state.not_in(OPEN_VARIANCE_FINALS)),
    )


OPEN_VARIANCE_FINALS = sorted(s.value for s in VARIANCE.finals())


def _columns() -> tuple[Any, ...]:
    """The Candidate columns, in field order (see ``_candidate``)."""
    il = ItemLocation
    open_task = _busy(il)
    pending = (
        select(func.min(CountRequest.id))
        .where(CountRequest.item_location_id == il.id, CountRequest.planned_on.is_(None))
        .scalar_subquery()
    )
    return (
        il.id, il.item_id, il.location_id, il.warehouse_id, il.abc_class, il.qty, il.last_movement_at,
        il.last_counted_at, il.turnover_value, il.last_miss_at, il.last_rotation_cycle, open_task, pending,
    )  # fmt: skip


def _candidate(r: Any, rank: int | None = None) -> Candidate:
    return Candidate(
        item_location_id=r[0],
        item_id=r[1],
        location_id=r[2],
        warehouse_id=r[3],
        abc_class=r[4],
        qty=r[5],
        last_movement_at=r[6],
        last_counted_at=r[7],
        turnover_value=r[8],
        last_miss_at=r[9],
        last_rotation_cycle=r[10],
        has_open_task=bool(r[11]),
        request_id=r[12],
        rank=rank,
    )


async def _rank_key(session: AsyncSession, warehouse_id: int, cls: str, rank: int) -> tuple[int, int] | None:
    """(rotation_seq, id) of the member at ``rank``: an OFFSET walk of the class-rotation index."""
    row = (
        await session.execute(
            select(ItemLocation.rotation_seq, ItemLocation.id)
            .where(ItemLocation.warehouse_id == warehouse_id, ItemLocation.abc_class == cls)
            .order_by(ItemLocation.rotation_seq, ItemLocation.id)
            .limit(1)
            .offset(rank)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def _rotation_candidates(
    session: AsyncSession, warehouse_id: int, cls: str, window: RotationWindow
) -> AsyncIterator[Candidate]:
    """The members whose slot is due today, with their ranks, read as one range of the rotation index."""
    ranks = window.due_ranks()
    if not ranks:
        return
    lo = await _rank_key(session, warehouse_id, cls, ranks.start)
    hi = await _rank_key(session, warehouse_id, cls, ranks.stop - 1)
    if lo is None or hi is None:
        return
    key = tuple_(ItemLocation.rotation_seq, ItemLocation.id)
    stmt = (
        select(*_columns())
        .where(
            ItemLocation.warehouse_id == warehouse_id,
            ItemLocation.abc_class == cls,
            key >= tuple_(literal(lo[0]), literal(lo[1])),
            key <= tuple_(literal(hi[0]), literal(hi[1])),
        )
        .order_by(ItemLocation.rotation_seq, ItemLocation.id)
    )
    rank = ranks.start
    result = await session.stream(stmt.execution_options(yield_per=BATCH))
    async for part in result.partitions():
        for r in part:
            yield _candidate(r, rank)
            rank += 1


def _trigger_queries(warehouse_id: int, now: datetime, rules: Rules) -> list[Select[Any]]:
    """Rows that may fire a trigger. Each WHERE clause is a superset of the pure planner's conditions; the
    planner decides. Discretionary triggers (dormant, turnover) are read only up to the daily cap."""
    il = ItemLocation
    urgent = [
        il.qty < 0,
        il.last_miss_at >= now - timedelta(days=rules.inaccurate_days),
        exists().where(CountRequest.item_location_id == il.id, CountRequest.planned_on.is_(None)),
    ]
    if rules.zero_confirm:
        urgent.append(and_(il.qty == 0, il.last_movement_at >= now - timedelta(days=ZERO_RECENT_DAYS)))
    queries = [select(*_columns()).where(il.warehouse_id == warehouse_id, or_(*urgent))]
    dormant_since = now - timedelta(days=rules.dormant_days)
    discretionary = [
        and_(
            il.qty != 0,
            il.last_movement_at < dormant_since,
            or_(il.last_counted_at.is_(None), il.last_counted_at < dormant_since),
        )
    ]
    if rules.turnover_threshold > 0:
        discretionary.append(
            and_(il.last_counted_at.is_not(None), il.turnover_value >= rules.turnover_threshold)
        )
    if rules.discretionary_daily_cap > 0:
        no_open_task = ~_busy(il)
        queries.append(
            select(*_columns())
            .where(il.warehouse_id == warehouse_id, or_(*discretionary), no_open_task)
            .order_by(il.rotation_seq, il.id)
            .limit(rules.discretionary_daily_cap * 2)
        )
    return queries


def _chunks(seq: Sequence[Any], n: int = BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


async def _decide_warehouse(
    session: AsyncSession, planner: RotationPlanner, warehouse_id: int
) -> list[Decision]:
    """Feed the planner the day's rotation ranges, then the trigger candidates; keep only decisions."""
    decisions: list[Decision] = []
    seen: set[int] = set()
    for (_, cls), window in sorted(planner.windows.items()):
        batch: list[Candidate] = []
        async for c in _rotation_candidates(session, warehouse_id, cls, window):
            seen.add(c.item_location_id)
            batch.append(c)
            if len(batch) >= BATCH:
                decisions.extend(planner.feed(batch))
                batch = []
        decisions.extend(planner.feed(batch))
    for query in _trigger_queries(warehouse_id, planner.now, planner.rules):
        rows = (await session.execute(query)).all()
        decisions.extend(planner.feed(_candidate(r) for r in rows if r[0] not in seen))
        seen.update(r[0] for r in rows)
    return decisions


# The day's decisions are bulk-loaded (COPY on PostgreSQL) into a temporary table, then applied with three
# set-based statements. That keeps the write close to a plain INSERT ... SELECT, whatever the plan's size.
STAGING = staging_table(
    "plan_staging",
    Column("item_location_id", Integer, nullable=False),
    Column("item_id", Integer),
    Column("location_id", Integer),
    Column("warehouse_id", Integer),
    Column("abc_class", String(1)),
    Column("reason", String(32)),  # NULL: nothing to insert, only the rotation mark
    Column("priority", Integer),
    Column("cycle_key", String(40)),
    Column("due_date", Date),
    Column("est_minutes", Float),
    Column("request_id", Integer),
    Column("satisfies_cycle", String(32)),
)


async def _write(session: AsyncSession, day: date, decisions: list[Decision], now: datetime) -> int:
    """Insert the proposed tasks (nothing twice) and record what the rotation has covered."""
    if not decisions:
        return 0
    rows: list[tuple[Any, ...]] = []
    for d in decisions:
        p = d.proposal
        if p is None:
            rows.append((d.item_location_id, *([None] * 10), d.satisfies_cycle))
        else:
            rows.append(
                (
                    p.item_location_id, p.item_id, p.location_id, p.warehouse_id, p.abc_class,
                    p.reason.value, p.priority, p.cycle_key, p.due_date, p.est_minutes, p.request_id,
                    d.satisfies_cycle,
                )
            )  # fmt: skip
    async with staged(session, STAGING, rows):
        return await _apply_staged(session, day, now)


async def _apply_staged(session: AsyncSession, day: date, now: datetime) -> int:
    st = STAGING.c
    proposed = st.reason.is_not(None)
    insert_tasks = (
        dialect_insert(session, CountTask)
        .from_select(
            [
                "plan_date", "due_date", "warehouse_id", "location_id", "item_id", "item_location_id",
                "abc_class", "reason", "priority", "status", "est_minutes", "cycle_key", "overdue",
                "request_id", "created_at",
            ],
            select(
                literal(day, Date), st.due_date, st.warehouse_id, st.location_id, st.item_id,
                st.item_location_id, st.abc_class, st.reason, st.priority,
                literal(TaskStatus.OPEN.value, String), st.est_minutes, st.cycle_key, literal(False, Boolean),
                st.request_id, literal(now, UTCDateTime),
            ).where(proposed).order_by(st.warehouse_id, st.item_location_id),
        )
        .on_conflict_do_nothing()
    )  # fmt: skip
    created = (await session.execute(insert_tasks)).rowcount  # type: ignore[attr-defined]
    # one write per item-location row (PostgreSQL writes a new row version per UPDATE)
    await session.execute(
        update(ItemLocation)
        .where(ItemLocation.id == st.item_location_id)
        .values(
            last_rotation_cycle=func.coalesce(st.satisfies_cycle, ItemLocation.last_rotation_cycle),
            last_planned_on=case((proposed, literal(day, Date)), else_=ItemLocation.last_planned_on),
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(CountRequest)
        .where(CountRequest.id == st.request_id, st.request_id.is_not(None))
        .values(planned_on=day)
        .execution_options(synchronize_session=False)
    )
    return int(created or 0)


async def _mark_overdue(
    session: AsyncSession, warehouse_id: int, day: date, cal: WorkCalendar, late: int
) -> int:
    """Open tasks more than ``late`` working days past their due date become overdue."""
    cutoff = cal.add_working_days(day, -late) if late else day
    result = await session.execute(
        update(CountTask)
        .where(
            CountTask.warehouse_id == warehouse_id,
            CountTask.status.in_(OPEN_STATUSES),
            CountTask.overdue.is_(False),
            CountTask.due_date < cutoff,
        )
        .values(overdue=True)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- assignment


async def _counters(session: AsyncSession, day: date) -> list[Counter]:
    users = (await session.execute(select(User).where(User.active.is_(True)))).scalars().all()
    away = set(
        (
            await session.execute(select(UserUnavailability.user_id).where(UserUnavailability.day == day))
        ).scalars()
    )
    zones: dict[int, set[int]] = defaultdict(set)
    for uid, zid in (await session.execute(select(UserZone.user_id, UserZone.zone_id))).all():
        zones[uid].add(zid)
    used = dict(
        (
            await session.execute(
                select(CountTask.assignee_id, func.sum(CountTask.est_minutes))
                .where(
                    CountTask.assignee_id.is_not(None),
                    CountTask.status.in_(OPEN_STATUSES),
                    CountTask.plan_date <= day,
                )
                .group_by(CountTask.assignee_id)
            )
        ).all()
    )
    return [
        Counter(
            u.id,
            u.employee_no,
            float(u.capacity_minutes),
            u.team_id,
            frozenset(zones.get(u.id, ())),
            available=u.id not in away,
            used_minutes=float(used.get(u.id) or 0.0) if u.id not in away else 0.0,
        )
        for u in users
        if "counter" in (u.roles or [])
    ]


async def _assign(session: AsyncSession, warehouse_id: int, day: date) -> tuple[int, int]:
    """Assign open, due tasks that have nobody (or somebody away today). Returns (assigned, unassigned)."""
    counters = await _counters(session, day)
    away = [c.id for c in counters if not c.available]
    open_due = and_(
        CountTask.warehouse_id == warehouse_id,
        CountTask.status == TaskStatus.OPEN,
        CountTask.plan_date <= day,
    )
    if away:
        # work of counters who are away today spills to their teammates
        await session.execute(
            update(CountTask).where(open_due, CountTask.assignee_id.in_(away)).values(assignee_id=None)
        )
    rows = (
        await session.execute(
            _task_select(
                CountTask.id,
                CountTask.priority,
                Location.sequence,
                Location.id,
                CountTask.est_minutes,
                Item.owner_id,
                Location.zone_id,
                Zone.team_id,
                Warehouse.default_team_id,
            )
            .outerjoin(Zone, Zone.id == Location.zone_id)
            .where(open_due, CountTask.assignee_id.is_(None))
        )
    ).all()
    if not rows:
        return 0, 0
    jobs = [Job(r[0], r[1], (r[2] or 0, r[3]), float(r[4]), r[5], r[6], r[7], r[8]) for r in rows]
    result = assign(jobs, counters)
    by_user: dict[int, list[int]] = defaultdict(list)
    for job_id, user_id in result.assignee.items():
        by_user[user_id].append(job_id)
    for user_id, ids in by_user.items():
        for chunk in _chunks(sorted(ids)):
            # "assignee IS NULL": a concurrent planner's assignment is never overwritten
            await session.execute(
                update(CountTask)
                .where(CountTask.id.in_(chunk), CountTask.assignee_id.is_(None))
                .values(assignee_id=user_id)
            )
    return len(result.assignee), len(result.unassigned)


# ------------------------------------------------------------------------------------------- use cases


def rules_from(settings: Settings, policies: dict[str, tuple[int, float]]) -> Rules:
    p = settings.planning
    return Rules(
        dormant_days=p.dormant_days,
        turnover_threshold=p.turnover_threshold,
        zero_confirm=p.zero_confirm,
        inaccurate_days=p.inaccurate_days,
        trigger_minutes_factor=p.trigger_minutes_factor,
        discretionary_daily_cap=p.discretionary_daily_cap,
        minutes_per_task={c: m for c, (_, m) in policies.items()},
    )


async def _warehouses(session: AsyncSession, code: str | None) -> list[Warehouse]:
    stmt = select(Warehouse).order_by(Warehouse.code)
    if code is not None:
        stmt = stmt.where(Warehouse.code == code)
    found = list((await session.execute(stmt)).scalars())
    if code is not None and not found:
        known = ", ".join((await session.execute(select(Warehouse.code).order_by(Warehouse.code))).scalars())
        raise PlanningError(
            f"没有仓库 {code!r}（已有：{known or '无'}） / no warehouse {code!r} (known: {known or 'none'})"
        )
    return found


async def plan_day(
    session: AsyncSession, settings: Settings, day: date, *, now: datetime, warehouse_code: str | None = None
) -> PlanResult:
    """Plan ``day``: new tasks, overdue carry-overs, assignment. Idempotent; never commits. ``now`` is when the
    plan is made (the tasks' ``created_at``); what is due is decided by ``day`` alone."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(PLAN_LOCK_KEY)))
    cal = await load_calendar(session, settings)
    result = PlanResult(day, cal.is_working_day(day))
    warehouses = await _warehouses(session, warehouse_code)
    unassigned_by_wh: dict[str, int] = {}
    if not result.working_day:
        name = cal.holiday_name(day)
        result.warnings.append(
            f"{day} 不是工作日{f'（{name}）' if name else ''}，不安排盘点 / {day} is not a working day; nothing planned"
        )
    else:
        tz = settings.tz
        day_start = datetime.combine(day, time(0), tz).astimezone(UTC)
        zero_due = cal.add_working_days(day, 1)
        await apply_pins(session, now)
        await refresh_item_location_classes(session, only_missing=True)
        for wh in warehouses:
            policies = await _policies(session, settings, wh.id)
            windows = await _windows(session, wh.id, day, cal, policies)
            planner = RotationPlanner(
                windows, day, day_start, rules_from(settings, policies), zero_due, count_ranks=False
            )
            # the daily cap counts what an earlier run of this day already planned
            planner.discretionary[wh.id] = (
                await session.execute(
                    select(func.count()).where(
                        CountTask.warehouse_id == wh.id,
                        CountTask.plan_date == day,
                        CountTask.reason.in_(DISCRETIONARY),
                    )
                )
            ).scalar_one()
            decisions = await _decide_warehouse(session, planner, wh.id)
            created = await _write(session, day, decisions, now)
            result.created += created
            result.overdue += await _mark_overdue(
                session, wh.id, day, cal, settings.planning.overdue_after_days
            )
            _, unassigned = await _assign(session, wh.id, day)
            result.unassigned += unassigned
            if unassigned:
                unassigned_by_wh[wh.code] = unassigned
            session.add(
                PlanRun(
                    plan_date=day,
                    warehouse_id=wh.id,
                    started_at=now,
                    created_tasks=created,
                    stats={"members": {c: w.members for (_, c), w in windows.items()}},
                )
            )
    await session.flush()
    result.tasks = await day_tasks(session, day, [w.id for w in warehouses])
    for t in result.tasks:
        result.by_reason[t.reason.value] = result.by_reason.get(t.reason.value, 0) + 1
        result.by_class[t.abc_class] = result.by_class.get(t.abc_class, 0) + 1
        if t.plan_date < day:
            result.carried_over += 1
    result.warnings.extend(await _unassigned_warnings(session, unassigned_by_wh))
    return result


@dataclass(frozen=True, slots=True)
class Unassigned:
    """Open work of one warehouse that nobody has, and why."""

    warehouse_id: int
    code: str
    tasks: int
    nobody: bool  # no counter can be given this warehouse's work at all (else: beyond today's capacity)


async def unassigned_work(session: AsyncSession, day: date) -> list[Unassigned]:
    """Per warehouse (by code), the open tasks due by ``day`` that nobody is assigned, with the cause."""
    from core.importing import warehouses_without_counters

    rows = (
        await session.execute(
            select(Warehouse.id, Warehouse.code, func.count())
            .join(CountTask, CountTask.warehouse_id == Warehouse.id)
            .where(
                CountTask.assignee_id.is_(None),
                CountTask.status.in_(OPEN_STATUSES),
                CountTask.plan_date <= day,
            )
            .group_by(Warehouse.id, Warehouse.code)
            .order_by(Warehouse.code)
        )
    ).all()
    if not rows:
        return []
    nobody = set(await warehouses_without_counters(session))
    return [Unassigned(wid, code, int(n), code in nobody) for wid, code, n in rows]


async def _unassigned_warnings(session: AsyncSession, unassigned: dict[str, int]) -> list[str]:
    """Why tasks stayed unassigned, by its real cause: a warehouse nobody can be given work in (no counter in its
    default team, its zones' teams or covering its zones) is named; the rest exceeded the counters' capacity."""
    if not unassigned:
        return []
    from core.importing import warehouses_without_counters

    nobody = set(await warehouses_without_counters(session))
    out = [
        f"仓库 {code} 没有可分配的盘点员，{n} 个任务未分配：请给盘点员填写团队或库区，或执行 pandian warehouse "
        f"set-team {code} --team 班组名 / warehouse {code} has no counter who can be given its work, {n} task(s) "
        f"unassigned: give counters a team or zones, or run pandian warehouse set-team {code} --team TEAM"
        for code, n in sorted(unassigned.items())
        if code in nobody
    ]
    over = sum(n for code, n in unassigned.items() if code not in nobody)
    if over:
        out.append(f"{over} 个任务超出可用人员产能，未分配 / {over} tasks exceed the available counters' capacity "
                   "and are unassigned")  # fmt: skip
    return out


def _task_select(*columns: Any) -> Select[Any]:
    """Tasks with their location, item and warehouse joined."""
    return (
        select(*columns)
        .select_from(CountTask)
        .join(Location, Location.id == CountTask.location_id)
        .join(Item, Item.id == CountTask.item_id)
        .join(Warehouse, Warehouse.id == CountTask.warehouse_id)
    )


async def day_tasks(session: AsyncSession, day: date, warehouse_ids: Iterable[int]) -> list[PlanRow]:
    """Open tasks due by ``day`` (new and carried over), by assignee, urgency and walking order."""
    rows = (
        await session.execute(
            _task_select(
                CountTask.id,
                CountTask.plan_date,
                CountTask.due_date,
                Warehouse.code,
                Location.code,
                Item.sku,
                Item.name,
                CountTask.abc_class,
                CountTask.reason,
                CountTask.priority,
                User.employee_no,
                User.name,
                CountTask.overdue,
                CountTask.est_minutes,
                CountTask.status,
            )
            .outerjoin(User, User.id == CountTask.assignee_id)
            .where(
                CountTask.warehouse_id.in_(list(warehouse_ids)),
                CountTask.status.in_(OPEN_STATUSES),
                CountTask.plan_date <= day,
            )
            .order_by(
                Warehouse.code,
                User.employee_no.is_(None),
                User.employee_no,
                CountTask.priority,
                Location.sequence,
                Location.code,
                Item.sku,
            )
        )
    ).all()
    return [PlanRow(*r) for r in rows]  # columns in field order


async def request_count(
    session: AsyncSession,
    item_location_id: int,
    *,
    requested_by_id: int | None = None,
    note: str | None = None,
    now: datetime,
) -> CountRequest:
    """An ad-hoc count ("picker says it's not there"); the next plan turns it into a task, first in line.

    One request per item-location: while a request waits to be planned, asking again adds the new note to it
    (each note kept, oldest first) and returns that request; its ``id`` says which one it was. ``now`` (aware)
    is when it was asked."""
    waiting = (
        await session.execute(
            select(CountRequest)
            .where(CountRequest.item_location_id == item_location_id, CountRequest.planned_on.is_(None))
            .order_by(CountRequest.id)
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if waiting is not None:
        said = (note or "").strip()
        notes = [n for n in (waiting.note or "").split("\n") if n]
        if said and said not in notes:
            waiting.note = "\n".join([*notes, said])
        if waiting.requested_by_id is None:
            waiting.requested_by_id = requested_by_id
        await session.flush()
        return waiting
    req = CountRequest(item_location_id=item_location_id, requested_by_id=requested_by_id, note=note,
                       requested_at=now)  # fmt: skip
    session.add(req)
    await session.flush()
    return req
