"""A server killed mid-flow loses no acknowledged count and no queued notification.

The real server runs as a subprocess (``web.run_app(build_app(settings))``) on the test database, with WeCom
pointed at a fake in the test process. Signed callbacks are acknowledged (HTTP 200); then the server is
SIGKILLed while

- its notifications are still queued: the fake WeCom API answers every send with -1 (system busy), so the
  outbox keeps them pending, and
- two acknowledged counts are still being processed: a peer holds the counter's conversation lock in Redis
  (as a second server busy with her previous message would), so the work waits behind it.

A new server process on the same database replays the acknowledged events (``server.replay_after_s``) and
delivers the queue. Every acknowledged count is recorded exactly once, every queued notification reaches the
fake exactly once (counted in the API calls, not only in what WeCom's duplicate check lets through), and
platform retries that arrive after the restart are dropped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from bot.conversation import RedisStore
from core.config import Settings
from core.db import make_sessionmaker
from core.models import CountEntry, CountTask, InboundSeen, OutboxMessage
from core.scheduling.service import plan_day
from tests.clock import morning
from tests.fakes.wecom import WeComFakeState, WeComSimulator, build_wecom_fake_app
from tests.integration.builders import build_company

TOKEN, AES_KEY = "tok3n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
REDIS_URL = "redis://127.0.0.1:6379/15"
IDS = {"WH1-E01": "crash-lina", "WH1-E02": "crash-wang", "WH1-S01": "crash-sup"}
SEND = "/cgi-bin/message/send"
ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import json, logging, sys
from aiohttp import web
from bot.app import build_app
from core.clock import SystemClock
from core.config import Settings
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
web.run_app(build_app(Settings(**json.loads(sys.argv[2])), clock=SystemClock()), host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def wait_for(cond: Any, seconds: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` (a function, or a coroutine function) until it is true."""
    deadline = time.monotonic() + seconds
    while True:
        ok = cond()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    """This environment without pandian's own variables (the settings are passed whole), and our code on
    the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDIAN_")}
    return env | {"PYTHONPATH": str(ROOT)}


class ServerProcess:
    """``pandian``'s aiohttp server in its own interpreter, as it runs in production."""

    def __init__(self, settings: dict[str, Any], workdir: Path, name: str) -> None:
        self.settings, self.workdir = settings, workdir
        self.log = workdir / f"{name}.log"
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SERVER, str(self.port), json.dumps(self.settings),
                cwd=self.workdir, env=_env(),
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

        async def healthy() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.url + "/healthz") as resp:
                    return resp.status == 200
            return False

        await wait_for(healthy, what="the server to answer /healthz")

    async def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no drain, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def peer_holds_lock(key: str) -> AsyncIterator[None]:
    """Another server process holding a user's conversation lock (it auto-expires, as if that peer died)."""
    peer = RedisStore(REDIS_URL)
    try:
        async with peer.lock(key, wait=5):
            yield
    finally:
        await peer.close()


