"""WeCom ``template_card`` (card_type ``button_interaction``).

Returns the ``template_card`` object, for ``message/send`` or ``message/update_template_card``.

Every card is a ``button_interaction`` card, also the ones without buttons (the button list may be empty):
``text_notice`` requires a ``card_action`` link, and pandian's cards have no web page to link to.
A ``button_interaction`` card also keeps its ``task_id``, so it can be replaced after a decision.

Limits (doc 90236; most are "建议不超过 N 个字", applied here as N CJK characters = 2N columns, cut with "…"):
title 36, title desc 44, sub_title_text 160, ``horizontal_content_list`` at most 6 items with keyname 5 and
value 26, button text 10, drop-down option text 16, button ``key`` ≤ 1024 bytes, option ``id`` ≤ 128
bytes, at most 6 buttons and 10 options, ``task_id`` ``[0-9A-Za-z_-@]`` ≤ 128 bytes.
"""

from __future__ import annotations

from typing import Any

from bot.cards.capabilities import WECOM
from bot.cards.model import ButtonStyle, Card, Field, Lang, Tone, labelled, pick
from bot.cards.render.common import (
    CardTooLarge,
    Signer,
    check_ref,
    fit,
    fit_lines,
    initial_value,
    option_value,
    parts,
    width,
)

CAPABILITIES = WECOM

TITLE_W = 72
DESC_W = 88
SUB_TITLE_W = 320
KEYNAME_W = 10
VALUE_W = 52
BUTTON_W = 20
OPTION_W = 32
SELECT_TITLE_W = 20
MAX_FIELDS = 6

_STYLE = {ButtonStyle.PRIMARY: 1, ButtonStyle.DEFAULT: 2, ButtonStyle.DANGER: 3}
# source.desc_color: 0 grey, 1 black, 2 red, 3 green
_DESC_COLOR = {Tone.BLUE: 1, Tone.GREEN: 3, Tone.ORANGE: 2, Tone.RED: 2, Tone.GREY: 0}


def render(card: Card, *, lang: Lang, signer: Signer) -> dict[str, Any]:
    caps = CAPABILITIES
    p = parts(card, caps, lang)
    fields: list[Field] = [f for s in card.sections for f in s.fields]
    shown, overflow = fields[:MAX_FIELDS], fields[MAX_FIELDS:]

    lines: list[str] = []
    for s in card.sections:
        if s.text:
            lines.extend(s.text.splitlines())
    lines.extend(labelled(f.label, f.value, lang) for f in overflow)
    tail = [*p.hints, *([card.footer] if card.footer else [])]
    # The hints say how to answer; they must survive, so the body is cut first.
    room = SUB_TITLE_W - (width("\n".join(tail)) + 1 if tail else 0)
    body = fit_lines(lines, room) if lines and room > 2 else []
    sub_title = "\n".join(fit_lines([*body, *tail], SUB_TITLE_W))

    out: dict[str, Any] = {
        "card_type": "button_interaction",
        "source": {"desc": pick(lang, "盘点助手", "Pandian"), "desc_color": _DESC_COLOR[card.template]},
        "main_title": {"title": fit(card.title, TITLE_W)},
    }
    if card.subtitle:
        out["main_title"]["desc"] = fit(card.subtitle, DESC_W)
    if sub_title:
        out["sub_title_text"] = sub_title
    if shown:
        out["horizontal_content_list"] = [
            {"keyname": fit(f.label, KEYNAME_W), "value": fit(f.value, VALUE_W)} for f in shown
        ]
    if len(p.selects) > 1:
        raise CardTooLarge("a WeCom card holds one drop-down")
    for sel in p.selects:
        selection: dict[str, Any] = {
            "question_key": sel.name,
            "title": fit(sel.placeholder, SELECT_TITLE_W),
            "option_list": [
                {"id": option_value(o, signer, caps), "text": fit(o.label, OPTION_W)} for o in sel.options
            ],
        }
        initial = initial_value(sel, signer, caps)
        if initial is not None:
            selection["selected_id"] = initial
        out["button_selection"] = selection
    if card.links:  # WeCom's jump_list: at most 3 links under the card
        out["jump_list"] = [{"type": 1, "title": fit(x.title, DESC_W), "url": x.url} for x in card.links[:3]]
    out["task_id"] = check_ref(card)
    out["button_list"] = [
        {
            "text": fit(b.label, BUTTON_W),
            "style": _STYLE[b.style],
            "key": signer.pack(b.payload, caps.max_button_payload_bytes),
        }
        for b in p.buttons
    ]
    return out
