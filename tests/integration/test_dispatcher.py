"""The dispatcher end to end on the suite's database: dedup, identity, commands, replies through the outbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.conversation import MemoryStore
from bot.dispatcher import NOT_REGISTERED, Dispatcher, Router
from bot.events import Platform, Sender, TextMessage
from bot.handlers import commands, counting
from core.config import Settings
from core.models import CountEntry, InboundSeen, OutboxMessage, User
from core.scheduling.service import plan_day
from tests.clock import FixedClock, morning
from tests.integration.builders import build_company

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SETTINGS = Settings(database_url="sqlite://")


def text(user: str, body: str, msg_id: str) -> TextMessage:
    return TextMessage(Platform.WECOM, f"wecom:msg:{msg_id}", Sender(Platform.WECOM, user), NOW, text=body)


async def replies(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessionmaker() as s:
        rows = (await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars().all()
    return [r.body.get("text", "") for r in rows]


async def test_commands_identity_and_retries(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as s:
        await build_company(s, items=10)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "zhangwei"
        await plan_day(s, SETTINGS, date(2026, 11, 30), now=morning(date(2026, 11, 30)))
        await s.commit()
        user_id = u.id
    d = Dispatcher(
        sessionmaker,
        SETTINGS,
        MemoryStore(),
        Router().include(commands.router, counting.router, commands.fallback_router),
        clock=FixedClock(NOW),
    )

    assert await d.submit(text("stranger", "/tasks", "1"))
    await d.drain()
    assert (await replies(sessionmaker))[-1] == NOT_REGISTERED

    assert await d.submit(text("zhangwei", "/任务", "2"))
    await d.drain()
    listing = (await replies(sessionmaker))[-1]
    assert "今天的盘点任务" in listing
    task_id = int(listing.split("#")[1].split()[0])

    assert await d.submit(text("zhangwei", f"/盘点 {task_id} 10", "3"))
    assert not await d.submit(text("zhangwei", f"/盘点 {task_id} 10", "3"))  # the platform retried: dropped
    await d.drain()
    assert "已记录" in (await replies(sessionmaker))[-1]
    async with sessionmaker() as s:
        entries = (
            (await s.execute(select(CountEntry).where(CountEntry.counter_id == user_id))).scalars().all()
        )
    assert len(entries) == 1 and entries[0].dedup_key == "wecom:msg:3"

    assert await d.submit(text("zhangwei", f"/盘点 {task_id + 1} abc", "4"))
    assert await d.submit(text("zhangwei", "你好", "5"))
    await d.drain()
    last_two = (await replies(sessionmaker))[-2:]
    assert "abc" in last_two[0] and "/帮助" in last_two[1]
    assert d.stats["duplicates"] == 1 and d.stats["errors"] == 0


async def test_counting_conversation(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """A counter's chat, as the transcript reads: start, a bad quantity, a count, skip, empty, done."""
    async with sessionmaker() as s:
        await build_company(s, items=10, counters=1)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "lina"
        await plan_day(s, SETTINGS, date(2026, 11, 30), now=morning(date(2026, 11, 30)))
        await s.commit()
    d = Dispatcher(sessionmaker, SETTINGS, MemoryStore(),
                   Router().include(commands.router, counting.router, commands.fallback_router),
                   clock=FixedClock(NOW))  # fmt: skip
    said = iter(range(100, 200))

    async def chat(body: str) -> str:
        assert await d.submit(text("lina", body, str(next(said))))
        await d.drain()
        return (await replies(sessionmaker))[-1]

    first = await chat("开始")
    assert first.startswith("库位 ") and "请输入数量" in first and "还剩 2 项" in first
    assert "10" not in first.split("（")[0]  # blind: no book quantity in the prompt
    assert "abc" in await chat("abc")  # the parser's message; the same task stays
    second = await chat("１０")  # full-width digits
    ack, task_line, left = second.split("\n")  # one message: the confirmation, then the next prompt
    assert ack == "✓ 已记录（10个）" and left.startswith("还剩 1 项。")
    after_skip = await chat("跳过")  # the last one comes straight back
    assert after_skip.split("\n") == [
        "这是最后一项了。",
        task_line,
        left.replace("还剩 1 项。", "还剩 1 项（其中 1 项已跳过）。"),
    ]
    done = await chat("空")
    assert "都完成了" in done
    async with sessionmaker() as s:
        outcomes = sorted(e.outcome for e in (await s.execute(select(CountEntry))).scalars())
    assert outcomes == ["counted", "empty"]
    assert "没看懂" in await chat("随便说说")  # back to idle: the fallback answers


