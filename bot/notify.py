"""Reaching a person: which platform and id to use for an internal user, and queueing a message to them.

Everything the core decides (a recount for someone else, a card for an approver, a failed ERP posting) reaches
people through here, inside the caller's transaction, via the durable outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel import Address
from bot.events import Platform
from bot.outbox import enqueue
from core.config import Settings
from core.models import User

_IDS = {
    Platform.WECOM: "wecom_userid",
    Platform.FEISHU: "feishu_open_id",
    Platform.DINGTALK: "dingtalk_userid",
}


def enabled_platforms(settings: Settings) -> list[Platform]:
    """The configured platforms, in a fixed order of preference (WeCom, Feishu, DingTalk)."""
    return [p for p in Platform if getattr(settings, p.value)]


def address_for(settings: Settings, user: User, prefer: Platform | None = None) -> Address | None:
    """The user's address on ``prefer`` when they have one there, else on the first configured platform
    where they have an id. None when they cannot be reached (no id on any configured platform)."""
    order = enabled_platforms(settings)
    if prefer is not None and prefer in order:
        order = [prefer, *[p for p in order if p is not prefer]]
    for platform in order:
        ident = getattr(user, _IDS[platform])
        if ident:
            return Address(platform, ident)
    return None


async def notify(
    session: AsyncSession,
    settings: Settings,
    user: User,
    *,
    key: str,
    kind: str,
    body: Mapping[str, Any],
    subject: str | None = None,
    trace_id: str | None = None,
    prefer: Platform | None = None,
    now: datetime,
) -> bool:
    """Queue a text or card to ``user`` (idempotent on ``key``). False when they have no reachable address
    or the key was queued before."""
    to = address_for(settings, user, prefer)
    if to is None:
        return False
    return await enqueue(
        session, idempotency_key=key, to=to, kind=kind, body=body, trace_id=trace_id, subject=subject, now=now
    )
