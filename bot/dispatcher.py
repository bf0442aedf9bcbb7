"""Ack first, work after: inbound events are acknowledged by the webhook, then processed here.

- ``Dispatcher.submit`` records the event durably and drops it if its dedup key was seen before (a platform
  retry). Records are written in batches (``core.batching.GroupCommit``): every callback that arrives while
  one batch commits goes into the next, so a burst costs a few transactions, not one per callback. They use
  their own connection (``ack_sessionmaker``), ahead of background work at SQLite's write lock
  (``core.db.WriteGate``), so the platform is answered in milliseconds however busy the workers are.
- Accepted events wait in a queue for a fixed pool of workers (``workers``): a burst becomes a backlog, not
  thousands of tasks fighting over connections and locks. Past ``queue_limit`` only the event's key is kept
  in memory; once the queue is half empty the event is loaded back from the database and queued (so a
  burst's tail waits for the workers, not for replay). ``drain`` waits for the queue on shutdown; what is
  left is still in the database and ``replay`` (any process) picks it up.
- Each event is processed under the sender's lock, then with their conversation state (lock, then load), in
  one transaction that first claims the event (``processed_at`` compare-and-set): a replay by a peer and
  the original can never both act on it.
- The platform identity is mapped to an internal user; an unknown sender gets a polite "not registered" and
  nothing else happens.
- Handlers are plain async functions registered on a ``Router`` by event type; routers are composed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Address
from bot.conversation import ConversationStore, LockTimeout
from bot.events import CardAction, ImageMessage, InboundEvent, Platform, TextMessage, from_record, to_record
from bot.logs import new_trace_id, trace_id_var, tracing
from bot.outbox import enqueue
from core.batching import GroupCommit
from core.clock import Clock, local_day
from core.config import Settings
from core.db import track_writes
from core.models import InboundSeen, User

log = logging.getLogger("pandian.dispatch")

NOT_REGISTERED = "您好，您还没有在盘点系统登记，请联系管理员添加您的账号。/ You are not registered yet; please ask your admin."

_ID_COLUMN = {
    Platform.WECOM: User.wecom_userid,
    Platform.FEISHU: User.feishu_open_id,
    Platform.DINGTALK: User.dingtalk_userid,
}
# The statements every event runs, built once (with parameters) rather than per event: building and
# cache-keying them each time cost more than running them
_USER_BY_ID = {p: select(User).where(col == bindparam("uid")) for p, col in _ID_COLUMN.items()}
_SEEN = cast(Table, InboundSeen.__table__)
_seen = _SEEN.c
_CLAIM = (
    update(_SEEN)
    .where(_seen.dedup_key == bindparam("key"), _seen.processed_at.is_(None))
    .values(processed_at=bindparam("at"), event=None)
)


@dataclass
class Context:
    """What a handler gets: the event, the user, their conversation state, and a way to reply."""

    event: InboundEvent
    user: User
    session: AsyncSession
    settings: Settings
    state: dict[str, Any]
    trace_id: str
    services: dict[str, Any] = field(default_factory=dict)  # channels, the barcode reader, the photo store
    prepared: dict[str, Any] = field(default_factory=dict)  # what the router's ``before`` hooks fetched
    replies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # slow work that must not hold the transaction (on SQLite, the write lock): run after it commits, and
    # what it returns is sent as further replies (e.g. drawing a chart)
    later: list[Callable[[], Awaitable[list[tuple[str, dict[str, Any]]]]]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return Address(self.event.platform, self.event.sender.user_id, self.event.chat_id)

    @property
    def now(self) -> datetime:
        """When the user acted: the event's arrival, stamped by the composition root's clock (a replayed
        event keeps its own time). Handlers never read the wall clock."""
        return self.event.received_at

    @property
    def today(self) -> date:
        """The company's day at :attr:`now`."""
        return local_day(self.event.received_at, self.settings.tz)

    def reply_text(self, text: str) -> None:
        self.replies.append(("text", {"text": text}))

    def reply_card(self, card: dict[str, Any]) -> None:
        self.replies.append(("card", {"card": card}))

    def reply_image(self, ref: str, path: str) -> None:
        """An image through the outbox: the row holds the stored picture's reference, never its bytes."""
        self.replies.append(("image", {"image": ref, "path": path}))

    def after_commit(self, work: Callable[[], Awaitable[list[tuple[str, dict[str, Any]]]]]) -> None:
        self.later.append(work)


