"""What the count-to-adjustment card flows on WeCom, Feishu and DingTalk share (test_card_flow_*.py): the
company they run in, waiting for what the fake platform receives, and the end they all reach.

The people, by their id on the platform (each platform's own prefix in front): ``lina`` and ``wang`` count,
``sup1``, ``sup2`` and ``sup3`` supervise the team, ``fin`` is finance and ``mgr`` the manager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.models import Adjustment, CountTask, OutboxMessage, User, Variance
from core.scheduling.service import plan_day
from tests.clock import morning
from tests.integration.builders import build_company

DAY = date(2026, 11, 30)  # a working Monday
BUILT = {"WH1-E01": "lina", "WH1-E02": "wang", "WH1-S01": "sup1"}  # build_company's people
ADDED = [  # (employee number, name, roles, in the team, id)
    ("S02", "主管二", ["supervisor"], True, "sup2"),
    ("S03", "主管三", ["supervisor"], True, "sup3"),
    ("F01", "财务", ["finance"], False, "fin"),
    ("M01", "经理", ["manager"], False, "mgr"),
]


async def wait_for(cond: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def server_settings(tmp_path: Path) -> dict[str, Any]:
    """The server section: a payload key, a fast outbox, photos in the test's directory."""
    return {"payload_secret": "test-secret-0123456789", "outbox_interval_s": 0.05,
            "photos_dir": str(tmp_path / "photos")}  # fmt: skip


async def set_up_company(
    sm: async_sessionmaker[AsyncSession], settings: Settings, id_column: str, prefix: str = ""
) -> int:
    """The company (3 items, 2 counters) with everyone's platform id in ``id_column``, its day planned; the id
    of lina's first task."""
    async with sm() as s:
        co = await build_company(s, items=3, counters=2)
        team_id = co.teams[0].id
        for u in co.users:
            setattr(u, id_column, prefix + BUILT[u.employee_no])
        s.add_all(
            User(employee_no=no, name=name, roles=roles, team_id=team_id if in_team else None,
                 **{id_column: prefix + pid})
            for no, name, roles, in_team, pid in ADDED
        )  # fmt: skip
        await plan_day(s, settings, DAY, now=morning(DAY))
        await s.commit()
        lina = next(u for u in co.users if u.employee_no == "WH1-E01")
        task_id: int = (
            await s.execute(
                select(CountTask.id).where(CountTask.assignee_id == lina.id).order_by(CountTask.id).limit(1)
            )
        ).scalar_one()
    return task_id


def one_decision(said: Mapping[str, Sequence[str]]) -> str:
    """Two approvers pressed at once (``said``: what each was then told, by platform id): exactly one decided,
    the other was told it was decided first. The name of the one who decided."""
    winners = [u for u, ts in said.items() if any("✓ 已通过差异" in t for t in ts)]
    losers = [u for u, ts in said.items() if any("已先一步处理" in t for t in ts)]
    assert len(winners) == 1 and len(losers) == 1, said
    return next(name for _, name, _, _, pid in ADDED if winners[0].endswith(pid))


async def the_variance(sm: async_sessionmaker[AsyncSession]) -> Variance:
    """The one variance of the flow, as it is now."""
    async with sm() as s:
        return (await s.execute(select(Variance))).scalar_one()


async def assert_adjusted(sm: async_sessionmaker[AsyncSession]) -> None:
    """The end: the variance adjusted, an adjustment made, no outbound message failed."""
    assert (await the_variance(sm)).state == "adjusted"
    async with sm() as s:
        assert (await s.execute(select(Adjustment))).scalars().first() is not None
        rows = (await s.execute(select(OutboxMessage))).scalars().all()
        failed = [(r.idempotency_key, r.last_error) for r in rows if r.state == "failed"]
        assert not failed, failed
