"""The neutral card: what a card says, not how a platform draws it.

Builders (one module per card) turn plain data into a :class:`Card`; renderers in ``bot.cards.render`` turn a
card into one platform's JSON. Nothing here knows about a platform. A platform that cannot show a part
(an input box, a drop-down, an image) shows the part's ``fallback`` text instead, so builders never ask which
platform they are building for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from bot.cards.payload import Payload

Lang = Literal["zh", "en"]


def pick(lang: Lang, zh: str, en: str) -> str:
    """Chinese for people by default; English when the user's locale asks for it."""
    return en if lang == "en" else zh


def labelled(label: str, value: str, lang: Lang) -> str:
    """ "库位：A-01-03" / "Location: A-01-03"."""
    return f"{label}{pick(lang, '：', ': ')}{value}"


def aside(text: str, lang: Lang) -> str:
    """A bracketed aside: "（张三）" / " (Zhang San)"."""
    return pick(lang, f"（{text}）", f" ({text})")


class Tone(StrEnum):
    """The header colour. The values are Feishu's header templates; other renderers map them."""

    BLUE = "blue"
    GREEN = "green"
    ORANGE = "orange"
    RED = "red"
    GREY = "grey"


class ButtonStyle(StrEnum):
    PRIMARY = "primary"
    DEFAULT = "default"
    DANGER = "danger"


@dataclass(frozen=True, slots=True)
class Field:
    """A labelled value, such as 库位 / A-01-03."""

    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Section:
    """A block of plain text, of labelled fields, or both (text first)."""

    text: str | None = None
    fields: tuple[Field, ...] = ()


@dataclass(frozen=True, slots=True)
class Button:
    """A button that calls back with a typed payload.

    ``submits`` marks the button that sends the card's inputs and selections (a Feishu form's submit
    button). Where nothing on the card can be filled in, a submitting button has nothing to send and the
    renderer leaves it out: the person replies in the chat instead.
    """

    label: str
    payload: Payload
    style: ButtonStyle = ButtonStyle.DEFAULT
    submits: bool = False


@dataclass(frozen=True, slots=True)
class QuantityInput:
    """A box for a counted quantity. ``fallback`` is shown where cards cannot hold inputs."""

    name: str
    placeholder: str
    fallback: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class NoteInput:
    """A free-text note (multi-line where the platform has it)."""

    name: str
    placeholder: str
    fallback: str
    required: bool = False


Input = QuantityInput | NoteInput


@dataclass(frozen=True, slots=True)
class Option:
    label: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class Link:
    """A link the card offers (a count photo served by pandian under a signed, expiring address)."""

    title: str
    url: str


@dataclass(frozen=True, slots=True)
class Select:
    """A single choice. Each option carries its own payload, so the choice is as tamper-proof as a button.

    ``fallback`` introduces a numbered list of the options where the card cannot show the drop-down
    ("回复序号选择原因：").
    """

    name: str
    placeholder: str
    options: tuple[Option, ...]
    fallback: str
    initial: Payload | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """One card. ``ref`` names it for updates (WeCom ``task_id``): ``[0-9A-Za-z_-@]``, at most 128 bytes,
    unique per message sent."""

    ref: str
    title: str
    subtitle: str | None = None
    sections: tuple[Section, ...] = ()
    buttons: tuple[Button, ...] = ()
    inputs: tuple[Input, ...] = ()
    selects: tuple[Select, ...] = ()
    image_keys: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    footer: str | None = None
    template: Tone = Tone.BLUE

    def payloads(self) -> tuple[Payload, ...]:
        """Every payload the card can send back (buttons and options)."""
        out: list[Payload] = [b.payload for b in self.buttons]
        for s in self.selects:
            out.extend(o.payload for o in s.options)
        return tuple(out)
