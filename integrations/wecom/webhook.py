"""WeCom callback endpoint logic: verify, decrypt, parse. Pure and synchronous; the HTTP adapter calls it.

shared/research/platforms.md §1.1: GET is the URL handshake (answer the decrypted ``echostr`` within 1 s),
POST carries ``<xml><ToUserName/><AgentID/><Encrypt/></xml>`` signed with
``sha1(sort(token, timestamp, nonce, Encrypt))``. An empty 200 acknowledges; anything else makes WeCom retry.

The crypto is wechatpy's (``wechatpy.enterprise.crypto.PrpCrypto``, the corp-id variant, which checks the
receive id) on top of wechatpy's AES-CBC cipher; this module only adds a strict PKCS#7 check (wechatpy
slices the padding off without looking at it) and a constant-time signature comparison.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from xml.etree import ElementTree

from wechatpy.crypto.base import WeChatCipher
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.utils import WeChatSigner

from bot.events import (
    CardAction,
    Forged,
    ImageMessage,
    InboundEvent,
    Malformed,
    Platform,
    Replayed,
    Sender,
    TextMessage,
    WebhookRefused,
    WebhookReply,
)
from integrations.wecom.settings import WeComSettings

BLOCK = 32  # WeCom pads to 32 bytes, not to the AES block size
_MAX_BODY = 256 * 1024


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """``sha1(sort([token, timestamp, nonce, encrypt]))`` as hex (wechatpy's signer)."""
    signer = WeChatSigner()
    signer.add_data(token, timestamp, nonce, encrypt)
    return str(signer.signature)


class WeComWebhook:
    def __init__(self, settings: WeComSettings) -> None:
        self.settings = settings
        self._key = base64.b64decode(settings.encoding_aes_key + "=")
        if len(self._key) != 32:
            raise ValueError("EncodingAESKey must decode to 32 bytes")

    # -- entry point -------------------------------------------------------------------------------------

    def handle(self, method: str, query: Mapping[str, str], body: bytes, now: datetime) -> WebhookReply:
        """Answer one callback request. ``now`` is an aware datetime. Raises ``WebhookRefused``."""
        method = method.upper()
        if method == "GET":
            echostr = self._open(query, _param(query, "echostr"), now)
            return WebhookReply(body=echostr.encode("utf-8"))
        if method == "POST":
            encrypt = _outer_encrypt(body)
            plaintext = self._open(query, encrypt, now)
            events = self._parse(plaintext, now)
            return WebhookReply(events=events)
        raise WebhookRefused(405, f"method {method} not allowed")

    # -- signature, window, decryption -------------------------------------------------------------------

    def _open(self, query: Mapping[str, str], encrypt: str, now: datetime) -> str:
        sig = _param(query, "msg_signature")
        timestamp = _param(query, "timestamp")
        nonce = _param(query, "nonce")
        expected = signature(self.settings.token, timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), sig.lower().encode()):
            raise Forged()
        try:
            sent = int(timestamp)
        except ValueError:
            raise Malformed("timestamp is not an integer") from None
        # The window (300 s) holds every genuine retry even if a retry kept its first timestamp: WeCom retries
        # a callback it got no 200 for at once, three times, each after its 5 s deadline (doc 90238, platforms.md
        # §1.1), so the last retry comes some 20 s after the first push. A replay inside the window is a copy of
        # a signed push whose dedup key is already in inbound_seen (kept, never pruned): dropped (issue 10 §6).
        if abs(now.timestamp() - sent) > self.settings.timestamp_window_s:
            raise Replayed()
        return self._decrypt(encrypt)

    def _decrypt(self, encrypt: str) -> str:
        try:
            raw = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("Encrypt is not base64") from None
        if not raw or len(raw) % BLOCK:
            raise Malformed("ciphertext length is not a multiple of 32")
        plain: bytes = WeChatCipher(self._key).decrypt(raw)
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise Malformed("bad padding")
        content = plain[16:-pad]
        if len(content) < 4 or struct.unpack(">I", content[:4])[0] > len(content) - 4:
            raise Malformed("bad message length")
        try:
            text: str = PrpCrypto(self._key).decrypt(encrypt, self.settings.corp_id)
        except InvalidCorpIdException:
            raise Malformed("wrong receive id") from None
        except (UnicodeDecodeError, ValueError, struct.error):
            raise Malformed("undecodable plaintext") from None
        return text

    # -- parsing -----------------------------------------------------------------------------------------

    def _parse(self, plaintext: str, now: datetime) -> tuple[InboundEvent, ...]:
        fields, selected = _inner_fields(plaintext)
        agent = fields.get("AgentID")
        if agent and agent != str(self.settings.agent_id):
            raise Malformed("message for another agent")
        msg_type = _need(fields, "MsgType")
        user = _need(fields, "FromUserName")
        common: dict[str, Any] = {
            "platform": Platform.WECOM,
            "sender": Sender(Platform.WECOM, user),
            "received_at": now,
            "raw": fields,
        }
        if msg_type == "text":
            msg_id = _need(fields, "MsgId")
            return (TextMessage(dedup_key=f"wecom:msg:{msg_id}", text=fields.get("Content", ""), **common),)
        if msg_type == "image":
            msg_id = _need(fields, "MsgId")
            return (
                ImageMessage(
                    dedup_key=f"wecom:msg:{msg_id}",
                    media_ref=_need(fields, "MediaId"),
                    message_id=msg_id,
                    download_url=fields.get("PicUrl") or None,
                    **common,
                ),
            )
        if msg_type == "event" and fields.get("Event") == "template_card_event":
            created = _need(fields, "CreateTime")
            key = _need(fields, "EventKey")
            task_id = _need(fields, "TaskId")
            return (
                CardAction(
                    dedup_key=f"wecom:card:{user}:{created}:{key}:{task_id}",
                    payload=key,
                    form=selected,
                    card_ref=task_id,
                    update_token=fields.get("ResponseCode") or None,
                    **common,
                ),
            )
        return ()  # other messages and events: acknowledged, not handled


def _param(query: Mapping[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise Malformed(f"missing query parameter {name}")
    return value


def _xml(body: bytes | str) -> ElementTree.Element:
    data = body.encode("utf-8") if isinstance(body, str) else body
    if len(data) > _MAX_BODY:
        raise Malformed("body too large")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise Malformed("DTDs are not accepted")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        raise Malformed("not XML") from None
    if root.tag != "xml":
        raise Malformed("root element is not <xml>")
    return root


def _outer_encrypt(body: bytes) -> str:
    node = _xml(body).find("Encrypt")
    if node is None or not (node.text or "").strip():
        raise Malformed("no Encrypt element")
    return (node.text or "").strip()


def _inner_fields(plaintext: str) -> tuple[dict[str, str], dict[str, str]]:
    """Top-level text fields, and ``SelectedItems`` as ``{QuestionKey: OptionId[,OptionId…]}``."""
    root = _xml(plaintext)
    fields = {child.tag: (child.text or "").strip() for child in root if len(child) == 0}
    selected: dict[str, str] = {}
    for item in root.iterfind("SelectedItems/SelectedItem"):
        question = (item.findtext("QuestionKey") or "").strip()
        options = [(o.text or "").strip() for o in item.iterfind("OptionIds/OptionId")]
        if question:
            selected[question] = ",".join(o for o in options if o)
    return fields, selected


def _need(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise Malformed(f"missing field {name}")
    return value
