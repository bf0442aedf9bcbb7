"""Sync: pull items, locations, book stock and movements from the ERP into pandian, from stored cursors.

Everything is written through the code paths the spreadsheet import uses, so an ERP record obeys the same rules
as a spreadsheet row (``core/importing.py`` docstring):

- items, locations and stock go through the import's own upserts (``core.importing`` importers, fed an
  in-memory table instead of a file): only changed rows are written, barcodes are added and never removed, a
  barcode of another item is refused, and problems come back as the import's bilingual messages;
- movements go through ``core.stock.apply_movements`` with the ERP's line id as the import key, so a line is
  recorded once however often it is pulled, and a movement older than the last stock snapshot does not move
  the book twice.

Each page is one transaction together with its cursor: a sync that stops half-way resumes after the last page
it wrote, and a page that fails changes nothing. Book stock is a full snapshot (no ERP here offers stock
"changed since"), taken when the last one is older than ``erp.stock_refresh_minutes``, in one transaction; only
item-locations whose quantity differs are written. In between, movements keep the book current.

Two things the snapshot must not undo:

- adjustments approved here but not yet in the ERP (queued, waiting for the mis-slot window, or failed): the
  ERP's quantity plus their lines is what the ERP will hold once they are posted, and that is the book here;
- documents we posted coming back as ERP movements: lines whose document or reference is one of our bill
  numbers (or an ERP document a posting produced) are skipped, since ``core.variance`` already booked them.

Records for SKUs or warehouses that pandian does not know are skipped and listed (never written half); a
location that the ERP's stock names inside a known warehouse is created. A malformed answer stops the sync
with a message naming the ERP and what it sent; nothing of that page is written and its cursor stays.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.importing import _IMPORTERS, ImportFailed, ImportReport, Sheet, import_file, map_headers
from core.models import (
    Adjustment,
    AdjustmentLine,
    ErpPosting,
    ErpSyncCursor,
    ErpSyncRun,
    Item,
    ItemLocation,
    Location,
    Warehouse,
)
from core.stock import MovementLine, apply_movements, chunks, ensure_item_locations, item_location_ids
from core.variance.workflow import AdjustmentState
from integrations.erp.base import (
    ENTITIES,
    ENTITY_ZH,
    Connector,
    Entity,
    ErpError,
    FileSource,
    ItemRecord,
    LocationRecord,
    MovementRecord,
    Page,
    StockRecord,
)

log = logging.getLogger("pandian.erp.sync")
MAX_LISTED = 20  # skipped keys listed in a warning


@dataclass
class EntityStats:
    pulled: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    pages: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    not_due: bool = False  # stock snapshot not due yet

    def add(self, report: ImportReport) -> None:
        self.created += report.created
        self.updated += report.updated
        self.unchanged += report.unchanged


@dataclass
class SyncReport:
    system: str
    started_at: datetime
    finished_at: datetime | None = None
    entities: dict[str, EntityStats] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> dict[str, int]:
        """Flat counts for the scheduler: ``items_created``, ``stock_updated``, …, ``errors``."""
        out: dict[str, int] = {"errors": 0 if self.ok else 1}
        for name, st in self.entities.items():
            for k in ("pulled", "created", "updated", "unchanged", "skipped"):
                out[f"{name}_{k}"] = getattr(st, k)
        return out

    def as_json(self) -> dict[str, Any]:
        return {name: {k: v for k, v in asdict(st).items()} for name, st in self.entities.items()}


Progress = Callable[[Entity, EntityStats], None]


class RecordTable(Sheet):
    """ERP records in the import's column vocabulary, read by the import like a spreadsheet (no file)."""

    def __init__(self, name: str, headers: list[str], rows: Sequence[Sequence[Any]]) -> None:
        # no Sheet.__init__: there is no file to open; these are the attributes the importers read
        self.path = Path(name)
        self.name = name
        self.format = "records"
        self.headers = headers
        self.header_row = 0
        self._records = rows

    def _rows(self) -> Any:
        yield from enumerate(self._records, start=1)


