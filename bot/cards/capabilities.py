"""What each platform's cards can hold. Renderers read these flags; nobody checks which platform it is.

Sources (see shared/research/platforms.md, and the notes on each value):
- WeCom ``template_card`` (doc 90236, limits as quoted in SDK doc-comments): ≤ 6 buttons, ≤ 6
  ``horizontal_content_list`` items, button ``key`` ≤ 1024 bytes, ``button_selection`` ≤ 10 options with
  ``id`` ≤ 128 bytes, ``task_id`` ≤ 128 bytes; no input boxes and no images in ``button_interaction``.
- Feishu card JSON 2.0: forms with ``input`` and ``select_static``, ``img`` by ``img_key``; card ≤ 30 KB.
  No documented limit on buttons or on the callback ``value``: the numbers below are our own caps.
- DingTalk card instances: the layout lives in a Card Builder template; ``cardParamMap`` values are strings.
  Buttons and drop-downs are whatever the template draws from our JSON lists; no documented limits, the
  numbers below are our own caps. Input boxes are not used (the counter replies in the chat).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capabilities:
    name: str
    inputs_in_card: bool  # quantity and note boxes inside the card
    selects_in_card: bool  # a drop-down inside the card
    images: bool  # photos shown inside the card
    max_buttons: int
    max_select_options: int
    max_button_payload_bytes: int
    max_option_payload_bytes: int
    max_card_bytes: int | None = None


WECOM = Capabilities(
    name="wecom",
    inputs_in_card=False,
    selects_in_card=True,
    images=False,
    max_buttons=6,
    max_select_options=10,
    max_button_payload_bytes=1024,
    max_option_payload_bytes=128,
)

FEISHU = Capabilities(
    name="feishu",
    inputs_in_card=True,
    selects_in_card=True,
    images=True,
    max_buttons=10,
    max_select_options=50,
    max_button_payload_bytes=1024,
    max_option_payload_bytes=1024,
    max_card_bytes=30 * 1024,
)

DINGTALK = Capabilities(
    name="dingtalk",
    inputs_in_card=False,
    selects_in_card=True,
    images=True,
    max_buttons=6,
    max_select_options=20,
    max_button_payload_bytes=1024,
    max_option_payload_bytes=1024,
)
