"""Sync from each fake ERP: incremental pulls from stored cursors, through the import and movement code;
unknown items and malformed answers; our own postings coming back; unposted adjustments surviving a stock
snapshot; reconciliation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import (
    Adjustment,
    ErpSyncCursor,
    ErpSyncRun,
    Item,
    ItemBarcode,
    ItemLocation,
    Location,
    Movement,
    MovementType,
    Warehouse,
)
from integrations.erp.reconcile import reconcile
from integrations.erp.sync import SyncReport, sync
from tests.fakes.erp_common import seed_catalogue
from tests.fakes.erp_harness import ERPS, Harness, add_people, drain_until_done, make_adjustments, start

pytestmark = pytest.mark.parametrize("erp", ERPS)
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


async def run(h: Harness, sm: async_sessionmaker[AsyncSession], now: datetime, **kw: Any) -> SyncReport:
    c = h.connector()
    try:
        return await sync(sm, h.settings, c, now=now, clock=lambda: now, **kw)
    finally:
        await c.close()


async def book(sm: async_sessionmaker[AsyncSession]) -> dict[tuple[str, str, str], Decimal]:
    async with sm() as s:
        rows = await s.execute(
            select(Item.sku, Warehouse.code, Location.code, ItemLocation.qty)
            .join(Item, Item.id == ItemLocation.item_id)
            .join(Location, Location.id == ItemLocation.location_id)
            .join(Warehouse, Warehouse.id == ItemLocation.warehouse_id)
        )
        return {(sku, wh, loc): Decimal(q) for sku, wh, loc, q in rows}


def erp_book(h: Harness) -> dict[tuple[str, str, str], Decimal]:
    return {k: v for k, v in h.fake.stock.items() if k[0] in h.fake.items}


async def test_incremental_sync_pulls_what_changed_since_the_stored_cursors(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    r1 = await run(h, sessionmaker, T0)
    assert r1.ok, r1.error
    assert r1.entities["items"].created == 6 and r1.entities["items"].pages >= 2  # page size 4
    assert r1.entities["movements"].created == 2
    assert await book(sessionmaker) == erp_book(h)  # the movements happened before the snapshot
    async with sessionmaker() as s:
        m002 = (await s.execute(select(Item).where(Item.sku == "M002"))).scalar_one()
        assert m002.unit_cost == Decimal("12.5") and m002.name == "物料2"
        codes = set((await s.execute(select(ItemBarcode.barcode))).scalars())
        assert "6900000000002" in codes
        cursors = {c.entity: c.cursor for c in (await s.execute(select(ErpSyncCursor))).scalars()}
        assert {"items", "stock", "movements"} <= set(cursors)
        receipts = (
            (await s.execute(select(Movement).where(Movement.type == MovementType.RECEIPT))).scalars().all()
        )
        assert [m.qty for m in receipts] == [Decimal(5)]

    # the ERP changes: a price and a new barcode, a new item with stock, a receipt
    h.fake.change_item("M002", cost="99", barcode="6911111111111")
    h.fake.add_item("M100", "新物料", cost="3")
    h.fake.set_stock("M100", "WH1", "A-01", "4")
    h.fake.add_movement("receipt", "M003", "WH1", "A-02", "10", at=T0 + timedelta(minutes=5))
    r2 = await run(h, sessionmaker, T0 + timedelta(minutes=10))
    assert r2.ok, r2.error
    items = r2.entities["items"]
    assert items.pulled <= 3, "a full re-pull instead of an incremental one"
    assert (items.created, items.updated) == (1, 1)
    assert r2.entities["stock"].not_due  # the snapshot is an hour old at most: movements keep the book
    assert r2.entities["movements"].created == 1
    # ">=" the cursor: each source's last line comes again, recognised by its import key
    assert r2.entities["movements"].pulled <= 3 and r2.entities["movements"].unchanged <= 2
    b = await book(sessionmaker)
    assert b[("M003", "WH1", "A-02")] == Decimal(113)
    async with sessionmaker() as s:
        m002 = (await s.execute(select(Item).where(Item.sku == "M002"))).scalar_one()
        assert m002.unit_cost == Decimal(99)
        assert (
            await s.scalar(
                select(func.count()).select_from(ItemBarcode).where(ItemBarcode.item_id == m002.id)
            )
            == 2
        )
    # an hour later the snapshot is due again: the new item's stock arrives, nothing else changes
    r3 = await run(h, sessionmaker, T0 + timedelta(minutes=80))
    assert r3.ok and not r3.entities["stock"].not_due
    assert r3.entities["stock"].created == 1 and r3.entities["stock"].updated == 0
    assert r3.entities["movements"].created == 0
    assert await book(sessionmaker) == erp_book(h)
    async with sessionmaker() as s:
        runs = (await s.execute(select(ErpSyncRun).order_by(ErpSyncRun.id))).scalars().all()
    assert [r.ok for r in runs] == [True, True, True] and runs[0].stats["items"]["created"] == 6


async def test_an_unknown_item_in_the_erp_stock_is_skipped_and_named(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    h.fake.set_stock("GHOST-9", "WH1", "A-01", "5")  # stock of an item the item master does not list
    r = await run(h, sessionmaker, T0)
    assert r.ok, r.error
    st = r.entities["stock"]
    assert st.skipped == 1 and any("GHOST-9" in w for w in st.warnings), st.warnings
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Item).where(Item.sku == "GHOST-9")) == 0
    assert await book(sessionmaker) == erp_book(h)


async def test_a_malformed_answer_stops_the_sync_with_a_clear_message_and_changes_nothing(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    assert (await run(h, sessionmaker, T0)).ok
    async with sessionmaker() as s:
        cursors = {c.entity: c.cursor for c in (await s.execute(select(ErpSyncCursor))).scalars()}
    h.fake.change_item("M004", cost="77")
    h.fake.faults.inject("malformed", times=50)
    r = await run(h, sessionmaker, T0 + timedelta(minutes=5))
    assert not r.ok
    assert r.error is not None and "JSON" in r.error and h.connector().label in r.error
    async with sessionmaker() as s:
        m004 = (await s.execute(select(Item).where(Item.sku == "M004"))).scalar_one()
        assert m004.unit_cost == Decimal("14.5")
        assert {c.entity: c.cursor for c in (await s.execute(select(ErpSyncCursor))).scalars()} == cursors
        [failed] = (await s.execute(select(ErpSyncRun).where(ErpSyncRun.ok.is_(False)))).scalars().all()
        assert failed.error == r.error
    h.fake.faults.queue.clear()
    r = await run(h, sessionmaker, T0 + timedelta(minutes=6))
    assert r.ok and r.entities["items"].updated == 1


async def test_unposted_adjustments_survive_a_stock_snapshot_and_our_postings_do_not_come_back(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    async with sessionmaker() as s, s.begin():
        await add_people(s)
    assert (await run(h, sessionmaker, T0)).ok
    # a gain of 5 approved here (the book moves at once, as core.variance does), not yet in the ERP
    made = T0 + timedelta(minutes=1)
    [adj_id] = await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "5")], created_at=made)
    async with sessionmaker() as s, s.begin():
        il = (
            await s.execute(
                select(ItemLocation).join(Item, Item.id == ItemLocation.item_id).where(Item.sku == "M000")
                .join(Warehouse, Warehouse.id == ItemLocation.warehouse_id).where(Warehouse.code == "WH1")
            )
        ).scalar_one()  # fmt: skip
        il.qty = Decimal(il.qty) + 5
        s.add(Movement(item_id=il.item_id, location_id=il.location_id, item_location_id=il.id, qty=Decimal(5),
                       type=MovementType.ADJUSTMENT, occurred_at=made, recorded_at=made, source_doc="PD-1"))  # fmt: skip
    erp_qty = h.fake.qty("M000", "WH1", "A-01")
    r = await run(h, sessionmaker, T0 + timedelta(minutes=2), full=True)
    assert r.ok, r.error
    assert (await book(sessionmaker))[("M000", "WH1", "A-01")] == erp_qty + 5  # not undone by the snapshot

    # posted: the ERP holds it now; its document may show up among the ERP's movements
    h.fake.echo_postings = True
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=T0 + timedelta(minutes=3))
    finally:
        await c.close()
    assert h.fake.qty("M000", "WH1", "A-01") == erp_qty + 5
    r = await run(h, sessionmaker, T0 + timedelta(minutes=4), full=True)
    assert r.ok, r.error
    assert (await book(sessionmaker))[("M000", "WH1", "A-01")] == erp_qty + 5
    async with sessionmaker() as s:
        moved = (
            await s.execute(select(func.sum(Movement.qty)).where(Movement.item_location_id == il.id))
        ).scalar_one()
    assert Decimal(moved) == 5 + 5  # the seeded receipt and our adjustment, not the ERP's echo of it
    c = h.connector()
    try:
        report = await reconcile(sessionmaker, h.settings, c)
    finally:
        await c.close()
    assert report.unexplained == [] and report.failed == [], report.unexplained
    async with sessionmaker() as s:
        adj = await s.get(Adjustment, adj_id)
        assert adj is not None and adj.state == "posted"


async def test_reconcile_shows_unposted_and_unexplained_differences(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start(erp, aiohttp_server)
    seed_catalogue(h.fake)
    assert (await run(h, sessionmaker, T0)).ok
    await make_adjustments(sessionmaker, [("loss", "M001", "WH1", "A-02", "-2")], created_at=T0)
    async with sessionmaker() as s, s.begin():
        il = (
            await s.execute(
                select(ItemLocation).join(Item, Item.id == ItemLocation.item_id).where(Item.sku == "M001")
            )
        ).scalar_one()
        il.qty = Decimal(il.qty) - 2
    h.fake.set_stock("M004", "WH1", "A-01", "90")  # changed in the ERP by hand, unknown here
    c = h.connector()
    try:
        report = await reconcile(sessionmaker, h.settings, c)
    finally:
        await c.close()
    rows = {(r.sku, r.location): r for r in report.rows}
    assert rows[("M001", "A-02")].unposted == -2 and rows[("M001", "A-02")].unexplained == 0
    assert "待回写" in rows[("M001", "A-02")].docs[0]
    assert [(r.sku, r.unexplained) for r in report.unexplained] == [("M004", Decimal(-14))]
