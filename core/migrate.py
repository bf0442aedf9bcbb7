"""Alembic, driven from code: ``pandian db upgrade`` and the tests use these.

Alembic is imported inside the functions that use it, so ``upgrade_in_child`` (what ``pandian serve`` uses)
costs the server nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def revisions() -> list[str]:
    """All revisions, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))


async def rebuild(engine: AsyncEngine) -> None:
    """Drop every table (and Alembic's version row) and build the schema again from the first revision: a
    clean database for the tests and the benchmarks."""
    from core.models import Base

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    await upgrade(engine)


async def current(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def head() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    h = script.get_current_head()
    assert h is not None
    return h


class MigrationFailed(RuntimeError):
    pass


def upgrade_in_child(url: str, timeout: float = 600.0) -> str:
    """Upgrade to head in a short-lived child process and return the revision.

    ``pandian serve`` does this before it starts: Alembic (with Mako and its script machinery) stays out of
    the long-running server, which would otherwise carry about 8 MB for a step it took once at start. The URL
    goes through the environment, not the command line, so a password never shows in ``ps``."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PANDIAN_MIGRATE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "core.migrate"], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise MigrationFailed(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "exit status "
                              f"{done.returncode}")  # fmt: skip
    return done.stdout.strip()


def _main() -> None:
    import asyncio
    import os

    from core.db import make_engine

    async def go() -> str | None:
        engine = make_engine(os.environ["PANDIAN_MIGRATE_URL"])
        try:
            await upgrade(engine)
            return await current(engine)
        finally:
            await engine.dispose()

    print(asyncio.run(go()))


if __name__ == "__main__":
    _main()
