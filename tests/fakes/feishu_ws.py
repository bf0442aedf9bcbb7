"""A fake Feishu long-connection server (长连接), speaking the protocol lark-oapi's ws client speaks.

The protocol (read in lark-oapi 1.7.5 ``lark_oapi/ws/client.py``; platforms.md §2.1, §4.2):

1. ``POST {domain}/callback/ws/endpoint`` with ``{"AppID", "AppSecret"}`` answers
   ``{"code": 0, "data": {"URL": "wss://...?device_id=..&service_id=..", "ClientConfig": {...}}}``. The
   ClientConfig carries ``PingInterval`` (s) and the reconnect settings.
2. The client opens a WebSocket to that URL. A refused handshake carries ``handshake-status`` and
   ``handshake-msg`` headers.
3. Binary protobuf ``pbbp2.Frame`` messages travel both ways. ``method`` 0 is CONTROL: the client sends a
   ``type=ping`` frame every PingInterval, the server answers ``type=pong`` (payload: a new ClientConfig).
   ``method`` 1 is DATA: the server pushes ``type=event`` frames with headers ``message_id``, ``trace_id``,
   ``sum``, ``seq`` and the event JSON as payload (a large payload split in ``sum`` frames); the client answers
   each with the same frame, payload replaced by ``{"code": 200, "data": base64(JSON answer)}``. A card
   callback's answer (a toast, a card) travels in ``data``.

Events are at least once: a frame not answered when its connection drops is pushed again on the next
connection, as Feishu replays on reconnect (platforms.md §2.1). Frames pushed while no client is connected
wait for one. The protobuf codec here is written from the ``.proto`` field numbers, independently of the
SDK's generated code, so a round trip checks one against the other.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import WSMessage, WSMsgType, web

from tests.fakes.long_connection import LongConnectionFake

ENDPOINT_PATH = "/callback/ws/endpoint"
WS_PATH = "/ws"

CONTROL, DATA = 0, 1
BAD_CREDENTIALS = (
    10003  # the real code for a wrong AppSecret is unverified; the SDK treats any unknown code alike
)

# ---- pbbp2.Frame, by hand ------------------------------------------------------------------------------
# message Header { required string key = 1; required string value = 2; }
# message Frame { required uint64 SeqID = 1; required uint64 LogID = 2; required int32 service = 3;
#                 required int32 method = 4; repeated Header headers = 5; optional string payload_encoding = 6;
#                 optional string payload_type = 7; optional bytes payload = 8; optional string LogIDNew = 9; }


@dataclass
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = DATA
    headers: list[tuple[str, str]] = field(default_factory=list)
    payload: bytes = b""

    def header(self, key: str) -> str | None:
        return next((v for k, v in self.headers if k == key), None)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def encode_frame(f: Frame) -> bytes:
    out = _field(1, f.seq_id) + _field(2, f.log_id) + _field(3, f.service) + _field(4, f.method)
    for k, v in f.headers:
        out += _field(5, _field(1, k.encode()) + _field(2, v.encode()))
    if f.payload:
        out += _field(8, f.payload)
    return out


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        n = shift = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 2:
            size = varint()
            if i + size > len(data):
                raise ValueError("truncated field")
            out.append((number, data[i : i + size]))
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def decode_frame(data: bytes) -> Frame:
    f = Frame()
    for number, value in _fields(data):
        if number == 1 and isinstance(value, int):
            f.seq_id = value
        elif number == 2 and isinstance(value, int):
            f.log_id = value
        elif number == 3 and isinstance(value, int):
            f.service = value
        elif number == 4 and isinstance(value, int):
            f.method = value
        elif number == 5 and isinstance(value, bytes):
            kv = dict(_fields(value))
            k, v = kv.get(1, b""), kv.get(2, b"")
            assert isinstance(k, bytes) and isinstance(v, bytes)
            f.headers.append((k.decode(), v.decode()))
        elif number == 8 and isinstance(value, bytes):
            f.payload = value
    return f


# ---- the server -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the client answered to one pushed frame."""

    message_id: str
    code: int
    data: Any  # the decoded JSON answer (a card callback's toast), or None
    headers: dict[str, str]


@dataclass
class _Push:
    message_id: str
    frames: list[Frame]


