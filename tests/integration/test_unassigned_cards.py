"""Work nobody can do is said where supervisors and managers look: the morning notice and the evening summary
name the warehouse, how many tasks, the real cause (no counter can be given its work, or beyond capacity) and
what to do. A supervisor hears about their own site; a manager about all."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot import jobs
from core.models import CountTask, OutboxMessage, User
from tests.integration.builders import build_company
from tests.integration.test_jobs import EVENING, MONDAY, MORNING, SETTINGS


async def _sites(sm: async_sessionmaker[AsyncSession]) -> None:
    """WH1 with two counters; WH2 with its own supervisor and no counter at all; a manager."""
    async with sm() as s, s.begin():
        await build_company(s, items=6, counters=2, code="WH1")
        await build_company(s, items=6, counters=0, code="WH2")
        s.add(User(employee_no="M01", name="经理", roles=["manager"]))
        await s.flush()
        for u in (await s.execute(select(User))).scalars():
            u.wecom_userid = f"wx-{u.employee_no.lower()}"


async def _cards(sm: async_sessionmaker[AsyncSession], prefix: str) -> dict[str, str]:
    async with sm() as s:
        rows = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.idempotency_key.like(f"{prefix}%")))
        ).scalars()
        return {r.address["user_id"]: json.dumps(r.body, ensure_ascii=False) for r in rows}


async def test_the_morning_and_the_summary_say_which_warehouse_has_work_nobody_can_do(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await _sites(sessionmaker)
    report = await jobs.morning(sessionmaker, SETTINGS, MORNING)
    async with sessionmaker() as s:
        left = [
            t.warehouse_id
            for t in (await s.execute(select(CountTask).where(CountTask.assignee_id.is_(None)))).scalars()
        ]
    assert left and report.details["unassigned"] == len(left)
    notices = await _cards(sessionmaker, "unassigned:")
    # WH2's supervisor and the manager; WH1's supervisor has nothing to act on
    assert set(notices) == {"wx-wh2-s01", "wx-m01"}
    for body in notices.values():
        assert f"今日有 {len(left)} 项盘点无人可派" in body
        assert f"仓库 WH2：{len(left)} 项无人可派，该仓库没有可分配的盘点员" in body
        assert "pandian warehouse set-team WH2 --team" in body
    # the morning runs once a day: no second notice
    await jobs.morning(sessionmaker, SETTINGS, MORNING)
    assert len(await _cards(sessionmaker, "unassigned:")) == 2

    await jobs.summary_job(sessionmaker, SETTINGS, EVENING)
    summaries = await _cards(sessionmaker, "summary:")
    assert {"wx-wh1-s01", "wx-wh2-s01", "wx-m01"} <= set(summaries)
    assert "未分配" in summaries["wx-wh2-s01"] and "仓库 WH2" in summaries["wx-wh2-s01"]
    assert "未分配" in summaries["wx-m01"] and "全部 2 个仓库" in summaries["wx-m01"]
    assert "未分配" not in summaries["wx-wh1-s01"] and "WH2" not in summaries["wx-wh1-s01"]
    assert MONDAY.isoformat() in summaries["wx-m01"]
