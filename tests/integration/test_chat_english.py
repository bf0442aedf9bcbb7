"""Chat replies in the reader's language, through a real Dispatcher on the suite's database: a user whose
locale is English reads English, everyone else the Chinese the other tests pin down."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import Platform, Sender, TextMessage
from bot.handlers import commands, counting
from bot.i18n import bilingual
from bot.walk import open_walk
from core.config import Settings
from core.models import CountEntry, CountTask, Item, Location, OutboxMessage, User
from core.scheduling.service import plan_day
from tests.clock import FixedClock, morning
from tests.integration.builders import build_company
from tests.integration.chat import ChatBot

DAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SETTINGS = Settings(database_url="sqlite://", wecom={"corp_id": "ww_test"})  # WeCom on: notices reach people
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# Chinese that comes from the data (builders.py), not from the bot: item names, the unit, team and warehouse
DATA_ZH = re.compile(r"物料\d+|个|WH\d? 盘点组|WH\d? 仓|盘点员\d+|主管")


def english(text: str) -> str:
    """The reply, asserted to hold no Chinese of the bot's own (names from the data may be Chinese)."""
    stray = CJK.findall(DATA_ZH.sub("", text))
    assert not stray, f"Chinese in an English reply: {stray!r} in {text!r}"
    return text


