"""A variance of quantity zero always ends in a state, from chat, the card and the CLI.

Such a variance opens when stock moved just before the count: the count matched the book as of counting, but
a movement within ``counting.moved_window_minutes`` sends it to a blind recount anyway. When the recount
agrees, nothing is left to review, approve or adjust: it closes as ``closed_no_difference``. A late movement
that explains a whole difference does the same to a variance waiting for review or approval, and a zero
variance that reached approval anyway (a row from before this rule) closes on its last approval instead of
crashing it (``AssertionError`` in ``_adjust``, the variance left in ``pending_approval`` for ever).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.cards.payload import Approve
from bot.cli import main
from bot.cli_clock import CliRoot
from bot.walk import open_walk
from core.db import make_engine, make_sessionmaker
from core.enums import ApprovalDecision, MovementType
from core.models import Adjustment, ApprovalStep, CountTask, ItemLocation, User, Variance
from core.stock import MovementLine, apply_movements
from core.variance import service as wf
from tests.clock import FixedClock
from tests.integration.builders import PCT_TIERS_ENV
from tests.integration.test_card_actions import (
    MONDAY,
    SETTINGS,
    T0,
    dispatcher,
    last_text,
    press,
    run,
    say,
    variance_in_review,
)
from tests.integration.test_card_actions import (
    router as card_router,
)


async def adjustments(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int(await s.scalar(select(func.count()).select_from(Adjustment)) or 0)


async def moved_just_before(sm: async_sessionmaker[AsyncSession]) -> tuple[CountTask, User]:
    """The company of the card tests, its day planned (one variance already in review); 2 picked from an open
    task's item-location 10 minutes before its counter counts it (the book is 8 from then on)."""
    _, users = await variance_in_review(sm)
    async with sm() as s, s.begin():
        for counter in (users["WH1-E01"], users["WH1-E02"]):
            tasks = [
                t for t, _, _ in await wf.counter_tasks(s, counter.id, MONDAY) if t.parent_task_id is None
            ]
            if tasks:
                break
        task = tasks[0]
        await apply_movements(s, [MovementLine(task.item_id, task.location_id, task.item_location_id,
                                               Decimal(-2), MovementType.ISSUE, T0 - timedelta(minutes=10))],
                              recorded_at=T0 - timedelta(minutes=9))  # fmt: skip
    return task, counter


