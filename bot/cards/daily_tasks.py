"""The counter's daily task card: what to count today, in walking order. Blind: no book quantity.

``TaskLine`` has no quantity field at all, so the card cannot show one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from bot.cards.model import Button, ButtonStyle, Card, Field, Lang, Section, Tone, aside, pick
from bot.cards.payload import CannotFind, StartCounting
from bot.cards.text import task_reason
from core.enums import TaskReason

MAX_LINES = 15


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


@dataclass(frozen=True, slots=True)
class DailyTasks:
    counter: str
    day: date
    open_lines: Sequence[TaskLine]  # the tasks still to count
    done: int
    total: int


def _line(i: int, t: TaskLine, lang: Lang) -> str:
    item = f"{t.name} {t.spec}" if t.spec else t.name
    tag = "" if t.reason == TaskReason.ROTATION else f" [{task_reason(t.reason, lang)}]"
    return f"{i}. {t.location} · {item} · {t.sku}{aside(t.unit, lang)}{tag}"


def build(data: DailyTasks, *, lang: Lang = "zh", ref: str) -> Card:
    lines = sorted(data.open_lines, key=lambda t: (t.walk_seq, t.location, t.sku, t.task_id))
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
            Button(
                pick(lang, "开始盘点", "Start"),
                StartCounting(tuple(t.task_id for t in shown)),
                ButtonStyle.PRIMARY,
            ),
            Button(pick(lang, "无法找到", "Can't find"), CannotFind(shown[0].task_id)),
        ),
        footer=pick(
            lang,
            "「无法找到」指第 1 项。也可以直接发送条码照片或回复数量。",
            '"Can\'t find" is about item 1. You can also send a barcode photo or reply with a quantity.',
        ),
    )
