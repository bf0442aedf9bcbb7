"""Feishu Open API client: the ``Channel`` for Feishu, on aiohttp.

Not lark-oapi, on purpose (shared/research/platforms.md §4.2): importing it costs ~4 s and ~175 MB; its async
calls fetch the token *synchronously* (blocking the event loop), open a new httpx client per call, never
retry on 429 or on token-invalid codes, and lose headers on ``aget``. We would own the token, the 429 back-off
and the retries anyway; what is left is four HTTP calls.

- Token: ``POST /open-apis/auth/v3/tenant_access_token/internal``, cached (in ``token_cache``, shared by the
  server processes when it is Redis: integrations/tokens.py); fetched again when < 30 min remain (Feishu hands
  out a new one then), and once more on 99991663 / 99991661 before retrying the call.
- Errors: HTTP 429 or code 99991400 → retryable, ``retry_after`` from ``x-ogw-ratelimit-reset``; 5xx,
  timeouts and connection errors → retryable; any other non-zero code → not retryable.
- ``send_image``: ``POST /open-apis/im/v1/images`` (multipart: ``image_type=message`` and the ``image`` file,
  ≤ 10 MB, not empty) returns ``data.image_key``; then a ``msg_type: image`` message with that key (the send's
  ``uuid`` dedups it as for any other message).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bot.cards.capabilities import FEISHU, Capabilities
from bot.channel import Address, ChannelError, SentRef, image_payload
from bot.events import Platform
from integrations.feishu.settings import FeishuSettings
from integrations.tokens import MemoryTokenCache, TokenCache, TokenKeeper, token_key

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
IMAGES_PATH = "/open-apis/im/v1/images"
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # im/v1/images: ≤ 10 MB, and not empty

RATE_LIMITED = 99991400
TOKEN_CODES = frozenset({99991663, 99991661})  # invalid / missing tenant token: refresh once
REFRESH_MARGIN_S = 30 * 60
MAX_UUID = 50  # Feishu's limit on the send dedup ``uuid``


def send_uuid(idempotency_key: str) -> str:
    """The ``uuid`` Feishu dedups sends on: the key itself, or a stable hash when it is too long."""
    if len(idempotency_key) <= MAX_UUID:
        return idempotency_key
    return "h-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


class FeishuChannel:
    platform = Platform.FEISHU
    capabilities: Capabilities = FEISHU

    def __init__(
        self,
        settings: FeishuSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_cache: TokenCache | None = None,
    ) -> None:
        self.settings = settings
        self._base = settings.domain.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._monotonic, self._now = monotonic, now
        self._tokens = TokenKeeper(
            token_cache or MemoryTokenCache(clock=monotonic),
            token_key("feishu", settings.app_id, endpoint=self._base, secret=settings.app_secret),
            self._fetch_token,
            margin_s=REFRESH_MARGIN_S,
            clock=monotonic,
        )

    # -- Channel --

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        return await self._send(to, "text", {"text": text}, idempotency_key)

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef:
        return await self._send(to, "interactive", card, idempotency_key)

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef:
        """PATCH the sent message; the card must keep ``config.update_multi: true`` (14 days, 5 QPS/message)."""
        message_id = ref.message_id or ref.card_ref
        if not message_id:
            raise ChannelError("a Feishu card update needs the message id")
        content = json.dumps(card, ensure_ascii=False)
        await self._call("PATCH", f"{MESSAGES_PATH}/{message_id}", json_body={"content": content})
        return ref

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes:
        if not message_id:
            raise ChannelError("a Feishu image download needs the message id")
        path = f"{MESSAGES_PATH}/{message_id}/resources/{media_ref}"
        return await self._call("GET", path, params={"type": "image"}, binary=True)

    async def send_image(self, to: Address, data: bytes | Path, *, idempotency_key: str) -> SentRef:
        raw, filename, ctype = image_payload(data, max_bytes=MAX_IMAGE_BYTES)

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("image_type", "message")
            fd.add_field("image", raw, filename=filename, content_type=ctype)
            return fd

        uploaded = await self._call("POST", IMAGES_PATH, form=form)
        image_key = (uploaded.get("data") or {}).get("image_key")
        if not isinstance(image_key, str) or not image_key:
            raise ChannelError("image upload answered without an image_key")
        return await self._send(to, "image", {"image_key": image_key}, idempotency_key)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- internals --

    async def _send(self, to: Address, msg_type: str, content: dict[str, Any], key: str) -> SentRef:
        if to.user_id:
            id_type, receive_id = "open_id", to.user_id
        elif to.chat_id:
            id_type, receive_id = "chat_id", to.chat_id
        else:
            raise ChannelError("address has neither a user nor a chat")
        body = {
            "receive_id": receive_id,
            "msg_type": msg_type,
            "content": json.dumps(content, ensure_ascii=False),  # a JSON *string*
            "uuid": send_uuid(key),
        }
        data = await self._call("POST", MESSAGES_PATH, params={"receive_id_type": id_type}, json_body=body)
        message_id = (data.get("data") or {}).get("message_id")
        if not isinstance(message_id, str):
            raise ChannelError("send answered without a message id", retryable=False)
        card_ref = message_id if msg_type == "interactive" else None
        return SentRef(self.platform, message_id, card_ref=card_ref, sent_at=self._now())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._owns_session = True
        return self._session

    async def _tenant_token(self, *, stale: str | None = None) -> str:
        return await self._tokens.get(stale=stale)

    async def _fetch_token(self) -> tuple[str, float]:
        """The tenant token and the seconds it lives (``self._tokens`` caches and shares it)."""
        body = {"app_id": self.settings.app_id, "app_secret": self.settings.app_secret}
        status, headers, raw = await self._request("POST", TOKEN_PATH, json_body=body)
        data = _check(status, headers, raw)
        token, expire = data.get("tenant_access_token"), data.get("expire")
        if not isinstance(token, str) or not isinstance(expire, int):
            raise ChannelError("token answer without tenant_access_token/expire")
        return token, float(expire)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        token: str | None = None,
        data: aiohttp.FormData | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._http().request(
                method, self._base + path, params=params, json=json_body, headers=headers, data=data
            ) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
        except TimeoutError as exc:
            raise ChannelError(f"Feishu {method} {path} timed out", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise ChannelError(f"Feishu {method} {path} failed: {exc}", retryable=True) from exc

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        binary: bool = False,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> Any:
        """``form`` builds a multipart body, afresh for each attempt (aiohttp sends a FormData once)."""
        token = await self._tenant_token()
        for attempt in (1, 2):
            status, headers, raw = await self._request(
                method, path, params=params, json_body=json_body, token=token, data=form() if form else None
            )
            if binary and status == 200 and "json" not in headers.get("content-type", ""):
                return raw
            try:
                return _check(status, headers, raw)
            except ChannelError as exc:
                if exc.code in TOKEN_CODES and attempt == 1:
                    token = await self._tenant_token(stale=token)
                    continue
                if exc.code in TOKEN_CODES:
                    exc.retryable = True  # a fresh token did not help yet; let the outbox try later
                raise
        raise AssertionError("unreachable")


def _check(status: int, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
    """The body of a successful answer, or the ChannelError that describes the failure."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = None
    code = data.get("code") if isinstance(data, dict) else None
    msg = data.get("msg", "") if isinstance(data, dict) else raw[:200].decode(errors="replace")
    if status == 429 or code == RATE_LIMITED:
        reset = headers.get("x-ogw-ratelimit-reset")
        try:
            retry_after = float(reset) if reset is not None else None
        except ValueError:
            retry_after = None
        raise ChannelError(
            f"Feishu rate limit: {msg}", code=RATE_LIMITED, retryable=True, retry_after=retry_after
        )
    if status >= 500:
        raise ChannelError(f"Feishu HTTP {status}: {msg}", code=code, retryable=True)
    if not isinstance(data, dict):
        raise ChannelError(f"Feishu HTTP {status}: not JSON", retryable=False)
    if code != 0:
        raise ChannelError(f"Feishu error {code}: {msg}", code=code if isinstance(code, int) else None)
    if status >= 400:
        raise ChannelError(f"Feishu HTTP {status}: {msg}")
    return data