async def test_photo_confirms_the_item_and_questions_other_codes(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Any
) -> None:
    import io

    from barcode import EAN13
    from barcode.writer import ImageWriter

    from bot.events import ImageMessage
    from bot.photos import PhotoStore
    from core.models import CountTask, ItemBarcode
    from integrations.barcode import BarcodeReader

    def ean_photo(code12: str) -> bytes:
        img = EAN13(code12, writer=ImageWriter()).render(
            {"module_width": 0.4, "module_height": 18, "quiet_zone": 8}
        )
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=85)
        return buf.getvalue()

    class PhotoChannel:
        def __init__(self) -> None:
            self.images: dict[str, bytes] = {}

        async def download_image(self, media_ref: str, **_: Any) -> bytes:
            return self.images[media_ref]

    async with sessionmaker() as s:
        await build_company(s, items=5, counters=1)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "lina"
        await plan_day(s, SETTINGS, date(2026, 11, 30), now=morning(date(2026, 11, 30)))
        task = (await s.execute(select(CountTask))).scalars().first()
        assert task is not None
        s.add(ItemBarcode(barcode="6901234567892", item_id=task.item_id))
        await s.commit()
    channel = PhotoChannel()
    channel.images = {"right": ean_photo("690123456789"), "wrong": ean_photo("400638133393")}
    reader = BarcodeReader(max_workers=1)
    services = {"channels": {"wecom": channel}, "barcode_reader": reader, "photos": PhotoStore(tmp_path)}
    d = Dispatcher(sessionmaker, SETTINGS, MemoryStore(),
                   Router().include(commands.router, counting.router, commands.fallback_router),
                   services=services, clock=FixedClock(NOW))  # fmt: skip
    n = iter(range(300, 400))

    async def send(event: Any) -> str:
        assert await d.submit(event)
        await d.drain()
        return (await replies(sessionmaker))[-1]

    def image(ref: str) -> ImageMessage:
        return ImageMessage(Platform.WECOM, f"wecom:msg:{next(n)}", Sender(Platform.WECOM, "lina"), NOW,
                            media_ref=ref)  # fmt: skip

    assert "请输入数量" in await send(text("lina", "开始", "299"))
    questioned = await send(image("wrong"))
    assert "4006381333931" in questioned and "未记录" in questioned
    assert "已确认" in await send(image("right"))
    assert (await send(text("lina", "10", "398"))).startswith("✓ 已记录（10个）\n")  # and the next prompt
    async with sessionmaker() as s:
        entry = (await s.execute(select(CountEntry))).scalar_one()
    assert len(entry.photos) == 2 and all((tmp_path / p[:2] / p).exists() for p in entry.photos)
    await reader.close()


async def test_a_slow_photo_download_holds_no_lock(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Any
) -> None:
    """While one counter's photo downloads, other events are accepted (their dedup row written) at once: the
    download runs before the event's transaction, so SQLite's write lock is not held across it."""
    import asyncio

    from bot.events import ImageMessage
    from bot.photos import PhotoStore
    from integrations.barcode import BarcodeReader

    started, release = asyncio.Event(), asyncio.Event()

    class SlowChannel:
        async def download_image(self, media_ref: str, **_: Any) -> bytes:
            started.set()
            await release.wait()
            return b"not an image"

    async with sessionmaker() as s:
        await build_company(s, items=2, counters=1)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "lina"
        await s.commit()
    reader = BarcodeReader(max_workers=1)
    services = {
        "channels": {"wecom": SlowChannel()},
        "barcode_reader": reader,
        "photos": PhotoStore(tmp_path),
    }
    d = Dispatcher(sessionmaker, SETTINGS, MemoryStore(),
                   Router().include(commands.router, counting.router, commands.fallback_router),
                   services=services, clock=FixedClock(NOW))  # fmt: skip
    photo = ImageMessage(Platform.WECOM, "wecom:msg:slow", Sender(Platform.WECOM, "lina"), NOW, media_ref="m")
    assert await d.submit(photo)
    await started.wait()
    assert await d.accept(text("someone", "/帮助", "other"))  # would wait for the lock if it were held
    release.set()
    await d.drain()
    assert "图片" in (await replies(sessionmaker))[-1] or "无法" in (await replies(sessionmaker))[-1]
    await reader.close()


async def test_a_burst_is_recorded_in_batches_and_processed_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """40 callbacks at once, two of them a platform retry arriving in the same instant: a few batched inserts,
    each event processed exactly once by the fixed worker pool, the copies dropped."""
    async with sessionmaker() as s:
        await build_company(s, items=3)
        await s.commit()
    d = Dispatcher(
        sessionmaker,
        SETTINGS,
        MemoryStore(),
        Router().include(commands.router),
        workers=2,
        clock=FixedClock(NOW),
    )
    events = [text(f"nobody{i}", "/帮助", f"b{i}") for i in range(40)]
    events += [text("nobody3", "/帮助", "b3"), text("nobody7", "/帮助", "b7")]  # the retries
    accepted = await asyncio.gather(*(d.submit(e) for e in events))
    assert accepted.count(True) == 40 and accepted[-2:] == [False, False]
    batches, batched = d.accept_batches
    assert batched == 42 and batches < 10
    await d.drain()
    assert d.stats["processed"] == 40 and d.busy == 0
    assert (await replies(sessionmaker)).count(NOT_REGISTERED) == 40


