"""WeComChannel: the bot's Channel for a WeCom self-built app, on aiohttp (shared/research/platforms.md §1.2-1.4).

- Token: ``GET /cgi-bin/gettoken``, cached until 5 minutes before ``expires_in`` runs out (in ``token_cache``,
  shared by the server processes when it is Redis: integrations/tokens.py); on 40014 / 42001 / 40001 from an
  API call the token is fetched again once and the call repeated (LangBot#986 broke without it).
- Card and image sends use ``enable_duplicate_check`` (1800 s), so a repeated identical send inside that
  window is not delivered twice. Texts do not: WeCom's check compares content, so a second, different message
  with the same words (two items counted, "✓ 已记录（10个）" twice) would be silently dropped. A text whose
  send timed out after WeCom took it may therefore arrive twice; a card carries its unique ``task_id``.
- ``update_card`` spends the one-shot ``response_code`` (one use, 72 h); a spent or expired code is a
  permanent error: send a new card instead.
- ``send_image`` uploads with ``POST /cgi-bin/media/upload?type=image`` (multipart, field ``media``) and sends
  ``msgtype: image`` with the returned ``media_id`` (valid 3 days). The media id is remembered per picture
  (by content hash, for a day), so a retried send repeats the identical message and the duplicate check
  still recognises it.
- Errors: 45009 (back off ≥ 60 s), 45033, -1, HTTP 5xx, timeouts and connection errors are retryable;
  everything else is not.
"""

from __future__ import annotations

import hashlib
import json as jsonlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bot.cards.capabilities import WECOM
from bot.channel import Address, ChannelError, SentRef, image_payload
from bot.events import Platform
from integrations.tokens import MemoryTokenCache, TokenCache, TokenKeeper, token_key
from integrations.wecom.settings import WeComSettings

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
REFRESH_MARGIN_S = 300.0
DUPLICATE_CHECK_INTERVAL_S = 1800
# errcode -> seconds to wait before retrying; the rest of the errcodes are permanent
RETRYABLE: dict[int, float | None] = {45009: 60.0, 45033: 1.0, -1: 1.0}
# One doc copy says images up to 2 MB, another 10 MB, error 45001's note 5 MB: the smallest, checked here.
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MIN_MEDIA_BYTES = 6  # "所有文件size必须大于5个字节"
MEDIA_REUSE_S = 24 * 3600.0  # well inside the 3 days a media_id lives


