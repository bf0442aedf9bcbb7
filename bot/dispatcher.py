"""Ack first, work after: inbound events are acknowledged by the webhook, then processed here.

- ``Dispatcher.submit`` drops an event whose dedup key was seen before (durably, in the database), then runs
  it in a tracked background task; ``drain`` waits for them on shutdown.
- Each event is processed under the sender's lock, then with their conversation state (lock, then load).
- The platform identity is mapped to an internal user; an unknown sender gets a polite "not registered" and
  nothing else happens.
- Handlers are plain async functions registered on a ``Router`` by event type; routers are composed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Address
from bot.conversation import ConversationStore
from bot.events import CardAction, ImageMessage, InboundEvent, Platform, TextMessage
from bot.outbox import enqueue, first_delivery
from core.config import Settings
from core.models import User

log = logging.getLogger("pandian.dispatch")

NOT_REGISTERED = "您好，您还没有在盘点系统登记，请联系管理员添加您的账号。/ You are not registered yet; please ask your admin."

_ID_COLUMN = {
    Platform.WECOM: User.wecom_userid,
    Platform.FEISHU: User.feishu_open_id,
    Platform.DINGTALK: User.dingtalk_userid,
}


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
    replies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return Address(self.event.platform, self.event.sender.user_id, self.event.chat_id)

    def reply_text(self, text: str) -> None:
        self.replies.append(("text", {"text": text}))

    def reply_card(self, card: dict[str, Any]) -> None:
        self.replies.append(("card", {"card": card}))


Handler = Callable[[Context], Awaitable[bool]]  # returns True when it handled the event


class Router:
    def __init__(self) -> None:
        self.handlers: dict[type[InboundEvent], list[Handler]] = {
            TextMessage: [],
            ImageMessage: [],
            CardAction: [],
        }

    def on(self, kind: type[InboundEvent]) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.handlers[kind].append(fn)
            return fn

        return register

    def include(self, *routers: Router) -> Router:
        for r in routers:
            for kind, fns in r.handlers.items():
                self.handlers[kind].extend(fns)
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
    ) -> None:
        self.sessionmaker, self.settings, self.store, self.router = sessionmaker, settings, store, router
        self.services = services or {}
        self.after_commit = after_commit  # e.g. wake the outbox
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"accepted": 0, "duplicates": 0, "processed": 0, "errors": 0, "unknown_users": 0}

    async def accept(self, event: InboundEvent) -> bool:
        """Record the event durably (False for a platform retry). Call before answering the platform."""
        async with self.sessionmaker() as s, s.begin():
            first = await first_delivery(s, event.dedup_key, event.received_at)
        self.stats["accepted" if first else "duplicates"] += 1
        return first

    async def submit(self, event: InboundEvent) -> bool:
        """Accept, then process in the background. Returns False for a duplicate (nothing scheduled)."""
        if not await self.accept(event):
            return False
        task = asyncio.create_task(self._process(event, uuid.uuid4().hex[:16]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, grace: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    async def _process(self, event: InboundEvent, trace_id: str) -> None:
        key = f"{event.platform.value}:{event.sender.user_id}"
        try:
            async with self.store.lock(key):
                state = await self.store.get(key) or {}
                async with self.sessionmaker() as s, s.begin():
                    user = (
                        await s.execute(
                            select(User).where(_ID_COLUMN[event.platform] == event.sender.user_id)
                        )
                    ).scalar_one_or_none()
                    addr = Address(event.platform, event.sender.user_id, event.chat_id)
                    if user is None or not user.active:
                        self.stats["unknown_users"] += 1
                        await enqueue(s, idempotency_key=f"{event.dedup_key}:unknown", to=addr, kind="text",
                                      body={"text": NOT_REGISTERED}, trace_id=trace_id)  # fmt: skip
                    else:
                        ctx = Context(event, user, s, self.settings, state, trace_id, self.services)
                        for handler in self.router.handlers[type(event)]:
                            if await handler(ctx):
                                break
                        # replies go out through the outbox, in this same transaction
                        for i, (kind, body) in enumerate(ctx.replies):
                            await enqueue(s, idempotency_key=f"{event.dedup_key}:r{i}", to=addr, kind=kind,
                                          body=body, trace_id=trace_id)  # fmt: skip
                        state = ctx.state
                if state:
                    await self.store.set(key, state)
                else:
                    await self.store.delete(key)
            self.stats["processed"] += 1
            if self.after_commit is not None:
                await self.after_commit()
        except Exception:
            self.stats["errors"] += 1
            log.exception("event %s failed (trace %s)", event.dedup_key, trace_id)
