"""The built-in write-back: adjustments exported to a spreadsheet that Kingdee or Yonyou can import.

Layout: one sheet per document type (盘盈单 gains, 盘亏单 losses, 调拨单 transfers for mis-slot pairs) in
.xlsx, or one UTF-8 (with BOM, for Excel) .csv with a 单据类型 column. Each adjustment is exported exactly
once: the rows are claimed (``pending_write_back`` → ``exported``) in the same transaction that produces the
file, and the file only appears under its name (an atomic rename, ``ExportResult.publish``) after that
transaction has committed: a crash in between leaves the adjustments pending and no file. Text cells go
through ``core.cells.safe_cell``: an item name such as ``=HYPERLINK(…)`` is written as text, never a formula.
"""

from __future__ import annotations

import csv
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from core import audit
from core.cells import safe_row
from core.enums import AdjustmentKind
from core.models import Adjustment, AdjustmentLine, Item, Location, Variance, Warehouse
from core.variance.workflow import ADJUSTMENT, AdjustmentEvent, AdjustmentState

SHEETS = {AdjustmentKind.GAIN: "盘盈单", AdjustmentKind.LOSS: "盘亏单", AdjustmentKind.TRANSFER: "调拨单"}
COLUMNS = [
    "单据类型", "单据编号", "日期", "仓库", "物料编码", "物料名称", "规格型号", "单位", "库位", "调入库位",
    "账存数量", "盘点数量", "数量", "单价", "金额", "差异号", "原因",
]  # fmt: skip


@dataclass
class ExportResult:
    batch: str | None
    path: Path | None
    adjustments: int
    lines: int
    value: Decimal
    staged: Path | None = None  # the written file, under a temporary name until ``publish``

    def publish(self) -> None:
        """Move the file into place. Call it after the claiming transaction has committed."""
        if self.staged is not None and self.path is not None:
            os.replace(self.staged, self.path)
            self.staged = None

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.unlink(missing_ok=True)
            self.staged = None


async def export_adjustments(
    session: AsyncSession, path: Path, fmt: str = "xlsx", *, tz: Any, now: datetime
) -> ExportResult:
    """Claim every pending adjustment and write them to ``path``. Never commits; the caller commits after."""
    if fmt not in ("xlsx", "csv"):
        raise ValueError(f"format must be xlsx or csv, not {fmt!r}")
    batch = f"EXP-{now.astimezone(tz):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    pending = select(Adjustment.id).where(Adjustment.state == AdjustmentState.PENDING_WRITE_BACK.value)
    if session.get_bind().dialect.name == "postgresql":
        pending = pending.with_for_update(skip_locked=True)  # two exporters never take the same document
    ids = list((await session.execute(pending.order_by(Adjustment.id))).scalars())
    if not ids:
        return ExportResult(None, None, 0, 0, Decimal(0))
    ADJUSTMENT.transition(AdjustmentState.PENDING_WRITE_BACK, AdjustmentEvent.EXPORTED)  # the table allows it
    claimed = await session.execute(
        update(Adjustment)
        .where(Adjustment.id.in_(ids), Adjustment.state == AdjustmentState.PENDING_WRITE_BACK.value)
        .values(state=AdjustmentState.EXPORTED.value, export_batch=batch, exported_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != len(ids):  # type: ignore[attr-defined]
        raise RuntimeError("another export claimed some of these adjustments; run the export again")
    to_loc = aliased(Location)
    rows = (
        await session.execute(
            select(Adjustment, AdjustmentLine, Item, Location, to_loc.code, Warehouse.code, Variance)
            .join(AdjustmentLine, AdjustmentLine.adjustment_id == Adjustment.id)
            .join(Item, Item.id == AdjustmentLine.item_id)
            .join(Location, Location.id == AdjustmentLine.location_id)
            .outerjoin(to_loc, to_loc.id == AdjustmentLine.to_location_id)
            .join(Warehouse, Warehouse.id == Adjustment.warehouse_id)
            .outerjoin(Variance, Variance.id == AdjustmentLine.variance_id)
            .where(Adjustment.id.in_(ids))
            .order_by(Adjustment.kind, Adjustment.id, AdjustmentLine.id)
        )
    ).all()
    table: dict[AdjustmentKind, list[list[Any]]] = {k: [] for k in SHEETS}
    total = Decimal(0)
    for doc, line, item, loc, to_code, wh_code, var in rows:
        kind = AdjustmentKind(doc.kind)
        table[kind].append(
            [
                SHEETS[kind], f"PD{doc.id:08d}", doc.created_at.astimezone(tz).date().isoformat(), wh_code, item.sku,
                item.name, item.spec or "", item.base_unit, loc.code, to_code or "",
                _num(var.book_qty) if var else "", _num(var.counted_qty) if var else "",
                _num(abs(Decimal(line.qty))), _num(line.unit_cost), _num(abs(Decimal(line.value))),
                var.id if var else "", (var.reason_code or "") if var else "",
            ]
        )  # fmt: skip
        total += Decimal(line.value)
    for adj_id in ids:
        audit.record(session, "adjustment", adj_id, AdjustmentEvent.EXPORTED.value, at=now,
                     from_state=AdjustmentState.PENDING_WRITE_BACK.value, to_state=AdjustmentState.EXPORTED.value,
                     batch=batch)  # fmt: skip
    staged = _write_file(path, fmt, table)
    return ExportResult(batch, path, len(ids), len(rows), total, staged)


def _num(v: Any) -> float | int:
    d = Decimal(v)
    return int(d) if d == d.to_integral_value() else float(d)


def _write_file(path: Path, fmt: str, table: dict[AdjustmentKind, list[list[Any]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            with tmp.open("w", encoding="utf-8-sig", newline="") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                for rows in table.values():
                    w.writerows(safe_row(r) for r in rows)
        else:
            from openpyxl import Workbook

            wb = Workbook(write_only=True)
            for kind, name in SHEETS.items():
                if not table[kind]:
                    continue
                ws = wb.create_sheet(name)
                ws.append(COLUMNS)
                for r in table[kind]:
                    ws.append(safe_row(r, ws))
            if not wb.worksheets:
                wb.create_sheet("盘盈单").append(COLUMNS)
            wb.save(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