async def import_records(
    session: AsyncSession,
    settings: Settings,
    kind: str,
    name: str,
    headers: list[str],
    rows: list[list[Any]],
    now: datetime,
) -> ImportReport:
    """``core.importing``'s validate-then-upsert for rows that came from an ERP (``ImportFailed`` on problems)."""
    report = ImportReport(kind=kind, rows=0)
    if not rows:
        return report
    table = RecordTable(name, headers, rows)
    cmap, issues = map_headers(kind, headers, name)
    if issues:
        raise ImportFailed(issues)
    importer = _IMPORTERS[kind](session, table, cmap, settings.tz, now)
    await importer.validate()
    importer.issues.raise_if_any()
    report.rows = importer.rows
    await importer.write(report, None)
    await session.flush()
    return report


# ------------------------------------------------------------------------------------------------ cursors


async def load_cursor(session: AsyncSession, system: str, entity: Entity) -> str | None:
    row = await session.get(ErpSyncCursor, (system, entity.value))
    return row.cursor if row is not None else None


async def save_cursor(session: AsyncSession, system: str, entity: Entity, cursor: str, now: datetime) -> None:
    row = await session.get(ErpSyncCursor, (system, entity.value))
    if row is None:
        session.add(ErpSyncCursor(system=system, entity=entity.value, cursor=cursor, updated_at=now))
    else:
        row.cursor, row.updated_at = cursor, now
    await session.flush()


async def reset_cursors(session: AsyncSession, system: str) -> None:
    for entity in ENTITIES:
        row = await session.get(ErpSyncCursor, (system, entity.value))
        if row is not None:
            await session.delete(row)


# ------------------------------------------------------------------------------------------------ the run


async def sync(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    connector: Connector,
    *,
    entities: Iterable[Entity] | None = None,
    full: bool = False,
    now: datetime | None = None,
    clock: Callable[[], datetime] | None = None,
    progress: Progress | None = None,
) -> SyncReport:
    """Pull ``entities`` (all, in dependency order) and write them; the run is recorded in ``erp_sync_run``.

    ``full`` ignores the stored cursors (everything is pulled again; unchanged rows are still not rewritten)
    and takes a stock snapshot whatever its age. Errors are reported (``report.error``), not raised, after the
    pages already written have been kept.
    """
    if clock is None:  # the one wall clock, for callers that bring none (the CLI)
        from core.clock import SystemClock

        clock = SystemClock().now
    now = now or clock()
    wanted = [e for e in ENTITIES if entities is None or e in set(entities)]
    report = SyncReport(connector.system, now)
    try:
        for entity in wanted:
            st = report.entities.setdefault(entity.value, EntityStats())
            t0 = time.perf_counter()
            try:
                if entity is Entity.STOCK:
                    await _sync_stock(
                        sessionmaker,
                        settings,
                        connector,
                        st,
                        full=full,
                        now=now,
                        clock=clock,
                        progress=progress,
                    )
                else:
                    await _sync_pages(
                        sessionmaker, settings, connector, entity, st, full=full, now=now, progress=progress
                    )
            finally:
                st.seconds = time.perf_counter() - t0
            if progress:
                progress(entity, st)
    except (ErpError, ImportFailed) as exc:
        report.error = _describe(exc)
        log.warning("%s sync stopped: %s", connector.system, report.error)
    except Exception as exc:  # a bug or an answer nobody foresaw: the run is still recorded, with what it was
        log.exception("%s sync failed unexpectedly", connector.system)
        report.error = f"内部错误 / internal error: {type(exc).__name__}: {exc}"
    report.finished_at = clock()
    async with sessionmaker() as s, s.begin():
        s.add(
            ErpSyncRun(
                system=connector.system,
                started_at=report.started_at,
                finished_at=report.finished_at,
                ok=report.ok,
                stats=report.as_json(),
                error=report.error,
            )
        )
    return report


def _describe(exc: Exception) -> str:
    if isinstance(exc, ImportFailed):
        return "\n".join(str(i) for i in exc.issues[:MAX_LISTED])
    return str(exc)


def _in_scope(settings: Settings, warehouse: str) -> bool:
    return not settings.erp.warehouses or warehouse in settings.erp.warehouses


