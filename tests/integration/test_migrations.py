"""A fresh schema (create_all from the models) and one upgraded step by step must be the same."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from core import migrate
from core.db import make_engine
from core.models import Base


@pytest.fixture
async def scratch(database_url: str, tmp_path: Any) -> AsyncIterator[Any]:
    """Make empty scratch databases on the same server as the suite's database."""
    made: list[tuple[AsyncEngine, str | None]] = []
    admin = make_engine(database_url, isolation_level="AUTOCOMMIT") if "postgresql" in database_url else None

    async def new() -> AsyncEngine:
        if admin is None:
            eng = make_engine(f"sqlite+aiosqlite:///{tmp_path / uuid.uuid4().hex}.db")
            made.append((eng, None))
            return eng
        name = f"pandian_mig_{uuid.uuid4().hex[:10]}"
        async with admin.connect() as c:
            await c.exec_driver_sql(f"CREATE DATABASE {name}")
        eng = make_engine(make_url(database_url).set(database=name).render_as_string(hide_password=False))
        made.append((eng, name))
        return eng

    yield new
    for eng, name in made:
        await eng.dispose()
        if admin is not None and name:
            async with admin.connect() as c:
                await c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    if admin is not None:
        await admin.dispose()


def describe(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for t in sorted(insp.get_table_names()):
        if t == "alembic_version":
            continue
        out[t] = {
            # (column order is not compared: ALTER TABLE ADD COLUMN appends)
            "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"]) for f in insp.get_foreign_keys(t)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)
            ),
            "uniques": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)),
        }
    return out


async def test_fresh_and_stepwise_schemas_match(scratch: Any) -> None:
    fresh, stepped = await scratch(), await scratch()
    async with fresh.begin() as c:
        await c.run_sync(Base.metadata.create_all)
    revisions = migrate.revisions()
    assert revisions, "no migrations"
    for rev in revisions:  # one step at a time, as a long-lived installation would see them
        await migrate.upgrade(stepped, rev)
        assert await migrate.current(stepped) == rev
    async with fresh.connect() as a, stepped.connect() as b:
        assert await a.run_sync(describe) == await b.run_sync(describe)
    async with stepped.connect() as c:
        diff = await c.run_sync(
            lambda conn: compare_metadata(MigrationContext.configure(conn), Base.metadata)
        )
    assert diff == [], f"models and migrations differ: {diff}"


async def test_upgrade_is_idempotent(scratch: Any) -> None:
    eng = await scratch()
    await migrate.upgrade(eng)
    await migrate.upgrade(eng)
    assert await migrate.current(eng) == await migrate.head()
