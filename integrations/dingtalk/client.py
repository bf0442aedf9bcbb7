"""DingTalk outbound: a thin aiohttp client for the v1.0 open API, implementing ``bot.channel.Channel``.

Facts from shared/research/platforms.md §3.3-3.4 and §3.6:

- Token: ``POST {api_base}/v1.0/oauth2/accessToken {appKey, appSecret}`` -> ``{accessToken, expireIn}``,
  sent in header ``x-acs-dingtalk-access-token``. Cached (in ``token_cache``, shared by the server processes
  when it is Redis: integrations/tokens.py) and refreshed five minutes early; refreshed once more on a 401 (or
  an access-token error code) and the call retried.
- Text: ``POST /v1.0/robot/oToMessages/batchSend`` (≤ 20 ``userIds``, ``msgParam`` a JSON *string*); users
  listed in ``flowControlledStaffIdList`` were throttled, which is a retryable failure.
- Cards: ``POST /v1.0/card/instances/createAndDeliver`` into the user's robot chat, ``PUT /v1.0/card/instances``
  with ``updateCardDataByKey``; ``cardParamMap`` values must be strings and are checked before sending.
- Images: ``POST /v1.0/robot/messageFiles/download {downloadCode, robotCode}`` -> ``downloadUrl``, then GET.
- Sending an image: the legacy ``POST {oapi_base}/media/upload?access_token=…&type=image`` (multipart, field
  ``media``; the v1.0 token is accepted there) answers ``{errcode: 0, media_id: "@…"}`` (errors as HTTP 200
  with a non-zero ``errcode``); the robot then sends ``sampleImageMsg`` with ``photoURL`` set to that media
  id. Uploading twice only leaves an unused media file, so the upload is retried here like a safe call.

Errors: HTTP 403 (QPS limits; the code strings are unverified, so any 403 that is not about permissions) and
429 are retried here with exponential back-off and jitter, because the platform refused them before doing
anything; then they surface as retryable. 5xx and timeouts are retried here only for calls that are safe to
repeat (token, file download, card update); sends surface them as retryable for the outbox, which knows
whether to try again. Other 4xx are not retryable. A 2xx is never retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bot.cards.capabilities import DINGTALK
from bot.channel import Address, ChannelError, SentRef, image_payload
from bot.events import Platform
from integrations.dingtalk.settings import DingTalkSettings
from integrations.tokens import MemoryTokenCache, TokenCache, TokenKeeper, token_key

TOKEN_PATH = "/v1.0/oauth2/accessToken"
BATCH_SEND_PATH = "/v1.0/robot/oToMessages/batchSend"
GROUP_SEND_PATH = "/v1.0/robot/groupMessages/send"
CREATE_CARD_PATH = "/v1.0/card/instances/createAndDeliver"
UPDATE_CARD_PATH = "/v1.0/card/instances"
MESSAGE_FILE_PATH = "/v1.0/robot/messageFiles/download"
MEDIA_UPLOAD_PATH = "/media/upload"  # on oapi_base

MAX_BATCH_USERS = 20
REFRESH_EARLY_S = 300
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # our own cap; DingTalk's picture limit is unverified
MAX_OUT_TRACK_ID = 64  # our own cap; DingTalk's limit is unverified
# legacy (oapi) errcodes [unverified]: a refused token is refreshed once; throttling is retried with back-off
OAPI_TOKEN_ERRORS = frozenset({40014, 42001})
OAPI_THROTTLED = frozenset({90002, 90018})

_TRACK_ID_OK = re.compile(r"[A-Za-z0-9_-]+")


def out_track_id(idempotency_key: str) -> str:
    """A stable outTrackId for an idempotency key: kept as is when it is short and plain, otherwise cleaned and
    suffixed with a digest of the original so different keys stay different."""
    if _TRACK_ID_OK.fullmatch(idempotency_key) and len(idempotency_key) <= MAX_OUT_TRACK_ID:
        return idempotency_key
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", idempotency_key).strip("-")
    return f"{cleaned[: MAX_OUT_TRACK_ID - len(digest) - 1]}-{digest}".lstrip("-")


def check_param_map(card: Mapping[str, Any]) -> dict[str, str]:
    """The cardParamMap as sent, or a non-retryable ChannelError naming the keys whose values are not strings."""
    bad = sorted(str(k) for k, v in card.items() if not isinstance(k, str) or not isinstance(v, str))
    if bad:
        raise ChannelError(f"cardParamMap values must be strings: {bad}", code="card_param_not_string")
    return dict(card)


def _token_problem(status: int, code: str) -> bool:
    # 401 is certain; the code strings are a guess (platforms.md §7), matched loosely.
    lowered = code.lower()
    if "permission" in lowered:  # e.g. Forbidden.AccessDenied.AccessTokenPermissionDenied: a missing scope
        return False
    return status == 401 or (
        status in (400, 403) and ("accesstoken" in lowered or "authentication" in lowered)
    )


def _throttled(status: int, code: str) -> bool:
    return status == 429 or (status == 403 and "permission" not in code.lower())


class DingTalkChannel:
    platform = Platform.DINGTALK
    capabilities = DINGTALK

    def __init__(
        self,
        settings: DingTalkSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retries: int = 2,
        backoff_s: float = 0.5,
        jitter: Callable[[], float] = random.random,
        token_cache: TokenCache | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._retries, self._backoff_s = retries, backoff_s
        self._tokens = TokenKeeper(
            token_cache or MemoryTokenCache(clock=clock),
            token_key("dingtalk", settings.app_key, endpoint=settings.api_base, secret=settings.secret()),
            self._fetch_token,
            margin_s=REFRESH_EARLY_S,
            clock=clock,
        )

    # -- plumbing ---------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_s)
            )
            self._owns_session = True
        return self._session

    def _delay(self, attempt: int) -> float:
        return self._backoff_s * (2**attempt) * (0.5 + self._jitter())

    def _url(self, path: str) -> str:
        return self._settings.api_base.rstrip("/") + path

    async def _exchange(
        self, method: str, url: str, body: Any, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP exchange. Network failures and timeouts become retryable ChannelErrors."""
        try:
            async with self._http().request(method, url, json=body, headers=dict(headers)) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise ChannelError(f"DingTalk {method} {url} timed out", code="timeout", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise ChannelError(
                f"DingTalk {method} {url} failed: {exc}", code="network", retryable=True
            ) from exc
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}  # an HTML error page, for instance
        return status, data if isinstance(data, dict) else {}

    async def _fetch_token(self) -> tuple[str, float]:
        """The access token and the seconds it lives (``self._tokens`` caches and shares it); throttling,
        5xx and network errors are retried here with back-off."""
        body = {"appKey": self._settings.app_key, "appSecret": self._settings.secret()}
        for attempt in range(self._retries + 1):
            try:
                status, data = await self._exchange("POST", self._url(TOKEN_PATH), body, {})
            except ChannelError:
                if attempt < self._retries:
                    await self._sleep(self._delay(attempt))
                    continue
                raise
            token = data.get("accessToken")
            if status < 300 and isinstance(token, str) and token:
                return token, float(data.get("expireIn") or 7200)
            retryable = status >= 500 or status in (403, 429)
            if retryable and attempt < self._retries:
                await self._sleep(self._delay(attempt))
                continue
            raise ChannelError(
                f"DingTalk access token refused ({status}): {data.get('message', '')}",
                code=str(data.get("code") or status),
                retryable=retryable,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, method: str, path: str, body: Any, *, idempotent: bool) -> dict[str, Any]:
        """Call a v1.0 API with the token, applying the retry policy in the module docstring."""
        stale: str | None = None  # the token the API refused (once)
        attempt = 0
        while True:
            token = await self._tokens.get(stale=stale)
            try:
                status, data = await self._exchange(
                    method, self._url(path), body, {"x-acs-dingtalk-access-token": token}
                )
            except ChannelError:
                if idempotent and attempt < self._retries:
                    await self._sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise
            if status < 300:
                return data
            code = str(data.get("code") or status)
            message = f"DingTalk {method} {path} -> {status} {code}: {data.get('message', '')}"
            if _token_problem(status, code):
                if stale is None:
                    stale = token
                    continue
                raise ChannelError(message, code=code, retryable=True)
            if _throttled(status, code):
                delay = self._delay(attempt)
                if attempt < self._retries:
                    await self._sleep(delay)
                    attempt += 1
                    continue
                raise ChannelError(message, code=code, retryable=True, retry_after=delay)
            if status >= 500:
                if idempotent and attempt < self._retries:
                    await self._sleep(self._delay(attempt))
                    attempt += 1
                    continue
                raise ChannelError(message, code=code, retryable=True)
            raise ChannelError(message, code=code, retryable=False)

    # -- sending ----------------------------------------------------------------------------------------

    async def batch_send(
        self, user_ids: list[str], msg_key: str, msg_param: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One robot message to ≤ 20 users in their 1:1 chats; the raw response (check the throttled list)."""
        if not 1 <= len(user_ids) <= MAX_BATCH_USERS:
            raise ValueError(f"batchSend takes 1 to {MAX_BATCH_USERS} userIds, not {len(user_ids)}")
        body = {
            "robotCode": self._settings.robot_code,
            "userIds": list(user_ids),
            "msgKey": msg_key,
            "msgParam": json.dumps(dict(msg_param), ensure_ascii=False),
        }
        return await self._call("POST", BATCH_SEND_PATH, body, idempotent=False)

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        # DingTalk has no idempotency key for robot sends; the outbox's key guards against double sends.
        return await self._robot_send(to, "sampleText", {"content": text})

    async def send_image(self, to: Address, data: bytes | Path, *, idempotency_key: str) -> SentRef:
        raw, filename, ctype = image_payload(data, max_bytes=MAX_IMAGE_BYTES)
        if not (to.user_id or to.chat_id):
            raise ValueError("an address needs a user_id or a chat_id")
        media_id = await self._upload_media(raw, filename, ctype)
        return await self._robot_send(to, "sampleImageMsg", {"photoURL": media_id})

    async def _robot_send(self, to: Address, msg_key: str, param: Mapping[str, Any]) -> SentRef:
        """One robot message: to a person's 1:1 chat (batchSend) or to a group."""
        if to.user_id:
            data = await self.batch_send([to.user_id], msg_key, param)
            throttled = data.get("flowControlledStaffIdList") or []
            if throttled:
                raise ChannelError(
                    f"DingTalk throttled the message to {throttled}",
                    code="flow_controlled",
                    retryable=True,
                    retry_after=self._delay(self._retries),
                )
            invalid = data.get("invalidStaffIdList") or []
            if invalid:
                raise ChannelError(f"DingTalk does not know userIds {invalid}", code="invalid_staff_id")
        elif to.chat_id:
            body = {
                "robotCode": self._settings.robot_code,
                "openConversationId": to.chat_id,
                "msgKey": msg_key,
                "msgParam": json.dumps(dict(param), ensure_ascii=False),
            }
            data = await self._call("POST", GROUP_SEND_PATH, body, idempotent=False)
        else:
            raise ValueError("an address needs a user_id or a chat_id")
        key = data.get("processQueryKey")
        return SentRef(
            Platform.DINGTALK, message_id=key if isinstance(key, str) else None, sent_at=datetime.now(UTC)
        )

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef:
        params = check_param_map(card)
        track_id = out_track_id(idempotency_key)
        robot_code = self._settings.robot_code
        body: dict[str, Any] = {
            "cardTemplateId": self._settings.card_template_id,
            "outTrackId": track_id,
            "callbackType": "STREAM" if self._settings.mode == "stream" else "HTTP",
            "cardData": {"cardParamMap": params},
            "userIdType": 1,
        }
        if self._settings.mode == "http" and self._settings.card_callback_route_key:
            body["callbackRouteKey"] = self._settings.card_callback_route_key
        if to.user_id:
            body |= {
                "openSpaceId": f"dtv1.card//IM_ROBOT.{to.user_id}",
                "imRobotOpenSpaceModel": {"supportForward": False},
                "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT", "robotCode": robot_code},
            }
        elif to.chat_id:
            body |= {
                "openSpaceId": f"dtv1.card//IM_GROUP.{to.chat_id}",
                "imGroupOpenSpaceModel": {"supportForward": True},
                "imGroupOpenDeliverModel": {"robotCode": robot_code},
            }
        else:
            raise ValueError("an address needs a user_id or a chat_id")
        data = await self._call("POST", CREATE_CARD_PATH, body, idempotent=False)
        result = data.get("result")
        results = result.get("deliverResults") if isinstance(result, dict) else None
        failed = [r for r in results or [] if isinstance(r, dict) and r.get("success") is False]
        if failed:
            raise ChannelError(f"DingTalk did not deliver card {track_id}: {failed}", code="deliver_failed")
        return SentRef(Platform.DINGTALK, message_id=None, card_ref=track_id, sent_at=datetime.now(UTC))

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef:
        if not ref.card_ref:
            raise ValueError("a DingTalk card is updated by its outTrackId (SentRef.card_ref)")
        body = {
            "outTrackId": ref.card_ref,
            "cardData": {"cardParamMap": check_param_map(card)},
            "cardUpdateOptions": {"updateCardDataByKey": True},
            "userIdType": 1,
        }
        await self._call("PUT", UPDATE_CARD_PATH, body, idempotent=True)
        return ref

    async def _upload_media(self, raw: bytes, filename: str, ctype: str) -> str:
        """``media/upload`` on the legacy host: the picture's ``media_id``, under the policy of ``_call``
        (token refreshed once; throttling, 5xx and network errors retried with back-off, then retryable)."""
        url = self._settings.oapi_base.rstrip("/") + MEDIA_UPLOAD_PATH
        stale: str | None = None
        attempt = 0
        while True:
            token = await self._tokens.get(stale=stale)
            form = aiohttp.FormData()  # a fresh body per attempt: aiohttp sends a FormData once
            form.add_field("media", raw, filename=filename, content_type=ctype)
            error: ChannelError
            try:
                async with self._http().post(
                    url, params={"access_token": token, "type": "image"}, data=form
                ) as resp:
                    status, body = resp.status, await resp.read()
            except TimeoutError as exc:
                error = ChannelError("DingTalk media/upload timed out", code="timeout", retryable=True)
                error.__cause__ = exc
            except aiohttp.ClientError as exc:
                error = ChannelError(f"DingTalk media/upload failed: {exc}", code="network", retryable=True)
                error.__cause__ = exc
            else:
                try:
                    data = json.loads(body) if body else {}
                except ValueError:
                    data = {}
                data = data if isinstance(data, dict) else {}
                errcode = data.get("errcode", 0 if status < 300 else status)
                media_id = data.get("media_id")
                if status < 300 and errcode == 0 and isinstance(media_id, str) and media_id:
                    return media_id
                message = f"DingTalk media/upload -> {status} errcode {errcode}: {data.get('errmsg', '')}"
                if errcode in OAPI_TOKEN_ERRORS or status == 401:
                    if stale is None:
                        stale = token
                        continue
                    raise ChannelError(message, code=str(errcode), retryable=True)
                throttled = status in (403, 429) or errcode in OAPI_THROTTLED
                error = ChannelError(message, code=str(errcode), retryable=throttled or status >= 500)
            if not error.retryable:
                raise error
            delay = self._delay(attempt)
            if attempt >= self._retries:
                error.retry_after = delay
                raise error
            await self._sleep(delay)
            attempt += 1

    # -- receiving --------------------------------------------------------------------------------------

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes:
        """Bytes of a picture sent to the robot: ``media_ref`` is its downloadCode; ``url`` skips the lookup."""
        if url is None:
            body = {"downloadCode": media_ref, "robotCode": self._settings.robot_code}
            data = await self._call("POST", MESSAGE_FILE_PATH, body, idempotent=True)
            found = data.get("downloadUrl")
            if not isinstance(found, str) or not found:
                raise ChannelError("DingTalk gave no downloadUrl", code="no_download_url")
            url = found
        for attempt in range(self._retries + 1):
            try:
                async with self._http().get(url) as resp:
                    if resp.status < 300:
                        data_bytes = await resp.content.read(MAX_IMAGE_BYTES + 1)
                        if len(data_bytes) > MAX_IMAGE_BYTES:
                            raise ChannelError("image too large", code="too_large")
                        return data_bytes
                    status = resp.status
            except TimeoutError as exc:
                error = ChannelError("DingTalk file download timed out", code="timeout", retryable=True)
                error.__cause__ = exc
            except aiohttp.ClientError as exc:
                error = ChannelError(f"DingTalk file download failed: {exc}", code="network", retryable=True)
                error.__cause__ = exc
            else:
                retryable = status >= 500 or status == 429
                error = ChannelError(f"DingTalk file download -> {status}", code=status, retryable=retryable)
            if not error.retryable or attempt >= self._retries:
                raise error
            await self._sleep(self._delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
