"""Spreadsheet import: items, locations, stock, movements and users from .xlsx or .csv.

``import_file`` reads the file twice. The first pass parses and validates every row, keeping only compact
per-key data (a few integers per SKU or item-location, never the rows), and resolves references with batched
``IN`` queries. If anything is wrong it raises ``ImportFailed`` listing up to 50 problems, each naming the file,
the row (as the spreadsheet shows it, header = row 1) and the column, in Chinese and English, *before anything
is written*. The second pass streams the file again and upserts in batches with bulk statements. Nothing here
commits: the caller owns the transaction.

Files
    ``.xlsx`` (first worksheet) or ``.csv`` in UTF-8 (with or without BOM) or GBK/GB18030. The first non-empty
    row is the header. Headers may be Chinese or English, are matched ignoring case, spaces and full-width
    forms, and may come in any order. Blank rows are skipped. Columns named 备注/note/remark/comment are
    ignored; any other unknown column is an error (it is usually a typo).

Empty cells
    An empty cell means "not given": a new record gets the default, an existing one keeps its value. So a file
    with only 物料编码 and 单价 changes prices and nothing else.

Kinds and columns (* = required)
    items       物料编码/sku*, 物料名称/name*, 规格型号/spec, 单位/unit, 单价/unit_cost (>= 0), 条码/barcode,
                包装单位/pack_unit + 换算/pack_factor (1 pack_unit = pack_factor base units), 负责人/owner
                (an employee number), 批次管理/lot_tracked (是/否), 固定分类/pinned_class (A/B/C).
                The barcode cell may hold several codes separated by , ， ; ； or spaces; barcodes are added,
                never removed (old labels still scan). A barcode that belongs to another item is an error.
    locations   仓库/warehouse*, 库位/location*, 库位条码/location_barcode, 库区/zone, 仓库名称/warehouse_name,
                顺序/sequence. Unknown warehouses and zones are created. Without a sequence, a location's
                sequence is the rank of its code among all codes of its warehouse, in natural order (A-2 < A-10).
    stock       物料编码/sku*, 仓库/warehouse*, 库位/location*, 数量/qty*, 批次/lot, 时间/as_of.
                Sets the book quantity (and the lot balance; with lots, the item-location holds the sum of the
                file's lots and lots not in the file drop to 0) and ``book_as_of`` (default: now; an unchanged
                quantity without an explicit time is left alone). SKUs, warehouses and locations must exist.
    movements   物料编码/sku*, 仓库/warehouse*, 库位/location*, 数量/qty* (signed), 类型/type*, 日期/date and/or
                时间/time*, 单据号/source_doc, 批次/lot. Types: 入库 receipt, 出库 issue, 调拨 transfer,
                生产领料 production_issue, 调整 adjustment. A date alone means 00:00 local time; times without a
                zone are local (``tz``). Each line gets a stable ``import_key`` so re-importing adds nothing.
    users       姓名/name*, 工号/employee_no*, 角色/roles, 团队/team, 库区/zones, 企业微信/wecom_userid,
                飞书/feishu_open_id, 钉钉/dingtalk_userid, 日产能(分钟)/capacity_minutes,
                不可用日期/unavailable.
                roles: separated by , ， 、 ; ； or spaces: 仓管员/盘点员/counter, 主管/supervisor,
                财务/finance, 经理/manager, 管理员/admin (new users without roles are counters).
                zones: ``WAREHOUSE/ZONE`` codes (``SH01/A``), separated like roles; a bare zone code (``A区``)
                is accepted when exactly one warehouse has it. The list replaces the user's zones.
                unavailable: dates (``2025-05-01``) or ranges (``2025-05-01~2025-05-05``), added to the user's
                unavailable days. Teams are created if missing.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import (
    Base,
    Item,
    ItemBarcode,
    ItemLocation,
    ItemUnit,
    Location,
    LotBalance,
    MovementType,
    Role,
    Team,
    User,
    UserUnavailability,
    UserZone,
    Warehouse,
    Zone,
    utcnow,
)
from core.stock import MovementLine, apply_movements, chunks, ensure_item_locations, moved_after, natural_key

KINDS = ("items", "locations", "stock", "movements", "users")
KIND_ZH = {"items": "物料", "locations": "库位", "stock": "库存", "movements": "出入库流水", "users": "人员"}
MAX_ISSUES = 50
BATCH = 2000
PROGRESS_EVERY = 5000
_Q4 = Decimal("0.0001")
_MAX_NUMBER = Decimal("1e14")


# --------------------------------------------------------------------------------------------------- results


@dataclass
class ImportIssue:
    file: str
    row: int | None
    column: str | None
    message_zh: str
    message_en: str

    @property
    def zh(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" 第 {self.row} 行"
        if self.column is not None:
            where += f" “{self.column}” 列"
        return f"{where}：{self.message_zh}"

    @property
    def en(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        if self.column is not None:
            where.append(f'column "{self.column}"')
        return f"{' '.join([self.file, ', '.join(where)]).strip()}: {self.message_en}"

    def __str__(self) -> str:
        return f"{self.zh} / {self.en}"


class ImportFailed(Exception):
    def __init__(self, issues: list[ImportIssue], truncated: bool = False) -> None:
        self.issues = issues
        self.truncated = truncated
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = ["导入失败，数据库未做任何修改 / import failed, nothing was changed"]
        lines += [f"- {i}" for i in self.issues]
        if self.truncated:
            lines.append(
                f"（只列出前 {MAX_ISSUES} 个问题 / only the first {MAX_ISSUES} problems are listed）"
            )
        return "\n".join(lines)


@dataclass
class ImportReport:
    kind: str
    rows: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _changed(cur: Any, vals: Mapping[str, Any]) -> dict[str, Any]:
    """The values that differ from the stored row (unchanged rows are not rewritten)."""
    return {k: v for k, v in vals.items() if getattr(cur, k) != v}


@dataclass
class _Changes:
    """One batch's inserts and updates of a table, counted into the report, written in two statements."""

    report: ImportReport
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def create(self, row: dict[str, Any]) -> None:
        self.inserts.append(row)
        self.report.created += 1

    def change(self, row_id: int, diff: Mapping[str, Any]) -> None:
        if diff:
            self.updates.append({"id": row_id, **diff})
            self.report.updated += 1
        else:
            self.report.unchanged += 1

    async def flush(self, session: AsyncSession, model: type[Base]) -> None:
        if self.inserts:
            await session.execute(insert(_table(model)), self.inserts)
        if self.updates:
            await session.execute(update(model), self.updates)


class _Issues:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ImportIssue] = []
        self.truncated = False

    def add(self, row: int | None, column: str | None, zh: str, en: str) -> None:
        if len(self.items) >= MAX_ISSUES:
            self.truncated = True
            return
        self.items.append(ImportIssue(self.file, row, column, zh, en))

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_ISSUES

    def raise_if_any(self) -> None:
        if self.items:
            raise ImportFailed(self.items, self.truncated)


def _fail(file: str, zh: str, en: str, row: int | None = None, column: str | None = None) -> ImportFailed:
    return ImportFailed([ImportIssue(file, row, column, zh, en)])


# --------------------------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Col:
    key: str
    zh: str
    en: str
    extra: tuple[str, ...] = ()
    max_len: int | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.zh, self.en, *self.extra)


_SKU = Col("sku", "物料编码", "sku", ("物料代码", "料号", "商品编码", "item_code", "item_no"), 64)
_WH = Col("warehouse", "仓库", "warehouse", ("仓库编码", "仓库代码", "warehouse_code"), 50)
_LOC = Col("location", "库位", "location", ("库位编码", "库位代码", "货位", "location_code", "bin"), 50)
_LOT = Col("lot", "批次", "lot", ("批号", "批次号", "batch"), 64)

