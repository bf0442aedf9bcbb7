"""One contract for both conversation stores: memory, and real Redis (PANDIAN_TEST_REDIS_URL, .ci/run sets it)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from bot.conversation import ConversationStore, LockTimeout, MemoryStore, RedisStore

REDIS_URL = os.environ.get("PANDIAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    s: ConversationStore
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = RedisStore(REDIS_URL, prefix=f"pandian-test:{uuid.uuid4().hex}:")
    yield s
    await s.close()


async def test_state_round_trip_and_delete(store: ConversationStore) -> None:
    assert await store.get("wecom:u1") is None
    await store.set("wecom:u1", {"step": "await_qty", "task_id": 7, "location": "A-01-03"})
    assert await store.get("wecom:u1") == {"step": "await_qty", "task_id": 7, "location": "A-01-03"}
    await store.delete("wecom:u1")
    assert await store.get("wecom:u1") is None


async def test_state_times_out(store: ConversationStore) -> None:
    await store.set("wecom:u2", {"step": "await_qty"}, ttl=0.2)
    assert await store.get("wecom:u2") is not None
    await asyncio.sleep(0.35)
    assert await store.get("wecom:u2") is None


async def test_lock_then_load_serialises_one_user(store: ConversationStore) -> None:
    """Two messages from one counter at the same moment: each sees the other's write."""
    await store.set("k", {"n": 0})

    async def bump() -> None:
        async with store.lock("k"):
            state = await store.get("k")
            assert state is not None
            await asyncio.sleep(0.05)  # a slow handler
            await store.set("k", {"n": state["n"] + 1})

    await asyncio.gather(*(bump() for _ in range(5)))
    assert await store.get("k") == {"n": 5}


async def test_lock_times_out_and_other_users_are_not_blocked(store: ConversationStore) -> None:
    async with store.lock("busy"):
        with pytest.raises(LockTimeout):
            async with store.lock("busy", wait=0.2):
                pass
        async with store.lock("someone-else", wait=0.2):
            pass
