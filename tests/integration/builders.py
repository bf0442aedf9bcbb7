"""Small, explicit companies for integration tests (the demo generator is tested on its own)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Item, ItemLocation, Location, Team, User, Warehouse, Zone


@dataclass
class Company:
    warehouse: Warehouse
    zones: list[Zone]
    teams: list[Team]
    users: list[User]
    items: list[Item]
    locations: list[Location]
    item_locations: list[ItemLocation]


async def build_company(
    session: AsyncSession,
    *,
    items: int = 30,
    classes: str = "A",
    counters: int = 2,
    capacity: int = 480,
    code: str = "WH1",
) -> Company:
    team = Team(name=f"{code} 盘点组")
    session.add(team)
    await session.flush()
    wh = Warehouse(code=code, name=f"{code} 仓", default_team_id=team.id)
    session.add(wh)
    await session.flush()
    zones = [Zone(warehouse_id=wh.id, code=z, team_id=team.id) for z in ("A", "B")]
    session.add_all(zones)
    await session.flush()
    users = [
        User(
            employee_no=f"{code}-E{i + 1:02d}",
            name=f"盘点员{i + 1}",
            roles=["counter"],
            team_id=team.id,
            capacity_minutes=capacity,
        )
        for i in range(counters)
    ] + [User(employee_no=f"{code}-S01", name="主管", roles=["supervisor"], team_id=team.id)]
    session.add_all(users)
    locs = [
        Location(
            warehouse_id=wh.id,
            zone_id=zones[i % 2].id,
            code=f"{'AB'[i % 2]}-{i:03d}",
            barcode=f"LOC-{code}-{i:03d}",
            sequence=i,
        )
        for i in range(items)
    ]
    its = [
        Item(
            sku=f"{code}-SKU{i:04d}",
            name=f"物料{i}",
            base_unit="个",
            unit_cost=Decimal(10),
            abc_class=classes[i % len(classes)],
        )
        for i in range(items)
    ]
    session.add_all(locs + its)
    await session.flush()
    ils = [
        ItemLocation(
            item_id=it.id, location_id=lo.id, warehouse_id=wh.id, qty=Decimal(10), rotation_seq=i + 1
        )
        for i, (it, lo) in enumerate(zip(its, locs, strict=True))
    ]
    session.add_all(ils)
    await session.flush()
    return Company(wh, zones, [team], users, its, locs, ils)


# Severity tiers bounded by percentage as well as value (``tolerance.tiers.minor.max_pct``), as a company may
# configure them. The flows that walk the supervisor-then-finance chain use them: their test stock is cheap
# (10 元 an item), and by value alone (the default) every variance would be a supervisor's alone.
PCT_TIERS = {"tiers": {"minor": {"max_value": "1000", "max_pct": "10"}}}
PCT_TIERS_ENV = {
    "PANDIAN_TOLERANCE__TIERS__MINOR__MAX_VALUE": "1000",
    "PANDIAN_TOLERANCE__TIERS__MINOR__MAX_PCT": "10",
}
