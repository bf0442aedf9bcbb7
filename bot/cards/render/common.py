"""What the three renderers share: signing payloads, fitting text, and the parts a card can show."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.cards.capabilities import Capabilities
from bot.cards.model import Button, Card, Lang, Option, Select, labelled, pick
from bot.cards.payload import Payload

ELLIPSIS = "…"
_REF = re.compile(r"[0-9A-Za-z_\-@]{1,128}")


class CardTooLarge(ValueError):
    """The card breaks a hard platform limit (too many buttons, too many bytes). A builder bug."""


@dataclass(frozen=True, slots=True)
class Signer:
    """The app's payload key and the time the card is issued (Unix seconds), passed in: no clock here."""

    key: bytes
    issued_at: int

    def pack(self, payload: Payload, max_bytes: int) -> str:
        return payload.pack(self.key, issued_at=self.issued_at, max_bytes=max_bytes)


def width(text: str) -> int:
    """Display width: a CJK character counts 2, others 1 (WeCom's "建议不超过 N 个字" counts CJK characters)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, max_width: int) -> str:
    """Cut ``text`` to ``max_width`` display columns, ending with "…" when cut."""
    if width(text) <= max_width:
        return text
    out, used = [], width(ELLIPSIS)
    for c in text:
        w = width(c)
        if used + w > max_width:
            break
        out.append(c)
        used += w
    return "".join(out).rstrip() + ELLIPSIS


def fit_lines(lines: list[str], max_width: int) -> list[str]:
    """Keep whole lines while they fit (a newline counts 1), then a "…" line. A first line that alone is
    too long is cut instead."""
    if width("\n".join(lines)) <= max_width:
        return list(lines)
    budget = max_width - 1 - width(ELLIPSIS)  # room for "\n…"
    out: list[str] = []
    used = 0
    for line in lines:
        need = width(line) + (1 if out else 0)
        if used + need > budget:
            break
        out.append(line)
        used += need
    if not out:
        return [fit(lines[0], max_width)]
    return [*out, ELLIPSIS]


def check_ref(card: Card) -> str:
    if not _REF.fullmatch(card.ref) or len(card.ref.encode()) > 128:
        raise CardTooLarge(f"card ref must be [0-9A-Za-z_-@], 1 to 128 bytes: {card.ref!r}")
    return card.ref


def section_lines(card: Card, lang: Lang) -> list[str]:
    """Every section as plain lines: the text, then "label：value" per field."""
    lines: list[str] = []
    for s in card.sections:
        if s.text:
            lines.extend(s.text.splitlines())
        lines.extend(labelled(f.label, f.value, lang) for f in s.fields)
    return lines


@dataclass(frozen=True, slots=True)
class Parts:
    """What this platform will draw of the card, decided once from the capabilities."""

    selects: tuple[Select, ...]  # drawn as drop-downs
    buttons: tuple[Button, ...]  # drawn as buttons (submit buttons only if something can be submitted)
    hints: tuple[str, ...]  # text standing in for inputs, drop-downs and photos the card cannot show
    show_inputs: bool
    show_images: bool


def parts(card: Card, caps: Capabilities, lang: Lang) -> Parts:
    hints: list[str] = []
    selects: list[Select] = []
    for s in card.selects:
        if caps.selects_in_card and len(s.options) <= caps.max_select_options:
            selects.append(s)
        else:
            hints.append(s.fallback)
            hints.extend(f"{i}. {o.label}" for i, o in enumerate(s.options, 1))
    show_inputs = caps.inputs_in_card
    if not show_inputs:
        hints.extend(i.fallback for i in card.inputs)
    if card.image_keys and not caps.images:
        hints.append(
            pick(
                lang,
                f"照片 {len(card.image_keys)} 张，请在对话中查看",
                f"{len(card.image_keys)} photo(s): see the chat",
            )
        )
    can_submit = bool(selects) or (show_inputs and bool(card.inputs))
    buttons = tuple(b for b in card.buttons if can_submit or not b.submits)
    if len(buttons) > caps.max_buttons:
        raise CardTooLarge(f"{caps.name} cards hold at most {caps.max_buttons} buttons, got {len(buttons)}")
    return Parts(tuple(selects), buttons, tuple(hints), show_inputs, caps.images and bool(card.image_keys))


def option_value(o: Option, signer: Signer, caps: Capabilities) -> str:
    return signer.pack(o.payload, caps.max_option_payload_bytes)


def initial_value(s: Select, signer: Signer, caps: Capabilities) -> str | None:
    return signer.pack(s.initial, caps.max_option_payload_bytes) if s.initial is not None else None
