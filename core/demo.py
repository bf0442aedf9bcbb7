"""A realistic demo company, generated from a fixed seed.

``generate_demo`` fills an empty database with two warehouses, their zones and bins, a catalogue of items with
Chinese names, EAN-13 barcodes and pack units, the item-locations that hold them, a year of movements that
explain every book quantity, and eight users covering every role. The same seed and the same ``today`` give
the same data, byte for byte: the only randomness is one ``random.Random(seed)``.

It scales to a million item-locations: big tables are written with bulk Core inserts in chunks and explicit
ids, the per-item state lives in compact arrays, and the ledger is capped (``movements_per_item``).

Book rule (the one ``core.stock`` follows): ``book_as_of`` is NULL, so ``ItemLocation.qty`` is exactly the sum
of the item-location's movements. Lot-tracked stock is kept first-in first-out: every movement of a
lot-tracked item carries a lot, and each ``LotBalance`` is the sum of its lot's movements.

Never commits; the caller owns the unit of work.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import BulkWriter
from core.models import (
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
    Warehouse,
    Zone,
)

LOC_COLS = ("id", "warehouse_id", "zone_id", "code", "barcode", "sequence")
ITEM_COLS = (
    "id",
    "sku",
    "name",
    "spec",
    "base_unit",
    "unit_cost",
    "owner_id",
    "lot_tracked",
    "abc_class",
    "pinned_class",
    "created_at",
)
UNIT_COLS = ("id", "item_id", "unit", "factor")
BARCODE_COLS = ("id", "barcode", "item_id", "unit")
IL_COLS = (
    "id",
    "item_id",
    "location_id",
    "warehouse_id",
    "qty",
    "book_as_of",
    "rotation_seq",
    "last_movement_at",
    "last_counted_at",
    "turnover_value",
)
LOT_COLS = ("id", "item_location_id", "lot", "qty", "expires_on")
MOVE_COLS = (
    "id",
    "item_id",
    "location_id",
    "item_location_id",
    "lot",
    "qty",
    "type",
    "occurred_at",
    "recorded_at",
    "source_doc",
    "import_key",
)
RECEIPT, ISSUE, PRODUCTION_ISSUE, TRANSFER, ADJUSTMENT = (
    MovementType.RECEIPT.value,
    MovementType.ISSUE.value,
    MovementType.PRODUCTION_ISSUE.value,
    MovementType.TRANSFER.value,
    MovementType.ADJUSTMENT.value,
)

DEFAULT_SEED = 20261128
HISTORY_DAYS = 365
MAX_LEDGER_ROWS = 3_000_000  # the automatic ledger cap: large demos get fewer movements per item-location
CHUNK_ITEMS = 4000
INSERT_BATCH = 5000

Progress = Callable[[str], None]


@dataclass(slots=True)
class DemoSummary:
    warehouses: int = 0
    zones: int = 0
    locations: int = 0
    items: int = 0
    item_locations: int = 0
    movements: int = 0
    users: int = 0
    negative: int = 0
    zero: int = 0


# ------------------------------------------------------------------------------------------------ catalogue


def _pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    return seq[int(rng.random() * len(seq))]


def _spec_bolt(rng: random.Random) -> str:
    d = _pick(rng, (3, 4, 5, 6, 8, 10, 12, 16, 20))
    return f"M{d}×{_pick(rng, (8, 10, 12, 16, 20, 25, 30, 35, 40, 50, 60, 80, 100))}"


def _spec_nut(rng: random.Random) -> str:
    return f"M{_pick(rng, (3, 4, 5, 6, 8, 10, 12, 16, 20, 24))}"


def _spec_bearing(rng: random.Random) -> str:
    series = _pick(rng, ("60", "62", "63", "68", "69"))
    return f"{series}{_pick(rng, range(0, 13)):02d}-{_pick(rng, ('2RS', 'ZZ', 'OPEN', '2Z'))}"


def _spec_taper(rng: random.Random) -> str:
    return f"{_pick(rng, ('302', '303', '322', '320'))}{_pick(rng, range(3, 21)):02d}"


_ELECTRICAL: list[tuple[str, Callable[[random.Random], str]]] = [
    ("电源适配器", lambda r: f"{_pick(r, (5, 9, 12, 19, 24))}V{_pick(r, (1, 2, 3, 5))}A"),
    (
        "交流接触器",
        lambda r: (
            f"CJX2-{_pick(r, ('0910', '1210', '1810', '2510', '3210'))} {_pick(r, ('AC220V', 'AC380V', 'AC36V'))}"
        ),
    ),
    (
        "小型断路器",
        lambda r: (
            f"DZ47-63 {_pick(r, ('1P', '2P', '3P', '4P'))} C{_pick(r, (6, 10, 16, 20, 25, 32, 40, 63))}"
        ),
    ),
    ("中间继电器", lambda r: f"{_pick(r, ('MY2NJ', 'MY4NJ', 'HH52P', 'HH54P'))} DC{_pick(r, (12, 24))}V"),
    ("开关电源", lambda r: f"S-{_pick(r, (50, 100, 150, 250, 350))}-{_pick(r, (5, 12, 24))}"),
    ("接近开关", lambda r: f"LJ{_pick(r, (12, 18, 30))}A3-{_pick(r, (4, 5, 8, 10))}-Z/BX"),
    ("按钮开关", lambda r: f"LA38-{_pick(r, ('11', '11D', '11ZS', '20'))}"),
    ("指示灯", lambda r: f"AD16-22D/S {_pick(r, ('红', '绿', '黄', '白'))} {_pick(r, ('AC220V', 'DC24V'))}"),
    ("变频器", lambda r: f"{_pick(r, (0.75, 1.5, 2.2, 4.0, 5.5, 7.5))}kW 380V"),
]

_CABLE: list[tuple[str, Callable[[random.Random], str]]] = [
    (
        "护套电缆 RVV",
        lambda r: f"{_pick(r, (2, 3, 4, 5))}×{_pick(r, ('0.5', '0.75', '1.0', '1.5', '2.5', '4'))}",
    ),
    ("屏蔽线 RVVP", lambda r: f"{_pick(r, (2, 4, 6, 8))}×{_pick(r, ('0.3', '0.5', '0.75'))}"),
    ("网线", lambda r: f"{_pick(r, ('CAT5e', 'CAT6', 'CAT6A'))} {_pick(r, ('UTP', 'FTP'))}"),
    ("电力电缆 YJV", lambda r: f"{_pick(r, (3, 4))}×{_pick(r, (10, 16, 25, 35, 50))}"),
    ("拖链电缆", lambda r: f"TRVV {_pick(r, (4, 6, 8, 12))}×{_pick(r, ('0.3', '0.5', '0.75'))}"),
]

_PACKAGING: list[tuple[str, Callable[[random.Random], str], str]] = [
    (
        "包装纸箱",
        lambda r: (
            f"{_pick(r, ('三层', '五层'))} {_pick(r, (300, 400, 500, 600))}×{_pick(r, (200, 300, 400))}×{_pick(r, (200, 300, 400))}"
        ),
        "个",
    ),
    ("缠绕膜", lambda r: f"{_pick(r, (450, 500))}mm×{_pick(r, (15, 20, 23, 25))}μm", "卷"),
    ("封箱胶带", lambda r: f"{_pick(r, (45, 48, 60))}mm×{_pick(r, (50, 100, 150))}m", "卷"),
    ("气泡膜", lambda r: f"{_pick(r, ('0.6', '1.0', '1.2'))}m×50m", "卷"),
    ("珍珠棉", lambda r: f"EPE {_pick(r, (2, 3, 5, 10))}mm", "卷"),
    ("打包带", lambda r: f"PP {_pick(r, (12, 15, 16))}mm", "卷"),
    ("塑料托盘", lambda r: f"{_pick(r, ('1200×1000', '1100×1100', '1200×800'))} 川字", "个"),
    ("不干胶标签纸", lambda r: f"{_pick(r, (40, 60, 80, 100))}×{_pick(r, (30, 40, 60, 100))}mm", "卷"),
]

_CHEMICALS: list[tuple[str, Callable[[random.Random], str]]] = [
    ("环氧树脂", lambda r: _pick(r, ("E-44", "E-51", "E-12"))),
    ("锂基润滑脂", lambda r: f"{_pick(r, ('0#', '1#', '2#', '3#'))}"),
    ("乳化切削液", lambda r: f"{_pick(r, ('通用型', '防锈型', '半合成'))}"),
    ("工业酒精", lambda r: f"{_pick(r, ('95%', '99.7%'))}"),
    ("防锈油", lambda r: f"{_pick(r, ('薄层', '长效', '脱水型'))}"),
    ("抗磨液压油", lambda r: f"L-HM{_pick(r, (32, 46, 68))}"),
    ("硅酮密封胶", lambda r: f"{_pick(r, ('中性', '酸性'))} {_pick(r, ('透明', '白色', '黑色'))}"),
    ("稀释剂", lambda r: f"{_pick(r, ('环氧', '聚氨酯', '硝基'))}"),
]

_ELECTRONICS: list[tuple[str, Callable[[random.Random], str]]] = [
    (
        "贴片电阻",
        lambda r: (
            f"{_pick(r, ('0402', '0603', '0805'))} {_pick(r, ('100Ω', '1kΩ', '4.7kΩ', '10kΩ', '100kΩ'))} ±1%"
        ),
    ),
    (
        "贴片电容",
        lambda r: (
            f"{_pick(r, ('0402', '0603', '0805'))} {_pick(r, ('10nF', '100nF', '1μF', '10μF'))} {_pick(r, (16, 25, 50))}V"
        ),
    ),
    ("电解电容", lambda r: f"{_pick(r, (47, 100, 220, 470, 1000))}μF {_pick(r, (16, 25, 35, 50))}V"),
    ("单片机", lambda r: _pick(r, ("STM32F103C8T6", "STM32G030F6P6", "GD32F303RCT6", "ESP32-WROOM-32E"))),
    ("整流二极管", lambda r: _pick(r, ("1N4007", "1N5819", "SS34", "M7"))),
    ("三极管", lambda r: _pick(r, ("S8050", "S8550", "2N3904", "MMBT3904"))),
    ("LED灯珠", lambda r: f"{_pick(r, ('2835', '5050', '3528'))} {_pick(r, ('白光', '暖白', '红光'))}"),
    ("无源晶振", lambda r: f"{_pick(r, (8, 12, 16, 25))}MHz {_pick(r, ('3225', 'HC-49S'))}"),
]

_FINISHED: list[tuple[str, Callable[[random.Random], str]]] = [
    ("智能插座", lambda r: f"SP-{_pick(r, (10, 16))}A {_pick(r, ('WiFi', '蓝牙', 'Zigbee'))}"),
    ("蓝牙音箱", lambda r: f"BT-{_pick(r, ('M1', 'M2', 'S3', 'X5'))} {_pick(r, ('黑色', '白色', '蓝色'))}"),
    ("无线充电器", lambda r: f"WC-{_pick(r, (10, 15, 20))}W"),
    ("移动电源", lambda r: f"{_pick(r, (5000, 10000, 20000))}mAh {_pick(r, ('白色', '黑色'))}"),
    ("LED台灯", lambda r: f"TL-{_pick(r, ('01', '02', '05'))} {_pick(r, ('护眼', '充电', '折叠'))}"),
    ("电动牙刷", lambda r: f"ET-{_pick(r, (3, 5, 7))} {_pick(r, ('粉色', '白色', '黑色'))}"),
    ("智能手环", lambda r: f"BAND-{_pick(r, (6, 7, 8))} {_pick(r, ('NFC', '标准版'))}"),
    ("USB-C数据线", lambda r: f"{_pick(r, ('1m', '1.5m', '2m'))} {_pick(r, ('60W', '100W', '240W'))}"),
]

_TOOLS: list[tuple[str, Callable[[random.Random], str], str]] = [
    ("麻花钻头", lambda r: f"HSS Φ{_pick(r, (3, 4, 5, 6, 6.5, 8, 10, 12, 13))}mm", "支"),
    ("树脂砂轮片", lambda r: f"{_pick(r, (100, 125, 150))}×6×16", "片"),
    (
        "金属切割片",
        lambda r: f"{_pick(r, (105, 125, 355))}×{_pick(r, ('1.2', '1.6', '3.0'))}×{_pick(r, (16, 22, 25))}",
        "片",
    ),
    ("劳保手套", lambda r: f"{_pick(r, ('丁腈浸胶', '棉纱', 'PU涂掌'))} {_pick(r, ('M', 'L', 'XL'))}", "双"),
    ("防护眼镜", lambda r: f"{_pick(r, ('防雾', '防冲击'))}", "副"),
    ("美工刀片", lambda r: f"{_pick(r, (9, 18, 25))}mm", "盒"),
    ("水磨砂纸", lambda r: f"P{_pick(r, (80, 120, 240, 400, 600, 800, 1000))}", "张"),
]

_PIPES: list[tuple[str, Callable[[random.Random], str], str]] = [
    (
        "304不锈钢管",
        lambda r: f"Φ{_pick(r, (16, 19, 25, 32, 38, 51))}×{_pick(r, ('1.0', '1.2', '1.5', '2.0'))}",
        "米",
    ),
    ("镀锌钢管", lambda r: f"DN{_pick(r, (15, 20, 25, 32, 40, 50))}", "米"),
    ("PVC弯头", lambda r: f"DN{_pick(r, (20, 25, 32, 50, 75, 110))} 90°", "个"),
    ("不锈钢球阀", lambda r: f"DN{_pick(r, (15, 20, 25, 32, 40, 50))} PN16", "个"),
    ("平焊法兰", lambda r: f"DN{_pick(r, (25, 32, 40, 50, 65, 80, 100))} PN16", "个"),
]

_RAW: list[tuple[str, Callable[[random.Random], str], str]] = [
    ("冷轧钢板", lambda r: f"SPCC {_pick(r, ('0.8', '1.0', '1.2', '1.5', '2.0'))}×1250×2500", "千克"),
    ("铝型材", lambda r: f"{_pick(r, ('2020', '3030', '4040', '4080', '6060'))} 欧标", "米"),
    ("紫铜排", lambda r: f"T2 {_pick(r, (3, 5, 6, 8, 10))}×{_pick(r, (20, 30, 40, 50, 60))}", "千克"),
    (
        "ABS颗粒",
        lambda r: f"{_pick(r, ('注塑级', '阻燃级', '高光'))} {_pick(r, ('本色', '黑色', '白色'))}",
        "千克",
    ),
    ("PP颗粒", lambda r: f"{_pick(r, ('均聚', '共聚'))} MFR{_pick(r, (3, 12, 25, 35))}", "千克"),
    ("铜漆包线", lambda r: f"QZ-2 Φ{_pick(r, ('0.2', '0.35', '0.5', '0.8', '1.0'))}mm", "千克"),
]


@dataclass(frozen=True, slots=True)
class _Category:
    prefix: str  # SKU prefix; two capital letters, so SKU order is (prefix, number)
    weight: float  # share of the catalogue
    sh_share: float  # share of primary locations in SH01 (the rest in SZ01)
    names: tuple[tuple[str, Callable[[random.Random], str], str], ...]  # (name, spec, base unit)
    price: tuple[float, float]  # unit cost range (log-uniform), yuan per base unit
    annual: float  # typical annual consumption, base units
    packs: tuple[tuple[str, int], ...]  # possible pack units
    pack_share: float
    lot_share: float
    production: bool  # consumed by production (领料) as well as issued
    scale: int  # 1: whole units; 10: one decimal (metres, kilograms)
    materials: tuple[str, ...] = ()


def _with_unit(entries: list[tuple[str, Callable[[random.Random], str]]], unit: str) -> tuple[Any, ...]:
    return tuple((n, s, unit) for n, s in entries)


CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "FS",
        0.17,
        0.7,
        (
            ("六角螺栓", _spec_bolt, "个"),
            ("内六角圆柱头螺钉", _spec_bolt, "个"),
            ("十字盘头螺钉", _spec_bolt, "个"),
            ("六角螺母", _spec_nut, "个"),
            ("法兰螺母", _spec_nut, "个"),
            ("平垫圈", _spec_nut, "个"),
            ("弹簧垫圈", _spec_nut, "个"),
            ("膨胀螺栓", _spec_bolt, "个"),
            ("自攻螺钉", _spec_bolt, "个"),
        ),
        (0.03, 3.0),
        3000,
        (("盒", 100), ("盒", 200), ("箱", 1000)),
        0.6,
        0.0,
        True,
        1,
        ("不锈钢", "304不锈钢", "316不锈钢", "镀锌", "8.8级", "12.9级", "达克罗"),
    ),
    _Category(
        "BR",
        0.06,
        0.65,
        (
            ("深沟球轴承", _spec_bearing, "个"),
            ("圆锥滚子轴承", _spec_taper, "个"),
            (
                "角接触球轴承",
                lambda r: f"{_pick(r, ('72', '73'))}{_pick(r, range(0, 13)):02d}{_pick(r, ('B', 'C', 'AC'))}",
                "个",
            ),
            ("推力球轴承", lambda r: f"51{_pick(r, range(0, 13)):03d}", "个"),
        ),
        (8.0, 400.0),
        60,
        (("箱", 12), ("箱", 24), ("箱", 48)),
        0.4,
        0.0,
        True,
        1,
        ("NSK", "SKF", "HRB", "ZWZ", ""),
    ),
    _Category(
        "EL",
        0.12,
        0.6,
        _with_unit(_ELECTRICAL, "个"),
        (6.0, 2500.0),
        50,
        (("箱", 12), ("箱", 24), ("箱", 48)),
        0.35,
        0.05,
        True,
        1,
        ("正泰", "德力西", "施耐德", ""),
    ),
    _Category(
        "CB",
        0.05,
        0.6,
        _with_unit(_CABLE, "米"),
        (0.8, 90.0),
        800,
        (("卷", 100), ("卷", 200)),
        0.7,
        0.0,
        True,
        10,
    ),
    _Category(
        "PK",
        0.10,
        0.45,
        tuple(_PACKAGING),
        (0.3, 120.0),
        1500,
        (("捆", 20), ("箱", 12), ("箱", 24)),
        0.4,
        0.0,
        True,
        1,
    ),
    _Category(
        "CH",
        0.06,
        0.7,
        _with_unit(_CHEMICALS, "千克"),
        (8.0, 160.0),
        300,
        (("桶", 18), ("桶", 25)),
        0.7,
        0.6,
        True,
        10,
    ),
    _Category(
        "EC",
        0.14,
        0.55,
        _with_unit(_ELECTRONICS, "个"),
        (0.01, 45.0),
        8000,
        (("盘", 3000), ("盘", 5000), ("管", 50)),
        0.6,
        0.4,
        True,
        1,
    ),
    _Category(
        "FG",
        0.12,
        0.15,
        _with_unit(_FINISHED, "件"),
        (25.0, 900.0),
        600,
        (("箱", 12), ("箱", 24), ("箱", 48)),
        0.85,
        0.1,
        False,
        1,
    ),
    _Category(
        "TL",
        0.07,
        0.6,
        tuple(_TOOLS),
        (0.8, 90.0),
        200,
        (("盒", 10), ("箱", 12), ("箱", 24)),
        0.3,
        0.0,
        False,
        1,
    ),
    _Category("PP", 0.05, 0.7, tuple(_PIPES), (3.0, 600.0), 120, (("箱", 12), ("箱", 24)), 0.2, 0.0, True, 1),
    _Category(
        "RM", 0.06, 0.75, tuple(_RAW), (6.0, 90.0), 3000, (("捆", 25), ("托", 500)), 0.3, 0.3, True, 10
    ),
)
_PREFIX_ORDER = sorted(range(len(CATEGORIES)), key=lambda c: CATEGORIES[c].prefix)


def ean13(first12: str) -> str:
    """The full EAN-13 for 12 digits (appends the GS1 check digit)."""
    if len(first12) != 12 or not first12.isdigit():
        raise ValueError(f"EAN-13 needs 12 digits before the check digit: {first12!r}")
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(first12))
    return first12 + str((10 - total % 10) % 10)


def ean13_valid(code: str) -> bool:
    return len(code) == 13 and code.isdigit() and ean13(code[:12]) == code


# ------------------------------------------------------------------------------------------------ people

_TEAMS = ("上海盘点组", "深圳盘点组")
# (employee no, name, wecom id, roles, team index or None, warehouse code for zones or None, zone slice)
_USERS: tuple[tuple[str, str, str, tuple[Role, ...], int | None, str | None, slice], ...] = (
    ("E1001", "张伟", "zhangwei", (Role.COUNTER,), 0, "SH01", slice(0, None, 2)),
    ("E1002", "王芳", "wangfang", (Role.COUNTER,), 0, "SH01", slice(1, None, 2)),
    ("E1003", "李娜", "lina", (Role.COUNTER,), 1, "SZ01", slice(0, None, 2)),
    ("E1004", "刘洋", "liuyang", (Role.COUNTER,), 1, "SZ01", slice(1, None, 2)),
    ("E1005", "陈静", "chenjing", (Role.SUPERVISOR, Role.COUNTER), 0, "SH01", slice(None)),
    ("E1006", "杨磊", "yanglei", (Role.FINANCE,), None, None, slice(0)),
    ("E1007", "赵敏", "zhaomin", (Role.MANAGER,), None, None, slice(0)),
    ("E1008", "黄强", "huangqiang", (Role.ADMIN, Role.SUPERVISOR), 1, "SZ01", slice(0)),
)
# (code, name, share of bins, zone count)
_WAREHOUSES = (("SH01", "上海中心仓", 0.6, 5), ("SZ01", "深圳成品仓", 0.4, 4))
_ZONE_LETTERS = "ABCDEFGH"


# ------------------------------------------------------------------------------------------------ helpers


async def _next_id(session: AsyncSession, model: Any) -> int:
    return int(await session.scalar(select(func.coalesce(func.max(model.id), 0)))) + 1


async def _bulk(session: AsyncSession, model: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), INSERT_BATCH):
        await session.execute(insert(model.__table__), rows[i : i + INSERT_BATCH])


def _dec(v: int, scale: int) -> Decimal:
    return Decimal(v) if scale == 1 else Decimal(v).scaleb(-1)


def _money(v: float) -> Decimal:
    return Decimal(round(v * 100)).scaleb(-2)


@dataclass(slots=True)
class _Zone:
    wh: int  # warehouse index
    code: str
    start: int  # location index range [start, end)
    end: int


def _bin_layout(n_bins: int) -> tuple[int, int]:
    """Bays per aisle and levels per bay for a zone of ``n_bins`` bins."""
    levels = 4
    bays = max(6, min(99, math.ceil(math.sqrt(n_bins / levels))))
    return bays, levels


class _Book:
    """The stock of one item-location while its ledger is written: FIFO lots and the movements so far."""

    __slots__ = ("day_dates", "fifo", "lot_tracked", "lots_made", "moves")

    def __init__(self, lot_tracked: bool, day_dates: list[date]) -> None:
        self.lot_tracked = lot_tracked
        self.day_dates = day_dates
        self.fifo: list[list[Any]] = []  # [lot, qty]; one unnamed entry when not lot-tracked
        self.moves: list[tuple[int, str, int, str | None]] = []  # (second, type, qty, lot)
        self.lots_made = 0

    def receive(self, s: int, q: int) -> None:
        lot: str | None = None
        if self.lot_tracked:
            self.lots_made += 1
            lot = f"L{self.day_dates[s // 86400]:%y%m%d}{self.lots_made:02d}"
            self.fifo.append([lot, q])
        elif self.fifo:
            self.fifo[0][1] += q
        else:
            self.fifo.append([None, q])
        self.moves.append((s, RECEIPT, q, lot))

    def take(self, s: int, q: int, typ: str) -> tuple[int, str | None]:
        """Takes at most what the oldest lot holds (the caller knows there is stock); returns what was taken."""
        fifo = self.fifo
        while fifo[0][1] <= 0 and len(fifo) > 1:
            fifo.pop(0)
        head = fifo[0]
        q = min(q, head[1])
        head[1] -= q
        if head[1] == 0 and len(fifo) > 1:
            fifo.pop(0)
        self.moves.append((s, typ, -q, head[0]))
        return q, head[0]

    def total(self) -> int:
        return sum(e[1] for e in self.fifo)


# ------------------------------------------------------------------------------------------------ generator


async def generate_demo(
    session: AsyncSession,
    *,
    items: int = 2000,
    seed: int = DEFAULT_SEED,
    today: date,
    tz: ZoneInfo,
    progress: Progress | None = None,
    item_locations: int | None = None,
    movements_per_item: float | None = None,
) -> DemoSummary:
    """Fill an empty database with the demo company; returns what was created.

    ``items`` sets the catalogue size (about 1.3 item-locations per item); ``item_locations``, when given,
    sets the exact number of item-locations instead (the catalogue grows until it is reached).
    ``movements_per_item`` is the average ledger length per item-location, besides the opening receipt
    (default: about 22, fewer when the ledger would pass ``MAX_LEDGER_ROWS``). Every movement happens before
    ``today`` 00:00 in ``tz``. Never commits.
    """
    if items < 1 and not item_locations:
        raise ValueError("items must be at least 1")
    if await session.scalar(
        select(func.count()).select_from(Warehouse).where(Warehouse.code.in_(["SH01", "SZ01"]))
    ):
        raise ValueError("演示数据已存在 / the demo warehouses SH01 and SZ01 already exist")
    say = progress or (lambda _msg: None)
    rng = random.Random(seed)
    summary = DemoSummary()

    # Local midnights as UTC instants, one per history day; day HISTORY_DAYS is today (exclusive end).
    day_dates = [today - timedelta(days=HISTORY_DAYS - d) for d in range(HISTORY_DAYS + 1)]
    midnights = [
        datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC).replace(tzinfo=None) for d in day_dates
    ]
    writer = BulkWriter(session)

    # ------------------------------------------------------------------ teams, warehouses, zones
    teams = [Team(name=n) for n in _TEAMS]
    session.add_all(teams)
    await session.flush()
    whs = [
        Warehouse(code=c, name=n, default_team_id=teams[i].id) for i, (c, n, _s, _z) in enumerate(_WAREHOUSES)
    ]
    session.add_all(whs)
    await session.flush()
    zone_rows: list[Zone] = []
    for wi, (_c, _n, _s, nz) in enumerate(_WAREHOUSES):
        for zi in range(nz):
            letter = _ZONE_LETTERS[zi]
            zone_rows.append(
                Zone(warehouse_id=whs[wi].id, code=letter, name=f"{letter}区", team_id=teams[wi].id)
            )
    session.add_all(zone_rows)
    await session.flush()
    summary.warehouses, summary.zones = len(whs), len(zone_rows)

    # ------------------------------------------------------------------ users
    users: list[User] = []
    for emp, name, wecom, roles, team, _wh, _sl in _USERS:
        users.append(
            User(
                employee_no=emp,
                name=name,
                roles=[r.value for r in roles],
                team_id=teams[team].id if team is not None else None,
                capacity_minutes=rng.randrange(240, 421, 30),
                wecom_userid=wecom,
                feishu_open_id=f"ou_{rng.getrandbits(128):032x}",
                feishu_user_id=f"{rng.getrandbits(32):08x}",
                dingtalk_userid=f"{rng.randrange(10**14, 10**15)}",
                locale="zh-CN",
                active=True,
            )
        )
    session.add_all(users)
    await session.flush()
    summary.users = len(users)
    zones_by_wh: dict[str, list[Zone]] = {}
    for z in zone_rows:
        code = whs[[w.id for w in whs].index(z.warehouse_id)].code
        zones_by_wh.setdefault(code, []).append(z)
    uz_rows = [
        {"user_id": users[i].id, "zone_id": z.id}
        for i, (_e, _n, _w, _r, _t, wh, sl) in enumerate(_USERS)
        if wh
        for z in zones_by_wh[wh][sl]
    ]
    await _bulk(session, UserZone, uz_rows)
    counters = [i for i, u in enumerate(_USERS) if u[3] == (Role.COUNTER,)]
    away = counters[rng.randrange(len(counters))]
    await _bulk(session, UserUnavailability, [{"user_id": users[away].id, "day": today, "note": "年假"}])
    owners = [users[i].id for i, u in enumerate(_USERS) if Role.SUPERVISOR in u[3] or Role.MANAGER in u[3]]

    # ------------------------------------------------------------------ bins
    target_il = item_locations or round(items * 1.32)
    n_bins = max(40, math.ceil(target_il / 2.6))
    await writer.start()
    loc_id0 = await _next_id(session, Location)
    zones: list[_Zone] = []
    loc_rows: list[tuple[Any, ...]] = []
    n_locs = 0
    zi_global = 0
    for wi, (wcode, _n, share, nz) in enumerate(_WAREHOUSES):
        wh_bins = max(nz * 4, round(n_bins * share))
        seq = 0
        for zi in range(nz):
            zb = wh_bins // nz + (1 if zi < wh_bins % nz else 0)
            letter = _ZONE_LETTERS[zi]
            bays, levels = _bin_layout(zb)
            start = n_locs
            made, aisle = 0, 0
            while made < zb:
                aisle += 1
                bay_order = range(1, bays + 1) if aisle % 2 else range(bays, 0, -1)  # serpentine walk
                for bay in bay_order:
                    for level in range(1, levels + 1):
                        if made == zb:
                            break
                        seq += 1
                        made += 1
                        code = f"{letter}-{aisle:02d}-{bay:02d}-{level:02d}"
                        loc_rows.append(
                            (
                                loc_id0 + n_locs,
                                whs[wi].id,
                                zone_rows[zi_global].id,
                                code,
                                f"LOC-{wcode}-{letter}{aisle:02d}{bay:02d}{level:02d}",
                                seq,
                            )
                        )
                        n_locs += 1
                    if made == zb:
                        break
            zones.append(_Zone(wi, letter, start, n_locs))
            zi_global += 1
        if len(loc_rows) >= INSERT_BATCH * 4:
            await writer.write(Location, LOC_COLS, loc_rows)
            loc_rows = []
    await writer.write(Location, LOC_COLS, loc_rows)
    del loc_rows
    summary.locations = n_locs
    wh_ranges = [
        (min(z.start for z in zones if z.wh == w), max(z.end for z in zones if z.wh == w))
        for w in range(len(whs))
    ]
    zones_of_wh = [[z for z in zones if z.wh == w] for w in range(len(whs))]
    zone_starts = [z.start for z in zones]
    say(f"库位 {n_locs} 个 / {n_locs} bins")

    # ------------------------------------------------------------------ pass 1: layout
    cat_cum: list[float] = []
    acc = 0.0
    for category in CATEGORIES:
        acc += category.weight
        cat_cum.append(acc)
    cat_of = bytearray()
    dormant = bytearray()
    first = array("q", [0])  # item i owns item-locations first[i] .. first[i+1]-1
    il_loc = array("q")
    cat_count = [0] * len(CATEGORIES)
    cat_seq = array("q")
    n_items = 0
    while (len(il_loc) < target_il) if item_locations else (n_items < items):
        c = min(bisect.bisect_left(cat_cum, rng.random() * acc), len(CATEGORIES) - 1)
        cat = CATEGORIES[c]
        r = rng.random()
        k = 1 if r < 0.75 else 2 if r < 0.93 else 3
        if item_locations:
            k = min(k, target_il - len(il_loc))
        w = 0 if rng.random() < cat.sh_share else 1
        lo, hi = wh_ranges[w]
        mine = [rng.randrange(lo, hi)]
        while len(mine) < k:
            if rng.random() < 0.5 and len(zones_of_wh[w]) > 1:
                here = zones[bisect.bisect_right(zone_starts, mine[0]) - 1]
                z = _pick(rng, [z for z in zones_of_wh[w] if z is not here])
            else:
                z = _pick(rng, zones_of_wh[1 - w])
            loc = rng.randrange(z.start, z.end)
            if loc not in mine:
                mine.append(loc)
        il_loc.extend(mine)
        first.append(len(il_loc))
        cat_of.append(c)
        cat_seq.append(cat_count[c])
        cat_count[c] += 1
        dormant.append(1 if rng.random() < 0.08 else 0)
        n_items += 1
    n_il = len(il_loc)

    # SKU rank: SKUs sort by (prefix, number).
    cat_offset = [0] * len(CATEGORIES)
    acc_n = 0
    for c in _PREFIX_ORDER:
        cat_offset[c] = acc_n
        acc_n += cat_count[c]
    # Rotation: per warehouse in walking order (location sequence, then SKU), from 1.
    keys = [0] * n_il
    for i in range(n_items):
        sku_rank = cat_offset[cat_of[i]] + cat_seq[i]
        for j in range(first[i], first[i + 1]):
            keys[j] = il_loc[j] * n_items + sku_rank
    order = sorted(range(n_il), key=keys.__getitem__)
    del keys
    rotation = array("q", bytes(8 * n_il))
    counter = [0] * len(whs)
    for j in order:
        w = zones[bisect.bisect_right(zone_starts, il_loc[j]) - 1].wh
        counter[w] += 1
        rotation[j] = counter[w]
    del order

    # Special states: a few negative (~0.5%) and some zero (~2%), several of those reached in the last days.
    def special(share: float, taken: dict[int, str], tag: str) -> None:
        want = max(1, round(n_il * share))
        tries = 0
        while want and tries < n_il * 20:
            tries += 1
            j = rng.randrange(n_il)
            i = bisect.bisect_right(first, j) - 1
            if j in taken or dormant[i]:
                continue
            taken[j] = tag
            want -= 1

    states: dict[int, str] = {}
    special(0.005, states, "neg")
    special(0.02, states, "zero")
    zeros = sorted(j for j, s in states.items() if s == "zero")
    for j in rng.sample(zeros, max(1, min(len(zeros), round(len(zeros) * 0.3)))):
        states[j] = "zero_recent"
    say(f"物料 {n_items} 个，货位 {n_il} 个 / {n_items} items, {n_il} item-locations")

    # ------------------------------------------------------------------ pass 2: items, stock and ledger
    per_il = movements_per_item if movements_per_item is not None else min(22.0, MAX_LEDGER_ROWS / n_il)
    per_il = max(1.0, per_il)
    item_id0 = await _next_id(session, Item)
    il_id0 = await _next_id(session, ItemLocation)
    unit_id = await _next_id(session, ItemUnit)
    bc_id = await _next_id(session, ItemBarcode)
    mv_id = await _next_id(session, Movement)
    lot_id = await _next_id(session, LotBalance)
    # 7-digit GS1 company prefixes ("69" is China), each with 100,000 item references: enough for 2 per item.
    gs1 = sorted({f"69{rng.randrange(20000, 99999):05d}" for _ in range(max(60, n_items // 40_000 + 1))})
    bc_count = 0
    created = datetime.combine(day_dates[0], time(9), tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
    recorded_lag = timedelta(minutes=7)
    type_doc = {
        RECEIPT: "RK",
        ISSUE: "CK",
        PRODUCTION_ISSUE: "LL",
        TRANSFER: "DB",
        ADJUSTMENT: "TZ",
    }
    wh_ids = [w.id for w in whs]

    item_rows: list[tuple[Any, ...]] = []
    unit_rows: list[tuple[Any, ...]] = []
    bc_rows: list[tuple[Any, ...]] = []
    il_rows: list[tuple[Any, ...]] = []
    lot_rows: list[tuple[Any, ...]] = []
    mv_rows: list[tuple[Any, ...]] = []

    # Writing one chunk overlaps generating the next: the database (or SQLite's thread) works while Python
    # builds rows; the generator yields to the event loop every few items so the writer can move on.
    writing: asyncio.Task[None] | None = None

    async def write_chunk(chunk: tuple[list[tuple[Any, ...]], ...]) -> None:
        for model, cols, rows in zip(
            (Item, ItemUnit, ItemBarcode, ItemLocation, LotBalance, Movement),
            (ITEM_COLS, UNIT_COLS, BARCODE_COLS, IL_COLS, LOT_COLS, MOVE_COLS),
            chunk,
            strict=True,
        ):
            await writer.write(model, cols, rows)

    async def flush_rows() -> None:
        nonlocal item_rows, unit_rows, bc_rows, il_rows, lot_rows, mv_rows, writing
        if writing is not None:
            await writing
        summary.movements += len(mv_rows)
        writing = asyncio.create_task(
            write_chunk((item_rows, unit_rows, bc_rows, il_rows, lot_rows, mv_rows))
        )
        item_rows, unit_rows, bc_rows, il_rows, lot_rows, mv_rows = [], [], [], [], [], []

    try:
        for i in range(n_items):
            if i % 64 == 0:
                await asyncio.sleep(0)
            cat = CATEGORIES[cat_of[i]]
            item_id = item_id0 + i
            base, spec_fn, unit = _pick(rng, cat.names)
            material = _pick(rng, cat.materials) if cat.materials else ""
            name = f"{material}{base}" if material and not base[0].isascii() else base
            spec = spec_fn(rng)
            p_lo, p_hi = cat.price
            cost = p_lo * (p_hi / p_lo) ** rng.random()
            cost_cents = max(1, round(cost * 100))
            lot_tracked = rng.random() < cat.lot_share
            scale = cat.scale
            pack = _pick(rng, cat.packs) if rng.random() < cat.pack_share else None
            # Annual consumption: Pareto-distributed, so a few items carry most of the value.
            annual = cat.annual * min(rng.paretovariate(1.6), 400.0) * 0.4
            item_rows.append(
                (
                    item_id,
                    f"{cat.prefix}-{cat_seq[i] + 1:07d}",
                    name,
                    spec,
                    unit,
                    Decimal(cost_cents).scaleb(-2),
                    owners[rng.randrange(len(owners))] if rng.random() < 0.01 else None,
                    lot_tracked,
                    "C",
                    "A" if cat.prefix == "FG" and rng.random() < 0.02 else None,
                    created,
                )
            )
            if pack:
                unit_rows.append((unit_id, item_id, pack[0], Decimal(pack[1])))
                unit_id += 1
            for b in range(2 if rng.random() < 0.3 else 1):
                code = ean13(f"{gs1[bc_count % len(gs1)]}{bc_count // len(gs1):05d}")
                bc_count += 1
                bc_rows.append((bc_id, code, item_id, pack[0] if b == 1 and pack else None))
                bc_id += 1

            lo_j, hi_j = first[i], first[i + 1]
            weights = [3.0] + [1.0] * (hi_j - lo_j - 1)
            wsum = sum(weights)
            pack_q = pack[1] * scale if pack else scale  # receipt multiple, in scaled units
            pending: dict[int, list[tuple[int, int, str | None]]] = {}  # transfers in: (second, qty, lot)
            is_dormant = dormant[i]
            for jj, j in enumerate(range(lo_j, hi_j)):
                il_id = il_id0 + j
                loc = il_loc[j]
                state = states.get(j)
                share = weights[jj] / wsum
                # Timeline in seconds from midnight of history day 0 (local), in working hours.
                d0 = rng.randrange(0, 20)
                d_end = HISTORY_DAYS - (rng.randrange(95, 300) if is_dormant else rng.randrange(1, 12))
                d_end = max(d_end, d0 + 1)
                span = d_end - d0
                mean_k = per_il * (0.25 if is_dormant else 1.0)
                k = max(1, round(mean_k * rng.uniform(0.4, 1.6)))
                t = sorted(
                    (d0 + int(rng.random() * span)) * 86400 + rng.randrange(8 * 3600, 18 * 3600)
                    for _ in range(k)
                )
                events: list[tuple[int, int, int, str | None]] = [
                    (s, 0, 0, None) for s in t
                ]  # (second, kind, qty, lot)
                for s, q, lot in pending.pop(jj, []):
                    events.append((s, 1, q, lot))
                events.sort(key=lambda e: e[0])
                use = annual * share * scale * span / HISTORY_DAYS
                issue = max(1.0, use / max(1.0, 0.65 * k))
                reorder = issue * 2
                book = _Book(lot_tracked, day_dates)
                fifo, moves, receive, take, stock = book.fifo, book.moves, book.receive, book.take, book.total

                start_q = max(pack_q, math.ceil(issue * rng.uniform(3, 8) / pack_q) * pack_q)
                receive(d0 * 86400 + 8 * 3600, start_q)
                for s, kind, q, lot in events:
                    if kind == 1:  # transfer in
                        if lot_tracked:
                            hit = next((e for e in fifo if e[0] == lot), None)
                            if hit:
                                hit[1] += q
                            else:
                                fifo.append([lot, q])
                        else:
                            fifo[0][1] += q
                        moves.append((s, TRANSFER, q, lot))
                        continue
                    on_hand = stock()
                    r = rng.random()
                    if on_hand <= 0 or (on_hand <= reorder and r < 0.85) or r >= 0.9:
                        receive(s, max(pack_q, math.ceil(issue * rng.uniform(3, 6) / pack_q) * pack_q))
                    elif r < 0.8 or (r < 0.86 and jj == hi_j - lo_j - 1):
                        typ = PRODUCTION_ISSUE if cat.production and rng.random() < 0.3 else ISSUE
                        take(s, max(1, round(issue * rng.uniform(0.3, 1.7))), typ)
                    elif r < 0.86:  # transfer out to a later item-location of the same item
                        got, lot = take(s, max(1, round(issue * rng.uniform(0.5, 2))), TRANSFER)
                        if got:
                            dest = rng.randrange(jj + 1, hi_j - lo_j)
                            pending.setdefault(dest, []).append((s + 600, got, lot))
                    else:  # stock adjustment after a spot check
                        delta = max(1, round(on_hand * rng.uniform(0.005, 0.03)))
                        if rng.random() < 0.5:
                            fifo[0][1] += delta
                            moves.append((s, ADJUSTMENT, delta, fifo[0][0]))
                        else:
                            take(s, delta, ADJUSTMENT)
                last_s = max(m[0] for m in moves)
                if state in ("zero", "zero_recent", "neg"):
                    if state == "zero_recent":
                        s_fin = (HISTORY_DAYS - rng.randrange(1, 3)) * 86400 + rng.randrange(
                            8 * 3600, 18 * 3600
                        )
                    else:
                        s_fin = last_s + rng.randrange(3600, 3 * 86400)
                    s_fin = max(min(s_fin, HISTORY_DAYS * 86400 - 3600), last_s + 60)
                    typ = PRODUCTION_ISSUE if cat.production else ISSUE
                    if stock() <= 0:
                        receive(s_fin - 30, pack_q)
                    while stock() > 0:
                        take(s_fin, stock(), typ)
                    if state == "neg":  # issued before the receipt was posted
                        over = max(1, round(issue * rng.uniform(0.1, 0.6)))
                        fifo[-1][1] -= over
                        moves.append((s_fin + 60, typ, -over, fifo[-1][0]))
                elif stock() <= 0:  # ordinary stock ends positive: the replenishment arrived
                    s_fin = min(last_s + rng.randrange(3600, 2 * 86400), HISTORY_DAYS * 86400 - 3600)
                    receive(max(s_fin, last_s + 60), max(pack_q, math.ceil(issue * 4 / pack_q) * pack_q))

                # Book, trigger fields and ledger rows.
                qty = stock()
                if qty < 0:
                    summary.negative += 1
                elif qty == 0:
                    summary.zero += 1
                counted_s: int | None = None
                if rng.random() < 0.3:
                    counted_s = (HISTORY_DAYS - rng.randrange(1, 61)) * 86400 + rng.randrange(
                        9 * 3600, 17 * 3600
                    )
                turnover = 0
                last = 0
                for s, typ, q, lot in moves:
                    if counted_s is None or s > counted_s:
                        turnover += abs(q)
                    last = max(last, s)
                    occurred = midnights[s // 86400] + timedelta(seconds=s % 86400)
                    mv_rows.append(
                        (
                            mv_id,
                            item_id,
                            loc_id0 + loc,
                            il_id,
                            lot,
                            _dec(q, scale),
                            typ,
                            occurred,
                            occurred + recorded_lag,
                            f"{type_doc[typ]}{day_dates[s // 86400]:%Y%m%d}{mv_id % 100000:05d}",
                            None,
                        )
                    )
                    mv_id += 1
                if lot_tracked:
                    by_lot: dict[str | None, int] = {}
                    for _s, _t, q, lot in moves:
                        by_lot[lot] = by_lot.get(lot, 0) + q
                    for lot, q in by_lot.items():
                        if q and lot is not None:
                            lot_rows.append(
                                (
                                    lot_id,
                                    il_id,
                                    lot,
                                    _dec(q, scale),
                                    date(2000 + int(lot[1:3]), int(lot[3:5]), int(lot[5:7]))
                                    + timedelta(days=540)
                                    if cat.prefix == "CH"
                                    else None,
                                )
                            )
                            lot_id += 1
                w = zones[bisect.bisect_right(zone_starts, loc) - 1].wh
                il_rows.append(
                    (
                        il_id,
                        item_id,
                        loc_id0 + loc,
                        wh_ids[w],
                        _dec(qty, scale),
                        None,
                        rotation[j],
                        midnights[last // 86400] + timedelta(seconds=last % 86400),
                        midnights[counted_s // 86400] + timedelta(seconds=counted_s % 86400)
                        if counted_s is not None
                        else None,
                        Decimal(turnover * cost_cents).scaleb(-2 if scale == 1 else -3),
                    )
                )
            if (i + 1) % CHUNK_ITEMS == 0:
                await flush_rows()
                say(f"物料 {i + 1}/{n_items} / items {i + 1}/{n_items}")
        await flush_rows()
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
        await writer.finish()
    summary.items, summary.item_locations = n_items, n_il

    if (await session.connection()).dialect.name == "postgresql":
        # Explicit ids bypass the sequences; move them past what was written.
        for model in (Location, Item, ItemUnit, ItemBarcode, ItemLocation, LotBalance, Movement):
            table = model.__tablename__
            await session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
                )
            )
    say(f"完成 / done: {summary}")
    return summary


async def bulk_item_locations(
    session: AsyncSession,
    n: int,
    *,
    seed: int = DEFAULT_SEED,
    today: date,
    tz: ZoneInfo,
    movements_per_item: float | None = None,
    progress: Progress | None = None,
) -> DemoSummary:
    """The demo company sized to exactly ``n`` item-locations (for benchmarks)."""
    return await generate_demo(
        session,
        seed=seed,
        today=today,
        tz=tz,
        progress=progress,
        item_locations=n,
        movements_per_item=movements_per_item,
    )