SPECS: dict[str, tuple[Col, ...]] = {
    "items": (
        _SKU,
        Col("name", "物料名称", "name", ("名称", "品名", "item_name"), 200),
        Col("spec", "规格型号", "spec", ("规格", "型号", "specification"), 200),
        Col("unit", "单位", "unit", ("基本单位", "计量单位", "base_unit", "uom"), 20),
        Col("unit_cost", "单价", "unit_cost", ("单位成本", "成本单价", "cost", "price")),
        Col("barcode", "条码", "barcode", ("条形码", "barcodes")),
        Col("pack_unit", "包装单位", "pack_unit", (), 20),
        Col("pack_factor", "换算", "pack_factor", ("换算率", "换算系数", "包装数量")),
        Col("owner", "负责人", "owner", ("负责人工号", "owner_employee_no"), 50),
        Col("lot_tracked", "批次管理", "lot_tracked", ("lot_managed",)),
        Col("pinned_class", "固定分类", "pinned_class", ("固定abc分类",)),
    ),
    "locations": (
        _WH,
        _LOC,
        Col("location_barcode", "库位条码", "location_barcode", ("bin_barcode",), 100),
        Col("zone", "库区", "zone", ("库区编码", "zone_code"), 50),
        Col("warehouse_name", "仓库名称", "warehouse_name", (), 200),
        Col("sequence", "顺序", "sequence", ("拣货顺序", "库位顺序", "seq")),
    ),
    "stock": (
        _SKU,
        _WH,
        _LOC,
        Col("qty", "数量", "qty", ("库存数量", "账面数量", "结存数量", "quantity")),
        _LOT,
        Col("as_of", "时间", "as_of", ("快照时间", "库存时间", "盘点时间", "snapshot_time")),
    ),
    "movements": (
        _SKU,
        _WH,
        _LOC,
        Col("qty", "数量", "qty", ("quantity",)),
        Col("type", "类型", "type", ("业务类型", "移动类型", "movement_type")),
        Col("date", "日期", "date", ("单据日期", "业务日期")),
        Col("time", "时间", "time", ("发生时间", "occurred_at", "datetime")),
        Col("source_doc", "单据号", "source_doc", ("单号", "单据编号", "doc_no"), 100),
        _LOT,
    ),
    "users": (
        Col("name", "姓名", "name", ("名字",), 100),
        Col("employee_no", "工号", "employee_no", ("员工编号", "员工号", "employee_id"), 50),
        Col("roles", "角色", "roles", ("role",)),
        Col("team", "团队", "team", ("班组",), 100),
        Col("zones", "库区", "zones", ("负责库区",)),
        Col("wecom_userid", "企业微信", "wecom_userid", ("企业微信账号", "企业微信id", "wecom"), 100),
        Col("feishu_open_id", "飞书", "feishu_open_id", ("飞书id", "feishu", "open_id"), 100),
        Col("dingtalk_userid", "钉钉", "dingtalk_userid", ("钉钉id", "dingtalk"), 100),
        Col("capacity_minutes", "日产能(分钟)", "capacity_minutes", ("日产能", "产能(分钟)", "capacity")),
        Col("unavailable", "不可用日期", "unavailable", ("请假日期", "unavailable_dates")),
    ),
}

# Groups of alternatives: every group needs one of its columns.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "items": (("sku",), ("name",)),
    "locations": (("warehouse",), ("location",)),
    "stock": (("sku",), ("warehouse",), ("location",), ("qty",)),
    "movements": (("sku",), ("warehouse",), ("location",), ("qty",), ("type",), ("date", "time")),
    "users": (("name",), ("employee_no",)),
}

IGNORED_HEADERS = ("备注", "说明", "note", "notes", "remark", "remarks", "comment", "comments")


def norm_header(h: str) -> str:
    """Header as matched: NFKC (full-width to half-width), case-folded, no spaces, ``-`` and `` `` as ``_``."""
    s = unicodedata.normalize("NFKC", h).strip().casefold()
    s = re.sub(r"[\s\-]+", "_", s)
    return s.replace("_(", "(")


_ALIASES: dict[str, dict[str, Col]] = {
    kind: {norm_header(a): c for c in cols for a in c.aliases} for kind, cols in SPECS.items()
}
_IGNORED = {norm_header(h) for h in IGNORED_HEADERS}
_COLS: dict[str, dict[str, Col]] = {kind: {c.key: c for c in cols} for kind, cols in SPECS.items()}


def _col_names(kind: str, keys: Sequence[str], lang: str) -> str:
    by_key = {c.key: c for c in SPECS[kind]}
    return ("、" if lang == "zh" else ", ").join(getattr(by_key[k], lang) for k in keys)


def _group_text(kind: str, group: tuple[str, ...], lang: str) -> str:
    sep = "或" if lang == "zh" else " or "
    by_key = {c.key: c for c in SPECS[kind]}
    if lang == "zh":
        return sep.join(f"“{by_key[k].zh}”" for k in group)
    return sep.join(f'"{by_key[k].en}"' for k in group)


@dataclass
class ColumnMap:
    kind: str
    index: dict[str, int] = field(default_factory=dict)  # key -> column index
    header: dict[str, str] = field(default_factory=dict)  # key -> header text as in the file

    def __contains__(self, key: str) -> bool:
        return key in self.index


def map_headers(kind: str, headers: Sequence[str], file: str = "") -> tuple[ColumnMap, list[ImportIssue]]:
    """Map a header row onto one kind's columns; the issues list says what is wrong with it."""
    issues = _Issues(file)
    cmap = ColumnMap(kind)
    aliases = _ALIASES[kind]
    for i, raw in enumerate(headers):
        h = (raw or "").strip()
        if not h:
            continue
        n = norm_header(h)
        col = aliases.get(n)
        if col is None:
            if n in _IGNORED:
                continue
            known_zh = "、".join(c.zh for c in SPECS[kind])
            known_en = ", ".join(c.en for c in SPECS[kind])
            issues.add(
                1,
                h,
                f"无法识别的列，{KIND_ZH[kind]}文件可用的列有：{known_zh}；请改正列名或删除这一列",
                f"unknown column; a {kind} file accepts: {known_en}; fix the header or delete the column",
            )
            continue
        if col.key in cmap.index:
            issues.add(
                1,
                h,
                f"与“{cmap.header[col.key]}”列重复（都是{col.zh}），请删除其中一列",
                f'duplicates column "{cmap.header[col.key]}" (both are {col.en}); delete one of them',
            )
            continue
        cmap.index[col.key] = i
        cmap.header[col.key] = h
    for group in REQUIRED[kind]:
        if not any(k in cmap for k in group):
            issues.add(
                None,
                None,
                f"缺少必填列 {_group_text(kind, group, 'zh')}，请在第一行加上这一列",
                f"missing required column {_group_text(kind, group, 'en')}; add it to the header row",
            )
    return cmap, issues.items


def guess_kind(headers: list[str], file: str = "") -> str:
    """The kind whose required columns the headers hold; ``ImportFailed`` (naming ``file``) if none or several."""
    fits: list[tuple[int, int, str]] = []
    for kind in KINDS:
        cmap, issues = map_headers(kind, headers, file)
        if any(i.row is None for i in issues):  # a required column is missing
            continue
        fits.append((len(issues), -len(cmap.index), kind))
    fits.sort()
    if len(fits) == 1 or (len(fits) > 1 and fits[0][:2] != fits[1][:2]):
        return fits[0][2]
    seen = [h.strip() for h in headers if h and h.strip()]
    needs_zh = "；".join(
        f"{KIND_ZH[k]}({k})需要 " + "、".join(_group_text(k, g, "zh") for g in REQUIRED[k]) for k in KINDS
    )
    needs_en = "; ".join(
        f"{k} needs " + ", ".join(_group_text(k, g, "en") for g in REQUIRED[k]) for k in KINDS
    )
    what_zh = "无法确定" if not fits else "可能是多种类型（" + "、".join(f[2] for f in fits) + "）"
    what_en = "cannot tell" if not fits else "could be several kinds (" + ", ".join(f[2] for f in fits) + ")"
    raise _fail(
        file,
        f"{what_zh}这是哪种文件。表头是：{'、'.join(seen) or '（空）'}。{needs_zh}。请修改表头或用 --kind 指定类型",
        f"{what_en} what this file holds. Headers seen: {', '.join(seen) or '(none)'}. {needs_en}. "
        "Fix the headers or pass --kind",
    )


# --------------------------------------------------------------------------------------------------- values


class BadValue(ValueError):
    def __init__(self, zh: str, en: str) -> None:
        super().__init__(en)
        self.zh, self.en = zh, en


