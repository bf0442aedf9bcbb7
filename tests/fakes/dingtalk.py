"""A fake DingTalk open API (platforms.md §5.4) and a simulator that signs callbacks like DingTalk does.

The fake speaks the v1.0 JSON API on one aiohttp app: tokens, 1:1 and group robot sends, card instances
(createAndDeliver and PUT), robot file downloads and the sessionWebhook sink. It records every request, keeps
state, and injects faults per route. What it enforces: a valid ``x-acs-dingtalk-access-token`` (401
otherwise), ``userIds`` ≤ 20, string-only ``cardParamMap`` values, merge on ``updateCardDataByKey``, and
that a card exists before it is updated. Error code strings are plausible, not verified (§7): clients should
match on the HTTP status.

The legacy host's ``POST /media/upload?access_token=…&type=image`` (tests point ``oapi_base`` at this same
app) takes a multipart ``media`` file and answers ``{errcode: 0, media_id: "@…", type, created_at}``; its
errors come as HTTP 200 with a non-zero ``errcode`` [codes unverified]: 40014 unknown token, 40004 bad type,
41005 no ``media`` part, 40006 empty or over ``image_limit``, 40005 not a JPG/PNG/GIF/BMP. A robot
``sampleImageMsg`` must carry an uploaded media id, or an http(s) URL, as ``photoURL``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from integrations.dingtalk.webhook import PAYLOAD_PARAM, robot_sign

_BODY = web.RequestKey("dingtalk_fake_body", dict[str, Any])

QPS_LIMIT = {"code": "Forbidden.AccessDenied.QpsLimitForApi", "message": "调用频率超限"}  # code [unverified]
SERVER_ERROR = {"code": "ServiceUnavailable", "message": "服务暂时不可用"}


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    headers: Mapping[str, str]


@dataclass
class DingTalkFakeState:
    app_key: str = "dingappkey"
    app_secret: str = "appsecret"
    robot_code: str = "dingrobotcode"
    expire_in: int = 7200
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    requests: list[Recorded] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # batchSend and group sends, as received
    cards: dict[str, dict[str, str]] = field(default_factory=dict)  # outTrackId -> cardParamMap
    card_versions: dict[str, int] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # createAndDeliver bodies
    session_replies: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # downloadCode -> bytes
    media: dict[str, bytes] = field(default_factory=dict)  # uploaded with media/upload: media_id -> bytes
    image_limit: int = 20 * 1024 * 1024  # [unverified]: the documented limit has changed over time
    throttled_users: set[str] = field(default_factory=set)  # batchSend puts them in flowControlledStaffIdList
    faults: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    _counters: dict[str, itertools.count[int]] = field(default_factory=dict)

    # -- fault injection ------------------------------------------------------------------------------

    def inject(
        self, path: str, status: int, body: Mapping[str, Any] | None = None, *, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with ``status`` and ``body`` instead of serving them."""
        self.faults.setdefault(path, []).extend([(status, dict(body or {}))] * times)

    def inject_qps_limit(self, path: str, *, times: int = 1) -> None:
        self.inject(path, 403, QPS_LIMIT, times=times)

    def inject_server_error(self, path: str, *, status: int = 503, times: int = 1) -> None:
        self.inject(path, status, SERVER_ERROR, times=times)

    def expire_tokens(self) -> None:
        """Every issued token stops working (as if DingTalk had expired them)."""
        self.tokens.clear()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._counters.setdefault(prefix, itertools.count(1)))}"

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "requestid": "fake"}, status=status)


