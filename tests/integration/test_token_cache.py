"""Access tokens shared through Redis (integrations/tokens.py), against the fake WeCom, Feishu and DingTalk APIs,
which count the token fetches. Two channel instances on one Redis stand for two server processes; the Redis is
real (PANDIAN_TEST_REDIS_URL, .ci/run sets it), each test under its own key prefix."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.channel import Address, Channel
from bot.events import Platform
from integrations.dingtalk.client import DingTalkChannel
from integrations.dingtalk.settings import DingTalkSettings
from integrations.feishu.client import FeishuChannel
from integrations.feishu.settings import FeishuSettings
from integrations.tokens import MemoryTokenCache, RedisTokenCache, TokenCache, token_key
from integrations.wecom.client import WeComChannel
from integrations.wecom.settings import WeComSettings
from tests.fakes.dingtalk import DingTalkFakeState, build_dingtalk_fake_app
from tests.fakes.feishu import FeishuFake, build_feishu_fake_app
from tests.fakes.wecom import WeComFakeState, build_wecom_fake_app

REDIS_URL = os.environ.get("PANDIAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@dataclass
class Fake:
    """One fake platform: channels on it (a token cache each, or the default), its count of token fetches,
    and the moment it stops accepting every token issued so far (WeCom 42001, Feishu 99991663, DingTalk 401)."""

    make: Callable[[TokenCache | None], Channel]
    fetches: Callable[[], int]
    expire: Callable[[], None]
    to: Address
    key: str  # the token's key in the cache


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"pandian-test:tokens:{uuid.uuid4().hex}:"
    yield p
    r = aioredis.from_url(REDIS_URL)
    keys = [k async for k in r.scan_iter(match=p + "*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
async def redis_cache(prefix: str) -> AsyncIterator[Callable[..., RedisTokenCache]]:
    """A new Redis token cache (its own client, as in another server process) on the test's prefix."""
    made: list[RedisTokenCache] = []

    def new(**kwargs: Any) -> RedisTokenCache:
        made.append(RedisTokenCache.from_url(REDIS_URL, prefix=prefix, **kwargs))
        return made[-1]

    yield new
    for cache in made:
        await cache.close()


@pytest.fixture
async def channels() -> AsyncIterator[list[Channel]]:
    made: list[Channel] = []
    yield made
    for ch in made:
        await ch.close()


async def wecom_fake(aiohttp_server: Any, channels: list[Channel]) -> tuple[Fake, WeComFakeState]:
    state = WeComFakeState(slow_s=0.3)
    base = str((await aiohttp_server(build_wecom_fake_app(state))).make_url(""))
    settings = WeComSettings(
        corp_id=state.corp_id,
        agent_id=state.agent_id,
        secret=state.secret,
        token="tok3n",
        encoding_aes_key=AES_KEY,
        api_base=base,
    )

    def make(cache: TokenCache | None) -> Channel:
        channels.append(WeComChannel(settings, token_cache=cache))
        return channels[-1]

    return Fake(
        make,
        lambda: state.token_fetches,
        state.expire_tokens,
        Address(Platform.WECOM, user_id="manager01"),
        token_key("wecom", f"{state.corp_id}:{state.agent_id}", endpoint=base, secret=state.secret),
    ), state


async def feishu_fake(aiohttp_server: Any, channels: list[Channel]) -> Fake:
    fake = FeishuFake(qps_per_receiver=100)  # six messages to one person in a moment
    base = str((await aiohttp_server(build_feishu_fake_app(fake))).make_url(""))
    settings = FeishuSettings(
        app_id=fake.app_id, app_secret=fake.app_secret, verification_token="v", encrypt_key="k", domain=base
    )

    def make(cache: TokenCache | None) -> Channel:
        channels.append(FeishuChannel(settings, token_cache=cache))
        return channels[-1]

    return Fake(
        make,
        lambda: [route for route, _ in fake.requests].count("token"),
        fake.revoke_tokens,
        Address(Platform.FEISHU, user_id="ou_u1"),
        token_key("feishu", fake.app_id, endpoint=base, secret=fake.app_secret),
    )


