"""The outbox and inbound dedup on the suite's database, with an in-memory channel that records sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.channel import Address, ChannelError, SentRef
from bot.events import Platform
from bot.outbox import MAX_ATTEMPTS, SENDS_IN_FLIGHT, backoff, deliver_due, enqueue
from core.db import make_engine, make_sessionmaker
from core.models import OutboxMessage
from tests.fakes.recording import RecordingChannel

NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


TO = Address(Platform.WECOM, "zhangwei")


async def queue_texts(
    s: AsyncSession,
    prefix: str,
    n: int,
    to: Address | Callable[[int], Address] = TO,
    *,
    now: datetime = NOW,
    first: int = 0,
) -> None:
    """Text rows ``{prefix}{i}`` for i in ``first`` … ``first + n - 1``, each reading its own key; ``to`` is the
    recipient, or a function of i that gives it."""
    for i in range(first, first + n):
        key = f"{prefix}{i}"
        await enqueue(s, idempotency_key=key, to=to(i) if callable(to) else to, kind="text", body={"text": key},
                      now=now)  # fmt: skip


async def test_enqueue_is_transactional_and_idempotent(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s:
        await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "早上好"}, now=NOW)
        await s.rollback()  # the change that caused it failed: nothing is sent
    async with sessionmaker() as s, s.begin():
        assert await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "早上好"}, now=NOW)
        assert not await enqueue(s, idempotency_key="k1", to=TO, kind="text", body={"text": "again"}, now=NOW)
    ch = RecordingChannel()
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW))["sent"] == 1
    assert ch.sent == [("text", "k1", ("zhangwei", "早上好"))]
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(minutes=5)))["sent"] == 0


async def test_retry_backoff_then_success_and_permanent_failure(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="a", to=TO, kind="card", body={"card": {"x": 1}}, now=NOW)
        await enqueue(s, idempotency_key="b", to=TO, kind="text", body={"text": "hi"}, now=NOW)
    ch = RecordingChannel()
    ch.failures = [ChannelError("rate limited", code=45009, retryable=True, retry_after=30),
                   ChannelError("bad user", code=40003)]  # fmt: skip
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW)
    assert counts == {"sent": 0, "retry": 1, "failed": 1, "deferred": 0}
    async with sessionmaker() as s:
        rows = {r.idempotency_key: r for r in (await s.execute(select(OutboxMessage))).scalars()}
    assert rows["a"].state == "pending" and rows["a"].next_attempt_at == NOW + timedelta(seconds=30)
    assert rows["b"].state == "failed" and "40003" in (rows["b"].last_error or "")
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=10)))[
        "sent"
    ] == 0  # not yet
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=31)))["sent"] == 1
    async with sessionmaker() as s:
        sent = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.idempotency_key == "a"))
        ).scalar_one()
    assert sent.state == "sent" and sent.sent_ref and sent.sent_ref["update_token"] == "rc1"


async def test_gives_up_after_max_attempts(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="z", to=TO, kind="text", body={"text": "x"}, now=NOW)
    ch = RecordingChannel()
    t = NOW
    for _ in range(MAX_ATTEMPTS):
        ch.failures = [ChannelError("timeout", retryable=True)]
        await deliver_due(sessionmaker, {"wecom": ch}, now=t)
        t += timedelta(hours=1)
    async with sessionmaker() as s:
        row = (await s.execute(select(OutboxMessage))).scalar_one()
    assert row.state == "failed" and row.attempts == MAX_ATTEMPTS


async def test_crashed_worker_lease_is_taken_over(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="c", to=TO, kind="text", body={"text": "x"}, now=NOW)
        row = (await s.execute(select(OutboxMessage))).scalar_one()
        row.state, row.locked_until = "sending", NOW + timedelta(seconds=60)  # a worker died mid-send
    ch = RecordingChannel()
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=30)))["sent"] == 0
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=61)))["sent"] == 1


async def test_rate_limit_per_user_defers(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "r", 32)
    ch = RecordingChannel()
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=100)
    assert counts["sent"] == 30 and counts["deferred"] == 2
    assert (await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=61), limit=100))[
        "sent"
    ] == 2


async def worker(
    sm: async_sessionmaker[AsyncSession], ch: RecordingChannel, *, passes: int, limit: int
) -> None:
    """An outbox worker: ``passes`` passes of at most ``limit`` rows, side by side with others."""
    for _ in range(passes):
        try:
            await deliver_due(sm, {"wecom": ch}, now=NOW, limit=limit)
        except Exception as exc:  # SQLite: a concurrent writer may find the file busy; try again
            if "locked" not in str(exc):
                raise
        await asyncio.sleep(0)


async def test_two_workers_send_each_message_once(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "w", 20, to=lambda i: Address(Platform.WECOM, f"u{i}"))
    ch = RecordingChannel()
    await asyncio.gather(*(worker(sessionmaker, ch, passes=5, limit=4) for _ in range(2)))
    keys = [k for _, k, _ in ch.sent]
    assert sorted(keys) == sorted(f"w{i}" for i in range(20)) and len(keys) == len(set(keys))


async def test_workers_of_two_processes_send_each_message_once(
    database_url: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Two engines (as two server processes would have), two workers each, claiming in bulk side by side."""
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "p", 60, to=lambda i: Address(Platform.WECOM, f"u{i % 12}"))
    other = make_engine(database_url)
    ch = ConcurrencyChannel(delay=lambda text: 0.001)
    try:
        makers = [sessionmaker, make_sessionmaker(other)]
        await asyncio.gather(*(worker(makers[n % 2], ch, passes=30, limit=7) for n in range(4)))
    finally:
        await other.dispose()
    keys = [k for _, k, _ in ch.sent]
    assert sorted(keys) == sorted(f"p{i}" for i in range(60)) and len(keys) == len(set(keys))
    assert all(state.state == "sent" for state in (await _states(sessionmaker)).values())


