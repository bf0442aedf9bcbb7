"""Spreadsheet import: items, locations, stock, movements and users from .xlsx or .csv.

``import_file`` reads the file once, in batches. Each row is parsed and validated, keeping only compact per-key
data in memory (a few integers per SKU or item-location, never the rows); references are resolved per batch
with one join against a lookup table, and the rows to write go into the kind's temporary staging tables (COPY
on PostgreSQL). If anything is wrong it raises ``ImportFailed`` listing up to 50 problems, each naming the file,
the row (as the spreadsheet shows it, header = row 1) and the column, in Chinese and English, *before anything
is written*. Then a dozen set-based statements (``INSERT ... SELECT``, ``UPDATE ... FROM``) write the staged
rows, whatever their number, and the staging tables are dropped. ``users`` files (small) are still read twice
and written in batches. Nothing here commits: the caller owns the transaction.

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
                不可用日期/unavailable, 语言/locale (中文/zh-CN or 英文/en: cards and chat replies).
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
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    and_,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core import xlsx
from core.config import ImportSettings
from core.db import BulkWriter, analyze, create_staging, drop_staging, staging_table
from core.models import (
    Base,
    Item,
    ItemBarcode,
    ItemLocation,
    ItemUnit,
    Location,
    LotBalance,
    Movement,
    MovementType,
    Role,
    Team,
    User,
    UserUnavailability,
    UserZone,
    UTCDateTime,
    Warehouse,
    Zone,
)
from core.people import holders, sites
from core.stock import (
    MOVEMENT_STAGING,
    STAGED_LINE,
    apply_staged_movements,
    chunks,
    ensure_staged_item_locations,
    natural_key,
)
from core.xlsx import Formula

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
    notes: list[ImportIssue] = field(default_factory=list)  # worth knowing, not errors (ignored columns...)


def _changed(cur: Any, vals: Mapping[str, Any]) -> dict[str, Any]:
    """The values that differ from the stored row (unchanged rows are not rewritten)."""
    return {k: v for k, v in vals.items() if getattr(cur, k) != v}


class _Issues:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ImportIssue] = []
        self.truncated = False
        self.flags: dict[str, list[Any]] = {}

    def flag(self, tag: str, row: int, value: Any) -> None:
        """Count something worth a note (not an error): the first row and value, and how many."""
        first = self.flags.setdefault(tag, [0, row, value])
        first[0] += 1

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
    weak: tuple[str, ...] = ()  # headers that give way to any other header of this column (ERP exports)
    join: bool = False  # several of its headers are joined with a space instead of being an error

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.zh, self.en, *self.extra)


# ERP export headers (Kingdee K/3 Cloud 即时库存 and 物料列表, K/3 WISE, KIS/精斗云, Yonyou U8 现存量 and 存货档案,
# YonSuite/BIP 现存量 and 物料档案) are aliases too: see the README ("Import files").
_SKU_HEADERS = ("物料代码", "料号", "商品编码", "item_code", "item_no", "存货编码", "物料编号", "商品编号")
_SKU = Col("sku", "物料编码", "sku", _SKU_HEADERS, 64)
# in an item master the code column is often just 编码 (Kingdee 物料列表) or 代码 (K/3 WISE)
_ITEM_SKU = Col("sku", "物料编码", "sku", (*_SKU_HEADERS, "编码", "代码"), 64)
# a stock export may have both the warehouse's code and its name: the code column wins
_WH = Col(
    "warehouse",
    "仓库",
    "warehouse",
    ("仓库编码", "仓库代码", "warehouse_code"),
    50,
    weak=("仓库", "warehouse"),
)
_LOC = Col(
    "location", "库位", "location",
    ("库位编码", "库位代码", "货位", "location_code", "bin", "仓位", "仓位编码", "仓位代码", "货位编码", "货位代码"),
    50,
    weak=("库位", "location", "货位", "仓位", "bin"),
)  # fmt: skip
_LOT = Col("lot", "批次", "lot", ("批号", "批次号", "batch"), 64)
_STOCK_QTY_HEADERS = (
    "库存数量", "账面数量", "结存数量", "quantity", "库存量(基本单位)", "基本单位数量", "现存数量", "现存量", "库存量",
    "结存数量(基本单位)", "数量(基本单位)",
)  # fmt: skip

SPECS: dict[str, tuple[Col, ...]] = {
    "items": (
        _ITEM_SKU,
        Col("name", "物料名称", "name", ("名称", "品名", "item_name", "存货名称", "商品名称"), 200),
        Col("spec", "规格型号", "spec", ("规格", "型号", "specification", "规格说明"), 200, join=True),
        Col(
            "unit",
            "单位",
            "unit",
            (
                "基本单位",
                "计量单位",
                "base_unit",
                "uom",
                "主计量单位",
                "主计量单位名称",
                "主计量",
                "基本计量单位",
            ),
            20,
            weak=("单位", "计量单位"),
        ),
        Col("unit_cost", "单价", "unit_cost", ("单位成本", "成本单价", "cost", "price", "参考成本")),
        Col("barcode", "条码", "barcode", ("条形码", "barcodes")),
        Col("pack_unit", "包装单位", "pack_unit", (), 20),
        Col("pack_factor", "换算", "pack_factor", ("换算率", "换算系数", "包装数量")),
        Col("owner", "负责人", "owner", ("负责人工号", "owner_employee_no"), 50),
        Col(
            "lot_tracked",
            "批次管理",
            "lot_tracked",
            ("lot_managed", "启用批号管理", "批号管理", "是否批次管理"),
        ),
        Col("pinned_class", "固定分类", "pinned_class", ("固定abc分类",)),
    ),
    "locations": (
        _WH,
        _LOC,
        Col("location_barcode", "库位条码", "location_barcode", ("bin_barcode",), 100),
        Col("zone", "库区", "zone", ("库区编码", "zone_code"), 50),
        Col("warehouse_name", "仓库名称", "warehouse_name", (), 200),
        Col("sequence", "顺序", "sequence", ("拣货顺序", "库位顺序", "seq")),
        Col(
            "default_team",
            "默认班组",
            "default_team",
            ("默认团队", "仓库班组", "仓库团队", "warehouse_team"),
            100,
        ),
        Col("zone_team", "库区班组", "zone_team", ("库区团队",), 100),
    ),
    "stock": (
        _SKU,
        _WH,
        _LOC,
        Col("qty", "数量", "qty", _STOCK_QTY_HEADERS),
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
        Col("locale", "语言", "locale", ("language", "lang"), 10),
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

# Descriptive columns of ERP exports that no kind reads: ignored with a note (with the columns of the other
# kinds: 物料名称 in a stock file). Any other unknown header is still an error: it is usually a typo.
ERP_DESCRIPTIVE_HEADERS = (
    # Kingdee K/3 Cloud 即时库存 / 物料列表
    "库存组织", "货主类型", "货主", "保管者类型", "保管者", "库存状态", "库存主单位", "库存量(主单位)", "可用量(主单位)",
    "库存辅单位", "库存量(辅单位)", "可用量(辅单位)", "可用量(基本单位)", "生产日期", "有效期至", "保质期", "保质期单位",
    "bom版本", "辅助属性", "计划跟踪号", "项目编号", "物料分组", "物料类别", "物料属性", "存货类别", "使用组织",
    "创建组织", "数据状态", "禁用状态", "助记码", "旧物料编码", "描述", "库存单位", "仓位名称", "仓库名称",
    "锁库量(主单位)", "锁库量(基本单位)", "物料分组编码", "物料分组名称", "基本单位编码", "创建人", "创建日期",
    "修改人", "修改日期", "审核人", "审核日期", "单据状态", "最后更新时间",
    # Kingdee K/3 WISE, KIS
    "基本计量单位名称", "常用计量单位", "常用单位数量", "辅助计量单位", "辅助单位数量", "仓库代码名称", "金额", "成本",
    "计划单价", "商品类别", "商品名称规格",
    # Yonyou U8 现存量 / 货位存量 / 存货档案
    "存货代码", "存货分类", "存货分类编码", "存货分类名称", "主计量单位编码", "计量单位组", "计量单位组编码",
    "计量单位组名称", "现存件数", "件数", "辅计量单位", "辅计量单位名称", "可用数量", "冻结数量", "其中冻结数量",
    "到货/在检数量", "待发货数量", "调拨待发数量", "预计入库数量", "预计出库数量", "失效日期", "货位名称",
    "参考售价", "最新成本", "计划价", "计划价/售价", "启用日期", "停用日期", "是否折扣", "税率", "存货属性",
    # YonSuite / BIP 现存量 / 物料档案
    "主计量单位", "可用量", "预留量", "在途量", "物料分类", "物料分类编码", "物料分类名称", "库存组织编码",
    "仓库分类", "批次状态", "效期", "入库日期",
    # generic
    "序号", "行号", "no", "no.", "#", "单位名称", "类别", "分类", "品牌", "状态", "description", "category", "status",
)  # fmt: skip


def norm_header(h: str) -> str:
    """Header as matched: NFKC (full-width to half-width), case-folded, no spaces, ``-`` and `` `` as ``_``."""
    s = unicodedata.normalize("NFKC", h).strip().casefold()
    s = re.sub(r"[\s\-]+", "_", s)
    return s.replace("_(", "(")


def _alias_table(cols: tuple[Col, ...]) -> dict[str, tuple[Col, int]]:
    """Normalised header -> (column, rank); rank 1 headers give way to rank 0 ones of the same column."""
    out: dict[str, tuple[Col, int]] = {}
    for c in cols:
        weak = {norm_header(w) for w in c.weak}
        for a in (*c.aliases, *c.weak):
            n = norm_header(a)
            out[n] = (c, 1 if n in weak else 0)
    return out


_ALIASES: dict[str, dict[str, tuple[Col, int]]] = {kind: _alias_table(cols) for kind, cols in SPECS.items()}
_IGNORED = {norm_header(h) for h in IGNORED_HEADERS}
_DESCRIPTIVE = {norm_header(h) for h in ERP_DESCRIPTIVE_HEADERS}
_KNOWN_ANYWHERE = set(_DESCRIPTIVE).union(*(set(a) for a in _ALIASES.values()))
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
    more: dict[str, list[int]] = field(default_factory=dict)  # key -> further columns joined to it (spec)
    ignored: list[str] = field(
        default_factory=list
    )  # headers read by no column of this kind (a note says so)
    rank: dict[str, int] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.index


def map_headers(kind: str, headers: Sequence[str], file: str = "") -> tuple[ColumnMap, list[ImportIssue]]:
    """Map a header row onto one kind's columns; the issues list says what is wrong with it. Headers that are
    other kinds' columns or known ERP descriptive columns are left out (``cmap.ignored``); ``notes`` words them."""
    issues = _Issues(file)
    cmap = ColumnMap(kind)
    aliases = _ALIASES[kind]
    for i, raw in enumerate(headers):
        h = (raw or "").strip()
        if not h:
            continue
        n = norm_header(h)
        hit = aliases.get(n)
        if hit is None:
            if n in _IGNORED:
                continue
            if n in _KNOWN_ANYWHERE:
                cmap.ignored.append(h)
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
        col, rank = hit
        if col.key in cmap.index:
            if col.join:
                cmap.more.setdefault(col.key, []).append(i)
                cmap.header[col.key] += f"+{h}"
                continue
            if rank != cmap.rank[col.key]:  # e.g. 仓库编码 and 仓库 (the name): the code column is read
                if rank < cmap.rank[col.key]:
                    cmap.ignored.append(cmap.header[col.key])
                    cmap.index[col.key], cmap.header[col.key], cmap.rank[col.key] = i, h, rank
                else:
                    cmap.ignored.append(h)
                continue
            issues.add(
                1,
                h,
                f"与“{cmap.header[col.key]}”列重复（都是{col.zh}），请删除其中一列",
                f'duplicates column "{cmap.header[col.key]}" (both are {col.en}); delete one of them',
            )
            continue
        cmap.index[col.key] = i
        cmap.header[col.key] = h
        cmap.rank[col.key] = rank
    for group in REQUIRED[kind]:
        if not any(k in cmap for k in group):
            hint_zh = hint_en = ""
            if group == ("qty",):
                near = [h for h in cmap.ignored if "量" in h or "数" in h]
                if near:
                    hint_zh = (f"（“{'”“'.join(near)}”不是按基本单位计的数量，没有读取；请用基本单位的数量列，"
                               "例如“库存量(基本单位)”）")  # fmt: skip
                    hint_en = (f' ({", ".join(near)}: not a quantity in the base unit, not read; use the base unit '
                               'quantity column, e.g. "库存量(基本单位)")')  # fmt: skip
            issues.add(
                None,
                None,
                f"缺少必填列 {_group_text(kind, group, 'zh')}{hint_zh}，请在第一行加上这一列",
                f"missing required column {_group_text(kind, group, 'en')}{hint_en}; add it to the header row",
            )
    return cmap, issues.items


