"""Alembic environment. Run through ``pandian db upgrade`` (core.migrate), which passes a live connection."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from core.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations must not import core.models: UTCDateTime is a plain DATETIME in the schema.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds the table
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with_url() -> None:
    from core.config import load_settings
    from core.db import make_engine

    async def go() -> None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or load_settings().database_url)
        async with engine.begin() as conn:
            await conn.run_sync(_configure)
        await engine.dispose()

    asyncio.run(go())


connection = config.attributes.get("connection")
if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `pandian db upgrade`")
elif connection is not None:
    _configure(connection)
else:
    _run_with_url()