class ConcurrencyChannel(RecordingChannel):
    """Records, per recipient, the order of sends and how many were in flight at once (overall and per
    recipient). Each send waits ``delay(text)`` seconds, or for ``gate`` when one is set."""

    def __init__(self, delay: Any = lambda text: 0.005) -> None:
        super().__init__()
        self.delay = delay
        self.gate: asyncio.Event | None = None
        self.expected = 0  # with a gate: open it when this many sends are waiting
        self.in_flight = 0
        self.peak = 0
        self.per_user_in_flight: dict[str, int] = {}
        self.per_user_peak: dict[str, int] = {}
        self.order: dict[str, list[str]] = {}
        self.fail: dict[str, ChannelError] = {}

    async def send_text(self, to: Address, text: str, *, idempotency_key: str) -> SentRef:
        who = to.user_id or to.chat_id or ""
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.per_user_in_flight[who] = self.per_user_in_flight.get(who, 0) + 1
        self.per_user_peak[who] = max(self.per_user_peak.get(who, 0), self.per_user_in_flight[who])
        try:
            if self.gate is not None:
                if self.in_flight >= self.expected:
                    self.gate.set()
                with contextlib.suppress(TimeoutError):  # sends one at a time would never open it
                    await asyncio.wait_for(self.gate.wait(), 0.5)
            else:
                await asyncio.sleep(self.delay(text))
            if idempotency_key in self.fail:
                raise self.fail[idempotency_key]
            self.order.setdefault(who, []).append(text)
            self.sent.append(("text", idempotency_key, (who, text)))
            return SentRef(Platform.WECOM, f"m-{idempotency_key}", update_token=f"t-{idempotency_key}")
        finally:
            self.in_flight -= 1
            self.per_user_in_flight[who] -= 1


async def _states(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, OutboxMessage]:
    async with sessionmaker() as s:
        return {r.idempotency_key: r for r in (await s.execute(select(OutboxMessage))).scalars()}


async def test_one_recipient_in_order_recipients_concurrently(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    users = ["anna", "bo", "chen"]
    async with sessionmaker() as s, s.begin():
        for i in range(5):  # interleaved: anna 0, bo 0, chen 0, anna 1, ...
            for u in users:
                await queue_texts(s, u, 1, to=Address(Platform.WECOM, u), first=i)
    # earlier messages take longer to send: sending one recipient's rows side by side would reorder them
    ch = ConcurrencyChannel(delay=lambda text: 0.004 * (5 - int(text[-1])))
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW)
    assert counts == {"sent": 15, "retry": 0, "failed": 0, "deferred": 0}
    assert ch.order == {u: [f"{u}{i}" for i in range(5)] for u in users}
    assert ch.per_user_peak == dict.fromkeys(users, 1)  # one at a time per recipient
    assert ch.peak == len(users)  # but the recipients overlap


async def test_sends_in_flight_are_capped(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "c", 40, to=lambda i: Address(Platform.WECOM, f"u{i}"))
    ch = ConcurrencyChannel(delay=lambda text: 0.02)
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=100)
    assert counts["sent"] == 40 and len({k for _, k, _ in ch.sent}) == 40
    assert ch.peak == SENDS_IN_FLIGHT == 16


