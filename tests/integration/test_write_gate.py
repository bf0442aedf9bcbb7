"""SQLite's write lock queued in the event loop (core.db.WriteGate), on a real SQLite file.

The gate only exists for SQLite (PostgreSQL's row locks let transactions run side by side), so these tests use
a temporary SQLite file whatever database the rest of the suite runs on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import WriteGate, make_engine


@pytest.fixture
async def engines(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}"
    gate = WriteGate(wait_s=2.0)
    background = make_engine(url, gate=gate)
    urgent = make_engine(url, gate=gate, urgent=True)
    async with background.begin() as c:
        await c.execute(text("CREATE TABLE log (who TEXT)"))
    yield gate, background, urgent
    await urgent.dispose()
    await background.dispose()


async def queued(gate: WriteGate, urgent: int = 0, normal: int = 0) -> None:
    """Until that many transactions wait at the gate (opening a connection takes a thread hop: no fixed sleep)."""
    for _ in range(2000):
        if gate.waits == {"urgent": urgent, "normal": normal}:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"waiting at the gate: {gate.waits}, expected {urgent} urgent and {normal} normal")


async def write(engine: AsyncEngine, who: str, order: list[str] | None = None) -> None:
    """One write transaction, noted in ``order`` once it has the gate."""
    async with engine.begin() as c:
        if order is not None:
            order.append(who)
        await c.execute(text("INSERT INTO log VALUES (:w)"), {"w": who})


async def hold_the_lock(
    engine: AsyncEngine, order: list[str] | None = None
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A transaction that has written ('holder') and keeps the write lock until the returned event is set."""
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with engine.begin() as c:
            await c.execute(text("INSERT INTO log VALUES ('holder')"))
            holding.set()
            await release.wait()
            if order is not None:
                order.append("holder")

    holder = asyncio.create_task(hold())
    await holding.wait()
    return holder, release


async def test_urgent_transactions_go_before_queued_background_ones(engines) -> None:  # type: ignore[no-untyped-def]
    gate, background, urgent = engines
    order: list[str] = []
    holder, release = await hold_the_lock(background, order)
    waiting = [asyncio.create_task(write(background, f"bg{i}", order)) for i in range(3)]
    await queued(gate, normal=3)
    ack = asyncio.create_task(write(urgent, "ack", order))  # arrives last
    await queued(gate, urgent=1, normal=3)
    assert order == []  # everyone waits for the holder, in the event loop (no SQLITE_BUSY polling)
    release.set()
    await asyncio.gather(holder, ack, *waiting)
    # the background ones in the order they reached the gate (opening their connections may reorder them)
    assert order[:2] == ["holder", "ack"] and sorted(order[2:]) == ["bg0", "bg1", "bg2"]
    assert gate.waits == {"urgent": 1, "normal": 3}
    async with background.connect() as c:
        assert (await c.execute(text("SELECT count(*) FROM log"))).scalar_one() == 5


async def test_a_transaction_opened_inside_another_fails_instead_of_hanging(engines) -> None:  # type: ignore[no-untyped-def]
    _gate, background, _urgent = engines
    async with background.begin() as outer:
        await outer.execute(text("INSERT INTO log VALUES ('outer')"))
        with pytest.raises(OperationalError, match="transaction open inside another"):
            async with background.begin() as inner:
                await inner.execute(text("INSERT INTO log VALUES ('inner')"))
    async with background.begin() as c:  # the gate is free again afterwards
        assert (await c.execute(text("SELECT who FROM log"))).scalars().all() == ["outer"]


async def test_a_failed_transaction_frees_the_gate(engines) -> None:  # type: ignore[no-untyped-def]
    _gate, background, urgent = engines
    with pytest.raises(OperationalError):
        async with background.begin() as c:
            await c.execute(text("INSERT INTO nowhere VALUES (1)"))
    async with urgent.begin() as c:
        await c.execute(text("INSERT INTO log VALUES ('after')"))
    async with background.begin() as c:
        assert (await c.execute(text("SELECT who FROM log"))).scalars().all() == ["after"]


async def test_a_waiter_cancelled_in_the_queue_is_skipped(engines) -> None:  # type: ignore[no-untyped-def]
    """Shutdown cancels background loops that may be queued at the gate: the gate must not be handed to them."""
    gate, background, _urgent = engines
    holder, release = await hold_the_lock(background)
    waiting = asyncio.create_task(write(background, "cancelled"))
    await queued(gate, normal=1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await holder
    async with background.begin() as c:  # handed to the cancelled waiter, this would fail after wait_s
        await c.execute(text("INSERT INTO log VALUES ('next')"))
    async with background.connect() as c:
        assert (await c.execute(text("SELECT who FROM log"))).scalars().all() == ["holder", "next"]
