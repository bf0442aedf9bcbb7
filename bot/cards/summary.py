"""The daily summary for supervisors and managers, and the improvement-item notice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from bot.cards.model import Card, Field, Lang, Section, Tone, pick
from bot.cards.text import DEFAULT_REASONS, reason
from core.scheduling.service import Unassigned
from core.variance.rules import ReasonCode

TOP_REASONS = 3


@dataclass(frozen=True, slots=True)
class DailySummary:
    day: date
    scope: str  # a warehouse or team name
    planned: int
    done: int
    overdue: int
    accuracy_pct: Decimal | None  # hits / counted x 100; None when nothing was counted
    open_variances: int
    top_reasons: Sequence[tuple[str, int]]  # (reason code, variances), most first
    unassigned: Sequence[Unassigned] = ()  # open work nobody has, per warehouse


def unassigned_lines(items: Sequence[Unassigned], lang: Lang) -> list[str]:
    """One line per warehouse: how many tasks nobody has, the cause, and what to do."""
    out = []
    for u in items:
        if u.nobody:
            out.append(pick(
                lang,
                f"仓库 {u.code}：{u.tasks} 项无人可派，该仓库没有可分配的盘点员。请在人员表给盘点员填写团队或库区，"
                f"或执行 pandian warehouse set-team {u.code} --team 班组名",
                f"Warehouse {u.code}: {u.tasks} task(s) unassigned, no counter can be given its work. Give "
                f"counters a team or zones in the users file, or run pandian warehouse set-team {u.code} --team TEAM",
            ))  # fmt: skip
        else:
            out.append(pick(
                lang,
                f"仓库 {u.code}：{u.tasks} 项超出盘点员今日产能，未分配（会顺延到下一个工作日）",
                f"Warehouse {u.code}: {u.tasks} task(s) beyond the counters' capacity today, unassigned "
                "(they carry over to the next working day)",
            ))  # fmt: skip
    return out


def unassigned_notice(day: date, items: Sequence[Unassigned], *, lang: Lang = "zh", ref: str) -> Card:
    """The morning notice to supervisors and managers when planned work has nobody to do it."""
    n = sum(u.tasks for u in items)
    return Card(
        ref=ref,
        title=pick(lang, f"今日有 {n} 项盘点无人可派", f"{n} counts have nobody today"),
        subtitle=day.isoformat(),
        sections=(Section("\n".join(unassigned_lines(items, lang))),),
        template=Tone.ORANGE,
    )


@dataclass(frozen=True, slots=True)
class ImprovementNotice:
    item_id: int
    scope: str
    reason_code: str
    occurrences: int
    window_days: int
    since: date


def build(
    data: DailySummary, *, lang: Lang = "zh", ref: str, reasons: Sequence[ReasonCode] = DEFAULT_REASONS
) -> Card:
    accuracy = "—" if data.accuracy_pct is None else f"{data.accuracy_pct.quantize(Decimal('0.1'))}%"
    fields = (
        Field(pick(lang, "计划", "Planned"), str(data.planned)),
        Field(pick(lang, "完成", "Done"), str(data.done)),
        Field(pick(lang, "逾期", "Overdue"), str(data.overdue)),
        Field(pick(lang, "准确率", "Accuracy"), accuracy),
        Field(pick(lang, "待处理差异", "Open variances"), str(data.open_variances)),
        *(
            (Field(pick(lang, "未分配", "Unassigned"), str(sum(u.tasks for u in data.unassigned))),)
            if data.unassigned
            else ()
        ),
    )
    top = data.top_reasons[:TOP_REASONS]
    if top:
        lines = [pick(lang, "主要差异原因：", "Top variance reasons:")]
        lines += [f"{i}. {reason(code, lang, reasons)} × {n}" for i, (code, n) in enumerate(top, 1)]
    else:
        lines = [pick(lang, "今日没有差异原因记录。", "No variance reasons recorded today.")]
    return Card(
        ref=ref,
        title=pick(lang, f"盘点日报 {data.day.isoformat()}", f"Daily count summary {data.day.isoformat()}"),
        subtitle=data.scope,
        sections=(
            Section(fields=fields),
            *((Section("\n".join(unassigned_lines(data.unassigned, lang))),) if data.unassigned else ()),
            Section("\n".join(lines)),
        ),
        template=Tone.RED if data.overdue or data.unassigned else Tone.BLUE,
    )


def improvement_notice(
    data: ImprovementNotice, *, lang: Lang = "zh", ref: str, reasons: Sequence[ReasonCode] = DEFAULT_REASONS
) -> Card:
    label = reason(data.reason_code, lang, reasons)
    return Card(
        ref=ref,
        title=pick(lang, "新的改进事项", "New improvement item"),
        subtitle=data.scope,
        sections=(
            Section(
                pick(
                    lang,
                    f"差异原因「{label}」在 {data.window_days} 天内出现 {data.occurrences} 次，请安排流程改进。",
                    f'The reason "{label}" came up {data.occurrences} times in {data.window_days} days. '
                    "Please look into the process.",
                ),
                (
                    Field(pick(lang, "起始日期", "Since"), data.since.isoformat()),
                    Field(pick(lang, "事项编号", "Item no."), str(data.item_id)),
                ),
            ),
        ),
        template=Tone.ORANGE,
    )
