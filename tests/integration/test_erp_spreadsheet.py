"""The default connector: spreadsheets dropped in the inbox are imported once (the import's own rules and
messages), approved adjustments are exported to the outbox, reconciliation reads the newest stock file."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.models import Adjustment, Item, ItemLocation, Movement
from integrations.erp import drain_postings, make_connector, scheduled_sync
from integrations.erp.reconcile import reconcile
from integrations.erp.spreadsheet import SpreadsheetConnector
from integrations.erp.sync import sync
from tests.fakes.erp_harness import make_adjustments

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def write(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def settings_for(tmp_path: Path, database_url: str = "") -> Settings:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    extra: dict[str, Any] = {"database_url": database_url} if database_url else {}
    return Settings(erp={"spreadsheet": {"inbox": str(tmp_path / "in"), "outbox": str(tmp_path / "out"), "format": "csv"}},
                    **extra)  # fmt: skip


def fill_inbox(inbox: Path) -> None:
    write(inbox / "1-items.csv", ["物料编码,物料名称,单价,条码", "S1,螺丝,0.5,6901", "S2,螺母,0.3,6902"])
    write(inbox / "2-locations.csv", ["仓库,库位", "WH1,A-01", "WH1,A-02"])
    write(inbox / "3-stock.csv", ["物料编码,仓库,库位,数量", "S1,WH1,A-01,100", "S2,WH1,A-02,40"])
    write(inbox / "4-movements.csv", ["物料编码,仓库,库位,数量,类型,时间,单据号",
                                      "S1,WH1,A-01,-5,出库,2026-11-30 12:00,SO-1"])  # fmt: skip


async def test_inbox_files_are_imported_once_and_a_changed_file_again(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings_for(tmp_path)
    fill_inbox(tmp_path / "in")
    c = make_connector(settings)
    assert isinstance(c, SpreadsheetConnector)
    r = await sync(sessionmaker, settings, c, now=T0, clock=lambda: T0)
    assert r.ok, r.error
    assert (r.entities["items"].created, r.entities["stock"].created, r.entities["movements"].created) == (
        2,
        2,
        1,
    )
    async with sessionmaker() as s:
        qty = (await s.execute(select(ItemLocation.qty).join(Item).where(Item.sku == "S1"))).scalar_one()
    assert qty == Decimal(95)  # the issue at 12:00 came after the stock snapshot (imported at T0)
    r = await sync(sessionmaker, settings, c, now=T0, clock=lambda: T0)
    assert r.ok and all(st.pulled == 0 for st in r.entities.values())
    write(tmp_path / "in" / "1-items.csv", ["物料编码,物料名称,单价", "S1,螺丝,0.6"])
    r = await sync(sessionmaker, settings, c, now=T0, clock=lambda: T0)
    assert (r.entities["items"].pulled, r.entities["items"].updated) == (1, 1)


async def test_a_bad_file_stops_with_the_imports_message_and_changes_nothing(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings_for(tmp_path)
    write(tmp_path / "in" / "items.csv", ["物料编码,物料名称,单价", "S1,螺丝,很便宜"])
    r = await sync(sessionmaker, settings, make_connector(settings), now=T0, clock=lambda: T0)
    assert not r.ok and r.error is not None
    assert "items.csv 第 2 行" in r.error and "不是数字" in r.error
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Item)) == 0


async def test_write_back_exports_pending_adjustments_and_reconcile_reads_the_stock_file(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings_for(tmp_path)
    fill_inbox(tmp_path / "in")
    c = make_connector(settings)
    assert (await sync(sessionmaker, settings, c, now=T0, clock=lambda: T0)).ok
    await make_adjustments(sessionmaker, [("gain", "S2", "WH1", "A-02", "2")])
    counts = await c.write_back(sessionmaker, settings, now=T0)
    assert counts["adjustments"] == 1
    [exported] = list((tmp_path / "out").glob("*.csv"))
    text = exported.read_text(encoding="utf-8-sig")
    assert "盘盈单" in text and "S2" in text
    async with sessionmaker() as s:
        assert (await s.execute(select(Adjustment.state))).scalar_one() == "exported"
    # the ERP's stock export says 35 for S2 and 95 for S1: S2 differs from pandian's 40
    write(
        tmp_path / "in" / "5-stock-erp.csv", ["物料编码,仓库,库位,数量", "S1,WH1,A-01,95", "S2,WH1,A-02,35"]
    )
    report = await reconcile(sessionmaker, settings, c)
    assert [(r.sku, r.unexplained) for r in report.unexplained] == [("S2", Decimal(-5))]


async def test_scheduler_entry_points(
    tmp_path: Path, database_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    settings = settings_for(tmp_path, database_url)
    fill_inbox(tmp_path / "in")
    counts = await scheduled_sync(sessionmaker, settings)
    assert counts["errors"] == 0 and counts["items_created"] == 2 and counts["movements_created"] == 1
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Movement)) == 1
    await make_adjustments(sessionmaker, [("loss", "S1", "WH1", "A-01", "-1")])
    assert (await drain_postings(sessionmaker, settings))["adjustments"] == 1
    assert (await drain_postings(sessionmaker, settings))["adjustments"] == 0