async def test_killed_server_loses_no_acknowledged_count_and_no_queued_notification(
    aiohttp_server: Any, database_url: str, engine: Any, tmp_path: Path
) -> None:
    fake = WeComFakeState()
    api = await aiohttp_server(build_wecom_fake_app(fake))
    fake.inject("-1", times=1_000_000, route=SEND)  # WeCom busy: nothing can be delivered yet
    settings: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": REDIS_URL,
        "wecom": {"corp_id": fake.corp_id, "agent_id": fake.agent_id, "secret": fake.secret, "token": TOKEN,
                  "encoding_aes_key": AES_KEY, "api_base": str(api.make_url("")).rstrip("/")},
        "server": {"payload_secret": "test-secret-0123456789", "outbox_interval_s": 0.1,
                   "photos_dir": str(tmp_path / "photos")},
        "schedule": {"enabled": False},
    }  # fmt: skip
    sm = make_sessionmaker(engine)
    async with sm() as s:
        co = await build_company(s, items=40, counters=2)
        for u in co.users:
            u.wecom_userid = IDS[u.employee_no]
        await plan_day(
            s, Settings(database_url=database_url), date(2026, 11, 30), now=morning(date(2026, 11, 30))
        )  # a working Monday
        await s.commit()
        lina = next(u for u in co.users if u.employee_no == "WH1-E01")
        tasks = list(
            (
                await s.execute(
                    select(CountTask.id).where(CountTask.assignee_id == lina.id).order_by(CountTask.id)
                )
            ).scalars()
        )
    assert len(tasks) >= 4
    t1, t2, t3, t4 = tasks[:4]
    redis = RedisStore(REDIS_URL)
    for who in IDS.values():
        await redis.delete(f"wecom:{who}")
    await redis.close()
    import redis.asyncio as aioredis

    raw = aioredis.from_url(
        REDIS_URL
    )  # access tokens an earlier run left shared: this run's fake never issued them
    async for k in raw.scan_iter("pandian:token:*"):
        await raw.delete(k)
    await raw.aclose()

    sim = WeComSimulator(TOKEN, AES_KEY, fake.corp_id, fake.agent_id)
    now = int(time.time())
    said = {  # MsgId -> what lina typed
        9001: f"/盘点 {t1} 10",  # as the book says
        9002: f"/盘点 {t2} 60",  # out of tolerance: a blind recount card for wang
        9003: f"/盘点 {t3} 12",  # out of tolerance too: a second recount card
        9004: f"/盘点 {t4} 10",
    }

    async def post(server: ServerProcess, http: aiohttp.ClientSession, msg_id: int) -> None:
        req = sim.text("crash-lina", said[msg_id], msg_id=msg_id, timestamp=now)
        async with http.post(server.url + "/wecom/callback", params=req.query, data=req.body) as resp:
            assert resp.status == 200, await resp.text()  # acknowledged

    async def rows(model: Any) -> list[Any]:
        async with sm() as s:
            return list((await s.execute(select(model))).scalars())

    async def counted() -> dict[int, list[Decimal | None]]:
        out: dict[int, list[Decimal | None]] = {}
        for e in await rows(CountEntry):
            out.setdefault(e.task_id, []).append(e.qty)
        return out

    first = ServerProcess(settings, tmp_path, "first")
    second = ServerProcess(
        settings | {"server": settings["server"] | {"replay_after_s": 0.5, "card_sync_interval_s": 0.2}},
        tmp_path,
        "second",
    )
    async with aiohttp.ClientSession() as http:
        try:
            # 1. two counts acknowledged and processed; their notifications queued, not deliverable
            await first.start(http)
            await post(first, http, 9001)
            await post(first, http, 9002)
            await wait_for(lambda: _len(counted, 2), what="the first two counts")

            async with peer_holds_lock("wecom:crash-lina"):
                # 2. two more counts (and a platform retry of one) acknowledged while the work waits
                await post(first, http, 9003)
                await post(first, http, 9004)
                await post(first, http, 9003)

                # 3. kill it when no send is in flight (every queued row waits for its next try)
                async def queue_idle() -> bool:
                    soon = datetime.now(UTC) + timedelta(seconds=0.3)
                    queued = await rows(OutboxMessage)
                    return bool(queued) and all(
                        r.state == "pending" and r.next_attempt_at > soon for r in queued
                    )

                await wait_for(queue_idle, what="the outbox to be between tries")
                await first.kill()

            # what the dead server left: 2 counts, 2 acknowledged events not processed, a queue not delivered
            assert await counted() == {t1: [Decimal(10)], t2: [Decimal(60)]}
            seen = {r.dedup_key: r for r in await rows(InboundSeen)}
            assert set(seen) == {f"wecom:msg:{m}" for m in said}
            waiting = {k for k, r in seen.items() if r.processed_at is None}
            assert waiting == {"wecom:msg:9003", "wecom:msg:9004"}
            assert all(seen[k].event is not None for k in waiting)  # the events themselves are kept
            queued = await rows(OutboxMessage)
            assert {r.state for r in queued} == {"pending"} and not fake.delivered
            kinds = sorted((r.address["user_id"], r.kind) for r in queued)
            assert kinds == [("crash-lina", "text"), ("crash-lina", "text"), ("crash-wang", "card")]

            # 4. WeCom recovers; a new server on the same database replays and delivers
            fake.faults.clear()
            sends_before = len(fake.calls_to(SEND))
            await second.start(http)

            async def settled() -> bool:
                done = all(len(v) == 1 for v in (await counted()).values()) and len(await counted()) == 4
                queued = await rows(OutboxMessage)
                return done and len(queued) == 6 and all(r.state == "sent" for r in queued)

            await wait_for(settled, what="the replayed counts and the delivered queue")
            # WeCom retries (its 5 s deadline passed long ago) reach the new server: dropped as duplicates
            await post(second, http, 9001)
            await post(second, http, 9004)
            async with http.get(second.url + "/metrics") as resp:
                metrics = await resp.text()
            assert "pandian_dispatch_duplicates_total 2" in metrics, metrics
            assert "pandian_dispatch_replayed_total 2" in metrics, metrics
            await second.stop()  # drains: nothing more is sent after this
        except BaseException:
            for r in await rows(OutboxMessage):
                print(r.idempotency_key, r.state, r.attempts, r.next_attempt_at, r.last_error)
            for r in await rows(InboundSeen):
                print(r.dedup_key, r.processed_at, r.attempts)
            print(await counted())
            print("--- first server ---\n" + first.tail() + "\n--- second server ---\n" + second.tail())
            raise
        finally:
            for server in (first, second):
                if server.proc is not None and server.proc.returncode is None:
                    server.proc.kill()
                    await server.proc.wait()

    # every acknowledged count recorded exactly once
    assert await counted() == {t1: [Decimal(10)], t2: [Decimal(60)], t3: [Decimal(12)], t4: [Decimal(10)]}
    assert all(r.processed_at is not None and r.event is None for r in await rows(InboundSeen))
    # every queued notification delivered exactly once: one API send per outbox row, no more
    queued = await rows(OutboxMessage)
    assert len(queued) == 6 and all(r.state == "sent" for r in queued)
    assert len(fake.calls_to(SEND)) - sends_before == len(queued) == len(fake.delivered)
    to_lina = [m["text"]["content"] for m in fake.delivered if m["touser"] == "crash-lina"]
    assert len(to_lina) == 4 and all(t.startswith("已记录") for t in to_lina)
    cards = [m for m in fake.delivered if m["touser"] == "crash-wang"]
    assert len(cards) == 2 and all(m["msgtype"] == "template_card" for m in cards)
    assert len({m["template_card"]["task_id"] for m in cards}) == 2  # one blind recount card per count


async def _len(fn: Any, n: int) -> bool:
    return len(await fn()) == n
