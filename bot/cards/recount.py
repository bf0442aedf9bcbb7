"""A recount request: count this again. Blind: no book quantity and no earlier count.

``RecountRequest`` holds neither, so the card cannot show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from bot.cards.model import Button, ButtonStyle, Card, Field, Lang, Section, Tone, pick
from bot.cards.payload import CannotFind, StartCounting
from bot.cards.text import ItemAt


@dataclass(frozen=True, slots=True)
class RecountRequest:
    task_id: int
    at: ItemAt
    due: date | None = None


def build(data: RecountRequest, *, lang: Lang = "zh", ref: str) -> Card:
    at = data.at
    fields = at.fields(lang)
    if data.due is not None:
        fields.append(Field(pick(lang, "截止", "Due"), data.due.isoformat()))
    return Card(
        ref=ref,
        title=pick(lang, "复盘请求", "Recount request"),
        subtitle=f"{at.location} · {at.item}",
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
