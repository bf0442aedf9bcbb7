"""ABC classification (pure).

Items are ranked by annual consumption value (issued quantity x unit cost over the look-back window), or by
stock value when they have no consumption history. Walking down the ranking, an item is A while the
cumulative value *before* it is under the A cutoff, B while under the B cutoff, else C: the item that
crosses a cutoff stays in the higher class, so the class boundaries never depend on the order of ties.
A pinned class always wins. Items worth nothing are C.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Basis(StrEnum):
    CONSUMPTION = "consumption"
    STOCK_VALUE = "stock_value"
    PINNED = "pinned"


@dataclass(frozen=True, slots=True)
class ItemValue:
    item_id: int
    consumption_value: Decimal  # issued qty x unit cost in the window; 0 when no history
    stock_value: Decimal  # on-hand qty x unit cost (fallback)
    pinned: str | None = None
    has_history: bool = True

    @property
    def value(self) -> Decimal:
        return self.consumption_value if self.has_history else self.stock_value

    @property
    def basis(self) -> Basis:
        return Basis.CONSUMPTION if self.has_history else Basis.STOCK_VALUE


@dataclass(frozen=True, slots=True)
class Classified:
    item_id: int
    abc_class: str
    value: Decimal
    basis: Basis
    computed_class: str  # what the ranking says, before a pin


def classify_abc(
    items: Iterable[ItemValue], a_cutoff: float = 0.80, b_cutoff: float = 0.95
) -> list[Classified]:
    if not 0 < a_cutoff < b_cutoff <= 1:
        raise ValueError("need 0 < a_cutoff < b_cutoff <= 1")
    ranked = sorted(items, key=lambda v: (-max(v.value, Decimal(0)), v.item_id))
    total = sum((max(v.value, Decimal(0)) for v in ranked), Decimal(0))
    a_limit, b_limit = Decimal(str(a_cutoff)) * total, Decimal(str(b_cutoff)) * total
    out: list[Classified] = []
    running = Decimal(0)
    for v in ranked:
        value = max(v.value, Decimal(0))
        if value <= 0:
            computed = "C"
        elif running < a_limit:
            computed = "A"
        elif running < b_limit:
            computed = "B"
        else:
            computed = "C"
        running += value
        if v.pinned:
            out.append(Classified(v.item_id, v.pinned, value, Basis.PINNED, computed))
        else:
            out.append(Classified(v.item_id, computed, value, v.basis, computed))
    return out


@dataclass(frozen=True, slots=True)
class ClassSummaryRow:
    abc_class: str
    items: int
    item_share: float
    value: Decimal
    value_share: float


def summarise(result: Iterable[Classified]) -> list[ClassSummaryRow]:
    counts = {c: 0 for c in "ABC"}
    values = {c: Decimal(0) for c in "ABC"}
    for r in result:
        counts[r.abc_class] += 1
        values[r.abc_class] += r.value
    n = sum(counts.values())
    total = sum(values.values(), Decimal(0))
    return [
        ClassSummaryRow(
            c,
            counts[c],
            counts[c] / n if n else 0.0,
            values[c],
            float(values[c] / total) if total else 0.0,
        )
        for c in "ABC"
    ]
