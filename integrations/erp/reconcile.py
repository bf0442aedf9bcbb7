"""Reconciliation: where the ERP's book stock differs from what was approved here and posted there.

pandian's book already holds every approved adjustment (``core.variance.service._adjust`` books it at once);
the ERP holds only those posted. So for each item-location:

    expected ERP quantity = pandian's book − adjustments approved here and not (yet) in the ERP

and ``unexplained = ERP − expected`` is what nobody here can account for: a posting that went in with another
quantity, stock moved in the ERP after the last sync, or a change made in the ERP by hand. Rows where the only
difference is a queued or failed adjustment are shown too (``unposted``), with the adjustments' state, so a
failed posting never hides behind a matching total. Run ``pandian erp sync`` first for a fresh book.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.models import (
    Adjustment,
    AdjustmentLine,
    ErpPosting,
    ErpSyncRun,
    Item,
    ItemLocation,
    Location,
    Warehouse,
)
from core.variance.workflow import AdjustmentState
from integrations.erp.base import Connector


@dataclass
class ReconcileRow:
    sku: str
    name: str
    warehouse: str
    location: str
    book: Decimal  # pandian
    erp: Decimal
    unposted: Decimal  # approved here, not in the ERP yet
    docs: list[str] = field(default_factory=list)  # "PD00000012 待回写 +5"

    @property
    def unexplained(self) -> Decimal:
        return self.erp - (self.book - self.unposted)


@dataclass
class FailedPosting:
    adjustment_id: int
    key: str
    state: str
    attempts: int
    error: str | None


@dataclass
class ReconcileReport:
    system: str
    compared: int
    rows: list[ReconcileRow]
    failed: list[FailedPosting]
    unknown_skus: list[str]
    last_sync: datetime | None

    @property
    def unexplained(self) -> list[ReconcileRow]:
        return [r for r in self.rows if r.unexplained != 0]


_STATE_ZH = {
    AdjustmentState.PENDING_WRITE_BACK.value: "待回写",
    AdjustmentState.FAILED.value: "回写失败",
    AdjustmentState.EXPORTED.value: "已导出",
    AdjustmentState.POSTED.value: "已过账",
}


async def reconcile(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, connector: Connector
) -> ReconcileReport:
    erp_rows = await connector.stock_snapshot()
    scope = set(settings.erp.warehouses)
    erp: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for r in erp_rows:
        if not scope or r.warehouse in scope:
            erp[(r.sku, r.warehouse, r.location)] += r.qty
    async with sessionmaker() as s:
        return await _compare(s, settings, connector.system, erp)


async def _compare(
    s: AsyncSession, settings: Settings, system: str, erp: dict[tuple[str, str, str], Decimal]
) -> ReconcileReport:
    warehouses = {w for _, w, _ in erp} | set(settings.erp.warehouses)
    book: dict[tuple[str, str, str], tuple[Decimal, str]] = {}
    rows = await s.execute(
        select(Item.sku, Item.name, Warehouse.code, Location.code, ItemLocation.qty)
        .join(Item, Item.id == ItemLocation.item_id)
        .join(Location, Location.id == ItemLocation.location_id)
        .join(Warehouse, Warehouse.id == ItemLocation.warehouse_id)
        .where(Warehouse.code.in_(warehouses))
    )
    for sku, name, wh, loc, qty in rows:
        book[(sku, wh, loc)] = (Decimal(qty), name)
    known = set((await s.execute(select(Item.sku).where(Item.sku.in_({k[0] for k in erp})))).scalars())
    # adjustments by item-location: unposted deltas and the documents behind them
    unposted: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    docs: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    to_loc = Location.__table__.alias("to_loc")
    adj_rows = await s.execute(
        select(Adjustment.id, Adjustment.state, Adjustment.erp_doc_no, Item.sku, Warehouse.code, Location.code,
               to_loc.c.code, AdjustmentLine.qty, ErpPosting.state)
        .join(AdjustmentLine, AdjustmentLine.adjustment_id == Adjustment.id)
        .join(Item, Item.id == AdjustmentLine.item_id)
        .join(Location, Location.id == AdjustmentLine.location_id)
        .outerjoin(to_loc, to_loc.c.id == AdjustmentLine.to_location_id)
        .join(Warehouse, Warehouse.id == Adjustment.warehouse_id)
        .outerjoin(ErpPosting, ErpPosting.adjustment_id == Adjustment.id)
        .where(Warehouse.code.in_(warehouses))
        .order_by(Adjustment.id)
    )  # fmt: skip
    for adj_id, state, doc_no, sku, wh, loc, to_code, qty, _pstate in adj_rows:
        q = Decimal(qty)
        moves = [((sku, wh, loc), -q), ((sku, wh, to_code), q)] if to_code else [((sku, wh, loc), q)]
        for key, delta in moves:
            label = f"{settings.erp.bill_prefix}{adj_id:08d} {_STATE_ZH.get(state, state)} {delta:+}"
            if state in (AdjustmentState.PENDING_WRITE_BACK.value, AdjustmentState.FAILED.value):
                unposted[key] += delta
                docs[key].append(label)
            elif key in erp or key in book:
                docs[key].append(label + (f" ({doc_no})" if doc_no else ""))
    out: list[ReconcileRow] = []
    for key in sorted(set(book) | {k for k in erp if k[0] in known}):
        b, name = book.get(key, (Decimal(0), ""))
        e = erp.get(key, Decimal(0))
        row = ReconcileRow(
            key[0], name, key[1], key[2], b, e, unposted.get(key, Decimal(0)), docs.get(key, [])
        )
        if row.unexplained != 0 or row.unposted != 0:
            out.append(row)
    failed = [
        FailedPosting(p.adjustment_id, p.doc_key, p.state, p.attempts, p.last_error)
        for p in (
            await s.execute(
                select(ErpPosting).where(ErpPosting.state.in_(["failed", "held"])).order_by(ErpPosting.id)
            )
        ).scalars()
    ]
    last = (
        await s.execute(
            select(ErpSyncRun.finished_at)
            .where(ErpSyncRun.system == system, ErpSyncRun.ok.is_(True))
            .order_by(ErpSyncRun.finished_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    unknown = sorted({k[0] for k in erp} - known)
    return ReconcileReport(system, len(set(book) | set(erp)), out, failed, unknown, last)