async def _sync_pages(
    sm: async_sessionmaker[AsyncSession],
    settings: Settings,
    connector: Connector,
    entity: Entity,
    st: EntityStats,
    *,
    full: bool,
    now: datetime,
    progress: Progress | None,
) -> None:
    async with sm() as s:
        cursor = None if full else await load_cursor(s, connector.system, entity)
    ours = await _our_documents(sm, settings) if entity is Entity.MOVEMENTS else set()
    async for page in connector.pull(entity, cursor):
        st.pages += 1
        st.pulled += len(page.records) + page.skipped
        st.skipped += page.skipped
        st.warnings.extend(page.warnings)
        async with sm() as s, s.begin():
            await _write_page(s, settings, connector, entity, page, st, now, ours)
            if page.cursor is not None:
                await save_cursor(s, connector.system, entity, page.cursor, now)
        if progress:
            progress(entity, st)


async def _write_page(
    s: AsyncSession,
    settings: Settings,
    connector: Connector,
    entity: Entity,
    page: Page,
    st: EntityStats,
    now: datetime,
    ours: set[str],
) -> None:
    files = [r for r in page.records if isinstance(r, FileSource)]
    for f in files:
        report = await import_file(s, f.path, f.kind, tz=settings.tz, now=now)
        st.add(report)
        if f.kind == "movements" and report.created:
            await _reevaluate(s, settings, now)
    name = f"{connector.label} {ENTITY_ZH[entity]} 第 {st.pages} 页"
    if entity is Entity.ITEMS:
        items = [r for r in page.records if isinstance(r, ItemRecord)]
        rows = [[r.sku, r.name, r.spec, r.unit, r.unit_cost, ",".join(r.barcodes) or None] for r in items]
        headers = ["sku", "name", "spec", "unit", "unit_cost", "barcode"]
        st.add(await import_records(s, settings, "items", name, headers, rows, now))
    elif entity is Entity.LOCATIONS:
        locs = [r for r in page.records if isinstance(r, LocationRecord) and _in_scope(settings, r.warehouse)]
        st.skipped += sum(1 for r in page.records if isinstance(r, LocationRecord)) - len(locs)
        st.add(await _import_locations(s, settings, name, locs, now))
    elif entity is Entity.MOVEMENTS:
        moves = [r for r in page.records if isinstance(r, MovementRecord)]
        await _write_movements(s, settings, connector, name, moves, st, now, ours)


async def _import_locations(
    s: AsyncSession, settings: Settings, name: str, locs: Sequence[LocationRecord], now: datetime
) -> ImportReport:
    rows = [[r.warehouse, r.location, r.warehouse_name, r.barcode] for r in locs]
    return await import_records(
        s,
        settings,
        "locations",
        name,
        ["warehouse", "location", "warehouse_name", "location_barcode"],
        rows,
        now,
    )


# ------------------------------------------------------------------------------------------------ resolving


@dataclass
class _Resolved:
    items: dict[str, int]
    locations: dict[tuple[str, str], int]
    unknown_skus: set[str]
    unknown_warehouses: set[str]


async def _resolve(
    s: AsyncSession,
    settings: Settings,
    name: str,
    keys: Iterable[tuple[str, str, str]],
    st: EntityStats,
    now: datetime,
) -> _Resolved:
    """Item and location ids for ``(sku, warehouse, location)`` keys; missing locations of known warehouses are
    created (through the locations import), unknown SKUs and warehouses reported."""
    keys = list(keys)
    skus = {k[0] for k in keys}
    items: dict[str, int] = {}
    for chunk in chunks(skus):
        items.update(
            (sku, i) for sku, i in await s.execute(select(Item.sku, Item.id).where(Item.sku.in_(chunk)))
        )
    whs = dict((c, i) for c, i in await s.execute(select(Warehouse.code, Warehouse.id)))
    pairs = {(k[1], k[2]) for k in keys if k[1] in whs}
    locs = await _location_ids(s, whs, pairs)
    missing = sorted(p for p in pairs if p not in locs)
    if missing:
        report = await _import_locations(
            s, settings, f"{name}（新库位）", [LocationRecord(w, loc) for w, loc in missing], now
        )
        st.warnings.append(
            f"新建库位 {report.created} 个（出现在 ERP 库存或流水中）/ created {report.created} locations named by "
            f"the ERP's stock or movements: {_listed(f'{w}/{loc}' for w, loc in missing)}"
        )
        locs.update(await _location_ids(s, whs, set(missing)))
    return _Resolved(items, locs, skus - items.keys(), {k[1] for k in keys} - whs.keys())