@dataclass
class FeishuWsFake(LongConnectionFake):
    app_id: str = "cli_test"
    app_secret: str = "secret"
    service_id: int = 33554678
    ping_interval_s: float = 120
    endpoint_calls: int = 0
    pings: int = 0
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # frame message_id -> answers
    refuse_endpoint: int = 0  # the next n endpoint calls answer {"code": 1 "system busy"}
    _devices: dict[str, int] = field(default_factory=dict)  # device_id -> times used
    _unanswered: dict[str, _Push] = field(default_factory=dict)

    # -- what tests call --------------------------------------------------------------------------------

    async def push_event(self, doc: dict[str, Any], *, message_id: str | None = None, parts: int = 1) -> str:
        """Push one event (its JSON, as the payload), split in ``parts`` frames. Returns the frame message_id."""
        return await self.push_payload(json.dumps(doc, ensure_ascii=False).encode(), message_id, parts)

    async def push_payload(self, payload: bytes, message_id: str | None = None, parts: int = 1) -> str:
        mid = message_id or f"msg_{next(self._ids)}"
        size = -(-len(payload) // parts)
        chunks = [payload[i * size : (i + 1) * size] for i in range(parts)]
        frames = [
            Frame(
                seq_id=next(self._ids),
                log_id=next(self._ids),
                service=self.service_id,
                method=DATA,
                headers=[
                    ("type", "event"),
                    ("message_id", mid),
                    ("trace_id", f"tr_{mid}"),
                    ("sum", str(parts)),
                    ("seq", str(i)),
                ],
                payload=chunk,
            )
            for i, chunk in enumerate(chunks)
        ]
        push = _Push(mid, frames)
        self._unanswered[mid] = push
        await self._deliver(push)
        return mid

    async def push_raw(self, data: bytes | str) -> None:
        """Send bytes (or a text message) that may not be a frame at all, to the current connection."""
        ws = await self._current()
        await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))

    async def answer(self, message_id: str) -> Answer:
        await self.wait_for(lambda: bool(self.answers.get(message_id)))
        return self.answers[message_id][0]

    # -- internals ----------------------------------------------------------------------------------------

    async def _deliver(self, push: _Push) -> None:
        ws = self._live()  # cluster mode: each event goes to one client
        if ws is None:
            return  # it waits, unanswered, for the next connection
        for frame in push.frames:
            await ws.send_bytes(encode_frame(frame))

    def _config(self) -> dict[str, Any]:
        return {"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30,
                "PingInterval": self.ping_interval_s}  # fmt: skip

    async def endpoint(self, request: web.Request) -> web.Response:
        self.endpoint_calls += 1
        await self._notify()
        body = await request.json()
        if self.refuse_endpoint > 0:
            self.refuse_endpoint -= 1
            return web.json_response({"code": 1, "msg": "system busy"})
        if body.get("AppID") != self.app_id or body.get("AppSecret") != self.app_secret:
            return web.json_response({"code": BAD_CREDENTIALS, "msg": "invalid app_id or app_secret"})
        device = f"dev_{next(self._ids)}"
        self._devices[device] = 0
        url = f"ws://{request.host}{WS_PATH}?device_id={device}&service_id={self.service_id}"
        return web.json_response(
            {"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": self._config()}}
        )

    async def socket(self, request: web.Request) -> web.StreamResponse:
        device = parse_qs(urlsplit(str(request.url)).query).get("device_id", [""])[0]
        if self._devices.get(device, 1) != 0:  # unknown or already used: endpoint URLs are single-use
            headers = {"handshake-status": "403", "handshake-msg": "invalid device id"}
            return web.Response(status=403, headers=headers)
        self._devices[device] = 1
        return await self._serve(request)

    async def _replay(self, ws: web.WebSocketResponse) -> None:
        for push in list(self._unanswered.values()):  # replayed, or pushed while nobody was connected
            await self._deliver(push)

    async def _received(self, ws: web.WebSocketResponse, msg: WSMessage) -> None:
        if msg.type != WSMsgType.BINARY:
            return
        frame = decode_frame(msg.data)
        if frame.method == CONTROL and frame.header("type") == "ping":
            self.pings += 1
            pong = Frame(service=frame.service, method=CONTROL, headers=[("type", "pong")],
                         payload=json.dumps(self._config()).encode())  # fmt: skip
            await ws.send_bytes(encode_frame(pong))
        elif frame.method == DATA:
            mid = frame.header("message_id") or ""
            response = json.loads(frame.payload)
            data = response.get("data")
            answer = Answer(
                message_id=mid,
                code=int(response.get("code", 0)),
                data=json.loads(base64.b64decode(data)) if data else None,
                headers=dict(frame.headers),
            )
            self.answers.setdefault(mid, []).append(answer)
            self._unanswered.pop(mid, None)


def add_feishu_ws_routes(app: web.Application, fake: FeishuWsFake) -> web.Application:
    """Serve the long-connection routes on ``app`` (for instance the Open API fake of tests/fakes/feishu.py,
    which shares the domain)."""
    app.router.add_post(ENDPOINT_PATH, fake.endpoint)
    app.router.add_get(WS_PATH, fake.socket)
    return app


def build_feishu_ws_fake_app(fake: FeishuWsFake) -> web.Application:
    return add_feishu_ws_routes(web.Application(), fake)
