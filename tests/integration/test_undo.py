"""撤销: a counter takes back their last count, through the chat and the service, on the suite's database.

Each test reads like the transcript: the counter's messages, the bot's answers, then what the database holds.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import Platform, Sender, TextMessage
from bot.handlers import commands, counting
from core.audit import trail
from core.clock import FixedClock
from core.config import Settings
from core.enums import EntryMethod, MovementType, TaskReason, TaskStatus
from core.models import (
    Adjustment,
    AuditEvent,
    CountEntry,
    CountTask,
    ItemLocation,
    Movement,
    OutboxMessage,
    Variance,
)
from core.scheduling.service import plan_day
from core.variance.service import WorkflowError, record_count, review_variance
from core.variance.undo import UndoBlocked, is_voided, undo_last_count
from tests.clock import morning
from tests.integration.builders import build_company

DAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
# WeCom switched on, so a cancelled recount's counter can be told (bot.notify needs a configured platform)
SETTINGS = Settings(database_url="sqlite://", wecom={"corp_id": "ww_test"})


class Chat:
    """One WeCom user talking to the bot through a real Dispatcher; answers are read from the outbox."""

    def __init__(self, d: Dispatcher, sessionmaker: async_sessionmaker[AsyncSession], user: str) -> None:
        self.d, self.sm, self.user, self.n = d, sessionmaker, user, 0

    async def say(self, body: str, *, at: datetime = NOW) -> str:
        self.n += 1
        event = TextMessage(Platform.WECOM, f"wecom:msg:{self.user}:{self.n}", Sender(Platform.WECOM, self.user),
                            at, text=body)  # fmt: skip
        assert await self.d.submit(event)
        await self.d.drain()
        assert self.d.stats["errors"] == 0
        return (await outbox_texts(self.sm, self.user))[-1]


async def outbox_texts(sessionmaker: async_sessionmaker[AsyncSession], user: str) -> list[str]:
    async with sessionmaker() as s:
        rows = (await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars().all()
    return [r.body.get("text", "") for r in rows if r.address.get("user_id") == user]


async def setup(
    sessionmaker: async_sessionmaker[AsyncSession], *, counters: int = 1, book: Decimal | None = None
) -> tuple[Dispatcher, dict[str, int]]:
    async with sessionmaker() as s:
        company = await build_company(s, items=10, counters=counters)
        if book is not None:
            for il in company.item_locations:
                il.qty = book
        ids = {}
        for n, u in enumerate(company.users):
            u.wecom_userid = f"u{n + 1}" if "counter" in u.roles else "boss"
            ids[u.wecom_userid] = u.id
        await plan_day(s, SETTINGS, DAY, now=morning(DAY))
        await s.commit()
    d = Dispatcher(sessionmaker, SETTINGS, MemoryStore(),
                   Router().include(commands.router, counting.router, commands.fallback_router),
                   clock=FixedClock(NOW))  # fmt: skip
    return d, ids


async def blocked_because(sessionmaker: async_sessionmaker[AsyncSession], counter_id: int, why: str) -> None:
    """What blocks the counter's undo, as core says it (the CLI and supervisors may read it; the counter may not)."""
    with pytest.raises(UndoBlocked, match=why):
        async with sessionmaker() as s:
            await undo_last_count(s, counter_id=counter_id, now=NOW)