async def test_a_pass_records_a_mix_of_outcomes_in_one_batch(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "m", 10, to=lambda i: Address(Platform.WECOM, f"u{i}"))
        await enqueue(s, idempotency_key="fs", to=Address(Platform.FEISHU, "ou_1"), kind="text",
                      body={"text": "x"}, now=NOW)  # fmt: skip
        # m9 has been tried before: one more retryable failure is its last
        await s.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key == "m9")
                        .values(attempts=MAX_ATTEMPTS - 1))  # fmt: skip
    ch = ConcurrencyChannel()
    ch.gate, ch.expected = asyncio.Event(), 10  # every send finishes at the same moment
    ch.fail = {
        "m1": ChannelError("rate limited", code=45009, retryable=True, retry_after=30),
        "m2": ChannelError("timeout", retryable=True),
        "m3": ChannelError("invalid user", code=40003),
        "m9": ChannelError("timeout", retryable=True),
    }
    commits = 0

    def count(conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    try:
        counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW)
    finally:
        event.remove(engine.sync_engine, "commit", count)
    assert counts == {"sent": 6, "retry": 2, "failed": 2, "deferred": 0}  # fs is not this process's to send
    # the claim is one transaction; ten outcomes that arrive together need at most two more (one per row
    # would be ten)
    assert commits <= 3
    rows = await _states(sessionmaker)
    for k in ("m0", "m4", "m5", "m6", "m7", "m8"):
        r = rows[k]
        assert (r.state, r.attempts, r.sent_at, r.locked_until) == ("sent", 1, NOW, None)
        assert r.sent_ref == {"platform": "wecom", "message_id": f"m-{k}", "card_ref": None,
                              "update_token": f"t-{k}", "sent_at": None}  # fmt: skip
        assert r.last_error is None
    assert (rows["m1"].state, rows["m1"].attempts) == ("pending", 1)
    assert (
        rows["m1"].next_attempt_at == NOW + timedelta(seconds=30)
        and rows["m1"].last_error == "45009: rate limited"
    )
    assert (rows["m2"].state, rows["m2"].attempts, rows["m2"].last_error) == ("pending", 1, "timeout")
    assert rows["m2"].next_attempt_at == NOW + backoff(1, None) == NOW + timedelta(seconds=1)
    assert (rows["m3"].state, rows["m3"].attempts, rows["m3"].last_error) == (
        "failed",
        1,
        "40003: invalid user",
    )
    assert (rows["m9"].state, rows["m9"].attempts, rows["m9"].last_error) == (
        "failed",
        MAX_ATTEMPTS,
        "timeout",
    )
    assert (rows["fs"].state, rows["fs"].attempts, rows["fs"].last_error) == ("pending", 0, None)  # it waits
    assert all(r.sent_at is None and r.sent_ref is None for k, r in rows.items() if r.state != "sent")
    assert all(r.locked_until is None for r in rows.values())  # nothing is left claimed


async def test_rate_cap_over_a_pass_defers_the_rest_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    backlog = NOW - timedelta(minutes=10)  # queued long before they could go (an outage, a burst)
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "z", 40, now=backlog)
        await queue_texts(s, "o", 3, to=Address(Platform.WECOM, "other"), now=backlog)  # not held up by z
    ch = ConcurrencyChannel(delay=lambda text: 0)
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=100)
    assert counts == {"sent": 33, "retry": 0, "failed": 0, "deferred": 10}
    assert ch.order["zhangwei"] == [f"z{i}" for i in range(30)]
    assert ch.order["other"] == ["o0", "o1", "o2"]
    rows = await _states(sessionmaker)
    deferred = {k for k, r in rows.items() if r.state == "pending"}
    assert deferred == {f"z{i}" for i in range(30, 40)}
    assert all(
        rows[k].next_attempt_at == NOW + timedelta(seconds=60) and rows[k].attempts == 0 for k in deferred
    )
    # half a minute later, a new message: the 30 sent at NOW still count (queued ten minutes before)
    async with sessionmaker() as s, s.begin():
        await enqueue(s, idempotency_key="z40", to=TO, kind="text", body={"text": "z40"},
                      now=NOW + timedelta(seconds=30))  # fmt: skip
    assert await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=30), limit=100) == {
        "sent": 0, "retry": 0, "failed": 0, "deferred": 1}  # fmt: skip
    assert await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=59), limit=100) == {
        "sent": 0, "retry": 0, "failed": 0, "deferred": 0}  # fmt: skip
    # after the minute, the rest, still in order
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=61), limit=100)
    assert counts == {"sent": 10, "retry": 0, "failed": 0, "deferred": 0}
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW + timedelta(seconds=91), limit=100)
    assert counts == {"sent": 1, "retry": 0, "failed": 0, "deferred": 0}
    assert ch.order["zhangwei"] == [f"z{i}" for i in range(41)]


