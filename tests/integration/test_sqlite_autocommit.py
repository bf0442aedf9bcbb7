"""SQLite connections asked for AUTOCOMMIT run outside a transaction: ``PRAGMA wal_checkpoint`` and ``VACUUM``
cannot run inside one, and ``core.db`` begins every other transaction with ``BEGIN IMMEDIATE`` (which made
``bench/plan.py`` fail at set-up with "database table is locked" on a fresh install)."""

from __future__ import annotations

from pathlib import Path

from core.db import make_engine


async def test_an_autocommit_connection_can_checkpoint_and_vacuum(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            busy, _, _ = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
            assert busy == 0
            await conn.exec_driver_sql("VACUUM")
        async with engine.begin() as conn:  # ordinary transactions still take the write lock and work
            assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        await engine.dispose()
