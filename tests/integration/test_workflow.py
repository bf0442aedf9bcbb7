"""End to end: plan → counts → blind recount by another counter → review → approval (segregation of duties,
a concurrent double decision) → adjustment, on the suite's database."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.audit import trail
from core.config import Settings
from core.enums import ApprovalDecision, MovementType, TaskReason, TaskStatus
from core.models import (
    Adjustment,
    AdjustmentLine,
    ApprovalStep,
    CountEntry,
    CountTask,
    ItemLocation,
    Movement,
    User,
    Variance,
)
from core.scheduling.service import plan_day
from core.variance import service as wf
from tests.clock import morning
from tests.integration.builders import PCT_TIERS, build_company

MONDAY = date(2026, 11, 30)
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SETTINGS = Settings(database_url="sqlite://", tolerance=PCT_TIERS)


async def setup(session: AsyncSession, items: int = 25) -> dict[str, User]:
    co = await build_company(session, items=items, counters=3)
    team = co.teams[0].id
    extra = [
        User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=team),
        User(employee_no="F01", name="财务", roles=["finance"], team_id=team),
        User(employee_no="M01", name="经理", roles=["manager"], team_id=team),
    ]
    session.add_all(extra)
    await session.flush()
    await plan_day(session, SETTINGS, MONDAY, now=morning(MONDAY))
    await session.commit()
    users = {u.employee_no: u for u in (await session.execute(select(User))).scalars()}
    return users


async def task_of(session: AsyncSession, user: User, n: int = 0) -> CountTask:
    tasks = await wf.counter_tasks(session, user.id, MONDAY)
    return tasks[n][0]


async def test_end_to_end(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s:
        users = await setup(s)
        c1, c2, c3 = users["WH1-E01"], users["WH1-E02"], users["WH1-E03"]
        sup1, fin = users["WH1-S01"], users["F01"]

        # 1. a count equal to the book is a hit: accepted, nothing to adjust
        t1 = await task_of(s, c1)
        r1 = await wf.record_count(
            s, SETTINGS, task_id=t1.id, counter_id=c1.id, text="10", counted_at=T0, now=T0
        )
        assert r1.variance is not None and r1.variance.state == "auto_accepted" and r1.variance.hit

        # 2. bad input changes nothing
        t2 = await task_of(s, c1)
        with pytest.raises(wf.WorkflowError) as bad:
            await wf.record_count(
                s, SETTINGS, task_id=t2.id, counter_id=c1.id, text="abc", counted_at=T0, now=T0
            )
        assert "abc" in bad.value.zh
        assert (await s.execute(select(func.count()).where(CountEntry.task_id == t2.id))).scalar_one() == 0

        # 3. a loss of 3 (30 %): out of tolerance -> blind recount by someone else
        r2 = await wf.record_count(
            s,
            SETTINGS,
            task_id=t2.id,
            counter_id=c1.id,
            text="7",
            counted_at=T0,
            dedup_key="wecom:msg-1",
            now=T0,
        )
        v = r2.variance
        assert v is not None and v.state == "recount_pending" and r2.recount_task is not None
        recount = r2.recount_task
        assert recount.reason == TaskReason.RECOUNT and recount.assignee_id not in (None, c1.id)
        # a platform retry of the same message records nothing new
        again = await wf.record_count(
            s,
            SETTINGS,
            task_id=t2.id,
            counter_id=c1.id,
            text="7",
            counted_at=T0,
            dedup_key="wecom:msg-1",
            now=T0,
        )
        assert again.duplicate and again.entry.id == r2.entry.id
        # the first counter may not recount their own count
        with pytest.raises(wf.WorkflowError, match="different counter"):
            await wf.record_count(
                s,
                SETTINGS,
                task_id=recount.id,
                counter_id=c1.id,
                text="7",
                counted_at=T0 + timedelta(minutes=20),
                now=T0 + timedelta(minutes=20),
            )
        other = c2 if recount.assignee_id == c2.id else c3
        r3 = await wf.record_count(
            s,
            SETTINGS,
            task_id=recount.id,
            counter_id=other.id,
            text="7",
            counted_at=T0 + timedelta(minutes=30),
            now=T0 + timedelta(minutes=30),
        )
        assert r3.variance is not None and r3.variance.state == "in_review"
        await s.commit()

        # 4. review: a standard reason is required; an unknown one is refused
        with pytest.raises(wf.WorkflowError):
            await wf.review_variance(
                s, SETTINGS, variance_id=v.id, reviewer_id=sup1.id, reason_code="nope", now=T0
            )
        with pytest.raises(wf.WorkflowError):  # 其他 needs a note
            await wf.review_variance(
                s, SETTINGS, variance_id=v.id, reviewer_id=sup1.id, reason_code="other", now=T0
            )
        await wf.review_variance(
            s,
            SETTINGS,
            variance_id=v.id,
            reviewer_id=sup1.id,
            reason_code="shipping",
            note="发货多拣",
            now=T0,
        )
        assert v.state == "pending_approval"
        await s.commit()

        vid = v.id
        ids = {k: u.id for k, u in users.items()}
        sup2_id, fin_id, team_id = ids["S02"], ids["F01"], sup1.team_id
        # 5. segregation of duties: the reviewer, a counter of the line, or a wrong role cannot decide
        for actor_id in [u.id for u in (sup1, c1, other, fin)]:
            with pytest.raises(wf.WorkflowError):
                await wf.decide(
                    s,
                    SETTINGS,
                    variance_id=vid,
                    actor_id=actor_id,
                    decision=ApprovalDecision.APPROVED,
                    now=T0,
                )
            await s.rollback()

    # 6. two supervisors approve the same step at the same moment: exactly one outcome
    async def approve(user_id: int) -> str:
        async with sessionmaker() as s2:
            try:
                d = await wf.decide(
                    s2,
                    SETTINGS,
                    variance_id=vid,
                    actor_id=user_id,
                    decision=ApprovalDecision.APPROVED,
                    step_seq=shown_seq,
                    now=T0,
                )
                await s2.commit()
                return f"ok:{d.outcome}:{d.final}"
            except wf.WorkflowError as exc:
                await s2.rollback()
                return f"refused:{exc.zh}"

    async with sessionmaker() as s:
        s3 = User(employee_no="S03", name="主管三", roles=["supervisor"], team_id=team_id)
        s.add(s3)
        await s.commit()
        s3_id = s3.id
        shown_seq = (
            await s.execute(
                select(ApprovalStep.seq).where(ApprovalStep.variance_id == vid, ApprovalStep.opened_at.is_not(None))
                .order_by(ApprovalStep.seq.desc()).limit(1)
            )
        ).scalar_one()  # fmt: skip
    outcomes = await asyncio.gather(approve(sup2_id), approve(s3_id))
    assert sorted(o.split(":")[0] for o in outcomes) == ["ok", "refused"], outcomes
    refused = next(o for o in outcomes if o.startswith("refused"))
    assert "已先一步处理" in refused and ("主管二" in refused or "主管三" in refused)

    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None
        severity_steps = v.severity
        if v.state == "pending_approval":  # major: finance decides next
            d = await wf.decide(
                s, SETTINGS, variance_id=vid, actor_id=fin_id, decision=ApprovalDecision.APPROVED, now=T0
            )
            assert d.final
            await s.commit()
        await s.refresh(v)
        assert v.state == "adjusted", (v.state, severity_steps)
        # 7. the adjustment: a loss line of 3, the book follows, the ledger has the movement
        line = (await s.execute(select(AdjustmentLine).where(AdjustmentLine.variance_id == vid))).scalar_one()
        assert line.qty == Decimal(-3) and line.value == Decimal(-30)
        doc = await s.get(Adjustment, line.adjustment_id)
        assert doc is not None and doc.state == "pending_write_back" and doc.kind == "loss"
        il = await s.get(ItemLocation, v.item_location_id)
        assert il is not None and il.qty == Decimal(7)
        mv = (await s.execute(select(Movement).where(Movement.source_doc == f"PD-{vid}"))).scalar_one()
        assert mv.qty == Decimal(-3) and mv.type == MovementType.ADJUSTMENT
        # 8. the audit trail tells the whole story
        actions = [e.action for e in await trail(s, vid)]
        for expected in (
            "created",
            "recount_assigned",
            "recount_confirmed_count",
            "review_submitted",
            "approved",
            "adjustment_recorded",
        ):
            assert expected in actions, actions


async def test_moved_during_count_and_overturned_first_count(session: AsyncSession) -> None:
    users = await setup(session)
    c1 = users["WH1-E01"]
    t = await task_of(session, c1)
    # an issue of 2 five minutes before the count: the book at the count is 8
    session.add(
        Movement(
            item_id=t.item_id,
            location_id=t.location_id,
            item_location_id=t.item_location_id,
            qty=Decimal(-2),
            type=MovementType.ISSUE,
            occurred_at=T0 - timedelta(minutes=5),
        )
    )
    il = await session.get(ItemLocation, t.item_location_id)
    assert il is not None
    il.qty = Decimal(8)
    await session.flush()
    r = await wf.record_count(
        session, SETTINGS, task_id=t.id, counter_id=c1.id, text="８", counted_at=T0, now=T0
    )
    v = r.variance
    assert (
        v is not None and v.book_qty == Decimal(8) and v.moved_during_count and v.state == "recount_pending"
    )
    assert r.recount_task is not None
    other = await session.get(User, r.recount_task.assignee_id)
    assert other is not None
    # the recount agrees with the book -> closed, no adjustment; the first count was right too here,
    # so try a wrong first count instead on another task
    t2 = await task_of(session, c1)
    r2 = await wf.record_count(
        session, SETTINGS, task_id=t2.id, counter_id=c1.id, text="3", counted_at=T0, now=T0
    )
    assert r2.variance is not None
    assert r2.recount_task is not None
    helper = await session.get(User, r2.recount_task.assignee_id)
    assert helper is not None
    r3 = await wf.record_count(
        session,
        SETTINGS,
        task_id=r2.recount_task.id,
        counter_id=helper.id,
        text="10",
        counted_at=T0 + timedelta(minutes=10),
        now=T0 + timedelta(minutes=10),
    )
    assert r3.variance is not None and r3.variance.state == "closed_count_error"
    first = (await session.execute(select(CountEntry).where(CountEntry.task_id == t2.id))).scalar_one()
    assert first.overturned
    assert (await session.execute(select(func.count()).select_from(Adjustment))).scalar_one() == 0


async def test_partial_counts_are_summed_and_a_second_full_count_replaces_the_first(
    session: AsyncSession,
) -> None:
    users = await setup(session)
    c1, c2 = users["WH1-E01"], users["WH1-E02"]
    t = await task_of(session, c1)
    await wf.record_count(
        session, SETTINGS, task_id=t.id, counter_id=c1.id, text="4", partial=True, counted_at=T0, now=T0
    )
    await wf.record_count(
        session, SETTINGS, task_id=t.id, counter_id=c2.id, text="6", partial=True, counted_at=T0, now=T0
    )
    assert t.status == TaskStatus.IN_PROGRESS
    r = await wf.finish_partial_count(session, SETTINGS, task_id=t.id, actor_id=c1.id, now=T0)
    assert (
        r.variance is not None
        and r.variance.counted_qty == Decimal(10)
        and r.variance.state == "auto_accepted"
    )
    # a finished task takes no more counts
    with pytest.raises(wf.WorkflowError):
        await wf.record_count(
            session, SETTINGS, task_id=t.id, counter_id=c1.id, text="3", counted_at=T0, now=T0
        )


async def test_illegal_transition_changes_nothing(session: AsyncSession) -> None:
    users = await setup(session)
    c1, sup = users["WH1-E01"], users["WH1-S01"]
    t = await task_of(session, c1)
    r = await wf.record_count(
        session, SETTINGS, task_id=t.id, counter_id=c1.id, text="10", counted_at=T0, now=T0
    )
    assert r.variance is not None
    before = (r.variance.state, r.variance.version)
    with pytest.raises(wf.WorkflowError) as err:
        await wf.review_variance(
            session, SETTINGS, variance_id=r.variance.id, reviewer_id=sup.id, reason_code="shipping", now=T0
        )
    assert "auto_accepted" in err.value.en
    assert (r.variance.state, r.variance.version) == before


async def test_unlisted_find_escalation_recurrence_and_late_movement(session: AsyncSession) -> None:
    from core.models import ApprovalStep, ImprovementItem, Location

    users = await setup(session, items=50)
    c1 = users["WH1-E01"]
    # an item found where the book has nothing: an unscheduled task, accepted, and a variance (book 0)
    t = await task_of(session, c1)
    other_loc = (
        await session.execute(select(Location).where(Location.id != t.location_id).limit(1))
    ).scalar_one()
    r = await wf.record_unlisted(
        session,
        SETTINGS,
        counter_id=c1.id,
        item_id=t.item_id,
        location_id=other_loc.id,
        text="5",
        counted_at=T0,
        now=T0,
    )
    assert r.variance is not None and r.variance.book_qty == 0 and r.variance.pct is None
    unscheduled = await session.get(CountTask, r.entry.task_id)
    assert unscheduled is not None and unscheduled.reason == TaskReason.UNSCHEDULED

    # a late movement that happened before a count changes that count's book and variance
    t2 = await task_of(session, c1)
    r2 = await wf.record_count(
        session, SETTINGS, task_id=t2.id, counter_id=c1.id, text="6", counted_at=T0, now=T0
    )
    assert r2.variance is not None and r2.variance.qty == Decimal(-4)
    session.add(
        Movement(item_id=t2.item_id, location_id=t2.location_id, item_location_id=t2.item_location_id,
                 qty=Decimal(-4), type=MovementType.ISSUE, occurred_at=T0 - timedelta(hours=3))
    )  # fmt: skip
    il = await session.get(ItemLocation, t2.item_location_id)
    assert il is not None
    il.qty = Decimal(il.qty) - 4
    await session.flush()
    assert await wf.reevaluate_open_variances(session, SETTINGS, now=T0) >= 1
    assert r2.variance.book_qty == Decimal(6) and r2.variance.qty == 0

    # an approval step past its deadline moves up to the manager
    session.add(ApprovalStep(variance_id=r.variance.id, seq=9, role="supervisor", opened_at=T0,
                             due_at=T0 + timedelta(hours=24)))  # fmt: skip
    await session.flush()
    assert await wf.escalate_overdue_approvals(session, SETTINGS, T0 + timedelta(hours=23)) == 0
    assert await wf.escalate_overdue_approvals(session, SETTINGS, T0 + timedelta(hours=25)) == 1
    step = (await session.execute(select(ApprovalStep).where(ApprovalStep.seq == 9))).scalar_one()
    assert step.role == "manager"

    # the same reason five times in 30 days in one warehouse opens one improvement item
    found = []
    open_tasks = (
        (
            await session.execute(
                select(CountTask).where(
                    CountTask.status == TaskStatus.OPEN, CountTask.reason == TaskReason.ROTATION
                )
            )
        )
        .scalars()
        .all()
    )
    assert len(open_tasks) >= 5
    for i, task in enumerate(open_tasks[:5]):
        res = await wf.record_count(
            session, SETTINGS, task_id=task.id, counter_id=c1.id, text="1", counted_at=T0, now=T0
        )
        assert res.variance is not None
        res.variance.reason_code, res.variance.reviewed_at = (
            "receiving",
            T0 - timedelta(days=i),
        )  # as reviewed
        found.append(res.variance.id)
    await session.flush()
    ids = await wf.open_improvement_items(session, SETTINGS, T0 + timedelta(hours=1))
    assert len(ids) == 1
    item = await session.get(ImprovementItem, ids[0])
    assert item is not None and sorted(item.variance_ids) == sorted(found) and item.reason_code == "receiving"
    assert await wf.open_improvement_items(session, SETTINGS, T0 + timedelta(hours=2)) == ids  # not twice


async def test_audit_trail_is_append_only(session: AsyncSession) -> None:
    from sqlalchemy import update as sa_update
    from sqlalchemy.exc import DBAPIError

    from core.models import AuditEvent

    users = await setup(session)
    t = await task_of(session, users["WH1-E01"])
    await wf.record_count(
        session, SETTINGS, task_id=t.id, counter_id=users["WH1-E01"].id, text="9", counted_at=T0, now=T0
    )
    await session.commit()
    with pytest.raises(DBAPIError, match="append-only"):
        await session.execute(sa_update(AuditEvent).values(action="tampered"))
    await session.rollback()
