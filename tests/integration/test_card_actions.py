"""Card buttons through the real dispatcher: signed payloads only, replies the card asked for (a rejection
reason, a review note), and the durable inbox (an acknowledged event whose process died is replayed once)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cards.payload import Approve, PickReason, Reject, SubmitReason
from bot.conversation import MemoryStore
from bot.dispatcher import Context, Dispatcher, Router
from bot.events import CardAction, Platform, Sender, TextMessage
from bot.flows import payload_key, sync_cards
from bot.handlers import actions, commands, counting
from core.config import Settings
from core.models import InboundSeen, OutboxMessage, User, Variance
from core.scheduling.service import plan_day
from core.variance import service as wf
from tests.clock import FixedClock, morning
from tests.integration.builders import PCT_TIERS, build_company

MONDAY = date(2026, 11, 30)
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SETTINGS = Settings(
    database_url="sqlite://", tolerance=PCT_TIERS, wecom={"corp_id": "c"}, server={"payload_secret": "k" * 20}
)
KEY = payload_key(SETTINGS)


def router() -> Router:
    return Router().include(commands.router, counting.router, actions.router, commands.fallback_router)


def dispatcher(sm: async_sessionmaker[AsyncSession], r: Router | None = None) -> Dispatcher:
    async def after(s: AsyncSession, trace: str) -> None:
        await sync_cards(s, SETTINGS, T0, trace)

    return Dispatcher(sm, SETTINGS, MemoryStore(), r or router(), after_handle=after, clock=FixedClock(T0))


async def variance_in_review(sm: async_sessionmaker[AsyncSession]) -> tuple[int, dict[str, User]]:
    """Counter 1 counts 7 where the book says 10; counter 2's blind recount agrees: the variance is in review."""
    async with sm() as s, s.begin():
        co = await build_company(s, items=6, counters=2)
        team = co.teams[0].id
        s.add_all([User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=team),
                   User(employee_no="F01", name="财务", roles=["finance"])])  # fmt: skip
        await s.flush()
        for u in (await s.execute(select(User))).scalars():
            u.wecom_userid = u.employee_no.lower()
        await plan_day(s, SETTINGS, MONDAY, now=morning(MONDAY))
        users = {u.employee_no: u for u in (await s.execute(select(User))).scalars()}
        c1 = users["WH1-E01"]
        task = (await wf.counter_tasks(s, c1.id, MONDAY))[0][0]
        r = await wf.record_count(
            s, SETTINGS, task_id=task.id, counter_id=c1.id, text="7", counted_at=T0, now=T0
        )
        assert r.recount_task is not None and r.variance is not None
        other = users["WH1-E02"]
        r2 = await wf.record_count(s, SETTINGS, task_id=r.recount_task.id, counter_id=other.id, text="7",
                                   counted_at=T0 + timedelta(minutes=5), now=T0 + timedelta(minutes=5))  # fmt: skip
        assert r2.variance is not None and r2.variance.state == "in_review"
        return r.variance.id, users


def press(
    user: str, payload: Any, n: int, form: dict[str, str] | None = None, issued: datetime = T0
) -> CardAction:
    packed = payload.pack(KEY, issued_at=int(issued.timestamp()))
    return CardAction(Platform.WECOM, f"wecom:card:{user}:{n}", Sender(Platform.WECOM, user), T0,
                      payload=packed, form=form or {}, card_ref=f"ref-{n}")  # fmt: skip


def say(user: str, text: str, n: int) -> TextMessage:
    return TextMessage(Platform.WECOM, f"wecom:msg:{n}", Sender(Platform.WECOM, user), T0, text=text)


async def last_text(sm: async_sessionmaker[AsyncSession], user: str) -> str:
    async with sm() as s:
        rows = (
            await s.execute(
                select(OutboxMessage).where(OutboxMessage.kind == "text").order_by(OutboxMessage.id)
            )
        ).scalars()
        return [r.body["text"] for r in rows if r.address.get("user_id") == user][-1]


async def run(d: Dispatcher, *events: Any) -> None:
    for e in events:
        assert await d.submit(e)
        await d.drain()


async def test_forged_and_expired_buttons_change_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, _ = await variance_in_review(sessionmaker)
    d = dispatcher(sessionmaker)
    tampered = press("wh1-s01", SubmitReason(vid), 1)
    tampered = CardAction(**{**{f: getattr(tampered, f) for f in ("platform", "dedup_key", "sender", "received_at")},
                             "payload": tampered.payload.replace(f"sr:{vid}:", f"sr:{vid + 1}:")})  # fmt: skip
    await run(d, tampered)
    assert "无法识别" in await last_text(sessionmaker, "wh1-s01")
    await run(d, press("wh1-s01", SubmitReason(vid), 2, issued=T0 - timedelta(days=8)))
    assert "已过期" in await last_text(sessionmaker, "wh1-s01")
    async with sessionmaker() as s:
        assert (await s.get(Variance, vid)).state == "in_review"  # type: ignore[union-attr]