Handler = Callable[[Context], Awaitable[bool]]  # returns True when it handled the event
# slow I/O for an event (download a photo, decode it), run before its transaction opens: a transaction held
# across a download would hold SQLite's write lock, and every webhook's acknowledgement with it
Before = Callable[[InboundEvent, dict[str, Any]], Awaitable[dict[str, Any]]]
# runs in each event's transaction after its handler, e.g. to queue the cards the new state calls for; only when
# the handler wrote something (beyond the dispatcher's own bookkeeping tables)
AfterHandle = Callable[[AsyncSession, str], Awaitable[Any]]
REPLAY_AFTER = timedelta(minutes=2)  # an acknowledged event still unprocessed this long after arriving
MAX_ATTEMPTS = 5
BOOKKEEPING = frozenset({"inbound_seen", "outbox_message"})
# Acks first, also for the CPU: while callbacks are being acknowledged and recent acknowledgements took longer
# than ACK_SLOW_MS (a burst is eating the budget), a worker waits before its next event, up to ACK_YIELD_S. The
# backlog is durable; when acks are quick, workers run at full speed.
ACK_SLOW_MS = 20.0
ACK_YIELD_S = 0.5
# keys of events past the queue's limit, loaded back as it empties; beyond this many only replay finds them
OVERFLOW_KEYS = 200_000
REFILL_BATCH = 500


@functools.lru_cache(maxsize=128)
def _insert_seen(n: int) -> TextClause:
    """The batched dedup insert for ``n`` events, built once per batch size. A plain statement with typed
    parameters: SQLAlchemy's multi-row ``insert().values([...])`` spent about 185 µs per row building its
    cache key, this about 30 (16-row batches on SQLite), and the ack path is where that counts."""
    c = InboundSeen.__table__.c
    values = ", ".join(f"(:k{i}, :r{i}, :e{i}, 0)" for i in range(n))
    return text(
        f"INSERT INTO {InboundSeen.__tablename__} (dedup_key, received_at, event, attempts) VALUES {values} "
        "ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key"
    ).bindparams(
        *(bindparam(f"r{i}", type_=c.received_at.type) for i in range(n)),
        *(bindparam(f"e{i}", type_=c.event.type) for i in range(n)),
    )


class Router:
    def __init__(self) -> None:
        self.handlers: dict[type[InboundEvent], list[Handler]] = {
            TextMessage: [],
            ImageMessage: [],
            CardAction: [],
        }
        self.before_hooks: dict[type[InboundEvent], list[Before]] = {
            TextMessage: [],
            ImageMessage: [],
            CardAction: [],
        }

    def before(self, kind: type[InboundEvent]) -> Callable[[Before], Before]:
        def register(fn: Before) -> Before:
            self.before_hooks[kind].append(fn)
            return fn

        return register

    def on(self, kind: type[InboundEvent]) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.handlers[kind].append(fn)
            return fn

        return register

    def include(self, *routers: Router) -> Router:
        for r in routers:
            for kind, fns in r.handlers.items():
                self.handlers[kind].extend(fns)
            for kind, hooks in r.before_hooks.items():
                self.before_hooks[kind].extend(hooks)
        return self


class Dispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        store: ConversationStore,
        router: Router,
        after_commit: Callable[[], Awaitable[None]] | None = None,
        services: dict[str, Any] | None = None,
        after_handle: AfterHandle | None = None,
        *,
        clock: Clock,
        ack_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
        workers: int = 4,
        queue_limit: int = 10_000,
    ) -> None:
        self.sessionmaker, self.settings, self.store, self.router = sessionmaker, settings, store, router
        self.clock = clock  # when an event is claimed, when its replies are queued, what replay calls old
        self.ack_sessionmaker = ack_sessionmaker or sessionmaker
        self.services = services or {}
        self.after_commit = after_commit  # e.g. wake the outbox
        self.after_handle = after_handle
        self.workers = workers
        self._queue: asyncio.Queue[tuple[InboundEvent, str]] = asyncio.Queue(queue_limit)
        self._queued: set[str] = set()  # dedup keys queued or being processed here (replay leaves them alone)
        self._workers: list[asyncio.Task[None]] = []
        self._overflowed: collections.deque[str] = collections.deque()  # accepted, not queued: keys only
        self._refilling: asyncio.Task[None] | None = None
        self._loading = 0  # overflowed keys being loaded back right now
        self._accept = GroupCommit(self._record_batch)
        self._acking = 0  # callbacks being acknowledged right now
        self._ack_ms = 0.0  # recent acknowledgement time (moving average of the durable dedup step)
        self.stats = {"accepted": 0, "duplicates": 0, "processed": 0, "errors": 0, "unknown_users": 0,
                      "replayed": 0, "overflow": 0, "refilled": 0, "skipped_processed": 0, "yields": 0}  # fmt: skip

    @property
    def busy(self) -> int:
        """Events accepted by this process and not yet processed (queued, being processed, or past the queue's
        limit and waiting in the database for room)."""
        return len(self._queued) + len(self._overflowed) + self._loading

    @property
    def accept_batches(self) -> tuple[int, int]:
        """(batches, events) written by the batched dedup so far."""
        return self._accept.batches, self._accept.items

    async def accept(self, event: InboundEvent) -> bool:
        """Record the event durably (False for a platform retry). Call before answering the platform.

        The event itself is kept until its processing commits, so a process that dies in between loses
        nothing: :meth:`replay` (run at start and periodically, by any process) picks it up."""
        first = await self._accept.submit(event)
        self.stats["accepted" if first else "duplicates"] += 1
        return first

    async def _record_batch(self, events: list[InboundEvent]) -> list[bool]:
        """One transaction: a multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING``; the keys it returns
        are the first deliveries (within the batch, the first of two equal keys wins)."""
        rows: dict[str, InboundEvent] = {}
        for e in events:
            rows.setdefault(e.dedup_key, e)
        params: dict[str, Any] = {}
        for i, e in enumerate(rows.values()):
            params[f"k{i}"], params[f"r{i}"], params[f"e{i}"] = e.dedup_key, e.received_at, to_record(e)
        async with self.ack_sessionmaker() as s, s.begin():
            new = set((await s.execute(_insert_seen(len(rows)), params)).scalars())
        out = []
        for e in events:
            out.append(e.dedup_key in new)
            new.discard(e.dedup_key)  # a second copy in the same batch is a duplicate
        return out

    async def submit(self, event: InboundEvent, trace_id: str | None = None) -> bool:
        """Accept, then queue for the workers. Returns False for a duplicate (nothing queued)."""
        self._acking += 1
        started = time.perf_counter()
        try:
            if not await self.accept(event):
                return False
        finally:
            self._acking -= 1
            self._ack_ms = 0.8 * self._ack_ms + 0.2 * (time.perf_counter() - started) * 1000
        self._start_workers()
        try:
            self._queue.put_nowait((event, trace_id or trace_id_var.get() or new_trace_id()))
        except asyncio.QueueFull:  # kept in the database; queued again once there is room (or replayed)
            self.stats["overflow"] += 1
            if len(self._overflowed) < OVERFLOW_KEYS:
                self._overflowed.append(event.dedup_key)
                log.warning("backlog full (%d events): %s waits in the database", self._queue.maxsize,
                            event.dedup_key)  # fmt: skip
            else:
                log.warning("backlog full (%d events and %d more): %s waits for replay", self._queue.maxsize,
                            len(self._overflowed), event.dedup_key)  # fmt: skip
            return True
        self._queued.add(event.dedup_key)
        return True

    def _start_workers(self) -> None:
        self._workers = [w for w in self._workers if not w.done()]
        while len(self._workers) < self.workers:
            self._workers.append(asyncio.create_task(self._work()))

    async def _work(self) -> None:
        while True:
            event, trace_id = await self._queue.get()
            waited = 0.0
            while self._acking and self._ack_ms > ACK_SLOW_MS and waited < ACK_YIELD_S:
                self.stats["yields"] += 1
                await asyncio.sleep(0.01)
                waited += 0.01
            try:
                await self._process(event, trace_id)
            except LockTimeout:  # the sender's previous event is still being worked on: try again later
                with contextlib.suppress(asyncio.QueueFull):  # else it stays in the database for replay
                    self._queue.put_nowait((event, trace_id))
                    continue
            finally:
                self._queue.task_done()
            self._queued.discard(event.dedup_key)
            room = self._queue.qsize() <= self._queue.maxsize // 2
            if self._overflowed and room and (self._refilling is None or self._refilling.done()):
                self._refilling = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        """Load overflowed events back into the queue, oldest first, while it has room. One already processed
        (by a replay, here or in a peer) is skipped; the claim in :meth:`_process_traced` covers the rest."""
        try:
            while self._overflowed and (room := self._queue.maxsize - self._queue.qsize()) > 0:
                keys = [
                    self._overflowed.popleft() for _ in range(min(room, REFILL_BATCH, len(self._overflowed)))
                ]
                self._loading = len(keys)
                async with self.sessionmaker() as s:
                    result = await s.execute(
                        select(InboundSeen.dedup_key, InboundSeen.event).where(
                            InboundSeen.dedup_key.in_(keys), InboundSeen.processed_at.is_(None),
                            InboundSeen.event.is_not(None),
                        )
                    )  # fmt: skip
                    rows: dict[str, dict[str, Any]] = {key: record for key, record in result}
                for key in keys:
                    record = rows.get(key)
                    if record is None or key in self._queued:
                        continue
                    try:
                        event = from_record(record)
                    except ValueError as exc:
                        log.error("event %s cannot be queued again: %s", key, exc)
                        continue
                    self._queue.put_nowait((event, new_trace_id()))
                    self._queued.add(key)
                    self.stats["refilled"] += 1
                self._loading = 0
        except Exception:  # the keys taken are in the database still: replay finds them
            log.exception("loading overflowed events back failed; replay will take them")
        finally:
            self._loading = 0

    async def drain(self, grace: float = 30.0) -> None:
        """Wait (up to ``grace`` seconds) for the queued events, then stop the workers. Events left over are
        in the database; replay picks them up (here after a restart, or in a peer process)."""
        if self._refilling is not None:
            self._refilling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refilling
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        self._workers = []

    async def replay(self, now: datetime | None = None, older_than: timedelta = REPLAY_AFTER) -> int:
        """Process acknowledged events that were never processed (their process died, or the work failed),
        oldest first. Each is claimed by a compare-and-set on its attempt count, so two processes replaying
        at once take different events; after ``MAX_ATTEMPTS`` an event is left alone and logged. Events still
        waiting in this process's queue are left to it."""
        now = now or self.clock.now()
        async with self.sessionmaker() as s:
            rows = (
                await s.execute(
                    select(InboundSeen.dedup_key, InboundSeen.attempts, InboundSeen.event)
                    .where(InboundSeen.processed_at.is_(None), InboundSeen.event.is_not(None),
                           InboundSeen.received_at < now - older_than, InboundSeen.attempts < MAX_ATTEMPTS)
                    .order_by(InboundSeen.received_at).limit(200)
                )
            ).all()  # fmt: skip
        done = 0
        for key, attempts, record in rows:
            if key in self._queued:
                continue
            async with self.sessionmaker() as s, s.begin():
                claimed = await s.execute(
                    update(InboundSeen).where(InboundSeen.dedup_key == key, InboundSeen.attempts == attempts)
                    .values(attempts=attempts + 1).execution_options(synchronize_session=False)
                )  # fmt: skip
            if not claimed.rowcount:  # type: ignore[attr-defined]
                continue  # another process took it
            if attempts + 1 >= MAX_ATTEMPTS:
                log.error("event %s failed %d times; giving up on it", key, attempts + 1)
            try:
                event = from_record(record)
            except ValueError as exc:
                log.error("event %s cannot be replayed: %s", key, exc)
                continue
            with contextlib.suppress(LockTimeout):  # counted as an attempt; the next replay tries again
                await self._process(event, new_trace_id())
            self.stats["replayed"] += 1
            done += 1
        return done

    async def _process(self, event: InboundEvent, trace_id: str) -> None:
        with tracing(trace_id):
            await self._process_traced(event, trace_id)

    async def _process_traced(self, event: InboundEvent, trace_id: str) -> None:
        key = f"{event.platform.value}:{event.sender.user_id}"
        started = time.perf_counter()
        try:
            async with self.store.lock(key):
                state = await self.store.get(key) or {}
                later: list[Callable[[], Awaitable[list[tuple[str, dict[str, Any]]]]]] = []
                prepared: dict[str, Any] = {}
                for hook in self.router.before_hooks[type(event)]:
                    prepared.update(await hook(event, self.services))
                async with self.sessionmaker() as s, s.begin():
                    # claim the event: a peer's replay and this worker can never both act on it
                    claim = await s.execute(_CLAIM, {"key": event.dedup_key, "at": self.clock.now()})
                    if not claim.rowcount:  # type: ignore[attr-defined]
                        self.stats["skipped_processed"] += 1
                        log.info("%s was processed already (by a replay or a peer)", event.dedup_key)
                        return
                    written = track_writes(s)
                    user = (
                        await s.execute(_USER_BY_ID[event.platform], {"uid": event.sender.user_id})
                    ).scalar_one_or_none()
                    addr = Address(event.platform, event.sender.user_id, event.chat_id)
                    if user is None or not user.active:
                        self.stats["unknown_users"] += 1
                        await enqueue(s, idempotency_key=f"{event.dedup_key}:unknown", to=addr, kind="text",
                                      body={"text": NOT_REGISTERED}, trace_id=trace_id, now=self.clock.now())  # fmt: skip
                    else:
                        ctx = Context(event, user, s, self.settings, state, trace_id, self.services, prepared)
                        for handler in self.router.handlers[type(event)]:
                            if await handler(ctx):
                                break
                        # replies go out through the outbox, in this same transaction
                        for i, (kind, body) in enumerate(ctx.replies):
                            await enqueue(s, idempotency_key=f"{event.dedup_key}:r{i}", to=addr, kind=kind,
                                          body=body, trace_id=trace_id, now=self.clock.now())  # fmt: skip
                        if self.after_handle is not None and written - BOOKKEEPING:
                            await self.after_handle(s, trace_id)
                        state, later = ctx.state, ctx.later
                if state:
                    await self.store.set(key, state)
                else:
                    await self.store.delete(key)
            for n, work in enumerate(later):  # committed already; slow work runs outside the transaction
                try:
                    more = await work()
                except Exception:
                    log.exception("after-commit work for %s failed", event.dedup_key)
                    continue
                async with self.sessionmaker() as s, s.begin():
                    for i, (kind, body) in enumerate(more):
                        await enqueue(s, idempotency_key=f"{event.dedup_key}:a{n}.{i}", to=addr, kind=kind,
                                      body=body, trace_id=trace_id, now=self.clock.now())  # fmt: skip
            self.stats["processed"] += 1
            log.info("processed %s in %.0f ms", event.dedup_key, (time.perf_counter() - started) * 1000)
            if self.after_commit is not None:
                await self.after_commit()
        except LockTimeout:
            log.warning("%s: %s is still busy with an earlier event; will retry", event.dedup_key, key)
            raise
        except Exception:
            self.stats["errors"] += 1
            log.exception("event %s failed (trace %s)", event.dedup_key, trace_id)