async def _location_ids(
    s: AsyncSession, whs: dict[str, int], pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    by_id = {i: c for c, i in whs.items()}
    out: dict[tuple[str, str], int] = {}
    for chunk in chunks({(whs[w], loc) for w, loc in pairs}):
        rows = await s.execute(
            select(Location.warehouse_id, Location.code, Location.id).where(
                Location.warehouse_id.in_({w for w, _ in chunk}), Location.code.in_({c for _, c in chunk})
            )
        )
        out.update(((by_id[w], c), i) for w, c, i in rows if (by_id[w], c) in pairs)
    return out


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(set(keys))
    more = f" …（共 {len(keys)} 个 / {len(keys)} in all）" if len(keys) > MAX_LISTED else ""
    return "、".join(keys[:MAX_LISTED]) + more


def _unknown_warnings(st: EntityStats, what_zh: str, what_en: str, res: _Resolved) -> None:
    if res.unknown_skus:
        st.warnings.append(
            f"{what_zh}中有 {len(res.unknown_skus)} 个物料在 pandian 里没有（不在 ERP 物料同步范围内？），这些行已跳过："
            f"{_listed(res.unknown_skus)} / {len(res.unknown_skus)} SKUs in the ERP's {what_en} are unknown to "
            "pandian (outside the item sync?); their lines were skipped"
        )
    if res.unknown_warehouses:
        st.warnings.append(
            f"{what_zh}中有未知仓库，这些行已跳过：{_listed(res.unknown_warehouses)} / unknown warehouses in the "
            f"ERP's {what_en}; their lines were skipped"
        )


# ------------------------------------------------------------------------------------------------ movements


async def _our_documents(sm: async_sessionmaker[AsyncSession], settings: Settings) -> set[str]:
    """Our bill numbers and the ERP documents our postings produced: their movements are already booked."""
    out: set[str] = set()
    async with sm() as s:
        for key, refs, doc_no in await s.execute(
            select(ErpPosting.doc_key, ErpPosting.erp_refs, ErpPosting.erp_doc_no)
        ):
            out.add(key)
            out.update(refs or ())
            if doc_no:
                out.add(doc_no)
    return out


def is_ours(rec: MovementRecord, ours: set[str], prefix: str) -> bool:
    for ref in (rec.source_doc, rec.reference):
        if not ref:
            continue
        if ref in ours:
            return True
        # a document we split in parts (U8 transfers: PD00000012-O / -I)
        head = ref.rsplit("-", 1)[0]
        if ref.startswith(prefix) and head in ours:
            return True
    return False


async def _write_movements(
    s: AsyncSession,
    settings: Settings,
    connector: Connector,
    name: str,
    moves: list[MovementRecord],
    st: EntityStats,
    now: datetime,
    ours: set[str],
) -> None:
    scoped = [m for m in moves if _in_scope(settings, m.warehouse)]
    mine = [m for m in scoped if is_ours(m, ours, settings.erp.bill_prefix)]
    if mine:
        st.warnings.append(
            f"跳过 {len(mine)} 行本系统过账的单据（调整已入账）/ skipped {len(mine)} lines of documents pandian "
            "posted (already booked here)"
        )
    mine_set = set(mine)
    todo = [m for m in scoped if m not in mine_set]
    st.skipped += len(moves) - len(todo)
    if not todo:
        return
    res = await _resolve(s, settings, name, ((m.sku, m.warehouse, m.location) for m in todo), st, now)
    _unknown_warnings(st, "出入库流水", "movements", res)
    usable = [m for m in todo if m.sku in res.items and (m.warehouse, m.location) in res.locations]
    st.skipped += len(todo) - len(usable)
    pairs = {(res.items[m.sku], res.locations[(m.warehouse, m.location)]) for m in usable}
    await ensure_item_locations(s, pairs)
    ils = await item_location_ids(s, pairs)
    lines = []
    for m in usable:
        item_id, loc_id = res.items[m.sku], res.locations[(m.warehouse, m.location)]
        lines.append(
            MovementLine(
                item_id=item_id,
                location_id=loc_id,
                item_location_id=ils[(item_id, loc_id)],
                qty=m.qty,
                type=m.type,
                occurred_at=m.occurred_at,
                source_doc=(m.source_doc or "")[:100] or None,
                import_key=f"{connector.system}:{m.key}"[:200],
            )
        )
    created = await apply_movements(s, lines, recorded_at=now)
    st.created += created
    st.unchanged += len(usable) - created
    if created:
        await _reevaluate(s, settings, now)


async def _reevaluate(s: AsyncSession, settings: Settings, now: datetime) -> None:
    # late movements that happened before a count change that count's book (as after a spreadsheet import)
    from core.variance.service import reevaluate_open_variances

    await reevaluate_open_variances(s, settings, now)


# ------------------------------------------------------------------------------------------------ stock


async def _sync_stock(
    sm: async_sessionmaker[AsyncSession],
    settings: Settings,
    connector: Connector,
    st: EntityStats,
    *,
    full: bool,
    now: datetime,
    clock: Callable[[], datetime],
    progress: Progress | None = None,
) -> None:
    async with sm() as s:
        last = await load_cursor(s, connector.system, Entity.STOCK)
    if connector.snapshots and not full and last and _not_due(last, settings, now):
        st.not_due = True
        return
    # the snapshot is read from here on: movements before this are in it, later ones are not (or may be:
    # a movement during the read is counted twice or missed until the next snapshot)
    started = clock()
    records: list[StockRecord] = []
    files: list[FileSource] = []
    cursor = None
    async for page in connector.pull(Entity.STOCK, None if connector.snapshots else last):
        st.pages += 1
        st.pulled += len(page.records)
        records.extend(r for r in page.records if isinstance(r, StockRecord))
        files.extend(r for r in page.records if isinstance(r, FileSource))
        cursor = page.cursor or cursor
        if progress:
            progress(Entity.STOCK, st)
    async with sm() as s, s.begin():
        for f in files:  # the spreadsheet connector: stock files, imported as they are
            st.add(await import_file(s, f.path, f.kind, tz=settings.tz, now=now))
        if connector.snapshots:
            await _write_snapshot(s, settings, connector, records, st, now, started)
            cursor = started.isoformat()
        if cursor:
            await save_cursor(s, connector.system, Entity.STOCK, cursor, now)


def _not_due(last: str, settings: Settings, now: datetime) -> bool:
    try:
        at = datetime.fromisoformat(last)
    except ValueError:
        return False
    return at.tzinfo is not None and now - at < timedelta(minutes=settings.erp.stock_refresh_minutes)


async def _write_snapshot(
    s: AsyncSession,
    settings: Settings,
    connector: Connector,
    records: list[StockRecord],
    st: EntityStats,
    now: datetime,
    started: datetime,
) -> None:
    scoped = [r for r in records if _in_scope(settings, r.warehouse)]
    st.skipped += len(records) - len(scoped)
    name = f"{connector.label} {ENTITY_ZH[Entity.STOCK]}"
    res = await _resolve(s, settings, name, ((r.sku, r.warehouse, r.location) for r in scoped), st, now)
    _unknown_warnings(st, "库存", "stock", res)
    # per item-location, lots summed (lot balances are kept by the spreadsheet import only)
    erp: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    skipped = 0
    for r in scoped:
        if r.sku in res.items and (r.warehouse, r.location) in res.locations:
            erp[(res.items[r.sku], res.locations[(r.warehouse, r.location)])] += r.qty
        else:
            skipped += 1
    st.skipped += skipped
    warehouses = {r.warehouse for r in scoped if r.warehouse not in res.unknown_warehouses}
    warehouses.update(settings.erp.warehouses)
    wh_ids = dict(
        (c, i)
        for c, i in await s.execute(
            select(Warehouse.code, Warehouse.id).where(Warehouse.code.in_(warehouses))
        )
    )
    # item-locations the ERP no longer lists hold nothing in the ERP
    target: dict[tuple[int, int], Decimal] = dict(erp)
    if wh_ids:
        held = await s.execute(
            select(ItemLocation.item_id, ItemLocation.location_id).where(
                ItemLocation.warehouse_id.in_(wh_ids.values()), ItemLocation.qty != 0
            )
        )
        for item_id, loc_id in held:
            target.setdefault((item_id, loc_id), Decimal(0))
    # what we approved and the ERP does not hold yet
    in_scope = set(await s.scalars(select(Location.id).where(Location.warehouse_id.in_(wh_ids.values()))))
    for key, delta in (await unposted_deltas(s, started)).items():
        if key in target or key[1] in in_scope:
            target[key] = target.get(key, Decimal(0)) + delta
    # a zero the ERP lists where pandian has no item-location: nothing to count, nothing to create
    existing = await item_location_ids(s, target.keys())
    target = {k: q for k, q in target.items() if q != 0 or k in existing}
    if not target:
        return
    codes = await _codes(s, target.keys())
    rows = [
        [codes[k][0], codes[k][1], codes[k][2], q]
        for k, q in sorted(target.items(), key=lambda kv: codes[kv[0]])
    ]
    # no "as of": an unchanged quantity is left alone; a changed one is stamped with the import's ``now``
    report = await import_records(
        s, settings, "stock", name, ["sku", "warehouse", "location", "qty"], rows, started
    )
    st.add(report)


async def _codes(
    s: AsyncSession, keys: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], tuple[str, str, str]]:
    keys = list(keys)
    skus: dict[int, str] = {}
    for chunk in chunks({i for i, _ in keys}):
        skus.update(
            (i, sku) for i, sku in await s.execute(select(Item.id, Item.sku).where(Item.id.in_(chunk)))
        )
    locs: dict[int, tuple[str, str]] = {}
    for chunk in chunks({loc for _, loc in keys}):
        rows = await s.execute(
            select(Location.id, Warehouse.code, Location.code)
            .join(Warehouse, Warehouse.id == Location.warehouse_id)
            .where(Location.id.in_(chunk))
        )
        locs.update((i, (w, c)) for i, w, c in rows)
    return {(i, loc): (skus[i], *locs[loc]) for i, loc in keys}


