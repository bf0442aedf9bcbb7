"""classify on a real database: consumption value, stock-value fallback, pins, history, per-warehouse scope."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.classification_service import classify
from core.config import ClassificationSettings, Settings
from core.enums import MovementType
from core.models import ClassChange, Item, ItemLocation, ItemWarehouseClass, Movement
from tests.clock import local, morning
from tests.integration.builders import Company, build_company

AS_OF = date(2026, 11, 27)


async def issue(
    session: AsyncSession,
    co: Company,
    idx: int,
    qty: int,
    days_ago: int,
    kind: MovementType = MovementType.ISSUE,
) -> None:
    il = co.item_locations[idx]
    session.add(
        Movement(
            item_id=il.item_id,
            location_id=il.location_id,
            item_location_id=il.id,
            qty=Decimal(-qty),
            type=kind,
            occurred_at=datetime(2026, 11, 27, 8, tzinfo=UTC) - timedelta(days=days_ago),
        )
    )


async def classes(session: AsyncSession) -> dict[str, str]:
    return dict((await session.execute(select(Item.sku, Item.abc_class).order_by(Item.sku))).all())


async def test_consumption_fallback_pins_and_history(session: AsyncSession) -> None:
    co = await build_company(session, items=6, classes="C")
    # consumption values (unit cost 10): item0 3000, item1 100, item2 50 (production issue), item3 outside window
    await issue(session, co, 0, 300, 10)
    await issue(session, co, 1, 10, 100)
    await issue(session, co, 2, 5, 200, MovementType.PRODUCTION_ISSUE)
    await issue(session, co, 3, 1000, 400)
    await issue(session, co, 4, 3, 5, MovementType.RECEIPT)  # receipts are not consumption
    co.items[5].pinned_class = "A"
    await session.flush()
    summary = await classify(session, Settings(), as_of=AS_OF, now=local(AS_OF, 20))
    got = await classes(session)
    skus = [i.sku for i in co.items]
    assert got[skus[0]] == "A" and got[skus[1]] == "B" and got[skus[5]] == "A"
    # items 3 and 4 have no consumption in the window: ranked by stock value (10 x 10 = 100 each)
    bases = {r.item_id: r for r in (await session.execute(select(ClassChange))).scalars()}
    assert bases[co.items[3].id].basis == "stock_value" and bases[co.items[0].id].basis == "consumption"
    assert bases[co.items[5].id].basis == "pinned"
    assert summary.scopes[0].changed == 6 and sum(r.items for r in summary.scopes[0].rows) == 6
    # item-locations carry the class the planner will use
    il_classes = dict((await session.execute(select(ItemLocation.item_id, ItemLocation.abc_class))).all())
    assert il_classes[co.items[0].id] == "A" and il_classes[co.items[5].id] == "A"
    # a second run changes nothing and records nothing
    again = await classify(session, Settings(), as_of=AS_OF, now=local(AS_OF, 20))
    assert again.changed == 0
    assert len((await session.execute(select(ClassChange))).scalars().all()) == 6


async def test_history_records_a_change(session: AsyncSession) -> None:
    co = await build_company(session, items=3, classes="C")
    await issue(session, co, 0, 50, 3)
    await session.flush()
    await classify(session, Settings(), as_of=AS_OF, now=local(AS_OF, 20))
    await issue(session, co, 2, 5000, 1)
    await session.flush()
    await classify(session, Settings(), as_of=AS_OF, now=local(AS_OF, 20))
    hist = (
        (
            await session.execute(
                select(ClassChange).where(ClassChange.item_id == co.items[0].id).order_by(ClassChange.id)
            )
        )
        .scalars()
        .all()
    )
    # first: item0 is 500 of 700 -> A; then item2 consumes 50,000 of 50,600: item0 comes after 95 % -> C
    assert [(h.old_class, h.new_class) for h in hist] == [(None, "A"), ("A", "C")]


async def test_per_warehouse_scope_and_cutoffs(session: AsyncSession) -> None:
    a = await build_company(session, items=4, code="SH01")
    b = await build_company(session, items=4, code="SZ01")
    for i, q in enumerate([70, 20, 8, 2]):
        await issue(session, a, i, q, 5)
        await issue(session, b, i, q, 5)
    await session.flush()
    settings = Settings(
        classification=ClassificationSettings(
            scope="warehouse", warehouse_cutoffs={"SZ01": {"a_cutoff": 0.5}}
        )
    )
    summary = await classify(session, settings, as_of=AS_OF, now=local(AS_OF, 20))
    assert [s.warehouse for s in summary.scopes] == ["SH01", "SZ01"]
    rows = (await session.execute(select(ItemWarehouseClass))).scalars().all()
    by = {(r.warehouse_id, r.item_id): r.abc_class for r in rows}
    # SH01 (A to 80 %): 70 and 20 are A; SZ01 (A to 50 %): only 70 is A
    assert by[(a.warehouse.id, a.items[1].id)] == "A"
    assert by[(b.warehouse.id, b.items[1].id)] == "B"
    il = dict((await session.execute(select(ItemLocation.id, ItemLocation.abc_class))).all())
    assert il[b.item_locations[1].id] == "B" and il[a.item_locations[1].id] == "A"


async def test_a_new_pin_takes_effect_at_the_next_plan(session: AsyncSession) -> None:
    from core.scheduling.service import plan_day

    co = await build_company(session, items=5, classes="C")
    await classify(
        session, Settings(), as_of=AS_OF, now=local(AS_OF, 20)
    )  # equal stock values: items 0-3 are A, item 4 is B
    target = co.items[4]
    before = (await session.execute(select(Item.abc_class).where(Item.id == target.id))).scalar_one()
    assert before == "B"
    target.pinned_class = "C"  # e.g. from an items import with 固定分类 = C
    await session.flush()
    await plan_day(session, Settings(), date(2026, 11, 30), now=morning(date(2026, 11, 30)))
    il = (
        await session.execute(select(ItemLocation.abc_class).where(ItemLocation.item_id == target.id))
    ).scalar_one()
    assert il == "C"
    last = (
        (
            await session.execute(
                select(ClassChange).where(ClassChange.item_id == target.id).order_by(ClassChange.id.desc())
            )
        )
        .scalars()
        .first()
    )
    assert last is not None and (last.old_class, last.new_class, last.basis) == ("B", "C", "pinned")
