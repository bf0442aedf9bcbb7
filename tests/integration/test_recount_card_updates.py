"""A blind recount card is kept true after the recount task closes: through the real dispatcher and routers,
``sync_cards`` after every handled event, and the outbox delivering to a recording channel per platform.

Counted (on the card, by a chat reply, by ``/count`` or from the CLI), or cancelled (the first count was
undone), every sent copy of the recount card is updated in place to a final card with no buttons that says
what happened, and still shows no quantity: not the book's, not the first count's, not the recount's. A copy
still waiting in the outbox when the task closes is cancelled, never sent.

The closed card's golden files are in tests/golden/cards/recount_closed (rewrite them with
PANDIAN_UPDATE_GOLDEN=1 and read the diff).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cards import recount
from bot.cards.model import Lang
from bot.cards.recount import RecountClosed, RecountRequest
from bot.cards.render import dingtalk, feishu, wecom
from bot.cards.render.common import Signer
from bot.cards.text import ItemAt
from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import CardAction, Platform, Sender, TextMessage
from bot.flows import sync_cards
from bot.handlers import actions, commands, counting
from bot.notify import _IDS
from bot.outbox import deliver_due
from core.config import Settings
from core.enums import TaskReason, TaskStatus
from core.models import CountTask, ItemLocation, OutboxMessage, User
from core.scheduling.service import plan_day
from core.variance import service as wf
from tests.clock import morning
from tests.fakes.recording import RecordingChannel
from tests.golden_files import assert_golden, golden_name
from tests.integration.builders import build_company

MONDAY = date(2026, 11, 30)
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # 10:00 in the warehouse
BOOK, FIRST, RECOUNT = "4321", "2468", "1357"  # quantities no card about the recount may show
SETTINGS = Settings(
    database_url="sqlite://",
    wecom={"corp_id": "ww_test"},
    feishu={"app_id": "cli_test"},
    dingtalk={"app_key": "ding_test"},
    server={"payload_secret": "k" * 20},
)
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cards" / "recount_closed"


class Flow:
    """The company on one platform: two counters and a supervisor, their day planned, a dispatcher running
    ``sync_cards`` after each event, and the outbox delivering to a recording channel."""

    def __init__(self, sm: async_sessionmaker[AsyncSession], platform: Platform) -> None:
        self.sm, self.platform, self.n = sm, platform, 0
        self.channel = RecordingChannel(platform)
        self.at = T0

        async def after(s: AsyncSession, trace: str) -> None:
            await sync_cards(s, SETTINGS, self.at, trace)

        router = Router().include(commands.router, counting.router, actions.router, commands.fallback_router)
        self.d = Dispatcher(sm, SETTINGS, MemoryStore(), router, after_handle=after, clock=self)
        self.ids: dict[str, str] = {}
        self.task_id = 0

    def now(self) -> datetime:
        """The dispatcher's clock: the flow's time (``at``)."""
        return self.at

    async def set_up(self, *, recounter_locale: str | None = None) -> None:
        async with self.sm() as s, s.begin():
            co = await build_company(s, items=6, counters=2)
            for u in co.users:
                setattr(u, _IDS[self.platform], u.employee_no.lower())
                self.ids[u.employee_no] = u.employee_no.lower()
                if u.employee_no == "WH1-E02":
                    u.locale = recounter_locale
            await plan_day(s, SETTINGS, MONDAY, now=morning(MONDAY))
            first = next(u for u in co.users if u.employee_no == "WH1-E01")
            task = (await wf.counter_tasks(s, first.id, MONDAY))[0][0]
            il = await s.get(ItemLocation, task.item_location_id)
            assert il is not None
            il.qty = Decimal(BOOK)  # a book quantity no card may show
            self.task_id = task.id

    def _next(self) -> tuple[str, datetime]:
        self.n += 1
        self.at = T0 + timedelta(seconds=self.n)
        return f"{self.platform.value}:{self.n}", self.at

    async def say(self, who: str, text: str) -> None:
        key, at = self._next()
        sender = Sender(self.platform, self.ids[who])
        assert await self.d.submit(TextMessage(self.platform, key, sender, at, text=text))
        await self.d.drain()
        assert self.d.stats["errors"] == 0

    async def press(
        self, who: str, card: dict[str, Any], label: str, *, update_token: str | None = None
    ) -> None:
        key, at = self._next()
        sender = Sender(self.platform, self.ids[who])
        event = CardAction(self.platform, key, sender, at, payload=button(self.platform, card, label),
                           card_ref=card.get("task_id") or card.get("ref"), update_token=update_token)  # fmt: skip
        assert await self.d.submit(event)
        await self.d.drain()
        assert self.d.stats["errors"] == 0

    async def deliver(self) -> dict[str, int]:
        return await deliver_due(
            self.sm, {self.platform.value: self.channel}, now=self.at + timedelta(seconds=1)
        )

    async def recount_task(self) -> CountTask:
        async with self.sm() as s:
            return (
                await s.execute(select(CountTask).where(CountTask.reason == TaskReason.RECOUNT))
            ).scalar_one()

    async def rows(self, subject: str) -> list[OutboxMessage]:
        async with self.sm() as s:
            stmt = select(OutboxMessage).where(OutboxMessage.subject == subject).order_by(OutboxMessage.id)
            return list((await s.execute(stmt)).scalars())

    async def name(self, employee_no: str) -> str:
        async with self.sm() as s:
            return (await s.execute(select(User.name).where(User.employee_no == employee_no))).scalar_one()

    async def first_count(self) -> CountTask:
        """WH1-E01 counts the line far off the book: a blind recount goes to WH1-E02."""
        await self.say("WH1-E01", f"/盘点 {self.task_id} {FIRST}")
        rc = await self.recount_task()
        assert rc.status == TaskStatus.OPEN and rc.parent_task_id == self.task_id
        async with self.sm() as s:
            assignee = await s.get(User, rc.assignee_id)
            assert assignee is not None and assignee.employee_no == "WH1-E02"
        return rc


# ---------------------------------------------------------------------------------------- card reading


def button(platform: Platform, card: dict[str, Any], label: str) -> str:
    """The packed payload of the button labelled ``label`` on a rendered card, as a press sends it."""
    if platform is Platform.WECOM:
        return next(b["key"] for b in card["button_list"] if b["text"] == label)
    if platform is Platform.DINGTALK:
        return next(b["value"] for b in json.loads(card["buttons"]) if b["label"] == label)
    return next(
        b["behaviors"][0]["value"]["p"] for b in _feishu_buttons(card) if b["text"]["content"] == label
    )


def _feishu_buttons(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if node.get("tag") == "button" else []
        return found + [b for v in node.values() for b in _feishu_buttons(v)]
    if isinstance(node, list):
        return [b for v in node for b in _feishu_buttons(v)]
    return []


def buttons_on(platform: Platform, card: dict[str, Any]) -> int:
    if platform is Platform.WECOM:
        return len(card["button_list"])
    if platform is Platform.DINGTALK:
        assert card["has_buttons"] == ("true" if json.loads(card["buttons"]) else "false")
        return len(json.loads(card["buttons"]))
    return len(_feishu_buttons(card))


def text_of(card: dict[str, Any]) -> str:
    return json.dumps(card, ensure_ascii=False)


def assert_blind(card: dict[str, Any]) -> None:
    text = text_of(card)
    for q in (BOOK, FIRST, RECOUNT):
        assert q not in text, (q, text)
    for word in ("账面", "初盘", "差异", "Book", "book", "First count", "Difference"):
        assert word not in text, (word, text)


PLATFORMS = [Platform.WECOM, Platform.FEISHU, Platform.DINGTALK]


async def recount_card_sent(
    sessionmaker: async_sessionmaker[AsyncSession], platform: Platform
) -> tuple[Flow, CountTask, dict[str, Any]]:
    """The company on ``platform``, a first count far off the book, and the blind recount card delivered."""
    flow = Flow(sessionmaker, platform)
    await flow.set_up()
    rc = await flow.first_count()
    await flow.deliver()
    (card,) = flow.channel.cards(f"recount:{rc.id}")
    return flow, rc, card


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.value)
async def test_recount_counted_on_the_card_updates_the_card_in_place(
    sessionmaker: async_sessionmaker[AsyncSession], platform: Platform
) -> None:
    flow, rc, card = await recount_card_sent(sessionmaker, platform)
    assert buttons_on(platform, card) == 2 and "开始复盘" in text_of(card)
    (row,) = await flow.rows(f"recount:{rc.id}")
    assert row.state == "sent" and row.sent_ref is not None

    # pressing 开始复盘 does not close the task: the card keeps its buttons
    await flow.press("WH1-E02", card, "开始复盘")
    await flow.deliver()
    assert flow.channel.updates() == []

    # the recount is counted by the chat reply the card asked for: the card is updated in place
    await flow.say("WH1-E02", RECOUNT)
    assert (await flow.recount_task()).status == TaskStatus.DONE
    await flow.deliver()
    ((message_id, updated),) = flow.channel.updates()
    assert message_id == row.sent_ref["message_id"]  # the copy that was sent, not a new message
    assert buttons_on(platform, updated) == 0
    text = text_of(updated)
    assert "已复盘 · 数量已记录" in text and f"{await flow.name('WH1-E02')} 于 2026-11-30 10:00 记录" in text
    assert "开始复盘" not in text and "无法找到" not in text
    assert_blind(updated)
    if platform is Platform.WECOM:
        assert updated["task_id"] == card["task_id"]  # WeCom replaces the card by its task_id
    rows = await flow.rows(f"recount:{rc.id}")
    assert [(r.kind, r.state, r.idempotency_key) for r in rows] == [
        ("card", "sent", f"recount:{rc.id}"),
        ("update", "sent", f"upd:{row.id}"),
    ]

    # later events do not update it again
    await flow.say("WH1-E01", "/任务")
    await flow.deliver()
    assert len(flow.channel.updates()) == 1


async def test_the_press_code_is_what_updates_a_wecom_recount_card(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """WeCom gives a fresh single-use ResponseCode with each press (valid 72 h); the card's update must use it,
    not the code from the original send."""
    flow, _rc, card = await recount_card_sent(sessionmaker, Platform.WECOM)
    await flow.press("WH1-E02", card, "开始复盘", update_token="code-from-the-press")
    await flow.say("WH1-E02", RECOUNT)
    await flow.deliver()
    assert flow.channel.update_tokens == ["code-from-the-press"]


async def test_cannot_find_on_the_card_closes_it_as_not_found(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    flow, _rc, card = await recount_card_sent(sessionmaker, Platform.WECOM)
    await flow.press("WH1-E02", card, "无法找到")
    await flow.deliver()
    ((_, updated),) = flow.channel.updates()
    assert updated["button_list"] == [] and updated["task_id"] == card["task_id"]
    assert updated["main_title"]["title"] == "已复盘"
    assert "已复盘 · 记录为无法找到" in updated["sub_title_text"]
    assert_blind(updated)


async def test_recount_from_the_cli_updates_the_card_in_the_counters_language(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The CLI records the count in its own transaction; the next ``sync_cards`` (the server's upkeep loop)
    finds the closed task and updates the card, in English for a counter whose locale is English."""
    flow = Flow(sessionmaker, Platform.FEISHU)
    await flow.set_up(recounter_locale="en-US")
    rc = await flow.first_count()
    await flow.deliver()
    (card,) = flow.channel.cards(f"recount:{rc.id}")
    assert "Recount request" in text_of(card)
    async with sessionmaker() as s, s.begin():
        assert rc.assignee_id is not None
        await wf.record_count(s, SETTINGS, task_id=rc.id, counter_id=rc.assignee_id, text=RECOUNT,
                              counted_at=T0 + timedelta(minutes=5), now=T0 + timedelta(minutes=5))  # fmt: skip
    await flow.deliver()
    assert flow.channel.updates() == []  # nothing happens until cards are synced
    flow.at = T0 + timedelta(minutes=6)
    async with sessionmaker() as s, s.begin():
        done = await sync_cards(s, SETTINGS, flow.at)
    assert done.updated == 1
    await flow.deliver()
    ((_, updated),) = flow.channel.updates()
    assert buttons_on(Platform.FEISHU, updated) == 0
    assert updated["header"]["title"]["content"] == "Recounted"
    assert "Recounted · quantity recorded" in text_of(updated)
    assert "Recorded by 盘点员2 at 2026-11-30 10:05" in text_of(updated)  # warehouse time
    assert_blind(updated)


