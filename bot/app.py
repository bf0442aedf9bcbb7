"""The composition root: builds the aiohttp application, its routes, the dispatcher and the outbox loop.

Each platform is switched on by its configuration section and imported only then: an unconfigured platform
costs nothing, not even its SDK import. Webhook routes verify and parse (platform module), record the dedup
key, answer within the deadline, and leave the work to the dispatcher's background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web
from aiohttp.web_log import AccessLogger
from multidict import CIMultiDict, CIMultiDictProxy
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from bot.channel import Channel, ChannelError
from bot.conversation import make_store
from bot.dispatcher import Dispatcher, Router
from bot.events import InboundEvent, WebhookRefused, WebhookReply
from bot.flows import payload_key, sync_cards
from bot.handlers import actions, commands, counting
from bot.logs import install_record_factory, new_trace_id, redact_query, tracing
from bot.outbox import deliver_due, depth
from bot.photos import PhotoStore, check_signed
from core.clock import Clock
from core.config import Settings
from core.db import WriteGate, make_engine, make_sessionmaker
from core.models import OutboxMessage

if TYPE_CHECKING:
    from integrations.tokens import TokenCache

log = logging.getLogger("pandian.app")

APP_KEY = web.AppKey("pandian", dict)
OUTBOX_PASS = 50  # rows claimed per outbox pass

# -- request bodies under hostile traffic (issue 10 §6) ------------------------------------------------------
# A callback is small: WeCom's XML envelope of a 2,048-byte text, Feishu's encrypted JSON of a message (texts
# up to 150 KB, base64 adds a third), DingTalk's robot JSON. Before any signature can be checked a stranger can
# send anything, so each route reads at most its limit (a Content-Length above it: 413 at once, unread; a body
# that grows past it, chunked: cut off at the limit), all callbacks together hold at most BODIES_IN_FLIGHT
# bytes (beyond: 503 with Retry-After, and the platforms retry), and a body not read within
# BODY_READ_TIMEOUT_S is answered 408 and its connection closed (the platforms' own deadlines are 3-5 s).
CALLBACK_MAX_BYTES = {"wecom": 256 * 1024, "feishu": 1024 * 1024, "dingtalk": 256 * 1024}
BODIES_IN_FLIGHT = 8 * 1024 * 1024  # bytes reserved by the callback bodies being read at once
BODY_READ_TIMEOUT_S = 5.0
# aiohttp closes a connection that has not completed a request this long after it opened, or after its last
# answer (slow headers, idle keep-alive); and reads (and drops) at most this long what a refused body still
# sends, so that the client reads its 413/408/503 rather than a reset.
IDLE_TIMEOUT_S = 5.0
LINGER_S = 1.0
# /healthz: undelivered outbox messages older than this make the server "degraded"; a platform whose token
# could not be fetched is not asked again sooner than TOKEN_RECHECK_S (a wrong WeCom secret asked again and
# again gets the server's IP banned for an hour)
OUTBOX_STALE_AFTER = timedelta(minutes=5)
TOKEN_CHECK_TIMEOUT_S = 5.0
TOKEN_RECHECK_S = 120.0


class BodyBudget:
    """The bytes the callback bodies being read right now may take, across all routes. A body reserves its
    declared length (or its route's limit when it declares none) before it is read, and gives it back after."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0

    def take(self, n: int) -> bool:
        if self.used + n > self.cap:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodyRefused(Exception):
    """A callback body not read: too large (413), too many in flight (503) or too slow (408)."""

    TEXT: ClassVar[dict[int, str]] = {
        413: "请求体过大 / request body too large",
        503: "服务器繁忙，请稍后重试 / server busy, retry later",
        408: "请求体发送超时 / request body too slow",
    }

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason

    def response(self) -> web.Response:
        headers = {"Retry-After": "1"} if self.status == 503 else {}
        resp = web.Response(status=self.status, text=self.TEXT[self.status], headers=headers)
        if self.status != 503:
            resp.force_close()  # the rest of that body is not wanted: no keep-alive after it
        return resp


async def read_body(
    request: web.BaseRequest, limit: int, budget: BodyBudget, timeout_s: float | None = None
) -> bytes:
    """The request's body, at most ``limit`` bytes, read within ``timeout_s`` (default BODY_READ_TIMEOUT_S);
    :class:`BodyRefused` otherwise.
    Checked from Content-Length before a byte is read, and counted while reading (aiohttp never delivers more
    than the declared length; a chunked body is cut off once past ``limit``)."""
    if not request.body_exists:  # WeCom's URL check is a GET without a body
        return b""
    timeout_s = BODY_READ_TIMEOUT_S if timeout_s is None else timeout_s
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyRefused(413, f"declares {declared} bytes, the limit is {limit}")
    reserved = declared if declared is not None else limit
    if not budget.take(reserved):
        raise BodyRefused(503, f"{budget.used} bytes of bodies in flight, the limit is {budget.cap}")
    try:
        body = bytearray()
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise BodyRefused(413, f"more than {limit} bytes")
        return bytes(body)
    except TimeoutError:
        raise BodyRefused(408, f"{len(body)} bytes in {timeout_s:.0f} s") from None
    finally:
        budget.give(reserved)


class _Shown:
    """A request as the access log sees it: the same request, with signatures left out of its path and its
    ``Referer`` (:func:`bot.logs.redact_query`)."""

    __slots__ = ("_request", "headers", "path_qs")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.path_qs = redact_query(request.path_qs)
        self.headers: Any = request.headers
        referer = request.headers.get("Referer")
        if referer and "?" in referer:
            headers = CIMultiDict(request.headers)
            headers["Referer"] = redact_query(referer)
            self.headers = CIMultiDictProxy(headers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log (its format, its ``aiohttp.access`` logger) without signatures: a signed photo link
    (``/photos/<ref>?e=..&s=..``) copied from a log would open the photo until it expires."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        shown: Any = _Shown(request) if request is not None else None
        super().log(shown, response, time)


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.ack_ms: deque[float] = deque(maxlen=5000)  # the latest acks only: a list grew without end

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def render(self, extra: dict[str, float]) -> str:
        lines = []
        for name, v in sorted({**self.counters, **extra}.items()):
            lines.append(f"pandian_{name} {v}")
        if self.ack_ms:
            ordered = sorted(self.ack_ms)
            for q in (0.5, 0.99):
                lines.append(
                    f'pandian_ack_ms{{quantile="{q}"}} {ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.2f}'
                )
        return "\n".join(lines) + "\n"


WebhookFn = Callable[[web.Request, bytes, datetime], WebhookReply]


def _webhook_route(name: str, fn: WebhookFn) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        started = time.perf_counter()
        state = request.app[APP_KEY]
        metrics: Metrics = state["metrics"]
        dispatcher: Dispatcher = state["dispatcher"]
        try:
            body = await read_body(request, CALLBACK_MAX_BYTES[name], state["bodies"])
        except BodyRefused as exc:
            metrics.inc(f'body_refused_total{{platform="{name}",status="{exc.status}"}}')
            log.warning("%s webhook body refused (%s): %s", name, exc.status, exc.reason)
            return exc.response()
        try:
            reply = fn(request, body, state["clock"].now())
        except WebhookRefused as exc:
            metrics.inc(f'refused_total{{platform="{name}"}}')
            log.warning("%s webhook refused (%s): %s", name, exc.status, exc.reason)
            return web.Response(status=exc.status, text=exc.reason)
        for event in reply.events:
            metrics.inc(f'inbound_total{{platform="{name}"}}')
            with tracing(new_trace_id()) as trace_id:
                first = await dispatcher.submit(event, trace_id)  # durable dedup, then background work
                log.debug("%s %s %s", name, event.dedup_key, "accepted" if first else "duplicate dropped")
        metrics.ack_ms.append((time.perf_counter() - started) * 1000)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    return route


Submit = Callable[[InboundEvent], Awaitable[bool]]
ConnectionFactory = Callable[[Submit], Any]  # -> an object with ``async run()`` and ``async close()``


def _platforms(
    settings: Settings,
) -> tuple[
    dict[str, Channel], list[tuple[str, str, WebhookFn]], dict[str, ConnectionFactory], TokenCache | None
]:
    """Channels, webhook routes and long connections for the configured platforms only (lazy imports: a
    platform's SDK is imported only by the mode that needs it), and the token cache the channels share through
    Redis when ``redis_url`` is set (None: each channel keeps its token in memory); closed after them."""
    channels: dict[str, Channel] = {}
    routes: list[tuple[str, str, WebhookFn]] = []
    connections: dict[str, ConnectionFactory] = {}
    tokens: TokenCache | None = None
    if settings.redis_url and (settings.wecom or settings.feishu or settings.dingtalk):
        from integrations.tokens import RedisTokenCache

        tokens = RedisTokenCache.from_url(settings.redis_url)
    if settings.wecom:
        from integrations.wecom import client as wecom_client
        from integrations.wecom import settings as wecom_settings
        from integrations.wecom import webhook as wecom_webhook

        cfg = wecom_settings.WeComSettings(**settings.wecom)
        wecom = wecom_webhook.WeComWebhook(cfg)
        channels["wecom"] = wecom_client.WeComChannel(cfg, token_cache=tokens)

        def wecom_fn(request: web.Request, body: bytes, now: datetime) -> WebhookReply:
            return wecom.handle(request.method, dict(request.query), body, now)

        routes += [("GET", "/wecom/callback", wecom_fn), ("POST", "/wecom/callback", wecom_fn)]
    if settings.feishu:
        from integrations.feishu import settings as feishu_settings
        from integrations.feishu import webhook as feishu_webhook

        fcfg = feishu_settings.FeishuSettings(**settings.feishu)
        feishu = feishu_webhook.FeishuWebhook(fcfg)
        from integrations.feishu import client as feishu_client

        channels["feishu"] = feishu_client.FeishuChannel(fcfg, token_cache=tokens)
        if fcfg.mode == "websocket":  # no public HTTPS needed: Feishu pushes events over our connection

            def feishu_ws(submit: Submit) -> Any:
                from integrations.feishu.ws import FeishuLongConnection

                return FeishuLongConnection(fcfg, submit)

            connections["feishu"] = feishu_ws
        else:

            def feishu_fn(request: web.Request, body: bytes, now: datetime) -> WebhookReply:
                return feishu.handle(dict(request.headers), body, now)

            routes.append(("POST", "/feishu/webhook", feishu_fn))
    if settings.dingtalk:
        from integrations.dingtalk import settings as dingtalk_settings
        from integrations.dingtalk import webhook as dingtalk_webhook

        dcfg = dingtalk_settings.DingTalkSettings(**settings.dingtalk)
        dingtalk = dingtalk_webhook.DingTalkWebhook(dcfg)
        import integrations.dingtalk.client as dingtalk_client

        channels["dingtalk"] = dingtalk_client.DingTalkChannel(dcfg, token_cache=tokens)
        if dcfg.mode == "stream":  # no public HTTPS needed: DingTalk pushes over our connection

            def dingtalk_stream(submit: Submit) -> Any:
                from integrations.dingtalk.stream import DingTalkStreamConnection

                return DingTalkStreamConnection(dcfg, submit)

            connections["dingtalk"] = dingtalk_stream
        else:

            def robot_fn(request: web.Request, body: bytes, now: datetime) -> WebhookReply:
                return dingtalk.handle_robot(dict(request.headers), body, now)

            def card_fn(request: web.Request, body: bytes, now: datetime) -> WebhookReply:
                return dingtalk.handle_card(dict(request.headers), body, now)

            routes += [("POST", "/dingtalk/robot", robot_fn), ("POST", "/dingtalk/card", card_fn)]
    return channels, routes, connections, tokens


async def healthz(request: web.Request) -> web.Response:
    """The server's health, for a load balancer (the HTTP status) and for an admin (the JSON).

    - **200** while the server can take callbacks: its database answers, and Redis does when ``redis_url`` is
      set. **503** when it cannot: send the traffic elsewhere.
    - ``ok``: true exactly when the status is 200 (as it always was).
    - ``status``: ``"ok"``; ``"degraded"`` (still 200: callbacks are taken, but replies are not going out and
      an admin should look: a configured platform's token cannot be fetched, or the outbox holds messages
      undelivered for more than 5 minutes); ``"down"`` (503).
    - ``database``, ``redis`` (when configured): ``"ok"`` or ``"error: <what>"``.
    - ``outbox``: ``"ok"``, ``"stale: <n> messages undelivered for more than 300 s (oldest <s> s: <platform>
      <n>, ...)"`` or ``"error: <what>"``. Ages are read on the server's clock.
    - ``platforms``: each configured platform's ``"ok"`` (its access token is at hand or was just fetched) or
      ``"error: token not fetched: <the platform's answer, secrets left out>"``. A failed fetch is not tried
      again for 120 s (a wrong WeCom secret asked repeatedly gets the server's IP banned).
    """
    state = request.app[APP_KEY]
    checks: dict[str, Any] = {}
    try:
        async with state["engine"].connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # the point of a health check is to report, not to crash
        checks["database"] = f"error: {exc.__class__.__name__}"
    if state["settings"].redis_url:
        try:
            import redis.asyncio as aioredis

            r = aioredis.from_url(state["settings"].redis_url)
            await r.ping()
            await r.aclose()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    outbox = await _outbox_health(state) if ok else "unchecked: the database is not answering"
    names = sorted(state["channels"])
    found = await asyncio.gather(*(_token_health(state, n) for n in names))
    platforms = dict(zip(names, found, strict=True))
    degraded = outbox != "ok" or any(v.startswith("error") for v in platforms.values())
    status = "down" if not ok else "degraded" if degraded else "ok"
    body = {"ok": ok, "status": status, **checks, "outbox": outbox, "platforms": platforms}
    return web.json_response(body, status=200 if ok else 503)


async def _outbox_health(state: dict[str, Any]) -> str:
    """``"ok"``, or how many messages have waited longer than OUTBOX_STALE_AFTER (the server's clock)."""
    now: datetime = state["clock"].now()
    try:
        async with state["sessionmaker"]() as s:
            rows = (
                await s.execute(
                    select(OutboxMessage.platform, func.count(), func.min(OutboxMessage.created_at))
                    .where(
                        OutboxMessage.state.in_(("pending", "sending")),
                        OutboxMessage.created_at < now - OUTBOX_STALE_AFTER,
                    )
                    .group_by(OutboxMessage.platform)
                )
            ).all()
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
    if not rows:
        return "ok"
    total = sum(int(n) for _, n, _ in rows)
    oldest = max((now - first).total_seconds() for _, _, first in rows)
    each = ", ".join(f"{platform} {n}" for platform, n, _ in sorted(rows))
    limit = OUTBOX_STALE_AFTER.total_seconds()
    return f"stale: {total} messages undelivered for more than {limit:.0f} s (oldest {oldest:.0f} s: {each})"


async def _token_health(state: dict[str, Any], name: str) -> str:
    """Whether ``name``'s access token is at hand (fetched now if need be), without a secret in the answer."""
    memo: dict[str, tuple[str, float]] = state["token_checks"]
    seen = memo.get(name)
    if seen is not None and time.monotonic() - seen[1] < TOKEN_RECHECK_S:
        return seen[0]
    keeper = getattr(state["channels"][name], "_tokens", None)  # each platform client's TokenKeeper
    if keeper is None:
        return "unchecked: this channel keeps no token"
    try:
        await asyncio.wait_for(keeper.get(), TOKEN_CHECK_TIMEOUT_S)
    except TimeoutError:
        why = f"no answer within {TOKEN_CHECK_TIMEOUT_S:.0f} s"
    except ChannelError as exc:
        why = _scrub(str(exc), getattr(state["settings"], name, None) or {})
    except Exception as exc:
        why = exc.__class__.__name__
    else:
        memo.pop(name, None)
        return "ok"
    found = f"error: token not fetched: {why}"
    memo[name] = (found, time.monotonic())
    return found


def _scrub(text: str, section: dict[str, Any]) -> str:
    """``text`` with every string value of the platform's configuration section in it masked (an error that
    quotes a URL may carry the secret in its query)."""
    for value in section.values():
        if isinstance(value, str) and len(value) >= 6 and not value.startswith(("http://", "https://")):
            text = text.replace(value, "******")
    return text


async def metrics_route(request: web.Request) -> web.Response:
    state = request.app[APP_KEY]
    dispatcher: Dispatcher = state["dispatcher"]
    # the dispatcher's figures before the outbox's: an event finished during the query has its replies
    # committed, so a scrape never shows an empty backlog and an empty outbox with replies still unsent
    extra: dict[str, float] = {f"dispatch_{k}_total": v for k, v in dispatcher.stats.items()}
    extra["dispatch_backlog"] = dispatcher.busy
    async with state["sessionmaker"]() as s:
        outbox = await depth(s)
    extra.update({f'outbox_depth{{state="{k}"}}': v for k, v in outbox.items()})
    extra["dispatch_accept_batches_total"], extra["dispatch_accept_batched_total"] = dispatcher.accept_batches
    if state["gate"] is not None:  # SQLite: transactions that queued for the write lock, by lane
        extra.update({f'sqlite_gate_waits_total{{lane="{k}"}}': v for k, v in state["gate"].waits.items()})
    for name, conn in state["connections"].items():  # long connections (Feishu WebSocket, DingTalk Stream)
        extra.update({f'connection_{k}_total{{platform="{name}"}}': v for k, v in conn.stats.items()})
    return web.Response(text=state["metrics"].render(extra), content_type="text/plain")


async def photo_route(request: web.Request) -> web.StreamResponse:
    """A count photo behind a signed, expiring link (review and approval cards carry them)."""
    state = request.app[APP_KEY]
    ref = request.match_info["ref"]
    why = check_signed(
        ref,
        payload_key(state["settings"]),
        request.query.get("e"),
        request.query.get("s"),
        state["clock"].now().timestamp(),
    )
    if why is not None:
        log.warning("photo link refused (%s): %s", why, ref)
        return web.Response(status=403, text="链接无效或已过期 / link invalid or expired")
    path = state["photos"].path(ref)
    if not path.is_file():
        return web.Response(status=404, text="照片已按保留期限删除 / photo no longer kept")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


async def _bounded(work: Awaitable[Any], what: str, limit_s: float = 10.0) -> None:
    """Await one shutdown step for at most ``limit_s`` seconds; if it is stuck, log every pending task's stack
    (what it waits for) and go on."""
    try:
        await asyncio.wait_for(asyncio.ensure_future(work), limit_s)
    except (asyncio.CancelledError, Exception) as exc:
        if isinstance(exc, TimeoutError):
            stacks = "\n".join(
                f"{t.get_name()}: {t.get_coro()!r} at {[f'{f.f_code.co_filename}:{f.f_lineno}' for f in t.get_stack()]}"
                for t in asyncio.all_tasks() if not t.done()
            )  # fmt: skip
            log.error("shutdown: %s did not finish in %.0f s; pending tasks:\n%s", what, limit_s, stacks)
        elif not isinstance(exc, asyncio.CancelledError):
            log.warning("shutdown: %s failed: %r", what, exc)


class LazyBarcodeReader:
    """The barcode reader, imported and started at the first photo: its libraries (zxing-cpp, pyzbar, Pillow,
    NumPy) cost a text-only server memory and start-up time for nothing."""

    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max_workers
        self._reader: Any = None

    async def decode(self, data: bytes) -> Any:
        if self._reader is None:
            from integrations.barcode import BarcodeReader

            self._reader = BarcodeReader(max_workers=self.max_workers)
        return await self._reader.decode(data)

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()


def masked_url(url: str) -> str:
    """A database or Redis URL with its password shown as ``***`` (an unreadable one is not shown at all)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(not shown: not a URL)"


def startup_report(
    settings: Settings, app: web.Application, platforms: list[str], connected: list[str]
) -> list[str]:
    """The lines the server logs when it starts: platforms (and how each reaches us), routes, database, Redis
    and public URL, passwords masked."""
    modes = [f"{p} ({'long connection' if p in connected else 'webhook'})" for p in platforms]
    routes = sorted({(r.resource.canonical, r.method) for r in app.router.routes()
                     if r.resource is not None and r.method != "HEAD"})  # fmt: skip
    lines = [
        f"platforms: {', '.join(modes) or 'none'}",
        f"routes: {', '.join(f'{method} {path}' for path, method in routes)}",
        f"database: {masked_url(settings.database_url)}",
    ]
    if settings.redis_url:
        lines.append(f"redis: {masked_url(settings.redis_url)}")
    url = settings.server.public_url
    lines.append(f"public URL: {url}" if url else "public URL: not set (no links to count photos on cards)")
    return lines


def build_app(settings: Settings, *, clock: Clock) -> web.Application:
    """The server. ``clock`` is the one clock every route, job and handler reads (``SystemClock`` in
    production, pinned in tests)."""
    install_record_factory()
    # SQLite: this process's transactions queue for the one write lock in the event loop, and the webhook's
    # dedup inserts (on their own connection) go first. PostgreSQL: the acks' own small pool keeps them from
    # waiting behind background work for a connection.
    gate = WriteGate() if settings.database_url.startswith("sqlite") else None
    engine = make_engine(settings.database_url, gate=gate)
    small = {} if ":memory:" in settings.database_url else {"pool_size": 1, "max_overflow": 1}
    ack_engine = make_engine(settings.database_url, gate=gate, urgent=True, **small)
    sessionmaker = make_sessionmaker(engine)
    store = make_store(settings.redis_url)
    channels, routes, connections, tokens = _platforms(settings)
    wake = asyncio.Event()

    async def after_commit() -> None:
        wake.set()

    reader = LazyBarcodeReader(max_workers=2)
    services = {
        "channels": channels, "barcode_reader": reader,
        "photos": PhotoStore(Path(settings.server.photos_dir), settings.server.photo_retention_days),
    }  # fmt: skip
    router = Router().include(commands.router, counting.router, actions.router, commands.fallback_router)

    async def after_handle(session: Any, trace_id: str) -> None:
        await sync_cards(session, settings, clock.now(), trace_id)

    dispatcher = Dispatcher(sessionmaker, settings, store, router, after_commit, services, after_handle, clock=clock,
                            ack_sessionmaker=make_sessionmaker(ack_engine), workers=settings.server.workers)  # fmt: skip
    # no route reads more than a callback's limit; ``read_body`` bounds the callbacks themselves
    handler_args = {"keepalive_timeout": IDLE_TIMEOUT_S, "lingering_time": LINGER_S,
                    "access_log_class": RedactingAccessLogger}  # fmt: skip
    app = web.Application(client_max_size=max(CALLBACK_MAX_BYTES.values()), handler_args=handler_args)
    metrics = Metrics()
    app[APP_KEY] = {
        "settings": settings, "engine": engine, "sessionmaker": sessionmaker, "dispatcher": dispatcher,
        "channels": channels, "metrics": metrics, "store": store, "connections": {}, "photos": services["photos"],
        "gate": gate, "clock": clock, "bodies": BodyBudget(BODIES_IN_FLIGHT), "token_checks": {},
    }  # fmt: skip
    for method, path, fn in routes:
        app.router.add_route(method, path, _webhook_route(path.split("/")[1], fn))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/photos/{ref}", photo_route)

    async def announce(app: web.Application) -> None:
        """What this server is: the admin's first look when something does not arrive."""
        for line in startup_report(settings, app, sorted(channels), sorted(connections)):
            log.info("%s", line)
        if not channels:
            log.warning("no platform configured ([wecom], [feishu], [dingtalk]): nobody can reach pandian")

    app.on_startup.append(announce)

    async def outbox_loop(app: web.Application) -> Any:
        # the loops stop at the next turn once this is set. Cancelling them alone is not enough: a cancellation
        # that lands inside a pass can come back as an ordinary error (a batch whose flush was cancelled fails
        # its callers with RuntimeError), and ``except Exception`` then kept the loop going (a shutdown hang)
        stopping = asyncio.Event()

        async def loop() -> None:
            while not stopping.is_set():
                try:
                    counts = await deliver_due(sessionmaker, channels, now=clock.now(), limit=OUTBOX_PASS)
                    if sum(counts.values()) >= OUTBOX_PASS:
                        continue  # a full pass: more is probably waiting, go on at once
                except Exception:
                    if stopping.is_set():
                        break
                    log.exception("outbox pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), settings.server.outbox_interval_s)
                wake.clear()

        async def upkeep() -> None:
            """Cards for changes made outside a chat event (CLI, jobs, late ERP movements), and replay of
            acknowledged events whose process died before finishing them (its own, or a peer's)."""
            while not stopping.is_set():
                try:
                    async with sessionmaker() as s, s.begin():
                        if (await sync_cards(s, settings, clock.now())).total():
                            wake.set()
                    await dispatcher.replay(older_than=timedelta(seconds=settings.server.replay_after_s))
                except Exception:
                    if stopping.is_set():
                        break
                    log.exception("upkeep pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), settings.server.card_sync_interval_s)

        def submitter(name: str) -> Submit:
            async def submit(event: InboundEvent) -> bool:
                metrics.inc(f'inbound_total{{platform="{name}"}}')
                with tracing(new_trace_id()) as trace_id:
                    first = await dispatcher.submit(event, trace_id)
                    log.debug("%s %s %s", name, event.dedup_key, "accepted" if first else "duplicate dropped")
                return first

            return submit

        conns = {name: make(submitter(name)) for name, make in connections.items()}
        app[APP_KEY]["connections"] = conns
        tasks = [asyncio.create_task(loop()), asyncio.create_task(upkeep())]
        conn_tasks = [asyncio.create_task(c.run()) for c in conns.values()]
        yield
        # every step is bounded: a shutdown that hangs is worse than one that logs what it left behind
        for name, conn in conns.items():  # nothing more comes in before the dispatcher drains
            await _bounded(conn.close(), f"closing the {name} connection")
        for task in conn_tasks:
            await _bounded(task, "a long connection's task")
        stopping.set()
        wake.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            await _bounded(task, "the outbox and upkeep loops")
        await _bounded(dispatcher.drain(), "draining the dispatcher", 40.0)
        for name, ch in channels.items():
            await _bounded(ch.close(), f"closing the {name} channel")
        if tokens is not None:
            await _bounded(tokens.close(), "closing the token cache")
        await _bounded(reader.close(), "stopping the barcode reader")
        await _bounded(store.close(), "closing the conversation store")
        await _bounded(ack_engine.dispose(), "closing the ack connections")
        await _bounded(engine.dispose(), "closing the database connections")

    app.cleanup_ctx.append(outbox_loop)

    async def scheduled_jobs(app: web.Application) -> Any:
        """Morning plan and push, afternoon reminder, evening summary, escalation, ERP sync (``[schedule]``).
        Every server process runs the scheduler; each job claims its run durably, so it happens once."""
        from bot.scheduler import build_scheduler, shutdown, start

        scheduler = build_scheduler(sessionmaker, settings, clock=clock.now)
        start(scheduler)
        yield
        await shutdown(scheduler)

    app.cleanup_ctx.append(scheduled_jobs)  # after the outbox loop: stops first, while the engine is open
    return app
