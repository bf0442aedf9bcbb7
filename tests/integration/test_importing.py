"""Spreadsheet import against a real database: every kind, idempotency, all-or-nothing, messages, 100k rows."""

from __future__ import annotations

import csv
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.importing import ImportFailed, import_file
from core.models import (
    Base,
    Item,
    ItemBarcode,
    ItemLocation,
    ItemUnit,
    Location,
    LotBalance,
    Movement,
    Team,
    User,
    UserUnavailability,
    UserZone,
    Warehouse,
    Zone,
)
from core.stock import book_at

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def write_csv(path: Path, rows: Sequence[Sequence[Any]], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows(rows)
    return path


def write_xlsx(path: Path, rows: Sequence[Sequence[Any]]) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for r in rows:
        ws.append(list(r))
    wb.save(path)
    return path


async def run(session: AsyncSession, path: Path, kind: str | None = None) -> Any:
    report = await import_file(session, path, kind, tz=TZ, now=NOW)
    await session.commit()
    return report


async def snapshot(session: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare before and after."""
    out = {}
    for table in Base.metadata.sorted_tables:
        rows = await session.execute(select(table).order_by(*table.primary_key.columns))
        out[table.name] = [tuple(r) for r in rows]
    return out


ITEMS = [
    ["物料编码", "物料名称", "规格型号", "单位", "单价", "条码", "包装单位", "换算", "批次管理", "固定分类"],
    ["A1", "螺丝", "M3x8", "个", 0.5, "6901, 6902；6903", "箱", 24, "否", "A"],
    ["A2", "螺母", None, "个", "1.25", None, None, None, "是", None],
    ["B1", "垫片", "Φ8", "片", 0, 6904, None, None, None, "c"],
]

LOCATIONS = [
    ["仓库", "库位", "库位条码", "库区", "仓库名称"],
    ["SH01", "A-10", "LOC-A10", "A", "上海一号仓"],
    ["SH01", "A-2", "LOC-A2", "A", "上海一号仓"],
    ["SH01", "B-1", None, "B", None],
    ["BJ01", "X-1", None, None, None],
]


async def setup_master_data(session: AsyncSession, tmp_path: Path) -> None:
    await run(session, write_xlsx(tmp_path / "items.xlsx", ITEMS))
    await run(session, write_csv(tmp_path / "locations.csv", LOCATIONS))


# --------------------------------------------------------------------------------------------------- kinds


async def test_items_xlsx_then_reimport_changes_nothing(session: AsyncSession, tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "items.xlsx", ITEMS)
    report = await run(session, path)
    assert (report.kind, report.rows, report.created, report.updated, report.unchanged) == (
        "items",
        3,
        3,
        0,
        0,
    )
    items = {i.sku: i for i in await session.scalars(select(Item))}
    assert items["A1"].name == "螺丝" and items["A1"].unit_cost == Decimal("0.5")
    assert items["A1"].pinned_class == "A" and items["A1"].abc_class == "A"
    assert items["A2"].lot_tracked is True and items["A2"].spec is None
    assert items["B1"].base_unit == "片" and items["B1"].pinned_class == "C"
    codes = dict((b, i) for b, i in await session.execute(select(ItemBarcode.barcode, ItemBarcode.item_id)))
    assert codes == {
        "6901": items["A1"].id,
        "6902": items["A1"].id,
        "6903": items["A1"].id,
        "6904": items["B1"].id,
    }
    units = (await session.execute(select(ItemUnit.item_id, ItemUnit.unit, ItemUnit.factor))).all()
    assert [tuple(u) for u in units] == [(items["A1"].id, "箱", Decimal(24))]

    before = await snapshot(session)
    again = await run(session, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert await snapshot(session) == before


async def test_items_update_touches_only_given_columns(session: AsyncSession, tmp_path: Path) -> None:
    await run(session, write_xlsx(tmp_path / "items.xlsx", ITEMS))
    report = await run(
        session,
        write_csv(
            tmp_path / "prices.csv",
            [["SKU", "Name", "Unit_Cost"], ["A1", "螺丝", "0.55"], ["A2", "螺母", "1.25"]],
        ),
    )
    assert (report.created, report.updated, report.unchanged) == (0, 1, 1)
    a1 = await session.scalar(select(Item).where(Item.sku == "A1"))
    assert a1 is not None and a1.unit_cost == Decimal("0.55") and a1.spec == "M3x8" and a1.pinned_class == "A"


async def test_locations_gbk_csv_create_warehouses_zones_and_sequence(
    session: AsyncSession, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "locations.csv", LOCATIONS, encoding="gbk")
    report = await run(session, path)
    assert (report.created, report.unchanged) == (4, 0)
    whs = dict((c, n) for c, n in await session.execute(select(Warehouse.code, Warehouse.name)))
    assert whs == {"SH01": "上海一号仓", "BJ01": "BJ01"}
    zones = {tuple(z) for z in await session.execute(select(Warehouse.code, Zone.code).join(Zone))}
    assert zones == {("SH01", "A"), ("SH01", "B")}
    seq = dict((c, s) for c, s in await session.execute(select(Location.code, Location.sequence)))
    assert seq == {"A-2": 1, "A-10": 2, "B-1": 3, "X-1": 1}  # natural order of codes per warehouse
    before = await snapshot(session)
    again = await run(session, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)
    assert await snapshot(session) == before


async def test_stock_sets_book_lots_and_appends_rotation(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    stock = write_csv(
        tmp_path / "stock.csv",
        [
            ["sku", "warehouse", "location", "qty", "lot", "as_of"],
            ["B1", "SH01", "A-10", "7", None, "2025-05-01 08:00"],
            ["A1", "SH01", "A-10", "100", None, "2025-05-01 08:00"],
            ["A2", "SH01", "A-2", "5", "L1", "2025-05-01 08:00"],
            ["A2", "SH01", "A-2", "7", "L2", "2025-05-01 08:00"],
            ["A1", "SH01", "B-1", "-2", None, "2025-05-01 08:00"],
        ],
    )
    report = await run(session, stock)
    assert (report.rows, report.created, report.updated, report.unchanged) == (5, 5, 0, 0)
    rows = (
        await session.execute(
            select(
                Item.sku,
                Location.code,
                ItemLocation.qty,
                ItemLocation.rotation_seq,
                ItemLocation.book_as_of,
                ItemLocation.warehouse_id,
            )
            .join(Item, Item.id == ItemLocation.item_id)
            .join(Location, Location.id == ItemLocation.location_id)
            .order_by(ItemLocation.rotation_seq)
        )
    ).all()
    # rotation: location sequence (A-2, A-10, B-1), then SKU
    assert [(r.sku, r.code, r.qty, r.rotation_seq) for r in rows] == [
        ("A2", "A-2", Decimal(12), 1),
        ("A1", "A-10", Decimal(100), 2),
        ("B1", "A-10", Decimal(7), 3),
        ("A1", "B-1", Decimal(-2), 4),
    ]
    assert {r.book_as_of for r in rows} == {datetime(2025, 5, 1, 0, tzinfo=UTC)}
    sh01 = await session.scalar(select(Warehouse.id).where(Warehouse.code == "SH01"))
    assert {r.warehouse_id for r in rows} == {sh01}
    lots = dict((lot, q) for lot, q in await session.execute(select(LotBalance.lot, LotBalance.qty)))
    assert lots == {"L1": Decimal(5), "L2": Decimal(7)}

    before = await snapshot(session)
    again = await run(session, stock)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 5)
    assert await snapshot(session) == before

    # a later file appends new item-locations and leaves the existing rotation alone; qty updates count as updated
    more = await run(
        session,
        write_csv(
            tmp_path / "more.csv",
            [
                ["物料编码", "仓库", "库位", "数量"],
                ["B1", "SH01", "A-2", "1"],
                ["A1", "SH01", "A-2", "2"],
                ["A1", "SH01", "A-10", "90"],
            ],
        ),
    )
    assert (more.created, more.updated, more.unchanged) == (2, 1, 0)
    seqs = {
        (sku, code): s
        for sku, code, s in await session.execute(
            select(Item.sku, Location.code, ItemLocation.rotation_seq)
            .join(Item, Item.id == ItemLocation.item_id)
            .join(Location, Location.id == ItemLocation.location_id)
        )
    }
    assert seqs == {
        ("A2", "A-2"): 1,
        ("A1", "A-10"): 2,
        ("B1", "A-10"): 3,
        ("A1", "B-1"): 4,
        ("A1", "A-2"): 5,
        ("B1", "A-2"): 6,
    }
    a10 = await session.scalar(
        select(ItemLocation)
        .join(Location)
        .join(Item, Item.id == ItemLocation.item_id)
        .where(Location.code == "A-10", Item.sku == "A1")
    )
    assert a10 is not None and a10.qty == Decimal(90) and a10.book_as_of == NOW  # default snapshot time: now


async def il_of(session: AsyncSession, sku: str, loc: str) -> ItemLocation:
    il = await session.scalar(
        select(ItemLocation)
        .join(Location, Location.id == ItemLocation.location_id)
        .join(Item, Item.id == ItemLocation.item_id)
        .where(Item.sku == sku, Location.code == loc)
    )
    assert il is not None
    return il


MOVES = [
    ["物料编码", "仓库", "库位", "数量", "类型", "日期", "时间", "单据号", "批次"],
    ["A1", "SH01", "A-10", "-10", "出库", "2025-05-01", "07:00", "SO-1", None],  # before the snapshot
    ["A1", "SH01", "A-10", "5", "入库", "2025-05-02", None, "PO-1", None],  # 00:00 local
    ["A1", "SH01", "A-10", "-20", "production_issue", None, "2025-05-03 10:00", "MO-1", None],
    ["A1", "SH01", "B-1", "3", "调拨", "2025-05-03", "09:00", "TR-1", None],  # creates the item-location
    ["A1", "SH01", "B-1", "3", "调拨", "2025-05-03", "09:00", "TR-1", None],  # an identical second line
    ["A2", "SH01", "A-2", "-2", "调整", "2025/5/4", None, None, "L1"],
]


async def test_movements_snapshot_rule_book_at_and_reimport(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    await run(
        session,
        write_csv(
            tmp_path / "stock.csv",
            [
                ["sku", "warehouse", "location", "qty", "lot", "as_of"],
                ["A1", "SH01", "A-10", "100", None, "2025-05-01 12:00"],
                ["A2", "SH01", "A-2", "5", "L1", "2025-05-01 12:00"],
            ],
        ),
    )
    path = write_xlsx(tmp_path / "moves.xlsx", MOVES)
    report = await run(session, path)
    assert (report.kind, report.rows, report.created, report.unchanged) == ("movements", 6, 6, 0)

    a10 = await il_of(session, "A1", "A-10")
    assert a10.qty == Decimal(85)  # 100 + 5 - 20; the -10 at 07:00 is already in the 12:00 snapshot
    assert a10.last_movement_at == datetime(2025, 5, 3, 2, tzinfo=UTC)
    assert a10.turnover_value == Decimal("17.5")  # (10 + 5 + 20) x 0.5, nothing counted yet
    b1 = await il_of(session, "A1", "B-1")
    assert b1.qty == Decimal(6) and b1.book_as_of is None and b1.rotation_seq == 3
    a2 = await il_of(session, "A2", "A-2")
    assert a2.qty == Decimal(3)
    assert await session.scalar(select(LotBalance.qty).where(LotBalance.lot == "L1")) == Decimal(3)
    times = set(await session.scalars(select(Movement.occurred_at).where(Movement.source_doc == "PO-1")))
    assert times == {datetime(2025, 5, 1, 16, tzinfo=UTC)}

    assert await book_at(session, a10.id, datetime(2025, 5, 2, 12, tzinfo=UTC)) == Decimal(105)
    # before the snapshot: the -10 at 07:00 is in the snapshot, so the book before it was 110
    assert await book_at(session, a10.id, datetime(2025, 4, 1, tzinfo=UTC)) == Decimal(110)
    assert await book_at(session, a10.id, NOW) == Decimal(85)
    assert await book_at(session, b1.id, datetime(2025, 5, 1, tzinfo=UTC)) == Decimal(0)

    before = await snapshot(session)
    again = await run(session, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 6)
    assert await snapshot(session) == before

    # turnover only counts movements after the last count
    await session.execute(
        update(ItemLocation)
        .where(ItemLocation.id == a10.id)
        .values(last_counted_at=datetime(2025, 5, 5, tzinfo=UTC), turnover_value=0)
    )
    await session.commit()
    await run(
        session,
        write_csv(
            tmp_path / "late.csv",
            [
                ["sku", "warehouse", "location", "qty", "type", "time"],
                ["A1", "SH01", "A-10", "-4", "issue", "2025-05-04 08:00"],
                ["A1", "SH01", "A-10", "-6", "issue", "2025-05-06 08:00"],
            ],
        ),
    )
    session.expire_all()
    a10 = await il_of(session, "A1", "A-10")
    assert a10.qty == Decimal(75) and a10.turnover_value == Decimal(3)


async def test_stock_after_movements_gives_the_same_book(session: AsyncSession, tmp_path: Path) -> None:
    """Snapshot and ledger may arrive in either order."""
    await setup_master_data(session, tmp_path)
    await run(session, write_xlsx(tmp_path / "moves.xlsx", MOVES))
    await run(
        session,
        write_csv(
            tmp_path / "stock.csv",
            [
                ["sku", "warehouse", "location", "qty", "as_of"],
                ["A1", "SH01", "A-10", "100", "2025-05-01 12:00"],
            ],
        ),
    )
    assert (await il_of(session, "A1", "A-10")).qty == Decimal(85)


async def test_users(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    path = write_csv(
        tmp_path / "users.csv",
        [
            [
                "姓名",
                "工号",
                "角色",
                "团队",
                "库区",
                "企业微信",
                "飞书",
                "钉钉",
                "日产能（分钟）",
                "不可用日期",
            ],
            [
                "张三",
                "E001",
                "仓管员、主管",
                "一组",
                "SH01/A, B",
                "zhangsan",
                "ou_1",
                None,
                300,
                "2025-05-01~2025-05-03",
            ],
            ["李四", "E002", None, "一组", None, None, None, "ding2", None, None],
            ["王五", "E003", "财务,经理", None, None, None, None, None, None, None],
        ],
        encoding="gb18030",
    )
    report = await run(session, path)
    assert (report.created, report.updated, report.unchanged) == (3, 0, 0)
    users = {u.employee_no: u for u in await session.scalars(select(User))}
    assert users["E001"].roles == ["counter", "supervisor"] and users["E001"].capacity_minutes == 300
    assert users["E001"].wecom_userid == "zhangsan" and users["E001"].feishu_open_id == "ou_1"
    assert users["E002"].roles == ["counter"] and users["E002"].dingtalk_userid == "ding2"
    assert users["E003"].roles == ["finance", "manager"] and users["E003"].team_id is None
    team = await session.scalar(select(Team.id).where(Team.name == "一组"))
    assert users["E001"].team_id == team == users["E002"].team_id
    zones = {
        z
        for (z,) in await session.execute(
            select(Zone.code)
            .join(UserZone, UserZone.zone_id == Zone.id)
            .where(UserZone.user_id == users["E001"].id)
        )
    }
    assert zones == {"A", "B"}
    assert await session.scalar(select(func.count()).select_from(UserUnavailability)) == 3
    before = await snapshot(session)
    again = await run(session, path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert await snapshot(session) == before


async def test_owner_column_links_items_to_users(session: AsyncSession, tmp_path: Path) -> None:
    await run(session, write_csv(tmp_path / "u.csv", [["name", "employee_no"], ["张三", "E001"]]))
    await run(session, write_csv(tmp_path / "i.csv", [["sku", "name", "owner"], ["A1", "螺丝", "E001"]]))
    owner = await session.scalar(select(Item.owner_id))
    assert owner == await session.scalar(select(User.id))


# --------------------------------------------------------------------------------------------------- all or nothing


async def test_a_bad_last_row_changes_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sessionmaker() as s:
        await run(s, write_xlsx(tmp_path / "items.xlsx", ITEMS))
        before = await snapshot(s)
    rows = [
        ["物料编码", "物料名称", "单价", "条码"],
        ["A1", "螺丝改", 9, "7001"],
        ["NEW", "新物料", 1, "7002"],
    ]
    rows += [[f"N{i}", f"n{i}", i, None] for i in range(3000)]  # more than one write batch
    rows.append(["BAD", "坏行", "abc", None])
    path = write_csv(tmp_path / "bad.csv", rows)
    async with sessionmaker() as s:
        with pytest.raises(ImportFailed) as e:
            await import_file(s, path, tz=TZ, now=NOW)
        await s.commit()  # even a caller that forgets to roll back changes nothing
    assert "bad.csv 第 3004 行 “单价” 列" in str(e.value)
    async with sessionmaker() as s:
        assert await snapshot(s) == before


# --------------------------------------------------------------------------------------------------- messages


async def expect_failure(session: AsyncSession, path: Path, kind: str | None, *parts: str) -> ImportFailed:
    with pytest.raises(ImportFailed) as e:
        await import_file(session, path, kind, tz=TZ, now=NOW)
    msg = str(e.value)
    for p in parts:
        assert p in msg, f"{p!r} not in:\n{msg}"
    return e.value


async def test_text_in_number_column(session: AsyncSession, tmp_path: Path) -> None:
    rows: list[list[Any]] = [["物料编码", "物料名称", "单价"]] + [[f"S{i}", "x", 1] for i in range(5)]
    rows.append(["S9", "x", "abc"])
    err = await expect_failure(
        session,
        write_xlsx(tmp_path / "items.xlsx", rows),
        None,
        "items.xlsx 第 7 行 “单价” 列：“abc” 不是数字，请填写数字，例如 12.5",
        'items.xlsx row 7, column "单价": "abc" is not a number; enter a number such as 12.5',
    )
    assert [(i.file, i.row, i.column) for i in err.issues] == [("items.xlsx", 7, "单价")]


async def test_many_problems_are_collected_up_to_a_limit(session: AsyncSession, tmp_path: Path) -> None:
    rows: list[list[Any]] = [["sku", "name", "unit_cost"]] + [[f"S{i}", "x", "?"] for i in range(80)]
    err = await expect_failure(session, write_csv(tmp_path / "i.csv", rows), "items", "只列出前 50 个问题")
    assert len(err.issues) == 50 and err.issues[1].row == 3


@pytest.mark.parametrize(
    ("rows", "kind", "parts"),
    [
        (
            [["物料编码", "单价"], ["A", 1]],
            "items",
            ["i.csv", "缺少必填列 “物料名称”", 'missing required column "name"'],
        ),
        (
            [["物料编码", "物料名称", "颜色"], ["A", "x", "红"]],
            "items",
            ["i.csv 第 1 行 “颜色” 列：无法识别的列", 'i.csv row 1, column "颜色": unknown column'],
        ),
        (
            [["物料编码", "物料名称", "单价"], ["A", "x", "-1"]],
            "items",
            ["i.csv 第 2 行 “单价” 列：“-1” 不能为负数", 'row 2, column "单价": "-1" must not be negative'],
        ),
        (
            [["物料编码", "物料名称", "单价"], ["A", "x", 1], ["A", "y", 1]],
            "items",
            [
                "i.csv 第 3 行：物料编码“A”在第 2 行已出现且内容不同",
                'row 3: SKU "A" already appears in row 2',
            ],
        ),
        (
            [["物料编码", "物料名称", "固定分类"], ["A", "x", "D"]],
            "items",
            ["第 2 行 “固定分类” 列：“D” 不是有效的分类", '"D" is not a class; enter A, B or C'],
        ),
        (
            [["物料编码", "物料名称"], ["A", None]],
            "items",
            ["第 2 行 “物料名称” 列：不能为空", "must not be empty"],
        ),
        (
            [["sku", "name", "barcode"], ["A", "x", "1"], ["B", "y", "1"]],
            "items",
            [
                "第 3 行 “barcode” 列：条码“1”在第 2 行已属于另一个物料",
                'barcode "1" already belongs to another item',
            ],
        ),
        ([["sku", "name"], ["A", "x"]], "stuff", ["未知的导入类型“stuff”", 'unknown import kind "stuff"']),
        (
            [["物料编码", "物料名称"]],
            None,
            ["i.csv：只有表头，没有数据行", "i.csv: the file has headers but no data rows"],
        ),
        ([], None, ["i.csv：文件是空的", "i.csv: the file is empty"]),
        ([["foo", "bar"], ["1", "2"]], None, ["i.csv：无法确定这是哪种文件", "Headers seen: foo, bar"]),
    ],
)
async def test_bad_item_files(
    session: AsyncSession, tmp_path: Path, rows: list[list[Any]], kind: str | None, parts: list[str]
) -> None:
    await expect_failure(session, write_csv(tmp_path / "i.csv", rows), kind, *parts)


async def test_unknown_references_in_stock(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    path = write_csv(
        tmp_path / "stock.csv",
        [
            ["物料编码", "仓库", "库位", "数量"],
            ["ZZZ", "SH01", "A-2", "1"],
            ["A1", "GZ09", "A-2", "1"],
            ["A1", "SH01", "Q-9", "1"],
            ["A1", "SH01", "A-2", "1"],
            ["A1", "SH01", "A-2", "2"],
        ],
    )
    await expect_failure(
        session,
        path,
        None,
        "stock.csv 第 2 行 “物料编码” 列：物料编码“ZZZ”不存在，请先导入物料",
        'SKU "ZZZ" does not exist; import items first',
        "stock.csv 第 3 行 “仓库” 列：仓库“GZ09”不存在，请先导入库位",
        'warehouse "GZ09" does not exist; import locations',
        "stock.csv 第 4 行 “库位” 列：库位“Q-9”在仓库“SH01”中不存在",
        'location "Q-9" does not exist in warehouse "SH01"',
        "stock.csv 第 6 行：库存“A1 @ SH01/A-2”在第 5 行已出现且内容不同",
    )


async def test_bad_movement_lines(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    path = write_xlsx(
        tmp_path / "moves.xlsx",
        [
            ["物料编码", "仓库", "库位", "数量", "类型", "日期"],
            ["A1", "SH01", "A-2", "1", "退货", "2025-05-01"],
            ["A1", "SH01", "A-2", "1", "入库", "2025-13-45"],
            ["A1", "SH01", "A-2", "1", "入库", None],
        ],
    )
    await expect_failure(
        session,
        path,
        None,
        "moves.xlsx 第 2 行 “类型” 列：“退货” 不是有效的类型，请填写 入库、出库、调拨、生产领料 或 调整",
        'moves.xlsx row 2, column "类型": "退货" is not a movement type',
        "moves.xlsx 第 3 行 “日期” 列：“2025-13-45” 不是有效的日期或时间，请写成 2025-05-01",
        'row 3, column "日期": "2025-13-45" is not a valid date',
        "第 4 行 “日期” 列：不能为空",
    )


async def test_barcode_of_another_item_in_the_database(session: AsyncSession, tmp_path: Path) -> None:
    await run(session, write_xlsx(tmp_path / "items.xlsx", ITEMS))
    await expect_failure(
        session,
        write_csv(tmp_path / "b.csv", [["sku", "name", "条码"], ["B1", "垫片", "6904 6901"]]),
        None,
        "b.csv 第 2 行 “条码” 列：条码“6901”已属于物料“A1”",
        'barcode "6901" already belongs to item "A1"',
    )


async def test_unknown_zone_for_user(session: AsyncSession, tmp_path: Path) -> None:
    await setup_master_data(session, tmp_path)
    await expect_failure(
        session,
        write_csv(tmp_path / "u.csv", [["姓名", "工号", "库区"], ["张三", "E1", "SH01/Z"]]),
        None,
        "u.csv 第 2 行 “库区” 列：库区“SH01/Z”不存在",
        'zone "SH01/Z" does not exist',
    )


@pytest.mark.parametrize(
    ("name", "content", "parts"),
    [
        (
            "items.pdf",
            b"%PDF-1.4",
            ["items.pdf：不支持“.pdf”文件", 'items.pdf: ".pdf" files are not supported'],
        ),
        ("items.xls", b"\xd0\xcf\x11\xe0", ["不支持旧版 .xls 格式", "save it as .xlsx"]),
        (
            "items.xlsx",
            b"sku,name\nA,x\n",
            ["items.xlsx：无法读取", "the file is damaged or not an Excel workbook"],
        ),
        ("items.csv", b"PK\x03\x04\x14\x00", ["这是 Excel 文件而不是 CSV", "rename it to .xlsx"]),
        ("items.csv", b"\x00\x01\x02binary", ["这不是文本格式的 CSV 文件", "not a text CSV file"]),
    ],
)
async def test_not_a_spreadsheet(
    session: AsyncSession, tmp_path: Path, name: str, content: bytes, parts: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    await expect_failure(session, path, None, *parts)


async def test_corrupt_xlsx(session: AsyncSession, tmp_path: Path) -> None:
    good = write_xlsx(tmp_path / "good.xlsx", ITEMS)
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(good.read_bytes()[:600])
    await expect_failure(session, bad, None, "bad.xlsx：无法读取", "damaged")


async def test_csv_encodings(session: AsyncSession, tmp_path: Path) -> None:
    rows = [["物料编码", "物料名称"], ["A1", "螺丝"]]
    for i, enc in enumerate(("utf-8", "utf-8-sig", "gbk", "gb18030")):
        path = write_csv(tmp_path / f"items_{i}.csv", [rows[0], [f"E{i}", "螺丝钉"]], encoding=enc)
        await run(session, path)
    names = set(await session.scalars(select(Item.name)))
    assert names == {"螺丝钉"}


# --------------------------------------------------------------------------------------------------- 100k rows


async def test_100k_rows_with_bounded_memory(session: AsyncSession, tmp_path: Path) -> None:
    n = 100_000
    header = ["物料编码", "物料名称", "规格型号", "单位", "单价", "条码"]
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            w.writerow([f"SKU{i:06d}", f"物料{i}", f"M{i % 50}", "个", f"{i % 997}.25", f"69{i:011d}"])

    # what holding every row would take: measure 5,000 parsed rows and scale
    tracemalloc.start()
    held = [
        {
            "sku": f"SKU{i:06d}",
            "name": f"物料{i}",
            "spec": f"M{i % 50}",
            "unit": "个",
            "unit_cost": Decimal(f"{i % 997}.25"),
            "barcodes": (f"69{i:011d}",),
            "row": i + 2,
        }
        for i in range(5000)
    ]
    all_rows = tracemalloc.get_traced_memory()[0] * (n // 5000)
    del held
    tracemalloc.stop()

    calls: list[int] = []
    tracemalloc.start()
    started = time.perf_counter()
    report = await import_file(session, path, tz=TZ, progress=calls.append, now=NOW)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await session.commit()
    print(
        f"\n100k items: {elapsed:.1f}s (tracemalloc on), peak {peak / 1e6:.1f} MB, all rows ~{all_rows / 1e6:.0f} MB"
    )

    assert (report.rows, report.created) == (n, n)
    assert await session.scalar(select(func.count()).select_from(Item)) == n
    assert await session.scalar(select(func.count()).select_from(ItemBarcode)) == n
    assert len(calls) >= 10 and calls[-1] == n and calls == sorted(calls)
    assert peak < all_rows / 2, (peak, all_rows)
    assert peak < 60e6


async def test_users_language_column(session: AsyncSession, tmp_path: Path) -> None:
    """语言/locale sets the language a user reads cards and chat replies in; a bad value names the row."""
    await setup_master_data(session, tmp_path)
    good = write_csv(
        tmp_path / "users.csv",
        [
            ["姓名", "工号", "语言"],
            ["Anna", "E010", "英文"],
            ["张三", "E011", "中文"],
            ["李四", "E012", None],
        ],
    )
    report = await run(session, good)
    assert report.created == 3
    users = {u.employee_no: u for u in await session.scalars(select(User))}
    assert (users["E010"].locale, users["E011"].locale, users["E012"].locale) == ("en", "zh-CN", None)
    bad = write_csv(tmp_path / "users2.csv", [["姓名", "工号", "language"], ["Bob", "E013", "klingon"]])
    with pytest.raises(ImportFailed) as err:
        await run(session, bad)
    assert "klingon" in str(err.value) and "zh-CN or en" in str(err.value)
