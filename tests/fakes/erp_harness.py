"""Test harness for the ERP connectors: a fake ERP on 127.0.0.1, settings pointing at it, helpers to make
approved adjustments and to drain the posting queue until it is empty (with a clock the test controls)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.enums import AdjustmentKind
from core.models import Adjustment, AdjustmentLine, Item, Location, User, Warehouse
from integrations.erp import make_connector
from integrations.erp.base import ApiConnector, Entity
from integrations.erp.posting import drain, queue_summary
from integrations.erp.sync import sync
from tests.fakes.erp_common import ErpFake, seed_catalogue

ERPS = ("kingdee", "yonbip", "u8", "sap")
FAST = {
    "timeout_s": 0.3,
    "read_retries": 2,
    "retry_backoff_s": 0,
    "step_retries": 3,
    "backoff_base_s": 1,
    "backoff_max_s": 1,
    "max_attempts": 1000,
    "settle_s": 4,  # two drain passes of drain_until_done
    "page_size": 4,
}


@dataclass
class Harness:
    name: str
    fake: ErpFake
    settings: Settings

    def connector(self) -> ApiConnector:
        c = make_connector(self.settings)
        assert isinstance(c, ApiConnector)
        return c


def erp_section(name: str, fake: Any, base: str) -> dict[str, Any]:
    if name == "kingdee":
        return {"server_url": f"{base}/k3cloud/", "acct_id": fake.acct_id, "username": fake.username,
                "app_id": fake.app_id, "app_secret": fake.app_secret, "org": fake.org,
                "movement_sources": [
                    {"source": "STK_InStock", "type": "receipt", "sign": 1, "line_field": "FInStockEntry_FEntryID"},
                    {"source": "SAL_OUTSTOCK", "type": "issue", "sign": -1},
                ]}  # fmt: skip
    if name == "yonbip":
        return {"gateway_url": f"{base}/iuap-api-gateway", "token_url": f"{base}/iuap-api-auth",
                "app_key": fake.app_key, "app_secret": fake.app_secret, "org": fake.org}  # fmt: skip
    if name == "u8":
        return {"base_url": base, "from_account": fake.from_account, "to_account": fake.to_account,
                "app_key": fake.app_key, "app_secret": fake.app_secret, "gain_rd_code": "14",
                "loss_rd_code": "24"}  # fmt: skip
    if name == "sap":
        return {"base_url": base, "username": fake.user, "password": fake.password,
                "plants": {"WH1": "一号仓", "WH2": "二号仓"}}  # fmt: skip
    raise ValueError(name)


def make_fake(name: str) -> ErpFake:
    if name == "kingdee":
        from tests.fakes.erp_kingdee import KingdeeFake

        return KingdeeFake()
    if name == "yonbip":
        from tests.fakes.erp_yonbip import YonBipFake

        return YonBipFake()
    if name == "u8":
        from tests.fakes.erp_u8 import U8Fake

        return U8Fake()
    from tests.fakes.erp_sap import SapFake

    return SapFake()


def build_app(name: str, fake: Any) -> Any:
    if name == "kingdee":
        from tests.fakes.erp_kingdee import build_kingdee_app

        return build_kingdee_app(fake)
    if name == "yonbip":
        from tests.fakes.erp_yonbip import build_yonbip_app

        return build_yonbip_app(fake)
    if name == "u8":
        from tests.fakes.erp_u8 import build_u8_app

        return build_u8_app(fake)
    from tests.fakes.erp_sap import build_sap_app

    return build_sap_app(fake)


async def start(name: str, aiohttp_server: Any, fake: ErpFake | None = None, **erp: Any) -> Harness:
    fake = fake or make_fake(name)
    server = await aiohttp_server(build_app(name, fake))
    base = str(server.make_url("")).rstrip("/")
    section = erp_section(name, fake, base)
    section.update(erp.pop(name, {}))
    settings = Settings(
        wecom={
            "corp_id": "ww_fake",
            "agent_id": 1,
            "secret": "x",
            "token": "t",
            "encoding_aes_key": "k" * 43,
        },
        reasons={"misslot_window_days": 0},
        erp={"connector": name, name: section, **FAST, **erp},
    )
    return Harness(name, fake, settings)


async def ready(name: str, aiohttp_server: Any, sm: async_sessionmaker[AsyncSession], **erp: Any) -> Harness:
    """A fake ERP with the seeded catalogue, a finance user and a manager, and pandian synced from it (items,
    locations, book stock): ready for adjustments to post."""
    h = await start(name, aiohttp_server, **erp)
    seed_catalogue(h.fake)
    async with sm() as s, s.begin():
        await add_people(s)
    c = h.connector()
    try:
        report = await sync(sm, h.settings, c, entities=[Entity.ITEMS, Entity.LOCATIONS, Entity.STOCK])
    finally:
        await c.close()
    assert report.ok, report.error
    return h


async def add_people(session: AsyncSession) -> tuple[User, User]:
    finance = User(employee_no="F01", name="财务小王", roles=["finance"], wecom_userid="wang.finance")
    manager = User(employee_no="M01", name="经理", roles=["manager"], wecom_userid="boss")
    session.add_all([finance, manager])
    await session.flush()
    return finance, manager


Spec = (
    tuple[str, str, str, str, str] | tuple[str, str, str, str, str, str]
)  # kind, sku, wh, loc, qty[, to_loc]


async def make_adjustments(
    sm: async_sessionmaker[AsyncSession], specs: list[Any], *, created_at: datetime | None = None
) -> list[int]:
    """Approved adjustments as ``core.variance.service._adjust`` leaves them: pending write-back, one line."""
    created_at = created_at or datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    ids = []
    async with sm() as s, s.begin():
        for spec in specs:
            kind, sku, wh, loc, qty = spec[:5]
            to_loc = spec[5] if len(spec) > 5 else None
            item = (await s.execute(select(Item).where(Item.sku == sku))).scalar_one()
            wh_row = (await s.execute(select(Warehouse).where(Warehouse.code == wh))).scalar_one()
            loc_id = await _loc(s, wh_row.id, loc)
            q = Decimal(qty)
            adj = Adjustment(warehouse_id=wh_row.id, kind=AdjustmentKind(kind), state="pending_write_back",
                             value=q * Decimal(item.unit_cost), created_at=created_at)  # fmt: skip
            s.add(adj)
            await s.flush()
            s.add(AdjustmentLine(adjustment_id=adj.id, item_id=item.id, location_id=loc_id,
                                 to_location_id=await _loc(s, wh_row.id, to_loc) if to_loc else None, qty=q,
                                 unit_cost=item.unit_cost, value=q * Decimal(item.unit_cost)))  # fmt: skip
            ids.append(adj.id)
    return ids


async def _loc(s: AsyncSession, wh_id: int, code: str) -> int:
    loc = (
        await s.execute(select(Location).where(Location.warehouse_id == wh_id, Location.code == code))
    ).scalar_one_or_none()
    if loc is None:
        loc = Location(warehouse_id=wh_id, code=code, sequence=0)
        s.add(loc)
        await s.flush()
    return loc.id


async def no_sleep(_: float) -> None:
    return None


async def drain_until_done(
    sm: async_sessionmaker[AsyncSession], settings: Settings, connector: ApiConnector, *,
    start: datetime | None = None, rounds: int = 400,
    drainer: Callable[..., Awaitable[dict[str, int]]] = drain,
) -> tuple[datetime, dict[str, int]]:  # fmt: skip
    """Drain pass after pass, moving the clock past every back-off, until no posting is pending or in flight."""
    now = start or datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    totals: dict[str, int] = {}
    for _ in range(rounds):
        t = now
        counts = await drainer(sm, settings, connector, now=t, clock=lambda t=t: t, sleep=no_sleep)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        async with sm() as s:
            left = await queue_summary(s)
        if not left.get("pending") and not left.get("posting"):
            return now, totals
        now += timedelta(seconds=2)
    raise AssertionError(f"the queue did not empty in {rounds} passes: {left}")


class ThreadedServer:
    """A fake on its own event loop in a thread, for code that runs ``asyncio.run`` itself (the CLI)."""

    def __init__(self, app: Any) -> None:
        import asyncio
        import threading

        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base = ""

    def __enter__(self) -> ThreadedServer:
        import asyncio

        from aiohttp import web

        self.thread.start()

        async def up() -> tuple[Any, str]:
            runner = web.AppRunner(self.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            return runner, f"http://127.0.0.1:{port}"

        self.runner, self.base = asyncio.run_coroutine_threadsafe(up(), self.loop).result()
        return self

    def __exit__(self, *exc: Any) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
