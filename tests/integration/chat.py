"""A chat with the bot for tests: users (by WeCom id) talking to one real Dispatcher with the command and
counting routers; every answer is read back from the outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import Platform, Sender, TextMessage
from bot.handlers import commands, counting
from core.config import Settings
from core.models import OutboxMessage


class ChatBot:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        at: datetime,
        *,
        name: str = "msg",
        services: dict[str, Any] | None = None,
    ) -> None:
        self.sm, self.at, self.n, self.name = sessionmaker, at, 0, name
        router = Router().include(commands.router, counting.router, commands.fallback_router)
        self.d = Dispatcher(sessionmaker, settings, MemoryStore(), router, services=services, clock=self)

    def now(self) -> datetime:
        """The dispatcher's clock: the test's time (``at``)."""
        return self.at

    async def replies(self, user: str, body: str) -> list[OutboxMessage]:
        """What the bot queued in answer to one message, in order."""
        self.n += 1
        key = f"wecom:{self.name}:{self.n}"
        assert await self.d.submit(
            TextMessage(Platform.WECOM, key, Sender(Platform.WECOM, user), self.at, text=body)
        )
        await self.d.drain()
        assert self.d.stats["errors"] == 0
        async with self.sm() as s:
            rows = await s.execute(
                select(OutboxMessage)
                .where(OutboxMessage.idempotency_key.like(f"{key}:%"))
                .order_by(OutboxMessage.id)
            )
            return list(rows.scalars())

    async def texts(self, user: str, body: str) -> list[str]:
        return [str(r.body.get("text", "")) for r in await self.replies(user, body)]
