"""A company's own Kingdee exports, as 金蝶云星空 writes them (物料列表, 仓位, 即时库存), import as they are: the
base-unit quantity is read, not the main-unit one, the same bin code in two warehouses stays two locations, and
the columns a stock file does not use are named, not refused."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.importing import import_file
from core.models import Item, ItemLocation, Location, Warehouse

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # Kingdee's CSV export has a BOM
        csv.writer(f).writerows(rows)
    return path


async def test_kingdee_item_bin_and_on_hand_exports(session: AsyncSession, tmp_path: Path) -> None:
    items = write(tmp_path / "物料列表.csv", [["编码", "名称", "规格型号", "基本单位", "单价"],
                                          ["HT-1001", "六角螺栓", "M8x30", "个", "0.8"],
                                          ["HT-1002", "平垫圈", "Φ8", "个", "0.1"]])  # fmt: skip
    bins = write(tmp_path / "仓位.csv", [["仓库编码", "仓库名称", "仓位编码"], ["HT-SH", "上海仓", "A-01-01"],
                                       ["HT-SH", "上海仓", "A-01-02"], ["HT-SZ", "苏州仓", "A-01-01"]])  # fmt: skip
    on_hand = write(tmp_path / "即时库存.csv", [
        ["物料编码", "物料名称", "规格型号", "仓库编码", "仓库名称", "仓位", "批号", "库存主单位", "库存量(主单位)",
         "基本单位", "库存量(基本单位)", "库存组织"],
        ["HT-1001", "六角螺栓", "M8x30", "HT-SH", "上海仓", "A-01-01", "", "盒", "2", "个", "200", "恒泰上海"],
        ["HT-1001", "六角螺栓", "M8x30", "HT-SZ", "苏州仓", "A-01-01", "", "盒", "1", "个", "100", "恒泰苏州"],
        ["HT-1002", "平垫圈", "Φ8", "HT-SH", "上海仓", "A-01-02", "", "个", "50", "个", "50", "恒泰上海"],
    ])  # fmt: skip
    assert (await import_file(session, items, None, tz=TZ, now=NOW)).kind == "items"
    assert (await import_file(session, bins, None, tz=TZ, now=NOW)).kind == "locations"
    report = await import_file(session, on_hand, None, tz=TZ, now=NOW)
    assert report.kind == "stock"
    await session.commit()
    book = {
        (wh, loc, sku): qty
        for wh, loc, sku, qty in (
            await session.execute(
                select(Warehouse.code, Location.code, Item.sku, ItemLocation.qty)
                .join(Location, Location.id == ItemLocation.location_id)
                .join(Warehouse, Warehouse.id == Location.warehouse_id)
                .join(Item, Item.id == ItemLocation.item_id)
            )
        ).all()
    }
    assert book == {
        ("HT-SH", "A-01-01", "HT-1001"): Decimal(200),  # 库存量(基本单位), not the 2 boxes
        ("HT-SZ", "A-01-01", "HT-1001"): Decimal(100),  # the same bin code in the other warehouse
        ("HT-SH", "A-01-02", "HT-1002"): Decimal(50),
    }