async def dingtalk_fake(aiohttp_server: Any, channels: list[Channel]) -> Fake:
    state = DingTalkFakeState()
    base = str((await aiohttp_server(build_dingtalk_fake_app(state))).make_url("")).rstrip("/")
    settings = DingTalkSettings(
        app_key=state.app_key,
        app_secret=state.app_secret,
        robot_code=state.robot_code,
        card_template_id="1234abcd.schema",
        api_base=base,
        oapi_base=base,
    )

    def make(cache: TokenCache | None) -> Channel:
        channels.append(DingTalkChannel(settings, token_cache=cache))
        return channels[-1]

    return Fake(
        make,
        lambda: state.token_requests,
        state.expire_tokens,
        Address(Platform.DINGTALK, user_id="manager01"),
        token_key("dingtalk", state.app_key, endpoint=base, secret=state.app_secret),
    )


@pytest.fixture(params=["wecom", "feishu", "dingtalk"])
async def fake(request: pytest.FixtureRequest, aiohttp_server: Any, channels: list[Channel]) -> Fake:
    if request.param == "wecom":
        return (await wecom_fake(aiohttp_server, channels))[0]
    if request.param == "feishu":
        return await feishu_fake(aiohttp_server, channels)
    return await dingtalk_fake(aiohttp_server, channels)


async def send(ch: Channel, fake: Fake, n: int) -> None:
    await ch.send_text(fake.to, f"消息 {n}", idempotency_key=f"k{n}-{uuid.uuid4().hex[:8]}")


async def a_day_of_two_processes(fake: Fake, a: Channel, b: Channel) -> tuple[int, int]:
    """Both send, the platform expires the tokens, both send again: (fetches before, fetches after)."""
    await send(a, fake, 1)
    await send(b, fake, 2)
    await send(a, fake, 3)
    before = fake.fetches()
    fake.expire()
    await send(a, fake, 4)  # refused, refreshed, repeated
    await send(b, fake, 5)  # refused with the old token: takes the new one from the cache if it can
    await send(b, fake, 6)
    return before, fake.fetches()


# -- the numbers: with and without sharing ------------------------------------------------------------------


async def test_two_processes_on_redis_fetch_once_and_see_one_refresh(
    fake: Fake, redis_cache: Callable[..., RedisTokenCache]
) -> None:
    a, b = fake.make(redis_cache()), fake.make(redis_cache())
    assert await a_day_of_two_processes(fake, a, b) == (1, 2)


async def test_without_redis_each_process_fetches_its_own(fake: Fake) -> None:
    """The default (in memory, per channel) is the behaviour from before: 2 fetches, then 2 refreshes."""
    a, b = fake.make(None), fake.make(None)
    assert await a_day_of_two_processes(fake, a, b) == (2, 4)


async def test_the_second_process_repeats_its_call_with_the_refreshed_token(
    aiohttp_server: Any, channels: list[Channel], redis_cache: Callable[..., RedisTokenCache]
) -> None:
    fake, state = await wecom_fake(aiohttp_server, channels)
    a, b = fake.make(redis_cache()), fake.make(redis_cache())
    await send(a, fake, 1)
    await send(b, fake, 2)
    state.expire_tokens()
    await send(a, fake, 3)
    await send(b, fake, 4)
    tokens = [query["access_token"] for path, query, _ in state.calls if path == "/cgi-bin/message/send"]
    first, refreshed = tokens[0], tokens[3]
    assert first != refreshed
    # a: T, b: T, a: T (42001) then new, b: T (42001) then new, without a fetch of its own
    assert tokens == [first, first, first, refreshed, first, refreshed]
    assert state.token_fetches == 2


async def test_processes_refreshing_at_once_fetch_once(
    aiohttp_server: Any, channels: list[Channel], redis_cache: Callable[..., RedisTokenCache]
) -> None:
    """Three processes start together while gettoken is slow: one fetches under the Redis lock, the others
    wait for it and take its token."""
    fake, state = await wecom_fake(aiohttp_server, channels)
    state.inject("slow", route="/cgi-bin/gettoken")
    procs = [fake.make(redis_cache()) for _ in range(3)]
    await asyncio.gather(*(send(ch, fake, i) for i, ch in enumerate(procs)))
    assert state.token_fetches == 1 and len(state.delivered) == 3


