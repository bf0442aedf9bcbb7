"""A fake Feishu Open API and a platform simulator, speaking the real protocol (shared/research/platforms.md §5.3).

``FeishuFake`` holds the state (issued tokens, sent messages, resources, uploaded images, recorded requests,
injected faults); ``build_feishu_fake_app`` serves it under ``/open-apis``. ``POST /open-apis/im/v1/images``
takes a multipart ``image_type`` (message | avatar) and ``image`` file and answers ``data.image_key``; its
errors (HTTP 400): 234001 bad parameter, 234010 empty file, 234006 over 10 MB, 234011 not an image (codes as
the upload doc lists them, not checked against the live API). A ``msg_type: image`` send must name an
uploaded ``image_key`` (230001 otherwise: the real code for an unknown key is not verified). ``FeishuSimulator`` builds the bodies Feishu would
POST to our webhook: schema 2.0 envelopes, encrypted and signed with its own crypto (independent of
``integrations.feishu.crypto``, so a round trip checks one against the other).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from Crypto.Cipher import AES

RATE_LIMITED = 99991400
TOKEN_INVALID = 99991663
TOKEN_MISSING = 99991661
IMAGE_BAD_PARAM, IMAGE_TOO_BIG, IMAGE_EMPTY, IMAGE_NOT_IMAGE = 234001, 234006, 234010, 234011
MAX_IMAGE_BYTES = 10 * 1024 * 1024
CARD_NOT_UPDATABLE = 230099  # the exact code for "update_multi missing" is not verified; any non-zero code


@dataclass
class Fault:
    status: int = 500
    code: int | None = None
    msg: str = "injected"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FeishuFake:
    app_id: str = "cli_test"
    app_secret: str = "secret"
    expire: int = 7200
    qps_per_receiver: int = 5
    clock: Callable[[], float] = time.monotonic
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expires at (clock)
    issued: list[str] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_uuid: dict[str, str] = field(default_factory=dict)
    resources: dict[tuple[str, str], bytes] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)  # uploaded: image_key -> bytes
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    _sends: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def fail_next(self, route: str, fault: Fault, times: int = 1) -> None:
        """Inject ``fault`` on the next ``times`` calls to ``route`` ("token", "send", "patch", "resource",
        "image")."""
        self.faults[route].extend([fault] * times)

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def sent(self) -> list[dict[str, Any]]:
        return list(self.messages.values())

    # -- helpers used by the routes --

    def _fault(self, route: str) -> web.Response | None:
        q = self.faults.get(route)
        if not q:
            return None
        f = q.popleft()
        body = {"code": f.code if f.code is not None else f.status, "msg": f.msg}
        return web.json_response(body, status=f.status, headers=f.headers)

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:]:
            return web.json_response({"code": TOKEN_MISSING, "msg": "missing access token"}, status=400)
        expires = self.tokens.get(auth[7:])
        if expires is None or expires <= self.clock():
            return web.json_response({"code": TOKEN_INVALID, "msg": "invalid access token"}, status=400)
        return None


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def build_feishu_fake_app(fake: FeishuFake) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        fake.requests.append(("token", ""))
        if (f := fake._fault("token")) is not None:
            return f
        body = await request.json()
        if body.get("app_id") != fake.app_id or body.get("app_secret") != fake.app_secret:
            return _error(10014, "app secret invalid")
        now = fake.clock()
        live = [(t, exp) for t, exp in fake.tokens.items() if exp - now >= 1800]
        if live:  # same token until < 30 min remain (platforms.md §2.3)
            t, exp = live[-1]
        else:
            t, exp = f"t-{len(fake.issued) + 1}", now + fake.expire
            fake.tokens[t] = exp
            fake.issued.append(t)
        return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": t, "expire": int(exp - now)})

    async def send(request: web.Request) -> web.Response:
        fake.requests.append(("send", request.query_string))
        if (r := fake._auth(request)) is not None:
            return r
        if (f := fake._fault("send")) is not None:
            return f
        id_type = request.query.get("receive_id_type")
        if id_type not in {"open_id", "user_id", "union_id", "email", "chat_id"}:
            return _error(99992402, "field validation failed: receive_id_type")
        body = await request.json()
        content = body.get("content")
        if not isinstance(content, str):
            return _error(99992402, "field validation failed: content must be a string")
        try:
            parsed = json.loads(content)
        except ValueError:
            return _error(230001, "invalid message content")
        if body.get("msg_type") == "image" and (
            not isinstance(parsed, dict) or parsed.get("image_key") not in fake.images
        ):
            return _error(230001, "invalid message content: unknown image_key")
        uuid = body.get("uuid")
        if isinstance(uuid, str) and len(uuid) > 50:
            return _error(99992402, "field validation failed: uuid too long")
        if uuid and uuid in fake.by_uuid:
            return web.json_response({"code": 0, "msg": "ok", "data": fake.messages[fake.by_uuid[uuid]]})
        receiver = f"{id_type}:{body.get('receive_id')}"
        now = fake.clock()
        window = fake._sends[receiver]
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= fake.qps_per_receiver:
            reset = max(1, int(window[0] + 1.0 - now + 0.999))
            return web.json_response(
                {"code": RATE_LIMITED, "msg": "request trigger frequency limit"},
                status=429,
                headers={
                    "x-ogw-ratelimit-limit": str(fake.qps_per_receiver),
                    "x-ogw-ratelimit-reset": str(reset),
                },
            )
        window.append(now)
        message_id = f"om_{len(fake.messages) + 1}"
        msg = {
            "message_id": message_id,
            "receive_id": body.get("receive_id"),
            "receive_id_type": id_type,
            "msg_type": body.get("msg_type"),
            "content": content,
            "uuid": uuid,
            "updates": 0,
        }
        fake.messages[message_id] = msg
        if uuid:
            fake.by_uuid[uuid] = message_id
        return web.json_response({"code": 0, "msg": "ok", "data": msg})

    async def patch(request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        fake.requests.append(("patch", message_id))
        if (r := fake._auth(request)) is not None:
            return r
        if (f := fake._fault("patch")) is not None:
            return f
        msg = fake.messages.get(message_id)
        if msg is None:
            return _error(230011, "message not found")
        body = await request.json()
        content = body.get("content")
        if not isinstance(content, str):
            return _error(99992402, "field validation failed: content must be a string")
        if msg["msg_type"] != "interactive":
            return _error(230001, "not a card")
        before, after = json.loads(msg["content"]), json.loads(content)
        for card in (before, after):
            if not (card.get("config") or {}).get("update_multi"):
                return _error(CARD_NOT_UPDATABLE, "card must set config.update_multi=true before and after")
        msg["content"] = content
        msg["updates"] += 1
        return web.json_response({"code": 0, "msg": "ok", "data": {}})

    async def resource(request: web.Request) -> web.Response:
        message_id, key = request.match_info["message_id"], request.match_info["file_key"]
        fake.requests.append(("resource", f"{message_id}/{key}"))
        if (r := fake._auth(request)) is not None:
            return r
        if (f := fake._fault("resource")) is not None:
            return f
        if request.query.get("type") != "image":
            return _error(99992402, "field validation failed: type")
        data = fake.resources.get((message_id, key))
        if data is None:
            return _error(234003, "file not found")
        return web.Response(
            body=data,
            content_type="image/png",
            headers={"Content-Disposition": f'attachment; filename="{key}.png"'},
        )

    async def upload_image(request: web.Request) -> web.Response:
        fake.requests.append(("image", ""))
        if (r := fake._auth(request)) is not None:
            return r
        if (f := fake._fault("image")) is not None:
            return f
        if request.content_type != "multipart/form-data":
            return _error(IMAGE_BAD_PARAM, "field validation failed: multipart/form-data expected")
        form = await request.post()
        image = form.get("image")
        if form.get("image_type") not in ("message", "avatar") or not isinstance(image, web.FileField):
            return _error(IMAGE_BAD_PARAM, "field validation failed: image_type, image")
        data = image.file.read()
        if not data:
            return _error(IMAGE_EMPTY, "file size can't be 0")
        if len(data) > MAX_IMAGE_BYTES:
            return _error(IMAGE_TOO_BIG, "the file size exceed the max value")
        if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")):
            return _error(IMAGE_NOT_IMAGE, "can't recognize the image format")
        key = f"img_v3_{len(fake.images) + 1:04d}"
        fake.images[key] = data
        return web.json_response({"code": 0, "msg": "success", "data": {"image_key": key}})

    app = web.Application()
    app.router.add_post("/open-apis/im/v1/images", upload_image)
    app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", token)
    app.router.add_post("/open-apis/im/v1/messages", send)
    app.router.add_patch("/open-apis/im/v1/messages/{message_id}", patch)
    app.router.add_get("/open-apis/im/v1/messages/{message_id}/resources/{file_key}", resource)
    return app


# ---- the inbound side: what Feishu POSTs to our webhook ----


def encrypt(encrypt_key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    iv = iv or os.urandom(16)
    key = hashlib.sha256(encrypt_key.encode()).digest()
    pad = 16 - len(plaintext) % 16
    return base64.b64encode(
        iv + AES.new(key, AES.MODE_CBC, iv).encrypt(plaintext + bytes([pad]) * pad)
    ).decode()


@dataclass
class FeishuSimulator:
    encrypt_key: str = "enc-key"
    verification_token: str = "v-token"
    app_id: str = "cli_test"
    tenant_key: str = "tk1"
    clock: Callable[[], float] = time.time
    _n: int = 0

    def _next(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def wire(self, doc: dict[str, Any], *, sign: bool = True) -> tuple[dict[str, str], bytes]:
        """Encrypt ``doc`` (when an encrypt key is set) and sign it: (headers, raw body)."""
        plain = json.dumps(doc, ensure_ascii=False).encode()
        if not self.encrypt_key:
            return {"Content-Type": "application/json"}, plain
        body = json.dumps({"encrypt": encrypt(self.encrypt_key, plain)}).encode()
        return (self.signed_headers(body) if sign else {"Content-Type": "application/json"}), body

    def signed_headers(self, body: bytes) -> dict[str, str]:
        """The headers Feishu sends with ``body``: X-Lark-Signature = sha256(ts + nonce + key + body)."""
        ts, nonce = str(int(self.clock())), self._next("nonce-")
        return {
            "Content-Type": "application/json",
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": hashlib.sha256((ts + nonce + self.encrypt_key).encode() + body).hexdigest(),
        }

    def envelope(self, event_type: str, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "schema": "2.0",
            "header": {
                "event_id": event_id or self._next("ev_"),
                "event_type": event_type,
                "create_time": str(int(self.clock() * 1000)),
                "token": self.verification_token,
                "app_id": self.app_id,
                "tenant_key": self.tenant_key,
            },
            "event": event,
        }

    def url_verification(self, challenge: str = "ch-1") -> dict[str, Any]:
        return {"challenge": challenge, "token": self.verification_token, "type": "url_verification"}

    def message(
        self,
        open_id: str,
        message_type: str,
        content: dict[str, Any],
        *,
        message_id: str | None = None,
        chat_type: str = "p2p",
        chat_id: str = "oc_chat_1",
        mentions: list[dict[str, Any]] | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": message_id or self._next("om_in_"),
            "chat_id": chat_id,
            "chat_type": chat_type,
            "message_type": message_type,
            "content": json.dumps(content, ensure_ascii=False),
            "create_time": str(int(self.clock() * 1000)),
        }
        if mentions:
            message["mentions"] = mentions
        sender = {
            "sender_id": {"open_id": open_id, "union_id": f"on_{open_id}", "user_id": None},
            "sender_type": "user",
            "tenant_key": self.tenant_key,
        }
        return self.envelope("im.message.receive_v1", {"sender": sender, "message": message}, event_id)

    def text(self, open_id: str, text: str, **kw: Any) -> dict[str, Any]:
        return self.message(open_id, "text", {"text": text}, **kw)

    def image(self, open_id: str, image_key: str, **kw: Any) -> dict[str, Any]:
        return self.message(open_id, "image", {"image_key": image_key}, **kw)

    def card_action(
        self,
        open_id: str,
        payload: str,
        *,
        form: dict[str, Any] | None = None,
        open_message_id: str = "om_card_1",
        open_chat_id: str = "oc_chat_1",
        token: str = "c-token-1",
        name: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        action: dict[str, Any] = {"tag": "button", "value": {"p": payload}}
        if name:
            action["name"] = name
        if form is not None:
            action["form_value"] = form
        event = {
            "operator": {"tenant_key": self.tenant_key, "open_id": open_id, "union_id": f"on_{open_id}"},
            "token": token,
            "host": "im_message",
            "action": action,
            "context": {"open_message_id": open_message_id, "open_chat_id": open_chat_id},
        }
        return self.envelope("card.action.trigger", event, event_id)
