"""Slash commands (and their Chinese aliases), each for the roles that may use it. Thin: parse, ask core, reply.

| command                 | alias   | who                                      | answers                                   |
|-------------------------|---------|------------------------------------------|-------------------------------------------|
| ``/help``               | /帮助   | everyone                                 | the commands this user may use            |
| ``/tasks``              | /任务   | counter                                  | my open tasks today, in walking order     |
| ``/count TASK QTY``     | /盘点   | counter                                  | a quick count of one task                 |
| ``/status``             | /进度   | every role                               | today's progress: counter own + team,     |
|                         |         |                                          | supervisor the team, manager / admin /    |
|                         |         |                                          | finance per warehouse                     |
| ``/accuracy [DAYS]``    | /准确率 | supervisor, finance, manager, admin      | record accuracy per ABC class: a chart    |
|                         |         |                                          | image plus a short text (text alone when  |
|                         |         |                                          | the chart cannot be drawn or sent)        |
| ``/variances``          | /差异   | supervisor, finance, manager, admin      | open variances waiting for my review or   |
|                         |         | (counters are told they are blind)       | for my approval role                      |
| ``/request CODE [WHY]`` | /复盘   | every role                               | an ad-hoc count of an item (barcode, SKU) |
|                         |         |                                          | or a location (code, label, WH/CODE)      |

A command the user may not use is answered politely, naming who may; help lists only the user's commands.
Replies are in the user's language (``bot.i18n``): Chinese by default, English for an English locale.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.cards.model import Lang
from bot.cards.text import SEVERITY_LABEL_EN
from bot.charts import ClassAccuracy, accuracy_chart, accuracy_text
from bot.dispatcher import Context, Router
from bot.events import TextMessage
from bot.handlers.counting import what_is_next
from bot.i18n import lang, refusal, tr
from bot.walk import open_walk
from core.analytics import ROLE_ZH, ReportFilter, accuracy_report, open_variances_report
from core.enums import OPEN_STATUSES, EntryMethod, Role, TaskReason, TaskStatus
from core.models import (
    CountRequest,
    CountTask,
    Item,
    ItemBarcode,
    ItemLocation,
    Location,
    Team,
    User,
    Variance,
    Warehouse,
)
from core.scheduling.service import request_count
from core.variance.service import WorkflowError, record_count
from core.variance.tolerance import SEVERITY_LABEL_ZH, Severity

log = logging.getLogger("pandian.commands")
router = Router()

EVERY_ROLE = frozenset(r.value for r in Role)
OVERSEERS = frozenset({"supervisor", "finance", "manager", "admin"})
BLIND = "盘点员看不到差异（盲盘），差异由主管复核处理。您只需按任务如实盘点即可。"
BLIND_EN = (
    "Counts are blind: counters don't see differences, a supervisor reviews them. "
    "Just count each task as you find it."
)
ROLE_EN = {"counter": "counters", "supervisor": "supervisors", "finance": "finance", "manager": "managers",
           "admin": "admins", "system": "the system"}  # fmt: skip
STATE_EN = {
    "open": "open",
    "recount_pending": "recount pending",
    "confirmed": "confirmed",
    "disputed": "disputed",
    "in_review": "in review",
    "pending_approval": "awaiting approval",
    "recount_requested": "recount requested",
}
MAX_DAYS = 366
MAX_LISTED = 15
MAX_REQUEST_LINES = 50


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    roles: frozenset[str] | None  # None: everyone, even without a role
    usage_zh: str
    usage_en: str
    run: Callable[[Context, list[str]], Awaitable[None]] = field(repr=False)


def _day_start(ctx: Context, day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ctx.settings.tz)


def _roles(ctx: Context) -> set[str]:
    return set(ctx.user.roles or [])


# ---------------------------------------------------------------------------------------------- /help


async def _help(ctx: Context, args: list[str]) -> None:
    roles = _roles(ctx)
    en = lang(ctx) == "en"
    lines = [
        c.usage_en if en else c.usage_zh for c in COMMANDS.values() if c.roles is None or roles & c.roles
    ]
    if "counter" in roles:
        lines.insert(0, tr(ctx, "开始：逐项盘点今天的任务（回复数量，或 跳过 / 空 / 找不到 / 撤销 / 结束）",
                           "start: count today's tasks one by one (reply with a quantity, or skip / empty / "
                           "not here / undo / stop)"))  # fmt: skip
    ctx.reply_text(tr(ctx, "可用命令 / commands:\n", "Commands:\n") + "\n".join(lines))


# ----------------------------------------------------------------------------------------- /tasks /count


async def _tasks(ctx: Context, args: list[str]) -> None:
    """The counter's open tasks (earlier days' still open included) in the walk's order: recounts first, then
    the walking order (``bot.walk``), the warehouse shown when there are several. Blind: no book, no trigger."""
    stops = await open_walk(ctx.session, ctx.user.id, ctx.today)
    if not stops:
        ctx.reply_text(tr(ctx, "今天没有待盘点的任务 👍", "No tasks left today 👍"))
        return
    if lang(ctx) == "en":
        lines = [
            f"#{s.task.id} {s.where} · {_name(s.item.name, s.item.spec)} ({s.item.sku})"
            + (" [recount]" if s.recount else "")
            for s in stops[:20]
        ]
        more = f"\n…and {len(stops) - 20} more" if len(stops) > 20 else ""
        ctx.reply_text(f"Today's count tasks ({len(stops)}, in walking order):\n" + "\n".join(lines) + more)
        return
    lines = [
        f"#{s.task.id} {s.where} · {_name(s.item.name, s.item.spec)}（{s.item.sku}）"
        + (" [复盘]" if s.recount else "")
        for s in stops[:20]
    ]
    more = f"\n…还有 {len(stops) - 20} 项" if len(stops) > 20 else ""
    ctx.reply_text(f"今天的盘点任务（{len(stops)} 项，按行走顺序）：\n" + "\n".join(lines) + more)


def _name(name: str, spec: str | None) -> str:
    return f"{name} {spec}" if spec else name


async def _count(ctx: Context, args: list[str]) -> None:
    if len(args) < 2 or not args[0].lstrip("#").isdigit():
        ctx.reply_text(tr(ctx, "用法：/盘点 任务号 数量，例如 /盘点 123 3箱5个",
                          "Usage: /count TASK QUANTITY, e.g. /count 123 36"))  # fmt: skip
        return
    try:
        result = await record_count(
            ctx.session, ctx.settings, task_id=int(args[0].lstrip("#")), counter_id=ctx.user.id,
            text=" ".join(args[1:]), counted_at=ctx.event.received_at, method=EntryMethod.TYPED,
            dedup_key=ctx.event.dedup_key, now=ctx.now,
        )  # fmt: skip
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))
        return
    # blind: the same words whatever came of the count, the counter's own quantity, and what is next
    if lang(ctx) == "en":
        understood = f" ({result.understood})" if result.understood else ""
        await what_is_next(ctx, f"{result.message_en}{understood}.")
        return
    understood = f"（{result.understood}）" if result.understood else ""
    await what_is_next(ctx, f"{result.message_zh}{understood}。")


# --------------------------------------------------------------------------------------------- /status


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    overdue: int = 0  # open and past its due date
    recounts: int = 0  # open recount tasks

    def add(self, status: str, due: date, reason: str, today: date) -> None:
        self.total += 1
        if status == TaskStatus.DONE:
            self.done += 1
        elif status in OPEN_STATUSES:
            self.overdue += due < today
            self.recounts += reason == TaskReason.RECOUNT

    def line(self, name: str, lang: Lang = "zh") -> str:
        if lang == "en":
            pct = f" ({self.done * 100 // self.total}%)" if self.total else ""
            extra = "".join(
                f", {label} {n}"
                for label, n in (("overdue", self.overdue), ("recounts to do", self.recounts))
                if n
            )
            return f"{name}: {self.done}/{self.total} done{pct}{extra}"
        pct = f"（{self.done * 100 // self.total}%）" if self.total else ""
        extra = "".join(
            f"，{label} {n}" for label, n in (("逾期", self.overdue), ("复盘待做", self.recounts)) if n
        )
        return f"{name}：{self.done}/{self.total} 已完成{pct}{extra}"


async def _status(ctx: Context, args: list[str]) -> None:
    today, roles, lg = ctx.today, _roles(ctx), lang(ctx)
    tasks = await _todays_tasks(ctx.session, today, _day_start(ctx, today))
    title = tr(ctx, f"今天（{today:%m月%d日}）的盘点进度", f"Count progress today ({today:%b} {today.day})")
    total_label = tr(ctx, "合计", "Total")
    if roles & {"manager", "admin", "finance"}:
        codes = await _warehouse_codes(ctx.session)
        by_wh: dict[int, Progress] = defaultdict(Progress)
        total = Progress()
        for t in tasks:
            for p in (by_wh[t.warehouse_id], total):
                p.add(t.status, t.due_date, t.reason, today)
        lines = [
            by_wh[w].line(f"{codes.get(w, w)}", lg) for w in sorted(by_wh, key=lambda w: codes.get(w, ""))
        ]
        body = "\n".join(lines) or tr(ctx, "今天没有盘点任务", "No count tasks today")
        ctx.reply_text(
            tr(ctx, f"{title}（按仓库）：", f"{title}, by warehouse:")
            + f"\n{body}\n{total.line(total_label, lg)}"
        )
        return
    team_name, members = await _team(ctx.session, ctx.user)
    if "supervisor" in roles:
        if not members:
            ctx.reply_text(tr(ctx, "您还没有所属班组，看不到班组进度；请联系管理员设置。",
                              "You are not in a team yet, so there is no team progress to show; "
                              "please ask an admin to add you to one."))  # fmt: skip
            return
        per: dict[int, Progress] = defaultdict(Progress)
        team = Progress()
        for t in tasks:
            if t.assignee_id in members:
                for p in (per[t.assignee_id], team):
                    p.add(t.status, t.due_date, t.reason, today)
        lines = [per[uid].line(members[uid], lg) for uid in sorted(per, key=lambda u: members[u])]
        body = "\n".join(lines) or tr(ctx, "班组今天没有盘点任务", "No count tasks for the team today")
        head = tr(ctx, f"{title} · {team_name}：", f"{title} · {team_name}:")
        ctx.reply_text(f"{head}\n{body}\n{team.line(total_label, lg)}")
        return
    mine, team = Progress(), Progress()
    for t in tasks:
        if t.assignee_id == ctx.user.id:
            mine.add(t.status, t.due_date, t.reason, today)
        if t.assignee_id in members:
            team.add(t.status, t.due_date, t.reason, today)
    lines = [mine.line(tr(ctx, "我", "Me"), lg)]
    if members:
        lines.append(team.line(tr(ctx, f"班组 {team_name}", f"Team {team_name}"), lg))
    ctx.reply_text(tr(ctx, f"{title}：\n", f"{title}:\n") + "\n".join(lines))


# ------------------------------------------------------------------------------------------- /accuracy


async def _accuracy(ctx: Context, args: list[str]) -> None:
    days = 30
    if args:
        if not args[0].isdigit() or not 1 <= int(args[0]) <= MAX_DAYS:
            ctx.reply_text(tr(ctx, f"用法：/准确率 [天数]，天数为 1 到 {MAX_DAYS}，默认 30，例如 /准确率 7",
                              f"Usage: /accuracy [DAYS], DAYS from 1 to {MAX_DAYS} (30 if left out), "
                              "e.g. /accuracy 7"))  # fmt: skip
            return
        days = int(args[0])
    today = ctx.today
    report = await accuracy_report(
        ctx.session, ctx.settings, ReportFilter(start=today - timedelta(days=days - 1), end=today)
    )
    by_group = {r.group: r for r in report}
    rows = []
    for label, group in (("A", "class=A"), ("B", "class=B"), ("C", "class=C"), ("total", "total")):
        r = by_group.get(group)
        rows.append(
            ClassAccuracy(label, r.counts, r.hits, r.hit_rate, r.unit_accuracy, r.value_accuracy)
            if r is not None
            else ClassAccuracy(label, 0, 0, None, None, None)
        )
    reader = lang(ctx)
    ctx.reply_text(accuracy_text(rows, days=days, lang=reader))
    store = ctx.services.get("photos")
    if store is None or rows[-1].counts == 0:
        return  # nothing to draw, or nowhere to keep the picture for the outbox: the text is the answer

    async def draw() -> list[tuple[str, dict[str, Any]]]:
        """After the commit: drawing takes 0.1-0.3 s (2-3 s the first time), too long to hold the transaction."""
        try:
            chart = await accuracy_chart(rows, days=days, lang=reader)  # read before the commit
        except Exception:  # matplotlib missing or failing: the text already says it all
            log.warning("accuracy chart failed; text only", exc_info=True)
            return []
        ref = store.save(chart.png, suffix=".png")
        return [("image", {"image": ref, "path": str(store.path(ref).resolve())})]

    ctx.after_commit(draw)


# ------------------------------------------------------------------------------------------ /variances


async def _variances(ctx: Context, args: list[str]) -> None:
    roles = _roles(ctx)
    rows = await open_variances_report(ctx.session, ctx.settings, ReportFilter(), now=ctx.event.received_at)
    mine = [r for r in rows if r.next_role in roles]
    # whoever reviewed a variance may not approve it (segregation of duties): its approval is someone else's
    reviewed = await _reviewed_by(
        ctx.session, ctx.user.id, [r.id for r in mine if r.state == "pending_approval"]
    )
    mine = [r for r in mine if r.id not in reviewed]
    if not mine:
        ctx.reply_text(tr(ctx, "目前没有等您处理的差异 👍", "Nothing waiting for you 👍"))
        return
    ctx.reply_text(_variance_list(mine, en=lang(ctx) == "en"))


def _variance_list(mine: list[Any], *, en: bool) -> str:
    lines = []
    for r in mine[:MAX_LISTED]:
        try:
            severity = (SEVERITY_LABEL_EN if en else SEVERITY_LABEL_ZH)[Severity(r.severity)]
        except ValueError:
            severity = r.severity
        if en:
            step = f" ({r.next_role})" if r.state == "pending_approval" else ""
            sign = "+" if r.value > 0 else "-" if r.value < 0 else ""
            lines.append(
                f"#{r.id} {r.warehouse}/{r.location} · {r.item_name} ({r.sku}) · {severity} · "
                f"CNY {sign}{abs(r.value).quantize(Decimal('0.01')):,} · {STATE_EN.get(r.state, r.state)}{step} · "
                f"{r.age_hours:g} h"
            )
        else:
            step = f"（{r.next_role_zh}）" if r.state == "pending_approval" else ""
            lines.append(
                f"#{r.id} {r.warehouse}/{r.location} · {r.item_name}（{r.sku}）· {severity} · "
                f"{_money(r.value)} · {r.state_zh}{step} · {r.age_hours:g} 小时"
            )
    left = len(mine) - MAX_LISTED
    if en:
        more = f"\n…and {left} more" if left > 0 else ""
        return f"Variances waiting for you ({len(mine)}, oldest first):\n" + "\n".join(lines) + more
    more = f"\n…还有 {left} 条" if left > 0 else ""
    return f"等您处理的差异（{len(mine)} 条，最久的在前）：\n" + "\n".join(lines) + more


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _money(v: Decimal) -> str:
    sign = "+" if v > 0 else "-" if v < 0 else ""
    return f"{sign}{abs(v).quantize(Decimal('0.01')):,} 元"


# -------------------------------------------------------------------------------------------- /request


async def _request(ctx: Context, args: list[str]) -> None:
    if not args:
        ctx.reply_text(
            tr(ctx, "用法：/复盘 编码 [原因]。编码可以是物料条码、物料编码或库位（如 A-01-03，或 WH1/A-01-03）",
               "Usage: /request CODE [REASON]. CODE is an item barcode, an SKU or a location "
               "(e.g. A-01-03, or WH1/A-01-03)")
        )  # fmt: skip
        return
    code, note = args[0], " ".join(args[1:]) or None
    found = await _resolve_code(ctx.session, code, lang(ctx))
    if isinstance(found, str):
        ctx.reply_text(found)
        return
    if len(found) > MAX_REQUEST_LINES:
        ctx.reply_text(
            tr(ctx, f"{code} 涉及 {len(found)} 个库位物料，太多了；请用更具体的编码（某个库位或某个物料）。",
               f"{code} covers {len(found)} items in locations, too many; "
               "please use a narrower code (one location or one item).")
        )  # fmt: skip
        return
    pending = await _pending_requests(ctx.session, [il for il, _ in found])
    made, skipped = [], []
    for il_id, label in found:
        if il_id in pending:
            skipped.append(label)
            continue
        await request_count(ctx.session, il_id, requested_by_id=ctx.user.id, note=note, now=ctx.now)
        made.append(label)
    parts = []
    if made:
        parts.append(tr(ctx, f"已登记临时盘点请求 {len(made)} 项，下次排程时优先安排：\n",
                        f"Extra count requested for {_items(len(made))}; first in line at the next planning:\n")
                     + "\n".join(made[:20]))  # fmt: skip
        if len(made) > 20:
            parts.append(tr(ctx, f"…还有 {len(made) - 20} 项", f"…and {len(made) - 20} more"))
    if skipped:
        parts.append(tr(ctx, "已有待排程的请求，未重复登记：\n",
                        "Already requested and waiting to be planned, not added again:\n")
                     + "\n".join(skipped[:20]))  # fmt: skip
    ctx.reply_text("\n".join(parts))


# ------------------------------------------------------------------------------------------- the table


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("/tasks", ("/任务",), frozenset({"counter"}), "/任务 /tasks：今天的盘点任务",
                "/tasks: today's count tasks", _tasks),
        Command("/count", ("/盘点",), frozenset({"counter"}),
                "/盘点 任务号 数量 /count：快速录入，如 /盘点 123 3箱5个",
                "/count TASK QUANTITY: quick entry, e.g. /count 123 36", _count),
        Command("/status", ("/进度",), EVERY_ROLE, "/进度 /status：今天的盘点进度",
                "/status: today's count progress", _status),
        Command("/accuracy", ("/准确率",), OVERSEERS,
                "/准确率 [天数] /accuracy：各 ABC 类的库存记录准确率（默认近 30 天，附图）",
                "/accuracy [DAYS]: record accuracy per ABC class (last 30 days unless given, with a chart)",
                _accuracy),
        Command("/variances", ("/差异",), OVERSEERS, "/差异 /variances：等我处理的差异",
                "/variances: variances waiting for me", _variances),
        Command("/request", ("/复盘",), EVERY_ROLE,
                "/复盘 编码 [原因] /request：申请临时盘点（物料条码、物料编码或库位）",
                "/request CODE [REASON]: ask for an extra count (item barcode, SKU or location)", _request),
        Command("/help", ("/帮助",), None, "/帮助 /help：显示这条帮助", "/help: show this help", _help),
    )
}  # fmt: skip
ALIASES = {alias: c.name for c in COMMANDS.values() for alias in (c.name, *c.aliases)}


def _command(text: str) -> tuple[str | None, list[str]]:
    parts = text.strip().split()
    if not parts or not parts[0].startswith("/"):
        return None, parts
    return ALIASES.get(parts[0].lower()), parts[1:]


def _who(roles: Iterable[str], lang: Lang = "zh") -> str:
    order = [r.value for r in Role]
    ordered = sorted(roles, key=order.index)
    if lang == "en":
        names = [ROLE_EN.get(r, r) for r in ordered]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return "、".join(ROLE_ZH.get(r, r) for r in ordered)


@router.on(TextMessage)
async def commands(ctx: Context) -> bool:
    assert isinstance(ctx.event, TextMessage)
    name, args = _command(ctx.event.text)
    if name is None:
        return False
    cmd, roles = COMMANDS[name], _roles(ctx)
    if cmd.roles is not None and not roles & cmd.roles:
        if name == "/variances" and "counter" in roles:
            ctx.reply_text(tr(ctx, BLIND, BLIND_EN))
        else:
            alias = cmd.aliases[0]
            ctx.reply_text(tr(ctx, f"抱歉，{alias} 仅限{_who(cmd.roles)}使用。发送 /帮助 查看您可以使用的命令。",
                              f"Sorry, {cmd.name} is only for {_who(cmd.roles, 'en')}. "
                              "Send /help to see the commands you can use."))  # fmt: skip
        return True
    await cmd.run(ctx, args)
    return True


fallback_router = Router()


@fallback_router.on(TextMessage)
async def fallback(ctx: Context) -> bool:
    ctx.reply_text(tr(ctx, "没看懂这条消息。发送 /帮助 查看可用命令。",
                      "Sorry, I didn't understand that. Send /help to see the commands."))  # fmt: skip
    return True


# -------------------------------------------------------------------------------------------- queries
# The few reads the commands need that core does not offer yet (team progress, code lookup, pending requests).
# They belong in core/analytics.py and core/scheduling/service.py; kept here, read-only, until those move.


@dataclass(frozen=True, slots=True)
class _Task:
    assignee_id: int | None
    warehouse_id: int
    status: str
    due_date: date
    reason: str


async def _todays_tasks(session: AsyncSession, today: date, day_start: datetime) -> list[_Task]:
    """Today's work: tasks planned for today, and earlier ones still open or finished today (not cancelled)."""
    rows = await session.execute(
        select(CountTask.assignee_id, CountTask.warehouse_id, CountTask.status, CountTask.due_date,
               CountTask.reason)
        .where(
            CountTask.status != TaskStatus.CANCELLED,
            or_(
                CountTask.plan_date == today,
                and_(CountTask.plan_date < today,
                     or_(CountTask.status.in_(OPEN_STATUSES), CountTask.closed_at >= day_start)),
            ),
        )
    )  # fmt: skip
    return [_Task(a, w, str(s), d, str(r)) for a, w, s, d, r in rows.all()]


