"""What Excel does to codes and dates on the way from the ERP is refused with the cause and the fix, never
imported as damaged data: scientific notation, lost leading zeros, date serial numbers, formulas without a value."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.importing import ImportFailed, import_file
from core.models import Item, Movement

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def write(path: Path, rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


async def refused(session: AsyncSession, path: Path) -> str:
    with pytest.raises(ImportFailed) as e:
        await import_file(session, path, None, tz=TZ, now=NOW)
    await session.rollback()
    return str(e.value)


async def test_codes_in_scientific_notation_are_refused(session: AsyncSession, tmp_path: Path) -> None:
    items = write(tmp_path / "items.csv", [["物料编码", "物料名称", "单位", "条码"], ["6.9E+12", "螺母", "个", ""],
                                           ["A2", "垫片", "个", "6.90123E+12"]])  # fmt: skip
    msg = await refused(session, items)
    assert "第 2 行 “物料编码” 列：“6.9E+12”是 Excel 的科学计数法" in msg
    assert "第 3 行 “条码” 列：“6.90123E+12”是 Excel 的科学计数法" in msg
    assert "format the column as text" in msg
    assert await session.scalar(select(func.count()).select_from(Item)) == 0


async def test_lost_leading_zeros_and_date_serials_name_what_was_meant(
    session: AsyncSession, tmp_path: Path
) -> None:
    await import_file(session, write(tmp_path / "i.csv", [["物料编码", "物料名称", "单位"], ["00123", "螺丝", "个"]]),
                      None, tz=TZ, now=NOW)  # fmt: skip
    await import_file(
        session, write(tmp_path / "l.csv", [["仓库", "库位"], ["W1", "A-1"]]), None, tz=TZ, now=NOW
    )
    await session.commit()
    stock = write(tmp_path / "stock.csv", [["物料编码", "仓库", "库位", "数量"], ["123", "W1", "A-1", "5"]])
    msg = await refused(session, stock)
    assert "物料编码“123”不存在，但有物料“00123”" in msg and "leading zeros" in msg
    moves = write(tmp_path / "mov.csv", [["物料编码", "仓库", "库位", "数量", "类型", "日期"],
                                        ["00123", "W1", "A-1", "5", "入库", "45600"]])  # fmt: skip
    msg = await refused(session, moves)
    assert "“45600”是 Excel 的日期序号（即 2024-11-04）" in msg and "date serial number" in msg
    assert await session.scalar(select(func.count()).select_from(Movement)) == 0
    await import_file(session, write(tmp_path / "l2.csv", [["仓库", "库位"], ["W1", "0101"], ["W2", "0101"]]),
                      None, tz=TZ, now=NOW)  # fmt: skip
    await session.commit()
    bins = write(tmp_path / "stock2.csv", [["物料编码", "仓库", "库位", "数量"], ["00123", "W1", "101", "5"],
                                         ["00123", "W2", "101", "5"]])  # fmt: skip
    msg = await refused(session, bins)
    for wh in ("W1", "W2"):  # the same bin code in each warehouse, each named
        assert f"库位“101”在仓库“{wh}”中不存在，但有库位“0101”：Excel 去掉了编码前面的 0" in msg, msg


async def test_a_formula_without_a_value_is_named_as_a_formula(session: AsyncSession, tmp_path: Path) -> None:
    wb = (
        openpyxl.Workbook()
    )  # written by a program: the formula was never calculated, the file holds no value
    ws = wb.active
    assert ws is not None
    ws.append(["物料编码", "物料名称", "单位"])
    ws.append(["B1", '=CONCAT("a","b")', "个"])
    wb.save(tmp_path / "items.xlsx")
    msg = await refused(session, tmp_path / "items.xlsx")
    assert '这一格是公式（=CONCAT("a","b")）' in msg and "粘贴为数值" in msg and "Paste Special" in msg
    assert "不能为空" not in msg
