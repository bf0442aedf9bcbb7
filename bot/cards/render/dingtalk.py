"""DingTalk card data: the ``cardParamMap`` for an interactive card built from our Card Builder template.

Every value is a string (platforms.md §3.2): lists and objects are JSON text, flags are ``"true"`` /
``"false"``, and the template's own config (``autoLayout``) travels inside the map too. The template is the
contract; its variables are the keys below:

- ``title``, ``subtitle``, ``tone`` (blue/green/orange/red/grey), ``text`` (all sections as plain lines),
  ``sections`` (JSON ``[{"text", "fields": [{"label", "value"}]}]``), ``hint`` (how to answer in the chat),
  ``footer``, ``lang``, ``ref``
- ``buttons`` (JSON ``[{"label", "style", "value"}]``, ``value`` a packed payload the template sends back as
  an action parameter), ``selects`` (JSON ``[{"name", "placeholder", "initial", "options": [{"label",
  "value"}]}]``), ``images`` (JSON list of image keys)
- ``has_buttons``, ``has_selects``, ``has_images`` for the template's visibility rules
"""

from __future__ import annotations

import json
from typing import Any

from bot.cards.capabilities import DINGTALK
from bot.cards.model import Card, Lang
from bot.cards.render.common import Signer, check_ref, initial_value, option_value, parts, section_lines

CAPABILITIES = DINGTALK


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def render(card: Card, *, lang: Lang, signer: Signer) -> dict[str, str]:
    caps = CAPABILITIES
    p = parts(card, caps, lang)
    buttons = [
        {
            "label": b.label,
            "style": b.style.value,
            "value": signer.pack(b.payload, caps.max_button_payload_bytes),
        }
        for b in p.buttons
    ]
    selects = [
        {
            "name": s.name,
            "placeholder": s.placeholder,
            "initial": initial_value(s, signer, caps) or "",
            "options": [{"label": o.label, "value": option_value(o, signer, caps)} for o in s.options],
        }
        for s in p.selects
    ]
    images = list(card.image_keys) if p.show_images else []
    sections = [
        {"text": s.text or "", "fields": [{"label": f.label, "value": f.value} for f in s.fields]}
        for s in card.sections
    ]
    out = {
        "config": _json({"autoLayout": True}),
        "lang": lang,
        "ref": check_ref(card),
        "title": card.title,
        "subtitle": card.subtitle or "",
        "tone": card.template.value,
        "text": "\n".join(section_lines(card, lang)),
        "sections": _json(sections),
        "hint": "\n".join(p.hints),
        "footer": card.footer or "",
        "buttons": _json(buttons),
        "selects": _json(selects),
        "images": _json(images),
        "has_buttons": _flag(bool(buttons)),
        "has_selects": _flag(bool(selects)),
        "has_images": _flag(bool(images)),
    }
    if card.links:  # strings only, like every DingTalk card value
        out["links"] = _json([{"title": x.title, "url": x.url} for x in card.links])
        out["links_md"] = "　".join(f"[{x.title}]({x.url})" for x in card.links)
    return out
