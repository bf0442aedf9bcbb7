"""What is particular to one ERP (Kingdee's signed login, SAP's ETags, YonBIP's resubmitCheckKey, U8's one-time
trade ids) and the queue's edges (a crashed drainer, a lease taken over, the mis-slot window, nobody to tell,
malformed answers), plus: credentials never reach the logs."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Adjustment, AuditEvent, ErpPosting, OutboxMessage, User
from integrations.erp.base import Entity
from integrations.erp.posting import _claim, _process, drain, enqueue_due, held
from integrations.erp.sync import sync
from tests.fakes.erp_common import seed_catalogue
from tests.fakes.erp_harness import (
    ERPS,
    drain_until_done,
    make_adjustments,
    no_sleep,
    ready,
    start,
)

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


async def posted_states(sm: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sm() as s:
        return list((await s.execute(select(Adjustment.state).order_by(Adjustment.id))).scalars())


async def test_kingdee_login_by_signature(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker, kingdee={"login": "sign"})
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "1")])
    c = h.connector()
    try:
        assert (await c.check())[0].startswith("登录成功")
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    assert h.fake.ledger("PD00000001") == 1


async def test_sap_count_is_entered_again_after_an_etag_conflict(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("sap", aiohttp_server, sessionmaker)
    book = h.fake.qty("M001", "WH1", "A-02")
    await make_adjustments(sessionmaker, [("loss", "M001", "WH1", "A-02", "-3")])
    h.fake.stale_etag_once = True  # type: ignore[attr-defined]
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    assert h.fake.patches == 1  # type: ignore[attr-defined]  # the refused PATCH changed nothing, the next did
    assert h.fake.qty("M001", "WH1", "A-02") == book - 3 and h.fake.ledger("PD00000001") == 1


async def test_sap_posts_the_approved_difference_even_when_its_book_differs(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("sap", aiohttp_server, sessionmaker)
    h.fake.set_stock("M000", "WH1", "A-01", "250")  # SAP's book moved since our count
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "5")])
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    assert h.fake.qty("M000", "WH1", "A-01") == 255  # +5 as approved, not "the count we saw"


async def test_yonbip_resubmit_check_key_keeps_a_document_single_when_the_list_lags(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("yonbip", aiohttp_server, sessionmaker)
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "2")])
    h.fake.faults.inject("lost", route="storecheckdifference/single/save")
    h.fake.list_lag = 1  # type: ignore[attr-defined]  # the lookup after the lost save does not see it yet
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    saves = [b for p, b in h.fake.bodies if p.endswith("single/save")]  # type: ignore[attr-defined]
    assert len(saves) >= 1 and len({b["data"]["resubmitCheckKey"] for b in saves}) == 1
    assert len(h.fake.find_doc("PD00000001")) == 1 and h.fake.ledger("PD00000001") == 1


async def test_u8_every_write_spends_a_fresh_trade_id(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("u8", aiohttp_server, sessionmaker)
    await make_adjustments(
        sessionmaker, [("gain", "M000", "WH1", "A-01", "2"), ("transfer", "M002", "WH1", "A-01", "1", "A-02")]
    )
    h.fake.faults.inject("lost", route="/api/otherout/add")
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    used = [t for t, spent in h.fake.tradeids.items() if spent]  # type: ignore[attr-defined]
    assert len(used) == 3  # otherin, otherout (answer lost, found by its code), otherin of the pair
    assert [d.key for d in h.fake.docs.values()] == ["PD00000001", "PD00000002-O", "PD00000002-I"]
    assert h.fake.ledger("PD00000002") == 1


@pytest.mark.parametrize("erp", ERPS)
async def test_credentials_never_reach_the_logs(
    erp: str,
    aiohttp_server: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await ready(erp, aiohttp_server, sessionmaker)
    await make_adjustments(
        sessionmaker, [("gain", "M000", "WH1", "A-01", "2"), ("loss", "M001", "WH1", "A-02", "-1")]
    )
    h.fake.faults.rate = 0.3
    h.fake.faults.kinds = ("500", "timeout", "expire", "malformed")
    c = h.connector()
    try:
        await drain_until_done(sessionmaker, h.settings, c, start=NOW)
        await sync(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW)
    finally:
        await c.close()
    secrets = [v for k, v in vars(h.fake).items() if k in ("app_secret", "password")]
    tokens = [t for k in ("sessions", "tokens", "csrf") for t in getattr(h.fake, k, ())]
    # everything logged on our side (the fake ERP's own access log, which shows its URLs, is not ours)
    ours = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name != "aiohttp.access"
    )
    assert secrets and "pandian.erp" in ours
    for s in secrets + tokens:
        assert s not in ours
    async with sessionmaker() as s:
        stored = " ".join(
            str(r) for r in (await s.execute(select(ErpPosting.last_error, ErpPosting.progress))).all()
        )
    for secret in secrets + tokens:
        assert secret not in stored


async def test_a_drainer_that_died_mid_post_is_taken_over_after_its_lease(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker)
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "2")])
    async with sessionmaker() as s, s.begin():
        await enqueue_due(s, h.settings, "kingdee", NOW)
        assert await _claim(s, NOW, 10, "dead-drainer", timedelta(seconds=h.settings.erp.lease_s)) == [1]
    c = h.connector()
    try:
        # the row is leased: another drainer leaves it alone until the lease runs out
        counts = await drain(sessionmaker, h.settings, c, now=NOW + timedelta(seconds=10), sleep=no_sleep)
        assert counts["posted"] == 0 and h.fake.applied == []
        later = NOW + timedelta(seconds=h.settings.erp.lease_s + 1)
        counts = await drain(sessionmaker, h.settings, c, now=later, clock=lambda: later, sleep=no_sleep)
    finally:
        await c.close()
    assert counts["posted"] == 1 and h.fake.ledger("PD00000001") == 1


async def test_a_drainer_whose_lease_was_taken_over_stops_before_touching_the_erp(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker)
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "2")])
    async with sessionmaker() as s, s.begin():
        await enqueue_due(s, h.settings, "kingdee", NOW)
        await _claim(s, NOW, 10, "slow-drainer", timedelta(seconds=600))
        await s.execute(update(ErpPosting).values(claim_token=str(uuid.uuid4())))  # someone else holds it now
    c = h.connector()
    try:
        outcome = await _process(sessionmaker, h.settings, c, 1, "slow-drainer", NOW, lambda: NOW, no_sleep)
    finally:
        await c.close()
    assert outcome == "lost" and h.fake.saves == 0  # type: ignore[attr-defined]
    async with sessionmaker() as s:
        assert (await s.execute(select(ErpPosting.state))).scalar_one() == "posting"  # left to its owner


async def test_adjustments_wait_out_the_misslot_window(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker)
    h.settings = h.settings.model_copy(
        update={"reasons": h.settings.reasons.model_copy(update={"misslot_window_days": 7})}
    )
    made = NOW - timedelta(days=2)
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "2")], created_at=made)
    c = h.connector()
    try:
        counts = await drain(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW, sleep=no_sleep)
        assert counts["queued"] == 0
        async with sessionmaker() as s:
            assert await held(s, h.settings, NOW) == (1, made + timedelta(days=7))
        later = made + timedelta(days=7, minutes=1)
        counts = await drain(sessionmaker, h.settings, c, now=later, clock=lambda: later, sleep=no_sleep)
    finally:
        await c.close()
    assert counts["queued"] == 1 and counts["posted"] == 1


async def test_a_failure_nobody_can_be_told_about_is_still_recorded(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(User).values(active=False))
    await make_adjustments(sessionmaker, [("loss", "M001", "WH1", "A-02", "-1")])
    h.fake.refuse("物料已禁用")
    c = h.connector()
    try:
        assert (await drain(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW, sleep=no_sleep))[
            "failed"
        ] == 1
    finally:
        await c.close()
    async with sessionmaker() as s:
        assert (await s.execute(select(OutboxMessage))).scalars().all() == []
        [event] = (await s.execute(select(AuditEvent).where(AuditEvent.action == "failed"))).scalars().all()
        assert event.data["notified"] == 0 and "物料已禁用" in event.data["error"]
    assert await posted_states(sessionmaker) == ["failed"]


async def test_too_many_failed_attempts_fail_the_posting_and_tell_finance(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("kingdee", aiohttp_server, sessionmaker, max_attempts=3)
    await make_adjustments(sessionmaker, [("gain", "M000", "WH1", "A-01", "1")])
    h.fake.faults.inject("503", times=10_000)
    c = h.connector()
    try:
        _, totals = await drain_until_done(sessionmaker, h.settings, c, start=NOW)
    finally:
        await c.close()
    assert totals["retry"] == 2 and totals["failed"] == 1
    assert await posted_states(sessionmaker) == ["failed"]
    async with sessionmaker() as s:
        [msg] = (await s.execute(select(OutboxMessage))).scalars().all()
        assert "3 次尝试都没有成功" in msg.body["text"] and "HTTP 503" in msg.body["text"]


async def test_a_backlog_is_drained_in_one_run_batch_after_batch(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await ready("u8", aiohttp_server, sessionmaker, drain_batch=3)
    await make_adjustments(sessionmaker, [("gain", f"M00{i % 6}", "WH1", "A-01" if i % 2 == 0 else "A-02", "1")
                                          for i in range(8)])  # fmt: skip
    c = h.connector()
    try:
        counts = await c.write_back(sessionmaker, h.settings, now=NOW)
    finally:
        await c.close()
    assert counts["posted"] == 8 and counts["claimed"] == 8 and len(h.fake.applied) == 8


async def test_two_drainers_queueing_the_same_adjustments_at_once_queue_each_once(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    import asyncio

    h = await ready("kingdee", aiohttp_server, sessionmaker)
    await make_adjustments(
        sessionmaker, [("gain", "M000", "WH1", "A-01", "1"), ("loss", "M001", "WH1", "A-02", "-1")]
    )

    async def enqueue() -> int:
        async with sessionmaker() as s, s.begin():
            return await enqueue_due(s, h.settings, "kingdee", NOW)

    assert sorted(await asyncio.gather(enqueue(), enqueue())) in ([0, 2], [1, 1])
    async with sessionmaker() as s:
        assert len((await s.execute(select(ErpPosting))).scalars().all()) == 2


async def test_u8_picks_up_a_voucher_entered_late_with_an_earlier_date(
    aiohttp_server: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    h = await start("u8", aiohttp_server)
    seed_catalogue(h.fake)
    c = h.connector()
    try:
        assert (await sync(sessionmaker, h.settings, c, now=NOW, clock=lambda: NOW)).ok
        # keyed in after the sync, dated three days before the last voucher the cursor saw
        last = max(m.at for m in h.fake.movements)
        h.fake.add_movement("receipt", "M004", "WH1", "A-01", "6", at=last - timedelta(days=3),
                            entered=NOW + timedelta(minutes=3))  # fmt: skip
        later = NOW + timedelta(minutes=5)
        r = await sync(sessionmaker, h.settings, c, now=later, clock=lambda: later)
    finally:
        await c.close()
    assert r.ok and r.entities["movements"].created == 1
    from tests.integration.test_erp_sync import book

    assert (await book(sessionmaker))[("M004", "WH1", "A-01")] == h.fake.qty("M004", "WH1", "A-01")


async def test_an_unexpected_error_in_a_sync_is_recorded(
    tmp_path: Any, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from collections.abc import AsyncIterator

    from core.config import Settings
    from core.models import ErpSyncRun
    from integrations.erp.base import Page
    from integrations.erp.spreadsheet import SpreadsheetConnector

    class Broken(SpreadsheetConnector):  # a connector with a bug in it
        async def pull(self, entity: Entity, cursor: str | None) -> AsyncIterator[Page]:
            raise KeyError("FNumber")
            yield Page([], None)  # pragma: no cover

    settings = Settings()
    r = await sync(sessionmaker, settings, Broken(settings.erp, settings.tz), now=NOW, clock=lambda: NOW)
    assert r.error is not None and "KeyError" in r.error
    async with sessionmaker() as s:
        [run] = (await s.execute(select(ErpSyncRun))).scalars().all()
    assert not run.ok and "FNumber" in (run.error or "")