class Bot(ChatBot):
    """The shared chat (tests.integration.chat); ``say`` gives the texts of the answer."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings = SETTINGS, name: str = "msg"
    ) -> None:
        super().__init__(sessionmaker, settings, NOW, name=name)

    async def say(self, user: str, body: str) -> list[str]:
        """The texts the bot queued in answer to one message, in order."""
        return await self.texts(user, body)

    async def text(self, user: str, body: str) -> str:
        said = await self.say(user, body)
        assert len(said) == 1, said
        return said[0]


@pytest.fixture
async def company(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """WH1 with counters en (locale en-US), zh (no locale) and an English-reading supervisor; tasks for DAY."""
    async with sessionmaker() as s:
        one = await build_company(s, items=40, counters=2)
        for u, wid, locale in zip(one.users, ["en", "zh", "sup"], ["en-US", None, "en"], strict=True):
            u.wecom_userid, u.locale = wid, locale
        await plan_day(s, SETTINGS, DAY, now=morning(DAY))
        await s.commit()
        return {u.wecom_userid: u.id for u in one.users if u.wecom_userid}


async def expected_prompt(
    sm: async_sessionmaker[AsyncSession], user_id: int, task_id: int, left: int, skipped: int = 0
) -> str:
    async with sm() as s:
        task = await s.get(CountTask, task_id)
        assert task is not None
        item, loc = await s.get(Item, task.item_id), await s.get(Location, task.location_id)
        assert item is not None and loc is not None
        return (
            f"Location {loc.code} · {item.name} ({item.sku}): enter the quantity (unit: {item.base_unit})"
            f"\n{left} left{f' ({skipped} skipped)' if skipped else ''}. You can also reply: skip / empty / not here / stop"
        )


async def open_tasks(sm: async_sessionmaker[AsyncSession], user_id: int) -> list[int]:
    async with sm() as s:
        return [stop.task.id for stop in await open_walk(s, user_id, DAY)]  # the walk's order


async def test_help_in_english_and_in_chinese(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    bot = Bot(sessionmaker)
    counter = english(await bot.text("en", "/help"))
    assert counter.splitlines() == [
        "Commands:",
        "start: count today's tasks one by one (reply with a quantity, or skip / empty / not here / undo / stop)",
        "/tasks: today's count tasks",
        "/count TASK QUANTITY: quick entry, e.g. /count 123 36",
        "/status: today's count progress",
        "/request CODE [REASON]: ask for an extra count (item barcode, SKU or location)",
        "/help: show this help",
    ]
    assert english(await bot.text("en", "/帮助")) == counter  # the Chinese name works too
    sup = english(await bot.text("sup", "/help"))
    assert "/accuracy [DAYS]: " in sup and "/variances: " in sup and "/tasks" not in sup
    chinese = await bot.text("zh", "/help")
    assert chinese.startswith("可用命令 / commands:\n开始：逐项盘点今天的任务")
    assert "/任务 /tasks：今天的盘点任务" in chinese and "Commands:" not in chinese


async def test_tasks_status_and_refusals_in_english(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    bot = Bot(sessionmaker)
    mine = await open_tasks(sessionmaker, company["en"])
    listing = english(await bot.text("en", "/tasks"))
    lines = listing.splitlines()
    assert 1 < len(mine) <= 20
    assert lines[0] == f"Today's count tasks ({len(mine)}, in walking order):"
    assert [int(line.split()[0].lstrip("#")) for line in lines[1:]] == mine
    async with sessionmaker() as s:
        task = await s.get(CountTask, mine[0])
        assert task is not None
        item, loc = await s.get(Item, task.item_id), await s.get(Location, task.location_id)
        assert item is not None and loc is not None
    assert lines[1] == f"#{mine[0]} {loc.code} · {item.name} ({item.sku})"
    assert "今天的盘点任务" in await bot.text("zh", "/任务")

    assert english(await bot.text("en", "/count")) == "Usage: /count TASK QUANTITY, e.g. /count 123 36"
    assert english(await bot.text("en", "/count 999999 5")) == "No task #999999"  # core's refusal, in English
    bad = english(await bot.text("en", f"/count {mine[0]} abc"))
    assert bad.startswith('Cannot read "abc"')
    # blind: the same words whatever came of the count, the counter's own quantity, and what is next
    assert english(await bot.text("en", f"/count {mine[0]} 10")) == (
        f"Recorded (10个).\n{len(mine) - 1} left: send “start” to count them one by one."
    )
    assert english(await bot.text("en", f"/count {mine[0]} 10")) == f"Task #{mine[0]} is done"
    assert await bot.text("zh", f"/盘点 {mine[0]} 10") == f"任务 #{mine[0]} 已结束（done），不能再盘点"

    status = english(await bot.text("en", "/status"))
    assert status.startswith("Count progress today (Nov 30):\n")
    assert f"\nMe: 1/{len(mine)} done ({100 // len(mine)}%)" in status and "\nTeam WH1 盘点组: 1/" in status

    assert english(await bot.text("en", "/accuracy")) == (
        "Sorry, /accuracy is only for supervisors, finance, managers and admins. "
        "Send /help to see the commands you can use."
    )
    blind = english(await bot.text("en", "/variances"))
    assert blind.startswith("Counts are blind") and "10" not in blind
    assert "盲盘" in await bot.text("zh", "/差异")
    assert english(await bot.text("en", "hello")) == (
        "Sorry, I didn't understand that. Send /help to see the commands."
    )
    assert "没看懂" in await bot.text("zh", "hello")


async def test_overseer_commands_in_english(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    bot = Bot(sessionmaker)
    accuracy = english(await bot.text("sup", "/accuracy 7"))
    assert accuracy.splitlines() == [
        "Inventory record accuracy, last 7 days (by ABC class, first counts):",
        "Class A: no counts",
        "Class B: no counts",
        "Class C: no counts",
        "Total: no counts",
    ]
    assert english(await bot.text("sup", "/accuracy 0")).startswith("Usage: /accuracy [DAYS], DAYS from 1 to")
    assert english(await bot.text("sup", "/variances")) == "Nothing waiting for you 👍"
    assert english(await bot.text("sup", "/request NOPE")) == (
        "NOPE not found: please send an item barcode, an SKU or a location code."
    )
    made = english(await bot.text("sup", "/request A-000 check"))
    assert made.startswith(
        "Extra count requested for 1 item; first in line at the next planning:\nWH1/A-000 · 物料0 ("
    )
    again = english(await bot.text("sup", "/request A-000"))
    assert again.startswith("Already requested and waiting to be planned, not added again:\nWH1/A-000")


async def test_counting_conversation_in_english(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    bot = Bot(sessionmaker)
    uid = company["en"]
    queue = await open_tasks(sessionmaker, uid)
    assert len(queue) >= 3
    first = english(await bot.text("en", "start"))
    # word for word, so blind: the book quantity is not in it
    assert first == await expected_prompt(sessionmaker, uid, queue[0], len(queue))

    bad = english(await bot.text("en", "abc"))  # the parser's English message; the same task stays
    assert bad.startswith('Cannot read "abc"') and "Type e.g." in bad
    # one message per count: the confirmation and the next prompt together
    recorded = english(await bot.text("en", "5"))
    assert recorded == "✓ Recorded (5个)\n" + await expected_prompt(
        sessionmaker, uid, queue[1], len(queue) - 1
    )

    after_skip = english(await bot.text("en", "skip"))  # the skipped one goes to the end of the walk
    assert after_skip == await expected_prompt(sessionmaker, uid, queue[2], len(queue) - 1, skipped=1)
    assert english(await bot.text("en", "stop")) == (
        f"Paused. {len(queue) - 1} left (1 skipped); send “start” to carry on."
    )
    assert "Sorry, I didn't understand" in await bot.text("en", "empty")  # paused: no task to answer

    # 5 against a book of 10 is out of tolerance: a blind recount went to the other counter, who reads Chinese
    said = await bot.say("en", "undo")
    cancelled = [t for t in said if t.startswith("复盘任务 #")]
    (undone,) = [t for t in said if t not in cancelled]
    undone, back = undone.split("\n", 1)
    async with sessionmaker() as s:
        task = await s.get(CountTask, queue[0])
        assert task is not None and task.status == "open"
        item, loc = await s.get(Item, task.item_id), await s.get(Location, task.location_id)
        assert item is not None and loc is not None
        (entry,) = (await s.execute(select(CountEntry))).scalars().all()
        assert entry.superseded_by_id == entry.id  # void
    assert english(undone) == f"↩️ Undone: your count “5 个” for location {loc.code} · {item.name}."
    assert back == await expected_prompt(sessionmaker, uid, queue[0], len(queue), skipped=1)
    assert len(cancelled) == 1 and cancelled[0].endswith("已取消：首次盘点已被撤销，无需复盘。")

    assert english(await bot.text("en", "10")).startswith("✓ Recorded (10个)\nLocation ")
    # the task skipped before the pause is still at the end of the walk: the next one is the third
    assert english(await bot.text("en", "not here")).startswith("✓ Recorded\nLocation ")
    assert english(await bot.text("en", "end")) == (
        f"Paused. {len(queue) - 2} left (1 skipped); send “start” to carry on."
    )
    async with sessionmaker() as s:
        current = (await s.execute(select(CountEntry).order_by(CountEntry.id))).scalars().all()
    assert [(e.task_id, e.outcome) for e in current if e.superseded_by_id is None] == [
        (queue[0], "counted"),
        (queue[2], "not_here"),
    ]


async def test_finishing_the_day_and_counter_only_replies(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    bot = Bot(sessionmaker)
    queue = await open_tasks(sessionmaker, company["en"])
    english(await bot.text("en", "start"))
    for _ in queue[:-1]:
        english(await bot.text("en", "empty"))
    assert (
        english(await bot.text("en", "10")) == "✓ Recorded (10个)\nAll of today's tasks are done. Thank you!"
    )
    assert english(await bot.text("en", "/tasks")) == "No tasks left today 👍"
    assert english(await bot.text("sup", "start")) == "Only counters can start counting"
    assert english(await bot.text("sup", "undo")) == "Only counters can undo their counts"
    assert await bot.text("zh", "/tasks") != "No tasks left today 👍"


async def test_the_same_user_without_a_locale_reads_chinese(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int]
) -> None:
    async with sessionmaker() as s, s.begin():
        user = await s.get(User, company["en"])
        assert user is not None
        user.locale = None
    bot = Bot(sessionmaker)
    first = await bot.text("en", "start")
    assert first.startswith("库位 ") and "请输入数量" in first and "Location" not in first
    assert (await bot.text("en", "abc")).startswith("无法识别“abc”")
    assert (await bot.text("en", "10")).startswith("✓ 已记录（10个）\n库位 ")
    left = len(await open_tasks(sessionmaker, company["en"]))
    assert (await bot.text("en", "结束")) == f"已暂停。还有 {left} 项未完成，发送“开始”继续。"
    assert (await bot.text("en", "/count 999999 5")) == "没有任务 #999999"
    # ... unless the company speaks English: settings.locale is the default for users without one
    company_en = Bot(sessionmaker, SETTINGS.model_copy(update={"locale": "en-GB"}), name="company-en")
    assert english(await company_en.text("en", "/count 999999 5")) == "No task #999999"
    assert english(await company_en.text("zh", "/tasks")).startswith("Today's count tasks (")


def test_bilingual_messages_split_by_language() -> None:
    from integrations.barcode import MSG_EMPTY, MSG_NO_CODE

    assert bilingual(MSG_EMPTY, "zh") == "收到的文件是空的，请重新发送照片。"
    assert bilingual(MSG_EMPTY, "en") == "The file is empty; please send the photo again."
    assert bilingual(MSG_NO_CODE, "zh") == MSG_NO_CODE  # unchanged for Chinese readers
    assert bilingual(MSG_NO_CODE, "en").startswith("No barcode found. Move closer")
    assert not CJK.search(bilingual(MSG_NO_CODE, "en"))
    assert bilingual("只有中文", "en") == "只有中文"  # nothing English to pick: the text as it is


# ------------------------------------------------------------------------------------------ card buttons

CARD_SETTINGS = Settings(
    database_url="sqlite://", wecom={"corp_id": "c"}, server={"payload_secret": "k" * 20}
)


async def test_card_buttons_answer_in_english(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """A supervisor reading English reviews a variance from its card; the other one rejects it, asked why."""
    from bot.cards.payload import Approve, PickReason, Reject, SubmitReason
    from bot.events import CardAction
    from bot.flows import payload_key
    from bot.handlers import actions
    from core.models import Variance
    from core.variance import service as wf

    key = payload_key(CARD_SETTINGS)
    async with sessionmaker() as s, s.begin():
        co = await build_company(s, items=6, counters=2)
        s.add(User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=co.teams[0].id))
        await s.flush()
        for u in (await s.execute(select(User))).scalars():
            u.wecom_userid, u.locale = u.employee_no.lower(), "en"
        await plan_day(s, CARD_SETTINGS, DAY, now=morning(DAY))
        c1, c2 = co.users[0], co.users[1]
        task = (await wf.counter_tasks(s, c1.id, DAY))[0][0]
        r = await wf.record_count(
            s, CARD_SETTINGS, task_id=task.id, counter_id=c1.id, text="7", counted_at=NOW, now=NOW
        )
        assert r.recount_task is not None and r.variance is not None
        r2 = await wf.record_count(s, CARD_SETTINGS, task_id=r.recount_task.id, counter_id=c2.id, text="7",
                                   counted_at=NOW, now=NOW)  # fmt: skip
        assert r2.variance is not None and r2.variance.state == "in_review"
        vid = r.variance.id
    router = Router().include(commands.router, counting.router, actions.router, commands.fallback_router)
    d = Dispatcher(sessionmaker, CARD_SETTINGS, MemoryStore(), router, clock=FixedClock(NOW))
    n = iter(range(1, 100))

    async def press(user: str, payload: object, form: dict[str, str] | None = None, age_days: int = 0) -> str:
        issued = int(NOW.timestamp()) - age_days * 86400
        packed = payload.pack(key, issued_at=issued)  # type: ignore[attr-defined]
        i = next(n)
        event = CardAction(Platform.WECOM, f"wecom:card:{i}", Sender(Platform.WECOM, user), NOW, payload=packed,
                           form=form or {}, card_ref=f"ref-{i}")  # fmt: skip
        return await answer(event)

    async def say(user: str, body: str) -> str:
        i = next(n)
        return await answer(
            TextMessage(Platform.WECOM, f"wecom:msg:{i}", Sender(Platform.WECOM, user), NOW, text=body)
        )

    async def answer(event: CardAction | TextMessage) -> str:
        assert await d.submit(event)
        await d.drain()
        assert d.stats["errors"] == 0
        async with sessionmaker() as s:
            rows = await s.execute(
                select(OutboxMessage).where(OutboxMessage.idempotency_key.like(f"{event.dedup_key}:%"))
            )
            (text,) = [str(r.body["text"]) for r in rows.scalars() if r.kind == "text"]
            return text

    assert english(await press("wh1-s01", SubmitReason(vid), age_days=30)) == (
        "This card has expired; please use the latest one (send /tasks for today's tasks)."
    )
    assert english(await press("wh1-s01", SubmitReason(vid))) == (
        "Please pick a reason on the card first, then press “Submit reason”."
    )
    form = {"reason": PickReason(vid, "other").pack(key, issued_at=int(NOW.timestamp()))}
    assert english(await press("wh1-s01", SubmitReason(vid), form)) == (
        "“Other” needs a note: please reply with a short note (send “cancel” to drop it)."
    )
    assert english(await say("wh1-s01", "two cases fell behind the shelf")) == (
        f"✓ Variance #{vid} reviewed and sent for approval."
    )
    # the reviewer may not approve what they reviewed: core's refusal, in English
    assert (
        english(await press("wh1-s01", Approve(vid, 1)))
        == "You reviewed this variance and cannot also approve it"
    )
    assert english(await press("s02", Reject(vid, 1))) == (
        f"Please reply with the reason for rejecting variance #{vid} (send “cancel” to drop it)."
    )
    assert english(await say("s02", "cancel")) == "Cancelled."
    assert english(await press("s02", Reject(vid, 1))).startswith("Please reply with the reason")
    assert english(await say("s02", "the counts are not credible")) == f"Variance #{vid} rejected"
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "rejected"
