"""Variance, tolerance and severity (pure).

A count gives a variance: ``qty = counted - book``, ``value = qty x unit cost`` and ``pct = qty / |book| x 100``
(``None`` when the book is 0; the sign of ``pct`` is the sign of ``qty``, also for a negative book).

Two tolerances are kept apart, as Oracle does:

- the **approval tolerance** decides whether a variance is accepted and posted without anyone approving it
  (severity ``auto``). It has separate gain and loss limits, each by percent, quantity and value; a limit of
  ``None`` is no limit. A variance is within tolerance when it is within *every* limit set for its direction.
  Resolution: per-SKU override, else the ABC class.
- the **hit/miss tolerance** only decides whether a count is a "hit" for accuracy reporting (IRA = hits /
  counts). An exact match is always a hit.

A variance with an undefined percentage (book 0, stock found) exceeds any percent limit that is set: it is
infinitely large relative to the book. The same rule holds for the severity tiers, so book-0 finds need a
person (mis-slot pairing in :mod:`core.variance.rules` turns most of them into transfers).

Defaults, and why:

- approval tolerance (gain and loss alike): A ±1 % and at most 200 元; B ±3 % and 1,000 元; C ±5 % and
  2,000 元. The percentages are the textbook class tolerances (A ±1 %, B ±3 %, C ±5 %, see the research notes
  b8); the value caps keep a small percentage of an expensive stock from posting silently (Oracle/SAP value
  tolerances). Losses and gains can be set apart per class or SKU (Oracle, Kingdee FGainTol/FLossTol).
- hit/miss tolerance: the same percentages without value caps, so accuracy is the textbook IRA.
- severity tiers for what is out of tolerance follow **value**: minor when |value| < 1,000 元 (a supervisor
  decides), major when |value| < 10,000 元 (supervisor, then finance), critical above (and a manager). The
  percentage decides tolerance (auto-accept, hit/miss), not who approves: an 8.10 元 gain is 33 % of a small book,
  and is a supervisor's. A tier can also bound the percentage (``max_pct``) when a company wants that; the cards
  say why a variance sits at its tier (:meth:`SeverityTiers.explain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLASSES = ("A", "B", "C")
_HUNDRED = Decimal(100)


class Direction(StrEnum):
    GAIN = "gain"
    LOSS = "loss"
    NONE = "none"


class Severity(StrEnum):
    AUTO = "auto"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


# Lower is milder; a bigger variance never maps to a lower rank.
SEVERITY_RANK: dict[Severity, int] = {
    Severity.AUTO: 0,
    Severity.MINOR: 1,
    Severity.MAJOR: 2,
    Severity.CRITICAL: 3,
}

SEVERITY_LABEL_ZH: dict[Severity, str] = {
    Severity.AUTO: "容差内自动过账",
    Severity.MINOR: "一般差异",
    Severity.MAJOR: "重大差异",
    Severity.CRITICAL: "严重差异",
}


class Breach(StrEnum):
    """Which limit a variance exceeded (for the explanation on the review card)."""

    PCT = "pct"
    QTY = "qty"
    VALUE = "value"


@dataclass(frozen=True, slots=True)
class Variance:
    book: Decimal
    counted: Decimal
    unit_cost: Decimal
    qty: Decimal  # counted - book
    pct: Decimal | None  # qty / |book| x 100; None when book == 0
    value: Decimal  # qty x unit cost
    direction: Direction

    @property
    def exact(self) -> bool:
        """Counted equals book: always a hit (Oracle's exact-match rate counts these)."""
        return self.qty == 0


def compute_variance(book: Decimal, counted: Decimal, unit_cost: Decimal) -> Variance:
    if counted < 0:
        raise ValueError("counted quantity cannot be negative")
    if unit_cost < 0:
        raise ValueError("unit cost cannot be negative")
    qty = counted - book
    pct = None if book == 0 else qty / abs(book) * _HUNDRED
    direction = Direction.GAIN if qty > 0 else Direction.LOSS if qty < 0 else Direction.NONE
    return Variance(book, counted, unit_cost, qty, pct, qty * unit_cost, direction)


class Limits(BaseModel):
    """Limits for one direction, as magnitudes (>= 0). ``None`` = no limit."""

    model_config = ConfigDict(frozen=True)

    pct: Decimal | None = Field(default=None, ge=0, description="largest |pct| allowed")
    qty: Decimal | None = Field(default=None, ge=0, description="largest |qty| allowed, base units")
    value: Decimal | None = Field(default=None, ge=0, description="largest |value| allowed, 元")

    def breaches(self, v: Variance) -> tuple[Breach, ...]:
        out: list[Breach] = []
        if self.pct is not None and (v.pct is None or abs(v.pct) > self.pct):
            out.append(Breach.PCT)
        if self.qty is not None and abs(v.qty) > self.qty:
            out.append(Breach.QTY)
        if self.value is not None and abs(v.value) > self.value:
            out.append(Breach.VALUE)
        return tuple(out)


class Tolerance(BaseModel):
    model_config = ConfigDict(frozen=True)

    gain: Limits = Field(default_factory=Limits)
    loss: Limits = Field(default_factory=Limits)

    @classmethod
    def symmetric(
        cls, pct: Decimal | None = None, qty: Decimal | None = None, value: Decimal | None = None
    ) -> Tolerance:
        limits = Limits(pct=pct, qty=qty, value=value)
        return cls(gain=limits, loss=limits)

    def breaches(self, v: Variance) -> tuple[Breach, ...]:
        if v.direction is Direction.NONE:
            return ()
        return (self.gain if v.direction is Direction.GAIN else self.loss).breaches(v)

    def admits(self, v: Variance) -> bool:
        return not self.breaches(v)


class Tier(BaseModel):
    """Upper bounds (exclusive) of one severity tier; ``None`` = unbounded."""

    model_config = ConfigDict(frozen=True)

    max_value: Decimal | None = Field(default=None, ge=0)
    max_pct: Decimal | None = Field(default=None, ge=0)

    def contains(self, v: Variance) -> bool:
        if self.max_value is not None and not abs(v.value) < self.max_value:
            return False
        return self.max_pct is None or (v.pct is not None and abs(v.pct) < self.max_pct)


class SeverityTiers(BaseModel):
    """Out-of-tolerance variances: minor if inside ``minor``, else major if inside ``major``, else critical.

    Each tier is "everything below these bounds", so a bigger variance never gets a milder severity,
    whatever the numbers.
    """

    minor: Tier = Field(default_factory=lambda: Tier(max_value=Decimal(1000)))
    major: Tier = Field(default_factory=lambda: Tier(max_value=Decimal(10000)))

    def severity(self, v: Variance) -> Severity:
        if self.minor.contains(v):
            return Severity.MINOR
        if self.major.contains(v):
            return Severity.MAJOR
        return Severity.CRITICAL

    def explain(self, v: Variance, severity: Severity) -> tuple[str, str]:
        """Why ``v`` sits at ``severity`` (Chinese, English): per measure (value, percentage), the bound of the
        milder tier it reached and the bound of its own tier it stays below."""
        if severity is Severity.AUTO:
            return "在容差内，自动过账", "within tolerance: posted without approval"
        below = {Severity.MINOR: self.minor, Severity.MAJOR: self.major}.get(severity)
        above = {Severity.MAJOR: self.minor, Severity.CRITICAL: self.major}.get(severity)
        above_name = {Severity.MAJOR: Severity.MINOR, Severity.CRITICAL: Severity.MAJOR}.get(severity)
        zh: list[str] = []
        en: list[str] = []
        for measure in ("value", "pct"):
            shown_zh, shown_en, conds_zh, conds_en = _measure(v, measure, above, above_name, below)
            if conds_zh:
                zh.append(f"{shown_zh}{'、'.join(conds_zh)}")
                en.append(f"{shown_en} {' and '.join(conds_en)}")
        label_zh, label_en = SEVERITY_LABEL_ZH[severity], severity.value
        return (f"{'；'.join(zh)}，属{label_zh}" if zh else f"属{label_zh}"), (
            f"{'; '.join(en)}: {label_en}" if en else label_en
        )


def _measure(
    v: Variance, measure: str, above: Tier | None, above_name: Severity | None, below: Tier | None
) -> tuple[str, str, list[str], list[str]]:
    """For one measure: how it is shown, and the conditions that place ``v`` (reached / stays below)."""
    if measure == "value":
        x: Decimal | None = abs(v.value)
        shown_zh, shown_en = f"金额 {_money(v.value)} 元", f"value {_money(v.value)}"
        fmt, unit_zh, unit_en = _money, " 元", ""
        hi, lo = (above.max_value if above else None), (below.max_value if below else None)
    else:
        x = None if v.pct is None else abs(v.pct)
        shown_zh = "账面为 0，差异率无法计算" if x is None else f"差异率 {_pct(x)}% "
        shown_en = "the book is 0 (no percentage)" if x is None else f"{_pct(x)}%"
        fmt, unit_zh, unit_en = _pct, "%", "%"
        hi, lo = (above.max_pct if above else None), (below.max_pct if below else None)
    name_zh = SEVERITY_LABEL_ZH[above_name] if above_name else ""
    name_en = above_name.value if above_name else ""
    zh: list[str] = []
    en: list[str] = []
    if hi is not None and x is None:
        zh.append(f"（{name_zh}以差异率 {fmt(hi)}{unit_zh} 为限）")
        en.append(f"({name_en} is bounded at {fmt(hi)}{unit_en})")
    elif hi is not None and x is not None and x >= hi:
        zh.append(f"达到{name_zh}上限 {fmt(hi)}{unit_zh}")
        en.append(f"reaches the {name_en} bound {fmt(hi)}{unit_en}")
    if lo is not None and x is not None and x < lo:
        zh.append(f"低于 {fmt(lo)}{unit_zh}")
        en.append(f"stays below {fmt(lo)}{unit_en}")
    return shown_zh, shown_en, zh, en


def _money(x: Decimal) -> str:
    return f"{abs(x):,.2f}"


def _pct(x: Decimal) -> str:
    return format(abs(x).quantize(Decimal("0.1")).normalize(), "f")


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "A": Tolerance.symmetric(pct=Decimal(1), value=Decimal(200)),
        "B": Tolerance.symmetric(pct=Decimal(3), value=Decimal(1000)),
        "C": Tolerance.symmetric(pct=Decimal(5), value=Decimal(2000)),
    }


