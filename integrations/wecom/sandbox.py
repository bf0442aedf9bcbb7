"""The WeCom sandbox: a fake WeCom server (``/cgi-bin/...``) and a simulator for its inbound callbacks. The
test suite talks to it, and ``pandian demo`` plays its working day against it.

The fake speaks the real protocol (shared/research/platforms.md §1.2-1.4, §5.2) and keeps state:

- ``gettoken``: checks corpid and secret (40001 otherwise), issues ``T1``, ``T2``… valid 7200 s.
- every API route: no or unknown token → 40014, expired token → 42001 (``expire_tokens()`` ages them).
- ``message/send``: ``msgtype`` text or template_card; ``template_card`` needs a ``card_type``, a ``task_id``
  of ``[0-9A-Za-z_\\-@]`` ≤ 128 bytes not used before, ≤ 6 buttons; interactive cards get a ``response_code``.
  ``enable_duplicate_check``: the same message to the same user inside ``duplicate_check_interval`` is not
  delivered again (the fake answers ok with the first send's msgid: an assumption, the real answer is
  not documented).
- ``message/update_template_card``: the ``response_code`` must exist, be unused and younger than 72 h
  (``advance()`` moves the fake's clock); otherwise ``update_errcode`` (configurable: the real code is
  unknown, platforms.md §7).
- ``media/get``: bytes with their content type, or HTTP 200 + JSON 40007 for an unknown id.
- ``media/upload?type=image`` (multipart, field ``media`` with a file name): 40004 for a type other than
  image/voice/video/file, 41005 without the ``media`` part, 44001 for ≤ 5 bytes, 40005 for an image that is
  not JPG or PNG, 45001 above ``image_limit`` (2 MB: the smallest limit any copy of the doc gives); answers
  ``{type, media_id, created_at}``. The media can be fetched back with ``media/get`` and sent as
  ``msgtype: image`` (an unknown ``media_id`` there is 40007).
- faults: ``inject("45009" | "-1" | "500" | "slow", times=N, route=...)`` for the next N calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from wechatpy.crypto.base import WeChatCipher
from wechatpy.enterprise.crypto import PrpCrypto

from integrations.wecom.webhook import signature

TOKEN_TTL_S = 7200
RESPONSE_CODE_TTL_S = 72 * 3600
TASK_ID = re.compile(r"^[0-9A-Za-z_\-@]{1,128}$")
INTERACTIVE = frozenset({"button_interaction", "vote_interaction", "multiple_interaction"})
CARD_TYPES = frozenset({"text_notice", "news_notice", *INTERACTIVE})


@dataclass
class Fault:
    kind: str  # "45009", "-1", "500", "slow"
    times: int
    route: str | None  # e.g. "/cgi-bin/message/send"; None: every route but gettoken


@dataclass
class ResponseCode:
    userid: str
    task_id: str
    issued_at: float
    used: bool = False


@dataclass
class WeComFakeState:
    corp_id: str = "ww_fake_corp"
    secret: str = "fake-secret"
    agent_id: int = 1000002
    now: float = 1_717_230_000.0  # the fake's clock, in seconds; advance() moves it
    slow_s: float = 2.0
    update_errcode: int = 40058  # unknown in reality (platforms.md §7): configurable
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expires at
    token_fetches: int = 0
    calls: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)  # (path, query, json)
    delivered: list[dict[str, Any]] = field(default_factory=list)  # messages that reached a user
    task_ids: set[str] = field(default_factory=set)
    response_codes: dict[str, ResponseCode] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)  # media/upload calls that succeeded
    image_limit: int = 2 * 1024 * 1024
    faults: list[Fault] = field(default_factory=list)
    _recent: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # dup check
    _seq: int = 0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def expire_tokens(self) -> None:
        for token in self.tokens:
            self.tokens[token] = self.now - 1

    def inject(self, kind: str, *, times: int = 1, route: str | None = None) -> None:
        self.faults.append(Fault(kind, times, route))

    def issue_response_code(self, userid: str, task_id: str) -> str:
        """A code as a click callback would carry it (the simulator puts it in ``template_card_event``)."""
        code = f"RC{self._next()}_{secrets.token_hex(4)}"
        self.response_codes[code] = ResponseCode(userid, task_id, self.now)
        return code

    def add_media(self, data: bytes, content_type: str = "image/jpeg") -> str:
        media_id = f"MEDIA{self._next()}"
        self.media[media_id] = (data, content_type)
        return media_id

    def calls_to(self, path: str) -> list[tuple[str, dict[str, str], Any]]:
        return [c for c in self.calls if c[0] == path]

    def _next(self) -> int:
        self._seq += 1
        return self._seq


async def _body(request: web.Request) -> Any:
    """The JSON body (aiohttp keeps the bytes, so this can be read twice), or None. A multipart upload is
    left unread here, for its route to parse."""
    if not request.body_exists or request.content_type == "multipart/form-data":
        return None
    try:
        return await request.json()
    except ValueError:
        return None


def _err(code: int, msg: str) -> web.Response:
    return web.json_response({"errcode": code, "errmsg": msg})


def build_wecom_fake_app(state: WeComFakeState) -> web.Application:
    @web.middleware
    async def record_and_inject(request: web.Request, handler: Any) -> web.StreamResponse:
        state.calls.append((request.path, dict(request.query), await _body(request)))
        for fault in state.faults:
            applies = fault.route == request.path or (
                fault.route is None and request.path != "/cgi-bin/gettoken"
            )
            if fault.times > 0 and applies:
                fault.times -= 1
                if fault.kind == "slow":
                    await asyncio.sleep(state.slow_s)
                    break
                if fault.kind == "500":
                    return web.Response(status=500, text="internal error")
                return _err(int(fault.kind), "injected fault")
        if request.path != "/cgi-bin/gettoken":
            token = request.query.get("access_token", "")
            if token not in state.tokens:
                return _err(40014, "invalid access_token")
            if state.tokens[token] <= state.now:
                return _err(42001, "access_token expired")
        return await handler(request)

    async def gettoken(request: web.Request) -> web.Response:
        if request.query.get("corpid") != state.corp_id or request.query.get("corpsecret") != state.secret:
            return _err(40001, "invalid credential")
        state.token_fetches += 1
        token = f"T{state._next()}"
        state.tokens[token] = state.now + TOKEN_TTL_S
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": TOKEN_TTL_S}
        )

    async def send(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or not body.get("touser"):
            return _err(40058, "touser missing")
        if body.get("agentid") != state.agent_id:
            return _err(40056, "invalid agentid")
        msgtype = body.get("msgtype")
        if msgtype not in ("text", "template_card", "image") or not isinstance(body.get(msgtype), dict):
            return _err(40008, "invalid message type")
        if msgtype == "image" and body["image"].get("media_id") not in state.media:
            return _err(40007, "invalid media_id")
        dup_key = json.dumps([body["touser"], msgtype, body[msgtype]], sort_keys=True, ensure_ascii=False)
        if body.get("enable_duplicate_check") == 1:
            interval = min(int(body.get("duplicate_check_interval", 1800)), 4 * 3600)
            seen = state._recent.get(dup_key)
            if seen is not None and state.now - seen[0] < interval:
                return web.json_response(seen[1])
        answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": ""}
        if msgtype == "template_card":
            card = body["template_card"]
            card_type = card.get("card_type")
            if card_type not in CARD_TYPES:
                return _err(40058, "invalid card_type")
            task_id = card.get("task_id")
            if card_type in INTERACTIVE or task_id is not None:
                if not isinstance(task_id, str) or not TASK_ID.match(task_id) or len(task_id.encode()) > 128:
                    return _err(40058, "invalid task_id")
                if task_id in state.task_ids:
                    return _err(40058, "task_id duplicated")
            if len(card.get("button_list", [])) > 6:
                return _err(40058, "too many buttons")
            if len(card.get("horizontal_content_list", [])) > 6:
                return _err(40058, "too many horizontal_content_list items")
            if task_id is not None:
                state.task_ids.add(task_id)
            if card_type in INTERACTIVE:
                answer["response_code"] = state.issue_response_code(body["touser"], task_id)
        answer["msgid"] = f"MSG{state._next()}"
        state.delivered.append(body)
        state._recent[dup_key] = (state.now, answer)
        return web.json_response(answer)

    async def update_template_card(request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict) or body.get("agentid") != state.agent_id:
            return _err(40056, "invalid agentid")
        code = state.response_codes.get(str(body.get("response_code")))
        if code is None or code.used or state.now - code.issued_at > RESPONSE_CODE_TTL_S:
            return _err(state.update_errcode, "invalid response_code")
        if ("button" in body) == ("template_card" in body):
            return _err(40058, "one of button or template_card")
        code.used = True
        state.updates.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok", "invaliduser": []})

    async def media_get(request: web.Request) -> web.Response:
        item = state.media.get(request.query.get("media_id", ""))
        if item is None:
            return _err(40007, "invalid media_id")  # HTTP 200, JSON: the client must look at the type
        data, content_type = item
        return web.Response(
            body=data,
            content_type=content_type,
            headers={"Content-disposition": f'attachment; filename="{request.query["media_id"]}.jpg"'},
        )

    async def media_upload(request: web.Request) -> web.Response:
        kind = request.query.get("type")
        if kind not in ("image", "voice", "video", "file"):
            return _err(40004, "invalid media type")
        if request.content_type != "multipart/form-data":
            return _err(41005, "media data missing")
        form = await request.post()
        part = form.get("media")
        if not isinstance(part, web.FileField) or not part.filename:
            return _err(41005, "media data missing")
        data = part.file.read()
        if len(data) <= 5:
            return _err(44001, "empty media data")
        if kind == "image":
            if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
                return _err(40005, "invalid file type")
            if len(data) > state.image_limit:
                return _err(45001, "media size out of limit")
        media_id = f"3{secrets.token_hex(8)}_{state._next()}"
        state.media[media_id] = (data, part.content_type or "application/octet-stream")
        state.uploads.append(
            {"media_id": media_id, "type": kind, "filename": part.filename, "size": len(data)}
        )
        return web.json_response(
            {
                "errcode": 0,
                "errmsg": "",
                "type": kind,
                "media_id": media_id,
                "created_at": str(int(state.now)),
            }
        )

    app = web.Application(middlewares=[record_and_inject])
    app.router.add_get("/cgi-bin/gettoken", gettoken)
    app.router.add_post("/cgi-bin/media/upload", media_upload)
    app.router.add_post("/cgi-bin/message/send", send)
    app.router.add_post("/cgi-bin/message/update_template_card", update_template_card)
    app.router.add_get("/cgi-bin/media/get", media_get)
    return app


# -- inbound simulator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    method: str
    query: dict[str, str]
    body: bytes = b""

    @property
    def query_string(self) -> str:
        return urlencode(self.query)


@dataclass
class WeComSimulator:
    """Builds callback requests exactly as WeCom sends them: encrypted with wechatpy's PrpCrypto
    (``random16 + len + msg + receive id``, PKCS#7 to 32) and signed over the ``Encrypt`` value."""

    token: str
    encoding_aes_key: str
    corp_id: str
    agent_id: int

    @property
    def key(self) -> bytes:
        return base64.b64decode(self.encoding_aes_key + "=")

    def encrypt(self, plaintext: str, *, receive_id: str | None = None) -> str:
        rid = self.corp_id if receive_id is None else receive_id
        return str(PrpCrypto(self.key).encrypt(plaintext, rid).decode())

    def verify_url(self, echostr: str, *, timestamp: int, nonce: str = "n0nce") -> SignedRequest:
        enc = self.encrypt(echostr)
        return SignedRequest("GET", self._query(enc, timestamp, nonce) | {"echostr": enc})

    def post(
        self, inner_xml: str, *, timestamp: int, nonce: str = "n0nce", encrypt: str | None = None
    ) -> SignedRequest:
        enc = self.encrypt(inner_xml) if encrypt is None else encrypt
        body = (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<AgentID><![CDATA[{self.agent_id}]]></AgentID><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
        )
        return SignedRequest("POST", self._query(enc, timestamp, nonce), body.encode())

    def text(self, user: str, content: str, *, msg_id: int, timestamp: int) -> SignedRequest:
        return self.post(
            self._inner(user, timestamp, "text", Content=content, MsgId=str(msg_id)), timestamp=timestamp
        )

    def image(self, user: str, media_id: str, *, msg_id: int, timestamp: int) -> SignedRequest:
        pic = f"https://wework.qpic.cn/fake/{media_id}"
        return self.post(
            self._inner(user, timestamp, "image", PicUrl=pic, MediaId=media_id, MsgId=str(msg_id)),
            timestamp=timestamp,
        )

    def card_event(
        self,
        user: str,
        *,
        event_key: str,
        task_id: str,
        response_code: str,
        timestamp: int,
        card_type: str = "button_interaction",
        selected: Mapping[str, list[str]] | None = None,
    ) -> SignedRequest:
        items = ""
        if selected:
            items = "<SelectedItems>" + "".join(
                f"<SelectedItem><QuestionKey><![CDATA[{q}]]></QuestionKey><OptionIds>"
                + "".join(f"<OptionId><![CDATA[{o}]]></OptionId>" for o in opts)
                + "</OptionIds></SelectedItem>"
                for q, opts in selected.items()
            )
            items += "</SelectedItems>"
        inner = self._inner(
            user,
            timestamp,
            "event",
            Event="template_card_event",
            EventKey=event_key,
            TaskId=task_id,
            CardType=card_type,
            ResponseCode=response_code,
            extra=items,
        )
        return self.post(inner, timestamp=timestamp)

    def event(self, user: str, event: str, *, timestamp: int) -> SignedRequest:
        return self.post(self._inner(user, timestamp, "event", Event=event), timestamp=timestamp)

    def _query(self, encrypt: str, timestamp: int, nonce: str) -> dict[str, str]:
        ts = str(timestamp)
        return {"msg_signature": signature(self.token, ts, nonce, encrypt), "timestamp": ts, "nonce": nonce}

    def _inner(self, user: str, timestamp: int, msg_type: str, *, extra: str = "", **fields: str) -> str:
        parts = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
        return (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{timestamp}</CreateTime>"
            f"<MsgType><![CDATA[{msg_type}]]></MsgType>{parts}{extra}<AgentID>{self.agent_id}</AgentID></xml>"
        )


def encrypt_raw(key: bytes, plain: bytes) -> str:
    """AES-CBC (wechatpy's cipher) over bytes framed by hand: for bad-padding and bad-length cases."""
    return base64.b64encode(WeChatCipher(key).encrypt(plain)).decode()


def frame(message: bytes, receive_id: bytes, *, pad: int | None = None) -> bytes:
    """``random16 + len + message + receive id`` padded to 32 bytes; ``pad`` overrides the padding byte."""
    body = secrets.token_bytes(16) + struct.pack(">I", len(message)) + message + receive_id
    n = 32 - len(body) % 32
    return body + bytes([n if pad is None else pad]) * n
