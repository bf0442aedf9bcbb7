"""From the ERP and back, through the real workflow: sync the book, count (within tolerance: adjusted at once by
core.variance), post the adjustments to each fake ERP, sync again, reconcile: nothing unexplained."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.enums import TaskReason, TaskStatus
from core.models import Adjustment, CountTask, Item, ItemLocation, Location, User, Warehouse
from core.variance import service as wf
from integrations.erp.reconcile import reconcile
from integrations.erp.sync import sync
from tests.fakes.erp_common import seed_catalogue
from tests.fakes.erp_harness import ERPS, drain_until_done, start

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


async def task_for(s: AsyncSession, sku: str, wh: str, loc: str, counter: User) -> CountTask:
    il = (
        await s.execute(
            select(ItemLocation).join(Item, Item.id == ItemLocation.item_id)
            .join(Location, Location.id == ItemLocation.location_id)
            .join(Warehouse, Warehouse.id == ItemLocation.warehouse_id)
            .where(Item.sku == sku, Warehouse.code == wh, Location.code == loc)
        )
    ).scalar_one()  # fmt: skip
    task = CountTask(plan_date=date(2026, 11, 30), due_date=date(2026, 11, 30), warehouse_id=il.warehouse_id,
                     location_id=il.location_id, item_id=il.item_id, item_location_id=il.id, abc_class="C",
                     reason=TaskReason.ROTATION, status=TaskStatus.OPEN, assignee_id=counter.id, cycle_key="erp-test")  # fmt: skip
    s.add(task)
    await s.flush()
    return task


@pytest.mark.parametrize("erp", ERPS)
async def test_counted_adjusted_posted_synced_reconciled(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    c = h.connector()
    try:
        assert (await sync(sessionmaker, h.settings, c, now=T0, clock=lambda: T0)).ok
        gain_before, loss_before = h.fake.qty("M002", "WH1", "A-01"), h.fake.qty("M003", "WH1", "A-02")
        at = T0 + timedelta(minutes=5)
        async with sessionmaker() as s, s.begin():
            counter = User(employee_no="E01", name="盘点员", roles=["counter"])
            s.add(counter)
            await s.flush()
            t1 = await task_for(s, "M002", "WH1", "A-01", counter)
            t2 = await task_for(s, "M003", "WH1", "A-02", counter)
            r1 = await wf.record_count(s, h.settings, task_id=t1.id, counter_id=counter.id,
                                       text=str(gain_before + 1), counted_at=at, now=at)  # fmt: skip
            r2 = await wf.record_count(s, h.settings, task_id=t2.id, counter_id=counter.id,
                                       text=str(loss_before - 2), counted_at=at, now=at)  # fmt: skip
            assert r1.variance is not None and r1.variance.state == "adjusted", r1.variance.state
            assert r2.variance is not None and r2.variance.state == "adjusted"
        await drain_until_done(sessionmaker, h.settings, c, start=at + timedelta(minutes=1))
        assert h.fake.qty("M002", "WH1", "A-01") == gain_before + 1
        assert h.fake.qty("M003", "WH1", "A-02") == loss_before - 2
        async with sessionmaker() as s:
            docs = (await s.execute(select(Adjustment).order_by(Adjustment.id))).scalars().all()
        assert [(d.kind, d.state) for d in docs] == [("gain", "posted"), ("loss", "posted")]
        assert all(h.fake.ledger(d.erp_doc_no if erp != "sap" else f"PD{d.id:08d}") == 1 for d in docs)
        later = at + timedelta(hours=2)
        r = await sync(sessionmaker, h.settings, c, now=later, clock=lambda: later)
        assert r.ok and r.entities["stock"].updated == 0  # the ERP now holds what pandian approved
        report = await reconcile(sessionmaker, h.settings, c)
    finally:
        await c.close()
    assert report.rows == [] and report.failed == []
    assert report.compared >= 7 and Decimal(0) == sum((row.unexplained for row in report.rows), Decimal(0))
