"""Chat replies in the reader's language: Simplified Chinese by default, English when the user's locale (or the
company's ``settings.locale``) starts with "en" — the same choice the cards make (``bot.flows.lang_of``).

Each reply is written at its call site in both languages, ``tr(ctx, "已跳过", "Skipped")``; no catalogs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.cards.model import Lang
from bot.flows import lang_of

if TYPE_CHECKING:
    from bot.dispatcher import Context
    from core.variance.service import WorkflowError


def lang(ctx: Context) -> Lang:
    """The language of the person this event came from."""
    return lang_of(ctx.settings, ctx.user)


def tr(ctx: Context, zh: str, en: str) -> str:
    """``zh`` or ``en``, whichever the person reading reads."""
    return en if lang(ctx) == "en" else zh


def refusal(ctx: Context, exc: WorkflowError) -> str:
    """A workflow refusal as the reader reads it (core gives both languages)."""
    return tr(ctx, exc.zh, _sentence(exc.en))


def _sentence(en: str) -> str:
    """Core's English messages are often lower-case fragments ("no task #3"); a chat reply starts with a capital."""
    return en[:1].upper() + en[1:] if en else en


def bilingual(text: str, lang: Lang) -> str:
    """One side of a message written "中文 / English", or as Chinese lines then English lines (the barcode
    reader's messages are). Chinese keeps the text as it always was; English takes the English side if any."""
    if lang != "en":
        return text.split(" / ")[0]
    if " / " in text:
        return text.split(" / ", 1)[1]
    lines = text.splitlines()
    tail = len(lines)
    while tail > 0 and lines[tail - 1].isascii():
        tail -= 1
    return "\n".join(lines[tail:]) if 0 < tail < len(lines) else text
