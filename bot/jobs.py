"""Scheduled jobs: plain async functions ``job(sessionmaker, settings, now) -> JobReport``.

``bot.scheduler`` fires them on time; ``pandian jobs run NAME`` and the tests call them directly with a chosen
``now`` (an aware datetime; the company day is ``now`` in ``settings.tz``).

- **morning**: on a working day, plan the day (``plan_day``) and push each counter who has tasks their daily
  task card (walking order, progress, 开始盘点 / 无法找到).
- **afternoon**: on a working day, remind the counters who still have open tasks (the same card, fresh).
- **summary**: on a working day, the end-of-day summary card (progress, accuracy, open variances, top
  reasons) to every supervisor and manager, for the warehouses they look after.
- **escalation**: every few minutes, the workflow's housekeeping (``core.variance.service.housekeeping``):
  overdue approval steps move up a level, then ``bot.flows.sync_cards`` sends the approval card to whoever
  each step now waits for (once per escalation and person: its key names the step's role) and marks the old
  copies as moved on; a new process-improvement item is announced to the managers once.
- **erp**: the ERP hook (``integrations.erp.scheduled_sync`` and ``drain_postings``) when that module exists.

Several server processes may run the same schedule. Each daily job claims a durable key
(``job:<name>:<day>``, a row in ``inbound_seen``) in the same transaction as everything it writes and queues,
so exactly one process does the day's job; a job that fails rolls its claim back with the rest, and a retry
(or another process) can do it. On PostgreSQL a second process waits on the first one's claim and then finds it
taken. Every message also carries its own outbox idempotency key (``tasks:<user>:<day>``, ...), so even a run
without the claim could never push twice.

A person who cannot be reached (no id on any configured platform) is skipped with a log line. Each person's
message is queued in its own savepoint: one failing person is logged and the others still get theirs.
Cards are rendered and signed by ``bot.flows`` (the server's payload key), like every other card."""

from __future__ import annotations

import importlib
import logging
import time as clock
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cards import daily_tasks, summary
from bot.cards.daily_tasks import DailyTasks, TaskLine
from bot.cards.model import Card, Lang, Tone, pick
from bot.cards.summary import DailySummary, ImprovementNotice
from bot.flows import lang_of, send_card, sync_cards
from bot.notify import address_for
from core.analytics import TOTAL, ReportFilter, accuracy_report, progress_report, reasons_report
from core.analytics import open_variances_report as open_variances
from core.config import Settings
from core.db import dialect_insert
from core.enums import Role, TaskReason, TaskStatus
from core.models import CountTask, ImprovementItem, InboundSeen, User, Warehouse
from core.people import holders, sites
from core.scheduling.service import Unassigned, load_calendar, plan_day, unassigned_work
from core.variance.service import counter_tasks, housekeeping

log = logging.getLogger("pandian.jobs")

ESCALATION_LOCK_KEY = 0x70645F657363  # "pd_esc": PostgreSQL advisory lock serialising escalation runs

ALREADY_DONE = "这一天已经运行过 / already done for this day"


@dataclass
class JobReport:
    """What one run did. ``skipped`` says why nothing was done (a day off, already done today, ...), in
    Chinese and English."""

    job: str
    day: date
    skipped: str | None = None
    sent: int = 0  # messages newly queued
    unreachable: list[str] = field(default_factory=list)  # employee numbers with no platform id
    failed: list[str] = field(default_factory=list)  # employee numbers whose message failed
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        if self.skipped:
            return f"{self.job} {self.day}: skipped ({self.skipped})"
        extra = " ".join(f"{k}={v}" for k, v in self.details.items())
        out = f"{self.job} {self.day}: {self.sent} queued, {len(self.unreachable)} unreachable"
        out += f", {len(self.failed)} failed" if self.failed else ""
        return f"{out} {extra} in {self.seconds:.2f}s".replace("  ", " ")


JobFn = Callable[..., Awaitable[JobReport]]


# --------------------------------------------------------------------------------------------------- helpers


def local_day(settings: Settings, now: datetime) -> date:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(settings.tz).date()