async def test_a_recount_that_agrees_with_a_matching_count_closes_with_no_difference_from_chat(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task, counter = await moved_just_before(sessionmaker)
    before = await adjustments(sessionmaker)
    d = dispatcher(sessionmaker)
    # equal to the book, but stock just moved
    await run(d, say(str(counter.wecom_userid), f"/盘点 {task.id} 8", 1))
    async with sessionmaker() as s:
        v = (await s.execute(select(Variance).where(Variance.task_id == task.id))).scalar_one()
        assert v.state == "recount_pending" and v.qty == 0 and v.moved_during_count
        recount = (await s.execute(select(CountTask).where(CountTask.parent_task_id == task.id))).scalar_one()
        recounter = await s.get(User, recount.assignee_id)
    assert recounter is not None and recounter.id != counter.id
    await run(d, say(str(recounter.wecom_userid), f"/盘点 {recount.id} 8", 2))
    async with sessionmaker() as s:
        v = await s.get(Variance, v.id)
        assert v is not None and v.state == "closed_no_difference" and v.closed_at is not None
        steps = await s.scalar(select(func.count()).where(ApprovalStep.variance_id == v.id))
    assert steps == 0  # nothing to review or approve
    assert await adjustments(sessionmaker) == before  # nothing to adjust
    said = await last_text(sessionmaker, str(recounter.wecom_userid))
    async with sessionmaker() as s:  # what is left on the recounter's walk, whatever the plan gave them
        left = len(await open_walk(s, recounter.id, T0.date()))
    # blind: the recounter hears their own quantity back and what is next, nothing about the book
    nxt = "今天的盘点任务都完成了，辛苦了！" if left == 0 else f"还有 {left} 项未完成，发送“开始”逐项盘点。"
    assert said == f"已记录（8个）。\n{nxt}", said


async def zero_in_approval(sm: async_sessionmaker[AsyncSession]) -> tuple[int, dict[str, User]]:
    """A variance in approval whose quantity is zero, as the old version left them (its approval crashed)."""
    vid, users = await variance_in_review(sm)
    async with sm() as s, s.begin():
        await wf.review_variance(s, SETTINGS, variance_id=vid, reviewer_id=users["WH1-S01"].id,
                                 reason_code="receiving", now=T0 + timedelta(minutes=10))  # fmt: skip
        await s.execute(update(Variance).where(Variance.id == vid).values(qty=0, value=0))
    return vid, users


async def approve_every_step(sm: async_sessionmaker[AsyncSession], vid: int, by_role: dict[str, str]) -> None:
    async with sm() as s:
        roles = [r for (r,) in (await s.execute(select(ApprovalStep.role).where(ApprovalStep.variance_id == vid)
                                                .order_by(ApprovalStep.seq))).all()]  # fmt: skip
    d = dispatcher(sm, card_router())
    for n, role in enumerate(roles, start=1):
        await run(d, press(by_role[role], Approve(vid, n), 100 + n))


async def test_approving_a_zero_variance_on_the_card_closes_it_with_no_difference(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, _ = await zero_in_approval(sessionmaker)
    before = await adjustments(sessionmaker)
    await approve_every_step(sessionmaker, vid, {"supervisor": "s02", "finance": "f01", "manager": "m01"})
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "closed_no_difference" and v.closed_at is not None
        decisions = [d for (d,) in (await s.execute(select(ApprovalStep.decision)
                                                    .where(ApprovalStep.variance_id == vid))).all()]  # fmt: skip
    assert decisions and all(d == ApprovalDecision.APPROVED for d in decisions)
    assert await adjustments(sessionmaker) == before
    assert "无需调整库存" in await last_text(sessionmaker, "f01")  # not "已生成库存调整"


def test_approving_a_zero_variance_from_the_cli_closes_it(engine: AsyncEngine, database_url: str) -> None:
    async def in_own_loop(work: Any) -> Any:  # the CLI runs its own event loop: so does the set-up here
        eng = make_engine(database_url)
        try:
            return await work(make_sessionmaker(eng))
        finally:
            await eng.dispose()

    vid, _ = asyncio.run(in_own_loop(zero_in_approval))
    cli = CliRunner(env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250", **PCT_TIERS_ENV})
    clock = FixedClock(T0 + timedelta(hours=1))
    first = cli.invoke(main, ["approve", str(vid), "--as", "S02"], obj=CliRoot(clock))
    assert first.exit_code == 0, first.output
    last = cli.invoke(main, ["approve", str(vid), "--as", "F01"], obj=CliRoot(clock))
    assert last.exit_code == 0 and last.exception is None, last.output
    assert "无差异已关闭" in last.output and "closed_no_difference" in last.output

    async def state(sm: async_sessionmaker[AsyncSession]) -> tuple[str, int]:
        async with sm() as s:
            v = await s.get(Variance, vid)
            assert v is not None
            return v.state, int(await s.scalar(select(func.count()).select_from(Adjustment)) or 0)

    assert asyncio.run(in_own_loop(state)) == ("closed_no_difference", 0)
    again = cli.invoke(main, ["approve", str(vid), "--as", "F01"], obj=CliRoot(clock))
    assert again.exit_code == 1 and "Traceback" not in again.output  # a final state: a clear refusal


async def test_a_late_movement_that_explains_the_difference_closes_the_variance_in_approval(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, users = await variance_in_review(sessionmaker)  # counted 7 where the book said 10, recount agreed
    async with sessionmaker() as s, s.begin():
        await wf.review_variance(s, SETTINGS, variance_id=vid, reviewer_id=users["WH1-S01"].id,
                                 reason_code="shipping", now=T0 + timedelta(minutes=10))  # fmt: skip
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "pending_approval"
        il = await s.get(ItemLocation, v.item_location_id)
        assert il is not None
        # a shipment of 3 booked a day late, but shipped an hour before the count
        await apply_movements(s, [MovementLine(v.item_id, v.location_id, il.id, Decimal(-3), MovementType.ISSUE,
                                               T0 - timedelta(hours=1))], recorded_at=T0 + timedelta(days=1))  # fmt: skip
        assert await wf.reevaluate_open_variances(s, SETTINGS, T0 + timedelta(days=1)) == 1
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "closed_no_difference" and v.qty == 0
        pending = await s.scalar(
            select(func.count()).where(ApprovalStep.variance_id == vid,
                                       ApprovalStep.decision == ApprovalDecision.PENDING)
        )  # fmt: skip
    assert pending == 0  # its approval cards have nothing left to decide
