"""The server with no platform configured: health, metrics, and nothing platform-specific imported."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from core.clock import FixedClock
from core.config import Settings

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


async def test_health_and_metrics(aiohttp_client: Any, database_url: str, engine: Any) -> None:
    from bot.app import build_app

    client = await aiohttp_client(build_app(Settings(database_url=database_url), clock=FixedClock(NOW)))
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["database"] == "ok"
    assert await r.json() == {"ok": True, "status": "ok", "database": "ok", "outbox": "ok", "platforms": {}}
    m = await (await client.get("/metrics")).text()
    assert "pandian_dispatch_accepted_total 0" in m
    assert (await client.post("/wecom/callback")).status == 404  # not configured: no route


def test_unconfigured_platforms_cost_no_import() -> None:
    """In a fresh interpreter (this one may have imported SDKs for other tests)."""
    code = (
        "import sys; from bot.app import build_app; from core.clock import SystemClock; "
        "from core.config import Settings; "
        "build_app(Settings(database_url='sqlite+aiosqlite:///:memory:'), clock=SystemClock()); "
        "print(sorted(m for m in ('lark_oapi', 'wechatpy', 'integrations.wecom', 'integrations.feishu', "
        "'integrations.dingtalk') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_health_reports_a_dead_database(aiohttp_client: Any) -> None:
    from bot.app import build_app

    client = await aiohttp_client(
        build_app(Settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/x"), clock=FixedClock(NOW))
    )
    r = await client.get("/healthz")
    assert r.status == 503 and (await r.json())["database"].startswith("error")
    assert (await r.json())["ok"] is False and (await r.json())["status"] == "down"