async def claim(session: AsyncSession, key: str, now: datetime) -> bool:
    """Take a once-only key in the caller's transaction; False when it was taken before. Rolled back with the
    transaction, so a job that fails leaves the key free."""
    stmt = dialect_insert(session, InboundSeen).values(dedup_key=key, received_at=now, processed_at=now)
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["dedup_key"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _users_with(session: AsyncSession, *roles: Role) -> list[User]:
    """``core.people.holders``, by employee number (the order the jobs go through people in)."""
    return sorted(await holders(session, *roles), key=lambda u: u.employee_no)


Send = Callable[[User, Lang], Awaitable[bool]]


async def _each(
    session: AsyncSession, settings: Settings, report: JobReport, users: Sequence[User], send: Send
) -> None:
    """Call ``send`` per reachable user, each in a savepoint: a failure is logged and the next user goes on."""
    for user in users:
        emp = user.employee_no
        to = address_for(settings, user)
        if to is None:
            log.info("%s: %s (%s) has no id on any configured platform; skipped", report.job, emp, user.name)
            report.unreachable.append(emp)
            continue
        try:
            async with session.begin_nested():
                if await send(user, lang_of(settings, user)):
                    report.sent += 1
        except Exception:
            log.exception("%s: queueing for %s failed; the others go on", report.job, emp)
            report.failed.append(emp)


async def _day_off(session: AsyncSession, settings: Settings, day: date) -> str | None:
    cal = await load_calendar(session, settings)
    if cal.is_working_day(day):
        return None
    name = cal.holiday_name(day)
    return f"{day} 不是工作日{f'（{name}）' if name else ''} / {day} is not a working day{f' ({name})' if name else ''}"


def _trace(job: str, day: date) -> str:
    return f"job-{job}-{day:%Y%m%d}"


DayWork = Callable[[AsyncSession, JobReport], Awaitable[None]]


async def _daily(
    job: str, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime, work: DayWork
) -> JobReport:
    """A daily job: on a working day, and once (``job:<name>:<day>`` claimed), ``work`` in the claim's
    transaction."""
    started = clock.perf_counter()
    report = JobReport(job, local_day(settings, now))
    async with sessionmaker() as s, s.begin():
        if (off := await _day_off(s, settings, report.day)) is not None:
            report.skipped = off
        elif not await claim(s, f"job:{job}:{report.day}", now):
            report.skipped = ALREADY_DONE
        else:
            await work(s, report)
    report.seconds = clock.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------------- task cards


async def _done_today(session: AsyncSession, settings: Settings, day: date) -> dict[int, int]:
    """Tasks each counter closed as done on ``day`` (local)."""
    lo = datetime.combine(day, datetime.min.time(), settings.tz).astimezone(UTC)
    rows = await session.execute(
        select(CountTask.assignee_id, func.count())
        .where(
            CountTask.assignee_id.is_not(None),
            CountTask.status == TaskStatus.DONE,
            CountTask.closed_at >= lo,
            CountTask.closed_at < lo + timedelta(days=1),
        )
        .group_by(CountTask.assignee_id)
    )
    return {uid: int(n) for uid, n in rows.all() if uid is not None}


async def task_lines(session: AsyncSession, user: User, day: date) -> list[TaskLine]:
    """The counter's open tasks due by ``day`` (earlier days' still open included), in the walk's order, as card
    lines with their warehouse when the company has several (never a book quantity: counts are blind)."""
    from bot.walk import Stop, walk_order, warehouse_codes

    codes = await warehouse_codes(session)
    rows = await counter_tasks(session, user.id, day)
    stops = walk_order(Stop(t, i, lo, codes.get(lo.warehouse_id)) for t, i, lo in rows)
    return [
        TaskLine(
            s.task.id, s.location.code, s.item.sku, s.item.name, s.item.spec, s.item.base_unit,
            TaskReason(s.task.reason), s.location.sequence, s.warehouse,
        )
        for s in stops
    ]  # fmt: skip


def task_card(
    name: str,
    day: date,
    lines: Sequence[TaskLine],
    done: int,
    *,
    lang: Lang,
    ref: str,
    reminder: bool = False,
) -> Card:
    """The daily task card; as a reminder it says how many are left and is orange."""
    card = daily_tasks.build(
        DailyTasks(name, day, lines, done=done, total=done + len(lines)), lang=lang, ref=ref
    )
    if not reminder:
        return card
    n = len(lines)
    title = pick(lang, f"盘点提醒：今天还有 {n} 项未完成", f"Reminder: {n} counts left today")
    return replace(card, title=title, template=Tone.ORANGE)


async def _push_task_cards(
    session: AsyncSession, settings: Settings, report: JobReport, now: datetime, *, reminder: bool
) -> None:
    day = report.day
    done = await _done_today(session, settings, day)
    counters = await _users_with(session, Role.COUNTER)
    kind = "remind" if reminder else "tasks"
    with_tasks = 0

    async def send(user: User, lang: Lang) -> bool:
        nonlocal with_tasks
        lines = await task_lines(session, user, day)
        if not lines:
            return False
        with_tasks += 1
        ref = f"{kind}-{user.id}-{day:%Y%m%d}"
        card = task_card(user.name, day, lines, done.get(user.id, 0), lang=lang, ref=ref, reminder=reminder)
        return await send_card(
            session, settings, user, card, key=f"{kind}:{user.id}:{day}", subject=f"tasks:{user.id}:{day}",
            now=now, trace_id=_trace(report.job, day),
        )  # fmt: skip

    await _each(session, settings, report, counters, send)
    report.details["counters_with_tasks"] = with_tasks


async def morning(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> JobReport:
    """Plan the day and push every counter who has tasks their daily task card. Working days only, once a day."""

    async def work(s: AsyncSession, report: JobReport) -> None:
        plan = await plan_day(s, settings, report.day, now=now)
        report.details.update(planned=plan.created, open_tasks=len(plan.tasks), unassigned=plan.unassigned)
        await _push_task_cards(s, settings, report, now, reminder=False)
        await _push_unassigned(s, settings, report, now)

    return await _daily("morning", sessionmaker, settings, now, work)


async def _scoped(
    session: AsyncSession, people: Sequence[User]
) -> Callable[[User, Sequence[int]], list[int]]:
    """Which of some warehouse ids a person looks after: a manager all; a supervisor their site's (their team's
    warehouses and the zones they cover, ``core.people.sites``), all when tied to none."""
    where = await sites(session, people)

    def mine(user: User, warehouse_ids: Sequence[int]) -> list[int]:
        if Role.MANAGER.value in (user.roles or []) or not where.get(user.id):
            return list(warehouse_ids)
        return [w for w in warehouse_ids if w in where[user.id]]

    return mine


async def _push_unassigned(
    session: AsyncSession, settings: Settings, report: JobReport, now: datetime
) -> None:
    """Tell the supervisors (of their warehouses) and the managers when planned work has nobody to do it."""
    day = report.day
    work = {u.warehouse_id: u for u in await unassigned_work(session, day)}
    if not work:
        return
    people = await _users_with(session, Role.SUPERVISOR, Role.MANAGER)
    mine = await _scoped(session, people)

    told = 0

    async def send(user: User, lang: Lang) -> bool:
        nonlocal told
        items = [work[w] for w in mine(user, list(work))]
        if not items:
            return False
        told += 1
        card = summary.unassigned_notice(day, items, lang=lang, ref=f"unassigned-{user.id}-{day:%Y%m%d}")
        return await send_card(
            session, settings, user, card, key=f"unassigned:{user.id}:{day}", subject=f"unassigned:{day}",
            now=now, trace_id=_trace(report.job, day),
        )  # fmt: skip

    await _each(session, settings, report, people, send)
    report.details["unassigned_notices"] = told


async def afternoon(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> JobReport:
    """Remind the counters who still have open tasks today. Working days only, once a day."""

    async def work(s: AsyncSession, report: JobReport) -> None:
        await _push_task_cards(s, settings, report, now, reminder=True)

    return await _daily("afternoon", sessionmaker, settings, now, work)


# ------------------------------------------------------------------------------------------------ summary


@dataclass
class _WarehouseDay:
    name: str
    planned: int = 0
    done: int = 0
    overdue: int = 0
    counts: int = 0
    hits: int = 0
    open_variances: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unassigned: Unassigned | None = None


async def _warehouse_day(
    session: AsyncSession, settings: Settings, wh: Warehouse, day: date, now: datetime
) -> _WarehouseDay:
    out = _WarehouseDay(f"{wh.name} {wh.code}")
    flt = ReportFilter(day, day, wh.code)
    total = next(r for r in await progress_report(session, settings, flt) if r.group == TOTAL)
    out.planned, out.done, out.overdue = total.planned, total.done, total.overdue
    acc = next(r for r in await accuracy_report(session, settings, flt) if r.group == TOTAL)
    out.counts, out.hits = acc.counts, acc.hits
    out.open_variances = len(
        await open_variances(session, settings, ReportFilter(warehouse=wh.code), now=now)
    )
    out.reasons = {r.reason_code: r.count for r in await reasons_report(session, settings, flt)}
    return out


def daily_summary(day: date, parts: Sequence[_WarehouseDay], *, lang: Lang) -> DailySummary:
    """One summary over the warehouses a person looks after."""
    counts, hits = sum(p.counts for p in parts), sum(p.hits for p in parts)
    reasons: dict[str, int] = defaultdict(int)
    for p in parts:
        for code, n in p.reasons.items():
            reasons[code] += n
    scope = (
        parts[0].name
        if len(parts) == 1
        else pick(lang, f"全部 {len(parts)} 个仓库", f"All {len(parts)} warehouses")
    )
    return DailySummary(
        day=day,
        scope=scope,
        planned=sum(p.planned for p in parts),
        done=sum(p.done for p in parts),
        overdue=sum(p.overdue for p in parts),
        accuracy_pct=(Decimal(hits) * 100 / Decimal(counts)) if counts else None,
        open_variances=sum(p.open_variances for p in parts),
        unassigned=[p.unassigned for p in parts if p.unassigned],
        top_reasons=sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])),
    )