async def _warehouse_codes(session: AsyncSession) -> dict[int, str]:
    return {
        i: f"{c} {n}"
        for i, c, n in (await session.execute(select(Warehouse.id, Warehouse.code, Warehouse.name)))
    }


async def _team(session: AsyncSession, user: User) -> tuple[str, dict[int, str]]:
    """The user's team name and its active members (id -> name); empty without a team."""
    if user.team_id is None:
        return "", {}
    team = await session.get(Team, user.team_id)
    rows = await session.execute(
        select(User.id, User.name).where(User.team_id == user.team_id, User.active.is_(True))
    )
    return (team.name if team else ""), {i: n for i, n in rows.all()}


async def _resolve_code(session: AsyncSession, code: str, lang: Lang = "zh") -> list[tuple[int, str]] | str:
    """The item-locations a code names, with a label each, or the message saying why there are none.

    An item barcode or SKU names every location holding the item; a location label, or a location code
    (``WH/CODE`` when the code exists in several warehouses), names every item held there. Messages and labels
    are in ``lang``."""
    en = lang == "en"

    def label(wh: str, loc: str, name: str, sku: str) -> str:
        return f"{wh}/{loc} · {name} ({sku})" if en else f"{wh}/{loc} · {name}（{sku}）"

    cols: tuple[Any, ...] = (ItemLocation.id, Warehouse.code, Location.code, Item.name, Item.sku)
    base = (
        select(*cols)
        .join(Item, Item.id == ItemLocation.item_id)
        .join(Location, Location.id == ItemLocation.location_id)
        .join(Warehouse, Warehouse.id == Location.warehouse_id)
        .order_by(Warehouse.code, Location.sequence, Location.code, Item.sku)
    )
    item_id = (
        await session.execute(select(ItemBarcode.item_id).where(ItemBarcode.barcode == code))
    ).scalar() or (await session.execute(select(Item.id).where(Item.sku == code))).scalar()
    if item_id is not None:
        rows = (await session.execute(base.where(ItemLocation.item_id == item_id))).all()
        if not rows:
            if en:
                return f"Item {code} has no stock record in any location, so there is nothing to count."
            return f"物料 {code} 目前没有任何库位的库存记录，无法安排盘点。"
        return [(il, label(wh, loc, name, sku)) for il, wh, loc, name, sku in rows]
    locs = list(
        (
            await session.execute(
                select(Location.id, Warehouse.code)
                .join(Warehouse, Warehouse.id == Location.warehouse_id)
                .where(or_(Location.barcode == code, Location.code == code))
            )
        ).all()
    )
    if not locs and "/" in code:
        wh_code, _, loc_code = code.partition("/")
        locs = list(
            (
                await session.execute(
                    select(Location.id, Warehouse.code)
                    .join(Warehouse, Warehouse.id == Location.warehouse_id)
                    .where(Warehouse.code == wh_code, Location.code == loc_code)
                )
            ).all()
        )
    if not locs:
        if en:
            return f"{code} not found: please send an item barcode, an SKU or a location code."
        return f"没有找到 {code}：请发送物料条码、物料编码或库位编码。"
    if len(locs) > 1:
        whs = sorted(w for _, w in locs)
        if en:
            return (
                f"Location {code} exists in several warehouses ({', '.join(whs)}); "
                f"write it as WAREHOUSE/LOCATION, e.g. /request {whs[0]}/{code}"
            )
        return f"库位 {code} 在多个仓库都有（{'、'.join(whs)}），请写成 仓库/库位，例如 /复盘 {whs[0]}/{code}"
    rows = (await session.execute(base.where(ItemLocation.location_id == locs[0][0]))).all()
    if not rows:
        if en:
            return f"Location {code} holds no item with a stock record, so there is nothing to count."
        return f"库位 {code} 目前没有任何物料的库存记录，无法安排盘点。"
    return [(il, label(wh, loc, name, sku)) for il, wh, loc, name, sku in rows]


async def _reviewed_by(session: AsyncSession, user_id: int, variance_ids: list[int]) -> set[int]:
    if not variance_ids:
        return set()
    rows = await session.execute(
        select(Variance.id).where(Variance.id.in_(variance_ids), Variance.reviewer_id == user_id)
    )
    return set(rows.scalars())


async def _pending_requests(session: AsyncSession, il_ids: list[int]) -> set[int]:
    """Item-locations that already have a request the planner has not turned into a task yet."""
    if not il_ids:
        return set()
    rows = await session.execute(
        select(CountRequest.item_location_id).where(
            CountRequest.item_location_id.in_(il_ids), CountRequest.planned_on.is_(None)
        )
    )
    return set(rows.scalars())
