"""When the jobs of ``bot.jobs`` run: an APScheduler 3.x ``AsyncIOScheduler`` on the server's event loop.

- The daily jobs (morning, afternoon, summary) use :class:`WorkingDayTrigger`: the configured wall-clock time
  in the company time zone, on working days of the calendar (statutory holidays, make-up days, the company's
  overrides). The calendar's overrides live in the database and may change while the server runs, so a small
  internal job reloads them every few minutes and reschedules when they changed; the jobs themselves check
  the calendar again, so a day that stopped being a working day does nothing.
- A daily job missed while the server was down still runs when it starts, up to
  ``schedule.misfire_grace_minutes`` late (its next run time is computed from ``now - grace``). Coalescing
  turns several missed runs into one; ``max_instances=1`` never overlaps a job with itself.
- escalation and erp run every N minutes.
- A daily job that fails is retried a few times, a few minutes apart; its once-only claim was rolled back with
  the failure, so the retry (or another process) can still do it.

Wiring into aiohttp (the cleanup context runs ``start`` at startup and ``shutdown`` at cleanup)::

    async def jobs_ctx(app):
        scheduler = build_scheduler(sessionmaker, settings, clock=clock.now)
        start(scheduler)
        yield
        await shutdown(scheduler)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.jobs import JOBS
from core.calendar import WorkCalendar
from core.config import Settings
from core.scheduling.service import load_calendar

log = logging.getLogger("pandian.scheduler")

DAILY = ("morning", "afternoon", "summary")
CALENDAR_REFRESH_MINUTES = 5
RETRIES = 3
RETRY_AFTER = timedelta(minutes=5)
MAX_SKIPPED_DAYS = 400  # a calendar with no working day for over a year stops the trigger


class CalendarRef:
    """The working-day calendar the triggers consult, replaced when the database's overrides change."""

    def __init__(self, calendar: WorkCalendar) -> None:
        self.calendar = calendar

    def key(self) -> tuple[Any, ...]:
        c = self.calendar
        return (c.country, c.extra_working, c.extra_off)


class WorkingDayTrigger(BaseTrigger):
    """Fires at ``at`` (wall clock in ``tz``) on the working days of ``calendar``."""

    def __init__(self, at: time, tz: tzinfo, calendar: CalendarRef) -> None:
        self.at, self.tz, self.calendar = at, tz, calendar
        self._cron = CronTrigger(hour=at.hour, minute=at.minute, second=0, timezone=tz)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire: datetime | None = self._cron.get_next_fire_time(previous_fire_time, now)
        for _ in range(MAX_SKIPPED_DAYS):
            if fire is None or self.calendar.calendar.is_working_day(fire.astimezone(self.tz).date()):
                return fire
            fire = self._cron.get_next_fire_time(None, fire + timedelta(seconds=1))
        log.error("no working day within %s days after %s: %s stops", MAX_SKIPPED_DAYS, now, self)
        return None

    def __str__(self) -> str:
        return f"working days {self.at:%H:%M}"

    def __repr__(self) -> str:
        return f"<WorkingDayTrigger {self}>"


@dataclass(frozen=True, slots=True)
class Plan:
    """One scheduled job: its trigger and how late a missed run may still start."""

    name: str
    trigger: BaseTrigger
    grace: timedelta
    enabled: bool


def settings_calendar(settings: Settings) -> WorkCalendar:
    """The calendar from configuration alone (the database's overrides come in with the first refresh)."""
    c = settings.calendar
    return WorkCalendar(c.country, c.extra_working_days, c.extra_days_off)


def plans(settings: Settings, calendar: CalendarRef, now: datetime) -> list[Plan]:
    """Every job with its trigger, enabled or not (``pandian jobs list`` shows them all). Interval jobs count
    their intervals from ``now``."""
    cfg, tz = settings.schedule, settings.tz
    grace = timedelta(minutes=cfg.misfire_grace_minutes)

    def every(minutes: int) -> IntervalTrigger:
        return IntervalTrigger(minutes=minutes, start_date=now + timedelta(minutes=minutes), timezone=tz)

    return [
        Plan("morning", WorkingDayTrigger(cfg.morning_push, tz, calendar), grace, cfg.morning_push_enabled),
        Plan(
            "afternoon",
            WorkingDayTrigger(cfg.afternoon_reminder, tz, calendar),
            grace,
            cfg.afternoon_reminder_enabled,
        ),
        Plan(
            "summary",
            WorkingDayTrigger(cfg.end_of_day_summary, tz, calendar),
            grace,
            cfg.end_of_day_summary_enabled,
        ),
        Plan(
            "escalation",
            every(cfg.escalation_every_minutes),
            timedelta(minutes=cfg.escalation_every_minutes),
            cfg.escalation_enabled,
        ),
        Plan(
            "erp",
            every(cfg.erp_sync_every_minutes),
            timedelta(minutes=cfg.erp_sync_every_minutes),
            cfg.erp_sync_enabled,
        ),
    ]


def first_run(plan: Plan, now: datetime) -> datetime | None:
    """The first run time: a daily job whose time passed less than ``grace`` ago runs at once (its claim makes
    that harmless when it already ran); interval jobs start one interval after ``now``."""
    if plan.name in DAILY:
        return plan.trigger.get_next_fire_time(None, now - plan.grace)
    return plan.trigger.get_next_fire_time(None, now)


