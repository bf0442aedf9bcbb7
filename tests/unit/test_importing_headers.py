"""Header mapping, kind guessing and cell parsing of the spreadsheet import (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from core.importing import (
    BadValue,
    ImportFailed,
    ImportIssue,
    cell_text,
    guess_kind,
    map_headers,
    norm_header,
    parse_bool,
    parse_class,
    parse_date_list,
    parse_datetime,
    parse_decimal,
    parse_int,
    parse_movement_type,
    parse_roles,
    parse_time_of_day,
    split_list,
)
from core.models import MovementType

SH = ZoneInfo("Asia/Shanghai")


def test_norm_header_ignores_case_space_and_full_width() -> None:
    assert norm_header("  SKU ") == "sku"
    assert norm_header("Unit Cost") == "unit_cost"
    assert norm_header("日产能（分钟）") == norm_header("日产能(分钟)")
    assert norm_header("ＳＫＵ") == "sku"


def test_map_headers_chinese_and_english() -> None:
    cmap, issues = map_headers("items", [" 物料编码", "Name", "单价", "BARCODE", "备注"], "items.xlsx")
    assert issues == []
    assert cmap.index == {"sku": 0, "name": 1, "unit_cost": 2, "barcode": 3}
    assert cmap.header["sku"] == "物料编码"  # as written, stripped


def test_map_headers_reports_missing_unknown_and_duplicate() -> None:
    _, issues = map_headers("stock", ["sku", "物料编码", "仓库", "数量", "颜色"], "s.csv")
    text = "\n".join(str(i) for i in issues)
    assert "“物料编码” 列" in text and "重复" in text and "duplicates" in text
    assert "“颜色” 列" in text and "无法识别" in text and "unknown column" in text
    assert "缺少必填列 “库位”" in text and 'missing required column "location"' in text


def test_movements_need_date_or_time() -> None:
    _, issues = map_headers("movements", ["sku", "warehouse", "location", "qty", "type", "time"])
    assert issues == []
    _, issues = map_headers("movements", ["sku", "warehouse", "location", "qty", "type"])
    assert len(issues) == 1 and "“日期”或“时间”" in issues[0].message_zh


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        (["物料编码", "物料名称", "规格型号", "单位", "单价", "条码"], "items"),
        (["sku", "name"], "items"),
        (["仓库", "库位", "库位条码", "库区"], "locations"),
        (["物料编码", "仓库", "库位", "数量"], "stock"),
        (["sku", "warehouse", "location", "qty", "lot", "as_of"], "stock"),
        (["物料编码", "仓库", "库位", "数量", "类型", "日期", "单据号"], "movements"),
        (["sku", "warehouse", "location", "qty", "type", "时间"], "movements"),
        (["姓名", "工号", "角色", "团队"], "users"),
        (["name", "employee_no"], "users"),
        # a typo in an optional column still picks the kind whose required columns are there
        (["物料编码", "仓库", "库位", "数量", "备住"], "stock"),
    ],
)
def test_guess_kind(headers: list[str], kind: str) -> None:
    assert guess_kind(headers) == kind


def test_guess_kind_fails_naming_file_headers_and_needs() -> None:
    with pytest.raises(ImportFailed) as e:
        guess_kind(["foo", "bar"], file="x.csv")
    msg = str(e.value)
    assert "x.csv" in msg and "foo、bar" in msg and "foo, bar" in msg
    assert "物料(items)需要" in msg and "stock needs" in msg and "--kind" in msg


def test_issue_text_names_file_row_and_column() -> None:
    i = ImportIssue(
        "items.xlsx",
        7,
        "单价",
        "“abc” 不是数字，请填写数字，例如 12.5",
        '"abc" is not a number; enter a number such as 12.5',
    )
    assert str(i) == (
        "items.xlsx 第 7 行 “单价” 列：“abc” 不是数字，请填写数字，例如 12.5 / "
        'items.xlsx row 7, column "单价": "abc" is not a number; enter a number such as 12.5'
    )


def test_cell_text() -> None:
    assert cell_text(10001.0) == "10001"
    assert cell_text(6901234567892) == "6901234567892"
    assert cell_text("  a ") == "a"
    assert cell_text(None) == ""


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("12.5", Decimal("12.5")),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        ("1,234.50", Decimal("1234.5")),
        ("１２", Decimal(12)),
        ("-3", Decimal(-3)),
        ("0.123456", Decimal("0.1235")),
    ],
)
def test_parse_decimal(raw: object, value: Decimal) -> None:
    assert parse_decimal(raw) == value


@pytest.mark.parametrize("raw", ["abc", "1,2", "NaN", "inf", True, "1e20"])
def test_parse_decimal_rejects(raw: object) -> None:
    with pytest.raises(BadValue):
        parse_decimal(raw)


def test_parse_decimal_message() -> None:
    with pytest.raises(BadValue) as e:
        parse_decimal("abc")
    assert e.value.zh == "“abc” 不是数字，请填写数字，例如 12.5"
    assert e.value.en == '"abc" is not a number; enter a number such as 12.5'


def test_parse_int() -> None:
    assert parse_int("240") == 240
    with pytest.raises(BadValue):
        parse_int("2.5")


def test_parse_bool_and_class() -> None:
    assert [parse_bool(v) for v in ("是", "否", "Yes", "no", "1", 0, True)] == [
        True,
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(BadValue):
        parse_bool("maybe")
    assert parse_class("a") == "A" and parse_class("B类") == "B"
    with pytest.raises(BadValue) as e:
        parse_class("D")
    assert "A、B 或 C" in e.value.zh and "A, B or C" in e.value.en


def test_parse_movement_type() -> None:
    assert parse_movement_type("入库") is MovementType.RECEIPT
    assert parse_movement_type("出库") is MovementType.ISSUE
    assert parse_movement_type("调拨") is MovementType.TRANSFER
    assert parse_movement_type("生产领料") is MovementType.PRODUCTION_ISSUE
    assert parse_movement_type("调整") is MovementType.ADJUSTMENT
    assert parse_movement_type("Production Issue") is MovementType.PRODUCTION_ISSUE
    assert parse_movement_type("RECEIPT") is MovementType.RECEIPT
    with pytest.raises(BadValue) as e:
        parse_movement_type("退货")
    assert "入库、出库、调拨、生产领料 或 调整" in e.value.zh and "receipt, issue" in e.value.en


def test_roles_and_lists() -> None:
    assert split_list("a, b；c  d、e，f;g") == list("abcdefg")
    assert parse_roles("仓管员、主管") == ["counter", "supervisor"]
    assert parse_roles("盘点员,counter, Finance 经理 管理员") == ["counter", "finance", "manager", "admin"]
    with pytest.raises(BadValue):
        parse_roles("老板")


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2025-05-01", datetime(2025, 4, 30, 16, tzinfo=UTC)),
        ("2025/5/1 08:30", datetime(2025, 5, 1, 0, 30, tzinfo=UTC)),
        ("2025年5月1日", datetime(2025, 4, 30, 16, tzinfo=UTC)),
        ("20250501", datetime(2025, 4, 30, 16, tzinfo=UTC)),
        ("2025-05-01T08:30:15", datetime(2025, 5, 1, 0, 30, 15, tzinfo=UTC)),
        ("2025-05-01 08:30:00Z", datetime(2025, 5, 1, 8, 30, tzinfo=UTC)),
        ("2025-05-01 08:30:00+02:00", datetime(2025, 5, 1, 6, 30, tzinfo=UTC)),
        (datetime(2025, 5, 1, 8, 30), datetime(2025, 5, 1, 0, 30, tzinfo=UTC)),
        (date(2025, 5, 1), datetime(2025, 4, 30, 16, tzinfo=UTC)),
    ],
)
def test_parse_datetime_local_and_aware(raw: object, utc: datetime) -> None:
    got = parse_datetime(raw, SH)
    assert got == utc and got.tzinfo is UTC


@pytest.mark.parametrize("raw", ["2025-13-01", "yesterday", "2025-02-30", "12.5"])
def test_parse_datetime_rejects(raw: str) -> None:
    with pytest.raises(BadValue) as e:
        parse_datetime(raw, SH)
    assert "不是有效的日期" in e.value.zh and "2025-05-01" in e.value.en


def test_time_of_day_and_date_lists() -> None:
    assert parse_time_of_day("08:30") == time(8, 30)
    assert parse_time_of_day("2025-05-01 08:30") is None
    assert parse_date_list("2025-05-01, 2025-05-03~2025-05-05") == [
        date(2025, 5, 1),
        date(2025, 5, 3),
        date(2025, 5, 4),
        date(2025, 5, 5),
    ]
    with pytest.raises(BadValue):
        parse_date_list("2025-05-05~2025-05-01")