async def first_task(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> CountTask:
    async with sessionmaker() as s:
        entry = (
            await s.execute(select(CountEntry).where(CountEntry.counter_id == user_id).order_by(CountEntry.id))
        ).scalars().first()  # fmt: skip
        assert entry is not None
        task = await s.get(CountTask, entry.task_id)
        assert task is not None
        return task


async def test_undo_a_match_goes_back_to_the_task_and_keeps_the_entry(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    d, ids = await setup(sessionmaker)
    lina = Chat(d, sessionmaker, "u1")
    first = await lina.say("开始")
    assert await lina.say("10") != first  # book 10: a match, on to the next task
    undone, back = (await lina.say("撤销")).split("\n", 1)  # one message: what was undone, and what is next
    assert undone.startswith("↩️ 已撤销") and "「10 个」" in undone
    assert back == first  # the same prompt as before the count: that task again
    task = await first_task(sessionmaker, ids["u1"])
    async with sessionmaker() as s:
        entry = (await s.execute(select(CountEntry))).scalar_one()
        assert is_voided(entry) and entry.dedup_key == "wecom:msg:u1:2"  # kept, void
        assert (await s.get(CountTask, task.id)).status == TaskStatus.OPEN  # type: ignore[union-attr]
        assert await s.scalar(select(func.count()).select_from(Variance)) == 0
        audited = (
            await s.execute(select(AuditEvent.entity, AuditEvent.action).order_by(AuditEvent.id))
        ).all()
    assert [tuple(a) for a in audited[-3:]] == [
        ("count", "voided"),
        ("variance", "voided"),
        ("task", "reopened"),
    ]

    # counted again: a new entry and a new variance for the same task; the voided one is not the count
    assert "还剩" in await lina.say("10")
    async with sessionmaker() as s:
        entries = (await s.execute(select(CountEntry).order_by(CountEntry.id))).scalars().all()
        v = (await s.execute(select(Variance))).scalar_one()
        events = await trail(s, v.id)
    assert [is_voided(e) for e in entries] == [True, False] and v.task_id == task.id
    assert v.counted_qty == 10 and next(e.action for e in events) == "created"


async def test_undo_twice_and_nothing_to_undo(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    d, _ = await setup(sessionmaker)
    lina = Chat(d, sessionmaker, "u1")
    assert "没有可以撤销的盘点" in await lina.say("撤销")
    await lina.say("开始")
    await lina.say("空")
    assert "「库位空」" in await lina.say("撤销")
    assert "已经撤销过了" in await lina.say("撤销")
    # yesterday's count is not today's: the day boundary is the warehouse's local midnight
    assert "没有可以撤销的盘点" in await lina.say("撤销", at=NOW + timedelta(days=1))


async def test_undo_cancels_an_unstarted_recount_and_tells_its_counter(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    d, ids = await setup(sessionmaker, counters=2)
    lina = Chat(d, sessionmaker, "u1")
    await lina.say("开始")
    await lina.say("5")  # book 10, counted 5: out of tolerance, a blind recount for u2
    async with sessionmaker() as s:
        recount = (
            await s.execute(select(CountTask).where(CountTask.reason == TaskReason.RECOUNT))
        ).scalar_one()
        assert recount.assignee_id == ids["u2"]
    await lina.say("撤销")
    async with sessionmaker() as s:
        assert (await s.get(CountTask, recount.id)).status == TaskStatus.CANCELLED  # type: ignore[union-attr]
        assert await s.scalar(select(func.count()).select_from(Variance)) == 0
    told = await outbox_texts(sessionmaker, "u2")
    assert told and f"复盘任务 #{recount.id}" in told[-1] and "已取消" in told[-1]
    # and the recount counter cannot count it any more
    with pytest.raises(WorkflowError, match="cancelled"):
        async with sessionmaker() as s:
            await record_count(
                s, SETTINGS, task_id=recount.id, counter_id=ids["u2"], text="10", counted_at=NOW, now=NOW
            )


async def test_a_counted_recount_blocks_the_undo(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    d, ids = await setup(sessionmaker, counters=2)
    lina, wang = Chat(d, sessionmaker, "u1"), Chat(d, sessionmaker, "u2")
    await lina.say("开始")
    await lina.say("5")
    async with sessionmaker() as s:
        recount = (
            await s.execute(select(CountTask).where(CountTask.reason == TaskReason.RECOUNT))
        ).scalar_one()
    assert "已记录" in await wang.say(f"/盘点 {recount.id} 5")  # the recount confirms the first count
    # blind: the counter is not told that a recount was counted (that would say the first count missed)
    assert await lina.say("撤销") == counting.UNDO_BLOCKED_ZH
    await blocked_because(sessionmaker, ids["u1"], "的复盘（任务 #")
    # wang's last count is the recount: its result decided the variance, and saying how would tell him
    assert await wang.say("撤销") == counting.UNDO_BLOCKED_ZH
    await blocked_because(sessionmaker, ids["u2"], "这是一次复盘")
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Variance)) == 1
        assert not any(is_voided(e) for e in (await s.execute(select(CountEntry))).scalars())


async def test_a_review_blocks_the_undo(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    settings = SETTINGS.model_copy(
        update={"counting": SETTINGS.counting.model_copy(update={"max_recounts": 0})}
    )
    d, ids = await setup(sessionmaker)
    d.settings = settings
    lina = Chat(d, sessionmaker, "u1")
    await lina.say("开始")
    await lina.say("5")  # no recounts configured: straight to the supervisor's review
    async with sessionmaker() as s:
        v = (await s.execute(select(Variance))).scalar_one()
        assert v.state == "in_review"
    async with sessionmaker() as s, s.begin():
        await review_variance(s, settings, variance_id=v.id, reviewer_id=ids["boss"], reason_code="misplaced",
                              note="放错库位", now=NOW)  # fmt: skip
    assert await lina.say("撤销") == counting.UNDO_BLOCKED_ZH  # blind: not "variance #1 is in approval"
    await blocked_because(sessionmaker, ids["u1"], f"差异 #{v.id}")


async def test_undo_takes_back_a_pending_automatic_adjustment(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    d, ids = await setup(sessionmaker, book=Decimal(1000))
    lina = Chat(d, sessionmaker, "u1")
    await lina.say("开始")
    await lina.say("995")  # -0.5 %, -50 元: within class A's tolerance, adjusted at once
    task = await first_task(sessionmaker, ids["u1"])
    async with sessionmaker() as s:
        il = await s.get(ItemLocation, task.item_location_id)
        assert il is not None and il.qty == 995 and il.last_counted_at is not None
        v = (await s.execute(select(Variance))).scalar_one()
        assert v.state == "adjusted"
        assert await s.scalar(select(func.count()).select_from(Adjustment)) == 1
    await lina.say("撤销")
    async with sessionmaker() as s:
        il = await s.get(ItemLocation, task.item_location_id)
        assert il is not None and il.qty == 1000 and il.last_counted_at is None and il.last_miss_at is None
        assert await s.scalar(select(func.count()).select_from(Adjustment)) == 0
        assert await s.scalar(select(func.count()).where(Movement.type == MovementType.ADJUSTMENT)) == 0
        kinds = {(e.entity, e.action) for e in await trail(s, v.id)}
    assert {("variance", "created"), ("adjustment", "created"), ("adjustment", "voided"),
            ("variance", "voided"), ("count", "voided")} <= kinds  # fmt: skip


async def test_an_exported_adjustment_blocks_the_undo(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    d, ids = await setup(sessionmaker, book=Decimal(1000))
    lina = Chat(d, sessionmaker, "u1")
    await lina.say("开始")
    await lina.say("995")
    async with sessionmaker() as s, s.begin():
        doc = (await s.execute(select(Adjustment))).scalar_one()
        doc.state = "exported"
    assert await lina.say("撤销") == counting.UNDO_BLOCKED_ZH  # blind: not "adjustment #1 was exported"
    await blocked_because(sessionmaker, ids["u1"], f"库存调整单 #{doc.id} 已导出，不能撤销")
    task = await first_task(sessionmaker, ids["u1"])
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Adjustment)) == 1
        assert (await s.get(ItemLocation, task.item_location_id)).qty == 995  # type: ignore[union-attr]


async def test_service_partial_counts_and_a_book_reimported_after_the_adjustment(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s:
        company = await build_company(s, items=10, counters=1)
        await plan_day(s, SETTINGS, DAY, now=morning(DAY))
        counter = next(u for u in company.users if "counter" in u.roles)
        task, other = (await s.execute(select(CountTask).order_by(CountTask.id).limit(2))).scalars().all()
        il = await s.get(ItemLocation, task.item_location_id)
        assert il is not None
        il.qty = Decimal(1000)
        await s.commit()

    async def count(task_id: int, text: str, *, partial: bool = False, key: str) -> Any:
        async with sessionmaker() as s, s.begin():
            return await record_count(s, SETTINGS, task_id=task_id, counter_id=counter.id, text=text,
                                      partial=partial, counted_at=NOW, method=EntryMethod.CLI, dedup_key=key, now=NOW)  # fmt: skip

    # a partial count of a task still being counted: voided, the task handed back (in progress -> open)
    await count(other.id, "3", partial=True, key="p1")
    async with sessionmaker() as s, s.begin():
        done = await undo_last_count(s, counter_id=counter.id, now=NOW)
        assert done.variance_id is None and is_voided(done.entry)
    async with sessionmaker() as s:
        assert (await s.get(CountTask, other.id)).status == TaskStatus.OPEN  # type: ignore[union-attr]

    # an automatic adjustment, then a stock snapshot imported after it: the book is not ours to move back
    await count(task.id, "995", key="c1")
    async with sessionmaker() as s, s.begin():
        il = await s.get(ItemLocation, task.item_location_id)
        assert il is not None
        il.book_as_of = NOW + timedelta(minutes=1)
    with pytest.raises(UndoBlocked, match="重新导入"):
        async with sessionmaker() as s, s.begin():
            await undo_last_count(s, counter_id=counter.id, now=NOW)
    async with sessionmaker() as s:  # refused whole: nothing changed
        assert (await s.get(CountTask, task.id)).status == TaskStatus.DONE  # type: ignore[union-attr]
        assert await s.scalar(select(func.count()).select_from(Adjustment)) == 1


async def test_undo_by_someone_who_is_not_a_counter(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    d, _ = await setup(sessionmaker)
    assert "只有盘点员" in await Chat(d, sessionmaker, "boss").say("撤销")


async def test_count_again_after_undo_gets_a_new_recount(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Undo an out-of-tolerance count whose recount was not started, then count it out of tolerance again: a
    second recount is created, under a new variance id, with a key that does not collide with the cancelled
    recount's."""
    d, _ids = await setup(sessionmaker, counters=2)
    lina = Chat(d, sessionmaker, "u1")
    await lina.say("开始")
    await lina.say("5")  # book 10: a recount for u2
    async with sessionmaker() as s:
        undone = (await s.execute(select(Variance))).scalar_one().id
    await lina.say("撤销")
    await lina.say("4")  # back on the same task: out of tolerance again
    async with sessionmaker() as s:
        recounts = (
            (
                await s.execute(
                    select(CountTask).where(CountTask.reason == TaskReason.RECOUNT).order_by(CountTask.id)
                )
            )
            .scalars()
            .all()
        )
        assert [r.status for r in recounts] == [TaskStatus.CANCELLED, TaskStatus.OPEN]
        assert recounts[0].cycle_key != recounts[1].cycle_key
        again = (await s.execute(select(Variance))).scalar_one()
        assert again.counted_qty == 4
        # a new id, never the undone one's: ids key the cards and messages about a variance (review:<id>), so a
        # reused id would look as if its cards had been sent already (SQLite hands out max(id) + 1)
        assert again.id != undone
    assert d.stats["errors"] == 0
