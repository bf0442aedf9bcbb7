"""The count prompt: "库位 A-01-03 · 可口可乐 330ml，请输入数量". Blind: no book quantity.

``note`` carries the answer to the counter's previous message (the count just recorded, "✓ 已记录（41个）"), so
one message answers a count and asks for the next (WeCom allows 30 messages per person per minute)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.cards.model import Button, ButtonStyle, Card, Lang, QuantityInput, Section, pick
from bot.cards.payload import CannotFind, SubmitQuantity
from bot.cards.text import ItemAt


@dataclass(frozen=True, slots=True)
class CountPrompt:
    task_id: int
    at: ItemAt
    position: int | None = None  # this task's place in today's list (第 3/20 项)
    of: int | None = None
    note: str | None = None  # the answer to the previous message, shown first


def build(data: CountPrompt, *, lang: Lang = "zh", ref: str) -> Card:
    at = data.at
    subtitle = None
    if data.position is not None and data.of is not None:
        subtitle = pick(lang, f"第 {data.position}/{data.of} 项", f"Item {data.position} of {data.of}")
    ask = pick(
        lang,
        f"库位 {at.where} · {at.item}，请输入数量",
        f"Location {at.where} · {at.item}: enter the quantity",
    )
    return Card(
        ref=ref,
        title=pick(lang, f"盘点 {at.where}", f"Count {at.where}"),
        subtitle=subtitle,
        sections=(Section(f"{data.note}\n{ask}" if data.note else ask, tuple(at.fields(lang)[2:])),),
        inputs=(
            QuantityInput(
                name="qty",
                placeholder=pick(
                    lang, f"数量（{at.unit}），例如 12 或 3箱5个", f"Quantity ({at.unit}), e.g. 12"
                ),
                fallback=pick(
                    lang,
                    f"请直接回复数量（{at.unit}），例如 12 或 3箱5个",
                    f"Reply with the quantity ({at.unit}), e.g. 12",
                ),
            ),
        ),
        buttons=(
            Button(
                pick(lang, "提交", "Submit"), SubmitQuantity(data.task_id), ButtonStyle.PRIMARY, submits=True
            ),
            Button(pick(lang, "无法找到", "Can't find"), CannotFind(data.task_id)),
        ),
    )
