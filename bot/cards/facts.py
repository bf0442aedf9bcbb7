"""The facts of one variance, as the review and approval cards show them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from bot.cards.model import Field, Lang, Section, aside, pick
from bot.cards.text import (
    DEFAULT_REASONS,
    CountLine,
    ItemAt,
    count_fields,
    money,
    qty,
    reason,
    severity,
    signed,
)
from core.variance.rules import ReasonCode
from core.variance.tolerance import Severity


@dataclass(frozen=True, slots=True)
class VarianceFacts:
    variance_id: int
    at: ItemAt
    abc_class: str
    book: Decimal
    counts: tuple[CountLine, ...]  # oldest first; the last one stands
    diff: Decimal  # counted - book, base units
    pct: Decimal | None  # None when the book is 0
    value: Decimal  # 元
    severity: Severity
    photos: tuple[str, ...] = ()  # image keys valid on the platform the card goes to
    suggested_reason: str | None = None  # a reason code
    suggestion_text: str | None = None  # the rule's explanation (Chinese)
    moved_during_count: bool = False
    tier_why: tuple[str, str] | None = None  # why the variance sits at its severity (zh, en)


def subtitle(f: VarianceFacts, lang: Lang) -> str:
    return pick(
        lang,
        f"{severity(f.severity, lang)} · {f.abc_class} 类 · 差异单 {f.variance_id}",
        f"{severity(f.severity, lang)} · class {f.abc_class} · variance {f.variance_id}",
    )


def sections(f: VarianceFacts, lang: Lang, reasons: Sequence[ReasonCode] = DEFAULT_REASONS) -> list[Section]:
    """Location, item, book, each count, difference and value first: WeCom shows the first six side by side."""
    diff = signed(f.diff) if f.pct is None else signed(f.diff) + aside(f"{signed(f.pct)}%", lang)
    fields = [
        Field(pick(lang, "库位", "Location"), f.at.where),
        Field(pick(lang, "物料", "Item"), f.at.item),
        Field(pick(lang, "账面", "Book"), f"{qty(f.book)} {f.at.unit}"),
        *count_fields(f.counts, lang),
        Field(pick(lang, "差异", "Difference"), diff),
        Field(pick(lang, "金额", "Value"), money(f.value, lang)),
        Field("SKU", f.at.sku),
    ]
    out = [Section(fields=tuple(fields))]
    notes: list[str] = []
    if f.tier_why:
        notes.append(pick(lang, f"级别：{f.tier_why[0]}", f"Tier: {f.tier_why[1]}"))
    if f.moved_during_count:
        notes.append(pick(lang, "注意：盘点期间有出入库。", "Note: stock moved during the count."))
    if f.suggested_reason:
        label = reason(f.suggested_reason, lang, reasons)
        line = pick(lang, f"建议原因：{label}", f"Suggested reason: {label}")
        if f.suggestion_text and lang == "zh":
            line += aside(f.suggestion_text, lang)
        notes.append(line)
    if notes:
        out.append(Section("\n".join(notes)))
    return out