def cell_text(v: Any) -> str:
    """A cell as the user sees it (``10001`` not ``10001.0``), stripped."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "是" if v else "否"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    return str(v).strip()


_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$")


def parse_decimal(v: Any) -> Decimal:
    """A number, rounded to 4 decimal places; ``1,234.5`` and full-width digits are accepted."""
    if isinstance(v, bool):
        raise BadValue(
            f"“{cell_text(v)}” 不是数字，请填写数字，例如 12.5",
            f'"{cell_text(v)}" is not a number; enter a number such as 12.5',
        )
    if isinstance(v, int | Decimal):
        d = Decimal(v)
    elif isinstance(v, float):
        d = Decimal(repr(v))
    else:
        s = unicodedata.normalize("NFKC", str(v)).strip().replace(" ", "")
        if _THOUSANDS.match(s):
            s = s.replace(",", "")
        try:
            d = Decimal(s)
        except InvalidOperation:
            d = Decimal("NaN")
    if not d.is_finite():
        raise BadValue(
            f"“{cell_text(v)}” 不是数字，请填写数字，例如 12.5",
            f'"{cell_text(v)}" is not a number; enter a number such as 12.5',
        )
    if abs(d) >= _MAX_NUMBER:
        raise BadValue(f"“{cell_text(v)}” 太大，请检查", f'"{cell_text(v)}" is too large; check the value')
    return d.quantize(_Q4, ROUND_HALF_UP)


def parse_int(v: Any) -> int:
    d = parse_decimal(v)
    if d != d.to_integral_value():
        raise BadValue(
            f"“{cell_text(v)}” 不是整数，请填写整数，例如 240",
            f'"{cell_text(v)}" is not a whole number; enter one such as 240',
        )
    return int(d)


_YES = {"是", "y", "yes", "true", "1", "t", "√", "✓", "启用", "x"}
_NO = {"否", "n", "no", "false", "0", "f", "不", "停用"}


def parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = cell_text(v).casefold()
    if s in _YES:
        return True
    if s in _NO:
        return False
    raise BadValue(
        f"“{cell_text(v)}” 无法识别，请填写 是 或 否", f'"{cell_text(v)}" is not yes/no; enter yes or no'
    )


def parse_class(v: Any) -> str:
    s = unicodedata.normalize("NFKC", cell_text(v)).upper().removesuffix("类")
    if s in ("A", "B", "C"):
        return s
    raise BadValue(
        f"“{cell_text(v)}” 不是有效的分类，请填写 A、B 或 C，或留空",
        f'"{cell_text(v)}" is not a class; enter A, B or C, or leave it empty',
    )


_MOVEMENT_TYPES: dict[str, MovementType] = {
    **{s: MovementType.RECEIPT for s in ("入库", "收货", "采购入库", "receipt", "receive", "in")},
    **{s: MovementType.ISSUE for s in ("出库", "发货", "销售出库", "issue", "out")},
    **{s: MovementType.TRANSFER for s in ("调拨", "移库", "transfer")},
    **{
        s: MovementType.PRODUCTION_ISSUE for s in ("生产领料", "领料", "production_issue", "production issue")
    },
    **{s: MovementType.ADJUSTMENT for s in ("调整", "库存调整", "adjustment", "adjust")},
}


def parse_movement_type(v: Any) -> MovementType:
    s = unicodedata.normalize("NFKC", cell_text(v)).casefold().replace("-", "_")
    try:
        return _MOVEMENT_TYPES[s]
    except KeyError:
        raise BadValue(
            f"“{cell_text(v)}” 不是有效的类型，请填写 入库、出库、调拨、生产领料 或 调整",
            f'"{cell_text(v)}" is not a movement type; use receipt, issue, transfer, production_issue or adjustment',
        ) from None


_ROLES: dict[str, Role] = {
    **{s: Role.COUNTER for s in ("仓管员", "盘点员", "仓管", "counter")},
    **{s: Role.SUPERVISOR for s in ("主管", "supervisor")},
    **{s: Role.FINANCE for s in ("财务", "finance")},
    **{s: Role.MANAGER for s in ("经理", "manager")},
    **{s: Role.ADMIN for s in ("管理员", "admin")},
}
_LIST_SEP = re.compile(r"[,，、;；\s]+")


def split_list(v: Any) -> list[str]:
    """``"a, b；c d"`` -> ``["a", "b", "c", "d"]`` (separators , ， 、 ; ； and whitespace)."""
    return [p for p in _LIST_SEP.split(cell_text(v)) if p]


def parse_roles(v: Any) -> list[str]:
    roles: list[str] = []
    for part in split_list(v):
        role = _ROLES.get(part.casefold())
        if role is None:
            raise BadValue(
                f"“{part}” 不是有效的角色，请填写 仓管员、主管、财务、经理 或 管理员",
                f'"{part}" is not a role; use counter, supervisor, finance, manager or admin',
            )
        if role.value not in roles:
            roles.append(role.value)
    return roles


_DATE_RE = re.compile(
    r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:[\sT]+(\d{1,2})[:：](\d{2})(?:[:：](\d{2})(?:\.(\d{1,6}))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)
_COMPACT_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TIME_RE = re.compile(r"^(\d{1,2})[:：](\d{2})(?:[:：](\d{2}))?$")


def _bad_date(v: Any) -> BadValue:
    return BadValue(
        f"“{cell_text(v)}” 不是有效的日期或时间，请写成 2025-05-01 或 2025-05-01 08:30",
        f'"{cell_text(v)}" is not a valid date or time; write it as 2025-05-01 or 2025-05-01 08:30',
    )


def parse_datetime(v: Any, tz: ZoneInfo) -> datetime:
    """An aware UTC datetime. Date only = 00:00 local time; a time without a zone is local time in ``tz``."""
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime.combine(v, time(0))
    else:
        s = unicodedata.normalize("NFKC", cell_text(v))
        m = _DATE_RE.match(s) or _COMPACT_DATE.match(s)
        if not m:
            raise _bad_date(v)
        g = list(m.groups()) + [None] * (8 - len(m.groups()))
        try:
            dt = datetime(
                int(g[0]),
                int(g[1]),
                int(g[2]),
                int(g[3] or 0),
                int(g[4] or 0),
                int(g[5] or 0),
                int((g[6] or "0").ljust(6, "0")),
            )
        except ValueError:
            raise _bad_date(v) from None
        if g[7]:
            off = g[7].upper()
            if off == "Z":
                dt = dt.replace(tzinfo=UTC)
            else:
                sign = -1 if off[0] == "-" else 1
                hh, mm = int(off[1:3]), int(off[-2:])
                dt = dt.replace(tzinfo=timezone(sign * timedelta(hours=hh, minutes=mm)))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def parse_date(v: Any) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    s = unicodedata.normalize("NFKC", cell_text(v))
    m = _DATE_RE.match(s) or _COMPACT_DATE.match(s)
    if not m or m.group(0) != s or (len(m.groups()) > 3 and m.group(4)):
        raise _bad_date(v)
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise _bad_date(v) from None


def parse_time_of_day(v: Any) -> time | None:
    """A bare time of day (``08:30``), or None when the cell holds something else (e.g. a full datetime)."""
    if isinstance(v, time):
        return v
    if isinstance(v, datetime | date):
        return None
    m = _TIME_RE.match(unicodedata.normalize("NFKC", cell_text(v)))
    if not m:
        return None
    try:
        return time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    except ValueError:
        raise _bad_date(v) from None


def parse_date_list(v: Any) -> list[date]:
    """Dates and ranges: ``2025-05-01, 2025-05-03~2025-05-05``."""
    if isinstance(v, datetime | date):
        return [parse_date(v)]
    out: list[date] = []
    for part in re.split(r"[,，、;；\s]+", unicodedata.normalize("NFKC", cell_text(v))):
        if not part:
            continue
        if "~" in part or "至" in part:
            a, _, b = part.replace("至", "~").partition("~")
            d0, d1 = parse_date(a), parse_date(b)
            if d1 < d0 or (d1 - d0).days > 366:
                raise BadValue(
                    f"日期范围“{part}”不正确，请写成 2025-05-01~2025-05-05",
                    f'date range "{part}" is invalid; write it as 2025-05-01~2025-05-05',
                )
            out.extend(d0 + timedelta(days=i) for i in range((d1 - d0).days + 1))
        else:
            out.append(parse_date(part))
    return out


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "big")


# --------------------------------------------------------------------------------------------------- files


def _bad_file(file: str) -> ImportFailed:
    return _fail(
        file,
        "无法读取：文件已损坏或不是 Excel 表格，请用 Excel 或 WPS 重新另存为 .xlsx 后再导入",
        "cannot read it: the file is damaged or not an Excel workbook; save it again as .xlsx and retry",
    )


def _detect_encoding(path: Path) -> str:
    """``utf-8-sig`` if the whole file decodes as UTF-8, else ``gb18030`` (a superset of GBK)."""
    name = path.name
    with path.open("rb") as f:
        head = f.read(4096)
        if head.startswith(b"PK\x03\x04"):
            raise _fail(
                name,
                "这是 Excel 文件而不是 CSV，请把扩展名改为 .xlsx",
                "this is an Excel workbook, not a CSV; rename it to .xlsx",
            )
        f.seek(0)
        for enc in ("utf-8-sig", "gb18030"):
            dec = codecs.getincrementaldecoder(enc)()
            f.seek(0)
            try:
                while chunk := f.read(1 << 20):
                    if b"\x00" in chunk:
                        raise _fail(
                            name,
                            "这不是文本格式的 CSV 文件，请另存为 CSV（UTF-8）或 .xlsx",
                            "this is not a text CSV file; save it as CSV (UTF-8) or .xlsx",
                        )
                    dec.decode(chunk)
                dec.decode(b"", final=True)
                return enc
            except UnicodeDecodeError:
                continue
    raise _fail(
        name, "无法识别文件编码，请另存为 CSV（UTF-8）", "unknown text encoding; save it as CSV (UTF-8)"
    )


class Sheet:
    """One spreadsheet, readable any number of times as ``(row_number, cells)`` without holding it in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        ext = path.suffix.lower()
        if not path.is_file():
            raise _fail(self.name, "文件不存在，请检查路径", "file not found; check the path")
        if ext in (".xlsx", ".xlsm"):
            self.format = "xlsx"
        elif ext in (".csv", ".txt"):
            self.format = "csv"
            self.encoding = _detect_encoding(path)
        elif ext == ".xls":
            raise _fail(
                self.name,
                "不支持旧版 .xls 格式，请在 Excel/WPS 中另存为 .xlsx",
                "the old .xls format is not supported; save it as .xlsx in Excel or WPS",
            )
        else:
            raise _fail(
                self.name,
                f"不支持“{ext or '无扩展名'}”文件，请导入 .xlsx 或 .csv 文件",
                f'"{ext or "no extension"}" files are not supported; import a .xlsx or .csv file',
            )
        self.headers: list[str] = []
        self.header_row = 0
        with closing(self._rows()) as rows:
            for n, cells in rows:
                self.header_row = n
                self.headers = [cell_text(c) for c in cells]
                break
        while self.headers and not self.headers[-1]:
            self.headers.pop()
        if not self.headers:
            raise _fail(
                self.name,
                "文件是空的，请在第一行填写表头，从第二行起填写数据",
                "the file is empty; put the headers in row 1 and the data below",
            )

    def _rows(self) -> Generator[tuple[int, Sequence[Any]], None, None]:
        """Every non-blank row, header included."""
        if self.format == "csv":
            with self.path.open(encoding=self.encoding, newline="") as f:
                sample = f.readline()
                f.seek(0)
                delim = "\t" if sample.count("\t") > sample.count(",") else ","
                for n, rec in enumerate(csv.reader(f, delimiter=delim), start=1):
                    if any(c.strip() for c in rec):
                        yield n, rec
            return
        import openpyxl  # imported lazily: it is slow to import and only needed here

        try:
            wb = openpyxl.load_workbook(self.path, read_only=True, data_only=True)
        except Exception:
            raise _bad_file(self.name) from None
        try:
            ws = wb.worksheets[0]
            ws.reset_dimensions()  # some writers store a wrong dimension, which would cut rows off
            it = ws.iter_rows(values_only=True)
            n = 0
            while True:
                try:
                    cells = next(it)
                except StopIteration:
                    break
                except Exception:
                    raise _bad_file(self.name) from None
                n += 1
                if any(c is not None and cell_text(c) != "" for c in cells):
                    yield n, cells
        finally:
            wb.close()

    def data(self) -> Generator[tuple[int, Sequence[Any]], None, None]:
        rows = self._rows()
        try:
            for n, cells in rows:
                if n > self.header_row:
                    yield n, cells
        finally:
            rows.close()