async def test_rate_cap_counts_each_users_sends_of_the_last_minute(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The cap starts from what was sent in the last minute (one grouped query), user by user."""
    async with sessionmaker() as s, s.begin():
        # anna: 28 sent half a minute ago; bo: 30 sent, but more than a minute ago; anna on Feishu is
        # someone else, with a bigger cap
        await queue_texts(s, "old-a", 28, to=Address(Platform.WECOM, "anna"), now=NOW - timedelta(seconds=40))
        await queue_texts(s, "old-b", 30, to=Address(Platform.WECOM, "bo"), now=NOW - timedelta(seconds=90))
        await queue_texts(
            s, "old-f", 30, to=Address(Platform.FEISHU, "anna"), now=NOW - timedelta(seconds=40)
        )
        await s.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key.like("old-a%"))
                        .values(state="sent", sent_at=NOW - timedelta(seconds=30)))  # fmt: skip
        await s.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key.like("old-f%"))
                        .values(state="sent", sent_at=NOW - timedelta(seconds=30)))  # fmt: skip
        await s.execute(update(OutboxMessage).where(OutboxMessage.idempotency_key.like("old-b%"))
                        .values(state="sent", sent_at=NOW - timedelta(seconds=61)))  # fmt: skip
        for who in ("anna", "bo"):
            await queue_texts(s, who, 5, to=Address(Platform.WECOM, who))
        await queue_texts(s, "grp", 5, to=Address(Platform.WECOM, chat_id="g1"))
    ch = ConcurrencyChannel(delay=lambda text: 0)
    counts = await deliver_due(sessionmaker, {"wecom": ch}, now=NOW, limit=100)
    assert counts == {"sent": 12, "retry": 0, "failed": 0, "deferred": 3}
    assert ch.order == {"anna": ["anna0", "anna1"], "bo": [f"bo{i}" for i in range(5)],
                        "g1": [f"grp{i}" for i in range(5)]}  # fmt: skip


async def test_messages_for_an_unconfigured_platform_wait_and_go_once_it_is_configured(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: Any
) -> None:
    """A server started once without its [wecom] section must not fail the WeCom queue: the rows wait."""
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "w", 3)
        await enqueue(s, idempotency_key="f0", to=Address(Platform.FEISHU, "ou_1"), kind="text",
                      body={"text": "f0"}, now=NOW)  # fmt: skip
    feishu = RecordingChannel(Platform.FEISHU)
    with caplog.at_level("WARNING", logger="pandian.outbox"):
        for minutes in (0, 1, 30, 60 * 24):  # a day without WeCom
            counts = await deliver_due(sessionmaker, {"feishu": feishu}, now=NOW + timedelta(minutes=minutes))
            assert counts["failed"] == 0
    assert [k for _, k, _ in feishu.sent] == ["f0"]
    rows = await _states(sessionmaker)
    assert all((rows[f"w{i}"].state, rows[f"w{i}"].attempts) == ("pending", 0) for i in range(3))
    waiting = [r.getMessage() for r in caplog.records if "wait" in r.getMessage()]
    assert waiting and "3 message(s) for wecom wait" in waiting[0] and "[wecom]" in waiting[0]
    assert len(waiting) == 3  # at the first pass, then every ten minutes at most: not once a second
    wecom = RecordingChannel()
    counts = await deliver_due(
        sessionmaker, {"wecom": wecom, "feishu": feishu}, now=NOW + timedelta(days=1, minutes=1)
    )
    assert counts["sent"] == 3 and [k for _, k, _ in wecom.sent] == ["w0", "w1", "w2"]


async def test_a_failing_delivery_logs_its_cause_at_warning_without_credentials(
    sessionmaker: async_sessionmaker[AsyncSession], caplog: Any
) -> None:
    async with sessionmaker() as s, s.begin():
        await queue_texts(s, "x", 2)
    ch = RecordingChannel()
    leak = "/cgi-bin/message/send?access_token=TOKEN-abc123&debug=1: HTTP 503"
    with caplog.at_level("WARNING", logger="pandian.outbox"):
        t = NOW
        for _ in range(3):
            ch.failures = [ChannelError(leak, code=503, retryable=True)] * 2
            counts = await deliver_due(sessionmaker, {"wecom": ch}, now=t)
            assert counts["retry"] == 2
            t += timedelta(hours=1)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3  # one line per pass and cause, not one per message
    said = warnings[-1].getMessage()
    assert "2 message(s) to wecom not sent (will retry)" in said and "HTTP 503" in said
    assert "access_token=***" in said
    rows = await _states(sessionmaker)
    assert all("access_token=***" in (r.last_error or "") for r in rows.values())
    assert "TOKEN-abc123" not in caplog.text and all(
        "TOKEN-abc123" not in (r.last_error or "") for r in rows.values()
    )
