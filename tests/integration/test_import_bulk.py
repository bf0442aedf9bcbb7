"""The set-based import: staged rows written with a few statements must keep every rule of the row-by-row one.

Counts and changed-fields-only updates for each kind, lot balances and the snapshot-versus-ledger rule (checked
against a plain model of the rules, in both orders), ``apply_movements`` as the ERP sync calls it, the staging
helpers, and staging tables left behind by a failed unit of work.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import create_staging, staged, staging_table
from core.importing import ImportFailed, import_file
from core.models import (
    Item,
    ItemBarcode,
    ItemLocation,
    ItemUnit,
    Location,
    LotBalance,
    Movement,
    MovementType,
    Warehouse,
    Zone,
)
from core.stock import MovementLine, apply_movements, ensure_item_locations, item_location_ids, natural_key
from tests.integration.test_importing import TZ, run, snapshot, write_csv

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


async def books(session: AsyncSession) -> dict[tuple[str, str], tuple[Decimal, dict[str, Decimal]]]:
    """``(sku, location) -> (book qty, {lot: qty})``."""
    out: dict[tuple[str, str], tuple[Decimal, dict[str, Decimal]]] = {}
    for il_id, sku, code, qty in await session.execute(
        select(ItemLocation.id, Item.sku, Location.code, ItemLocation.qty)
        .join(Item, Item.id == ItemLocation.item_id)
        .join(Location, Location.id == ItemLocation.location_id)
    ):
        lots = {
            lot: q
            for lot, q in await session.execute(
                select(LotBalance.lot, LotBalance.qty).where(LotBalance.item_location_id == il_id)
            )
        }
        out[(sku, code)] = (qty, lots)
    return out


# --------------------------------------------------------------------------------------------------- items


ITEMS: list[list[Any]] = [
    ["sku", "name", "spec", "unit_cost", "barcode", "pack_unit", "pack_factor"],
    ["A1", "螺丝", "M3", "0.5", "6901", "箱", "24"],
    ["A2", "螺母", None, "1.25", "6902", None, None],
    ["A3", "垫片", "Φ8", "2", None, "盒", "10"],
    ["A4", "弹垫", None, "3", None, None, None],
]


async def test_item_changes_are_counted_once_and_only_given_columns_change(
    session: AsyncSession, tmp_path: Path
) -> None:
    first = await run(session, write_csv(tmp_path / "items.csv", ITEMS))
    assert (first.created, first.updated, first.unchanged) == (4, 0, 0)
    a2_spec_before = await session.scalar(select(Item.spec).where(Item.sku == "A2"))
    second = await run(
        session,
        write_csv(
            tmp_path / "changes.csv",
            [
                ["sku", "name", "barcode", "pack_unit", "pack_factor", "unit_cost"],
                ["A1", "螺丝", "6911", "箱", "12", None],  # a new barcode and a new factor: one update
                ["A2", "螺母", "6902", "袋", "100", None],  # a new pack unit
                ["A3", "垫片", None, "盒", "10", "2"],  # nothing new
                ["A4", "弹垫改", None, None, None, None],  # a new name
                ["B1", "新件", "6999", None, None, "9"],  # new
                ["B1", "新件", "6999", None, None, "9"],  # the same line again
            ],
        ),
    )
    assert (second.rows, second.created, second.updated, second.unchanged) == (6, 1, 3, 2)
    items = {i.sku: i for i in await session.scalars(select(Item))}
    assert items["A1"].spec == "M3" and items["A1"].unit_cost == Decimal("0.5")  # not given: kept
    assert items["A2"].spec == a2_spec_before is None
    assert items["A4"].name == "弹垫改" and items["A4"].unit_cost == Decimal(3)
    assert (
        items["B1"].unit_cost == Decimal(9) and items["B1"].abc_class == "C" and items["B1"].base_unit == "个"
    )
    codes = {b: i for b, i in await session.execute(select(ItemBarcode.barcode, ItemBarcode.item_id))}
    assert codes == {  # barcodes are added, never removed
        "6901": items["A1"].id,
        "6911": items["A1"].id,
        "6902": items["A2"].id,
        "6999": items["B1"].id,
    }
    units = {
        (i, u): f
        for i, u, f in await session.execute(select(ItemUnit.item_id, ItemUnit.unit, ItemUnit.factor))
    }
    assert units == {
        (items["A1"].id, "箱"): Decimal(12),
        (items["A2"].id, "袋"): Decimal(100),
        (items["A3"].id, "盒"): Decimal(10),
    }
    before = await snapshot(session)
    again = await run(session, tmp_path / "changes.csv")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 6)
    assert await snapshot(session) == before


# --------------------------------------------------------------------------------------------------- locations


async def test_location_changes_and_default_sequence_among_existing_codes(
    session: AsyncSession, tmp_path: Path
) -> None:
    await run(
        session,
        write_csv(
            tmp_path / "l1.csv",
            [
                ["warehouse", "location", "zone", "location_barcode"],
                ["SH01", "A-2", "A", "L-A2"],
                ["SH01", "A-10", "A", None],
            ],
        ),
    )
    report = await run(
        session,
        write_csv(
            tmp_path / "l2.csv",
            [
                ["warehouse", "location", "zone", "location_barcode", "sequence"],
                ["SH01", "A-2", "B", None, None],  # zone changes, barcode kept
                ["SH01", "A-10", None, "L-A10", None],  # barcode added
                ["SH01", "A-3", None, None, None],  # new: between
                ["SH01", "Z-1", None, None, "99"],  # new, explicit sequence
                ["BJ01", "X-1", None, None, None],  # new warehouse
            ],
        ),
    )
    assert (report.created, report.updated, report.unchanged) == (3, 2, 0)
    locs = {
        (w, c): (z, b, s)
        for w, c, z, b, s in await session.execute(
            select(Warehouse.code, Location.code, Zone.code, Location.barcode, Location.sequence)
            .join(Warehouse, Warehouse.id == Location.warehouse_id)
            .outerjoin(Zone, Zone.id == Location.zone_id)
        )
    }
    assert locs == {
        # A-10 moved from rank 2 to 3: the file asks for the default sequence, which A-3 changed
        ("SH01", "A-2"): ("B", "L-A2", 1),
        ("SH01", "A-10"): ("A", "L-A10", 3),
        ("SH01", "A-3"): (None, None, 2),
        ("SH01", "Z-1"): (None, None, 99),
        ("BJ01", "X-1"): (None, None, 1),
    }


# --------------------------------------------------------------------------------------------------- stock and movements

MASTER_ITEMS = [
    ["sku", "name", "lot_tracked"],
    ["P1", "平垫", "否"],
    ["P2", "弹垫", "否"],
    ["L1", "胶水", "是"],
]
MASTER_LOCS = [["warehouse", "location"], ["SH01", "A-1"], ["SH01", "A-2"], ["SH01", "A-3"]]


async def master(session: AsyncSession, tmp_path: Path) -> None:
    await run(session, write_csv(tmp_path / "mi.csv", MASTER_ITEMS))
    await run(session, write_csv(tmp_path / "ml.csv", MASTER_LOCS))


async def test_stock_of_lots_adds_the_lots_later_movements_and_drops_unlisted_lots(
    session: AsyncSession, tmp_path: Path
) -> None:
    await master(session, tmp_path)
    moves: list[list[Any]] = [
        ["sku", "warehouse", "location", "qty", "type", "time", "lot"],
        ["L1", "SH01", "A-1", "10", "receipt", "2025-05-01 08:00", "B1"],  # before the snapshot
        ["L1", "SH01", "A-1", "-3", "issue", "2025-05-03 08:00", "B1"],  # after
        ["L1", "SH01", "A-1", "5", "receipt", "2025-05-03 09:00", "B2"],  # after
        ["L1", "SH01", "A-1", "7", "receipt", "2025-05-01 09:00", "B3"],  # before
        ["P1", "SH01", "A-1", "-2", "issue", "2025-05-03 08:00", None],  # after
    ]
    await run(session, write_csv(tmp_path / "m.csv", moves))
    # lot rows far apart in the file (different batches of the reading pass) still make one book
    filler: list[list[Any]] = [["P2", "SH01", "A-2", "1", None, "2025-05-02 08:00"]] * 2100
    stock: list[list[Any]] = [
        ["sku", "warehouse", "location", "qty", "lot", "as_of"],
        ["L1", "SH01", "A-1", "8", "B1", "2025-05-02 08:00"],
        *filler,
        ["L1", "SH01", "A-1", "1", "B2", "2025-05-02 08:00"],
        ["P1", "SH01", "A-1", "50", None, "2025-05-02 08:00"],
    ]
    report = await run(session, write_csv(tmp_path / "s.csv", stock))
    # P2@A-2 is new (created, then 2099 identical repeats), P1@A-1 existed (updated), the lots existed (updated)
    assert (report.rows, report.created, report.updated, report.unchanged) == (2103, 1, 3, 2099)
    b = await books(session)
    assert b[("L1", "A-1")] == (Decimal(9 - 3 + 5), {"B1": Decimal(5), "B2": Decimal(6), "B3": Decimal(0)})
    assert b[("P1", "A-1")][0] == Decimal(48)
    assert b[("P2", "A-2")][0] == Decimal(1)
    il = await session.scalar(
        select(ItemLocation).join(Item, Item.id == ItemLocation.item_id).where(Item.sku == "P2")
    )
    assert il is not None and il.book_as_of == datetime(2025, 5, 2, 0, tzinfo=UTC)
    before = await snapshot(session)
    again = await run(session, tmp_path / "s.csv")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2103)
    assert await snapshot(session) == before


def model_book(
    stock: dict[tuple[str, str], list[tuple[str | None, int]]],
    snapshot_at: datetime,
    moves: list[tuple[str, str, int, datetime, str | None]],
) -> dict[tuple[str, str], tuple[Decimal, dict[str, Decimal]]]:
    """The rules in plain Python: the snapshot plus the movements after it; without a snapshot, every movement."""
    out: dict[tuple[str, str], tuple[Decimal, dict[str, Decimal]]] = {}
    keys = set(stock) | {(sku, loc) for sku, loc, *_ in moves}
    for key in keys:
        lots: dict[str, Decimal] = defaultdict(Decimal)
        qty = Decimal(0)
        for lot, q in stock.get(key, []):
            qty += q
            if lot:
                lots[lot] += q
        for sku, loc, q, t, lot in moves:
            if (sku, loc) == key and (key not in stock or t > snapshot_at):
                qty += q
                if lot:
                    lots[lot] += q
        out[key] = (qty, dict(lots))
    return out


async def test_snapshot_and_ledger_in_either_order_give_the_book_of_the_rules(
    session: AsyncSession, tmp_path: Path
) -> None:
    rng = random.Random(7)
    skus = [f"S{i}" for i in range(30)]
    lot_skus = set(skus[::3])
    locs = [f"B-{i}" for i in range(1, 21)]
    await run(
        session,
        write_csv(
            tmp_path / "i.csv",
            [["sku", "name", "lot_tracked"], *[[s, s, "是" if s in lot_skus else "否"] for s in skus]],
        ),
    )
    await run(
        session, write_csv(tmp_path / "l.csv", [["warehouse", "location"], *[["SH01", c] for c in locs]])
    )
    snap = datetime(2025, 5, 10, 12, tzinfo=UTC)
    pairs = rng.sample([(s, c) for s in skus for c in locs], 120)
    stock: dict[tuple[str, str], list[tuple[str | None, int]]] = {}
    for s, c in pairs[:80]:  # the rest only have movements
        stock[(s, c)] = (
            [(lot, rng.randint(0, 50)) for lot in ("X", "Y")]
            if s in lot_skus
            else [(None, rng.randint(-5, 50))]
        )
    moves = []
    for _ in range(600):
        s, c = rng.choice(pairs)
        t = snap + timedelta(minutes=rng.randint(-5000, 5000))
        lot = rng.choice(["X", "Y"]) if s in lot_skus else None
        moves.append((s, c, rng.randint(-20, 20) or 1, t, lot))
    stock_rows: list[list[Any]] = [["sku", "warehouse", "location", "qty", "lot", "as_of"]]
    for (s, c), lots in stock.items():
        stock_rows += [[s, "SH01", c, q, lot, snap.isoformat()] for lot, q in lots]
    move_rows: list[list[Any]] = [["sku", "warehouse", "location", "qty", "type", "time", "lot"]]
    move_rows += [[s, "SH01", c, q, "adjustment", t.isoformat(), lot] for s, c, q, t, lot in moves]
    stock_file, move_file = (
        write_csv(tmp_path / "s.csv", stock_rows),
        write_csv(tmp_path / "m.csv", move_rows),
    )
    expected = model_book(stock, snap, moves)

    await run(session, stock_file)
    await run(session, move_file)
    got = await books(session)
    assert got == expected

    # the other order, on a fresh ledger and book
    await session.execute(text("DELETE FROM movement"))
    await session.execute(text("DELETE FROM lot_balance"))
    await session.execute(text("DELETE FROM item_location"))
    await session.commit()
    await run(session, move_file)
    await run(session, stock_file)
    assert await books(session) == expected


async def test_apply_movements_as_the_erp_sync_calls_it(session: AsyncSession, tmp_path: Path) -> None:
    await master(session, tmp_path)
    await run(
        session,
        write_csv(
            tmp_path / "s.csv",
            [
                ["sku", "warehouse", "location", "qty", "lot", "as_of"],
                ["L1", "SH01", "A-1", "10", "B1", "2025-05-02 00:00"],
            ],
        ),
    )
    ids = dict((s, i) for s, i in await session.execute(select(Item.sku, Item.id)))
    loc = dict((c, i) for c, i in await session.execute(select(Location.code, Location.id)))
    await session.execute(
        ItemLocation.__table__.update()  # type: ignore[attr-defined]
        .where(ItemLocation.item_id == ids["L1"])
        .values(last_counted_at=datetime(2025, 5, 3, tzinfo=UTC), turnover_value=0)
    )
    await session.execute(Item.__table__.update().where(Item.sku == "L1").values(unit_cost=2))  # type: ignore[attr-defined]
    pairs = [(ids["L1"], loc["A-1"]), (ids["P1"], loc["A-2"])]
    assert await ensure_item_locations(session, pairs) == 1
    il = await item_location_ids(session, pairs)

    def line(
        key: str | None, sku: str, code: str, qty: int, day: int, lot: str | None = None
    ) -> MovementLine:
        i, lc = ids[sku], loc[code]
        return MovementLine(
            i,
            lc,
            il[(i, lc)],
            Decimal(qty),
            MovementType.ISSUE,
            datetime(2025, 5, day, 8, tzinfo=UTC),
            lot,
            "D",
            key,
        )

    lines = [
        line("erp:1", "L1", "A-1", -1, 1, "B1"),  # before the snapshot: ledger only
        line("erp:2", "L1", "A-1", -2, 4, "B1"),  # after the snapshot and the count
        line("erp:2", "L1", "A-1", -2, 4, "B1"),  # the same ERP line twice in one page
        line("erp:3", "P1", "A-2", 5, 2),
        line(None, "P1", "A-2", 1, 2),  # no key: always recorded
    ]
    assert await apply_movements(session, lines, recorded_at=NOW) == 4
    assert await apply_movements(session, lines[:4], recorded_at=NOW) == 0  # a page pulled again
    await session.commit()
    b = await books(session)
    assert b[("L1", "A-1")] == (Decimal(8), {"B1": Decimal(8)})
    assert b[("P1", "A-2")] == (Decimal(6), {})
    l1 = await session.get(ItemLocation, il[(ids["L1"], loc["A-1"])])
    assert l1 is not None
    assert l1.last_movement_at == datetime(2025, 5, 4, 8, tzinfo=UTC)
    assert l1.turnover_value == Decimal(4)  # only the movement after the count: |-2| x 2
    keys = set(await session.scalars(select(Movement.import_key)))
    assert keys == {"erp:1", "erp:2", "erp:3", None}
    assert await session.scalar(select(func.count()).select_from(Movement)) == 4
    assert set(await session.scalars(select(Movement.recorded_at))) == {NOW}


async def test_more_than_a_thousand_item_locations_append_to_the_rotation_in_order(
    session: AsyncSession, tmp_path: Path
) -> None:
    n_items, codes = 60, [f"C-{i}" for i in range(1, 31)]
    await run(
        session,
        write_csv(tmp_path / "i.csv", [["sku", "name"], *[[f"K{i:02d}", "x"] for i in range(n_items)]]),
    )
    await run(
        session,
        write_csv(
            tmp_path / "l.csv",
            # sequence ties broken by the code's natural order (C-2 before C-10)
            [
                ["warehouse", "location", "sequence"],
                *[["SH01", c, 1 + (i % 3 == 0)] for i, c in enumerate(codes)],
            ],
        ),
    )
    ids = dict((s, i) for s, i in await session.execute(select(Item.sku, Item.id)))
    locs = {
        c: (i, s) for c, i, s in await session.execute(select(Location.code, Location.id, Location.sequence))
    }
    # one pair exists already, at the head of the rotation
    assert await ensure_item_locations(session, [(ids["K59"], locs["C-30"][0])]) == 1
    pairs = [(i, loc_id) for i in ids.values() for loc_id, _ in locs.values()]  # 1,800 pairs
    assert await ensure_item_locations(session, pairs) == len(pairs) - 1
    assert await ensure_item_locations(session, pairs) == 0
    found = await item_location_ids(session, pairs)
    assert len(found) == len(pairs)
    rows = (
        await session.execute(
            select(ItemLocation.rotation_seq, Location.code, Location.sequence, Item.sku)
            .join(Location, Location.id == ItemLocation.location_id)
            .join(Item, Item.id == ItemLocation.item_id)
            .order_by(ItemLocation.rotation_seq)
        )
    ).all()
    assert [r.rotation_seq for r in rows] == list(range(1, len(pairs) + 1))
    assert (rows[0].code, rows[0].sku) == ("C-30", "K59")
    rest = [(r.sequence, natural_key(r.code), r.sku) for r in rows[1:]]
    assert rest == sorted(rest)


# --------------------------------------------------------------------------------------------------- staging


async def test_a_failed_import_committed_anyway_leaves_nothing_that_breaks_the_next(
    session: AsyncSession, tmp_path: Path
) -> None:
    good = write_csv(tmp_path / "good.csv", [["sku", "name"], ["A", "x"], ["B", "y"]])
    bad = write_csv(
        tmp_path / "bad.csv",
        [["sku", "name", "unit_cost"]] + [[f"N{i}", "n", 1] for i in range(2500)] + [["Z", "z", "?"]],
    )
    for _ in range(2):
        try:
            await import_file(session, bad, tz=TZ, now=NOW)
        except ImportFailed:
            pass
        else:
            raise AssertionError("the bad file was accepted")
        report = await import_file(session, good, tz=TZ, now=NOW)  # the same transaction
        await session.commit()
        with pytest.raises(ImportFailed):
            await import_file(session, bad, tz=TZ, now=NOW)
        await session.commit()  # a caller that commits anyway
    assert report.unchanged == 2
    assert set(await session.scalars(select(Item.sku))) == {"A", "B"}


async def test_progress_counts_the_rows_read(session: AsyncSession, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "i.csv", [["sku", "name"], *[[f"P{i}", "x"] for i in range(12_345)]])
    calls: list[int] = []
    await import_file(session, path, tz=TZ, now=NOW, progress=calls.append)
    assert calls == sorted(calls) and calls[-1] == 12_345 and len(calls) >= 2


SCRATCH = staging_table("scratch_staging", Column("a", Integer, nullable=False), Column("b", String(10)))


async def test_staged_loads_a_subset_of_columns_lazily_and_replaces_a_leftover(session: AsyncSession) -> None:
    await create_staging(session, SCRATCH)
    await session.execute(SCRATCH.insert().values(a=-1))  # a leftover from an earlier unit of work

    pulled: list[int] = []

    def rows() -> Any:
        for i in range(25):
            pulled.append(i)
            yield (i,)

    async with staged(session, SCRATCH, rows(), columns=("a",), batch=10) as st:
        assert len(pulled) == 25
        got = (await session.execute(select(st.c.a, st.c.b).order_by(st.c.a))).all()
        assert [tuple(r) for r in got] == [(i, None) for i in range(25)]
    await create_staging(session, SCRATCH)  # dropped after the block: creating it again works
    assert await session.scalar(select(func.count()).select_from(SCRATCH)) == 0
    await session.rollback()