async def test_a_card_older_than_card_max_age_is_left_alone(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A recount closed long after its card went out (its buttons are refused by now, and WeCom's update codes
    last 72 h): no update is queued for that old copy."""
    flow = Flow(sessionmaker, Platform.WECOM)
    await flow.set_up()
    rc = await flow.first_count()
    await flow.deliver()
    assert flow.channel.cards(f"recount:{rc.id}")
    async with sessionmaker() as s, s.begin():
        assert rc.assignee_id is not None
        await wf.record_count(s, SETTINGS, task_id=rc.id, counter_id=rc.assignee_id, text=RECOUNT,
                              counted_at=T0 + timedelta(days=8), now=T0 + timedelta(days=8))  # fmt: skip
    async with sessionmaker() as s, s.begin():
        done = await sync_cards(
            s, SETTINGS, T0 + timedelta(days=SETTINGS.server.card_max_age_days, minutes=1)
        )
    assert done.updated == 0 and done.cancelled == 0
    async with sessionmaker() as s, s.begin():  # the same close seen within the window would update it
        assert (await sync_cards(s, SETTINGS, T0 + timedelta(days=1))).updated == 1


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.value)
async def test_undo_of_the_first_count_cancels_the_recount_card(
    sessionmaker: async_sessionmaker[AsyncSession], platform: Platform
) -> None:
    flow, rc, card = await recount_card_sent(sessionmaker, platform)
    (row,) = await flow.rows(f"recount:{rc.id}")
    assert row.state == "sent" and row.sent_ref is not None

    await flow.say("WH1-E01", "撤销")
    assert (await flow.recount_task()).status == TaskStatus.CANCELLED
    await flow.deliver()
    ((message_id, updated),) = flow.channel.updates()
    assert message_id == row.sent_ref["message_id"]
    assert buttons_on(platform, updated) == 0
    text = text_of(updated)
    assert "复盘已取消" in text and "已取消 · 无需复盘" in text and "已复盘" not in text
    assert_blind(updated)
    # the counter is also told in the chat (bot.handlers.counting), and the card cannot start the recount
    assert any(k == "text" and "已取消" in body[1] for k, _, body in flow.channel.sent)
    await flow.press("WH1-E02", card, "开始复盘")
    assert (await flow.recount_task()).status == TaskStatus.CANCELLED


@pytest.mark.parametrize("closed_by", ["count", "undo"])
async def test_a_recount_card_still_queued_when_the_task_closes_is_cancelled_not_sent(
    sessionmaker: async_sessionmaker[AsyncSession], closed_by: str
) -> None:
    flow = Flow(sessionmaker, Platform.WECOM)
    await flow.set_up()
    rc = await flow.first_count()
    (row,) = await flow.rows(f"recount:{rc.id}")
    assert row.state == "pending"  # queued; the outbox has not run yet

    if closed_by == "count":
        await flow.say("WH1-E02", f"/盘点 {rc.id} {RECOUNT}")
        assert (await flow.recount_task()).status == TaskStatus.DONE
    else:
        await flow.say("WH1-E01", "撤销")
        assert (await flow.recount_task()).status == TaskStatus.CANCELLED

    rows = await flow.rows(f"recount:{rc.id}")
    assert [(r.kind, r.state, r.last_error) for r in rows] == [
        ("card", "cancelled", "overtaken before it was sent")
    ]
    await flow.deliver()
    assert flow.channel.cards(f"recount:{rc.id}") == []  # never sent
    assert flow.channel.updates() == []  # and nothing to update
    await flow.say("WH1-E01", "/任务")  # a later sync changes nothing
    await flow.deliver()
    assert [r.state for r in await flow.rows(f"recount:{rc.id}")] == ["cancelled"]
    assert flow.channel.cards(f"recount:{rc.id}") == []


# --------------------------------------------------------------------------------------- golden files

COKE = ItemAt(location="A-01-03", sku="8801-COKE", name="可口可乐", spec="330ml", unit="罐")
RENDERERS = {"wecom": wecom.render, "feishu": feishu.render, "dingtalk": dingtalk.render}
SIGNER = Signer(b"pandian-test-key-0123456789abcdef", issued_at=1717230000)


def _closed(name: str, lang: Lang) -> Any:
    data = RecountRequest(1077, COKE, due=date(2024, 6, 2))
    if name == "recount_counted":
        return recount.closed(data, outcome=RecountClosed.COUNTED, by="李四", at=datetime(2024, 6, 1, 10, 30),
                              lang=lang, ref="recount-1077")  # fmt: skip
    return recount.closed(data, outcome=RecountClosed.CANCELLED, at=datetime(2024, 6, 1, 11, 5), lang=lang,
                          ref="recount-1077")  # fmt: skip


GOLDEN_CASES = [
    (name, lang, platform)
    for name in ("recount_counted", "recount_cancelled")
    for lang in ("zh", "en")
    for platform in RENDERERS
]


@pytest.mark.parametrize(("name", "lang", "platform"), GOLDEN_CASES)
def test_golden_closed_recount_cards(name: str, lang: Lang, platform: str) -> None:
    out = RENDERERS[platform](_closed(name, lang), lang=lang, signer=SIGNER)
    assert_golden(GOLDEN, name, lang, platform, out)
    assert buttons_on(Platform(platform), out) == 0
    assert_blind(out)


def test_no_stale_closed_recount_golden_files() -> None:
    expected = {golden_name(n, lang, p) for n, lang, p in GOLDEN_CASES}
    assert {p.name for p in GOLDEN.glob("*.json")} == expected
