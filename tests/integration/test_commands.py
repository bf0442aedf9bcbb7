"""The slash commands through a real Dispatcher on the suite's database, role by role, as the chat reads."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.photos import PhotoStore
from core.config import Settings
from core.enums import TaskReason, TaskStatus
from core.models import CountRequest, CountTask, ItemBarcode, OutboxMessage, User
from core.scheduling.service import plan_day
from core.variance.service import review_variance
from tests.clock import morning
from tests.integration.builders import build_company
from tests.integration.chat import ChatBot

DAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SETTINGS = Settings(database_url="sqlite://")
NO_RECOUNTS = SETTINGS.model_copy(
    update={"counting": SETTINGS.counting.model_copy(update={"max_recounts": 0})}
)


def read(path: str) -> bytes:
    return Path(path).read_bytes()


class Bot(ChatBot):
    """The shared chat (tests.integration.chat), with a photo store for chart images."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, tmp: Path) -> None:
        self.photos = PhotoStore(tmp / "photos")
        super().__init__(sessionmaker, settings, NOW, services={"photos": self.photos})

    async def say(self, user: str, body: str) -> list[OutboxMessage]:
        """What the bot queued in answer to one message (text first, then any image)."""
        return await self.replies(user, body)

    async def text(self, user: str, body: str) -> str:
        return str((await self.say(user, body))[0].body["text"])