def ignored_note(file: str, kind: str, ignored: Sequence[str]) -> ImportIssue:
    return ImportIssue(
        file,
        None,
        None,
        f"{KIND_ZH[kind]}文件不使用这些列，已忽略：{'、'.join(ignored)}",
        f"a {kind} file does not use these columns, which were ignored: {', '.join(ignored)}",
    )


def guess_kind(headers: list[str], file: str = "") -> str:
    """The kind that reads the most of these headers (one that has all its required columns wins a tie; a kind
    missing one may still win, so its errors are about what the file is); ``ImportFailed`` (naming ``file``)
    if no kind reads any, or several fit equally."""
    scored: list[tuple[int, bool, str]] = []
    for kind in KINDS:
        cmap, issues = map_headers(kind, headers, file)
        complete = not any(i.row is None for i in issues)
        scored.append((len(cmap.index), complete, kind))
    best = max(s[0] for s in scored)
    top = [s for s in scored if s[0] == best]
    complete_top = [s for s in top if s[1]]
    if best > 0 and len(complete_top) == 1:
        return complete_top[0][2]
    if best > 0 and not complete_top and len(top) == 1:
        return top[0][2]
    fits = [s[2] for s in complete_top] if len(complete_top) > 1 else []
    seen = [h.strip() for h in headers if h and h.strip()]
    needs_zh = "；".join(
        f"{KIND_ZH[k]}({k})需要 " + "、".join(_group_text(k, g, "zh") for g in REQUIRED[k]) for k in KINDS
    )
    needs_en = "; ".join(
        f"{k} needs " + ", ".join(_group_text(k, g, "en") for g in REQUIRED[k]) for k in KINDS
    )
    what_zh = "无法确定" if not fits else "可能是多种类型（" + "、".join(fits) + "）"
    what_en = "cannot tell" if not fits else "could be several kinds (" + ", ".join(fits) + ")"
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


# ---- what Excel does to cells (refused with a message that says what happened and what to do)

EXCEL_ERRORS = frozenset(
    ("#N/A", "#REF!", "#VALUE!", "#DIV/0!", "#NAME?", "#NUM!", "#NULL!", "#SPILL!", "#CALC!", "#GETTING_DATA",
     "#FIELD!", "#BLOCKED!", "#BUSY!", "#UNKNOWN!", "#CONNECT!", "#N/A!")
)  # fmt: skip
_SCIENTIFIC = re.compile(
    r"^[+-]?\d+(?:\.\d+)?E\+\d+$", re.IGNORECASE
)  # Excel shows 6901234567892 as 6.90123E+12
_SERIAL = re.compile(r"^\d{5}(?:\.\d+)?$")
_EXCEL_EPOCH = date(1899, 12, 30)
_DATE_KEYS = frozenset(("as_of", "date", "time", "unavailable"))
_NUMBER_KEYS = frozenset(("qty", "unit_cost", "pack_factor", "sequence", "capacity_minutes"))
# codes: Excel's number formats destroy them (scientific notation, 15 significant digits, leading zeros)
_CODE_KEYS = frozenset(
    ("sku", "warehouse", "location", "location_barcode", "barcode", "lot", "employee_no", "owner", "wecom_userid",
     "feishu_open_id", "dingtalk_userid", "source_doc", "zone", "zones", "team", "default_team", "zone_team")
)  # fmt: skip