async def test_review_note_and_rejection_reason_come_as_replies(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, _ = await variance_in_review(sessionmaker)
    d = dispatcher(sessionmaker)
    # "other" needs a note; WeCom's card has no note box, so the bot asks and takes the next reply
    form = {"reason": PickReason(vid, "other").pack(KEY, issued_at=int(T0.timestamp()))}
    await run(d, press("wh1-s01", SubmitReason(vid), 1, form))
    assert "需要说明" in await last_text(sessionmaker, "wh1-s01")
    await run(d, say("wh1-s01", "货架后面掉了两箱", 2))
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "pending_approval" and v.reason_note == "货架后面掉了两箱"
        # the approval card went to the other supervisor (not the reviewer, not the counters)
        to = sorted(
            r.address["user_id"]
            for r in (
                await s.execute(
                    select(OutboxMessage).where(OutboxMessage.subject == f"approval:{vid}:1:supervisor")
                )
            ).scalars()
        )
        assert to == ["s02"]
    # a counter pressing the (forwarded) approval card is refused by the core rules
    await run(d, press("wh1-e01", Approve(vid, 1), 3))
    assert "盘点" in await last_text(sessionmaker, "wh1-e01") or "不能" in await last_text(
        sessionmaker, "wh1-e01"
    )
    # 驳回 asks for the reason; "取消" gives up; then a real reason rejects
    await run(d, press("s02", Reject(vid, 1), 4))
    assert "驳回" in await last_text(sessionmaker, "s02") and "原因" in await last_text(sessionmaker, "s02")
    await run(d, say("s02", "取消", 5))
    async with sessionmaker() as s:
        assert (await s.get(Variance, vid)).state == "pending_approval"  # type: ignore[union-attr]
    await run(d, press("s02", Reject(vid, 1), 6), say("s02", "数量不可信，请重新安排盘点", 7))
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "rejected"
    assert "已驳回" in await last_text(sessionmaker, "s02")


async def test_acknowledged_event_is_replayed_once_after_a_crash(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, _ = await variance_in_review(sessionmaker)
    form = {"reason": PickReason(vid, "receiving").pack(KEY, issued_at=int(T0.timestamp()))}
    event = press("wh1-s01", SubmitReason(vid), 1, form)

    crashing = Router()

    @crashing.on(CardAction)
    async def boom(ctx: Context) -> bool:
        raise RuntimeError("the process died here")

    # the webhook acknowledged it (durably), then processing failed: nothing recorded, the event is kept
    d1 = dispatcher(sessionmaker, crashing)
    assert await d1.submit(event)
    await d1.drain()
    assert d1.stats["errors"] == 1
    async with sessionmaker() as s:
        seen = await s.get(InboundSeen, event.dedup_key)
        assert seen is not None and seen.processed_at is None and seen.event is not None
        assert (await s.get(Variance, vid)).state == "in_review"  # type: ignore[union-attr]

    # a platform retry is still a duplicate; a healthy process replays it, once, when it is old enough
    d2 = dispatcher(sessionmaker)
    assert not await d2.submit(event)
    assert (
        await d2.replay(now=T0 + timedelta(minutes=1)) == 0
    )  # too recent: its own process may still be on it
    later = T0 + timedelta(minutes=3)
    assert await d2.replay(now=later) == 1
    assert await d2.replay(now=later) == 0
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "pending_approval" and v.reason_code == "receiving"
        seen = await s.get(InboundSeen, event.dedup_key)
        assert seen is not None and seen.processed_at is not None and seen.event is None


async def test_a_step_nobody_may_decide_moves_up(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The only other supervisor is away: the supervisor step goes to the manager, not into a void."""
    vid, users = await variance_in_review(sessionmaker)
    async with sessionmaker() as s, s.begin():
        away = await s.get(User, users["S02"].id)
        assert away is not None
        away.active = False
        s.add(User(employee_no="M01", name="经理", roles=["manager"], wecom_userid="m01"))
    d = dispatcher(sessionmaker)
    form = {"reason": PickReason(vid, "receiving").pack(KEY, issued_at=int(T0.timestamp()))}
    await run(d, press("wh1-s01", SubmitReason(vid), 1, form))
    async with sessionmaker() as s:
        rows = (
            (await s.execute(select(OutboxMessage).where(OutboxMessage.subject.like(f"approval:{vid}:%"))))
            .scalars()
            .all()
        )
        assert [(r.subject, r.address["user_id"]) for r in rows] == [(f"approval:{vid}:1:manager", "m01")]
    await run(d, press("m01", Approve(vid, 1), 2))
    assert "已通过" in await last_text(sessionmaker, "m01")
