"""The server in DingTalk Stream mode: no webhook routes, events arrive over the connection the server opens,
and the replies go out through the outbox to the (fake) DingTalk API. The same wiring serves Feishu's
WebSocket mode (its connection class is tested against the real lark-oapi client in test_long_connection)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sqlalchemy import select

from bot.app import build_app
from core.config import Settings
from core.db import make_sessionmaker
from core.models import User
from tests.clock import running
from tests.fakes.dingtalk import DingTalkFakeState, DingTalkSimulator, build_dingtalk_fake_app
from tests.fakes.dingtalk_stream import DingTalkStreamFake, add_dingtalk_stream_routes
from tests.integration.builders import build_company
from tests.integration.cardflow import DAY


async def test_stream_mode_end_to_end(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any
) -> None:
    state, stream = DingTalkFakeState(), DingTalkStreamFake()
    stream.client_id, stream.client_secret = state.app_key, state.app_secret
    api = await aiohttp_server(add_dingtalk_stream_routes(build_dingtalk_fake_app(state), stream))
    base = str(api.make_url("")).rstrip("/")
    async with make_sessionmaker(engine)() as s:
        await build_company(s, items=3)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.dingtalk_userid = "user123"
        await s.commit()
    settings = Settings(
        database_url=database_url,
        dingtalk={"app_key": state.app_key, "app_secret": state.app_secret, "robot_code": state.robot_code,
                  "card_template_id": "tpl.schema", "api_base": base, "oapi_base": base, "mode": "stream"},
        server={"outbox_interval_s": 0.05},
    )  # fmt: skip
    clock = running(DAY)
    client = await aiohttp_client(build_app(settings, clock=clock))
    assert (await client.post("/dingtalk/robot", data=b"{}")).status == 404  # no public route in this mode
    await stream.wait_for(lambda: stream.connected == 1)

    sim = DingTalkSimulator(clock=lambda: clock.now().timestamp())
    first = await stream.push_robot(sim.text("/帮助", "user123", msg_id="m1"))
    await stream.push_robot(sim.text("/帮助", "user123", msg_id="m1"))  # pushed again: counted once
    assert (await stream.ack(first))["code"] == 200
    deadline = time.monotonic() + 10
    while not any("可用命令" in json.loads(m["msgParam"]).get("content", "") for m in state.sent):
        assert time.monotonic() < deadline, state.sent
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    helps = [m for m in state.sent if "可用命令" in json.loads(m["msgParam"]).get("content", "")]
    assert len(helps) == 1 and helps[0]["userIds"] == ["user123"]
    metrics = await (await client.get("/metrics")).text()
    assert 'pandian_inbound_total{platform="dingtalk"} 2' in metrics
    assert "pandian_dispatch_duplicates_total 1" in metrics
    assert 'pandian_connection_connects_total{platform="dingtalk"}' in metrics
