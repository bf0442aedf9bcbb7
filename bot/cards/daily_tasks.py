"""The counter's daily task card: what to count, in the walk's order (recounts first, then the walking order;
``bot.walk``), tasks carried over from earlier days included. Blind: no book quantity, and no hint of one.

``TaskLine`` has no quantity field at all, so the card cannot show one. A line is tagged only with what says
nothing about the book (复盘, 临时请求, 计划外): 负库存, 零库存确认, 呆滞, 高周转 and 近期差异 each tell the counter
something about the stock, so they stay with the supervisors. 开始盘点 walks all of the counter's open tasks,
not only the lines the card has room for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from bot.cards.model import Button, ButtonStyle, Card, Field, Lang, Section, Tone, aside, pick
from bot.cards.payload import CannotFind, StartCounting
from bot.cards.text import place, task_reason
from core.enums import TaskReason

MAX_LINES = 15
# the reasons a counter may read on their own task: none says anything about the book
COUNTER_TAGS = frozenset({TaskReason.RECOUNT, TaskReason.ADHOC, TaskReason.UNSCHEDULED})


@dataclass(frozen=True, slots=True)
class TaskLine:
    task_id: int
    location: str
    sku: str
    name: str
    spec: str | None
    unit: str
    reason: TaskReason = TaskReason.ROTATION
    walk_seq: int = 0  # the location's place on the walk (Location.sequence)
    warehouse: str | None = None  # its code, given only when the company has several warehouses


@dataclass(frozen=True, slots=True)
class DailyTasks:
    counter: str
    day: date
    open_lines: Sequence[TaskLine]  # the tasks still to count
    done: int
    total: int


def _line(i: int, t: TaskLine, lang: Lang) -> str:
    item = f"{t.name} {t.spec}" if t.spec else t.name
    tag = f" [{task_reason(t.reason, lang)}]" if t.reason in COUNTER_TAGS else ""
    return f"{i}. {place(t.location, t.warehouse)} · {item} · {t.sku}{aside(t.unit, lang)}{tag}"


def walk_key(t: TaskLine) -> tuple[bool, str, int, str, str, int]:
    """Recounts first, then the walk: the order the chat walks them in (``bot.walk.walk_order``)."""
    return (t.reason != TaskReason.RECOUNT, t.warehouse or "", t.walk_seq, t.location, t.sku, t.task_id)


def build(data: DailyTasks, *, lang: Lang = "zh", ref: str) -> Card:
    lines = sorted(data.open_lines, key=walk_key)
    shown, rest = lines[:MAX_LINES], len(lines) - MAX_LINES
    progress = Section(
        fields=(
            Field(pick(lang, "进度", "Progress"), f"{data.done}/{data.total}"),
            Field(pick(lang, "待盘", "To count"), str(len(lines))),
        )
    )
    title = pick(lang, "今日盘点任务", "Today's counts")
    subtitle = f"{data.day.isoformat()} · {data.counter}"
    if not shown:
        return Card(
            ref=ref,
            title=title,
            subtitle=subtitle,
            sections=(
                Section(pick(lang, "今日任务已全部完成，辛苦了！", "All done for today. Thank you!")),
                progress,
            ),
            template=Tone.GREEN,
        )
    text = [_line(i, t, lang) for i, t in enumerate(shown, 1)]
    if rest > 0:
        text.append(pick(lang, f"还有 {rest} 项", f"and {rest} more"))
    return Card(
        ref=ref,
        title=title,
        subtitle=subtitle,
        sections=(progress, Section("\n".join(text))),
        buttons=(
            # no task ids: "all my open tasks", however many the card has room for
            Button(pick(lang, "开始盘点", "Start"), StartCounting(()), ButtonStyle.PRIMARY),
            Button(pick(lang, "无法找到", "Can't find"), CannotFind(shown[0].task_id)),
        ),
        footer=pick(
            lang,
            "「无法找到」指第 1 项。也可以直接发送条码照片或回复数量。",
            '"Can\'t find" is about item 1. You can also send a barcode photo or reply with a quantity.',
        ),
    )
