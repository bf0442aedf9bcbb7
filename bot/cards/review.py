"""The variance review card: the facts, a reason to pick (the configured codes) and a note."""

from __future__ import annotations

from collections.abc import Sequence

from bot.cards import facts
from bot.cards.facts import VarianceFacts
from bot.cards.model import (
    Button,
    ButtonStyle,
    Card,
    Lang,
    NoteInput,
    Option,
    Section,
    Select,
    Tone,
    aside,
    pick,
)
from bot.cards.payload import PickReason, SubmitReason
from bot.cards.text import DEFAULT_REASONS, SEVERITY_TONE, reason
from core.variance.rules import ReasonCode


def build(
    data: VarianceFacts, *, lang: Lang = "zh", ref: str, reasons: Sequence[ReasonCode] = DEFAULT_REASONS
) -> Card:
    vid = data.variance_id
    options = tuple(Option(pick(lang, r.zh, r.en), PickReason(vid, r.code)) for r in reasons)
    known = {r.code for r in reasons}
    initial = PickReason(vid, data.suggested_reason) if data.suggested_reason in known else None
    needs_note = [pick(lang, r.zh, r.en) for r in reasons if r.requires_note]
    note_rule = "、".join(needs_note) if lang == "zh" else ", ".join(needs_note)
    return Card(
        ref=ref,
        title=pick(lang, "差异待复核", "Variance to review"),
        subtitle=facts.subtitle(data, lang),
        sections=tuple(facts.sections(data, lang, reasons)),
        selects=(
            Select(
                name="reason",
                placeholder=pick(lang, "选择差异原因", "Pick a reason"),
                options=options,
                fallback=pick(lang, "回复序号选择差异原因：", "Reply with the number of the reason:"),
                initial=initial,
            ),
        ),
        inputs=(
            NoteInput(
                name="note",
                placeholder=pick(
                    lang, f"说明（选「{note_rule}」时必填）", f"Note (required for {note_rule})"
                ),
                fallback=pick(
                    lang,
                    f"如需说明，请在对话中回复文字（选「{note_rule}」时必填）",
                    f"To add a note, reply in the chat (required for {note_rule})",
                ),
            ),
        ),
        buttons=(
            Button(pick(lang, "提交原因", "Submit"), SubmitReason(vid), ButtonStyle.PRIMARY, submits=True),
        ),
        image_keys=data.photos,
        template=SEVERITY_TONE[data.severity],
    )


def reviewed(
    data: VarianceFacts,
    *,
    reviewer: str,
    reason_code: str,
    note: str | None,
    lang: Lang = "zh",
    ref: str,
    reasons: Sequence[ReasonCode] = DEFAULT_REASONS,
) -> Card:
    """The review card after someone reviewed it: who, which reason, and no inputs left."""
    line = pick(lang, f"{reviewer} 已复核：", f"Reviewed by {reviewer}: ") + reason(
        reason_code, lang, reasons
    )
    if note:
        line += aside(note, lang)
    return Card(
        ref=ref,
        title=pick(lang, "差异已复核", "Variance reviewed"),
        subtitle=facts.subtitle(data, lang),
        sections=(Section(line), *facts.sections(data, lang, reasons)),
        image_keys=data.photos,
        template=Tone.GREY,
    )
