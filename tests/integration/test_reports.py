"""Reports on a small company run through the whole workflow: the query functions and ``pandian report``."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.cli import main
from core import analytics
from core.analytics import ReportError, ReportFilter
from core.config import Settings
from core.db import make_engine, make_sessionmaker
from core.enums import ApprovalDecision, TaskStatus
from core.models import CountTask, Item, ItemLocation, User
from core.scheduling.service import plan_day
from core.variance import service as wf
from tests.clock import morning
from tests.integration.builders import PCT_TIERS, PCT_TIERS_ENV, build_company

SETTINGS = Settings(database_url="sqlite://", tolerance=PCT_TIERS)
MON, TUE, NEXT_MON = date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 7)
EARLY = datetime(2026, 11, 29, 17, 0, tzinfo=UTC)  # Monday 01:00 in Shanghai, still Sunday in UTC
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
T1 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # Tuesday 10:00
T7 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)  # the next Monday 11:00 (ISO week 2026-W50)
M = timedelta(minutes=1)
H = timedelta(hours=1)


@dataclass
class Scenario:
    c1: str  # the first counter's label, "盘点员1 (WH1-E01)"
    open_recount: int  # variance waiting for a recount
    awaiting_finance: int  # variance waiting for finance
    recount_counter: str  # who is to recount the first one


def label(u: User) -> str:
    return f"{u.name} ({u.employee_no})"


async def build(s: AsyncSession) -> Scenario:
    """Seven first counts (three hits), two adjustments (-300 and +10), two open variances.

    ===  =====  ====  =======  =============================================================
    id   class  book  counted  what happens
    ===  =====  ====  =======  =============================================================
    m1   A      10    10       hit (counted at 01:00 local, still the day before in UTC)
    m2   A      10    7        cost 100; recount confirms; shipping; approved: loss -300
    m3   A      10    3        the recount finds 10: first count overturned, closed
    m4   A      10    11       waiting for its blind recount (open)
    t1   A      10    5        recount confirms; receiving; first approval done (open, finance)
    tb   B      100   101      within tolerance: hit, auto-adjusted +10
    t2   A      10    4 → 10   two partial counts, the first superseded; hit (week W50)
    ===  =====  ====  =======  =============================================================
    """
    co = await build_company(s, items=40, classes="AB", counters=3)
    team = co.teams[0].id
    s.add_all([
        User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=team),
        User(employee_no="F01", name="财务", roles=["finance"], team_id=team),
    ])  # fmt: skip
    await s.flush()
    await plan_day(s, SETTINGS, MON, now=morning(MON))
    await plan_day(s, SETTINGS, TUE, now=morning(TUE))
    users = {u.employee_no: u for u in (await s.execute(select(User))).scalars()}
    c1, c2, c3, sup, sup2, fin = (
        users[k] for k in ("WH1-E01", "WH1-E02", "WH1-E03", "WH1-S01", "S02", "F01")
    )
    tasks = list((await s.execute(select(CountTask).order_by(CountTask.id))).scalars())
    mon = [t for t in tasks if t.plan_date == MON and t.abc_class == "A"]
    tue = [t for t in tasks if t.plan_date == TUE and t.abc_class == "A"]
    tue_b = [t for t in tasks if t.plan_date == TUE and t.abc_class == "B"]
    assert len(mon) >= 4 and len(tue) >= 2 and tue_b, [(t.plan_date, t.abc_class) for t in tasks]
    m1, m2, m3, m4 = mon[:4]
    t1, t2, tb = tue[0], tue[1], tue_b[0]
    item = await s.get(Item, m2.item_id)
    il = await s.get(ItemLocation, tb.item_location_id)
    assert item is not None and il is not None
    item.unit_cost, il.qty = D(100), D(100)
    await s.flush()

    async def counted(task: CountTask, who: User, text: str, at: datetime) -> wf.CountResult:
        return await wf.record_count(s, SETTINGS, task_id=task.id, counter_id=who.id, text=text, counted_at=at,
                                     now=at)  # fmt: skip

    async def recounted(r: wf.CountResult, text: str, at: datetime) -> tuple[wf.CountResult, User]:
        assert r.recount_task is not None and r.recount_task.assignee_id is not None
        who = await s.get(User, r.recount_task.assignee_id)
        assert who is not None
        return await wf.record_count(s, SETTINGS, task_id=r.recount_task.id, counter_id=who.id, text=text,
                                     counted_at=at, now=at), who  # fmt: skip

    await counted(m1, c1, "10", EARLY)
    r2 = await counted(m2, c1, "7", T0)
    await recounted(r2, "7", T0 + 30 * M)
    assert r2.variance is not None
    v2 = r2.variance.id
    await wf.review_variance(
        s, SETTINGS, variance_id=v2, reviewer_id=sup.id, reason_code="shipping", now=T0 + H
    )
    await wf.decide(s, SETTINGS, variance_id=v2, actor_id=sup2.id, decision=ApprovalDecision.APPROVED,
                    now=T0 + 2 * H)  # fmt: skip
    final = await wf.decide(s, SETTINGS, variance_id=v2, actor_id=fin.id, decision=ApprovalDecision.APPROVED,
                            now=T0 + 3 * H)  # fmt: skip
    assert final.final and final.variance.state == "adjusted"
    r3 = await counted(m3, c1, "3", T0 + 5 * M)
    closed, _ = await recounted(r3, "10", T0 + 35 * M)
    assert closed.variance is not None and closed.variance.state == "closed_count_error"
    r4 = await counted(m4, c1, "11", T0 + 10 * M)
    assert r4.variance is not None and r4.recount_task is not None and r4.recount_task.assignee_id is not None
    waiting = await s.get(User, r4.recount_task.assignee_id)
    assert waiting is not None

    r5 = await counted(t1, c1, "5", T1)
    await recounted(r5, "5", T1 + 20 * M)
    assert r5.variance is not None
    v5 = r5.variance.id
    await wf.review_variance(s, SETTINGS, variance_id=v5, reviewer_id=sup.id, reason_code="receiving",
                             now=T1 + H)  # fmt: skip
    await wf.decide(s, SETTINGS, variance_id=v5, actor_id=sup2.id, decision=ApprovalDecision.APPROVED,
                    now=T1 + 2 * H)  # fmt: skip
    auto = await counted(tb, c2, "101", T1 + 10 * M)
    assert auto.variance is not None and auto.variance.state == "adjusted" and auto.variance.hit

    await wf.record_count(s, SETTINGS, task_id=t2.id, counter_id=c3.id, text="4", partial=True, counted_at=T7,
                          now=T7)  # fmt: skip
    await wf.record_count(s, SETTINGS, task_id=t2.id, counter_id=c3.id, text="10", partial=True,
                          counted_at=T7 + 2 * M, now=T7 + 2 * M)  # fmt: skip
    done = await wf.finish_partial_count(s, SETTINGS, task_id=t2.id, actor_id=c3.id, now=T7 + 3 * M)
    assert done.variance is not None and done.variance.hit
    # the next Monday's plan flags what is still open and late
    await plan_day(s, SETTINGS, NEXT_MON, now=morning(NEXT_MON))
    await s.commit()
    return Scenario(label(c1), r4.variance.id, v5, label(waiting))


async def test_accuracy(session: AsyncSession) -> None:
    await build(session)
    rows = {
        r.group: r for r in await analytics.accuracy_report(session, SETTINGS, ReportFilter(MON, NEXT_MON))
    }
    assert list(rows) == ["class=A", "class=B", "warehouse=WH1", "week=2026-W49", "week=2026-W50", "total"]
    total = rows["total"]
    assert (total.counts, total.hits) == (7, 3) and total.hit_rate == pytest.approx(3 / 7)
    # Σ|counted − book| = 0+3+7+1+5+1+0 = 17 over Σ book 160; in value 440 over 2,500
    assert total.unit_accuracy == pytest.approx(1 - 17 / 160)
    assert total.value_accuracy == pytest.approx(1 - 440 / 2500)
    assert (total.gross_adjustment, total.net_adjustment) == (D(310), D(-290))
    a, b = rows["class=A"], rows["class=B"]
    assert (a.counts, a.hits, a.gross_adjustment, a.net_adjustment) == (6, 2, D(300), D(-300))
    assert a.unit_accuracy == pytest.approx(1 - 16 / 60) and a.value_accuracy == pytest.approx(1 - 430 / 1500)
    assert (b.counts, b.hits, b.unit_accuracy, b.net_adjustment) == (1, 1, pytest.approx(0.99), D(10))
    assert (rows["week=2026-W49"].counts, rows["week=2026-W50"].counts) == (6, 1)
    assert rows["warehouse=WH1"] == replace(total, group="warehouse=WH1")

    # Monday only, in local time: the 01:00 count is Monday's although it is Sunday in UTC
    monday = await analytics.accuracy_report(session, SETTINGS, ReportFilter(MON, MON))
    assert [r.group for r in monday] == ["class=A", "warehouse=WH1", "week=2026-W49", "total"]
    assert (monday[-1].counts, monday[-1].hits, monday[-1].gross_adjustment) == (4, 1, D(300))
    sunday = await analytics.accuracy_report(
        session, SETTINGS, ReportFilter(MON - timedelta(days=1), MON - timedelta(days=1))
    )
    assert sunday[-1].counts == 0 and sunday[-1].hit_rate is None
    only_b = await analytics.accuracy_report(session, SETTINGS, ReportFilter(MON, NEXT_MON, "WH1", "b"))
    assert [(r.group, r.counts, r.net_adjustment) for r in only_b][-1] == ("total", 1, D(10))


async def test_progress(session: AsyncSession) -> None:
    await build(session)
    rows = {r.group: r for r in await analytics.progress_report(session, SETTINGS, ReportFilter(MON, TUE))}
    tasks = list(
        (await session.execute(select(CountTask).where(CountTask.plan_date.between(MON, TUE)))).scalars()
    )
    total = rows["total"]
    assert total.planned == len(tasks)
    assert total.done == sum(1 for t in tasks if t.status == TaskStatus.DONE) == 10
    assert total.overdue == sum(1 for t in tasks if t.overdue) > 0
    assert total.open == total.planned - total.done
    # Monday: 4 planned + 3 recounts, of which m4's recount is still open (and overdue by next Monday);
    # Tuesday: 5 planned + 1 recount, two rotation tasks never counted
    assert (total.planned, total.done, total.open, total.overdue) == (13, 10, 3, 3)
    mon, tue = rows[f"day={MON}"], rows[f"day={TUE}"]
    assert (mon.planned, mon.done, mon.open, mon.overdue) == (7, 6, 1, 1)
    assert (tue.planned, tue.done, tue.open, tue.overdue) == (6, 4, 2, 2)
    assert tue.done_rate == pytest.approx(4 / 6)
    counters = [r for g, r in rows.items() if g.startswith("counter=")]
    assert sum(r.planned for r in counters) == total.planned
    for u in (await session.execute(select(User))).scalars():
        mine = [t for t in tasks if t.assignee_id == u.id]
        if mine:
            r = rows[f"counter={label(u)}"]
            assert (r.planned, r.done) == (len(mine), sum(1 for t in mine if t.status == TaskStatus.DONE))
    # class A items sit in zone A, class B in zone B (the builder alternates both)
    assert (rows["zone=WH1/A"].planned, rows["zone=WH1/B"].planned) == (12, 1)
    assert sum(1 for t in tasks if t.abc_class == "B") == 1


async def test_open_variances(session: AsyncSession) -> None:
    sc = await build(session)
    now = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    rows = await analytics.open_variances_report(session, SETTINGS, ReportFilter(), now=now)
    assert [r.id for r in rows] == [sc.open_recount, sc.awaiting_finance]  # oldest first
    recount, finance = rows
    assert (recount.state, recount.next_role, recount.next_person) == (
        "recount_pending",
        "counter",
        sc.recount_counter,
    )
    assert recount.age_hours == pytest.approx((now - (T0 + 10 * M)).total_seconds() / 3600, abs=0.05)
    assert (recount.qty, recount.value, recount.abc_class) == (D(1), D(10), "A")
    assert (finance.state, finance.next_role, finance.next_role_zh) == ("pending_approval", "finance", "财务")
    assert finance.age_hours == 168.0 and finance.value == D(-50) and finance.severity == "major"
    # the period filters on the time of the count
    tuesday = await analytics.open_variances_report(session, SETTINGS, ReportFilter(TUE, TUE), now=now)
    assert [r.id for r in tuesday] == [sc.awaiting_finance]


async def test_reasons_and_counters(session: AsyncSession) -> None:
    sc = await build(session)
    reasons = await analytics.reasons_report(session, SETTINGS, ReportFilter(MON, NEXT_MON))
    assert [(r.reason_code, r.reason_zh, r.count, r.value) for r in reasons] == [
        ("shipping", "发货环节错漏", 1, D(300)),
        ("receiving", "收货环节错漏", 1, D(50)),
    ]
    assert reasons[0].share == pytest.approx(300 / 350) and reasons[-1].cumulative_share == 1.0

    rows = {
        r.counter: r for r in await analytics.counters_report(session, SETTINGS, ReportFilter(MON, NEXT_MON))
    }
    c1 = rows[sc.c1]
    # Monday 01:00, 10:00, 10:05, 10:10 (the 9-hour gap is dropped), Tuesday 10:00 (alone that day)
    assert (c1.counts, c1.recounts, c1.timed_counts, c1.avg_minutes) == (5, 0, 2, 5.0)
    assert (c1.overturned, c1.overturn_rate) == (1, 0.2)
    c3 = rows["盘点员3 (WH1-E03)"]
    assert c3.counts - c3.recounts == 1  # its first partial count was superseded by the second
    assert sum(r.counts for r in rows.values()) == 10  # 7 first counts + 3 recounts
    assert sum(r.recounts for r in rows.values()) == 3


async def test_bad_filters(session: AsyncSession) -> None:
    await build_company(session, items=2)
    with pytest.raises(ReportError) as unknown:
        await analytics.accuracy_report(session, SETTINGS, ReportFilter(warehouse="NOPE"))
    assert "NOPE" in unknown.value.zh and "WH1" in unknown.value.en
    with pytest.raises(ReportError):
        await analytics.counters_report(session, SETTINGS, ReportFilter(TUE, MON))


# ------------------------------------------------------------------------------------------------- CLI


def seed(url: str) -> Scenario:
    async def go() -> Scenario:
        eng = make_engine(url)
        try:
            async with make_sessionmaker(eng)() as s:
                return await build(s)
        finally:
            await eng.dispose()

    return asyncio.run(go())


def test_cli_reports_in_three_formats(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    sc = seed(database_url)
    cli = CliRunner(env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250", **PCT_TIERS_ENV})

    def ok(*args: str) -> str:
        r = cli.invoke(main, list(args))
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.output

    period = ("--from", "2026-11-30", "--to", "2026-12-07")
    table = ok("report", "accuracy", *period)
    assert "盘点准确率" in table and "week=2026-W50" in table and "42.9%" in table and "-290.00" in table

    data = json.loads(ok("report", "accuracy", *period, "--format", "json"))
    total = data[-1]
    assert total["group"] == "total" and (total["counts"], total["hits"]) == (7, 3)
    assert total["unit_accuracy"] == pytest.approx(1 - 17 / 160) and total["gross_adjustment"] == 310.0

    out = ok("report", "reasons", *period, "--format", "csv")
    assert out.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(out.lstrip("\ufeff"))))
    assert rows[0][:3] == ["原因 reason", "说明", "次数 count"]
    assert rows[1] == ["shipping", "发货环节错漏", "1", "300.00", "0.8571", "0.8571"]
    assert rows[2] == ["receiving", "收货环节错漏", "1", "50.00", "0.1429", "1.0000"]

    file = tmp_path / "counters.csv"
    ok("report", "counters", *period, "--format", "csv", "--out", str(file))
    assert file.read_bytes().startswith(b"\xef\xbb\xbf")
    by_counter = {r[0]: r for r in csv.reader(io.StringIO(file.read_text(encoding="utf-8-sig")))}
    assert by_counter[sc.c1][1:] == ["5", "0", "5.00", "2", "1", "0.2000"]

    variances = json.loads(ok("report", "variances", "--format", "json"))  # every open one
    assert [(v["id"], v["next_role"]) for v in variances] == [
        (sc.open_recount, "counter"),
        (sc.awaiting_finance, "finance"),
    ]
    assert variances[0]["next_person"] == sc.recount_counter and variances[1]["value"] == -50.0
    assert "待审批" in ok("report", "variances", "--class", "A")

    progress = json.loads(
        ok("report", "progress", "--from", "2026-11-30", "--to", "2026-12-01", "--format", "json")
    )
    assert progress[-1]["group"] == "total" and progress[-1]["done"] == 10
    assert "zone=WH1/A" in ok(
        "report", "progress", "--from", "2026-11-30", "--to", "2026-12-01", "--warehouse", "WH1"
    )


def test_cli_report_bad_input(engine: AsyncEngine, database_url: str) -> None:
    asyncio.run(_seed_small(database_url))
    cli = CliRunner(env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250", **PCT_TIERS_ENV})
    late = cli.invoke(main, ["report", "accuracy", "--from", "2026-12-02", "--to", "2026-12-01"])
    assert late.exit_code == 1 and "晚于" in late.output and "after" in late.output
    wh = cli.invoke(main, ["report", "progress", "--warehouse", "NOPE"])
    assert wh.exit_code == 1 and "NOPE" in wh.output and "WH1" in wh.output
    cls = cli.invoke(main, ["report", "reasons", "--class", "D"])
    assert cls.exit_code == 1 and "A、B、C" in cls.output and "A, B or C" in cls.output
    day = cli.invoke(main, ["report", "counters", "--from", "30/11/2026"])
    assert day.exit_code == 1 and "YYYY-MM-DD" in day.output
    empty = cli.invoke(main, ["report", "variances", "--format", "json"])
    assert empty.exit_code == 0 and json.loads(empty.output) == []


async def _seed_small(url: str) -> None:
    eng = make_engine(url)
    try:
        async with make_sessionmaker(eng)() as s:
            await build_company(s, items=2)
            await s.commit()
    finally:
        await eng.dispose()
