"""``classify``: ABC classes from the ledger, written back with their history. Never commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import Column, Integer, Numeric, String, case, func, insert, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from core.classification import Classified, ClassSummaryRow, ItemValue, classify_abc, summarise
from core.config import Settings
from core.db import dialect_insert, staged, staging_table
from core.enums import CONSUMPTION_TYPES
from core.models import ClassChange, Item, ItemLocation, ItemWarehouseClass, Movement, UTCDateTime, Warehouse

BATCH = 5000


@dataclass(slots=True)
class ScopeSummary:
    warehouse: str | None  # None: company-wide
    rows: list[ClassSummaryRow]
    changed: int
    by_basis: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ClassifySummary:
    as_of: date
    scopes: list[ScopeSummary] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(s.changed for s in self.scopes)


async def _values(
    session: AsyncSession, start: datetime, end: datetime, warehouse_id: int | None
) -> list[ItemValue]:
    consumed = -func.sum(Movement.qty)
    mv = select(Movement.item_id, consumed.label("q")).where(
        Movement.type.in_(CONSUMPTION_TYPES),
        Movement.qty < 0,
        Movement.occurred_at > start,
        Movement.occurred_at <= end,
    )
    on_hand = select(
        ItemLocation.item_id, func.sum(case((ItemLocation.qty > 0, ItemLocation.qty), else_=0)).label("q")
    )
    items_q = select(Item.id, Item.unit_cost, Item.pinned_class)
    if warehouse_id is not None:
        mv = mv.join(ItemLocation, ItemLocation.id == Movement.item_location_id).where(
            ItemLocation.warehouse_id == warehouse_id
        )
        on_hand = on_hand.where(ItemLocation.warehouse_id == warehouse_id)
        items_q = items_q.where(
            Item.id.in_(select(ItemLocation.item_id).where(ItemLocation.warehouse_id == warehouse_id))
        )
    consumption = dict((await session.execute(mv.group_by(Movement.item_id))).all())
    stock = dict((await session.execute(on_hand.group_by(ItemLocation.item_id))).all())
    out = []
    for item_id, cost, pinned in await session.execute(items_q):
        cost = Decimal(cost or 0)
        used = consumption.get(item_id)
        out.append(
            ItemValue(
                item_id,
                Decimal(used or 0) * cost,
                Decimal(stock.get(item_id) or 0) * cost,
                pinned,
                has_history=used is not None and used > 0,
            )
        )
    return out


async def refresh_item_location_classes(
    session: AsyncSession,
    *,
    only_missing: bool = False,
    item_ids: list[int] | None = None,
    warehouse_id: int | None = None,
) -> None:
    """Copy each item-location's effective class onto it: its warehouse class when the item is classified
    per warehouse, else the item's class. The planner ranks rotations from there.

    Two set-based ``UPDATE ... FROM`` statements (PostgreSQL, SQLite >= 3.33); rows already right are left
    alone, so a refresh after a small reclassification touches only what changed.
    """
    il, iwc = ItemLocation, ItemWarehouseClass
    chunks: list[list[int] | None] = (
        [None] if item_ids is None else [item_ids[i : i + BATCH] for i in range(0, len(item_ids), BATCH)]
    )
    for chunk in chunks:
        conds: list[ColumnElement[bool]] = []
        if only_missing:
            conds.append(il.abc_class.is_(None))
        if warehouse_id is not None:
            conds.append(il.warehouse_id == warehouse_id)
        if chunk is not None:
            conds.append(il.item_id.in_(chunk))
        await session.execute(
            update(il)
            .where(
                iwc.item_id == il.item_id,
                iwc.warehouse_id == il.warehouse_id,
                il.abc_class.is_distinct_from(iwc.abc_class),
                *conds,
            )
            .values(abc_class=iwc.abc_class)
            .execution_options(synchronize_session=False)
        )
        has_warehouse_class = (
            select(iwc.item_id).where(iwc.item_id == il.item_id, iwc.warehouse_id == il.warehouse_id).exists()
        )
        await session.execute(
            update(il)
            .where(
                Item.id == il.item_id,
                il.abc_class.is_distinct_from(Item.abc_class),
                ~has_warehouse_class,
                *conds,
            )
            .values(abc_class=Item.abc_class)
            .execution_options(synchronize_session=False)
        )


async def apply_pins(session: AsyncSession, now: datetime) -> int:
    """Make pinned classes take effect now (a pin set by an import is used by the very next plan), with a
    history row each. Returns the number of items whose class changed."""
    rows = (
        await session.execute(
            select(Item.id, Item.abc_class, Item.pinned_class).where(
                Item.pinned_class.is_not(None), Item.abc_class != Item.pinned_class
            )
        )
    ).all()
    stale_warehouse = (
        await session.execute(
            select(
                ItemWarehouseClass.item_id,
                ItemWarehouseClass.warehouse_id,
                ItemWarehouseClass.abc_class,
                Item.pinned_class,
            )
            .join(Item, Item.id == ItemWarehouseClass.item_id)
            .where(Item.pinned_class.is_not(None), ItemWarehouseClass.abc_class != Item.pinned_class)
        )
    ).all()
    if not rows and not stale_warehouse:
        return 0
    history = [
        {"item_id": i, "warehouse_id": None, "old_class": old, "new_class": pin, "annual_value": 0,
         "basis": "pinned", "changed_at": now}
        for i, old, pin in rows
    ] + [
        {"item_id": i, "warehouse_id": w, "old_class": old, "new_class": pin, "annual_value": 0,
         "basis": "pinned", "changed_at": now}
        for i, w, old, pin in stale_warehouse
    ]  # fmt: skip
    await session.execute(
        update(Item)
        .where(Item.pinned_class.is_not(None), Item.abc_class != Item.pinned_class)
        .values(abc_class=Item.pinned_class)
    )
    await session.execute(
        update(ItemWarehouseClass)
        .where(
            Item.id == ItemWarehouseClass.item_id,
            Item.pinned_class.is_not(None),
            ItemWarehouseClass.abc_class != Item.pinned_class,
        )
        .values(abc_class=Item.pinned_class)
        .execution_options(synchronize_session=False)
    )
    await session.execute(insert(ClassChange), history)
    changed = sorted({int(str(h["item_id"])) for h in history})
    await refresh_item_location_classes(session, item_ids=changed)
    return len(changed)


CLASS_STAGING = staging_table(
    "class_staging",
    Column("item_id", Integer, nullable=False),
    Column("old_class", String(1)),
    Column("new_class", String(1), nullable=False),
    Column("annual_value", Numeric(18, 4)),
    Column("basis", String(20)),
)


async def _write(
    session: AsyncSession,
    result: list[Classified],
    old: dict[int, str | None],
    warehouse_id: int | None,
    now: datetime,
) -> int:
    """Write the changed classes, their history and the item-locations' copies, set-based."""
    changed = [r for r in result if old.get(r.item_id) != r.abc_class]
    if not changed:
        return 0
    rows = ((r.item_id, old.get(r.item_id), r.abc_class, r.value, r.basis.value) for r in changed)
    async with staged(session, CLASS_STAGING, rows) as st:
        c = st.c
        il = ItemLocation
        if warehouse_id is None:
            await session.execute(
                update(Item)
                .where(Item.id == c.item_id)
                .values(abc_class=c.new_class)
                .execution_options(synchronize_session=False)
            )
            no_warehouse_class = ~(
                select(ItemWarehouseClass.item_id)
                .where(
                    ItemWarehouseClass.item_id == il.item_id,
                    ItemWarehouseClass.warehouse_id == il.warehouse_id,
                )
                .exists()
            )
            await session.execute(
                update(il)
                .where(il.item_id == c.item_id, no_warehouse_class)
                .values(abc_class=c.new_class)
                .execution_options(synchronize_session=False)
            )
        else:
            upsert = dialect_insert(session, ItemWarehouseClass).from_select(
                ["item_id", "warehouse_id", "abc_class"],
                # (SQLite needs a WHERE here to tell the upsert's ON CONFLICT from a join's ON)
                select(c.item_id, literal(warehouse_id, Integer), c.new_class).where(true()),
            )
            await session.execute(
                upsert.on_conflict_do_update(
                    index_elements=["item_id", "warehouse_id"], set_={"abc_class": upsert.excluded.abc_class}
                )
            )
            await session.execute(
                update(il)
                .where(il.item_id == c.item_id, il.warehouse_id == warehouse_id)
                .values(abc_class=c.new_class)
                .execution_options(synchronize_session=False)
            )
        await session.execute(
            insert(ClassChange).from_select(
                ["item_id", "warehouse_id", "old_class", "new_class", "annual_value", "basis", "changed_at"],
                select(
                    c.item_id, literal(warehouse_id, Integer), c.old_class, c.new_class, c.annual_value, c.basis,
                    literal(now, UTCDateTime),
                ),
            )
        )  # fmt: skip
    return len(changed)