# --------------------------------------------------------------------------------------------------- rows


class _Row:
    """One data row being parsed; problems go to ``issues`` with the row number and the file's header text."""

    def __init__(self, n: int, cells: Sequence[Any], cmap: ColumnMap, issues: _Issues) -> None:
        self.n, self.cells, self.cmap, self.issues = n, cells, cmap, issues
        self.ok = True
        self._cols = _COLS[cmap.kind]

    def raw(self, key: str) -> Any:
        i = self.cmap.index.get(key)
        if i is None or i >= len(self.cells):
            return None
        v = self.cells[i]
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    def bad(self, key: str | None, zh: str, en: str) -> None:
        self.ok = False
        self.issues.add(self.n, self.cmap.header.get(key) if key else None, zh, en)

    def text(self, key: str, required: bool = False) -> str | None:
        v = self.raw(key)
        col = self._cols[key]
        if v is None:
            if required:
                self.bad(key, f"不能为空，请填写{col.zh}", f"must not be empty; fill in the {col.en}")
            return None
        s = cell_text(v)
        if col.max_len and len(s) > col.max_len:
            self.bad(
                key,
                f"“{s[:20]}…” 太长（最多 {col.max_len} 个字符），请缩短",
                f'"{s[:20]}..." is too long (at most {col.max_len} characters); shorten it',
            )
            return None
        return s

    def parsed(self, key: str, fn: Callable[[Any], Any], required: bool = False) -> Any:
        v = self.raw(key)
        if v is None:
            if required:
                col = self._cols[key]
                self.bad(key, f"不能为空，请填写{col.zh}", f"must not be empty; fill in the {col.en}")
            return None
        try:
            return fn(v)
        except BadValue as e:
            self.bad(key, e.zh, e.en)
            return None

    def number(
        self, key: str, required: bool = False, min_value: Decimal | None = None, positive: bool = False
    ) -> Decimal | None:
        d: Decimal | None = self.parsed(key, parse_decimal, required)
        if d is None:
            return None
        if positive and d <= 0:
            self.bad(
                key,
                f"“{cell_text(self.raw(key))}” 必须大于 0，请填写正数",
                f'"{cell_text(self.raw(key))}" must be greater than 0; enter a positive number',
            )
            return None
        if min_value is not None and d < min_value:
            self.bad(
                key,
                f"“{cell_text(self.raw(key))}” 不能为负数，请填写 0 或正数",
                f'"{cell_text(self.raw(key))}" must not be negative; enter 0 or a positive number',
            )
            return None
        return d


def _dup_issue(issues: _Issues, row: int, what_zh: str, what_en: str, first_row: int) -> None:
    issues.add(
        row,
        None,
        f"{what_zh}在第 {first_row} 行已出现且内容不同，请删除重复的行或把两行改成一致",
        f"{what_en} already appears in row {first_row} with different data; delete the duplicate or make them match",
    )


# --------------------------------------------------------------------------------------------------- importers


