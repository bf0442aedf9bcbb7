"""GroupCommit: concurrent callers share one flush; results and failures reach the right callers."""

from __future__ import annotations

import asyncio

import pytest

from core.batching import GroupCommit


async def test_callers_that_arrive_during_a_flush_share_the_next_one() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        seen.append(list(items))
        if len(seen) == 1:
            await gate.wait()  # the first flush is slow: everyone else queues behind it
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(flush)
    first = asyncio.create_task(gc.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(gc.submit(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50, 60]
    assert seen == [[1], [2, 3, 4, 5, 6]]  # one alone (no timer), then one batch for the five
    assert (gc.batches, gc.items) == (2, 6)


async def test_a_failed_flush_fails_its_batch_only() -> None:
    calls = 0

    async def flush(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return [s.upper() for s in items]

    gc: GroupCommit[str, str] = GroupCommit(flush)
    with pytest.raises(ConnectionError):
        await gc.submit("a")
    assert await gc.submit("b") == "B"  # the next batch works


async def test_batches_are_capped() -> None:
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0)
        return items

    gc: GroupCommit[int, int] = GroupCommit(flush, max_batch=4)
    assert await asyncio.gather(*(gc.submit(i) for i in range(10))) == list(range(10))
    assert max(sizes) <= 4 and sum(sizes) == 10


async def test_a_flush_that_returns_the_wrong_number_of_results_is_an_error() -> None:
    async def flush(items: list[int]) -> list[int]:
        return items[:-1]

    gc: GroupCommit[int, int] = GroupCommit(flush)
    with pytest.raises(RuntimeError, match="results"):
        await gc.submit(1)


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        await release.wait()
        return items

    gc: GroupCommit[int, int] = GroupCommit(flush)
    impatient = asyncio.create_task(gc.submit(1))
    patient = asyncio.create_task(gc.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == 2
    with pytest.raises(asyncio.CancelledError):
        await impatient