async def classify(
    session: AsyncSession,
    settings: Settings,
    *,
    as_of: date,
    now: datetime,
    warehouse_code: str | None = None,
) -> ClassifySummary:
    """Classify every item by the value it consumed in the look-back window ending on ``as_of``."""
    cfg = settings.classification
    end = datetime.combine(as_of + timedelta(days=1), time(0), settings.tz).astimezone(UTC)
    start = end - timedelta(days=cfg.lookback_days)
    summary = ClassifySummary(as_of)
    if warehouse_code is None and cfg.scope == "company":
        values = await _values(session, start, end, None)
        result = classify_abc(values, *cfg.cutoffs_for(None))
        old = dict((await session.execute(select(Item.id, Item.abc_class))).all())
        # a first classification has no "old" class: items start as C by default, record them all
        first = not (await session.execute(select(func.count()).select_from(ClassChange))).scalar_one()
        changed = await _write(session, result, {} if first else dict(old), None, now)
        summary.scopes.append(ScopeSummary(None, summarise(result), changed, _bases(result)))
        return summary
    stmt = select(Warehouse.id, Warehouse.code).order_by(Warehouse.code)
    if warehouse_code is not None:
        stmt = stmt.where(Warehouse.code == warehouse_code)
    warehouses = (await session.execute(stmt)).all()
    if not warehouses:
        raise LookupError(f"没有仓库 {warehouse_code!r} / no warehouse {warehouse_code!r}")
    for wid, code in warehouses:
        values = await _values(session, start, end, wid)
        result = classify_abc(values, *cfg.cutoffs_for(code))
        old = dict(
            (
                await session.execute(
                    select(ItemWarehouseClass.item_id, ItemWarehouseClass.abc_class).where(
                        ItemWarehouseClass.warehouse_id == wid
                    )
                )
            ).all()
        )
        changed = await _write(session, result, dict(old), wid, now)
        summary.scopes.append(ScopeSummary(code, summarise(result), changed, _bases(result)))
    return summary


def _bases(result: list[Classified]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in result:
        out[r.basis.value] = out.get(r.basis.value, 0) + 1
    return out