class _Importer:
    kind: ClassVar[str]

    def __init__(
        self, session: AsyncSession, sheet: Sheet, cmap: ColumnMap, tz: ZoneInfo, now: datetime
    ) -> None:
        self.session, self.sheet, self.cmap, self.tz, self.now = session, sheet, cmap, tz, now
        self.issues = _Issues(sheet.name)
        self.rows = 0
        self._warehouses: dict[str, int] | None = None
        self._reported: set[tuple[str, str]] = set()

    def parse(self, r: _Row) -> Any:
        raise NotImplementedError

    def records(self, issues: _Issues | None = None) -> Generator[Any, None, None]:
        """Parsed records of the rows that have no problem (problems go to ``issues``)."""
        issues = issues or self.issues
        for n, cells in self.sheet.data():
            r = _Row(n, cells, self.cmap, issues)
            rec = self.parse(r)
            if r.ok and rec is not None:
                yield rec
            if issues.full:  # stop reading; say the list is cut short
                issues.truncated = True
                return

    def batches(self, issues: _Issues | None = None) -> Iterator[list[Any]]:
        gen = self.records(issues)
        try:
            yield from chunks(gen, BATCH)
        finally:
            gen.close()

    async def validate(self) -> None:
        raise NotImplementedError

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        raise NotImplementedError

    def write_batches(self, progress: Callable[[int], None] | None) -> Iterator[list[Any]]:
        """Second pass: batches again; a problem now means the file changed while importing."""
        issues = _Issues(self.sheet.name)
        done = last = 0
        for batch in self.batches(issues):
            yield batch
            done += len(batch)
            if progress and done - last >= PROGRESS_EVERY:
                progress(done)
                last = done
        if issues.items:
            raise ImportFailed(issues.items)
        if progress:
            progress(done)

    # shared reference resolution ---------------------------------------------------------------------

    async def warehouses(self) -> dict[str, int]:
        if self._warehouses is None:
            rows = await self.session.execute(select(Warehouse.code, Warehouse.id))
            self._warehouses = {c: i for c, i in rows}
        return self._warehouses

    async def item_ids(self, skus: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(skus):
            rows = await self.session.execute(select(Item.sku, Item.id).where(Item.sku.in_(chunk)))
            out.update((s, i) for s, i in rows)
        return out

    async def location_ids(self, keys: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
        out: dict[tuple[int, str], int] = {}
        for chunk in chunks(keys):
            rows = await self.session.execute(
                select(Location.warehouse_id, Location.code, Location.id).where(
                    tuple_(Location.warehouse_id, Location.code).in_(chunk)
                )
            )
            out.update(((w, c), i) for w, c, i in rows)
        return out

    async def resolve(self, batch: list[Any]) -> list[tuple[Any, int, int]]:
        """``(record, item_id, location_id)`` for records whose SKU, warehouse and location exist."""
        whs = await self.warehouses()
        items = await self.item_ids({r.sku for r in batch})
        locs = await self.location_ids({(whs[r.warehouse], r.location) for r in batch if r.warehouse in whs})
        out = []
        for r in batch:
            item_id, wh_id = items.get(r.sku), whs.get(r.warehouse)
            loc_id = locs.get((wh_id, r.location)) if wh_id is not None else None
            if item_id is None and ("sku", r.sku) not in self._reported:
                self._reported.add(("sku", r.sku))
                self.issues.add(
                    r.row,
                    self.cmap.header["sku"],
                    f"物料编码“{r.sku}”不存在，请先导入物料（--kind items）或改正编码",
                    f'SKU "{r.sku}" does not exist; import items first (--kind items) or fix the code',
                )
            if wh_id is None and ("wh", r.warehouse) not in self._reported:
                self._reported.add(("wh", r.warehouse))
                self.issues.add(
                    r.row,
                    self.cmap.header["warehouse"],
                    f"仓库“{r.warehouse}”不存在，请先导入库位（--kind locations）或改正仓库编码",
                    f'warehouse "{r.warehouse}" does not exist; import locations first (--kind locations) '
                    "or fix the code",
                )
            elif (
                loc_id is None
                and wh_id is not None
                and ("loc", f"{r.warehouse}/{r.location}") not in self._reported
            ):
                self._reported.add(("loc", f"{r.warehouse}/{r.location}"))
                self.issues.add(
                    r.row,
                    self.cmap.header["location"],
                    f"库位“{r.location}”在仓库“{r.warehouse}”中不存在，请先导入库位（--kind locations）或改正库位编码",
                    f'location "{r.location}" does not exist in warehouse "{r.warehouse}"; import locations first '
                    "(--kind locations) or fix the code",
                )
            if item_id is not None and loc_id is not None:
                out.append((r, item_id, loc_id))
        return out


def _table(model: type[Base]) -> Table:
    """The Core table: plain executemany, much less overhead than the ORM bulk layer for big batches."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


_IL = _table(ItemLocation)
_IL_SNAPSHOT = (
    update(_IL)
    .where(_IL.c.id == bindparam("b_id"))
    .values(qty=bindparam("qty"), book_as_of=bindparam("book_as_of"))
)


def _pack(item_id: int, location_id: int) -> int:
    return (item_id << 32) | location_id


def _unpack(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFFFFFF


# ---- items


@dataclass(slots=True)
class _ItemRec:
    row: int
    sku: str
    name: str
    spec: str | None
    unit: str | None
    unit_cost: Decimal | None
    barcodes: tuple[str, ...]
    pack_unit: str | None
    pack_factor: Decimal | None
    owner: str | None
    lot_tracked: bool | None
    pinned_class: str | None

    def digest(self) -> int:
        return _digest(
            self.name,
            self.spec,
            self.unit,
            self.unit_cost,
            self.barcodes,
            self.pack_unit,
            self.pack_factor,
            self.owner,
            self.lot_tracked,
            self.pinned_class,
        )


class _Items(_Importer):
    kind = "items"

    def parse(self, r: _Row) -> _ItemRec | None:
        sku, name = r.text("sku", True), r.text("name", True)
        barcodes = tuple(dict.fromkeys(split_list(r.raw("barcode"))))
        for b in barcodes:
            if len(b) > 100:
                r.bad(
                    "barcode",
                    f"条码“{b[:20]}…”太长（最多 100 个字符）",
                    f'barcode "{b[:20]}..." is too long (max 100)',
                )
        pack_unit, pack_factor = r.text("pack_unit"), r.number("pack_factor", positive=True)
        if r.ok and (pack_unit is None) != (pack_factor is None):
            missing = "pack_factor" if pack_unit else "pack_unit"
            col = next(c for c in SPECS["items"] if c.key == missing)
            r.bad(
                missing if missing in self.cmap else None,
                f"包装单位和换算要一起填写，请填写“{col.zh}”",
                f'pack unit and factor go together; fill in "{col.en}"',
            )
        rec = _ItemRec(
            r.n,
            sku or "",
            name or "",
            r.text("spec"),
            r.text("unit"),
            r.number("unit_cost", min_value=Decimal(0)),
            barcodes,
            pack_unit,
            pack_factor,
            r.text("owner"),
            r.parsed("lot_tracked", parse_bool),
            r.parsed("pinned_class", parse_class),
        )
        return rec

    async def validate(self) -> None:
        self.seen: dict[str, int] = {}  # sku -> digest << 32 | first row
        barcode_seen: dict[str, int] = {}  # barcode -> sku digest << 32 | row
        owners: dict[str, int] = {}
        for batch in self.batches():
            self.rows += len(batch)
            pending: dict[str, tuple[str, int]] = {}
            for rec in batch:
                packed = rec.digest() << 32 | rec.row
                first = self.seen.setdefault(rec.sku, packed)
                if first != packed:
                    if first >> 32 != packed >> 32:
                        _dup_issue(
                            self.issues,
                            rec.row,
                            f"物料编码“{rec.sku}”",
                            f'SKU "{rec.sku}"',
                            first & 0xFFFFFFFF,
                        )
                    continue
                sku_hash = _digest(rec.sku)
                for b in rec.barcodes:
                    prev = barcode_seen.setdefault(b, sku_hash << 32 | rec.row)
                    if prev >> 32 != sku_hash:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["barcode"],
                            f"条码“{b}”在第 {prev & 0xFFFFFFFF} 行已属于另一个物料，一个条码只能属于一个物料",
                            f'barcode "{b}" already belongs to another item in row {prev & 0xFFFFFFFF}; '
                            "a barcode can belong to one item only",
                        )
                    pending[b] = (rec.sku, rec.row)
                if rec.owner:
                    owners.setdefault(rec.owner, rec.row)
            for chunk in chunks(pending):
                rows = await self.session.execute(
                    select(ItemBarcode.barcode, Item.sku)
                    .join(Item, Item.id == ItemBarcode.item_id)
                    .where(ItemBarcode.barcode.in_(chunk))
                )
                for b, owner_sku in rows:
                    sku, row = pending[b]
                    if owner_sku != sku:
                        self.issues.add(
                            row,
                            self.cmap.header["barcode"],
                            f"条码“{b}”已属于物料“{owner_sku}”，一个条码只能属于一个物料；请改正条码或先修改物料“{owner_sku}”",
                            f'barcode "{b}" already belongs to item "{owner_sku}"; a barcode can belong to one item '
                            f'only; fix the barcode or change item "{owner_sku}" first',
                        )
            if self.issues.full:
                return
        del barcode_seen
        self.owner_ids: dict[str, int] = {}
        for owner_chunk in chunks(owners):
            owner_rows = await self.session.execute(
                select(User.employee_no, User.id).where(User.employee_no.in_(owner_chunk))
            )
            self.owner_ids.update((e, i) for e, i in owner_rows)
        for emp, row in owners.items():
            if emp not in self.owner_ids:
                self.issues.add(
                    row,
                    self.cmap.header["owner"],
                    f"工号“{emp}”的人员不存在，请先导入人员（--kind users）或改正工号",
                    f'no user with employee number "{emp}"; import users first (--kind users) or fix it',
                )

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        for batch in self.write_batches(progress):
            recs = [r for r in batch if self.seen[r.sku] & 0xFFFFFFFF == r.row]
            report.unchanged += len(batch) - len(recs)
            existing: dict[str, Any] = {}
            for chunk in chunks([r.sku for r in recs]):
                rows = await s.execute(
                    select(
                        Item.sku,
                        Item.id,
                        Item.name,
                        Item.spec,
                        Item.base_unit,
                        Item.unit_cost,
                        Item.owner_id,
                        Item.lot_tracked,
                        Item.pinned_class,
                    ).where(Item.sku.in_(chunk))
                )
                existing.update((row.sku, row) for row in rows)
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            changed: set[str] = set()
            for r in recs:
                vals: dict[str, Any] = {"name": r.name}
                if r.spec is not None:
                    vals["spec"] = r.spec
                if r.unit is not None:
                    vals["base_unit"] = r.unit
                if r.unit_cost is not None:
                    vals["unit_cost"] = r.unit_cost
                if r.owner is not None:
                    vals["owner_id"] = self.owner_ids[r.owner]
                if r.lot_tracked is not None:
                    vals["lot_tracked"] = r.lot_tracked
                if r.pinned_class is not None:
                    vals["pinned_class"] = r.pinned_class
                cur = existing.get(r.sku)
                if cur is None:
                    inserts.append(
                        {
                            "sku": r.sku,
                            "spec": None,
                            "base_unit": "个",
                            "unit_cost": Decimal(0),
                            "owner_id": None,
                            "lot_tracked": False,
                            "pinned_class": None,
                            "created_at": self.now,
                            **vals,
                            "abc_class": vals.get("pinned_class") or "C",
                        }
                    )
                else:
                    diff = _changed(cur, vals)
                    if diff:
                        updates.append({"id": cur.id, **diff})
                        changed.add(r.sku)
            ids = {sku: row.id for sku, row in existing.items()}
            for ins in chunks(inserts, BATCH):
                new_ids = await s.execute(
                    insert(_table(Item)).returning(_table(Item).c.sku, _table(Item).c.id), ins
                )
                ids.update((sku, i) for sku, i in new_ids)
            if updates:
                await s.execute(update(Item), updates)
            # barcodes: add the missing ones
            wanted = {b: r.sku for r in recs for b in r.barcodes}
            have: set[str] = set()
            for chunk in chunks(wanted):
                have.update(
                    await s.scalars(select(ItemBarcode.barcode).where(ItemBarcode.barcode.in_(chunk)))
                )
            new_codes = [
                {"barcode": b, "item_id": ids[sku], "unit": None}
                for b, sku in wanted.items()
                if b not in have
            ]
            if new_codes:
                await s.execute(insert(_table(ItemBarcode)), new_codes)
                changed.update(wanted[c["barcode"]] for c in new_codes)
            # pack units
            packs = {(ids[r.sku], r.pack_unit): (r.sku, r.pack_factor) for r in recs if r.pack_unit}
            if packs:
                cur_units: dict[tuple[int, str], tuple[int, Decimal]] = {}
                for unit_chunk in chunks({k[0] for k in packs}):
                    unit_rows = await s.execute(
                        select(ItemUnit.item_id, ItemUnit.unit, ItemUnit.id, ItemUnit.factor).where(
                            ItemUnit.item_id.in_(unit_chunk)
                        )
                    )
                    cur_units.update(((iid, u), (uid, f)) for iid, u, uid, f in unit_rows)
                unit_inserts, unit_updates = [], []
                for (iid, unit), (sku, factor) in packs.items():
                    if (iid, unit) not in cur_units:
                        unit_inserts.append({"item_id": iid, "unit": unit, "factor": factor})
                        changed.add(sku)
                    elif cur_units[(iid, unit)][1] != factor:
                        unit_updates.append({"id": cur_units[(iid, unit)][0], "factor": factor})
                        changed.add(sku)
                if unit_inserts:
                    await s.execute(insert(ItemUnit), unit_inserts)
                if unit_updates:
                    await s.execute(update(ItemUnit), unit_updates)
            for r in recs:
                if r.sku not in existing:
                    report.created += 1
                elif r.sku in changed:
                    report.updated += 1
                else:
                    report.unchanged += 1


# ---- locations


@dataclass(slots=True)
class _LocRec:
    row: int
    warehouse: str
    location: str
    barcode: str | None
    zone: str | None
    warehouse_name: str | None
    sequence: int | None

    def digest(self) -> int:
        return _digest(self.barcode, self.zone, self.warehouse_name, self.sequence)


class _Locations(_Importer):
    kind = "locations"

    def parse(self, r: _Row) -> _LocRec:
        return _LocRec(
            r.n,
            r.text("warehouse", True) or "",
            r.text("location", True) or "",
            r.text("location_barcode"),
            r.text("zone"),
            r.text("warehouse_name"),
            r.parsed("sequence", parse_int),
        )

    async def validate(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}
        self.wh_names: dict[str, tuple[str, int]] = {}
        self.zones: set[tuple[str, str]] = set()
        barcode_seen: dict[str, int] = {}
        for batch in self.batches():
            self.rows += len(batch)
            pending: dict[str, _LocRec] = {}
            for rec in batch:
                key = (rec.warehouse, rec.location)
                packed = rec.digest() << 32 | rec.row
                first = self.seen.setdefault(key, packed)
                if first != packed:
                    if first >> 32 != packed >> 32:
                        _dup_issue(
                            self.issues,
                            rec.row,
                            f"库位“{rec.warehouse}/{rec.location}”",
                            f'location "{rec.warehouse}/{rec.location}"',
                            first & 0xFFFFFFFF,
                        )
                    continue
                if rec.warehouse_name:
                    name, row = self.wh_names.setdefault(rec.warehouse, (rec.warehouse_name, rec.row))
                    if name != rec.warehouse_name:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["warehouse_name"],
                            f"仓库“{rec.warehouse}”在第 {row} 行的名称是“{name}”，这里是“{rec.warehouse_name}”，请统一",
                            f'warehouse "{rec.warehouse}" is named "{name}" in row {row} but "{rec.warehouse_name}" '
                            "here; use one name",
                        )
                if rec.zone:
                    self.zones.add((rec.warehouse, rec.zone))
                if rec.barcode:
                    kh = _digest(key)
                    prev = barcode_seen.setdefault(rec.barcode, kh << 32 | rec.row)
                    if prev >> 32 != kh:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["location_barcode"],
                            f"库位条码“{rec.barcode}”在第 {prev & 0xFFFFFFFF} 行已用于另一个库位，请改正",
                            f'location barcode "{rec.barcode}" is already used by another location in row '
                            f"{prev & 0xFFFFFFFF}; fix it",
                        )
                    pending[rec.barcode] = rec
            for chunk in chunks(pending):
                rows = await self.session.execute(
                    select(Location.barcode, Warehouse.code, Location.code)
                    .join(Warehouse, Warehouse.id == Location.warehouse_id)
                    .where(Location.barcode.in_(chunk))
                )
                for b, wh, code in rows:
                    rec = pending[str(b)]
                    if (wh, code) != (rec.warehouse, rec.location):
                        self.issues.add(
                            rec.row,
                            self.cmap.header["location_barcode"],
                            f"库位条码“{b}”已属于库位“{wh}/{code}”，请改正",
                            f'location barcode "{b}" already belongs to location "{wh}/{code}"; fix it',
                        )
            if self.issues.full:
                return

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        # warehouses
        file_whs = {wh for wh, _ in self.seen}
        whs = dict(
            (c, (i, n))
            for c, i, n in await s.execute(
                select(Warehouse.code, Warehouse.id, Warehouse.name).where(Warehouse.code.in_(file_whs))
            )
        )
        for code in sorted(file_whs - whs.keys()):
            name = self.wh_names.get(code, (code, 0))[0]
            wid = await s.scalar(insert(Warehouse).values(code=code, name=name).returning(Warehouse.id))
            assert wid is not None
            whs[code] = (wid, name)
        for code, (name, _) in self.wh_names.items():
            if whs[code][1] != name:
                await s.execute(update(Warehouse).where(Warehouse.id == whs[code][0]).values(name=name))
        wh_id = {c: v[0] for c, v in whs.items()}
        # zones
        zone_ids: dict[tuple[int, str], int] = {}
        for chunk in chunks({(wh_id[w], z) for w, z in self.zones}):
            rows = await s.execute(
                select(Zone.warehouse_id, Zone.code, Zone.id).where(
                    tuple_(Zone.warehouse_id, Zone.code).in_(chunk)
                )
            )
            zone_ids.update(((w, c), i) for w, c, i in rows)
        new_zones = [
            {"warehouse_id": wh_id[w], "code": z}
            for w, z in sorted(self.zones)
            if (wh_id[w], z) not in zone_ids
        ]
        if new_zones:
            rows = await s.execute(insert(Zone).returning(Zone.warehouse_id, Zone.code, Zone.id), new_zones)
            zone_ids.update(((w, c), i) for w, c, i in rows)
        # default sequence: rank among all codes of the warehouse (database and file), in natural order
        rank: dict[tuple[str, str], int] = {}
        for code, wid in wh_id.items():
            codes = set(await s.scalars(select(Location.code).where(Location.warehouse_id == wid)))
            codes.update(loc for w, loc in self.seen if w == code)
            rank.update(((code, c), i) for i, c in enumerate(sorted(codes, key=natural_key), start=1))
        for batch in self.write_batches(progress):
            recs = [r for r in batch if self.seen[(r.warehouse, r.location)] & 0xFFFFFFFF == r.row]
            report.unchanged += len(batch) - len(recs)
            existing: dict[tuple[int, str], Any] = {}
            for chunk in chunks({(wh_id[r.warehouse], r.location) for r in recs}):
                rows = await s.execute(
                    select(
                        Location.warehouse_id,
                        Location.code,
                        Location.id,
                        Location.zone_id,
                        Location.barcode,
                        Location.sequence,
                    ).where(tuple_(Location.warehouse_id, Location.code).in_(chunk))
                )
                existing.update(((row.warehouse_id, row.code), row) for row in rows)
            changes = _Changes(report)
            for r in recs:
                wid = wh_id[r.warehouse]
                vals: dict[str, Any] = {}
                if r.zone:
                    vals["zone_id"] = zone_ids[(wid, r.zone)]
                if r.barcode:
                    vals["barcode"] = r.barcode
                vals["sequence"] = r.sequence if r.sequence is not None else rank[(r.warehouse, r.location)]
                cur = existing.get((wid, r.location))
                if cur is None:
                    changes.create(
                        {"warehouse_id": wid, "code": r.location, "zone_id": None, "barcode": None, **vals}
                    )
                else:
                    changes.change(cur.id, _changed(cur, vals))
            await changes.flush(s, Location)


# ---- stock


@dataclass(slots=True)
class _StockRec:
    row: int
    sku: str
    warehouse: str
    location: str
    qty: Decimal
    lot: str | None
    as_of: datetime | None


class _Stock(_Importer):
    kind = "stock"

    def parse(self, r: _Row) -> _StockRec:
        return _StockRec(
            r.n,
            r.text("sku", True) or "",
            r.text("warehouse", True) or "",
            r.text("location", True) or "",
            r.number("qty", True) or Decimal(0),
            r.text("lot"),
            r.parsed("as_of", lambda v: parse_datetime(v, self.tz)),
        )

    async def validate(self) -> None:
        # item-location key (or (key, lot)) -> digest << 32 | first row
        self.seen: dict[int | tuple[int, str], int] = {}
        # lot rows: item-location key -> (sum of the lots, latest as_of)
        self.lot_sum: dict[int, tuple[Decimal, datetime | None]] = {}
        for batch in self.batches():
            self.rows += len(batch)
            for rec, item_id, loc_id in await self.resolve(batch):
                il = _pack(item_id, loc_id)
                key: int | tuple[int, str] = (il, rec.lot) if rec.lot else il
                packed = _digest(rec.qty, rec.as_of) << 32 | rec.row
                first = self.seen.setdefault(key, packed)
                what = f"{rec.sku} @ {rec.warehouse}/{rec.location}" + (f" 批次 {rec.lot}" if rec.lot else "")
                what_en = f"{rec.sku} @ {rec.warehouse}/{rec.location}" + (
                    f" lot {rec.lot}" if rec.lot else ""
                )
                if first != packed:
                    if first >> 32 != packed >> 32:
                        _dup_issue(
                            self.issues, rec.row, f"库存“{what}”", f'stock "{what_en}"', first & 0xFFFFFFFF
                        )
                    continue
                if (rec.lot and il in self.seen) or (not rec.lot and il in self.lot_sum):
                    self.issues.add(
                        rec.row,
                        self.cmap.header.get("lot"),
                        f"“{rec.sku} @ {rec.warehouse}/{rec.location}”既有带批次的行又有不带批次的行，请统一",
                        f'"{rec.sku} @ {rec.warehouse}/{rec.location}" has rows with and without a lot; '
                        "use lots on all of them or on none",
                    )
                    continue
                if rec.lot:
                    total, as_of = self.lot_sum.get(il, (Decimal(0), None))
                    if rec.as_of and (as_of is None or rec.as_of > as_of):
                        as_of = rec.as_of
                    self.lot_sum[il] = (total + rec.qty, as_of)
            if self.issues.full:
                return

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        before = await s.scalar(select(func.max(ItemLocation.id))) or 0
        plain = (k for k in self.seen if isinstance(k, int))
        await ensure_item_locations(s, (_unpack(k) for k in itertools.chain(plain, self.lot_sum)))
        lots_done: set[int] = set()
        for batch in self.write_batches(progress):
            resolved = await self.resolve(batch)
            report.unchanged += len(batch) - len(resolved)
            ils: dict[int, Any] = {}
            for chunk in chunks({(i, loc) for _, i, loc in resolved}):
                rows = await s.execute(
                    select(
                        ItemLocation.item_id,
                        ItemLocation.location_id,
                        ItemLocation.id,
                        ItemLocation.qty,
                        ItemLocation.book_as_of,
                    ).where(tuple_(ItemLocation.item_id, ItemLocation.location_id).in_(chunk))
                )
                ils.update((_pack(row.item_id, row.location_id), row) for row in rows)
            lot_rows: list[tuple[_StockRec, Any]] = []
            pending: list[tuple[_StockRec, Any, Decimal, datetime | None]] = []
            for rec, item_id, loc_id in resolved:
                key = _pack(item_id, loc_id)
                if self.seen.get((key, rec.lot) if rec.lot else key, 0) & 0xFFFFFFFF != rec.row:
                    report.unchanged += 1  # an identical repeated line
                    continue
                cur = ils[key]
                if rec.lot:
                    lot_rows.append((rec, cur))
                    if key in lots_done:
                        continue
                    lots_done.add(key)
                    qty, as_of = self.lot_sum[key]
                else:
                    qty, as_of = rec.qty, rec.as_of
                pending.append((rec, cur, qty, as_of))
            # movements already in the ledger after the snapshot time still count
            after = await moved_after(s, {cur.id: as_of or self.now for _, cur, _, as_of in pending})
            after_il: dict[int, Decimal] = {}
            for (il_id, _), q in after.items():
                after_il[il_id] = after_il.get(il_id, Decimal(0)) + q
            il_updates: list[dict[str, Any]] = []
            for rec, cur, qty, as_of in pending:
                new_il = cur.id > before
                target = qty + after_il.get(cur.id, Decimal(0))
                if new_il or cur.qty != target or (as_of is not None and cur.book_as_of != as_of):
                    il_updates.append({"b_id": cur.id, "qty": target, "book_as_of": as_of or self.now})
                    if not rec.lot:
                        report.updated += not new_il
                        report.created += new_il
                elif not rec.lot:
                    report.unchanged += 1
            if il_updates:
                await s.execute(_IL_SNAPSHOT, il_updates)
            if lot_rows:
                await self._write_lots(lot_rows, after, report)

    async def _write_lots(
        self,
        lot_rows: list[tuple[_StockRec, Any]],
        after: dict[tuple[int, str | None], Decimal],
        report: ImportReport,
    ) -> None:
        s = self.session
        cur: dict[int, dict[str, tuple[int, Decimal]]] = {}
        for chunk in chunks({il.id for _, il in lot_rows}):
            rows = await s.execute(
                select(LotBalance.item_location_id, LotBalance.lot, LotBalance.id, LotBalance.qty).where(
                    LotBalance.item_location_id.in_(chunk)
                )
            )
            for il_id, lot, lb_id, qty in rows:
                cur.setdefault(il_id, {})[lot] = (lb_id, qty)
        changes = _Changes(report)
        for rec, il in lot_rows:
            have = cur.get(il.id, {}).get(rec.lot or "")
            target = rec.qty + after.get((il.id, rec.lot), Decimal(0))
            if have is None:
                changes.create({"item_location_id": il.id, "lot": rec.lot, "qty": target})
            else:
                changes.change(have[0], {"qty": target} if have[1] != target else {})
        # lots of these item-locations that the file does not list drop to 0
        keys = {il.id: _pack(il.item_id, il.location_id) for _, il in lot_rows}
        for il_id, lots in cur.items():
            il_key = keys[il_id]
            for lot, (lb_id, qty) in lots.items():
                if (il_key, lot) not in self.seen and qty != 0:
                    changes.updates.append({"id": lb_id, "qty": Decimal(0)})
        await changes.flush(s, LotBalance)


# ---- movements


@dataclass(slots=True)
class _MoveRec:
    row: int
    sku: str
    warehouse: str
    location: str
    qty: Decimal
    type: MovementType
    occurred_at: datetime
    source_doc: str | None
    lot: str | None

    def natural_key(self) -> str:
        parts = (
            self.source_doc or "",
            self.sku,
            self.warehouse,
            self.location,
            self.lot or "",
            format(self.qty.normalize(), "f"),
            self.occurred_at.isoformat(),
            self.type.value,
        )
        return hashlib.sha1("|".join(parts).encode()).hexdigest()


class _Movements(_Importer):
    kind = "movements"

    def occurred_at(self, r: _Row) -> datetime | None:
        d, t = r.raw("date"), r.raw("time")
        if t is not None:
            try:
                tod = parse_time_of_day(t)
                if tod is None:
                    return parse_datetime(t, self.tz)
            except BadValue as e:
                r.bad("time", e.zh, e.en)
                return None
            if d is None:
                r.bad(
                    "date",
                    "只有时刻没有日期，请填写日期，例如 2025-05-01",
                    "a time of day without a date; fill in the date, e.g. 2025-05-01",
                )
                return None
            day = r.parsed("date", parse_date)
            if day is None:
                return None
            return datetime.combine(day, tod.replace(tzinfo=None), self.tz).astimezone(UTC)
        if d is None:
            key = "date" if "date" in self.cmap else "time"
            r.bad(
                key,
                "不能为空，请填写日期，例如 2025-05-01",
                "must not be empty; fill in the date, e.g. 2025-05-01",
            )
            return None
        result: datetime | None = r.parsed("date", lambda v: parse_datetime(v, self.tz))
        return result

    def parse(self, r: _Row) -> _MoveRec | None:
        sku, wh, loc = r.text("sku", True), r.text("warehouse", True), r.text("location", True)
        qty = r.number("qty", True)
        mtype = r.parsed("type", parse_movement_type, True)
        when = self.occurred_at(r)
        source_doc, lot = r.text("source_doc"), r.text("lot")
        if not r.ok or qty is None or mtype is None or when is None:
            return None
        return _MoveRec(r.n, sku or "", wh or "", loc or "", qty, mtype, when, source_doc, lot)

    async def validate(self) -> None:
        self.pairs: set[int] = set()
        for batch in self.batches():
            self.rows += len(batch)
            for _, item_id, loc_id in await self.resolve(batch):
                self.pairs.add(_pack(item_id, loc_id))
            if self.issues.full:
                return

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        await ensure_item_locations(s, (_unpack(k) for k in self.pairs))
        occurrences: dict[int, int] = {}  # identical lines in this file: first 8 bytes of the key -> count
        for batch in self.write_batches(progress):
            resolved = await self.resolve(batch)
            il_ids: dict[int, int] = {}
            for chunk in chunks({(i, loc) for _, i, loc in resolved}):
                rows = await s.execute(
                    select(ItemLocation.item_id, ItemLocation.location_id, ItemLocation.id).where(
                        tuple_(ItemLocation.item_id, ItemLocation.location_id).in_(chunk)
                    )
                )
                il_ids.update((_pack(i, loc), il) for i, loc, il in rows)
            lines = []
            for rec, item_id, loc_id in resolved:
                base = rec.natural_key()
                short = int(base[:16], 16)
                n = occurrences[short] = occurrences.get(short, 0) + 1
                lines.append(
                    MovementLine(
                        item_id=item_id,
                        location_id=loc_id,
                        item_location_id=il_ids[_pack(item_id, loc_id)],
                        qty=rec.qty,
                        type=rec.type,
                        occurred_at=rec.occurred_at,
                        lot=rec.lot,
                        source_doc=rec.source_doc,
                        import_key=f"{base}:{n}",
                    )
                )
            created = await apply_movements(s, lines, recorded_at=self.now)
            report.created += created
            report.unchanged += len(batch) - created


# ---- users


@dataclass(slots=True)
class _UserRec:
    row: int
    name: str
    employee_no: str
    roles: list[str] | None
    team: str | None
    zones: list[str] | None
    wecom_userid: str | None
    feishu_open_id: str | None
    dingtalk_userid: str | None
    capacity_minutes: int | None
    unavailable: list[date] | None

    def digest(self) -> int:
        return _digest(
            self.name,
            self.roles,
            self.team,
            self.zones,
            self.wecom_userid,
            self.feishu_open_id,
            self.dingtalk_userid,
            self.capacity_minutes,
            self.unavailable,
        )


_PLATFORM_IDS = ("wecom_userid", "feishu_open_id", "dingtalk_userid")


class _Users(_Importer):
    kind = "users"

    def parse(self, r: _Row) -> _UserRec:
        cap = r.parsed("capacity_minutes", parse_int)
        if cap is not None and not 0 <= cap <= 24 * 60:
            r.bad(
                "capacity_minutes",
                f"“{cap}” 不在 0 到 1440 分钟之间，请填写每天可用于盘点的分钟数",
                f'"{cap}" is not between 0 and 1440; enter the minutes per day available for counting',
            )
        return _UserRec(
            r.n,
            r.text("name", True) or "",
            r.text("employee_no", True) or "",
            r.parsed("roles", parse_roles),
            r.text("team"),
            split_list(r.raw("zones")) or None,
            r.text("wecom_userid"),
            r.text("feishu_open_id"),
            r.text("dingtalk_userid"),
            cap,
            r.parsed("unavailable", parse_date_list),
        )

    async def _zone_index(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        full: dict[str, int] = {}
        bare: dict[str, list[int]] = {}
        rows = await self.session.execute(
            select(Warehouse.code, Zone.code, Zone.id).join(Warehouse, Warehouse.id == Zone.warehouse_id)
        )
        for wh, z, zid in rows:
            full[f"{wh}/{z}".casefold()] = zid
            bare.setdefault(z.casefold(), []).append(zid)
        return full, bare

    async def validate(self) -> None:
        self.seen: dict[str, int] = {}
        self.zone_ids: dict[str, int] = {}
        full, bare = await self._zone_index()
        ids_seen: dict[tuple[str, str], tuple[str, int]] = {}
        for batch in self.batches():
            self.rows += len(batch)
            for rec in batch:
                packed = rec.digest() << 32 | rec.row
                first = self.seen.setdefault(rec.employee_no, packed)
                if first != packed:
                    if first >> 32 != packed >> 32:
                        _dup_issue(
                            self.issues,
                            rec.row,
                            f"工号“{rec.employee_no}”",
                            f'employee number "{rec.employee_no}"',
                            first & 0xFFFFFFFF,
                        )
                    continue
                for z in rec.zones or ():
                    zf = z.casefold()
                    if zf in full:
                        self.zone_ids[z] = full[zf]
                    elif len(bare.get(zf, [])) == 1:
                        self.zone_ids[z] = bare[zf][0]
                    elif zf in bare:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["zones"],
                            f"库区“{z}”在多个仓库中都有，请写成 仓库/库区，例如 SH01/{z}",
                            f'zone "{z}" exists in several warehouses; write WAREHOUSE/ZONE, e.g. SH01/{z}',
                        )
                    else:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["zones"],
                            f"库区“{z}”不存在，请写成 仓库/库区（例如 SH01/A），或先导入库位",
                            f'zone "{z}" does not exist; write WAREHOUSE/ZONE (e.g. SH01/A) or import '
                            "locations first",
                        )
                for col in _PLATFORM_IDS:
                    v = getattr(rec, col)
                    if v:
                        other, row = ids_seen.setdefault((col, v), (rec.employee_no, rec.row))
                        if other != rec.employee_no:
                            self.issues.add(
                                rec.row,
                                self.cmap.header[col],
                                f"“{v}”在第 {row} 行已用于工号“{other}”，每个账号只能绑定一个人",
                                f'"{v}" is already used for employee "{other}" in row {row}; '
                                "an account belongs to one person only",
                            )
            if self.issues.full:
                return
        for col in _PLATFORM_IDS:
            column = getattr(User, col)
            values = {v: emp for (c, v), (emp, _) in ids_seen.items() if c == col}
            for chunk in chunks(values):
                rows = await self.session.execute(select(column, User.employee_no).where(column.in_(chunk)))
                for v, emp in rows:
                    if emp != values[v]:
                        self.issues.add(
                            ids_seen[(col, v)][1],
                            self.cmap.header[col],
                            f"“{v}”已绑定工号“{emp}”，每个账号只能绑定一个人，请改正",
                            f'"{v}" already belongs to employee "{emp}"; an account belongs to one person '
                            "only; fix it",
                        )

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        team_ids: dict[str, int] = dict((n, i) for n, i in await s.execute(select(Team.name, Team.id)))
        for batch in self.write_batches(progress):
            recs = [r for r in batch if self.seen[r.employee_no] & 0xFFFFFFFF == r.row]
            report.unchanged += len(batch) - len(recs)
            for t in sorted({r.team for r in recs if r.team} - team_ids.keys()):
                tid = await s.scalar(insert(Team).values(name=t).returning(Team.id))
                assert tid is not None
                team_ids[t] = tid
            existing: dict[str, Any] = {}
            for chunk in chunks([r.employee_no for r in recs]):
                rows = await s.execute(
                    select(
                        User.employee_no,
                        User.id,
                        User.name,
                        User.roles,
                        User.team_id,
                        User.capacity_minutes,
                        User.wecom_userid,
                        User.feishu_open_id,
                        User.dingtalk_userid,
                    ).where(User.employee_no.in_(chunk))
                )
                existing.update((row.employee_no, row) for row in rows)
            changed: set[str] = set()
            ids: dict[str, int] = {e: row.id for e, row in existing.items()}
            for r in recs:
                vals: dict[str, Any] = {"name": r.name}
                if r.roles is not None:
                    vals["roles"] = r.roles
                if r.team:
                    vals["team_id"] = team_ids[r.team]
                if r.capacity_minutes is not None:
                    vals["capacity_minutes"] = r.capacity_minutes
                for col in _PLATFORM_IDS:
                    if getattr(r, col):
                        vals[col] = getattr(r, col)
                cur = existing.get(r.employee_no)
                if cur is None:
                    vals.setdefault("roles", [Role.COUNTER.value])
                    uid = await s.scalar(
                        insert(User).values(employee_no=r.employee_no, active=True, **vals).returning(User.id)
                    )
                    assert uid is not None
                    ids[r.employee_no] = uid
                else:
                    diff = _changed(cur, vals)
                    if diff:
                        await s.execute(update(User).where(User.id == cur.id).values(**diff))
                        changed.add(r.employee_no)
            # zones replace; unavailable days add
            with_zones = {ids[r.employee_no]: r for r in recs if r.zones is not None}
            cur_zones: dict[int, set[int]] = {}
            for chunk in chunks(with_zones):
                for uid, zid in await s.execute(
                    select(UserZone.user_id, UserZone.zone_id).where(UserZone.user_id.in_(chunk))
                ):
                    cur_zones.setdefault(uid, set()).add(zid)
            for uid, r in with_zones.items():
                want = {self.zone_ids[z] for z in r.zones or ()}
                have = cur_zones.get(uid, set())
                if want != have:
                    if have - want:
                        await s.execute(
                            delete(UserZone).where(UserZone.user_id == uid, UserZone.zone_id.in_(have - want))
                        )
                    if want - have:
                        await s.execute(
                            insert(UserZone), [{"user_id": uid, "zone_id": z} for z in want - have]
                        )
                    changed.add(r.employee_no)
            with_days = {ids[r.employee_no]: r for r in recs if r.unavailable}
            cur_days: set[tuple[int, date]] = set()
            for chunk in chunks(with_days):
                cur_days.update(
                    (u, d)
                    for u, d in await s.execute(
                        select(UserUnavailability.user_id, UserUnavailability.day).where(
                            UserUnavailability.user_id.in_(chunk)
                        )
                    )
                )
            new_days = [
                {"user_id": uid, "day": d, "note": None}
                for uid, r in with_days.items()
                for d in sorted(set(r.unavailable or ()))
                if (uid, d) not in cur_days
            ]
            if new_days:
                await s.execute(insert(UserUnavailability), new_days)
                changed.update(
                    r.employee_no
                    for uid, r in with_days.items()
                    if any(x["user_id"] == uid for x in new_days)
                )
            for r in recs:
                if r.employee_no not in existing:
                    report.created += 1
                elif r.employee_no in changed:
                    report.updated += 1
                else:
                    report.unchanged += 1


_IMPORTERS: dict[str, type[_Importer]] = {
    "items": _Items,
    "locations": _Locations,
    "stock": _Stock,
    "movements": _Movements,
    "users": _Users,
}


# --------------------------------------------------------------------------------------------------- entry point


async def import_file(
    session: AsyncSession,
    path: Path,
    kind: str | None = None,
    *,
    tz: ZoneInfo,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> ImportReport:
    """Validate the whole file, then upsert it (see the module docstring). Flushes, never commits.

    ``progress(rows_done)`` is called every few thousand rows of the writing pass. ``now`` (aware) is the
    default stock snapshot time and the movements' ``recorded_at``; it defaults to the current time.
    """
    path = Path(path)
    sheet = Sheet(path)
    if kind is None:
        kind = guess_kind(sheet.headers, file=sheet.name)
    elif kind not in KINDS:
        raise _fail(
            sheet.name,
            f"未知的导入类型“{kind}”，请使用 {'、'.join(KINDS)} 之一",
            f'unknown import kind "{kind}"; use one of {", ".join(KINDS)}',
        )
    cmap, header_issues = map_headers(kind, sheet.headers, sheet.name)
    if header_issues:
        for i in header_issues:
            if i.row is not None:
                i.row = sheet.header_row
        raise ImportFailed(header_issues)
    importer = _IMPORTERS[kind](session, sheet, cmap, tz, now or utcnow())
    await importer.validate()
    importer.issues.raise_if_any()
    if importer.rows == 0:
        raise _fail(
            sheet.name,
            "只有表头，没有数据行，请从第二行起填写数据",
            "the file has headers but no data rows; fill in data from row 2",
        )
    report = ImportReport(kind=kind, rows=importer.rows)
    await importer.write(report, progress)
    await session.flush()
    return report