def build_dingtalk_fake_app(state: DingTalkFakeState) -> web.Application:
    @web.middleware
    async def record_and_inject(request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        # a multipart upload is left unread: its route parses it
        if request.can_read_body and request.content_type != "multipart/form-data":
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        state.requests.append(Recorded(request.method, request.path, body, dict(request.headers)))
        request[_BODY] = body if isinstance(body, dict) else {}
        queued = state.faults.get(request.path)
        if queued:
            status, payload = queued.pop(0)
            return web.json_response(payload, status=status)
        return await handler(request)

    def authorised(request: web.Request) -> bool:
        return request.headers.get("x-acs-dingtalk-access-token", "") in state.tokens

    def unauthorised() -> web.Response:
        return _error(401, "InvalidAuthentication", "不合法的access_token")

    async def access_token(request: web.Request) -> web.Response:
        body = request[_BODY]
        if body.get("appKey") != state.app_key or body.get("appSecret") != state.app_secret:
            return _error(400, "invalidClientIdOrSecret", "无效的appKey或appSecret")
        state.token_requests += 1
        token = state.next_id("dt")
        state.tokens.add(token)
        return web.json_response({"accessToken": token, "expireIn": state.expire_in})

    async def batch_send(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        body = request[_BODY]
        user_ids = body.get("userIds")
        if not isinstance(user_ids, list) or not 1 <= len(user_ids) <= 20:
            return _error(400, "invalidParameter.userIds", "userIds 数量须在 1 到 20 之间")
        if body.get("robotCode") != state.robot_code or not isinstance(body.get("msgParam"), str):
            return _error(400, "invalidParameter", "robotCode 或 msgParam 不合法")
        try:
            json.loads(body["msgParam"])
        except ValueError:
            return _error(400, "invalidParameter.msgParam", "msgParam 不是 JSON 字符串")
        if (bad := bad_image_param(body)) is not None:
            return bad
        throttled = [u for u in user_ids if u in state.throttled_users]
        state.sent.append(body)
        return web.json_response(
            {
                "processQueryKey": state.next_id("pqk"),
                "invalidStaffIdList": [],
                "flowControlledStaffIdList": throttled,
            }
        )

    async def group_send(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        body = request[_BODY]
        if not body.get("openConversationId") or not isinstance(body.get("msgParam"), str):
            return _error(400, "invalidParameter", "openConversationId 或 msgParam 不合法")
        if (bad := bad_image_param(body)) is not None:
            return bad
        state.sent.append(body)
        return web.json_response({"processQueryKey": state.next_id("pqk")})

    def bad_image_param(body: Mapping[str, Any]) -> web.Response | None:
        if body.get("msgKey") != "sampleImageMsg":
            return None
        try:
            photo = json.loads(body["msgParam"]).get("photoURL")
        except (ValueError, AttributeError):
            photo = None
        if not isinstance(photo, str) or not (
            photo in state.media or photo.startswith(("http://", "https://"))
        ):
            return _error(400, "invalidParameter.msgParam", "photoURL 不是有效的 mediaId 或链接")
        return None

    async def media_upload(request: web.Request) -> web.Response:
        def fail(code: int, msg: str) -> web.Response:
            return web.json_response({"errcode": code, "errmsg": msg})

        if request.query.get("access_token", "") not in state.tokens:
            return fail(40014, "不合法的access_token")
        kind = request.query.get("type")
        if kind not in ("image", "voice", "video", "file"):
            return fail(40004, "不合法的媒体文件类型")
        if request.content_type != "multipart/form-data":
            return fail(41005, "缺少多媒体文件数据")
        form = await request.post()
        part = form.get("media")
        if not isinstance(part, web.FileField):
            return fail(41005, "缺少多媒体文件数据")
        data = part.file.read()
        if not data or (kind == "image" and len(data) > state.image_limit):
            return fail(40006, "不合法的文件大小")
        if kind == "image" and not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")):
            return fail(40005, "不合法的文件类型")
        media_id = "@" + state.next_id("lAD")
        state.media[media_id] = data
        return web.json_response(
            {
                "errcode": 0,
                "errmsg": "ok",
                "type": kind,
                "media_id": media_id,
                "created_at": int(time.time() * 1000),
            }
        )

    def param_map(body: Mapping[str, Any]) -> dict[str, str] | web.Response:
        card_data = body.get("cardData")
        params = card_data.get("cardParamMap") if isinstance(card_data, dict) else None
        if not isinstance(params, dict):
            return _error(400, "invalidParameter.cardData", "cardData.cardParamMap 缺失")
        bad = sorted(k for k, v in params.items() if not isinstance(v, str))
        if bad:
            return _error(400, "invalidParameter.cardParamMap", f"cardParamMap 的值必须是字符串: {bad}")
        return params

    async def create_and_deliver(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        body = request[_BODY]
        params = param_map(body)
        if isinstance(params, web.Response):
            return params
        out_track_id, space = body.get("outTrackId"), body.get("openSpaceId", "")
        if not body.get("cardTemplateId") or not out_track_id:
            return _error(400, "invalidParameter", "cardTemplateId 或 outTrackId 缺失")
        if not space.startswith(("dtv1.card//IM_ROBOT.", "dtv1.card//IM_GROUP.")):
            return _error(400, "invalidParameter.openSpaceId", "openSpaceId 不合法")
        deliver = body.get("imRobotOpenDeliverModel") or body.get("imGroupOpenDeliverModel") or {}
        if deliver.get("robotCode") != state.robot_code:
            return _error(400, "invalidParameter.robotCode", "robotCode 不合法")
        state.deliveries.append(body)
        state.cards[out_track_id] = dict(params)
        state.card_versions[out_track_id] = state.card_versions.get(out_track_id, 0) + 1
        space_type, _, space_id = space.removeprefix("dtv1.card//").partition(".")
        return web.json_response(
            {
                "success": True,
                "result": {
                    "outTrackId": out_track_id,
                    "deliverResults": [{"spaceType": space_type, "spaceId": space_id, "success": True}],
                },
            }
        )

    async def update_card(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        body = request[_BODY]
        params = param_map(body)
        if isinstance(params, web.Response):
            return params
        out_track_id = body.get("outTrackId")
        if out_track_id not in state.cards:
            return _error(400, "cardInstanceNotExist", "卡片实例不存在")
        by_key = bool((body.get("cardUpdateOptions") or {}).get("updateCardDataByKey"))
        state.cards[out_track_id] = {**state.cards[out_track_id], **params} if by_key else dict(params)
        state.card_versions[out_track_id] += 1
        return web.json_response({"success": True, "result": True})

    async def message_file(request: web.Request) -> web.Response:
        if not authorised(request):
            return unauthorised()
        body = request[_BODY]
        code = body.get("downloadCode")
        if body.get("robotCode") != state.robot_code or code not in state.files:
            return _error(400, "invalidParameter.downloadCode", "downloadCode 无效或已过期")
        return web.json_response({"downloadUrl": f"{request.url.origin()}/files/{code}"})

    async def serve_file(request: web.Request) -> web.Response:
        code = request.match_info["code"]
        if code not in state.files:
            return web.Response(status=404)
        return web.Response(body=state.files[code], content_type="image/jpeg")

    async def send_by_session(request: web.Request) -> web.Response:
        state.session_replies.append({"session": request.query.get("session"), "body": request[_BODY]})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    app = web.Application(middlewares=[record_and_inject])
    app.router.add_post("/v1.0/oauth2/accessToken", access_token)
    app.router.add_post("/v1.0/robot/oToMessages/batchSend", batch_send)
    app.router.add_post("/v1.0/robot/groupMessages/send", group_send)
    app.router.add_post("/v1.0/card/instances/createAndDeliver", create_and_deliver)
    app.router.add_put("/v1.0/card/instances", update_card)
    app.router.add_post("/v1.0/robot/messageFiles/download", message_file)
    app.router.add_get("/files/{code}", serve_file)
    app.router.add_post("/robot/sendBySession", send_by_session)
    app.router.add_post("/media/upload", media_upload)
    return app


class DingTalkSimulator:
    """Builds what DingTalk POSTs to our HTTP-mode callbacks: signed headers plus the JSON body (§3.6)."""

    def __init__(
        self,
        app_secret: str = "appsecret",
        *,
        robot_code: str = "dingrobotcode",
        corp_id: str = "dingcorp",
        session_base: str = "https://oapi.dingtalk.com",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_secret, self.robot_code, self.corp_id = app_secret, robot_code, corp_id
        self.clock = clock  # DingTalk's time, in seconds: the test's pinned clock where the server has one
        self.session_base = session_base
        self._ids = itertools.count(1)

    def headers(self, timestamp_ms: int | None = None, *, secret: str | None = None) -> dict[str, str]:
        ts = str(timestamp_ms if timestamp_ms is not None else int(self.clock() * 1000))
        return {"timestamp": ts, "sign": robot_sign(ts, secret or self.app_secret)}

    def _message(
        self, msgtype: str, sender: str, *, msg_id: str | None, chat_id: str | None, **fields: Any
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "conversationId": chat_id or f"cid-{sender}",
            "conversationType": "2" if chat_id else "1",
            "chatbotCorpId": self.corp_id,
            "chatbotUserId": "$:LWCP_v1:$bot",
            "msgId": msg_id or f"msg{next(self._ids)}",
            "createAt": int(self.clock() * 1000),
            "senderNick": f"nick-{sender}",
            "senderStaffId": sender,
            "senderId": f"$:LWCP_v1:${sender}",
            "senderCorpId": self.corp_id,
            "isAdmin": False,
            "robotCode": self.robot_code,
            "sessionWebhook": f"{self.session_base}/robot/sendBySession?session=s-{sender}",
            "sessionWebhookExpiredTime": int(self.clock() * 1000) + 90 * 60 * 1000,
            "msgtype": msgtype,
            **fields,
        }
        if chat_id:
            msg |= {"conversationTitle": "盘点群", "isInAtList": True}
        return msg

    def text(
        self, text: str, sender: str = "user123", *, msg_id: str | None = None, chat_id: str | None = None
    ) -> dict[str, Any]:
        return self._message("text", sender, msg_id=msg_id, chat_id=chat_id, text={"content": text})

    def picture(
        self, download_code: str, sender: str = "user123", *, msg_id: str | None = None
    ) -> dict[str, Any]:
        content = {"downloadCode": download_code, "pictureDownloadCode": f"P{download_code}"}
        return self._message("picture", sender, msg_id=msg_id, chat_id=None, content=content)

    def rich_text(
        self, parts: list[dict[str, str]], sender: str = "user123", *, msg_id: str | None = None
    ) -> dict[str, Any]:
        return self._message("richText", sender, msg_id=msg_id, chat_id=None, content={"richText": parts})

    def card_callback(
        self,
        out_track_id: str,
        user_id: str,
        *,
        action_ids: list[str] | None = None,
        payload: str | None = None,
        params: Mapping[str, Any] | None = None,
        space: str | None = None,
    ) -> dict[str, Any]:
        all_params = dict(params or {})
        if payload is not None:
            all_params[PAYLOAD_PARAM] = payload
        content = {"cardPrivateData": {"actionIds": action_ids or ["submit"], "params": all_params}}
        return {
            "type": "actionCallback",
            "outTrackId": out_track_id,
            "corpId": self.corp_id,
            "userId": user_id,
            "userIdType": 1,
            "spaceType": "IM_GROUP" if space else "IM_ROBOT",
            "spaceId": space or user_id,
            "extension": "{}",
            "content": json.dumps(content, ensure_ascii=False),
        }

    def signed(
        self, payload: Mapping[str, Any], timestamp_ms: int | None = None
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body for one callback POST."""
        return self.headers(timestamp_ms), json.dumps(payload, ensure_ascii=False).encode()
