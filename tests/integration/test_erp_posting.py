"""Write-back through the durable queue against each fake ERP: exactly once under faults, lost answers,
expired sessions, permanent refusals (failed + finance told), and two drainers at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Adjustment, AuditEvent, ErpPosting, ErpPostingAttempt, OutboxMessage
from integrations.erp.posting import drain, retry
from tests.fakes.erp_harness import (
    ERPS,
    Harness,
    drain_until_done,
    make_adjustments,
    no_sleep,
    ready,
)

# the request that creates the document in each ERP (a fault here is injected where it hurts most)
WRITE = {
    "kingdee": "DynamicFormService.Save",
    "yonbip": "storecheckdifference/single/save",
    "u8": "/api/otherin/add",
    "sap": "POST /sap/opu/odata/sap/API_PHYSICAL_INVENTORY_DOC_SRV/A_PhysInventoryDocHeader",
}
# the request that makes it final (after which the stock has changed)
FINAL = {
    "kingdee": "DynamicFormService.Audit",
    "yonbip": "storecheckdifference/batchaudit",
    "u8": "/api/otherin/batch_get",  # U8 adds are final; the lookup after the lost add is dropped too
    "sap": "PostDifferences",
}
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)

pytestmark = pytest.mark.parametrize("erp", [e for e in ERPS if e in WRITE])


SPECS = [
    ("gain", "M000", "WH1", "A-01", "5"),
    ("loss", "M001", "WH1", "A-02", "-3"),
    ("gain", "M002", "WH1", "A-01", "1.5"),
    ("loss", "M003", "WH1", "A-02", "-2"),
    ("gain", "M004", "WH1", "A-01", "4"),
    ("loss", "M005", "WH1", "A-02", "-1"),
    ("transfer", "M000", "WH1", "A-01", "2", "A-02"),
    ("gain", "M000", "WH2", "B-01", "3"),
]


def expected_stock(
    h: Harness, before: dict[tuple[str, str, str], Decimal]
) -> dict[tuple[str, str, str], Decimal]:
    want = dict(before)
    for spec in SPECS:
        kind, sku, wh, loc, qty = spec[:5]
        if kind == "transfer":
            want[(sku, wh, loc)] = want.get((sku, wh, loc), Decimal(0)) - Decimal(qty)
            want[(sku, wh, spec[5])] = want.get((sku, wh, spec[5]), Decimal(0)) + Decimal(qty)
        else:
            want[(sku, wh, loc)] = want.get((sku, wh, loc), Decimal(0)) + Decimal(qty)
    return want


async def keys_and_states(sm: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, str | None]]:
    async with sm() as s:
        rows = await s.execute(
            select(ErpPosting.doc_key, Adjustment.state, Adjustment.erp_doc_no)
            .join(Adjustment, Adjustment.id == ErpPosting.adjustment_id)
            .order_by(ErpPosting.id)
        )
        return [(k, st, no) for k, st, no in rows]


async def test_every_adjustment_posted_exactly_once_with_30_percent_of_requests_failing(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready(erp, aiohttp_server, sessionmaker)
    before = dict(h.fake.stock)
    await make_adjustments(sessionmaker, SPECS)
    h.fake.faults.rate = 0.3
    c = h.connector()
    try:
        _, totals = await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    h.fake.faults.rate = 0
    rows = await keys_and_states(sessionmaker)
    assert len(rows) == len(SPECS)
    assert all(state == "posted" and doc_no for _, state, doc_no in rows), rows
    for key, _, _ in rows:
        assert h.fake.ledger(key) == 1, (key, h.fake.applied)
    assert len(h.fake.applied) == len(set(h.fake.applied))  # no document went in twice
    for key, qty in expected_stock(h, before).items():
        assert h.fake.qty(*key) == qty, key
    assert sum(h.fake.faults.seen.values()) > 10, h.fake.faults.seen  # the faults did happen
    assert totals["posted"] == len(SPECS) and totals.get("failed", 0) == 0


async def test_a_lost_answer_after_the_erp_posted_is_found_not_posted_again(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready(erp, aiohttp_server, sessionmaker)
    [adj_id] = await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "5")])
    h.fake.faults.inject("lost", route=WRITE[erp])
    h.fake.faults.inject("lost", route=FINAL[erp])
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    assert h.fake.faults.seen["lost"] == 2
    [(key, state, doc_no)] = await keys_and_states(sessionmaker)
    assert state == "posted" and doc_no
    assert h.fake.ledger(key) == 1 and len(h.fake.find_doc(key)) == 1
    assert len(h.fake.applied) == 1
    async with sessionmaker() as s:
        attempts = (await s.execute(select(ErpPostingAttempt))).scalars().all()
        trail = (await s.execute(select(AuditEvent).where(AuditEvent.entity_id == adj_id))).scalars().all()
    assert attempts[-1].outcome == "posted"
    assert [e.action for e in trail if e.entity == "adjustment"] == ["posted"]


async def test_an_expired_session_is_renewed_and_the_call_repeated(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready(erp, aiohttp_server, sessionmaker)
    await make_adjustments(
        sessionmaker, [("gain", "M000", "WH1", "A-01", "5"), ("loss", "M001", "WH1", "A-02", "-1")]
    )
    c = h.connector()
    try:
        counts = await drain(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW, sleep=no_sleep, limit=1)
        assert counts["posted"] == 1
        logins = h.fake.logins
        h.fake.expire_sessions()
        counts = await drain(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW, sleep=no_sleep)
    finally:
        await c.close()
    assert counts["posted"] == 1 and counts["retry"] == 0
    assert h.fake.logins == logins + 1
    assert len(h.fake.applied) == 2


async def test_a_refusal_marks_the_adjustment_failed_and_tells_finance_then_a_retry_posts_it_once(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready(erp, aiohttp_server, sessionmaker)
    [adj_id] = await make_adjustments(sessionmaker, [("loss", "M001", "WH1", "A-02", "-3")])
    h.fake.refuse("会计期间 2026.11 已关账")
    c = h.connector()
    try:
        counts = await drain(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW, sleep=no_sleep)
        assert counts["failed"] == 1
        async with sessionmaker() as s:
            adj = await s.get(Adjustment, adj_id)
            assert adj is not None and adj.state == "failed"
            assert adj.error is not None and "已关账" in adj.error
            [msg] = (await s.execute(select(OutboxMessage))).scalars().all()
            assert msg.address["user_id"] == "wang.finance" and msg.platform == "wecom"
            assert "已关账" in msg.body["text"] and "pandian erp post --retry" in msg.body["text"]
        assert h.fake.applied == []
        # nothing happens to a failed posting until someone retries it
        counts = await drain(
            sessionmaker, h.settings, c, now=NOW + timedelta(hours=1), clock=lambda: NOW, sleep=no_sleep
        )
        assert counts == {"queued": 0, "posted": 0, "retry": 0, "failed": 0, "lost": 0, "claimed": 0}
        h.fake.stop_refusing()
        async with sessionmaker() as s, s.begin():
            assert await retry(s, h.settings, [adj_id], now=NOW) == [adj_id]
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    [(key, state, _)] = await keys_and_states(sessionmaker)
    assert state == "posted" and h.fake.ledger(key) == 1
    assert len(h.fake.find_doc(key)) == 1  # the refused document was carried on, not made again


async def test_two_drainers_at_once_post_each_adjustment_once(
    erp: str, aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready(erp, aiohttp_server, sessionmaker)
    await make_adjustments(sessionmaker, SPECS)
    h.fake.faults.rate = 0.15
    c1, c2 = h.connector(), h.connector()
    now = NOW
    try:
        for _ in range(300):
            t = now

            async def one(c: Any, t: datetime = t) -> None:
                try:
                    await drain(sessionmaker, h.settings, c, now=t, clock=lambda: t, sleep=no_sleep, limit=3)
                except Exception as exc:  # SQLite: a concurrent writer may find the file busy; try again
                    if "locked" not in str(exc):
                        raise

            await asyncio.gather(one(c1), one(c2))
            rows = await keys_and_states(sessionmaker)
            if len(rows) == len(SPECS) and all(st == "posted" for _, st, _ in rows):
                break
            now += timedelta(seconds=2)
    finally:
        await c1.close()
        await c2.close()
    rows = await keys_and_states(sessionmaker)
    assert all(st == "posted" for _, st, _ in rows), rows
    assert all(h.fake.ledger(k) == 1 for k, _, _ in rows), h.fake.applied
    assert len(h.fake.applied) == len(set(h.fake.applied))