@pytest.fixture
async def company(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """WH1 with counters c1, c2 and supervisor sup (one team); WH2 (the same location codes) with its own
    counter and supervisor; a manager, a finance clerk and a user with no role. Tasks planned for DAY."""
    async with sessionmaker() as s:
        one = await build_company(s, items=10, counters=2)
        two = await build_company(s, items=6, counters=1, code="WH2")
        s.add(ItemBarcode(barcode="6901234567892", item_id=one.items[3].id))
        extra = [
            User(employee_no="M01", name="经理", roles=["manager"], wecom_userid="mgr"),
            User(employee_no="F01", name="财务", roles=["finance"], wecom_userid="fin"),
            User(employee_no="X01", name="访客", roles=[], wecom_userid="guest"),
        ]
        s.add_all(extra)
        for u, wid in zip([*one.users, *two.users], ["c1", "c2", "sup", "w2c1", "w2sup"], strict=True):
            u.wecom_userid = wid
        await plan_day(s, SETTINGS, DAY, now=morning(DAY))
        await s.commit()
        return {u.wecom_userid: u.id for u in [*one.users, *two.users, *extra] if u.wecom_userid}


async def test_help_lists_only_what_each_role_may_do(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    counter = await bot.text("c1", "/帮助")
    assert all(c in counter for c in ("/任务", "/盘点", "/进度", "/复盘", "撤销", "/帮助"))
    assert "/准确率" not in counter and "/差异" not in counter
    sup = await bot.text("sup", "/help")
    assert all(c in sup for c in ("/进度", "/准确率", "/差异", "/复盘"))
    assert "/任务" not in sup and "/盘点" not in sup and "撤销" not in sup
    guest = await bot.text("guest", "/帮助")
    assert guest.count("\n") == 1 and "/帮助" in guest


async def test_a_command_the_user_may_not_use_says_so_politely(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    assert await bot.text("c1", "/准确率") == (
        "抱歉，/准确率 仅限主管、财务、经理、管理员使用。发送 /帮助 查看您可以使用的命令。"
    )
    assert "盲盘" in await bot.text("c1", "/差异")  # counters never see variances, and are told why
    assert "仅限盘点员使用" in await bot.text("mgr", "/任务")
    assert "仅限" in await bot.text("guest", "/进度")


async def test_status_for_a_counter_a_supervisor_and_a_manager(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    async with sessionmaker() as s, s.begin():
        tasks = (await s.execute(select(CountTask).order_by(CountTask.id))).scalars().all()
        mine = [t for t in tasks if t.assignee_id == company["c1"]]
        team = [t for t in tasks if t.assignee_id in (company["c1"], company["c2"])]
        wh1 = [t for t in tasks if t.warehouse_id == mine[0].warehouse_id]
        # one of c2's tasks is carried over from yesterday, overdue
        late = next(t for t in tasks if t.assignee_id == company["c2"])
        late.plan_date, late.due_date = DAY - timedelta(days=1), DAY - timedelta(days=1)
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    await bot.say("c1", "开始")
    await bot.say("c1", "5")  # book 10: out of tolerance, a blind recount for c2 (same team)
    async with sessionmaker() as s, s.begin():
        recount = (
            await s.execute(select(CountTask).where(CountTask.reason == TaskReason.RECOUNT))
        ).scalar_one()
        # record_count dates the recount by the wall clock; the chat here happens on DAY
        recount.plan_date = recount.due_date = DAY

    counter = await bot.text("c1", "/进度")
    assert f"我：1/{len(mine)} 已完成" in counter
    assert f"班组 WH1 盘点组：1/{len(team) + 1} 已完成" in counter and "逾期 1" in counter
    assert "复盘待做 1" in counter

    sup = await bot.text("sup", "/status")
    assert "WH1 盘点组" in sup and f"盘点员1：1/{len(mine)} 已完成" in sup
    assert f"合计：1/{len(team) + 1} 已完成" in sup

    mgr = await bot.text("mgr", "/进度")
    assert f"WH1 WH1 仓：1/{len(wh1) + 1} 已完成" in mgr and "WH2 WH2 仓：0/" in mgr
    assert f"合计：1/{len(tasks) + 1} 已完成" in mgr
    assert mgr == await bot.text("fin", "/进度")  # finance sees the warehouses too


async def test_accuracy_sends_a_short_text_and_a_chart_image_by_reference(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    empty = await bot.say("mgr", "/准确率")
    assert [r.kind for r in empty] == ["text"] and "A 类：无盘点" in empty[0].body["text"]  # nothing to draw

    for user, said in (("c1", "10"), ("c2", "5")):  # a match (a hit), then a miss
        await bot.say(user, "开始")
        await bot.say(user, said)
    answer = await bot.say("sup", "/准确率 7")
    assert [r.kind for r in answer] == ["text", "image"]
    text = answer[0].body["text"]
    assert text.startswith("近 7 天库存记录准确率") and "A 类：50.0%（1/2 次在容差内）" in text
    body = answer[1].body
    assert set(body) == {"image", "path"} and body["image"].endswith(".png")  # a reference, not the bytes
    png = read(body["path"])
    assert Path(body["path"]) == bot.photos.path(body["image"]).resolve()
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (960, 540)

    assert "用法：/准确率" in await bot.text("sup", "/准确率 abc")
    assert "用法：/准确率" in await bot.text("sup", "/准确率 0")


async def test_accuracy_is_text_only_without_a_photo_store(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    bot.d.services = {}
    await bot.say("c1", "开始")
    await bot.say("c1", "10")
    answer = await bot.say("mgr", "/准确率")
    assert [r.kind for r in answer] == ["text"] and "A 类：100.0%" in answer[0].body["text"]


async def test_variances_wait_for_the_reviewer_then_the_approver(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, NO_RECOUNTS, tmp_path)
    await bot.say("c1", "开始")
    await bot.say("c1", "5")  # no recounts configured: straight to the supervisor's review
    assert "没有等您处理的差异" in await bot.text("mgr", "/差异")
    waiting = await bot.text("sup", "/差异")
    assert "等您处理的差异（1 条" in waiting and "原因审核中" in waiting and "-50.00 元" in waiting
    assert "WH1/A-000 · 物料0（WH1-SKU0000）" in waiting and "一般差异" in waiting  # -50 元: by value, minor
    vid = int(waiting.split("#")[1].split()[0])
    async with sessionmaker() as s, s.begin():
        await review_variance(
            s, NO_RECOUNTS, variance_id=vid, reviewer_id=company["sup"], reason_code="misplaced", now=NOW
        )
    # step 1 is a supervisor's, but not the one who reviewed it: the only supervisor did, so the step moved up
    # to the manager when it opened, and waits there (a supervisor added later does not take it back)
    assert "没有等您处理的差异" in await bot.text("sup", "/差异")
    assert "待审批（经理）" in await bot.text("mgr", "/差异")
    async with sessionmaker() as s, s.begin():
        other = User(employee_no="S02", name="主管二", roles=["supervisor"], wecom_userid="sup2")
        s.add(other)
    assert "没有等您处理的差异" in await bot.text("sup2", "/差异")


async def test_request_by_sku_barcode_and_location(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    assert "用法：/复盘" in await bot.text("c1", "/复盘")
    by_sku = await bot.text("sup", "/复盘 WH1-SKU0002 拣货说没有了")
    assert "已登记临时盘点请求 1 项" in by_sku and "WH1/A-002 · 物料2（WH1-SKU0002）" in by_sku
    again = await bot.text("c1", "/request WH1-SKU0002")
    assert "已有待排程的请求" in again and "已登记" not in again
    assert "WH1/B-003" in await bot.text("mgr", "/复盘 6901234567892")  # an item barcode
    assert "WH1/B-001" in await bot.text("c2", "/复盘 LOC-WH1-001")  # a location label
    ambiguous = await bot.text("sup", "/复盘 A-000")
    assert "多个仓库" in ambiguous and "WH1/A-000" in ambiguous
    assert "WH1/A-000 · 物料0" in await bot.text("sup", "/复盘 WH1/A-000")
    assert "没有找到" in await bot.text("sup", "/复盘 NOPE")
    assert "仅限" in await bot.text("guest", "/复盘 WH1-SKU0002")
    async with sessionmaker() as s:
        reqs = (await s.execute(select(CountRequest).order_by(CountRequest.id))).scalars().all()
    assert len(reqs) == 4 and reqs[0].note == "拣货说没有了" and reqs[0].requested_by_id == company["sup"]
    assert all(r.planned_on is None for r in reqs)


async def test_existing_commands_still_answer(
    sessionmaker: async_sessionmaker[AsyncSession], company: dict[str, int], tmp_path: Path
) -> None:
    bot = Bot(sessionmaker, SETTINGS, tmp_path)
    listing = await bot.text("c1", "/任务")
    task_id = int(listing.split("#")[1].split()[0])
    assert "已记录" in await bot.text("c1", f"/盘点 {task_id} 10")
    async with sessionmaker() as s:
        assert (await s.get(CountTask, task_id)).status == TaskStatus.DONE  # type: ignore[union-attr]
    assert "没看懂" in await bot.text("c1", "/nonsense")
