"""WeCom end to end through the real server: the simulator posts signed, encrypted callbacks to the bot's
route; the reply goes out through the outbox to the fake WeCom API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from bot.app import build_app
from core.config import Settings
from core.db import make_engine, make_sessionmaker
from core.models import User
from core.scheduling.service import plan_day
from tests.clock import morning, running
from tests.fakes.wecom import WeComFakeState, WeComSimulator, build_wecom_fake_app
from tests.integration.builders import build_company
from tests.integration.cardflow import DAY

TOKEN, AES_KEY = "tok3n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


async def wait_for(cond: Any, seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_text_command_round_trip(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any
) -> None:
    state = WeComFakeState()
    fake = await aiohttp_server(build_wecom_fake_app(state))
    eng = make_engine(database_url)
    async with make_sessionmaker(eng)() as s:
        await build_company(s, items=10)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "zhangwei"
        await plan_day(s, Settings(database_url=database_url), DAY, now=morning(DAY))
        await s.commit()
    await eng.dispose()

    settings = Settings(
        database_url=database_url,
        wecom={"corp_id": state.corp_id, "agent_id": state.agent_id, "secret": state.secret, "token": TOKEN,
               "encoding_aes_key": AES_KEY, "api_base": str(fake.make_url("")).rstrip("/")},
    )  # fmt: skip
    clock = running(DAY)
    client = await aiohttp_client(build_app(settings, clock=clock))
    sim = WeComSimulator(TOKEN, AES_KEY, state.corp_id, state.agent_id)

    async def send(req: Any) -> int:
        async with client.request(req.method, "/wecom/callback", params=req.query, data=req.body) as resp:
            return resp.status

    now = int(clock.now().timestamp())
    assert await send(sim.text("zhangwei", "/帮助", msg_id=1, timestamp=now)) == 200
    assert await send(sim.text("zhangwei", "/帮助", msg_id=1, timestamp=now)) == 200  # a platform retry
    assert await send(sim.text("nobody", "/任务", msg_id=2, timestamp=now)) == 200
    await wait_for(lambda: len(state.delivered) >= 2)
    await asyncio.sleep(0.3)
    texts = [(m.get("touser"), m.get("text", {}).get("content", "")) for m in state.delivered]
    assert sum(1 for who, t in texts if who == "zhangwei" and "可用命令" in t) == 1  # answered once
    assert any(who == "nobody" and "没有在盘点系统登记" in t for who, t in texts)

    forged = sim.text("zhangwei", "/任务", msg_id=3, timestamp=now)
    forged.query["msg_signature"] = "0" * 40
    assert await send(forged) == 401
    stale = sim.text("zhangwei", "/任务", msg_id=4, timestamp=now - 3600)
    assert await send(stale) == 401
    metrics = await (await client.get("/metrics")).text()
    assert "pandian_dispatch_duplicates_total 1" in metrics and 'refused_total{platform="wecom"} 2' in metrics


async def test_one_trace_id_from_callback_to_send(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any, caplog: Any
) -> None:
    """The callback's log line, the handler's, and the send it caused carry one trace id, as does the
    outbox row."""
    import logging

    from core.models import OutboxMessage

    state = WeComFakeState()
    fake = await aiohttp_server(build_wecom_fake_app(state))
    async with make_sessionmaker(engine)() as s:
        await build_company(s, items=3)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "zhangwei"
        await s.commit()
    settings = Settings(
        database_url=database_url,
        wecom={"corp_id": state.corp_id, "agent_id": state.agent_id, "secret": state.secret, "token": TOKEN,
               "encoding_aes_key": AES_KEY, "api_base": str(fake.make_url("")).rstrip("/")},
        server={"outbox_interval_s": 0.05},
    )  # fmt: skip
    clock = running(DAY)
    client = await aiohttp_client(build_app(settings, clock=clock))
    sim = WeComSimulator(TOKEN, AES_KEY, state.corp_id, state.agent_id)
    caplog.set_level(logging.DEBUG, logger="pandian")  # the acceptance is logged at DEBUG
    req = sim.text("zhangwei", "/帮助", msg_id=77, timestamp=int(clock.now().timestamp()))
    async with client.request(req.method, "/wecom/callback", params=req.query, data=req.body) as resp:
        assert resp.status == 200
    await wait_for(lambda: any(r.getMessage().startswith("sent text wecom:msg:77") for r in caplog.records))
    by_msg = {
        r.getMessage().split(" in ")[0]: r.trace_id
        for r in caplog.records
        if "wecom:msg:77" in r.getMessage()
    }
    traces = set(by_msg.values())
    assert len(by_msg) >= 3 and len(traces) == 1 and "-" not in traces, by_msg
    async with make_sessionmaker(engine)() as s:
        row = (await s.execute(select(OutboxMessage))).scalar_one()
    assert row.trace_id in traces
