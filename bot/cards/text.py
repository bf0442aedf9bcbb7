"""Formatting shared by the card builders: quantities, money, severities, reasons, item names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bot.cards.model import Field, Lang, Tone, aside, pick
from core.enums import REASON_LABEL_ZH, TaskReason
from core.variance.rules import ReasonCode, ReasonSettings
from core.variance.tolerance import SEVERITY_LABEL_ZH, Severity

DEFAULT_REASONS: tuple[ReasonCode, ...] = tuple(ReasonSettings().codes)

SEVERITY_LABEL_EN: dict[Severity, str] = {
    Severity.AUTO: "Within tolerance (auto-posted)",
    Severity.MINOR: "Minor",
    Severity.MAJOR: "Major",
    Severity.CRITICAL: "Critical",
}

SEVERITY_TONE: dict[Severity, Tone] = {
    Severity.AUTO: Tone.GREY,
    Severity.MINOR: Tone.BLUE,
    Severity.MAJOR: Tone.ORANGE,
    Severity.CRITICAL: Tone.RED,
}

TASK_REASON_LABEL_EN: dict[TaskReason, str] = {
    TaskReason.ROTATION: "Cycle count",
    TaskReason.NEGATIVE: "Negative stock",
    TaskReason.ZERO: "Zero stock check",
    TaskReason.DORMANT: "Dormant",
    TaskReason.TURNOVER: "Fast mover",
    TaskReason.INACCURATE: "Recent variance",
    TaskReason.ADHOC: "Ad hoc request",
    TaskReason.RECOUNT: "Recount",
    TaskReason.UNSCHEDULED: "Unscheduled",
}


def qty(q: Decimal) -> str:
    """120, 12.5 — never 1.2E+2."""
    text = f"{q.normalize():f}"
    return "0" if text in ("-0", "0") else text


def signed(q: Decimal) -> str:
    return f"+{qty(q)}" if q > 0 else qty(q)


def money(v: Decimal, lang: Lang) -> str:
    sign = "+" if v > 0 else "-" if v < 0 else ""
    amount = f"{abs(v).quantize(Decimal('0.01')):,}"
    return pick(lang, f"{sign}{amount} 元", f"CNY {sign}{amount}")


def severity(s: Severity, lang: Lang) -> str:
    return pick(lang, SEVERITY_LABEL_ZH[s], SEVERITY_LABEL_EN[s])


def task_reason(r: TaskReason, lang: Lang) -> str:
    return pick(lang, REASON_LABEL_ZH[r], TASK_REASON_LABEL_EN[r])


def reason(code: str, lang: Lang, reasons: Sequence[ReasonCode] = DEFAULT_REASONS) -> str:
    """The label of a variance reason code; an unknown code shows as itself."""
    found = next((r for r in reasons if r.code == code), None)
    return code if found is None else pick(lang, found.zh, found.en)


def place(location: str, warehouse: str | None) -> str:
    """A location as people read it: ``CK01/A-01-02`` when the company has several warehouses (the same bin codes
    exist in each; the caller passes the warehouse only then), else the bin alone. The same form /复盘 takes."""
    return f"{warehouse}/{location}" if warehouse else location


def when(t: datetime) -> str:
    """A time as the caller gave it (already in the warehouse's local time)."""
    return t.strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True, slots=True)
class ItemAt:
    """An item at a location: what every card about one task or variance names."""

    location: str
    sku: str
    name: str
    spec: str | None
    unit: str
    warehouse: str | None = None  # its code, given only when the company has several warehouses

    @property
    def item(self) -> str:
        return f"{self.name} {self.spec}" if self.spec else self.name

    @property
    def where(self) -> str:
        """The location with its warehouse when there are several (see :func:`place`)."""
        return place(self.location, self.warehouse)

    def fields(self, lang: Lang) -> list[Field]:
        return [
            Field(pick(lang, "库位", "Location"), self.where),
            Field(pick(lang, "物料", "Item"), self.item),
            Field("SKU", self.sku),
            Field(pick(lang, "单位", "Unit"), self.unit),
        ]


@dataclass(frozen=True, slots=True)
class CountLine:
    """One count of a variance: who counted, how many (base units), and when."""

    counter: str
    qty: Decimal
    at: datetime | None = None
    recount: bool = False


def count_fields(counts: Sequence[CountLine], lang: Lang) -> list[Field]:
    out = []
    for i, c in enumerate(counts, 1):
        label = (
            pick(lang, f"复盘{i - 1}", f"Recount {i - 1}")
            if c.recount
            else pick(lang, "初盘", "1st count")
            if i == 1
            else pick(lang, f"盘点{i}", f"Count {i}")
        )
        out.append(Field(label, qty(c.qty) + aside(c.counter, lang)))
    return out
