"""The approval card (approve / reject / send back for recount) and the same card after the decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.cards import facts
from bot.cards.facts import VarianceFacts
from bot.cards.model import Button, ButtonStyle, Card, Lang, Section, Tone, aside, labelled, pick
from bot.cards.payload import Approve, Reject, SendBack
from bot.cards.text import DEFAULT_REASONS, SEVERITY_TONE, reason, when
from core.enums import ROLE_LABEL_ZH, ApprovalDecision, Role
from core.variance.rules import ReasonCode

_ROLE_EN = {r: r.value.capitalize() for r in Role}
_ROLE_ZH = ROLE_LABEL_ZH

# title, tone, verb (who decided "approved")
_DECIDED: dict[ApprovalDecision, tuple[str, str, Tone, str, str]] = {
    ApprovalDecision.APPROVED: ("差异已通过", "Variance approved", Tone.GREEN, "通过", "approved"),
    ApprovalDecision.REJECTED: ("差异已驳回", "Variance rejected", Tone.RED, "驳回", "rejected"),
    ApprovalDecision.RECOUNT: (
        "已退回复盘",
        "Sent back for recount",
        Tone.ORANGE,
        "退回复盘",
        "sent it back",
    ),
    ApprovalDecision.ESCALATED: ("已升级审批", "Escalated", Tone.ORANGE, "升级", "escalated"),
    ApprovalDecision.CANCELLED: ("审批已取消", "Approval cancelled", Tone.GREY, "取消", "cancelled"),
}


def role_name(role: Role, lang: Lang) -> str:
    return pick(lang, _ROLE_ZH[role], _ROLE_EN[role])


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    facts: VarianceFacts
    step_seq: int
    role: Role
    reason_code: str | None = None  # what the reviewer picked
    reason_note: str | None = None
    reviewer: str | None = None
    level: int | None = None  # the step's place in its round, when it differs from step_seq (a second round)


def _sections(data: ApprovalRequest, lang: Lang, reasons: Sequence[ReasonCode]) -> tuple[Section, ...]:
    out = facts.sections(data.facts, lang, reasons)
    if data.reason_code:
        line = labelled(pick(lang, "复核原因", "Reason"), reason(data.reason_code, lang, reasons), lang)
        if data.reason_note:
            line += aside(data.reason_note, lang)
        if data.reviewer:
            line += pick(lang, f" · 复核人 {data.reviewer}", f" · by {data.reviewer}")
        out.insert(1, Section(line))
    return tuple(out)


def _subtitle(data: ApprovalRequest, lang: Lang) -> str:
    role = pick(lang, _ROLE_ZH[data.role], _ROLE_EN[data.role])
    level = data.level or data.step_seq
    step = pick(lang, f"第 {level} 级 · {role}", f"step {level} · {role}")
    return f"{facts.subtitle(data.facts, lang)} · {step}"


def build(
    data: ApprovalRequest, *, lang: Lang = "zh", ref: str, reasons: Sequence[ReasonCode] = DEFAULT_REASONS
) -> Card:
    vid, seq = data.facts.variance_id, data.step_seq
    return Card(
        ref=ref,
        title=pick(lang, "差异待审批", "Variance to approve"),
        subtitle=_subtitle(data, lang),
        sections=_sections(data, lang, reasons),
        buttons=(
            Button(pick(lang, "通过", "Approve"), Approve(vid, seq), ButtonStyle.PRIMARY),
            Button(pick(lang, "复盘", "Recount"), SendBack(vid, seq)),
            Button(pick(lang, "驳回", "Reject"), Reject(vid, seq), ButtonStyle.DANGER),
        ),
        image_keys=data.facts.photos,
        template=SEVERITY_TONE[data.facts.severity],
    )


def approval_decided(
    data: ApprovalRequest,
    *,
    decision: ApprovalDecision,
    decided_by: str,
    decided_at: datetime,
    comment: str | None = None,
    lang: Lang = "zh",
    ref: str,
    reasons: Sequence[ReasonCode] = DEFAULT_REASONS,
) -> Card:
    """The approval card after the decision: the outcome and who decided, and no buttons."""
    if decision not in _DECIDED:
        raise ValueError(f"not a decision: {decision}")
    zh_title, en_title, tone, zh_verb, en_verb = _DECIDED[decision]
    outcome = pick(
        lang,
        f"{decided_by} 于 {when(decided_at)} {zh_verb}",
        f"{decided_by} {en_verb} at {when(decided_at)}",
    )
    if comment:
        outcome += pick(lang, f"：{comment}", f": {comment}")
    return Card(
        ref=ref,
        title=pick(lang, zh_title, en_title),
        subtitle=_subtitle(data, lang),
        sections=(Section(outcome), *_sections(data, lang, reasons)),
        image_keys=data.facts.photos,
        template=tone,
    )
