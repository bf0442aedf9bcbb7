"""The demo company: deterministic, complete, and internally consistent."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import make_engine, make_sessionmaker
from core.demo import DemoSummary, generate_demo
from core.models import (
    CONSUMPTION_TYPES,
    Base,
    Item,
    ItemBarcode,
    ItemLocation,
    Location,
    LotBalance,
    Movement,
    Role,
    User,
    UserUnavailability,
    Warehouse,
    Zone,
)

TODAY = date(2026, 11, 30)
TZ = ZoneInfo("Asia/Shanghai")
ITEMS = 300
Q = Decimal("0.0001")


def _ean13_ok(code: str) -> bool:
    if len(code) != 13 or not code.isdigit():
        return False
    odd = sum(int(c) for c in code[0:12:2])
    even = sum(int(c) for c in code[1:12:2])
    return (odd + 3 * even + int(code[12])) % 10 == 0


async def _digest(session: AsyncSession) -> str:
    h = hashlib.sha256()
    items = await session.execute(select(Item.sku, Item.name, Item.spec, Item.unit_cost).order_by(Item.sku))
    for sku, name, spec, cost in items:
        h.update(f"{sku}|{name}|{spec}|{Decimal(cost).quantize(Q)}\n".encode())
    ils = await session.execute(
        select(
            Item.sku,
            Location.code,
            ItemLocation.qty,
            ItemLocation.rotation_seq,
            ItemLocation.last_movement_at,
        )
        .join(Item, Item.id == ItemLocation.item_id)
        .join(Location, Location.id == ItemLocation.location_id)
        .order_by(Item.sku, Location.code)
    )
    for sku, loc, qty, seq, last in ils:
        h.update(f"{sku}|{loc}|{Decimal(qty).quantize(Q)}|{seq}|{last.isoformat()}\n".encode())
    n, total = (await session.execute(select(func.count(), func.sum(func.abs(Movement.qty))))).one()
    h.update(f"{n}|{Decimal(str(total)).quantize(Q)}".encode())
    return h.hexdigest()


async def _generate(sm: async_sessionmaker[AsyncSession]) -> DemoSummary:
    async with sm() as s, s.begin():
        return await generate_demo(s, items=ITEMS, today=TODAY, tz=TZ)


@pytest.fixture
async def demo(sessionmaker: async_sessionmaker[AsyncSession]) -> DemoSummary:
    return await _generate(sessionmaker)


async def test_same_seed_gives_the_same_company(
    demo: DemoSummary, session: AsyncSession, tmp_path: Path
) -> None:
    first = await _digest(session)
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'again.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        sm = make_sessionmaker(engine)
        again = await _generate(sm)
        async with sm() as s:
            second = await _digest(s)
    finally:
        await engine.dispose()
    assert again == demo
    assert second == first


async def test_summary_counts_match_the_database(demo: DemoSummary, session: AsyncSession) -> None:
    async def count(model: type[Base]) -> int:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    assert demo.items == ITEMS == await count(Item)
    assert demo.item_locations == await count(ItemLocation) > ITEMS
    assert demo.movements == await count(Movement)
    assert demo.locations == await count(Location)
    assert demo.zones == await count(Zone)
    assert demo.warehouses == await count(Warehouse) == 2
    assert demo.users == await count(User) == 8
    assert demo.negative == await session.scalar(select(func.count()).where(ItemLocation.qty < 0))
    assert demo.zero == await session.scalar(select(func.count()).where(ItemLocation.qty == 0))


async def test_people_warehouses_and_bins(demo: DemoSummary, session: AsyncSession) -> None:
    whs = (await session.execute(select(Warehouse))).scalars().all()
    assert {w.code for w in whs} == {"SH01", "SZ01"}
    assert all(w.default_team_id for w in whs)
    zones = (await session.execute(select(Zone))).scalars().all()
    assert all(z.team_id for z in zones)

    users = (await session.execute(select(User))).scalars().all()
    assert len(users) == 8
    assert {r for u in users for r in u.roles} == {r.value for r in Role}
    assert sum(Role.COUNTER.value in u.roles for u in users) >= 4
    assert all(u.wecom_userid and u.feishu_open_id and u.dingtalk_userid for u in users)
    assert all(240 <= u.capacity_minutes <= 420 for u in users)
    away = (await session.execute(select(UserUnavailability))).scalars().all()
    assert [a.day for a in away] == [TODAY]
    assert Role.COUNTER.value in next(u for u in users if u.id == away[0].user_id).roles

    codes = (await session.execute(select(Location.code, Location.barcode).limit(5))).all()
    for code, barcode in codes:
        assert barcode.endswith(code.replace("-", ""))


async def test_barcodes_are_valid_ean13(demo: DemoSummary, session: AsyncSession) -> None:
    codes = (await session.scalars(select(ItemBarcode.barcode))).all()
    assert len(codes) >= ITEMS
    assert all(_ean13_ok(c) for c in codes)
    assert not _ean13_ok("6901234567890")  # the checker itself rejects a wrong check digit


async def test_book_is_the_sum_of_the_ledger(demo: DemoSummary, session: AsyncSession) -> None:
    moved = dict(
        (
            await session.execute(
                select(Movement.item_location_id, func.sum(Movement.qty)).group_by(Movement.item_location_id)
            )
        ).all()
    )
    ils = (await session.execute(select(ItemLocation))).scalars().all()
    assert all(il.book_as_of is None for il in ils)
    for il in ils:
        assert abs(Decimal(il.qty) - Decimal(str(moved[il.id]))) < Decimal("0.001"), il.id

    # Lot balances are the lot-tracked ledger, lot by lot.
    by_lot = dict(
        (
            ((il, lot), q)
            for il, lot, q in await session.execute(
                select(Movement.item_location_id, Movement.lot, func.sum(Movement.qty))
                .where(Movement.lot.is_not(None))
                .group_by(Movement.item_location_id, Movement.lot)
            )
        )
    )
    balances = (await session.execute(select(LotBalance))).scalars().all()
    assert balances
    for b in balances:
        assert abs(Decimal(b.qty) - Decimal(str(by_lot[(b.item_location_id, b.lot)]))) < Decimal("0.001")

    midnight = datetime.combine(TODAY, time(0), tzinfo=TZ)
    latest = await session.scalar(select(func.max(Movement.occurred_at)))
    assert latest < midnight
    assert all(il.last_movement_at is not None and il.last_movement_at < midnight for il in ils)


async def test_stock_states_the_triggers_look_for(demo: DemoSummary, session: AsyncSession) -> None:
    ils = (await session.execute(select(ItemLocation))).scalars().all()
    midnight = datetime.combine(TODAY, time(0), tzinfo=TZ).astimezone(UTC)
    negative = [il for il in ils if il.qty < 0]
    zero = [il for il in ils if il.qty == 0]
    assert negative and zero
    assert len(negative) < len(zero) < len(ils) * 0.05
    assert any(midnight - il.last_movement_at <= timedelta(days=2) for il in zero), "a recent zero"
    assert any(midnight - il.last_movement_at > timedelta(days=90) for il in ils), "dormant stock"
    counted = [il for il in ils if il.last_counted_at is not None]
    assert 0 < len(counted) < len(ils) / 2
    assert all(timedelta(0) < midnight - il.last_counted_at <= timedelta(days=61) for il in counted)
    assert all(il.turnover_value >= 0 for il in ils)
    assert any(len(v) > 1 for v in _by_item(ils).values()), "some items at several locations"


def _by_item(ils: list[ItemLocation]) -> dict[int, list[ItemLocation]]:
    out: dict[int, list[ItemLocation]] = defaultdict(list)
    for il in ils:
        out[il.item_id].append(il)
    return out


async def test_consumption_value_is_pareto(demo: DemoSummary, session: AsyncSession) -> None:
    since = datetime.combine(TODAY - timedelta(days=365), time(0), tzinfo=TZ)
    rows = await session.execute(
        select(Item.id, func.sum(-Movement.qty * Item.unit_cost))
        .join(Movement, Movement.item_id == Item.id)
        .where(Movement.type.in_(CONSUMPTION_TYPES), Movement.occurred_at >= since)
        .group_by(Item.id)
    )
    values = sorted((Decimal(str(v)) for _i, v in rows), reverse=True)
    values += [Decimal(0)] * (ITEMS - len(values))
    top = sum(values[: ITEMS // 5])
    assert top / sum(values) > Decimal("0.65")


async def test_rotation_follows_the_walk(demo: DemoSummary, session: AsyncSession) -> None:
    rows = (
        await session.execute(
            select(
                ItemLocation.warehouse_id,
                ItemLocation.rotation_seq,
                Location.warehouse_id,
                Location.sequence,
                Item.sku,
            )
            .join(Location, Location.id == ItemLocation.location_id)
            .join(Item, Item.id == ItemLocation.item_id)
        )
    ).all()
    by_wh: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for wh, seq, loc_wh, loc_seq, sku in rows:
        assert wh == loc_wh
        by_wh[wh].append((seq, loc_seq, sku))
    assert len(by_wh) == 2
    for entries in by_wh.values():
        seqs = sorted(e[0] for e in entries)
        assert seqs == list(range(1, len(entries) + 1))  # unique, from 1, no gaps
        assert [e[0] for e in sorted(entries, key=lambda e: (e[1], e[2]))] == seqs


async def test_refuses_to_run_twice(demo: DemoSummary, session: AsyncSession) -> None:
    with pytest.raises(ValueError, match="SH01"):
        await generate_demo(session, items=10, today=TODAY, tz=TZ)


async def test_never_commits(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s:
        await generate_demo(s, items=20, today=TODAY, tz=TZ)
        assert await s.scalar(select(func.count()).select_from(ItemLocation))
        await s.rollback()
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Item)) == 0
        assert await s.scalar(select(func.count()).select_from(Movement)) == 0


async def test_exact_item_location_count(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        summary = await generate_demo(s, today=TODAY, tz=TZ, item_locations=777, movements_per_item=1)
        assert summary.item_locations == 777 == await s.scalar(select(func.count()).select_from(ItemLocation))
        assert summary.movements < 777 * 4