async def test_a_lock_not_obtained_in_time_does_not_stop_sending(
    aiohttp_server: Any, channels: list[Channel], redis_cache: Callable[..., RedisTokenCache]
) -> None:
    """A peer that took the refresh lock and hangs (or died: the lock expires by itself) only delays us."""
    fake, state = await wecom_fake(aiohttp_server, channels)
    peer = redis_cache()
    ch = fake.make(redis_cache(lock_wait_s=0.2))
    async with peer.refresh_lock(fake.key) as held:
        assert held
        await send(ch, fake, 1)  # waited for the lock, then fetched anyway
    assert state.token_fetches == 1 and len(state.delivered) == 1
    other = fake.make(redis_cache())
    await send(other, fake, 2)  # and shared what it fetched
    assert state.token_fetches == 1


async def test_a_redis_that_is_down_does_not_stop_sending(
    fake: Fake, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    down = RedisTokenCache.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0")
    try:
        a, b = fake.make(down), fake.make(down)
        with caplog.at_level(logging.WARNING, logger="pandian.tokens"):
            assert await a_day_of_two_processes(fake, a, b) == (2, 4)  # as without Redis
    finally:
        await down.close()
    unavailable = [r for r in caplog.records if "token cache unavailable" in r.getMessage()]
    assert len(unavailable) == 4  # once per fetch: each fell back to fetching on its own
    assert all(fake.key in r.getMessage() for r in unavailable)


async def test_the_shared_value_is_the_token_with_its_expiry_and_ttl(
    aiohttp_server: Any, channels: list[Channel], prefix: str, redis_cache: Callable[..., RedisTokenCache]
) -> None:
    fake, state = await wecom_fake(aiohttp_server, channels)
    await send(fake.make(redis_cache()), fake, 1)
    r = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        raw, ttl_ms = await r.get(prefix + fake.key), await r.pttl(prefix + fake.key)
    finally:
        await r.aclose()
    assert raw is not None
    value = json.loads(raw)
    assert set(value) == {"token", "expires_at"} and value["token"] in state.tokens
    assert 7100_000 < ttl_ms <= 7200_000  # the key lives as long as the token


# -- one contract for both caches ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[TokenCache]:
    c: TokenCache
    c = (
        MemoryTokenCache(lock_wait_s=0.2)
        if request.param == "memory"
        else RedisTokenCache.from_url(REDIS_URL, prefix=prefix, lock_wait_s=0.2)
    )
    yield c
    await c.close()


async def test_cache_round_trip_and_expiry(cache: TokenCache) -> None:
    assert await cache.get("wecom:c:1") is None
    await cache.put("wecom:c:1", "T1", 0.3)
    await cache.put("wecom:c:2", "T9", 7200)  # another app: another key
    found = await cache.get("wecom:c:1")
    assert found is not None and found.token == "T1" and 0 < found.ttl_s <= 0.3
    await asyncio.sleep(0.4)
    assert await cache.get("wecom:c:1") is None
    other = await cache.get("wecom:c:2")
    assert other is not None and other.token == "T9" and other.ttl_s > 7100


async def test_cache_refresh_lock_is_exclusive_per_key(cache: TokenCache) -> None:
    async with cache.refresh_lock("feishu:a") as first:
        assert first
        async with cache.refresh_lock("feishu:a") as second:
            assert not second  # not obtained in time
        async with cache.refresh_lock("feishu:b") as other_key:
            assert other_key
    async with cache.refresh_lock("feishu:a") as again:
        assert again


def test_the_key_names_the_platform_and_app_and_keeps_issuers_apart() -> None:
    key = token_key("wecom", "ww1:1000002", endpoint="https://qyapi.weixin.qq.com/", secret="s3cr3t")
    assert key.startswith("wecom:ww1:1000002:") and "s3cr3t" not in key
    assert key == token_key("wecom", "ww1:1000002", endpoint="https://qyapi.weixin.qq.com", secret="s3cr3t")
    assert key != token_key("wecom", "ww1:1000002", endpoint="http://127.0.0.1:8081", secret="s3cr3t")
    assert key != token_key("wecom", "ww1:1000002", endpoint="https://qyapi.weixin.qq.com", secret="reset")
