"""Kingdee with two stock organisations in one data centre: org 100 is ours (``erp.kingdee.org``), org 101 has its
own copy of every material (another cost), its own warehouse ``CK101 北京分公司仓``, stock and documents. Every
read keeps to org 100 in its FilterString, as Kingdee filters; a material org 100 lists twice is folded when the
copies agree and reported, not folded, when they do not."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Item, ItemBarcode, Movement, Warehouse
from integrations.erp.sync import SyncReport, sync
from tests.fakes.erp_common import FakeDoc, FakeItem, seed_catalogue
from tests.fakes.erp_harness import Harness, drain_until_done, make_adjustments, ready, start
from tests.fakes.erp_kingdee import KingdeeFake
from tests.integration.test_erp_sync import book

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def second_org(fake: KingdeeFake) -> None:
    """Org 101: the same material numbers with other costs, its warehouse CK101 with stock and a receipt."""
    other = fake.add_org("101")
    other.add_warehouse("CK101", "北京分公司仓", ["K-01"])
    other.add_warehouse("WH1", "一号仓（北京）", ["A-01"])
    for sku, item in fake.items.items():
        other.add_item(sku, item.name, cost=str(item.cost + 80), barcodes=(f"OTHER-{sku}",))
    other.set_stock("M000", "CK101", "K-01", "900")
    other.set_stock("M001", "WH1", "A-01", "444")
    other.add_movement("receipt", "M002", "CK101", "K-01", "50")


async def run(h: Harness, sm: async_sessionmaker[AsyncSession]) -> SyncReport:
    c = h.connector()
    try:
        return await sync(sm, h.settings, c, now=T0, clock=lambda: T0)
    finally:
        await c.close()


@pytest.mark.parametrize("page_size", [1, 500])  # org 101's copy on the next page, or on the same one
async def test_a_two_organisation_tenant_syncs_only_the_configured_organisation(
    page_size: int, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start("kingdee", aiohttp_server, page_size=page_size)
    fake: KingdeeFake = h.fake  # type: ignore[assignment]
    seed_catalogue(fake)
    second_org(fake)
    ours = {(sku, wh, loc): q for (sku, wh, loc), q in fake.stock.items()}
    r = await run(h, sessionmaker)
    assert r.ok, r.error
    async with sessionmaker() as s:
        costs = dict((await s.execute(select(Item.sku, Item.unit_cost))).all())
        warehouses = set((await s.execute(select(Warehouse.code))).scalars())
        codes = set((await s.execute(select(ItemBarcode.barcode))).scalars())
        moved = (await s.execute(select(Movement.qty))).scalars().all()
    assert costs == {sku: i.cost for sku, i in fake.items.items()}  # org 100's costs, none replaced
    assert warehouses == {"WH1", "WH2"} and not any(c.startswith("OTHER-") for c in codes)
    assert await book(sessionmaker) == ours  # no CK101 stock, and not 444 of M001 in WH1
    assert sorted(moved) == [Decimal(-3), Decimal(5)]  # org 100's receipt and issue only
    # the filters are Kingdee's own: each read names the organisation in its FilterString
    by_form = {form: flt for form, flt in fake.queries}
    assert "FUseOrgId.FNumber='100'" in by_form["BD_MATERIAL"]
    assert "FUseOrgId.FNumber='100'" in by_form["BD_STOCK"]
    assert "FStockOrgId.FNumber='100'" in by_form["STK_Inventory"]
    assert "FStockOrgId.FNumber='100'" in by_form["STK_InStock"]
    assert "FStockOrgId.FNumber='100'" in by_form["SAL_OUTSTOCK"]


async def test_a_material_listed_twice_is_folded_when_the_copies_agree_and_reported_when_they_do_not(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start("kingdee", aiohttp_server, page_size=500)
    fake: KingdeeFake = h.fake  # type: ignore[assignment]
    seed_catalogue(fake)
    second_org(fake)
    m1, m3 = fake.items["M001"], fake.items["M003"]
    fake.extra_materials = [
        FakeItem(
            m1.id, "M001", m1.name, m1.unit, m1.cost, ["6911111111111"], m1.modified, m1.spec
        ),  # a 2nd barcode
        FakeItem(
            fake.next_id(), "M003", m3.name, "Box", Decimal("77"), [], m3.modified, m3.spec
        ),  # disagrees
    ]
    r = await run(h, sessionmaker)
    assert r.ok, r.error
    items = r.entities["items"]
    [warning] = [w for w in items.warnings if "M003" in w]
    assert "成本" in warning and "单位" in warning and "77" in warning and "13.5" in warning
    assert "not synced" in warning and items.skipped == 2
    async with sessionmaker() as s:
        skus = set((await s.execute(select(Item.sku))).scalars())
        m001 = (await s.execute(select(Item).where(Item.sku == "M001"))).scalar_one()
        codes = set(
            (await s.execute(select(ItemBarcode.barcode).where(ItemBarcode.item_id == m001.id))).scalars()
        )
    assert (
        "M003" not in skus and {"M000", "M001", "M002", "M004", "M005"} <= skus
    )  # neither copy of M003 chosen
    assert codes == {"6900000000001", "6911111111111"} and m001.unit_cost == m1.cost


async def test_a_bill_of_another_organisation_with_our_number_is_not_taken_for_ours(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker)
    fake: KingdeeFake = h.fake  # type: ignore[assignment]
    fake.numbering = "PYD"
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "5")])
    n = fake.next_id()
    fake.docs[n] = FakeDoc(n, f"PYD{n}", "gain", "WH1", [], "audited",
                           {"org": "101", "note": "PD00000001 北京分公司"}, ref="elsewhere")  # fmt: skip
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=T0)
    finally:
        await c.close()
    [ours] = [d for d in fake.bills("PD00000001") if d.extra.get("org") == "100"]
    assert ours.status == "audited" and fake.ledger("PD00000001") == 1
    assert all("FStockOrgId.FNumber='100'" in f for form, f in fake.queries if form == "STK_StockCountGain")
