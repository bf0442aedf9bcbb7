"""`pandian jobs ...`: the scheduled jobs, listed and run by hand (the server runs them on time).

``bot.cli`` registers this group at its end, so its helpers are imported inside the commands."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any, TypeVar

import click
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cli_clock import now as cli_now
from core.config import Settings
from core.db import make_engine, make_sessionmaker

T = TypeVar("T")


async def _with_sessionmaker(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    """Open the database, make sure the schema is current, hand the jobs a session factory (they own their
    transactions)."""
    from core import migrate

    engine = make_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        return await work(make_sessionmaker(engine))
    finally:
        await engine.dispose()


@click.group()
def jobs() -> None:
    """Scheduled jobs: morning plan and push, afternoon reminder, summary, escalation, ERP."""


@jobs.command("list")
def jobs_list() -> None:
    """Each job, its schedule (in the company time zone) and when it runs next."""
    from bot.cli import console, run
    from bot.jobs import JOBS
    from bot.scheduler import CalendarRef, describe, plans
    from core.scheduling.service import load_calendar

    async def go(settings: Settings) -> Any:
        async def work(sm: async_sessionmaker[AsyncSession]) -> Any:
            async with sm() as s:
                return await load_calendar(s, settings)

        calendar = await _with_sessionmaker(settings, work)
        now = cli_now()
        return settings, [
            (p, p.trigger.get_next_fire_time(None, now)) for p in plans(settings, CalendarRef(calendar), now)
        ]

    settings, rows = run(go)
    table = Table(title=f"定时任务 / scheduled jobs（{settings.timezone}）")
    for col in ("名称 name", "时间 schedule", "下次运行 next run"):
        table.add_column(col, no_wrap=True)
    table.add_column("内容 what", overflow="fold")
    on = settings.schedule.enabled
    for plan, nxt in rows:
        info = JOBS[plan.name]
        if not (on and plan.enabled):
            when = "关闭 off"
        else:
            when = nxt.astimezone(settings.tz).strftime("%Y-%m-%d %a %H:%M") if nxt else "-"
        table.add_row(plan.name, describe(plan), when, f"{info.zh} / {info.en}")
    console.print(table)
    if not on:
        console.print("[yellow]![/] schedule.enabled = false：服务器不运行定时任务 / the server runs no jobs")


def _when(name: str, day: date | None, settings: Settings) -> datetime:
    """The moment a job runs "as of": its scheduled time on ``day`` for a daily job, else now (on ``day``)."""
    now = cli_now().astimezone(settings.tz)
    if day is None:
        return now
    at = {
        "morning": settings.schedule.morning_push,
        "afternoon": settings.schedule.afternoon_reminder,
        "summary": settings.schedule.end_of_day_summary,
    }.get(name, now.time().replace(tzinfo=None))
    return datetime.combine(day, at, settings.tz)


@jobs.command("run")
@click.argument("name")
@click.option("--date", "day", metavar="DATE", help="Run as of this day, YYYY-MM-DD (default: now).")
def jobs_run(name: str, day: str | None) -> None:
    """Run job NAME once now (see `pandian jobs list`). A daily job runs once a day, whoever runs it."""
    from bot.cli import _parse_day, console, run
    from bot.jobs import JOBS

    if name not in JOBS:
        raise click.ClickException(
            f"没有任务 {name!r}，可选：{'、'.join(JOBS)} / no job {name!r}; one of {', '.join(JOBS)}"
        )

    async def go(settings: Settings) -> Any:
        when = _when(name, _parse_day(day, settings) if day else None, settings)
        return await _with_sessionmaker(settings, lambda sm: JOBS[name].run(sm, settings, when))

    report = run(go)
    if report.skipped:
        console.print(f"[yellow]-[/] {name} {report.day}：未运行 / not run: {report.skipped}")
        return
    console.print(
        f"[green]✓[/] {name} {report.day}：已排入发件箱 {report.sent} 条，由运行中的服务器发送 / "
        f"{report.sent} messages queued in the outbox; the running server sends them ({report.seconds:.2f}s)"
    )
    for k, v in report.details.items():
        console.print(f"  {k}: {v}", markup=False)
    if report.unreachable:
        console.print(
            f"[yellow]![/] 没有已配置平台账号，已跳过 / no id on any configured platform, skipped: "
            f"{', '.join(report.unreachable)}"
        )
    if report.failed:
        console.print(f"[red]✗[/] 失败 / failed: {', '.join(report.failed)}（详见日志 / see the log）")
        raise SystemExit(1)
