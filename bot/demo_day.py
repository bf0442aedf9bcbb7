"""``pandian demo``: a scripted working day, played through the real server against a simulated WeCom.

Nothing is stubbed on pandian's side: the demo company goes into a real database (SQLite by default), the
real aiohttp server runs with WeCom switched on, and WeCom itself is the local sandbox that the test suite
uses (its API answers like WeCom's, its callbacks are signed and encrypted like WeCom's). People "say" things
by posting those callbacks to the server's ``/wecom/callback``; what they see is what reached the sandbox's
message API. The transcript prints both, in order:

    07:30  morning job: plan the day, push each counter's task card
    08:10  张伟 starts from his card: a typo, a typed count, a pack count (箱/个), a photo of a barcode
    08:40  张伟 finds 1/3 more than the book: a blind recount card goes to a colleague
    09:05  the recount agrees: review cards to the supervisors; one picks a reason on the card
    09:30  approvers approve from their cards; every copy is updated in place; the book is adjusted
    15:00  afternoon reminder; 18:00 end-of-day summary for supervisors and managers
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from aiohttp import ClientSession, web
from sqlalchemy import func, select

from core.clock import Clock, RunningClock, local_day
from core.config import Settings

TOKEN = "pandian-demo-token"
AES_KEY = "pandianDemoAesKey0123456789abcdefghijklmnopq"[:43]


@dataclass
class Transcript:
    """The chat as people saw it, with the scripted wall-clock time of each scene."""

    names: dict[str, str]
    lines: list[str] = field(default_factory=list)
    echo: Callable[[str], None] | None = None
    clock: str = "07:30"

    def add(self, line: str) -> None:
        self.lines.append(line)
        if self.echo is not None:
            self.echo(line)

    def scene(self, clock: str, title: str) -> None:
        self.clock = clock
        self.add("")
        self.add(f"── {clock} {title} " + "─" * max(0, 60 - len(title)))

    def said(self, who: str, text: str) -> None:
        self.add(f"[{self.clock}] {self.names.get(who, who)} ▶ {text}")

    def got(self, who: str, message: dict[str, Any], *, updated: bool = False) -> None:
        name = self.names.get(who, who)
        if "text" in message:
            body = str(message["text"]["content"]).splitlines()
            self.add(f"[{self.clock}] 盘点助手 → {name}：{body[0]}")
            for extra in body[1:]:
                self.add(f"{' ' * 10}{extra}")
            return
        card = message.get("template_card") or {}
        tag = "卡片已更新" if updated else "卡片"
        self.add(f"[{self.clock}] 盘点助手 → {name}：【{tag}】{card_text(card)}")


def card_text(card: dict[str, Any]) -> str:
    """A WeCom template card as one readable line (title · subtitle · fields · [buttons])."""
    parts = []
    title = card.get("main_title") or {}
    parts.append(str(title.get("title", "")))
    if title.get("desc"):
        parts.append(str(title["desc"]))
    if card.get("sub_title_text"):
        parts.append(str(card["sub_title_text"]).replace("\n", " / ")[:120])
    fields = [f"{h.get('keyname')}={h.get('value', '')}" for h in card.get("horizontal_content_list", [])]
    if fields:
        parts.append("，".join(fields))
    select_ = card.get("button_selection")
    if select_:
        parts.append(f"〈{select_.get('title', '选择')}：{len(select_.get('option_list', []))} 项〉")
    buttons = [b.get("text", "") for b in card.get("button_list", [])]
    if buttons:
        parts.append(" ".join(f"[{b}]" for b in buttons))
    return " · ".join(p for p in parts if p)


def _free_port(host: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def barcode_photo(code: str) -> bytes:
    """A phone-like JPEG of an EAN-13 label (zxing-cpp draws it; a grey margin and a slight blur)."""
    import numpy as np
    import zxingcpp
    from PIL import Image, ImageFilter

    barcode = zxingcpp.create_barcode(code, zxingcpp.BarcodeFormat.EAN13)
    drawn = Image.fromarray(np.asarray(barcode.to_image(scale=4)))
    canvas = Image.new("L", (drawn.width + 160, drawn.height + 160), 200)
    canvas.paste(drawn, (80, 80))
    out = io.BytesIO()
    canvas.filter(ImageFilter.GaussianBlur(0.8)).convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


async def play(
    settings: Settings, *, clock: Clock, items: int = 2000, echo: Callable[[str], None] | None = None
) -> Transcript:
    """Generate the demo company into ``settings.database_url`` (an empty database), then play the day.

    The day is the company's day at ``clock.now()``; the scenes then happen at the times they name (07:30,
    08:10, ...) on a clock that runs on from there, which the server, the sandbox and the jobs all share."""
    from bot import jobs
    from bot.app import APP_KEY, build_app
    from core import migrate
    from core.classification_service import classify
    from core.db import make_engine, make_sessionmaker
    from core.demo import generate_demo
    from core.models import (
        Adjustment,
        CountTask,
        Item,
        ItemBarcode,
        ItemLocation,
        ItemUnit,
        OutboxMessage,
        User,
        Variance,
    )  # fmt: skip
    from core.scheduling.service import load_calendar
    from integrations.wecom.sandbox import WeComFakeState, WeComSimulator, build_wecom_fake_app

    today = local_day(clock.now(), settings.tz)
    day_clock = RunningClock(datetime.combine(today, dtime(7, 0), settings.tz))

    def at(hhmm: str) -> str:
        """Move the demo's clock on to ``hhmm`` of the demo day (the scene's time)."""
        hh, mm = map(int, hhmm.split(":"))
        day_clock.move_to(datetime.combine(today, dtime(hh, mm), settings.tz))
        return hhmm

    def stamp() -> int:
        return int(day_clock.now().timestamp())

    engine = make_engine(settings.database_url)
    await migrate.upgrade(engine)
    sm = make_sessionmaker(engine)
    async with sm() as s, s.begin():
        if (await s.execute(select(func.count()).select_from(Item))).scalar_one():
            raise RuntimeError("the demo needs an empty database; point PANDIAN_DATABASE_URL at a new file")
        await generate_demo(s, items=items, seed=20261128, today=today, tz=settings.tz)
        await classify(s, settings, as_of=today, now=day_clock.now())
        cal = await load_calendar(s, settings)
        working = cal.is_working_day(today)
        names = {u.wecom_userid: u.name for u in (await s.execute(select(User))).scalars() if u.wecom_userid}

    # the sandbox WeCom, and pandian configured to talk to it
    state = WeComFakeState()
    state.now = day_clock.now().timestamp()
    sandbox = web.AppRunner(build_wecom_fake_app(state))
    await sandbox.setup()
    sandbox_port = _free_port("127.0.0.1", 0)
    await web.TCPSite(sandbox, "127.0.0.1", sandbox_port).start()
    overrides: dict[str, Any] = {
        "wecom": {"corp_id": state.corp_id, "agent_id": state.agent_id, "secret": state.secret, "token": TOKEN,
                  "encoding_aes_key": AES_KEY, "api_base": f"http://127.0.0.1:{sandbox_port}"},
        "server": {**settings.server.model_dump(), "outbox_interval_s": 0.05, "card_sync_interval_s": 0.5},
        "schedule": {"enabled": False},  # the script runs the jobs itself, at its own clock
    }  # fmt: skip
    if not working:  # a weekend or holiday: the demo treats today as a make-up working day (调休)
        overrides["calendar"] = {
            **settings.calendar.model_dump(),
            "extra_working_days": [*settings.calendar.extra_working_days, today],
        }
    demo_settings = Settings.model_validate({**settings.model_dump(), **overrides})
    app = build_app(demo_settings, clock=day_clock)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port(demo_settings.server.host, demo_settings.server.port)
    await web.TCPSite(runner, demo_settings.server.host, port).start()
    base = f"http://{demo_settings.server.host}:{port}"
    sim = WeComSimulator(TOKEN, AES_KEY, state.corp_id, state.agent_id)
    t = Transcript(names, echo=echo)
    seen_sent, seen_updates = 0, 0
    msg_ids = iter(range(1, 1_000_000))
    dispatcher = app[APP_KEY]["dispatcher"]

    async def settle() -> None:
        """Wait until every event is processed and every queued message has reached the sandbox."""
        nonlocal seen_sent, seen_updates
        for _ in range(400):
            await asyncio.sleep(0.05)
            # ``busy`` first: a worker that finishes during the query has committed its replies before it
            # leaves ``busy``, so they are in the count. Read the other way round, an event processed
            # between the two looked settled with its replies unsent (a rare flake of the demo test)
            busy = dispatcher.busy
            async with sm() as s:
                waiting = await s.scalar(
                    select(func.count()).where(OutboxMessage.state.in_(("pending", "sending")))
                )
            if not busy and not waiting:
                break
        for m in state.delivered[seen_sent:]:
            t.got(str(m.get("touser")), m)
        for u in state.updates[seen_updates:]:
            t.got(_owner(state, u), u, updated=True)
        seen_sent, seen_updates = len(state.delivered), len(state.updates)

    async with ClientSession() as http:

        async def post(req: Any) -> None:
            async with http.request(
                req.method, f"{base}/wecom/callback", params=req.query, data=req.body
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"the server refused a callback: {r.status} {await r.text()}")

        async def say(who: str, text: str) -> None:
            t.said(who, text)
            await post(sim.text(who, text, msg_id=next(msg_ids), timestamp=stamp()))
            await settle()

        async def photo(who: str, data: bytes, what: str) -> None:
            t.said(who, f"[照片：{what}]")
            media = state.add_media(data)
            await post(sim.image(who, media, msg_id=next(msg_ids), timestamp=stamp()))
            await settle()

        def card_for(who: str, prefix: str) -> dict[str, Any]:
            return next(
                m["template_card"] for m in reversed(state.delivered)
                if m.get("touser") == who and str(m.get("template_card", {}).get("task_id", "")).startswith(prefix)
            )  # fmt: skip

        async def press(who: str, card: dict[str, Any], label: str, select: str | None = None) -> None:
            button = next(b for b in card["button_list"] if b["text"] == label)
            chosen = None
            if select is not None:
                options = card["button_selection"]["option_list"]
                option = next(o for o in options if o["text"] == select)
                chosen = {card["button_selection"]["question_key"]: [option["id"]]}
                t.said(who, f"在卡片上选择「{select}」，点 [{label}]")
            else:
                t.said(who, f"点 [{label}]")
            code = state.issue_response_code(who, card["task_id"])
            await post(sim.card_event(who, event_key=button["key"], task_id=card["task_id"], response_code=code,
                                      timestamp=stamp() + next(msg_ids) % 30, selected=chosen))  # fmt: skip
            await settle()

        # 07:30 the morning job
        t.scene(at("07:30"), "早间任务：排程并推送今日盘点卡片")
        report = await jobs.morning(sm, demo_settings, day_clock.now())
        t.add(f"{' ' * 8}（{report.line()}）")
        await settle()

        # 08:10 张伟 counts from his card
        t.scene(at("08:10"), "张伟开始盘点")
        counter = "zhangwei"
        await press(counter, card_for(counter, "tasks-"), "开始盘点")
        await say(counter, "abc")
        found = Decimal(0)
        shown = {"pack": False, "photo": False}
        for step in range(12):  # a hit, a pack count, a photo, then a real difference
            conv = await app[APP_KEY]["store"].get(f"wecom:{counter}") or {}
            task_id = conv.get("task_id")
            if task_id is None:
                break
            async with sm() as s:
                task = await s.get(CountTask, int(task_id))
                assert task is not None
                il = await s.get(ItemLocation, task.item_location_id)
                item = await s.get(Item, task.item_id)
                assert il is not None and item is not None
                book = il.qty
                packs = (await s.execute(select(ItemUnit).where(ItemUnit.item_id == item.id))).scalars().all()
                codes = (
                    (await s.execute(select(ItemBarcode.barcode).where(ItemBarcode.item_id == item.id)))
                    .scalars()
                    .all()
                )
            pack = max(packs, key=lambda p: p.factor) if packs else None
            ean = next((c for c in codes if len(c) == 13 and c.isdigit()), None)
            if step > 0 and not shown["pack"] and pack is not None and book >= pack.factor > 1:
                whole, rest = divmod(int(book), int(pack.factor))
                await say(counter, f"{whole}{pack.unit}{rest}{item.base_unit}")  # 3箱5个
                shown["pack"] = True
            elif step > 0 and not shown["photo"] and ean is not None:
                await photo(counter, barcode_photo(ean), f"{item.name} 的条码")
                await say(counter, _qty(book))
                shown["photo"] = True
            elif step >= 3 and book >= 6 and (all(shown.values()) or step >= 8):
                found = book + max(Decimal(3), (book / 3).quantize(Decimal(1)))
                t.scene(at("08:40"), "张伟发现差异：多出约三分之一")
                await say(counter, _qty(found))
                break
            else:
                await say(counter, _qty(book))  # the book is right
        await say(counter, "结束")

        # the blind recount
        recounter = _recipient(state, "rc-")
        if recounter:
            t.scene(at("09:05"), f"{names.get(recounter, recounter)} 收到盲盘复盘请求")
            await press(recounter, card_for(recounter, "rc-"), "开始复盘")
            await say(recounter, _qty(found))
            # the review
            reviewer = _recipient(state, "rv-")
            if reviewer:
                t.scene(at("09:20"), "主管复核：在卡片上选择原因")
                card = card_for(reviewer, "rv-")
                option = card["button_selection"]["option_list"][0]["text"]
                await press(reviewer, card, "提交原因", select=option)
                done: set[str] = set()
                for step_clock in ("09:30", "10:15", "11:00"):
                    approver = _recipient(state, "ap-", answered=done)
                    if not approver:
                        break
                    t.scene(at(step_clock), f"{names.get(approver, approver)} 审批")
                    done.add(approver)
                    await press(approver, card_for(approver, "ap-"), "通过")

        t.scene(at("15:00"), "下午提醒：还有未完成任务的盘点员")
        await jobs.afternoon(sm, demo_settings, day_clock.now())
        await settle()
        t.scene(at("18:00"), "日终汇总：主管与经理")
        await jobs.summary_job(sm, demo_settings, day_clock.now())
        await settle()

        async with sm() as s:
            adjustments = (await s.execute(select(func.count()).select_from(Adjustment))).scalar_one()
            variances = (await s.execute(select(Variance.state, func.count()).group_by(Variance.state))).all()
        t.scene("──", "今日结果")
        from core.variance.workflow import VARIANCE, VarianceState

        state_names = VARIANCE.state_zh  # Chinese text carries the states' Chinese names, never their codes
        t.add(
            f"{' ' * 8}差异："
            + "，".join(f"{state_names[VarianceState(state_)]} {n}" for state_, n in variances)
        )
        t.add(f"{' ' * 8}库存调整单：{adjustments}（pandian adjustments export 可导出）")

    await runner.cleanup()
    await sandbox.cleanup()
    await engine.dispose()
    return t


def _owner(state: Any, update: dict[str, Any]) -> str:
    """Whose card an update replaced: the sandbox knows whom each response_code was issued to."""
    code = state.response_codes.get(str(update.get("response_code")))
    return str(code.userid) if code is not None else "?"


def _recipient(state: Any, prefix: str, answered: set[str] | None = None) -> str | None:
    for m in reversed(state.delivered):
        tid = str(m.get("template_card", {}).get("task_id", ""))
        who = str(m.get("touser"))
        if tid.startswith(prefix) and who not in (answered or set()):
            return who
    return None


def _qty(q: Decimal) -> str:
    return format(q.normalize(), "f") if q == q.to_integral() else str(q)
