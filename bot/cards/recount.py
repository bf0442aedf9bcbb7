"""A recount request: count this again. Blind: no book quantity and no earlier count.

``RecountRequest`` holds neither, so the card cannot show them. Once the recount task closes, every copy of
the card is replaced by :func:`closed`: what happened to the recount (recorded, or cancelled), with no buttons
and still no quantity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from bot.cards.model import Button, ButtonStyle, Card, Field, Lang, Section, Tone, pick
from bot.cards.payload import CannotFind, StartCounting
from bot.cards.text import ItemAt, when


@dataclass(frozen=True, slots=True)
class RecountRequest:
    task_id: int
    at: ItemAt
    due: date | None = None


class RecountClosed(StrEnum):
    """How a recount task ended, as its card says it."""

    COUNTED = "counted"  # a quantity was recorded
    NOT_FOUND = "not_found"  # recorded as "can't find" (无法找到)
    EMPTY = "empty"  # recorded as "location empty"
    CANCELLED = "cancelled"  # no longer needed (the first count was undone, the task was withdrawn)


# title zh/en, the outcome line zh/en, tone
_CLOSED: dict[RecountClosed, tuple[str, str, str, str, Tone]] = {
    RecountClosed.COUNTED: (
        "已复盘",
        "Recounted",
        "已复盘 · 数量已记录",
        "Recounted · quantity recorded",
        Tone.GREEN,
    ),
    RecountClosed.NOT_FOUND: (
        "已复盘",
        "Recounted",
        "已复盘 · 记录为无法找到",
        "Recounted · recorded as not found",
        Tone.GREEN,
    ),
    RecountClosed.EMPTY: (
        "已复盘",
        "Recounted",
        "已复盘 · 记录为库位空",
        "Recounted · location recorded as empty",
        Tone.GREEN,
    ),
    RecountClosed.CANCELLED: (
        "复盘已取消",
        "Recount cancelled",
        "已取消 · 无需复盘",
        "Cancelled · no recount needed",
        Tone.GREY,
    ),
}


def build(data: RecountRequest, *, lang: Lang = "zh", ref: str) -> Card:
    at = data.at
    fields = at.fields(lang)
    if data.due is not None:
        fields.append(Field(pick(lang, "截止", "Due"), data.due.isoformat()))
    return Card(
        ref=ref,
        title=pick(lang, "复盘请求", "Recount request"),
        subtitle=f"{at.where} · {at.item}",
        sections=(
            Section(
                pick(
                    lang,
                    "请重新清点这个库位的这项物料。请按实际清点，不参考之前的数量。",
                    "Please count this item at this location again, from scratch.",
                ),
                tuple(fields),
            ),
        ),
        buttons=(
            Button(
                pick(lang, "开始复盘", "Start recount"), StartCounting((data.task_id,)), ButtonStyle.PRIMARY
            ),
            Button(pick(lang, "无法找到", "Can't find"), CannotFind(data.task_id)),
        ),
        template=Tone.ORANGE,
    )


def closed(
    data: RecountRequest,
    *,
    outcome: RecountClosed,
    by: str | None = None,
    at: datetime | None = None,
    lang: Lang = "zh",
    ref: str,
) -> Card:
    """The recount card once its task closed: the outcome, who recorded it and when (for a count), and no
    buttons. Still blind: the outcome never carries a quantity, the book's or the count's."""
    zh_title, en_title, zh_line, en_line, tone = _CLOSED[outcome]
    lines = [pick(lang, zh_line, en_line)]
    if outcome is RecountClosed.CANCELLED:
        if at is not None:
            lines.append(pick(lang, f"于 {when(at)} 取消", f"Cancelled at {when(at)}"))
    elif by and at is not None:
        lines.append(pick(lang, f"{by} 于 {when(at)} 记录", f"Recorded by {by} at {when(at)}"))
    elif by:
        lines.append(pick(lang, f"{by} 记录", f"Recorded by {by}"))
    return Card(
        ref=ref,
        title=pick(lang, zh_title, en_title),
        subtitle=f"{data.at.where} · {data.at.item}",
        sections=(Section("\n".join(lines), tuple(data.at.fields(lang))),),
        template=tone,
    )
