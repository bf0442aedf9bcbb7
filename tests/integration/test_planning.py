"""plan_day on a real database: idempotency, rotation over a cycle, triggers, carry-over, assignment."""

from __future__ import annotations

from collections import Counter as Tally
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.calendar import WorkCalendar
from core.config import Settings
from core.enums import TaskReason, TaskStatus
from core.models import CalendarOverride, CountTask, ItemLocation, UserUnavailability
from core.scheduling.service import PlanningError, plan_day, request_count
from tests.clock import morning
from tests.integration.builders import build_company

MONDAY = date(2026, 11, 30)
WEEK = [date(2026, 11, 30 + i) if i == 0 else date(2026, 12, i) for i in range(5)]  # Mon..Fri


@pytest.fixture
def settings() -> Settings:
    return Settings(database_url="sqlite://")


async def count_tasks(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(CountTask))).scalar_one()


async def test_plan_twice_changes_nothing(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=50)
    first = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    await session.commit()
    assert first.created == 10  # 50 A items over 5 working days
    snapshot = [(t.task_id, t.assignee) for t in first.tasks]
    second = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    await session.commit()
    assert second.created == 0 and await count_tasks(session) == 10
    assert [(t.task_id, t.assignee) for t in second.tasks] == snapshot  # nothing reshuffled


async def test_week_counts_every_a_item_once_evenly(session: AsyncSession, settings: Settings) -> None:
    co = await build_company(session, items=53)
    for d in WEEK:
        await plan_day(session, settings, d, now=morning(d))
        await session.execute(
            update(CountTask).where(CountTask.plan_date == d).values(status=TaskStatus.DONE)
        )
        await session.commit()
    rows = (await session.execute(select(CountTask.item_location_id, CountTask.plan_date))).all()
    assert sorted(r[0] for r in rows) == sorted(il.id for il in co.item_locations)
    per_day = Tally(r[1] for r in rows)
    assert set(per_day) == set(WEEK) and max(per_day.values()) - min(per_day.values()) <= 1
    # walking order: each day's tasks are one contiguous stretch of the rotation
    seq = {il.id: il.rotation_seq for il in co.item_locations}
    for d in WEEK:
        s = sorted(seq[i] for i, day in rows if day == d)
        assert s == list(range(s[0], s[0] + len(s)))


async def test_negative_stock_first_and_trigger_recorded(session: AsyncSession, settings: Settings) -> None:
    co = await build_company(session, items=50)
    neg = co.item_locations[-1]
    neg.qty = Decimal(-4)
    await session.flush()
    result = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    negatives = [t for t in result.tasks if t.reason is TaskReason.NEGATIVE]
    assert len(negatives) == 1 and negatives[0].priority == 0
    assert result.by_reason["negative"] == 1
    # first in its counter's list
    mine = [t for t in result.tasks if t.assignee == negatives[0].assignee]
    assert mine[0].reason is TaskReason.NEGATIVE


async def test_missed_tasks_carry_over_and_become_overdue(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=50)
    await plan_day(session, settings, WEEK[0], now=morning(WEEK[0]))
    await session.commit()
    r1 = await plan_day(session, settings, WEEK[1], now=morning(WEEK[1]))
    assert r1.carried_over == 10 and r1.overdue == 0 and len(r1.tasks) == 20
    r3 = await plan_day(
        session, settings, WEEK[3], now=morning(WEEK[3])
    )  # Thursday: Monday's tasks are 3 working days late
    assert r3.overdue == 10
    overdue = [t for t in r3.tasks if t.overdue]
    assert {t.plan_date for t in overdue} == {WEEK[0]}


async def test_unavailable_counter_gets_nothing(session: AsyncSession, settings: Settings) -> None:
    co = await build_company(session, items=50, counters=3)
    away = co.users[0]
    session.add(UserUnavailability(user_id=away.id, day=MONDAY))
    await session.flush()
    result = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    assert away.employee_no not in {t.assignee for t in result.tasks}
    assert all(t.assignee for t in result.tasks)


async def test_capacity_limits_and_warns(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=50, counters=1, capacity=20)  # 20 minutes: five 4-minute A counts
    result = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    assert sum(1 for t in result.tasks if t.assignee) == 5 and result.unassigned == 5
    assert any("产能" in w for w in result.warnings)


async def test_holiday_and_company_override(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=10)
    holiday = await plan_day(session, settings, date(2026, 10, 1), now=morning(date(2026, 10, 1)))
    assert not holiday.working_day and holiday.created == 0 and holiday.warnings
    session.add(CalendarOverride(day=date(2026, 11, 28), working=True, note="周六盘点日"))
    await session.flush()
    saturday = await plan_day(session, settings, date(2026, 11, 28), now=morning(date(2026, 11, 28)))
    assert saturday.working_day and saturday.created > 0


async def test_adhoc_request_planned_once(session: AsyncSession, settings: Settings) -> None:
    co = await build_company(session, items=50)
    target = co.item_locations[-1]
    await request_count(session, target.id, note="拣货员说没货", now=morning(MONDAY) - timedelta(days=3))
    r = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    adhoc = [t for t in r.tasks if t.reason is TaskReason.ADHOC]
    assert len(adhoc) == 1 and adhoc[0].priority == 1
    again = await plan_day(session, settings, WEEK[1], now=morning(WEEK[1]))
    assert sum(1 for t in again.tasks if t.reason is TaskReason.ADHOC) == 1  # carried, not duplicated