def _default_hit_miss() -> dict[str, Tolerance]:
    return {
        "A": Tolerance.symmetric(pct=Decimal(1)),
        "B": Tolerance.symmetric(pct=Decimal(3)),
        "C": Tolerance.symmetric(pct=Decimal(5)),
    }


def _check_classes(
    kind: str, v: dict[str, Tolerance], defaults: dict[str, Tolerance]
) -> dict[str, Tolerance]:
    for k in v:
        if k not in CLASSES:
            raise ValueError(f"{kind}: unknown ABC class {k!r}; use A, B or C")
    return {**defaults, **v}


class ToleranceSettings(BaseModel):
    by_class: dict[str, Tolerance] = Field(default_factory=_default_tolerances)
    # Per-SKU approval tolerance; wins over the class (Oracle: item > class).
    item_overrides: dict[str, Tolerance] = Field(default_factory=dict)
    # Accuracy reporting only; never decides whether a variance posts.
    hit_miss: dict[str, Tolerance] = Field(default_factory=_default_hit_miss)
    tiers: SeverityTiers = Field(default_factory=SeverityTiers)
    # Class used for an item that has not been classified yet (classification puts items worth nothing in C).
    unclassified_as: str = Field(default="C", pattern="^[ABC]$")

    # A partial table from a config file keeps the defaults for the classes it does not name.
    @field_validator("by_class")
    @classmethod
    def _all_classes(cls, v: dict[str, Tolerance]) -> dict[str, Tolerance]:
        return _check_classes("by_class", v, _default_tolerances())

    @field_validator("hit_miss")
    @classmethod
    def _all_hit_miss_classes(cls, v: dict[str, Tolerance]) -> dict[str, Tolerance]:
        return _check_classes("hit_miss", v, _default_hit_miss())

    def _class(self, abc_class: str | None) -> str:
        cls = abc_class or self.unclassified_as
        if cls not in CLASSES:
            raise ValueError(f"unknown ABC class {abc_class!r}; use A, B or C")
        return cls

    def approval_tolerance(self, abc_class: str | None, sku: str | None) -> Tolerance:
        if sku is not None and sku in self.item_overrides:
            return self.item_overrides[sku]
        return self.by_class[self._class(abc_class)]

    def hit_miss_tolerance(self, abc_class: str | None) -> Tolerance:
        return self.hit_miss[self._class(abc_class)]


@dataclass(frozen=True, slots=True)
class Assessment:
    variance: Variance
    within_tolerance: bool
    hit: bool
    severity: Severity
    breaches: tuple[Breach, ...]  # approval limits exceeded; empty when within tolerance
    item_override: bool  # the SKU's own tolerance applied, not the class's


def assess(
    variance: Variance, abc_class: str | None, sku: str | None, settings: ToleranceSettings
) -> Assessment:
    tolerance = settings.approval_tolerance(abc_class, sku)
    breaches = tolerance.breaches(variance)
    within = not breaches
    hit = variance.exact or settings.hit_miss_tolerance(abc_class).admits(variance)
    severity = Severity.AUTO if within else settings.tiers.severity(variance)
    return Assessment(
        variance=variance,
        within_tolerance=within,
        hit=hit,
        severity=severity,
        breaches=breaches,
        item_override=sku is not None and sku in settings.item_overrides,
    )
