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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import migrate
from core.db import make_engine, make_sessionmaker
from core.models import Base

# A server under test (build_app) runs with a clock the test pinned, but APScheduler fires on the wall clock:
# started on a test day long past, it found the morning push "missed" within its grace whenever the suite ran
# between 07:30 and 08:30 Shanghai time, and pushed task cards the test did not expect. The scheduler is off
# unless a test asks for it (tests of the jobs pass their own ScheduleSettings, which win over this).
os.environ.setdefault("PANDIAN_SCHEDULE__ENABLED", "false")


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
            await migrate.rebuild(engine)
        finally:
            await engine.dispose()

    asyncio.run(create())
    yield


async def _wipe(engine: AsyncEngine) -> None:
    """Empty every table. A server a test started may still be finishing a background pass (the upkeep loop,
    a scheduled job) while this runs: PostgreSQL may pick the TRUNCATE as a deadlock's victim, so try again."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
                else:
                    for name in tables:
                        await conn.execute(text(f"DELETE FROM {name}"))
            return
        except DBAPIError as exc:
            if attempt == 4 or "deadlock" not in str(exc).lower():
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


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