async def test_unknown_warehouse_is_a_clear_error(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=5)
    with pytest.raises(PlanningError, match="NOPE"):
        await plan_day(session, settings, MONDAY, now=morning(MONDAY), warehouse_code="NOPE")


async def test_concurrent_planners_do_not_double_plan(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    import asyncio

    async with sessionmaker() as s:
        await build_company(s, items=60)
        await s.commit()

    async def one() -> None:
        async with sessionmaker() as s:
            for _ in range(5):  # SQLite: a writer may find the file busy; PostgreSQL: advisory lock
                try:
                    await plan_day(s, settings, MONDAY, now=morning(MONDAY))
                    await s.commit()
                    return
                except Exception as exc:  # pragma: no cover - depends on timing
                    if "locked" not in str(exc):
                        raise
                    await s.rollback()
                    await asyncio.sleep(0.1)

    await asyncio.gather(one(), one(), one())
    async with sessionmaker() as s:
        rows = (await s.execute(select(CountTask.item_location_id))).scalars().all()
        assert len(rows) == len(set(rows)) == 12
        marked = (
            await s.execute(select(func.count()).where(ItemLocation.last_rotation_cycle.is_not(None)))
        ).scalar_one()
        assert marked == 12


def test_calendar_sanity() -> None:
    assert all(WorkCalendar().is_working_day(d) for d in WEEK)


async def test_discretionary_cap_holds_across_replans(session: AsyncSession) -> None:
    from datetime import UTC, datetime

    from core.config import PlanningSettings

    settings = Settings(database_url="sqlite://", planning=PlanningSettings(discretionary_daily_cap=3))
    co = await build_company(session, items=40, classes="C")
    for il in co.item_locations:  # all dormant: last moved a year ago
        il.last_movement_at = datetime(2025, 11, 1, tzinfo=UTC)
    await session.flush()
    first = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    assert first.by_reason.get("dormant") == 3
    again = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    assert again.created == 0 and again.by_reason.get("dormant") == 3
    tuesday = await plan_day(session, settings, WEEK[1], now=morning(WEEK[1]))
    assert tuesday.by_reason.get("dormant") == 6  # three more, and Monday's three carried over


async def test_two_warehouses_in_one_plan(session: AsyncSession, settings: Settings) -> None:
    await build_company(session, items=10, code="SH01")
    await build_company(session, items=15, code="SZ01")
    result = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    by_wh = Tally(t.warehouse for t in result.tasks)
    assert by_wh == {"SH01": 2, "SZ01": 3}
    assert (await plan_day(session, settings, MONDAY, now=morning(MONDAY))).created == 0
    one = await plan_day(session, settings, MONDAY, now=morning(MONDAY), warehouse_code="SZ01")
    assert {t.warehouse for t in one.tasks} == {"SZ01"}


async def test_nothing_more_is_planned_for_an_item_location_whose_recount_or_variance_is_open(
    session: AsyncSession, settings: Settings
) -> None:
    """A count far off the book opens a blind recount. Planning that day again, or the next, adds no count of
    that item-location (an "inaccurate" trigger went to the very counter being checked); once the variance is
    final, its triggers plan again."""
    from core.enums import TaskReason as R
    from core.models import ItemLocation as IL
    from core.models import Variance
    from core.variance.service import record_count

    await build_company(session, items=50, counters=2)
    first = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    await session.commit()
    task = await session.get(CountTask, first.tasks[0].task_id)
    assert task is not None and task.assignee_id is not None
    il = await session.get(IL, task.item_location_id)
    assert il is not None
    at = morning(MONDAY) + timedelta(hours=2)
    off = str(il.qty + 500)  # far out of tolerance: a recount by someone else
    result = await record_count(session, settings, task_id=task.id, counter_id=task.assignee_id, text=off,
                                counted_at=at, now=at)  # fmt: skip
    await session.commit()
    assert result.recount_task is not None

    async def counts_of_il() -> list[int]:
        return list((await session.execute(select(CountTask.id).where(
            CountTask.item_location_id == il.id, CountTask.reason != R.RECOUNT))).scalars())  # fmt: skip

    again = await plan_day(session, settings, MONDAY, now=at + timedelta(minutes=5))
    assert again.created == 0
    for d in WEEK[1:3]:
        await plan_day(session, settings, d, now=morning(d))
        await session.commit()
        assert await counts_of_il() == [task.id], (
            d
        )  # the first count only: nothing planned beside the recount
    open_tasks = (
        (
            await session.execute(
                select(CountTask).where(
                    CountTask.item_location_id == il.id, CountTask.status.in_(["open", "in_progress"])
                )
            )
        )
        .scalars()
        .all()
    )
    assert [t.reason for t in open_tasks] == [R.RECOUNT]  # the recount alone
    v = (await session.execute(select(Variance).where(Variance.task_id == task.id))).scalar_one()
    assert v.state == "recount_pending"


async def test_a_warehouse_nobody_can_count_is_named_not_blamed_on_capacity(
    session: AsyncSession, settings: Settings
) -> None:
    await build_company(session, items=20, code="WH1")
    await build_company(session, items=20, code="WH2", counters=0)  # its team has a supervisor only
    result = await plan_day(session, settings, MONDAY, now=morning(MONDAY))
    assert result.unassigned > 0
    assert len(result.warnings) == 1, result.warnings
    [said] = result.warnings
    assert said.startswith(f"仓库 WH2 没有可分配的盘点员，{result.unassigned} 个任务未分配")
    assert "pandian warehouse set-team WH2" in said and "产能" not in said
