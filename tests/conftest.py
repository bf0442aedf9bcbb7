"""Shared fixtures.

Integration tests run against the database named by ``PANDIAN_TEST_DATABASE_URL`` (``.ci/run`` runs the suite
once on SQLite and once on PostgreSQL). Without it they use a SQLite file in a temporary directory. A URL that
does not work makes every database test *error*; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import migrate
from core.db import make_engine, make_sessionmaker
from core.models import Base


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("PANDIAN_TEST_DATABASE_URL")
    if not url:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    return url


@pytest.fixture(scope="session")
def _schema(database_url: str) -> Iterator[None]:
    """Build the schema once per session with the migrations (``pandian db upgrade``), from empty."""

    async def create() -> None:
        engine = make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                await conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(create())
    yield


async def _wipe(engine: AsyncEngine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                await conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
async def engine(database_url: str, _schema: None) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url)
    try:
        yield eng
    finally:
        await _wipe(eng)
        await eng.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as s:
        yield s