class PandianScheduler(AsyncIOScheduler):
    """An ``AsyncIOScheduler`` that knows its job runner and calendar (for ``shutdown`` and the refresh)."""

    runner: JobRunner
    calendar: CalendarRef


class JobRunner:
    """Runs one job by name with the real clock, logs its report, retries a failed daily job, and keeps
    track of running jobs so shutdown can let them finish."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Callable[[], datetime],
    ) -> None:
        self.sessionmaker, self.settings, self.clock = sessionmaker, settings, clock
        self.scheduler: AsyncIOScheduler | None = None
        self.running: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """The current task is a running job until the block ends (``shutdown`` waits for it, then cancels it)."""
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.running.discard(task)

    async def run(self, name: str, attempt: int = 1) -> None:
        with self._tracked():
            try:
                report = await JOBS[name].run(self.sessionmaker, self.settings, self.clock())
                log.info("job %s", report.line())
            except Exception:
                log.exception("job %s failed (attempt %s)", name, attempt)
                self._retry(name, attempt)

    def _retry(self, name: str, attempt: int) -> None:
        if name not in DAILY or attempt >= RETRIES or self.scheduler is None or not self.scheduler.running:
            return
        at = self.clock() + RETRY_AFTER
        self.scheduler.add_job(
            self.run,
            DateTrigger(at),
            args=[name, attempt + 1],
            id=f"{name}-retry",
            name=f"{name} (retry {attempt + 1})",
            replace_existing=True,
            misfire_grace_time=int(RETRY_AFTER.total_seconds()),
        )
        log.info("job %s will be retried at %s", name, at.astimezone(self.settings.tz))

    async def refresh_calendar(self, calendar: CalendarRef) -> bool:
        """Reload the calendar with the database's overrides; reschedule the daily jobs when it changed."""
        with self._tracked():
            async with self.sessionmaker() as s:
                fresh = await load_calendar(s, self.settings)
        old = calendar.key()
        calendar.calendar = fresh
        if calendar.key() == old:
            return False
        if self.scheduler is not None:
            now = self.clock()
            for plan in plans(self.settings, calendar, now):
                if plan.name in DAILY and self.scheduler.get_job(plan.name) is not None:
                    self.scheduler.modify_job(plan.name, next_run_time=first_run(plan, now))
        log.info("calendar overrides changed; daily jobs rescheduled")
        return True


def build_scheduler(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    clock: Callable[[], datetime],
) -> PandianScheduler:
    """The scheduler with every enabled job (none when ``schedule.enabled`` is false), not started.

    ``clock`` is the composition root's: the first run times are computed from it, and each job is handed
    its time. (APScheduler itself fires on the wall clock: that is what a scheduler is for.)"""
    now = clock()
    tz = settings.tz
    scheduler = PandianScheduler(
        timezone=tz,
        job_defaults={"coalesce": True, "max_instances": 1},
    )
    calendar = CalendarRef(settings_calendar(settings))
    runner = JobRunner(sessionmaker, settings, clock)
    runner.scheduler = scheduler
    scheduler.runner, scheduler.calendar = runner, calendar
    if not settings.schedule.enabled:
        log.info("scheduled jobs are switched off (schedule.enabled = false)")
        return scheduler
    for plan in plans(settings, calendar, now):
        if not plan.enabled:
            continue
        scheduler.add_job(
            runner.run,
            plan.trigger,
            args=[plan.name],
            id=plan.name,
            name=plan.name,
            next_run_time=first_run(plan, now),
            misfire_grace_time=int(plan.grace.total_seconds()),
            coalesce=True,
            max_instances=1,
        )
    scheduler.add_job(
        runner.refresh_calendar,
        IntervalTrigger(minutes=CALENDAR_REFRESH_MINUTES, start_date=now, timezone=tz),
        args=[calendar],
        id="calendar",
        name="calendar refresh",
        next_run_time=now,  # at start: the database's overrides before the first daily run
        misfire_grace_time=CALENDAR_REFRESH_MINUTES * 60,
        coalesce=True,
        max_instances=1,
    )
    return scheduler


def start(scheduler: AsyncIOScheduler) -> None:
    """Start on the running event loop (call from async code, e.g. an aiohttp cleanup context)."""
    scheduler.start()
    for job in scheduler.get_jobs():
        log.info("job %s: %s, next run %s", job.id, job.trigger, job.next_run_time)


async def shutdown(scheduler: AsyncIOScheduler, grace: float = 30.0) -> None:
    """Stop firing, let running jobs finish for up to ``grace`` seconds, then stop (cancelling what is left:
    a cancelled job rolls back, claim included, so it can run again)."""
    if not scheduler.running:
        return
    scheduler.pause()
    runner = getattr(scheduler, "runner", None)
    if isinstance(runner, JobRunner) and runner.running:
        await asyncio.wait(set(runner.running), timeout=grace)
        # what is still running is cancelled and awaited here, while the database is still open: a job task
        # left to the event loop's close ran its rollback after the engine was gone and hung the process
        left = set(runner.running)
        for task in left:
            task.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn


def describe(plan: Plan) -> str:
    """The schedule in words, for ``pandian jobs list``."""
    trigger = plan.trigger
    if isinstance(trigger, IntervalTrigger):
        minutes = int(trigger.interval.total_seconds() // 60)
        return f"every {minutes} min"
    return str(trigger)