class WeComChannel:
    platform = Platform.WECOM
    capabilities = WECOM

    def __init__(
        self,
        settings: WeComSettings,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_cache: TokenCache | None = None,
    ) -> None:
        self.settings = settings
        self._base = settings.api_base.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock, self._now = clock, now
        self._session: aiohttp.ClientSession | None = None
        self._tokens = TokenKeeper(
            token_cache or MemoryTokenCache(clock=clock),
            token_key(
                "wecom",
                f"{settings.corp_id}:{settings.agent_id}",
                endpoint=self._base,
                secret=settings.secret,
            ),
            self._fetch_token,
            margin_s=REFRESH_MARGIN_S,
            clock=clock,
        )
        self._media: dict[str, tuple[str, float]] = {}  # sha256 of a picture -> (media_id, uploaded at)

    # -- Channel -----------------------------------------------------------------------------------------

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        data = await self._send(to, {"msgtype": "text", "text": {"content": text}}, duplicate_check=False)
        return SentRef(self.platform, _str(data.get("msgid")), sent_at=self._now())

    async def send_card(self, to: Address, card: dict[str, Any], *, idempotency_key: str) -> SentRef:
        data = await self._send(to, {"msgtype": "template_card", "template_card": card})
        return SentRef(
            self.platform,
            _str(data.get("msgid")),
            card_ref=_str(card.get("task_id")),
            update_token=_str(data.get("response_code")),
            sent_at=self._now(),
        )

    async def update_card(self, ref: SentRef, card: dict[str, Any]) -> SentRef:
        """Replace the card (a full ``template_card``), or grey its buttons out when ``card`` is
        ``{"button": {"replace_name": …}}``. Spends ``ref.update_token``; the returned ref has none left."""
        if not ref.update_token:
            raise ChannelError("no unused response_code for this card: send a new card", code="no_code")
        body: dict[str, Any] = {"agentid": self.settings.agent_id, "response_code": ref.update_token}
        if set(card) == {"button"}:
            body["button"] = card["button"]
        else:
            body["template_card"] = card
        await self._json("POST", "/cgi-bin/message/update_template_card", json=body)
        return SentRef(self.platform, ref.message_id, card_ref=ref.card_ref, sent_at=self._now())

    async def download_image(
        self, media_ref: str, *, message_id: str | None = None, url: str | None = None
    ) -> bytes:
        result = await self._call("GET", "/cgi-bin/media/get", params={"media_id": media_ref})
        if isinstance(result, bytes):
            return result
        raise ChannelError("media/get answered JSON without an error code", code="no_media")

    async def send_image(self, to: Address, data: bytes | Path, *, idempotency_key: str) -> SentRef:
        raw, filename, ctype = image_payload(data, max_bytes=MAX_IMAGE_BYTES, min_bytes=MIN_MEDIA_BYTES)
        if not to.user_id:  # checked before uploading anything
            raise ChannelError("a WeCom self-built app sends to a member (user_id), not to a chat", code="to")
        media_id = await self._upload_image(raw, filename, ctype)
        sent = await self._send(to, {"msgtype": "image", "image": {"media_id": media_id}})
        return SentRef(self.platform, _str(sent.get("msgid")), sent_at=self._now())

    async def _upload_image(self, raw: bytes, filename: str, ctype: str) -> str:
        digest = hashlib.sha256(raw).hexdigest()
        known = self._media.get(digest)
        if known is not None and self._clock() - known[1] < MEDIA_REUSE_S:
            return known[0]

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("media", raw, filename=filename, content_type=ctype)
            return fd

        result = await self._call("POST", "/cgi-bin/media/upload", params={"type": "image"}, form=form)
        media_id = result.get("media_id") if isinstance(result, dict) else None
        if not isinstance(media_id, str) or not media_id:
            raise ChannelError("media/upload answered without a media_id", code="no_media_id")
        self._media[digest] = (media_id, self._clock())
        return media_id

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- plumbing ----------------------------------------------------------------------------------------

    async def _send(
        self, to: Address, message: dict[str, Any], *, duplicate_check: bool = True
    ) -> dict[str, Any]:
        if not to.user_id:
            raise ChannelError("a WeCom self-built app sends to a member (user_id), not to a chat", code="to")
        body = {"touser": to.user_id, "agentid": self.settings.agent_id, **message}
        if duplicate_check:
            body |= {"enable_duplicate_check": 1, "duplicate_check_interval": DUPLICATE_CHECK_INTERVAL_S}
        return await self._json("POST", "/cgi-bin/message/send", json=body)

    async def _json(self, method: str, path: str, *, json: dict[str, Any]) -> dict[str, Any]:
        result = await self._call(method, path, json=json)
        if isinstance(result, bytes):
            raise ChannelError(f"{path} answered with a non-JSON body", code="not_json", retryable=True)
        return result

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: dict[str, Any] | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any] | bytes:
        """One API call with the token; refreshes the token once on a token error and repeats the call.
        ``form`` builds a multipart body (a fresh one per attempt: aiohttp sends a FormData only once)."""
        stale: str | None = None
        for attempt in range(2):
            token = await self._tokens.get(stale=stale)
            query = {**(params or {}), "access_token": token}
            result = await self._request(method, path, query, json, form() if form else None)
            if isinstance(result, bytes):
                return result
            code = _errcode(result)
            if code == 0:
                return result
            if code in TOKEN_ERRORS and attempt == 0:
                stale = token
                continue
            raise _error(path, code, result)
        raise AssertionError("unreachable")

    async def _fetch_token(self) -> tuple[str, float]:
        """``gettoken``: the token and the seconds it lives (``self._tokens`` caches and shares it)."""
        data = await self._request(
            "GET",
            "/cgi-bin/gettoken",
            {"corpid": self.settings.corp_id, "corpsecret": self.settings.secret},
            None,
        )
        if isinstance(data, bytes):
            raise ChannelError("gettoken answered with a non-JSON body", code="not_json", retryable=True)
        code = _errcode(data)
        if code != 0 or not data.get("access_token"):
            # 40001 here is a wrong secret: retrying gets the IP banned for an hour (doc 45009 note)
            raise _error("/cgi-bin/gettoken", code, data, token_fetch=True)
        return str(data["access_token"]), float(data.get("expires_in", 7200))

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        json: dict[str, Any] | None,
        data: aiohttp.FormData | None = None,
    ) -> dict[str, Any] | bytes:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with session.request(
                method, self._base + path, params=params, json=json, data=data
            ) as resp:
                if resp.status >= 500:
                    raise ChannelError(
                        f"{path}: HTTP {resp.status}",
                        code=resp.status,
                        retryable=True,
                        retry_after=_retry_after(resp.headers.get("Retry-After")),
                    )
                if resp.status != 200:
                    raise ChannelError(f"{path}: HTTP {resp.status}", code=resp.status)
                ctype = resp.content_type
                body = await resp.read()
        except TimeoutError:
            raise ChannelError(f"{path}: timed out", code="timeout", retryable=True) from None
        except aiohttp.ClientError as e:
            raise ChannelError(f"{path}: {e!r}", code="network", retryable=True) from None
        # media/get answers errors as JSON with HTTP 200, so the content type decides
        looks_json = ctype in ("", "application/octet-stream") and body[:1] == b"{"
        if ctype == "application/json" or ctype.startswith("text/") or looks_json:
            try:
                data = jsonlib.loads(body)
            except ValueError:
                if ctype == "application/json":
                    raise ChannelError(f"{path}: bad JSON", code="bad_json", retryable=True) from None
                return body
            if isinstance(data, dict):
                return data
        return body


def _errcode(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return -1


def _error(path: str, code: int, data: Mapping[str, Any], *, token_fetch: bool = False) -> ChannelError:
    message = f"{path}: errcode {code} {data.get('errmsg', '')}".rstrip()
    if code in RETRYABLE:
        return ChannelError(message, code=code, retryable=True, retry_after=RETRYABLE[code])
    if code in TOKEN_ERRORS and not token_fetch:
        # the token was refreshed once and is still refused: let the outbox try again later
        return ChannelError(message, code=code, retryable=True)
    return ChannelError(message, code=code)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
