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

Big inputs go through staging tables (``core.db.staged``: COPY on PostgreSQL) and a few set-based statements,
so the number of round trips does not grow with the number of lines; nothing here commits.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    Numeric,
    String,
    Table,
    and_,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import BulkWriter, dialect_insert, staged, staging_table
from core.models import Item, ItemLocation, Location, LotBalance, Movement, MovementType, UTCDateTime

CHUNK = 1000
_MOVEMENT: Table = Movement.__table__  # type: ignore[assignment]
_IL: Table = ItemLocation.__table__  # type: ignore[assignment]
_NEW_IL = ("item_id", "location_id", "warehouse_id", "qty", "book_as_of", "rotation_seq", "turnover_value")

LOCATION_RANK = staging_table(  # new item-locations: their location's place, and the rotation's end before
    "item_location_rank_staging",
    Column("location_id", Integer, primary_key=True, autoincrement=False),
    Column("rank", Integer, nullable=False),
    Column("top", BigInteger, nullable=False),
)
PAIR_STAGING = staging_table(
    "item_location_pair_staging",
    Column("item_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
)
# Movement lines on their way into the ledger (``apply_movements``, and the spreadsheet import, which stages
# its rows while validating them). ``known``: the import key is already in the ledger.
MOVEMENT_STAGING = staging_table(
    "movement_staging",
    Column("seq", Integer, primary_key=True, autoincrement=False),  # position (a spreadsheet's row number)
    Column("item_id", Integer),
    Column("location_id", Integer),
    Column("item_location_id", Integer),
    Column("lot", String(64)),
    Column("qty", Numeric(18, 4), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", DateTime, nullable=False),  # naive UTC, as UTCDateTime stores it
    Column("source_doc", String(100)),
    Column("import_key", String(200)),
    Column("known", Boolean),
)
STAGED_LINE = (
    "seq", "item_id", "location_id", "item_location_id", "lot", "qty", "type", "occurred_at", "source_doc",
    "import_key",
)  # fmt: skip
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
    wanted = set(pairs)
    found: dict[tuple[int, int], int] = {}
    if len(wanted) > CHUNK:  # one join instead of one IN list per thousand pairs
        async with staged(session, PAIR_STAGING, wanted) as st:
            rows = await session.execute(
                select(_IL.c.item_id, _IL.c.location_id, _IL.c.id).join(
                    st, (st.c.item_id == _IL.c.item_id) & (st.c.location_id == _IL.c.location_id)
                )
            )
            found.update(((i, loc), il) for i, loc, il in rows)
        return found
    for chunk in chunks(wanted):
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

    Returns how many were created. Up to a thousand pairs are looked up with IN lists; more go through a
    staging table and one join.
    """
    wanted = set(pairs)
    if len(wanted) > CHUNK:
        async with staged(session, PAIR_STAGING, wanted) as st:
            return await ensure_staged_item_locations(session, st.c.item_id, st.c.location_id)
    existing = await item_location_ids(session, wanted)
    missing = [p for p in wanted if p not in existing]
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
    return await _append_to_rotation(
        session,
        [(i, loc, *locs[loc], skus[i], Decimal(0), None) for i, loc in missing if loc in locs and i in skus],
    )


async def ensure_staged_item_locations(
    session: AsyncSession, item_id: Any, location_id: Any, *, qty: Any = None, book_as_of: Any = None
) -> int:
    """``ensure_item_locations`` for the pairs in two columns of a staging table (NULLs ignored), set-based:
    only the locations of the missing pairs come to Python, to be ranked (sequence, then the code in natural
    order); one ``INSERT ... SELECT`` numbers the new item-locations with a window function.

    ``qty`` and ``book_as_of`` (columns of the same table, one value per pair) give the new item-locations
    their book at once, instead of 0 and no snapshot; the existing ones are left alone.
    """
    book = [qty.label("qty"), book_as_of.label("book_as_of")] if qty is not None else []
    pairs = (
        select(item_id.label("item_id"), location_id.label("location_id"), *book)
        .where(item_id.is_not(None), location_id.is_not(None))
        .distinct()
        .subquery()
    )
    missing = ~(
        select(_IL.c.id)
        .where(_IL.c.item_id == pairs.c.item_id, _IL.c.location_id == pairs.c.location_id)
        .exists()
    )
    conn = await session.connection()
    locs = (
        await conn.execute(
            select(Location.id, Location.warehouse_id, Location.sequence, Location.code).where(
                Location.id.in_(select(pairs.c.location_id).where(missing))
            )
        )
    ).all()
    if not locs:
        return 0
    top = dict(
        tuple(r)
        for r in await conn.execute(
            select(_IL.c.warehouse_id, func.max(_IL.c.rotation_seq))
            .where(_IL.c.warehouse_id.in_({wh for _, wh, _, _ in locs}))
            .group_by(_IL.c.warehouse_id)
        )
    )
    ranked = sorted(locs, key=lambda r: (r[2] or 0, natural_key(r[3]), r[0]))
    rank_rows = ((lid, i, top.get(wh) or 0) for i, (lid, wh, _, _) in enumerate(ranked))
    del locs
    sku = Item.sku.collate("C") if conn.dialect.name == "postgresql" else Item.sku  # code point order
    async with staged(session, LOCATION_RANK, rank_rows) as rank:
        number = func.row_number().over(partition_by=Location.warehouse_id, order_by=(rank.c.rank, sku))
        new = (
            select(
                pairs.c.item_id,
                pairs.c.location_id,
                Location.warehouse_id,
                pairs.c.qty if book else literal(Decimal(0), Numeric(18, 4)),
                pairs.c.book_as_of if book else null(),
                rank.c.top + number,
                literal(Decimal(0), Numeric(18, 4)),
            )
            .join(Location, Location.id == pairs.c.location_id)
            .join(rank, rank.c.location_id == pairs.c.location_id)
            .join(Item, Item.id == pairs.c.item_id)
            .where(missing)
            .order_by(Location.warehouse_id, rank.c.rank, sku)  # ids in rotation order too
        )
        inserted = await session.execute(insert(_IL).from_select(list(_NEW_IL), new))
        return int(inserted.rowcount or 0)  # type: ignore[attr-defined]


_NewItemLocation = tuple[int, int, int, int, str, str, Decimal, datetime | None]


async def _append_to_rotation(session: AsyncSession, missing: list[_NewItemLocation]) -> int:
    """Insert item-locations ``(item_id, location_id, warehouse_id, location sequence, location code, sku, qty,
    book_as_of)``, numbered after each warehouse's last ``rotation_seq`` in the order of location sequence,
    code, SKU."""
    if not missing:
        return 0
    loc_rank = {
        lid: i
        for i, (lid, _) in enumerate(
            sorted({(m[1], (m[3], natural_key(m[4]))) for m in missing}, key=lambda x: (x[1], x[0]))
        )
    }
    missing.sort(key=lambda m: (m[2], loc_rank[m[1]], m[5]))
    top: dict[int, int] = {}
    top_rows = await session.execute(
        select(ItemLocation.warehouse_id, func.max(ItemLocation.rotation_seq))
        .where(ItemLocation.warehouse_id.in_({m[2] for m in missing}))
        .group_by(ItemLocation.warehouse_id)
    )
    top.update((wh, mx or 0) for wh, mx in top_rows)
    rows = []
    for item_id, loc_id, wh, _seq, _code, _sku, qty, book_as_of in missing:
        top[wh] = top.get(wh, 0) + 1
        rows.append((item_id, loc_id, wh, qty, _naive_utc(book_as_of), top[wh], Decimal(0)))
    writer = BulkWriter(session)
    await writer.start()
    await writer.write(_IL, _NEW_IL, rows)
    await writer.finish()
    return len(rows)


async def existing_import_keys(session: AsyncSession, keys: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(set(keys)):
        rows = await session.scalars(select(Movement.import_key).where(Movement.import_key.in_(chunk)))
        found.update(k for k in rows if k is not None)
    return found


async def apply_movements(
    session: AsyncSession, lines: Sequence[MovementLine], *, recorded_at: datetime
) -> int:
    """Record movements in the ledger and move the book (see the module docstring).

    Lines whose ``import_key`` is already in the ledger (or repeated within ``lines``) are skipped. The
    item-locations must exist (``ensure_item_locations``). Returns the number of movements inserted.
    """
    if not lines:
        return 0
    keys: set[str] = set()
    rows = []
    for n, ln in enumerate(lines):
        if ln.import_key:
            if ln.import_key in keys:
                continue
            keys.add(ln.import_key)
        rows.append(
            (
                n, ln.item_id, ln.location_id, ln.item_location_id, ln.lot, ln.qty, MovementType(ln.type).value,
                _naive_utc(ln.occurred_at), ln.source_doc, ln.import_key,
            )
        )  # fmt: skip
    async with staged(session, MOVEMENT_STAGING, rows, columns=STAGED_LINE) as st:
        return await apply_staged_movements(session, st, recorded_at=recorded_at)


def _naive_utc(t: datetime | None) -> datetime | None:
    """As ``UTCDateTime`` stores a time: naive UTC (an already naive one is taken as UTC)."""
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC).replace(tzinfo=None)


async def apply_staged_movements(session: AsyncSession, st: Table, *, recorded_at: datetime) -> int:
    """``apply_movements`` for lines in ``MOVEMENT_STAGING`` (unique import keys; lines without an
    ``item_location_id`` are left out). Five set-based statements, whatever the number of lines."""
    c = st.c
    await session.execute(
        update(st)
        .where(
            c.import_key.is_not(None),
            select(_MOVEMENT.c.id).where(_MOVEMENT.c.import_key == c.import_key).exists(),
        )
        .values(known=True)
    )
    fresh = and_(c.known.is_(None), c.item_location_id.is_not(None))
    inserted = await session.execute(
        insert(_MOVEMENT).from_select(
            [
                "item_id", "location_id", "item_location_id", "lot", "qty", "type", "occurred_at",
                "recorded_at", "source_doc", "import_key",
            ],
            select(
                c.item_id, c.location_id, c.item_location_id, c.lot, c.qty, c.type, c.occurred_at,
                literal(recorded_at, UTCDateTime), c.source_doc, c.import_key,
            )
            .where(fresh)
            .order_by(c.seq),
        )
    )  # fmt: skip
    created = int(inserted.rowcount or 0)  # type: ignore[attr-defined]
    if not created:
        return 0
    il = _IL.alias("il_before")
    moves_book = or_(il.c.book_as_of.is_(None), c.occurred_at > il.c.book_as_of)
    after_count = or_(il.c.last_counted_at.is_(None), c.occurred_at > il.c.last_counted_at)
    # lot balances first: ``book_as_of`` is the same before and after, but keep the reads plain
    lots = dialect_insert(session, LotBalance).from_select(
        ["item_location_id", "lot", "qty"],
        select(c.item_location_id, c.lot, func.sum(c.qty))
        .join(il, il.c.id == c.item_location_id)
        .where(fresh, c.lot.is_not(None), c.lot != "", moves_book)
        .group_by(c.item_location_id, c.lot)
        .order_by(c.item_location_id, c.lot),
    )
    await session.execute(
        lots.on_conflict_do_update(
            index_elements=["item_location_id", "lot"],
            set_={"qty": func.coalesce(LotBalance.qty, 0) + lots.excluded.qty},
        )
    )
    moved = (
        select(
            c.item_location_id.label("il_id"),
            func.sum(case((moves_book, c.qty), else_=0)).label("dq"),
            func.max(c.occurred_at).label("last"),
            func.sum(case((after_count, func.abs(c.qty) * func.coalesce(Item.unit_cost, 0)), else_=0)).label(
                "turnover"
            ),
        )
        .join(il, il.c.id == c.item_location_id)
        .join(Item, Item.id == il.c.item_id)
        .where(fresh)
        .group_by(c.item_location_id)
        .subquery("moved")
    )
    await session.execute(
        update(_IL)
        .where(_IL.c.id == moved.c.il_id)
        .values(
            qty=func.coalesce(_IL.c.qty, 0) + moved.c.dq,
            last_movement_at=case(
                (or_(_IL.c.last_movement_at.is_(None), moved.c.last > _IL.c.last_movement_at), moved.c.last),
                else_=_IL.c.last_movement_at,
            ),
            turnover_value=func.coalesce(_IL.c.turnover_value, 0) + moved.c.turnover,
        )
    )
    return created


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