async def unposted_deltas(s: AsyncSession, since: datetime) -> dict[tuple[int, int], Decimal]:
    """Per ``(item_id, location_id)``: what approved adjustments changed here that the ERP may not hold yet —
    those still waiting or failed, and those posted after ``since`` (the ERP's snapshot may predate them).
    Only adjustments made by ``since``: later ones are movements after the snapshot and count as such."""
    rows = await s.execute(
        select(
            AdjustmentLine.item_id,
            AdjustmentLine.location_id,
            AdjustmentLine.to_location_id,
            AdjustmentLine.qty,
        )
        .join(Adjustment, Adjustment.id == AdjustmentLine.adjustment_id)
        .outerjoin(ErpPosting, ErpPosting.adjustment_id == Adjustment.id)
        .where(
            Adjustment.created_at <= since,
            or_(
                Adjustment.state.in_(
                    [AdjustmentState.PENDING_WRITE_BACK.value, AdjustmentState.FAILED.value]
                ),
                ErpPosting.posted_at > since,
            ),
        )
    )
    out: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for item_id, loc_id, to_loc_id, qty in rows:
        q = Decimal(qty)
        if to_loc_id is not None:  # a transfer: out of one location, into the other
            out[(item_id, loc_id)] -= q
            out[(item_id, to_loc_id)] += q
        else:
            out[(item_id, loc_id)] += q
    return {k: v for k, v in out.items() if v != 0}


def cursor_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
