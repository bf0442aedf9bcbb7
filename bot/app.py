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
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import text

from bot.channel import Channel
from bot.conversation import make_store
from bot.dispatcher import Dispatcher, Router
from bot.events import InboundEvent, WebhookRefused, WebhookReply
from bot.flows import payload_key, sync_cards
from bot.handlers import actions, commands, counting
from bot.logs import install_record_factory, new_trace_id, tracing
from bot.outbox import deliver_due, depth
from bot.photos import PhotoStore, check_signed
from core.clock import Clock
from core.config import Settings
from core.db import WriteGate, make_engine, make_sessionmaker

if TYPE_CHECKING:
    from integrations.tokens import TokenCache

log = logging.getLogger("pandian.app")

APP_KEY = web.AppKey("pandian", dict)
OUTBOX_PASS = 50  # rows claimed per outbox pass


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
        body = await request.read()
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
    return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)


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
    app = web.Application(client_max_size=25 * 1024 * 1024)
    metrics = Metrics()
    app[APP_KEY] = {
        "settings": settings, "engine": engine, "sessionmaker": sessionmaker, "dispatcher": dispatcher,
        "channels": channels, "metrics": metrics, "store": store, "connections": {}, "photos": services["photos"],
        "gate": gate, "clock": clock,
    }  # fmt: skip
    for method, path, fn in routes:
        app.router.add_route(method, path, _webhook_route(path.split("/")[1], fn))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/photos/{ref}", photo_route)

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
