"""Spreadsheets are hostile until checked: a decompression bomb is refused before it is parsed, with a message
that says what to do, and text that came in from a file never goes out to finance as a live formula."""

from __future__ import annotations

import csv
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.config import ImportSettings
from core.importing import ImportFailed, import_file
from core.models import Item
from core.variance.export import export_adjustments
from tests import xlsx_bombs
from tests.fakes.erp_harness import make_adjustments
from tests.integration.pinned_cli import PinnedCli

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
# what a CSV from a careless (or hostile) source can hold in a name column
HOSTILE = {
    "F1": '=HYPERLINK("http://example.invalid/x","点我")',
    "F2": "=cmd|' /C calc'!A0",
    "F3": "@SUM(1+1)",
    "F4": "+86-21-5555",
    "F5": "-2+3",
}  # (#N/A is refused on import: an Excel error value is a failed formula, not a name)


async def refused(session: AsyncSession, path: Path, limits: ImportSettings | None = None) -> str:
    with pytest.raises(ImportFailed) as e:
        await import_file(session, path, None, tz=TZ, now=NOW, limits=limits)
    return str(e.value)


async def test_a_declared_bomb_is_refused_from_the_zip_directory_before_parsing(
    session: AsyncSession, tmp_path: Path
) -> None:
    bomb = xlsx_bombs.declared_bomb(tmp_path / "物料.xlsx")  # a few KB that say 2 GiB unpacked
    assert bomb.stat().st_size < 10_000
    tracemalloc.start()
    try:
        msg = await refused(session, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "物料.xlsx" in msg and "MB" in msg
    assert "另存为" in msg and "save it again" in msg  # what to do, in both languages
    assert peak < 20 << 20, peak  # nothing was unpacked
    assert await session.scalar(select(func.count()).select_from(Item)) == 0


async def test_a_real_worksheet_bomb_is_refused_by_its_ratio_and_size(
    session: AsyncSession, tmp_path: Path
) -> None:
    bomb = xlsx_bombs.worksheet_bomb(tmp_path / "stock.xlsx", unpacked=48 << 20)  # 48 MiB of identical rows
    assert bomb.stat().st_size < 2 << 20
    msg = await refused(session, bomb)  # the default limits: its compression ratio gives it away
    assert "stock.xlsx" in msg and "压缩" in msg
    small = ImportSettings(xlsx_max_uncompressed_mb=16, xlsx_max_ratio=10_000)  # a ratio allowed, a size not
    msg = await refused(session, bomb, small)
    assert "16" in msg
    assert await session.scalar(select(func.count()).select_from(Item)) == 0


def test_the_command_line_refuses_a_bomb_with_a_message_not_a_traceback(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    bomb = xlsx_bombs.declared_bomb(tmp_path / "items.xlsx")
    cli = PinnedCli(NOW, env={"PANDIAN_DATABASE_URL": database_url})
    out = cli.run("import", str(bomb))
    assert out.exit_code == 1, out.output
    assert "items.xlsx" in out.output and "Traceback" not in out.output
    assert not isinstance(out.exception, ImportFailed | MemoryError)


async def test_text_from_a_file_is_exported_as_text_never_as_a_formula(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    items = tmp_path / "items.csv"
    with items.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["物料编码", "物料名称", "单位", "单价"])
        w.writerows([sku, name, "个", "2"] for sku, name in HOSTILE.items())
    locations = tmp_path / "locations.csv"
    with locations.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["仓库", "库位"], ["WH1", "A-01"]])
    async with sessionmaker() as s:
        await import_file(s, items, "items", tz=TZ, now=NOW)
        await import_file(s, locations, "locations", tz=TZ, now=NOW)
        await s.commit()
        stored = {sku: name for sku, name in (await s.execute(select(Item.sku, Item.name))).all()}
    assert stored == HOSTILE  # imported as the text it is
    await make_adjustments(sessionmaker, [("gain", sku, "WH1", "A-01", "1") for sku in HOSTILE])

    xlsx = tmp_path / "调整.xlsx"
    async with sessionmaker() as s, s.begin():
        result = await export_adjustments(s, xlsx, "xlsx", tz=TZ, now=NOW)
    result.publish()
    wb = openpyxl.load_workbook(xlsx)  # not read-only: the cells' types and prefixes are kept
    seen: dict[str, object] = {}
    for ws in wb.worksheets:
        header = [c.value for c in ws[1]]
        name_col = header.index("物料名称")
        for row in ws.iter_rows(min_row=2):
            cell = row[name_col]
            assert cell.data_type == "s", (cell.value, cell.data_type)  # a string, not "f" (formula) or "e"
            seen[str(cell.value)] = cell.quotePrefix
    assert set(seen) == set(HOSTILE.values())
    assert all(seen[v] for v in HOSTILE.values())  # quote-prefixed: it stays text when someone edits it

    await make_adjustments(sessionmaker, [("loss", sku, "WH1", "A-01", "-1") for sku in HOSTILE])
    out = tmp_path / "调整.csv"
    async with sessionmaker() as s, s.begin():
        result = await export_adjustments(s, out, "csv", tz=TZ, now=NOW)
    result.publish()
    rows = list(csv.reader(out.open(encoding="utf-8-sig")))
    names = [r[rows[0].index("物料名称")] for r in rows[1:]]
    assert sorted(names) == sorted("'" + v if v[0] in "=+-@" else v for v in HOSTILE.values())
