"""Book stock: item-locations, the movement ledger, and the book quantity at a point in time.

Rules (shared by the spreadsheet import and any ERP sync):

- ``ItemLocation.qty`` is the current book quantity and ``book_as_of`` the time of the last stock snapshot.
  A movement that happened at or before ``book_as_of`` is already contained in the snapshot, so it is recorded
  in the ledger but does not change ``qty``; a later one (or any, when there is no snapshot) adds its signed
  quantity. A lot-tracked movement moves the matching ``LotBalance`` the same way.
- ``last_movement_at`` is the latest movement time seen; ``turnover_value`` grows by ``|qty| x unit_cost``
  for every movement after the last count (or every movement, before the first count).
- New item-locations are appended to their warehouse's rotation (``rotation_seq`` = max + 1, + 2, ... in the
  order of location sequence, location code, SKU), so adding stock never reshuffles the existing rotation.

Everything works in chunks with bulk statements; nothing here commits.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Item, ItemLocation, Location, LotBalance, Movement, MovementType, utcnow

CHUNK = 1000
# Core statements for the hot path (the ORM bulk layer costs more than the database here).
_MOVEMENT: Table = Movement.__table__  # type: ignore[assignment]
_IL: Table = ItemLocation.__table__  # type: ignore[assignment]
_IL_MOVED = (
    update(_IL)
    .where(_IL.c.id == bindparam("b_id"))
    .values(
        qty=bindparam("qty"),
        last_movement_at=bindparam("last_movement_at"),
        turnover_value=bindparam("turnover_value"),
    )
)
_T = TypeVar("_T")


def chunks(items: Iterable[_T], n: int = CHUNK) -> Iterator[list[_T]]:
    buf: list[_T] = []
    for x in items:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


_DIGITS = re.compile(r"(\d+)")


def natural_key(code: str) -> tuple[Any, ...]:
    """Sort key that puts ``A-2`` before ``A-10``."""
    return tuple(int(p) if p.isdigit() else p.casefold() for p in _DIGITS.split(code))


@dataclass(frozen=True, slots=True)
class MovementLine:
    item_id: int
    location_id: int
    item_location_id: int
    qty: Decimal
    type: MovementType
    occurred_at: datetime
    lot: str | None = None
    source_doc: str | None = None
    import_key: str | None = None


async def item_location_ids(
    session: AsyncSession, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    """``(item_id, location_id) -> item_location.id`` for the pairs that exist."""
    found: dict[tuple[int, int], int] = {}
    for chunk in chunks(set(pairs)):
        rows = await session.execute(
            select(ItemLocation.item_id, ItemLocation.location_id, ItemLocation.id).where(
                tuple_(ItemLocation.item_id, ItemLocation.location_id).in_(chunk)
            )
        )
        for item_id, location_id, il_id in rows:
            found[(item_id, location_id)] = il_id
    return found


async def ensure_item_locations(session: AsyncSession, pairs: Iterable[tuple[int, int]]) -> int:
    """Create the missing ``(item_id, location_id)`` item-locations, appended to each warehouse's rotation.

    Returns how many were created. ``pairs`` may be a generator; only the missing pairs are held in memory.
    """
    missing: list[tuple[int, int]] = []
    for chunk in chunks(set(pairs)):
        existing = await item_location_ids(session, chunk)
        missing.extend(p for p in chunk if p not in existing)
    if not missing:
        return 0
    locs: dict[int, tuple[int, int, str]] = {}
    for loc_chunk in chunks({loc for _, loc in missing}):
        loc_rows = await session.execute(
            select(Location.id, Location.warehouse_id, Location.sequence, Location.code).where(
                Location.id.in_(loc_chunk)
            )
        )
        for lid, wh, seq, code in loc_rows:
            locs[lid] = (wh, seq or 0, code)
    skus: dict[int, str] = {}
    for item_chunk in chunks({item for item, _ in missing}):
        sku_rows = await session.execute(select(Item.id, Item.sku).where(Item.id.in_(item_chunk)))
        skus.update((iid, sku) for iid, sku in sku_rows)
    loc_rank = {
        lid: i
        for i, lid in enumerate(sorted(locs, key=lambda lid: (locs[lid][1], natural_key(locs[lid][2]))))
    }
    missing.sort(key=lambda p: (locs[p[1]][0], loc_rank[p[1]], skus[p[0]]))
    warehouses = {wh for wh, _, _ in locs.values()}
    top: dict[int, int] = {}
    top_rows = await session.execute(
        select(ItemLocation.warehouse_id, func.max(ItemLocation.rotation_seq))
        .where(ItemLocation.warehouse_id.in_(warehouses))
        .group_by(ItemLocation.warehouse_id)
    )
    top.update((wh, mx or 0) for wh, mx in top_rows)
    for part in chunks(missing, 2000):
        values = []
        for item_id, loc_id in part:
            wh = locs[loc_id][0]
            top[wh] = top.get(wh, 0) + 1
            values.append(
                {
                    "item_id": item_id,
                    "location_id": loc_id,
                    "warehouse_id": wh,
                    "qty": Decimal(0),
                    "rotation_seq": top[wh],
                    "turnover_value": Decimal(0),
                }
            )
        await session.execute(insert(ItemLocation), values)
    return len(missing)


async def existing_import_keys(session: AsyncSession, keys: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(set(keys)):
        rows = await session.scalars(select(Movement.import_key).where(Movement.import_key.in_(chunk)))
        found.update(k for k in rows if k is not None)
    return found


async def apply_movements(
    session: AsyncSession, lines: Sequence[MovementLine], *, recorded_at: datetime | None = None
) -> int:
    """Record movements in the ledger and move the book (see the module docstring).

    Lines whose ``import_key`` is already in the ledger (or repeated within ``lines``) are skipped. The
    item-locations must exist (``ensure_item_locations``). Returns the number of movements inserted.
    """
    recorded_at = recorded_at or utcnow()
    seen = await existing_import_keys(session, (ln.import_key for ln in lines if ln.import_key))
    new: list[MovementLine] = []
    for ln in lines:
        if ln.import_key:
            if ln.import_key in seen:
                continue
            seen.add(ln.import_key)
        new.append(ln)
    if not new:
        return 0
    for chunk in chunks(new, 2000):
        await session.execute(
            insert(_MOVEMENT),
            [
                {
                    "item_id": ln.item_id,
                    "location_id": ln.location_id,
                    "item_location_id": ln.item_location_id,
                    "lot": ln.lot,
                    "qty": ln.qty,
                    "type": ln.type,
                    "occurred_at": ln.occurred_at,
                    "recorded_at": recorded_at,
                    "source_doc": ln.source_doc,
                    "import_key": ln.import_key,
                }
                for ln in chunk
            ],
        )

    by_il: dict[int, list[MovementLine]] = defaultdict(list)
    for ln in new:
        by_il[ln.item_location_id].append(ln)
    updates: list[dict[str, Any]] = []
    lot_delta: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for il_chunk in chunks(by_il):
        rows = await session.execute(
            select(
                ItemLocation.id,
                ItemLocation.qty,
                ItemLocation.book_as_of,
                ItemLocation.last_movement_at,
                ItemLocation.last_counted_at,
                ItemLocation.turnover_value,
                Item.unit_cost,
            )
            .join(Item, Item.id == ItemLocation.item_id)
            .where(ItemLocation.id.in_(il_chunk))
        )
        for il_id, qty, book_as_of, last_mv, last_counted, turnover, unit_cost in rows:
            qty, turnover = qty or Decimal(0), turnover or Decimal(0)
            for ln in by_il[il_id]:
                if book_as_of is None or ln.occurred_at > book_as_of:
                    qty += ln.qty
                    if ln.lot:
                        lot_delta[(il_id, ln.lot)] += ln.qty
                if last_mv is None or ln.occurred_at > last_mv:
                    last_mv = ln.occurred_at
                if last_counted is None or ln.occurred_at > last_counted:
                    turnover += abs(ln.qty) * (unit_cost or Decimal(0))
            updates.append(
                {"b_id": il_id, "qty": qty, "last_movement_at": last_mv, "turnover_value": turnover}
            )
    for upd in chunks(updates, 2000):
        await session.execute(_IL_MOVED, upd)

    if lot_delta:
        lot_updates: list[dict[str, Any]] = []
        for key_chunk in chunks(list(lot_delta)):
            lb_rows = await session.execute(
                select(LotBalance.id, LotBalance.item_location_id, LotBalance.lot, LotBalance.qty).where(
                    tuple_(LotBalance.item_location_id, LotBalance.lot).in_(key_chunk)
                )
            )
            for lb_id, lb_il, lot, lb_qty in lb_rows:
                lot_updates.append({"id": lb_id, "qty": (lb_qty or Decimal(0)) + lot_delta.pop((lb_il, lot))})
        for upd in chunks(lot_updates, 2000):
            await session.execute(update(LotBalance), upd)
        for ins in chunks(list(lot_delta.items()), 2000):
            await session.execute(
                insert(LotBalance), [{"item_location_id": il, "lot": lot, "qty": q} for (il, lot), q in ins]
            )
    return len(new)


async def moved_after(
    session: AsyncSession, since: dict[int, datetime]
) -> dict[tuple[int, str | None], Decimal]:
    """Σ qty of the movements after ``since[item_location_id]``, per ``(item_location_id, lot)``.

    A stock snapshot taken at ``t`` plus these is the current book, whatever order snapshot and ledger arrive in.
    """
    out: dict[tuple[int, str | None], Decimal] = defaultdict(Decimal)
    by_time: dict[datetime, list[int]] = defaultdict(list)
    for il_id, t in since.items():
        by_time[t].append(il_id)
    for t, il_ids in by_time.items():
        for part in chunks(il_ids):
            rows = await session.execute(
                select(Movement.item_location_id, Movement.lot, func.sum(Movement.qty))
                .where(Movement.item_location_id.in_(part), Movement.occurred_at > t)
                .group_by(Movement.item_location_id, Movement.lot)
            )
            for il_id, lot, total in rows:
                out[(il_id, lot)] += Decimal(str(total or 0))
    return dict(out)


async def book_at(session: AsyncSession, item_location_id: int, at: datetime) -> Decimal:
    """The book quantity at ``at``: the current book minus every movement after ``at``.

    This holds on both sides of a stock snapshot: the snapshot already contains the movements before it
    (which is why they never moved ``qty``), so taking them back still lands on the book as it stood at ``at``.
    """
    qty = await session.scalar(select(ItemLocation.qty).where(ItemLocation.id == item_location_id))
    if qty is None:
        raise LookupError(f"no item-location {item_location_id}")
    moved = await session.scalar(
        select(func.coalesce(func.sum(Movement.qty), 0)).where(
            Movement.item_location_id == item_location_id, Movement.occurred_at > at
        )
    )
    return Decimal(qty) - Decimal(str(moved or 0))
