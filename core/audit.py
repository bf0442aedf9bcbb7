"""The append-only audit trail: every state change of a task, count, variance, approval or adjustment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import AuditEvent


def record(
    session: AsyncSession,
    entity: str,
    entity_id: int,
    action: str,
    *,
    actor_id: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    variance_id: int | None = None,
    at: datetime,
    **data: Any,
) -> AuditEvent:
    """Add one event to the session (written with the caller's unit of work, never on its own)."""
    event = AuditEvent(
        entity=entity,
        entity_id=entity_id,
        variance_id=variance_id if variance_id is not None else (entity_id if entity == "variance" else None),
        action=action,
        from_state=from_state,
        to_state=to_state,
        actor_id=actor_id,
        at=at,
        data={k: _jsonable(v) for k, v in data.items()},
    )
    session.add(event)
    return event


def _jsonable(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)  # Decimal, datetime, enums: their text


async def trail(session: AsyncSession, variance_id: int) -> list[AuditEvent]:
    """Everything that happened to a variance, its counts, approvals and adjustments, oldest first."""
    rows = await session.execute(
        select(AuditEvent)
        .where(or_(AuditEvent.variance_id == variance_id))
        .order_by(AuditEvent.at, AuditEvent.id)
    )
    return list(rows.scalars())
