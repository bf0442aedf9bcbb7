"""Feishu card JSON 2.0 (``schema: "2.0"``), for ``im/v1/messages`` with ``msg_type=interactive``.

Text is ``plain_text`` so that item names and notes are never read as markdown. Buttons call back with
``behaviors: [{"type": "callback", "value": {"p": <packed payload>}}]``. Inputs and the reason drop-down
sit in one ``form`` at the card root, with the card's submitting buttons; on submit the callback carries
``action.value.p`` and ``action.form_value`` (``{"qty": "12"}``, ``{"reason": <packed PickReason>, ...}``).
"""

from __future__ import annotations

import json
from typing import Any

from bot.cards.capabilities import FEISHU
from bot.cards.model import Button, Card, Lang, NoteInput, labelled, pick
from bot.cards.render.common import CardTooLarge, Signer, initial_value, option_value, parts

CAPABILITIES = FEISHU


def _pt(text: str) -> dict[str, str]:
    return {"tag": "plain_text", "content": text}


def _div(text: str) -> dict[str, Any]:
    return {"tag": "div", "text": _pt(text)}


def _button(b: Button, signer: Signer) -> dict[str, Any]:
    out: dict[str, Any] = {"tag": "button", "text": _pt(b.label), "type": b.style.value}
    if b.submits:
        out["name"] = f"submit_{b.payload.prefix}"
        out["form_action_type"] = "submit"
    value = {"p": signer.pack(b.payload, CAPABILITIES.max_button_payload_bytes)}
    out["behaviors"] = [{"type": "callback", "value": value}]
    return out


def render(card: Card, *, lang: Lang, signer: Signer) -> dict[str, Any]:
    caps = CAPABILITIES
    p = parts(card, caps, lang)
    elements: list[dict[str, Any]] = []
    for s in card.sections:
        lines = [
            *(s.text.splitlines() if s.text else []),
            *(labelled(f.label, f.value, lang) for f in s.fields),
        ]
        if lines:
            elements.append(_div("\n".join(lines)))
    if p.show_images:
        for i, key in enumerate(card.image_keys, 1):
            elements.append({"tag": "img", "img_key": key, "alt": _pt(pick(lang, f"照片 {i}", f"Photo {i}"))})
    if card.links:
        elements.append(
            {"tag": "markdown", "content": "　".join(f"[{x.title}]({x.url})" for x in card.links)}
        )
    if p.hints:
        elements.append(_div("\n".join(p.hints)))

    form: list[dict[str, Any]] = []
    for sel in p.selects:
        select: dict[str, Any] = {
            "tag": "select_static",
            "name": sel.name,
            "required": True,
            "placeholder": _pt(sel.placeholder),
            "options": [{"text": _pt(o.label), "value": option_value(o, signer, caps)} for o in sel.options],
        }
        initial = initial_value(sel, signer, caps)
        if initial is not None:
            select["initial_option"] = initial
        form.append(select)
    if p.show_inputs:
        for inp in card.inputs:
            box: dict[str, Any] = {"tag": "input", "name": inp.name, "required": inp.required}
            if isinstance(inp, NoteInput):
                box["input_type"] = "multiline_text"
            box["placeholder"] = _pt(inp.placeholder)
            form.append(box)
    if form:
        form.extend(_button(b, signer) for b in p.buttons if b.submits)
        elements.append({"tag": "form", "name": "form", "elements": form})
    others = [b for b in p.buttons if not b.submits]
    if others:
        elements.append(
            {
                "tag": "column_set",
                "columns": [{"tag": "column", "elements": [_button(b, signer)]} for b in others],
            }
        )
    if card.footer:
        elements.append({"tag": "hr"})
        elements.append(_div(card.footer))

    header: dict[str, Any] = {"title": _pt(card.title)}
    if card.subtitle:
        header["subtitle"] = _pt(card.subtitle)
    header["template"] = card.template.value
    out = {
        "schema": "2.0",
        "config": {"update_multi": True},
        "header": header,
        "body": {"elements": elements},
    }
    size = len(json.dumps(out, ensure_ascii=False).encode())
    if caps.max_card_bytes is not None and size > caps.max_card_bytes:
        raise CardTooLarge(f"Feishu card is {size} bytes, limit {caps.max_card_bytes}")
    return out