def excel_serial_date(v: Any) -> date | None:
    """The day that ``v`` stands for if it looks like an Excel date serial number (20000-99999: 1954-2173)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float | Decimal):
        x = float(v)
    elif isinstance(v, str) and _SERIAL.match(unicodedata.normalize("NFKC", v).strip()):
        x = float(unicodedata.normalize("NFKC", v).strip())
    else:
        return None
    if 20000 <= x < 100000:
        return _EXCEL_EPOCH + timedelta(days=int(x))
    return None


def excel_damage(key: str, v: Any) -> BadValue | None:
    """What Excel did to this cell, if it made it unusable for column ``key``: an uncalculated formula, an
    error value, a date serial number in a date column, a date in a text column, a code in scientific notation
    or cut to 15 digits."""
    if isinstance(v, Formula):
        return BadValue(
            f"这一格是公式（{v[:40]}），文件里没有它的计算结果；请在 Excel 中复制这一列，"
            "用“选择性粘贴 → 数值”粘贴为数值，保存后再导入",
            f"this cell is a formula ({v[:40]}) and the file holds no value for it; copy the column in Excel and "
            "paste it as values (Paste Special > Values), save and import again",
        )
    if isinstance(v, str) and v.strip().upper() in EXCEL_ERRORS:
        return BadValue(
            f"这一格是 Excel 的错误值 {v.strip()}（公式出错了），请改正公式或填写正确的值，粘贴为数值后再导入",
            f"this cell holds the Excel error {v.strip()} (a formula failed); fix it or type the right value, "
            "paste as values and import again",
        )
    if key in _DATE_KEYS:
        d = excel_serial_date(v)
        if d is not None:
            return BadValue(
                f"“{cell_text(v)}”是 Excel 的日期序号（即 {d}），不是日期；请把这一列设为日期格式，"
                f"或写成 {d} 这样的日期后再导出",
                f'"{cell_text(v)}" is an Excel date serial number ({d}), not a date; format the column as a date, '
                f"or write dates such as {d}, and export again",
            )
        return None
    if key in _NUMBER_KEYS:
        return None
    if isinstance(v, datetime | date | time):
        shown = v.date() if isinstance(v, datetime) and v.time() == time(0) else v
        return BadValue(
            f"这一格是日期或时间（{shown}），但这一列应是文本；Excel 会把 3-4、1/2、MAR1 这样的编码自动变成日期。"
            "请把这一列设为文本格式，重新填写后再导入",
            f"this cell is a date or time ({shown}) but the column holds text: Excel turns codes such as 3-4, 1/2 or "
            "MAR1 into dates; format the column as text, type the values again and import",
        )
    if key in _CODE_KEYS:
        if isinstance(v, str) and _SCIENTIFIC.match(unicodedata.normalize("NFKC", v).strip()):
            return BadValue(
                f"“{v.strip()}”是 Excel 的科学计数法，后面的数字已经丢失；请在 Excel 中把这一列设为文本格式，"
                "从 ERP 重新导出（或填写完整的编码）后再导入",
                f'"{v.strip()}" is in Excel\'s scientific notation and its last digits are lost; format the column '
                "as text and export it from the ERP again (or type the full codes)",
            )
        if isinstance(v, float) and abs(v) >= 1e15:
            return BadValue(
                f"“{cell_text(v)}”是超过 15 位的数字，Excel 只保留 15 位，末尾的数字已经丢失；"
                "请把这一列设为文本格式后重新导出或填写",
                f'"{cell_text(v)}" is a number of more than 15 digits: Excel keeps 15, so its last digits are lost; '
                "format the column as text and export or type it again",
            )
    return None


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


_LOCALES = {
    "zh": "zh-CN", "zh-cn": "zh-CN", "中文": "zh-CN", "简体中文": "zh-CN", "chinese": "zh-CN",
    "en": "en", "en-us": "en-US", "en-gb": "en-GB", "英文": "en", "英语": "en", "english": "en",
}  # fmt: skip


def parse_locale(v: Any) -> str:
    """The language a user reads cards and chat replies in: 中文 or English (Chinese is the default)."""
    text = str(v).strip()
    locale = _LOCALES.get(text.casefold().replace("_", "-"))
    if locale is None:
        raise BadValue(
            f"“{text}” 不是支持的语言，请填写 中文 或 英文（zh-CN / en）",
            f'"{text}" is not a supported language; use zh-CN or en',
        )
    return locale


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
    """``utf-8-sig`` if the whole file decodes as UTF-8, else ``gb18030`` (a superset of GBK). A file that is
    UTF-8 up to a bad row (three or more Chinese characters read as UTF-8 before it), or that is neither, is
    refused naming the first bad row."""
    name = path.name
    with path.open("rb") as f:
        head = f.read(4096)
        if head.startswith(b"PK\x03\x04"):
            raise _fail(
                name,
                "这是 Excel 文件而不是 CSV，请把扩展名改为 .xlsx",
                "this is an Excel workbook, not a CSV; rename it to .xlsx",
            )
        bad: dict[str, int] = {}
        for enc in ("utf-8-sig", "gb18030"):
            dec = codecs.getincrementaldecoder(enc)()
            f.seek(0)
            offset = 0  # bytes given to the decoder so far
            wide = 0  # non-ASCII characters decoded so far
            try:
                while chunk := f.read(1 << 20):
                    if b"\x00" in chunk:
                        raise _fail(
                            name,
                            "这不是文本格式的 CSV 文件，请另存为 CSV（UTF-8）或 .xlsx",
                            "this is not a text CSV file; save it as CSV (UTF-8) or .xlsx",
                        )
                    pending = len(dec.getstate()[0])
                    try:
                        text = dec.decode(chunk)
                    except UnicodeDecodeError as e:
                        bad[enc] = offset - pending + e.start
                        if enc == "utf-8-sig":
                            wide += sum(
                                1 for c in e.object[: e.start].decode("utf-8", "ignore") if c > "\x7f"
                            )
                        raise
                    if enc == "utf-8-sig" and wide < 3:
                        wide += sum(1 for c in text if c > "\x7f")
                    offset += len(chunk)
                pending = len(dec.getstate()[0])
                try:
                    dec.decode(b"", final=True)
                except UnicodeDecodeError:
                    bad[enc] = offset - pending
                    raise
                return enc
            except UnicodeDecodeError:
                if enc == "utf-8-sig" and wide >= 3:
                    row = _csv_row_at(path, bad[enc], "utf-8-sig")
                    raise _fail(
                        name,
                        "文件是 UTF-8 编码，但这一行（之前的都能读）有不是 UTF-8 的内容，可能是从别的文件粘贴来的；"
                        "请检查这一行，或把整个文件另存为 CSV（UTF-8）",
                        "the file is UTF-8 but this row (the first bad one) holds bytes that are not, maybe pasted "
                        "from another file; check the row or save the whole file as CSV (UTF-8)",
                        row=row,
                    ) from None
                continue
    row = _csv_row_at(path, bad["gb18030"], "gb18030")
    raise _fail(
        name,
        "无法识别文件编码：这一行（第一个读不出的行）既不是 UTF-8 也不是 GBK；请检查这一行，或另存为 CSV（UTF-8）",
        "unknown text encoding: this row (the first that cannot be read) is neither UTF-8 nor GBK; check the row "
        "or save the file as CSV (UTF-8)",
        row=row,
    )


def _csv_row_at(path: Path, offset: int, encoding: str) -> int:
    """The CSV row (as ``Sheet`` numbers them) holding the byte at ``offset``; the bytes before it decode.
    Streams the file: the bad byte may be a gigabyte in."""
    tail = [""]

    def lines() -> Iterator[str]:
        dec = codecs.getincrementaldecoder(encoding)("replace")
        left = offset
        with path.open("rb") as f:
            while left > 0 and (chunk := f.read(min(1 << 20, left))):
                left -= len(chunk)
                *done, tail[0] = (tail[0] + dec.decode(chunk)).split("\n")
                for line in done:
                    yield line + "\n"
        tail[0] += dec.decode(b"", final=True)
        if tail[0]:
            yield tail[0]

    try:
        records = sum(1 for _ in csv.reader(lines()))
    except csv.Error:  # a field that will not parse: count lines
        records = sum(1 for _ in lines())
    return records if tail[0] else records + 1


class Sheet:
    """One spreadsheet, readable any number of times as ``(row_number, cells)`` without holding it in memory.
    An .xlsx is checked against ``limits`` first (``core.xlsx.check``: decompression bombs)."""

    def __init__(self, path: Path, limits: ImportSettings | None = None) -> None:
        self.path = path
        self.name = path.name
        ext = path.suffix.lower()
        if not path.is_file():
            raise _fail(self.name, "文件不存在，请检查路径", "file not found; check the path")
        if ext in (".xlsx", ".xlsm"):
            self.format = "xlsx"
            try:
                xlsx.check(path, limits)
            except xlsx.Refused as e:
                raise _fail(self.name, e.zh, e.en) from None
            except xlsx.Damaged:
                raise _bad_file(self.name) from None
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
        rows = xlsx.rows(self.path)
        try:
            for n, cells in rows:
                if any(c is not None and cell_text(c) != "" for c in cells):
                    yield n, cells
        except xlsx.Damaged:
            raise _bad_file(self.name) from None
        finally:
            rows.close()

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
        self._bad_keys: set[str] = set()

    def raw(self, key: str) -> Any:
        """The cell of column ``key``, None when empty or unusable (what Excel did to it is reported)."""
        i = self.cmap.index.get(key)
        if i is None:
            return None
        v = self._cell(i)
        if v is None:
            return None
        damage = excel_damage(key, v)
        if damage is not None:
            self.bad(key, damage.zh, damage.en)
            return None
        if key == "lot" and not isinstance(v, str) and excel_serial_date(v) is not None:
            self.issues.flag("lot_serial", self.n, v)
        for j in self.cmap.more.get(key, ()):  # joined columns (spec: 规格 + 型号)
            w = self._cell(j)
            if w is not None and (damage := excel_damage(key, w)) is None:
                v = f"{cell_text(v)} {cell_text(w)}"
            elif damage is not None:
                self.bad(key, damage.zh, damage.en)
                return None
        return v

    def _cell(self, i: int) -> Any:
        if i >= len(self.cells):
            return None
        v = self.cells[i]
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    def bad(self, key: str | None, zh: str, en: str) -> None:
        self.ok = False
        if key is not None:
            if key in self._bad_keys:
                return  # one problem per cell: an unusable cell is not also "empty"
            self._bad_keys.add(key)
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

# Keys looked up for one batch of the reading pass (tag 1: SKU, 2: location code in warehouse ``ref_id``,
# 3: item barcode, 4: location barcode): one join per kind of key instead of IN lists of a thousand values.
_LOOKUP = staging_table(
    "import_lookup",
    Column("tag", Integer, nullable=False),
    Column("code", String(200), nullable=False),
    Column("ref_id", Integer),
)
_SKU_KEY, _LOC_KEY, _BARCODE_KEY, _LOC_BARCODE_KEY = 1, 2, 3, 4


class _Importer:
    """One kind's importer. ``validate`` reads the file once: it parses and checks every row and stages the
    rows to write in the kind's staging tables (COPY on PostgreSQL); ``write`` applies them with set-based
    statements and drops the tables. ``users`` (small files) still reads the file twice."""

    kind: ClassVar[str]
    staging: ClassVar[tuple[Table, ...]] = ()

    def __init__(
        self, session: AsyncSession, sheet: Sheet, cmap: ColumnMap, tz: ZoneInfo, now: datetime
    ) -> None:
        self.session, self.sheet, self.cmap, self.tz, self.now = session, sheet, cmap, tz, now
        self.issues = _Issues(sheet.name)
        self.rows = 0
        self.progress: Callable[[int], None] | None = None  # rows read so far, every few thousand rows
        self.staged = 0  # rows staged for writing
        self.repeats = 0  # lines repeating an earlier line exactly: reported unchanged
        self._warehouses: dict[str, int] | None = None
        self._wh_by_name: dict[str, tuple[str, int]] = {}
        self._reported: set[tuple[str, str]] = set()
        self.notes: list[ImportIssue] = []
        self._writer: BulkWriter | None = None
        self._lookup_ready = False

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

    def read_batches(self) -> Iterator[list[Any]]:
        """The reading pass's batches, reporting ``progress``."""
        done = last = 0
        for batch in self.batches():
            yield batch
            done += len(batch)
            if self.progress and (last == 0 or done - last >= PROGRESS_EVERY):
                self.progress(done)  # the first batch at once, then every few thousand rows
                last = done
        if self.progress:
            self.progress(done)

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

    # staging ------------------------------------------------------------------------------------------

    async def _bulk(self) -> BulkWriter:
        if self._writer is None:
            self._writer = BulkWriter(self.session)
            await self._writer.start()
        return self._writer

    async def open_staging(self) -> None:
        for table in self.staging:
            await create_staging(self.session, table)

    async def stage(self, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if table is self.staging[0]:
            self.staged += len(rows)
        await (await self._bulk()).write(table, columns, rows)

    async def close_reading(self) -> None:
        """After the reading pass: drop the lookup table, and the staging tables too if the file has problems
        (nothing will be written); otherwise give PostgreSQL statistics on them."""
        if self._writer is not None:
            await self._writer.finish()
            self._writer = None
        if self._lookup_ready:
            await drop_staging(self.session, _LOOKUP)
            self._lookup_ready = False
        if self.issues.items or not self.rows:
            await drop_staging(self.session, *self.staging)
        else:
            await analyze(self.session, *self.staging)

    async def close_staging(self) -> None:
        await drop_staging(self.session, *self.staging)

    async def lookup(self, keys: Iterable[tuple[int, str, int | None]]) -> None:
        """Load ``(tag, code, ref_id)`` keys into the lookup table (replacing the previous batch's)."""
        if self._lookup_ready:
            await self.session.execute(delete(_LOOKUP))
        else:
            await create_staging(self.session, _LOOKUP)
            self._lookup_ready = True
        await (await self._bulk()).write(_LOOKUP, ("tag", "code", "ref_id"), list(keys))

    # shared reference resolution ---------------------------------------------------------------------

    async def warehouses(self) -> dict[str, int]:
        """Warehouse code -> id; a value that is no code but the name of exactly one warehouse (Kingdee's
        即时库存 shows the warehouse's name) maps to that warehouse, with a note."""
        if self._warehouses is None:
            rows = (await self.session.execute(select(Warehouse.code, Warehouse.id, Warehouse.name))).all()
            self._warehouses = {c: i for c, i, _ in rows}
            by_name: dict[str, list[tuple[str, int]]] = {}
            for c, i, n in rows:
                if n and n != c:
                    by_name.setdefault(n, []).append((c, i))
            self._wh_by_name = {
                n: v[0] for n, v in by_name.items() if len(v) == 1 and n not in self._warehouses
            }
        return self._warehouses

    def warehouse_id(self, value: str) -> int | None:
        assert self._warehouses is not None
        wid = self._warehouses.get(value)
        if wid is None and value in self._wh_by_name:
            code, wid = self._wh_by_name[value]
            if ("by_name", value) not in self._reported:
                self._reported.add(("by_name", value))
                self.notes.append(
                    ImportIssue(
                        self.sheet.name, None, self.cmap.header.get("warehouse"),
                        f"“{value}”不是仓库编码，按仓库名称对应到仓库 {code}",
                        f'"{value}" is no warehouse code; it was matched by name to warehouse {code}',
                    )
                )  # fmt: skip
        return wid

    async def _zero_stripped(
        self, values: Iterable[str], kind: str, warehouse_id: int | None = None
    ) -> dict[str, str]:
        """For codes made of digits that were not found: a stored code that differs only by leading zeros
        (00123 for 123: Excel drops them from codes it takes for numbers)."""
        digits = {v for v in values if v.isdigit()}
        if not digits:
            return {}
        col: Any = Item.sku if kind == "sku" else Location.code
        stripped_values = sorted({v.lstrip("0") or "0" for v in digits})
        stmt = select(col).where(func.ltrim(col, "0").in_(stripped_values), col.like("0%"))
        if kind != "sku":
            stmt = stmt.where(Location.warehouse_id == warehouse_id)
        out: dict[str, str] = {}
        for (code,) in (await self.session.execute(stmt.limit(1000))).all():
            stripped = code.lstrip("0") or "0"
            for v in digits:
                if (v.lstrip("0") or "0") == stripped and v != code:
                    out.setdefault(v, code)
        return out

    async def resolve(self, batch: list[Any]) -> list[tuple[Any, int, int]]:
        """``(record, item_id, location_id)`` for records whose SKU, warehouse and location exist."""
        await self.warehouses()
        ids = {r.warehouse: self.warehouse_id(r.warehouse) for r in batch}
        k = _LOOKUP.c
        await self.lookup(
            itertools.chain(
                ((_SKU_KEY, sku, None) for sku in {r.sku for r in batch}),
                (
                    (_LOC_KEY, loc, wh)
                    for wh, loc in {
                        (ids[r.warehouse], r.location) for r in batch if ids[r.warehouse] is not None
                    }
                ),
            )
        )
        conn = await self.session.connection()  # Core rows: no ORM result processing
        items: dict[str, int] = {
            sku: i
            for sku, i in await conn.execute(
                select(Item.sku, Item.id).join(_LOOKUP, (k.tag == _SKU_KEY) & (k.code == Item.sku))
            )
        }
        locs = {
            (w, c): i
            for w, c, i in await conn.execute(
                select(Location.warehouse_id, Location.code, Location.id).join(
                    _LOOKUP,
                    (k.tag == _LOC_KEY) & (k.ref_id == Location.warehouse_id) & (k.code == Location.code),
                )
            )
        }
        out = []
        zeros: dict[str, str] = {}
        near_locs: dict[
            tuple[int, str], str
        ] = {}  # (warehouse id, code as given) -> the stored code it lost 0s of
        if not self.issues.full:
            zeros = await self._zero_stripped({r.sku for r in batch if r.sku not in items}, "sku")
            missing: dict[int, set[str]] = {}
            for r in batch:
                wh = ids[r.warehouse]
                if wh is not None and (wh, r.location) not in locs:
                    missing.setdefault(wh, set()).add(r.location)
            for wh, codes in missing.items():  # one query per warehouse, not one per missing location
                near_locs.update(
                    ((wh, c), n) for c, n in (await self._zero_stripped(codes, "location", wh)).items()
                )
        for r in batch:
            item_id, wh_id = items.get(r.sku), ids[r.warehouse]
            loc_id = locs.get((wh_id, r.location)) if wh_id is not None else None
            if item_id is None and ("sku", r.sku) not in self._reported:
                self._reported.add(("sku", r.sku))
                if r.sku in zeros:
                    self.issues.add(
                        r.row,
                        self.cmap.header["sku"],
                        f"物料编码“{r.sku}”不存在，但有物料“{zeros[r.sku]}”：Excel 把编码当成数字，去掉了前面的 0；"
                        "请把这一列设为文本格式，从 ERP 重新导出后再导入",
                        f'SKU "{r.sku}" does not exist, but "{zeros[r.sku]}" does: Excel took the code for a number '
                        "and dropped its leading zeros; format the column as text, export again and import",
                    )
                else:
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
                near = near_locs.get((wh_id, r.location))
                if near:
                    self.issues.add(
                        r.row,
                        self.cmap.header["location"],
                        f"库位“{r.location}”在仓库“{r.warehouse}”中不存在，但有库位“{near}”：Excel 去掉了编码前面的 0；"
                        "请把这一列设为文本格式，重新导出后再导入",
                        f'location "{r.location}" does not exist in warehouse "{r.warehouse}", but "{near}" does: '
                        "Excel dropped the leading zeros; format the column as text, export again and import",
                    )
                else:
                    self.issues.add(
                        r.row,
                        self.cmap.header["location"],
                        f"库位“{r.location}”在仓库“{r.warehouse}”中不存在，请先导入库位（--kind locations）或改正库位编码",
                        f'location "{r.location}" does not exist in warehouse "{r.warehouse}"; import locations '
                        "first (--kind locations) or fix the code",
                    )
            if item_id is not None and loc_id is not None:
                out.append((r, item_id, loc_id))
        return out


def _table(model: type[Base]) -> Table:
    """The Core table: plain executemany, much less overhead than the ORM bulk layer for big batches."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _naive_utc(t: datetime | None) -> datetime | None:
    """How ``UTCDateTime`` stores a time (what a staging table's plain ``DateTime`` column holds)."""
    return None if t is None else t.astimezone(UTC).replace(tzinfo=None)


def _given(new: Any, cur: Any) -> Any:
    """SQL: the file gives a value (not NULL) and it differs from the stored one."""
    return and_(new.is_not(None), cur.is_distinct_from(new))


def _qty_differs(a: Any, b: Any) -> Any:
    """SQL: two quantities differ (at the stored 4 decimals: SQLite computes sums in floating point)."""
    return func.round(a, 4) != func.round(b, 4)


def _count_where(cond: Any) -> Any:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


async def _rowcount(session: AsyncSession, stmt: Any) -> int:
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _pack(item_id: int, location_id: int) -> int:
    return (item_id << 32) | location_id


_IL = _table(ItemLocation)
_ITEM = _table(Item)
_LB = _table(LotBalance)
_MOVE = _table(Movement)


# Staging tables: the reading pass stages the rows to write (first occurrences only); ``write`` applies them.
ITEM_STAGING = staging_table(
    "item_import",
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("sku", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("spec", String(200)),
    Column("unit", String(20)),
    Column("unit_cost", Numeric(18, 4)),
    Column("owner", String(50)),
    Column("lot_tracked", Boolean),
    Column("pinned_class", String(1)),
    Column("pack_unit", String(20)),
    Column("pack_factor", Numeric(18, 4)),
    Column("item_id", Integer),
    Column("owner_id", Integer),
    Column("existed", Boolean),
    Column("changed", Boolean),
    Index("ix_item_import_sku", "sku"),
)
_ITEM_STAGED = (
    "line", "sku", "name", "spec", "unit", "unit_cost", "owner", "lot_tracked", "pinned_class", "pack_unit",
    "pack_factor",
)  # fmt: skip
ITEM_BARCODE_STAGING = staging_table(
    "item_barcode_import",
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("pos", Integer, primary_key=True, autoincrement=False),
    Column("sku", String(64), nullable=False),
    Column("barcode", String(100), nullable=False),
    Index("ix_item_barcode_import_sku", "sku"),
)
LOCATION_STAGING = staging_table(
    "location_import",
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("warehouse", String(50), nullable=False),
    Column("code", String(50), nullable=False),
    Column("barcode", String(100)),
    Column("zone", String(50)),
    Column("sequence", Integer),
)
LOCATION_RANK = staging_table(  # default sequence: a code's rank in its warehouse, in natural order
    "location_import_rank",
    Column("warehouse_id", Integer, nullable=False),
    Column("code", String(50), nullable=False),
    Column("rank", Integer, nullable=False),
    Index("ix_location_import_rank", "warehouse_id", "code"),
)
STOCK_STAGING = staging_table(
    "stock_import",
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("item_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
    Column("lot", String(64)),
    Column("qty", Numeric(18, 4), nullable=False),
    Column("as_of", DateTime),  # naive UTC; NULL: not given
    Column("item_location_id", Integer),  # lot rows: their item-location,
    Column("since", DateTime),  # its snapshot time,
    Column("target", Numeric(18, 4)),  # and the lot balance to set
    Index("ix_stock_import_lot", "item_location_id", "lot"),
)
STOCK_BOOK = staging_table(  # one row per item-location of the file
    "stock_import_book",
    Column("item_id", Integer, nullable=False),
    Column("location_id", Integer, nullable=False),
    Column("item_location_id", Integer),
    Column("qty", Numeric(18, 4), nullable=False),  # the row's quantity, or the sum of the lots
    Column("as_of", DateTime),  # as given (the latest of the lots'); NULL: not given
    Column("since", DateTime, nullable=False),  # the snapshot time: as_of, or now
    Column("lots", Integer, nullable=False),  # 1: given by lot
    Column("target", Numeric(18, 4)),  # the book to set: qty + the movements after ``since``
    Index("ix_stock_import_book", "item_id", "location_id"),
)


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
    staging = (ITEM_STAGING, ITEM_BARCODE_STAGING)
    _zero_skus: set[int] | None = None

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
        await self.open_staging()
        await self._validate()
        await self.close_reading()

    async def _validate(self) -> None:
        self.seen: dict[str, int] = {}  # sku -> digest << 32 | first row
        barcode_seen: dict[str, int] = {}  # barcode -> sku digest << 32 | row
        owners: dict[str, int] = {}
        for batch in self.read_batches():
            self.rows += len(batch)
            pending: dict[str, tuple[str, int]] = {}
            firsts: list[_ItemRec] = []
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
                    else:
                        self.repeats += 1
                    continue
                firsts.append(rec)
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
            await self._leading_zeros(firsts)
            if pending:
                await self.lookup((_BARCODE_KEY, b, None) for b in pending)
                rows = await self.session.execute(
                    select(ItemBarcode.barcode, Item.sku)
                    .join(Item, Item.id == ItemBarcode.item_id)
                    .join(_LOOKUP, (_LOOKUP.c.tag == _BARCODE_KEY) & (_LOOKUP.c.code == ItemBarcode.barcode))
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
            if self.issues.items:
                if self.issues.full:
                    return
                continue  # nothing will be written: stop staging, keep checking
            await self.stage(
                ITEM_STAGING,
                _ITEM_STAGED,
                [
                    (
                        r.row, r.sku, r.name, r.spec, r.unit, r.unit_cost, r.owner, r.lot_tracked, r.pinned_class,
                        r.pack_unit, r.pack_factor,
                    )
                    for r in firsts
                ],
            )  # fmt: skip
            await self.stage(
                ITEM_BARCODE_STAGING,
                ("line", "pos", "sku", "barcode"),
                [(r.row, i, r.sku, b) for r in firsts for i, b in enumerate(r.barcodes)],
            )
        del barcode_seen
        owner_ids: dict[str, int] = {}
        for owner_chunk in chunks(owners):
            owner_rows = await self.session.execute(
                select(User.employee_no, User.id).where(User.employee_no.in_(owner_chunk))
            )
            owner_ids.update((e, i) for e, i in owner_rows)
        for emp, row in owners.items():
            if emp not in owner_ids:
                self.issues.add(
                    row,
                    self.cmap.header["owner"],
                    f"工号“{emp}”的人员不存在，请先导入人员（--kind users）或改正工号",
                    f'no user with employee number "{emp}"; import users first (--kind users) or fix it',
                )

    async def _leading_zeros(self, recs: list[_ItemRec]) -> None:
        """A new SKU of digits that an existing SKU equals but for leading zeros (123 where the master has
        00123) is refused: Excel took the code column for numbers."""
        if self._zero_skus is None:
            self._zero_skus = {
                _digest(sku.lstrip("0"))
                for sku in await self.session.scalars(select(Item.sku).where(Item.sku.like("0%")))
                if sku.isdigit()
            }
        if not self._zero_skus or self.issues.full:
            return
        cands = {
            r.sku: r
            for r in recs
            if r.sku.isdigit() and r.sku[0] != "0" and _digest(r.sku) in self._zero_skus
        }
        if not cands:
            return
        known = set(await self.session.scalars(select(Item.sku).where(Item.sku.in_(sorted(cands)))))
        near = await self._zero_stripped([c for c in cands if c not in known], "sku")
        for sku, other in near.items():
            self.issues.add(
                cands[sku].row,
                self.cmap.header["sku"],
                f"物料编码“{sku}”与已有物料“{other}”只差前面的 0：Excel 可能把编码当成数字，去掉了前面的 0；"
                "请把这一列设为文本格式后重新导出。如果确实是两个不同的物料，请先把其中一个改成不会混淆的编码",
                f'SKU "{sku}" differs from the existing "{other}" only by leading zeros: Excel probably took the '
                "codes for numbers; format the column as text and export again (if they really are two items, give "
                "one of them a code that cannot be mistaken)",
            )

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s, st, c, it = self.session, ITEM_STAGING, ITEM_STAGING.c, _ITEM.c
        bc, un = ITEM_BARCODE_STAGING.c, _table(ItemUnit).c
        report.unchanged += self.repeats
        existed = await _rowcount(s, update(st).where(it.sku == c.sku).values(item_id=it.id, existed=True))
        await s.execute(
            update(st).where(c.owner.is_not(None), User.employee_no == c.owner).values(owner_id=User.id)
        )
        new_code = ~select(ItemBarcode.id).where(ItemBarcode.barcode == bc.barcode).exists()
        same_unit = and_(un.item_id == c.item_id, un.unit == c.pack_unit)
        if existed:
            # what changes for existing items: a given column, a new barcode, a new or changed pack unit
            differs = or_(
                it.name.is_distinct_from(c.name),
                _given(c.spec, it.spec),
                _given(c.unit, it.base_unit),
                _given(c.unit_cost, it.unit_cost),
                _given(c.owner_id, it.owner_id),
                _given(c.lot_tracked, it.lot_tracked),
                _given(c.pinned_class, it.pinned_class),
            )
            await s.execute(update(st).where(it.id == c.item_id, differs).values(changed=True))
            gains_code = select(bc.line).where(bc.sku == c.sku, new_code).exists()
            new_unit = and_(
                c.pack_unit.is_not(None), ~select(un.id).where(same_unit, un.factor == c.pack_factor).exists()
            )
            await s.execute(
                update(st)
                .where(c.existed.is_(True), c.changed.is_(None), or_(gains_code, new_unit))
                .values(changed=True)
            )
            await s.execute(
                update(_ITEM)
                .where(it.id == c.item_id, c.changed.is_(True))
                .values(
                    name=c.name,
                    spec=func.coalesce(c.spec, it.spec),
                    base_unit=func.coalesce(c.unit, it.base_unit),
                    unit_cost=func.coalesce(c.unit_cost, it.unit_cost),
                    owner_id=func.coalesce(c.owner_id, it.owner_id),
                    lot_tracked=func.coalesce(c.lot_tracked, it.lot_tracked),
                    pinned_class=func.coalesce(c.pinned_class, it.pinned_class),
                )
            )
            await s.execute(
                update(_table(ItemUnit))
                .where(same_unit, un.factor.is_distinct_from(c.pack_factor))
                .values(factor=c.pack_factor)
            )
        created = await _rowcount(
            s,
            insert(_ITEM).from_select(
                [
                    "sku", "name", "spec", "base_unit", "unit_cost", "owner_id", "lot_tracked", "pinned_class",
                    "abc_class", "created_at",
                ],
                select(
                    c.sku, c.name, c.spec, func.coalesce(c.unit, "个"), func.coalesce(c.unit_cost, 0), c.owner_id,
                    func.coalesce(c.lot_tracked, false()), c.pinned_class, func.coalesce(c.pinned_class, "C"),
                    literal(self.now, UTCDateTime),
                )
                .where(c.item_id.is_(None))
                .order_by(c.line),
            ),
        )  # fmt: skip
        # barcodes: add the missing ones (never remove: old labels still scan)
        await s.execute(
            insert(_table(ItemBarcode)).from_select(
                ["barcode", "item_id", "unit"],
                select(bc.barcode, it.id, null())
                .join(_ITEM, it.sku == bc.sku)
                .where(new_code)
                .order_by(bc.line, bc.pos),
            )
        )
        # pack units: add the new ones (changed factors were updated above)
        await s.execute(
            insert(_table(ItemUnit)).from_select(
                ["item_id", "unit", "factor"],
                select(it.id, c.pack_unit, c.pack_factor)
                .join(_ITEM, it.sku == c.sku)
                .where(
                    c.pack_unit.is_not(None),
                    ~select(un.id).where(un.item_id == it.id, un.unit == c.pack_unit).exists(),
                )
                .order_by(c.line),
            )
        )
        updated = 0
        if existed:
            updated = int(await s.scalar(select(_count_where(c.changed.is_(True))).select_from(st)) or 0)
        report.created += created
        report.updated += updated
        report.unchanged += self.staged - created - updated
        await self.close_staging()


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
    default_team: str | None = None
    zone_team: str | None = None

    def digest(self) -> int:
        return _digest(
            self.barcode, self.zone, self.warehouse_name, self.sequence, self.default_team, self.zone_team
        )


class _Locations(_Importer):
    kind = "locations"
    staging = (LOCATION_STAGING, LOCATION_RANK)

    def parse(self, r: _Row) -> _LocRec:
        return _LocRec(
            r.n,
            r.text("warehouse", True) or "",
            r.text("location", True) or "",
            r.text("location_barcode"),
            r.text("zone"),
            r.text("warehouse_name"),
            r.parsed("sequence", parse_int),
            r.text("default_team"),
            r.text("zone_team"),
        )

    async def validate(self) -> None:
        await self.open_staging()
        await self._validate()
        await self.close_reading()

    async def _validate(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}
        self.wh_names: dict[str, tuple[str, int]] = {}
        self.wh_teams: dict[str, tuple[str, int]] = {}  # warehouse -> (default team, first row)
        self.zone_teams: dict[tuple[str, str], tuple[str, int]] = {}
        self.zones: set[tuple[str, str]] = set()
        barcode_seen: dict[str, int] = {}
        for batch in self.read_batches():
            self.rows += len(batch)
            pending: dict[str, _LocRec] = {}
            firsts: list[_LocRec] = []
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
                    else:
                        self.repeats += 1
                    continue
                firsts.append(rec)
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
                if rec.default_team:
                    team, row = self.wh_teams.setdefault(rec.warehouse, (rec.default_team, rec.row))
                    if team != rec.default_team:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["default_team"],
                            f"仓库“{rec.warehouse}”在第 {row} 行的默认班组是“{team}”，这里是“{rec.default_team}”，"
                            "一个仓库只有一个默认班组，请统一",
                            f'warehouse "{rec.warehouse}" has default team "{team}" in row {row} but '
                            f'"{rec.default_team}" here; a warehouse has one default team',
                        )
                if rec.zone_team:
                    if not rec.zone:
                        self.issues.add(
                            rec.row,
                            self.cmap.header["zone_team"],
                            "填写了库区班组但没有库区，请填写库区或清空库区班组",
                            "a zone team without a zone; fill in the zone or clear the zone team",
                        )
                    else:
                        zkey = (rec.warehouse, rec.zone)
                        team, row = self.zone_teams.setdefault(zkey, (rec.zone_team, rec.row))
                        if team != rec.zone_team:
                            self.issues.add(
                                rec.row,
                                self.cmap.header["zone_team"],
                                f"库区“{rec.warehouse}/{rec.zone}”在第 {row} 行的班组是“{team}”，这里是“{rec.zone_team}”，"
                                "请统一",
                                f'zone "{rec.warehouse}/{rec.zone}" has team "{team}" in row {row} but '
                                f'"{rec.zone_team}" here; use one team',
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
            if pending:
                await self.lookup((_LOC_BARCODE_KEY, b, None) for b in pending)
                rows = await self.session.execute(
                    select(Location.barcode, Warehouse.code, Location.code)
                    .join(Warehouse, Warehouse.id == Location.warehouse_id)
                    .join(_LOOKUP, (_LOOKUP.c.tag == _LOC_BARCODE_KEY) & (_LOOKUP.c.code == Location.barcode))
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
            if self.issues.items:
                if self.issues.full:
                    return
                continue  # nothing will be written: stop staging, keep checking
            await self.stage(
                LOCATION_STAGING,
                ("line", "warehouse", "code", "barcode", "zone", "sequence"),
                [(r.row, r.warehouse, r.location, r.barcode, r.zone, r.sequence) for r in firsts],
            )

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s = self.session
        report.unchanged += self.repeats
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
            await s.execute(insert(Zone), new_zones)
        await self._write_teams(wh_id)
        # default sequence: rank among all codes of the warehouse (database and file), in natural order
        writer = BulkWriter(s)
        await writer.start()
        for code, wid in wh_id.items():
            codes = set(await s.scalars(select(Location.code).where(Location.warehouse_id == wid)))
            in_file = {loc for w, loc in self.seen if w == code}
            codes.update(in_file)
            await writer.write(
                LOCATION_RANK,
                ("warehouse_id", "code", "rank"),
                [(wid, c, i) for i, c in enumerate(sorted(codes, key=natural_key), start=1) if c in in_file],
            )
        await writer.finish()
        await analyze(s, LOCATION_RANK)
        c, rk, loc = LOCATION_STAGING.c, LOCATION_RANK.c, _table(Location).c
        # each row with its warehouse, zone and sequence resolved; the statements below join it
        r = (
            select(
                c.line,
                c.code,
                c.barcode,
                Warehouse.id.label("warehouse_id"),
                Zone.id.label("zone_id"),
                func.coalesce(c.sequence, rk.rank).label("sequence"),
            )
            .join_from(LOCATION_STAGING, Warehouse, Warehouse.code == c.warehouse)
            .outerjoin(Zone, and_(Zone.warehouse_id == Warehouse.id, Zone.code == c.zone))
            .outerjoin(LOCATION_RANK, and_(rk.warehouse_id == Warehouse.id, rk.code == c.code))
            .subquery("resolved")
        ).c
        same = and_(loc.warehouse_id == r.warehouse_id, loc.code == r.code)
        differs = or_(
            _given(r.zone_id, loc.zone_id), _given(r.barcode, loc.barcode), loc.sequence != r.sequence
        )
        updated = await _rowcount(
            s,
            update(_table(Location))
            .where(same, differs)
            .values(
                zone_id=func.coalesce(r.zone_id, loc.zone_id),
                barcode=func.coalesce(r.barcode, loc.barcode),
                sequence=r.sequence,
            ),
        )
        created = await _rowcount(
            s,
            insert(_table(Location)).from_select(
                ["warehouse_id", "code", "zone_id", "barcode", "sequence"],
                select(r.warehouse_id, r.code, r.zone_id, r.barcode, r.sequence)
                .where(~select(loc.id).where(same).exists())
                .order_by(r.line),
            ),
        )
        report.created += created
        report.updated += updated
        report.unchanged += self.staged - created - updated
        await self.close_staging()

    async def _write_teams(self, wh_id: dict[str, int]) -> None:
        """Warehouses' default teams and zones' teams (teams are created if missing); each change is a note."""
        if not self.wh_teams and not self.zone_teams:
            return
        s = self.session
        names = {t for t, _ in self.wh_teams.values()} | {t for t, _ in self.zone_teams.values()}
        teams = dict(
            (n, i) for n, i in await s.execute(select(Team.name, Team.id).where(Team.name.in_(names)))
        )
        for name in sorted(names - teams.keys()):
            tid = await s.scalar(insert(Team).values(name=name).returning(Team.id))
            assert tid is not None
            teams[name] = tid
        current = dict(
            (i, t)
            for i, t in await s.execute(
                select(Warehouse.id, Warehouse.default_team_id).where(
                    Warehouse.id.in_([wh_id[w] for w in self.wh_teams])
                )
            )
        )
        for wh, (team, _) in sorted(self.wh_teams.items()):
            if current.get(wh_id[wh]) != teams[team]:
                await s.execute(
                    update(Warehouse).where(Warehouse.id == wh_id[wh]).values(default_team_id=teams[team])
                )
                self.notes.append(
                    ImportIssue(
                        self.sheet.name, None, self.cmap.header["default_team"],
                        f"仓库 {wh} 的默认班组设为“{team}”", f'warehouse {wh}: default team set to "{team}"',
                    )
                )  # fmt: skip
        for (wh, zone), (team, _) in sorted(self.zone_teams.items()):
            zid, cur = (
                await s.execute(
                    select(Zone.id, Zone.team_id).where(Zone.warehouse_id == wh_id[wh], Zone.code == zone)
                )
            ).one()
            if cur != teams[team]:
                await s.execute(update(Zone).where(Zone.id == zid).values(team_id=teams[team]))
                self.notes.append(
                    ImportIssue(
                        self.sheet.name, None, self.cmap.header["zone_team"],
                        f"库区 {wh}/{zone} 的班组设为“{team}”", f'zone {wh}/{zone}: team set to "{team}"',
                    )
                )  # fmt: skip


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
    staging = (STOCK_STAGING, STOCK_BOOK)

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
        await self.open_staging()
        await self._validate()
        await self.close_reading()

    async def _validate(self) -> None:
        # item-location key (or (key, lot)) -> digest << 32 | first row
        self.seen: dict[int | tuple[int, str], int] = {}
        lot_ils: set[int] = set()  # item-locations given by lot
        for batch in self.read_batches():
            self.rows += len(batch)
            firsts: list[tuple[Any, ...]] = []
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
                    else:
                        self.repeats += 1
                    continue
                if (rec.lot and il in self.seen) or (not rec.lot and il in lot_ils):
                    self.issues.add(
                        rec.row,
                        self.cmap.header.get("lot"),
                        f"“{rec.sku} @ {rec.warehouse}/{rec.location}”既有带批次的行又有不带批次的行，请统一",
                        f'"{rec.sku} @ {rec.warehouse}/{rec.location}" has rows with and without a lot; '
                        "use lots on all of them or on none",
                    )
                    continue
                if rec.lot:
                    lot_ils.add(il)
                firsts.append((rec.row, item_id, loc_id, rec.lot, rec.qty, _naive_utc(rec.as_of)))
            if self.issues.items:
                if self.issues.full:
                    return
                continue  # nothing will be written: stop staging, keep checking
            await self.stage(STOCK_STAGING, ("line", "item_id", "location_id", "lot", "qty", "as_of"), firsts)

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        """Set the book of each item-location in the file (see the module docstring of ``core.stock``): the
        snapshot's quantity plus the movements already in the ledger after the snapshot time."""
        s, st, c, bk, il = self.session, STOCK_STAGING, STOCK_STAGING.c, STOCK_BOOK.c, _IL.c
        report.unchanged += self.repeats
        now = literal(_naive_utc(self.now), DateTime)
        # one book per item-location: a plain row, or the sum of its lots at the latest of their times
        await s.execute(
            insert(STOCK_BOOK).from_select(
                ["item_id", "location_id", "qty", "as_of", "since", "lots"],
                select(
                    c.item_id,
                    c.location_id,
                    func.sum(c.qty),
                    func.max(c.as_of),
                    func.coalesce(func.max(c.as_of), now),
                    func.max(case((c.lot.is_(None), 0), else_=1)),
                ).group_by(c.item_id, c.location_id),
            )
        )
        await analyze(s, STOCK_BOOK)
        # new item-locations start with their book (no movement can be recorded against them yet)
        before = await s.scalar(select(func.max(il.id))) or 0
        await ensure_staged_item_locations(s, bk.item_id, bk.location_id, qty=bk.qty, book_as_of=bk.since)
        await s.execute(
            update(STOCK_BOOK)
            .where(il.item_id == bk.item_id, il.location_id == bk.location_id)
            .values(item_location_id=il.id)
        )
        old = bk.item_location_id <= before
        moved_after = (
            select(func.coalesce(func.sum(_MOVE.c.qty), 0))
            .where(_MOVE.c.item_location_id == bk.item_location_id, _MOVE.c.occurred_at > bk.since)
            .scalar_subquery()
        )
        await s.execute(update(STOCK_BOOK).where(old).values(target=bk.qty + moved_after))
        # plain rows are counted by item-location, lot rows by lot balance
        differs = and_(old, or_(_qty_differs(il.qty, bk.target), _given(bk.as_of, il.book_as_of)))
        created, updated, rows = (
            await s.execute(
                select(_count_where(~old), _count_where(differs), func.count())
                .select_from(STOCK_BOOK)
                .join(_IL, il.id == bk.item_location_id)
                .where(bk.lots == 0)
            )
        ).one()
        await s.execute(
            update(_IL)
            .where(il.id == bk.item_location_id, differs)
            .values(qty=bk.target, book_as_of=bk.since)
        )
        report.created += int(created)
        report.updated += int(updated)
        report.unchanged += int(rows) - int(created) - int(updated)
        if await s.scalar(select(func.count()).select_from(STOCK_BOOK).where(bk.lots == 1)):
            await s.execute(
                update(st)
                .where(c.lot.is_not(None), bk.item_id == c.item_id, bk.location_id == c.location_id)
                .values(item_location_id=bk.item_location_id, since=bk.since)
            )
            await self._write_lots(report)
        await self.close_staging()

    async def _write_lots(self, report: ImportReport) -> None:
        """Lot balances: each lot row's quantity plus the lot's movements after the snapshot time; lots of
        these item-locations that the file does not list drop to 0."""
        s, st, c, bk, lb, mv = self.session, STOCK_STAGING, STOCK_STAGING.c, STOCK_BOOK.c, _LB.c, _MOVE.c
        lot_moved = (
            select(func.coalesce(func.sum(mv.qty), 0))
            .where(mv.item_location_id == c.item_location_id, mv.lot == c.lot, mv.occurred_at > c.since)
            .scalar_subquery()
        )
        await s.execute(update(st).where(c.lot.is_not(None)).values(target=c.qty + lot_moved))
        same_lot = and_(lb.item_location_id == c.item_location_id, lb.lot == c.lot)
        exists = select(lb.id).where(same_lot).exists()
        created, updated, rows = (
            await s.execute(
                select(
                    _count_where(~exists),
                    _count_where(select(lb.id).where(same_lot, _qty_differs(lb.qty, c.target)).exists()),
                    func.count(),
                ).where(c.lot.is_not(None))
            )
        ).one()
        await s.execute(update(_LB).where(same_lot, _qty_differs(lb.qty, c.target)).values(qty=c.target))
        await s.execute(
            insert(_LB).from_select(
                ["item_location_id", "lot", "qty"],
                select(c.item_location_id, c.lot, c.target)
                .where(c.lot.is_not(None), ~exists)
                .order_by(c.line),
            )
        )
        listed = select(c.line).where(c.item_location_id == lb.item_location_id, c.lot == lb.lot).exists()
        await s.execute(
            update(_LB)
            .where(
                lb.item_location_id.in_(select(bk.item_location_id).where(bk.lots == 1)),
                lb.qty != 0,
                ~listed,
            )
            .values(qty=0)
        )
        report.created += int(created)
        report.updated += int(updated)
        report.unchanged += int(rows) - int(created) - int(updated)


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
    staging = (MOVEMENT_STAGING,)

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
        await self.open_staging()
        occurrences: dict[int, int] = {}  # identical lines in this file: first 8 bytes of the key -> count
        for batch in self.read_batches():
            self.rows += len(batch)
            lines = []
            for rec, item_id, loc_id in await self.resolve(batch):
                base = rec.natural_key()
                short = int(base[:16], 16)
                n = occurrences[short] = occurrences.get(short, 0) + 1
                lines.append(
                    (
                        rec.row, item_id, loc_id, rec.lot, rec.qty, rec.type.value, _naive_utc(rec.occurred_at),
                        rec.source_doc, f"{base}:{n}",
                    )
                )  # fmt: skip
            if self.issues.items:
                if self.issues.full:
                    break
                continue  # nothing will be written: stop staging, keep checking
            await self.stage(MOVEMENT_STAGING, STAGED_LINE[:3] + STAGED_LINE[4:], lines)
        await self.close_reading()

    async def write(self, report: ImportReport, progress: Callable[[int], None] | None) -> None:
        s, st, c, il = self.session, MOVEMENT_STAGING, MOVEMENT_STAGING.c, _IL.c
        await ensure_staged_item_locations(s, c.item_id, c.location_id)
        await s.execute(
            update(st)
            .where(il.item_id == c.item_id, il.location_id == c.location_id)
            .values(item_location_id=il.id)
        )
        created = await apply_staged_movements(s, st, recorded_at=self.now)
        report.created += created
        report.unchanged += self.staged - created
        await self.close_staging()


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
    locale: str | None

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
            self.locale,
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
            r.parsed("locale", parse_locale),
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
                        User.locale,
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
                if r.locale:
                    vals["locale"] = r.locale
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
        await s.flush()
        report.notes += [_nobody_note(self.sheet.name, code) for code in await warehouses_without_counters(s)]


async def warehouses_without_counters(session: AsyncSession) -> list[str]:
    """Codes of the warehouses whose work no one can be given: no active counter with capacity is in the
    warehouse's default team, in the team of one of its zones, or covers one of its zones (the planner's
    pools; an item's owner only takes that item's work)."""
    counters = [u for u in await holders(session, Role.COUNTER) if u.capacity_minutes > 0]
    covered = set().union(*(await sites(session, counters)).values())
    codes = (await session.execute(select(Warehouse.id, Warehouse.code).order_by(Warehouse.code))).all()
    return [code for wid, code in codes if wid not in covered]


def _nobody_note(file: str, code: str) -> ImportIssue:
    return ImportIssue(
        file,
        None,
        None,
        f"仓库 {code} 没有可分配的盘点员：没有在职、有产能的盘点员属于它的默认班组或它某个库区的班组，也没有人负责它的库区，"
        "它的盘点任务将无人可派。请在人员表中给盘点员填写团队（团队/班组）或库区，或在库位表中填写默认班组，"
        f"或执行 pandian warehouse set-team {code} --team 班组名",
        f"warehouse {code} has no counter who can be given its work: no active counter with capacity is in its "
        "default team or the team of one of its zones, and nobody covers one of its zones, so its count tasks will "
        "stay unassigned; give counters a team or zones in the users file, or a default team in the locations file, "
        f"or run pandian warehouse set-team {code} --team TEAM",
    )


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
    now: datetime,
    limits: ImportSettings | None = None,
    stage: Callable[[str, int], None] | None = None,
) -> ImportReport:
    """Validate the whole file, then upsert it (see the module docstring). Flushes, never commits.

    ``progress(rows_done)`` is called after the first batch and then every few thousand rows read (users:
    written). ``stage(name, rows)`` is called as each step starts: ``checking`` (the file's encoding, or an
    .xlsx's size limits, ``limits``), ``reading`` (reading and checking every row), ``writing`` (with the rows
    read; the set-based statements report no progress of their own) and ``done``. ``now`` (aware) is the
    default stock snapshot time and the movements' ``recorded_at`` (the caller's clock). The report's
    ``notes`` say what was worth knowing but not wrong (columns ignored, a warehouse without counters...).
    """
    path = Path(path)
    if stage:
        stage("checking", 0)
    sheet = Sheet(path, limits)
    guessed = kind is None
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
        if guessed:  # say what the file was taken for, so the messages make sense
            header_issues.append(
                ImportIssue(
                    sheet.name, None, None,
                    f"按表头判断这是{KIND_ZH[kind]}文件（{kind}）；如果不是，请用 --kind 指定类型",
                    f"from its headers this was taken for a {kind} file; if it is not, pass --kind",
                )
            )  # fmt: skip
        raise ImportFailed(header_issues)
    importer = _IMPORTERS[kind](session, sheet, cmap, tz, now)
    importer.progress = progress
    if stage:
        stage("reading", 0)
    await importer.validate()
    importer.issues.raise_if_any()
    if importer.rows == 0:
        raise _fail(
            sheet.name,
            "只有表头，没有数据行，请从第二行起填写数据",
            "the file has headers but no data rows; fill in data from row 2",
        )
    report = ImportReport(kind=kind, rows=importer.rows)
    if stage:
        stage("writing", importer.rows)
    await importer.write(report, progress)
    await session.flush()
    # columns left out first, then what reading found, then what writing found (users: warehouses with nobody)
    columns = [ignored_note(sheet.name, kind, cmap.ignored)] if cmap.ignored else []
    report.notes = [*columns, *importer.notes, *report.notes]
    lots = importer.issues.flags.get("lot_serial")
    if lots:
        count, row, value = lots
        d = excel_serial_date(value)
        report.notes.append(
            ImportIssue(
                sheet.name, row, cmap.header.get("lot"),
                f"批次“{cell_text(value)}”像是 Excel 的日期序号（即 {d}），这样的批次共 {count} 个；"
                "如果批次本来是日期，请把这一列设为文本格式后重新导出",
                f'lot "{cell_text(value)}" looks like an Excel date serial number ({d}), and {count} lots do; if the '
                "lots were dates, format the column as text and export again",
            )
        )  # fmt: skip
    if stage:
        stage("done", importer.rows)
    return report