async def _burst(sm: async_sessionmaker[AsyncSession], tag: str) -> Dispatcher:
    """30 events at once into a queue of 4 with one worker: 26 do not fit."""
    d = Dispatcher(
        sm,
        SETTINGS,
        MemoryStore(),
        Router().include(commands.router),
        workers=1,
        queue_limit=4,
        clock=FixedClock(NOW),
    )
    events = [text(f"nobody{i}", "/帮助", f"{tag}{i}") for i in range(30)]
    assert all(await asyncio.gather(*(d.submit(e) for e in events)))
    assert d.stats["overflow"] == 26 and d.busy == 30
    return d


async def _settled(d: Dispatcher) -> None:
    for _ in range(2000):
        if not d.busy:
            break
        await asyncio.sleep(0.01)
    await d.drain()


async def test_a_burst_past_the_queue_limit_is_loaded_back_as_the_queue_empties(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The events that did not fit are kept as keys only and loaded back from the database once the queue is
    half empty: all processed, once each, without waiting replay_after_s for a replay."""
    async with sessionmaker() as s:
        await build_company(s, items=3)
        await s.commit()
    d = await _burst(sessionmaker, "o")
    await _settled(d)
    assert (d.stats["processed"], d.stats["refilled"], d.stats["skipped_processed"]) == (30, 26, 0)
    async with sessionmaker() as s:
        waiting = select(func.count()).select_from(InboundSeen).where(InboundSeen.processed_at.is_(None))
        assert await s.scalar(waiting) == 0
    assert (await replies(sessionmaker)).count(NOT_REGISTERED) == 30


async def test_an_overflowed_event_a_replay_took_is_not_processed_again(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as s:
        await build_company(s, items=3)
        await s.commit()
    d = await _burst(sessionmaker, "r")
    # a replay (here, or a peer's) races the loading back for the 26 not queued: each goes one way or the other
    replayed = await d.replay(now=NOW + timedelta(minutes=5), older_than=timedelta(0))
    await _settled(d)
    assert replayed > 0 and d.stats["processed"] == 30  # acted on: 4 queued + 26, once each
    assert replayed + d.stats["refilled"] - d.stats["skipped_processed"] == 26  # the rest found it done
    assert (await replies(sessionmaker)).count(NOT_REGISTERED) == 30  # each answered once


async def test_an_event_is_acted_on_once_even_if_replayed_meanwhile(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A peer's replay processed the event first (say this process was slow): the queued copy is skipped, and
    replay leaves events that are still queued in this process alone."""
    from datetime import timedelta

    async with sessionmaker() as s:
        await build_company(s, items=3)
        u = (await s.execute(select(User).where(User.employee_no == "WH1-E01"))).scalar_one()
        u.wecom_userid = "zhangwei"
        await s.commit()
    hold = asyncio.Event()
    router = Router()

    @router.before(TextMessage)
    async def slow_download(event: Any, _services: dict[str, Any]) -> dict[str, Any]:
        if event.text == "first":
            await hold.wait()  # before the transaction, like a photo download
        return {}

    @router.on(TextMessage)
    async def answer(ctx: Any) -> bool:
        ctx.reply_text("done")
        return True

    old = TextMessage(Platform.WECOM, "wecom:msg:r1", Sender(Platform.WECOM, "nobody"), NOW - timedelta(hours=1),
                      text="hi")  # fmt: skip
    mine = Dispatcher(sessionmaker, SETTINGS, MemoryStore(), router, workers=1, clock=FixedClock(NOW))
    peer = Dispatcher(sessionmaker, SETTINGS, MemoryStore(), router, clock=FixedClock(NOW))
    blocker = text("zhangwei", "first", "r0")
    assert await mine.submit(blocker)  # occupies mine's only worker (its handler waits)
    assert await mine.submit(old)  # queued behind it
    assert await mine.replay(now=NOW) == 0  # still queued here: left alone
    assert await peer.replay(now=NOW) == 1  # the peer takes it (an unregistered sender: answered at once)
    hold.set()
    await mine.drain()
    assert mine.stats["skipped_processed"] == 1 and mine.stats["processed"] == 1
    assert sorted(await replies(sessionmaker)) == sorted(["done", NOT_REGISTERED])  # each answered once