async def summary_job(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> JobReport:
    """The end-of-day summary card to supervisors (their team's warehouses) and managers (all). Working days
    only, once a day."""

    async def work(s: AsyncSession, report: JobReport) -> None:
        day = report.day
        warehouses = list((await s.execute(select(Warehouse).order_by(Warehouse.code))).scalars())
        facts = {wh.id: await _warehouse_day(s, settings, wh, day, now) for wh in warehouses}
        for u in await unassigned_work(s, day):
            facts[u.warehouse_id].unassigned = u
        people = await _users_with(s, Role.SUPERVISOR, Role.MANAGER)
        mine = await _scoped(s, people)

        async def send(user: User, lang: Lang) -> bool:
            parts = [facts[w] for w in mine(user, [wh.id for wh in warehouses])]
            if not parts:
                return False
            card = summary.build(
                daily_summary(day, parts, lang=lang), lang=lang, ref=f"summary-{user.id}-{day:%Y%m%d}",
                reasons=settings.reasons.codes,
            )  # fmt: skip
            return await send_card(
                s, settings, user, card, key=f"summary:{user.id}:{day}", subject=f"summary:{day}", now=now,
                trace_id=_trace(report.job, day),
            )  # fmt: skip

        await _each(s, settings, report, people, send)
        report.details["warehouses"] = len(warehouses)

    return await _daily("summary", sessionmaker, settings, now, work)


# --------------------------------------------------------------------------------------------- escalation


async def escalation(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> JobReport:
    """The workflow housekeeping, then the cards it calls for: overdue approval steps move up a level and
    whoever each step now waits for gets its approval card (once: the card's key names the step's role); the
    old copies are updated to say the step moved on; a new improvement item is announced to the managers."""
    started = clock.perf_counter()
    report = JobReport("escalation", local_day(settings, now))
    trace = f"job-escalation-{now:%Y%m%d%H%M}"
    async with sessionmaker() as s, s.begin():
        if s.get_bind().dialect.name == "postgresql":
            # one run at a time: a second process waits, then finds the steps already moved up
            await s.execute(select(func.pg_advisory_xact_lock(ESCALATION_LOCK_KEY)))
        report.details.update(await housekeeping(s, settings, now))
        cards = await sync_cards(s, settings, now, trace)
        report.details.update(approval_cards=cards.approval, updated=cards.updated)
        report.sent += cards.total()
        await _announce_improvements(s, settings, report, now)
    report.seconds = clock.perf_counter() - started
    return report


async def _announce_improvements(
    session: AsyncSession, settings: Settings, report: JobReport, now: datetime
) -> None:
    """Each open improvement item is announced once to the managers (supervisors when there are none)."""
    items = list(
        (
            await session.execute(
                select(ImprovementItem).where(ImprovementItem.state == "open").order_by(ImprovementItem.id)
            )
        ).scalars()
    )
    if not items:
        return
    people = await _users_with(session, Role.MANAGER) or await _users_with(session, Role.SUPERVISOR)
    names = dict((await session.execute(select(Warehouse.id, Warehouse.name))).all())
    cfg = settings.reasons
    for it in items:
        data = ImprovementNotice(
            item_id=it.id, scope=str(names.get(it.warehouse_id, it.warehouse_id)), reason_code=it.reason_code,
            occurrences=len(it.variance_ids or []), window_days=cfg.recurrence_window_days, since=it.window_start,
        )  # fmt: skip

        async def send(
            user: User, lang: Lang, it: ImprovementItem = it, data: ImprovementNotice = data
        ) -> bool:
            card = summary.improvement_notice(
                data, lang=lang, ref=f"improve-{it.id}-{user.id}", reasons=cfg.codes
            )
            return await send_card(
                session, settings, user, card, key=f"improvement:{it.id}:{user.id}",
                subject=f"improvement:{it.id}", now=now, trace_id=f"job-improvement-{it.id}",
            )  # fmt: skip

        await _each(session, settings, report, people, send)


# ------------------------------------------------------------------------------------------------------ ERP


def _erp_module(name: str) -> Any | None:
    """The ERP integration module, or None when it is not installed (anything else missing is a bug)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


async def erp(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: datetime,
    *,
    module: str = "integrations.erp",
) -> JobReport:
    """The ERP hook: ``scheduled_sync(sessionmaker, settings)`` then ``drain_postings(sessionmaker, settings)``
    of ``integrations.erp``, when that module exists. They own their transactions.

    One run per interval across processes: the interval's slot (``job:erp:<slot start>``) is claimed and
    committed first. A step that fails is logged, the next step still runs, and the next interval tries
    again."""
    started = clock.perf_counter()
    report = JobReport("erp", local_day(settings, now))
    found = _erp_module(module)
    steps = [(n, getattr(found, n, None)) for n in ("scheduled_sync", "drain_postings")] if found else []
    if not any(fn for _, fn in steps):
        log.info("erp: %s with scheduled_sync/drain_postings is not installed; skipped", module)
        report.skipped = f"未安装 ERP 集成 / {module} is not installed"
        return report
    minutes = settings.schedule.erp_sync_every_minutes
    epoch = int(now.timestamp()) // (minutes * 60) * minutes * 60
    slot = datetime.fromtimestamp(epoch, UTC).astimezone(settings.tz)
    async with sessionmaker() as s, s.begin():
        taken = await claim(s, f"job:erp:{slot.isoformat(timespec='minutes')}", now)
    if not taken:
        report.skipped = "本时段已运行 / already run in this interval"
        return report
    for name, fn in steps:
        if fn is None:
            log.info("erp: %s has no %s; skipped", module, name)
            continue
        try:
            report.details[name] = await fn(sessionmaker, settings)
        except Exception:
            log.exception("erp: %s failed", name)
            report.failed.append(name)
    report.seconds = clock.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class JobInfo:
    name: str
    run: JobFn
    zh: str
    en: str


JOBS: dict[str, JobInfo] = {
    j.name: j
    for j in (
        JobInfo(
            "morning",
            morning,
            "早晨：生成当天计划并推送任务卡片",
            "plan the day and push each counter's task card",
        ),
        JobInfo("afternoon", afternoon, "下午：提醒未完成任务", "remind counters of unfinished tasks"),
        JobInfo(
            "summary",
            summary_job,
            "傍晚：主管和经理的盘点日报",
            "end-of-day summary for supervisors and managers",
        ),
        JobInfo(
            "escalation",
            escalation,
            "审批超时升级（及其他例行处理）",
            "escalate overdue approvals (and housekeeping)",
        ),
        JobInfo(
            "erp",
            erp,
            "ERP 同步与过账（需安装 ERP 集成）",
            "ERP sync and postings (when integrations.erp exists)",
        ),
    )
}
