"""The scheduler's triggers and first run times with a fixed ``now``: wall-clock times in the configured time
zone, working days only (weekends, holidays, make-up days, DST), a missed daily run caught up at start, the
switches. No database and no sleeping: the scheduler is built, never started."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.scheduler import CalendarRef, WorkingDayTrigger, build_scheduler
from core.calendar import WorkCalendar
from core.config import CalendarSettings, ScheduleSettings, Settings
from core.db import make_engine, make_sessionmaker

SHANGHAI = ZoneInfo("Asia/Shanghai")
SESSIONMAKER = make_sessionmaker(make_engine("sqlite+aiosqlite:///:memory:"))  # never connected here


def local(day: date, hh: int, mm: int = 0, tz: ZoneInfo = SHANGHAI) -> datetime:
    return datetime.combine(day, time(hh, mm), tz)


def runs(scheduler: AsyncIOScheduler) -> dict[str, datetime]:
    return {j.id: j.next_run_time for j in scheduler.get_jobs()}


def test_next_runs_skip_the_weekend_in_the_company_time_zone() -> None:
    friday_night = local(date(2026, 12, 4), 20, 30)
    got = runs(
        build_scheduler(SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: friday_night)
    )
    assert got == {
        "morning": local(date(2026, 12, 7), 7, 30),  # Monday, not Saturday
        "afternoon": local(date(2026, 12, 7), 15),
        "summary": local(date(2026, 12, 7), 18),  # Friday's 18:00 is more than the 2 h grace ago
        "escalation": friday_night + timedelta(minutes=15),
        "erp": friday_night + timedelta(minutes=60),
        "calendar": friday_night,
    }
    # 07:30 in Shanghai is 23:30 UTC the evening before
    assert got["morning"].astimezone(ZoneInfo("UTC")) == datetime(2026, 12, 6, 23, 30, tzinfo=ZoneInfo("UTC"))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # the Friday before the 调休 Saturday of National Day 2026: that Saturday is a working day
        (local(date(2026, 10, 9), 20, 30), local(date(2026, 10, 10), 7, 30)),
        # the evening before the holiday: Oct 1-7 off (weekend included), back on Thursday the 8th
        (local(date(2026, 9, 30), 20, 30), local(date(2026, 10, 8), 7, 30)),
        # a Sunday make-up day (2026-09-20)
        (local(date(2026, 9, 19), 9), local(date(2026, 9, 20), 7, 30)),
    ],
    ids=["make-up-saturday", "national-day", "make-up-sunday"],
)
def test_holidays_and_make_up_days(now: datetime, expected: datetime) -> None:
    assert (
        runs(build_scheduler(SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: now))[
            "morning"
        ]
        == expected
    )


def test_company_overrides_from_configuration() -> None:
    settings = Settings(
        schedule=ScheduleSettings(),
        calendar=CalendarSettings(extra_working_days=[date(2026, 12, 5)], extra_days_off=[date(2026, 12, 7)]),
    )
    got = runs(build_scheduler(SESSIONMAKER, settings, clock=lambda: local(date(2026, 12, 4), 20, 30)))
    assert got["morning"] == local(date(2026, 12, 5), 7, 30)
    trigger = build_scheduler(SESSIONMAKER, settings, clock=lambda: local(date(2026, 12, 4), 20, 30)).get_job(
        "morning"
    )
    assert trigger is not None
    after_saturday = trigger.trigger.get_next_fire_time(got["morning"], got["morning"] + timedelta(minutes=1))
    assert after_saturday == local(date(2026, 12, 8), 7, 30)  # Sunday off, Monday the company's day off


def test_configured_times_and_another_time_zone_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    settings = Settings(
        timezone="Europe/Berlin",
        calendar=CalendarSettings(country="DE"),
        schedule=ScheduleSettings(
            morning_push="06:45", afternoon_reminder="14:10", end_of_day_summary="17:05"
        ),
    )
    friday = local(date(2026, 10, 23), 20, 30, berlin)  # clocks go back on Sunday the 25th
    got = runs(build_scheduler(SESSIONMAKER, settings, clock=lambda: friday))
    assert got["morning"] == local(date(2026, 10, 26), 6, 45, berlin)
    assert got["afternoon"] == local(date(2026, 10, 26), 14, 10, berlin)
    assert got["summary"] == local(date(2026, 10, 26), 17, 5, berlin)
    assert got["morning"].utcoffset() == timedelta(hours=1) and friday.utcoffset() == timedelta(hours=2)
    assert got["morning"].astimezone(ZoneInfo("UTC")).time() == time(5, 45)


def test_a_missed_daily_run_is_caught_up_within_the_grace() -> None:
    monday = date(2026, 11, 30)
    started_late = runs(
        build_scheduler(
            SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: local(monday, 8, 10)
        )
    )
    assert started_late["morning"] == local(monday, 7, 30)  # runs at once when the scheduler starts
    too_late = runs(
        build_scheduler(
            SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: local(monday, 9, 31)
        )
    )
    assert too_late["morning"] == local(date(2026, 12, 1), 7, 30)  # more than 2 h: tomorrow
    settings = Settings(schedule=ScheduleSettings(misfire_grace_minutes=180))
    assert runs(build_scheduler(SESSIONMAKER, settings, clock=lambda: local(monday, 9, 31)))[
        "morning"
    ] == local(monday, 7, 30)
    # a missed run on a day off is not caught up
    sunday = runs(
        build_scheduler(
            SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: local(date(2026, 12, 6), 8, 10)
        )
    )
    assert sunday["morning"] == local(date(2026, 12, 7), 7, 30)


def test_jobs_coalesce_and_never_overlap() -> None:
    scheduler = build_scheduler(
        SESSIONMAKER, Settings(schedule=ScheduleSettings()), clock=lambda: local(date(2026, 11, 30), 12)
    )
    for job in scheduler.get_jobs():
        assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time
    morning = scheduler.get_job("morning")
    assert morning is not None and morning.misfire_grace_time == 120 * 60


def test_switches() -> None:
    now = local(date(2026, 11, 30), 12)
    off = Settings(schedule=ScheduleSettings(morning_push_enabled=False, erp_sync_enabled=False))
    assert set(runs(build_scheduler(SESSIONMAKER, off, clock=lambda: now))) == {
        "afternoon",
        "summary",
        "escalation",
        "calendar",
    }
    none = Settings(schedule=ScheduleSettings(enabled=False))
    assert build_scheduler(SESSIONMAKER, none, clock=lambda: now).get_jobs() == []


def test_config_refuses_a_time_with_a_zone_and_a_bad_time() -> None:
    with pytest.raises(ValueError, match="local time"):
        ScheduleSettings(morning_push="07:30+08:00")
    with pytest.raises(ValueError):
        ScheduleSettings(morning_push="25:00")
    assert ScheduleSettings(morning_push="07:30:59").morning_push == time(7, 30)


def test_working_day_trigger_walks_a_whole_holiday_week_and_stops_on_an_empty_calendar() -> None:
    trigger = WorkingDayTrigger(time(7, 30), SHANGHAI, CalendarRef(WorkCalendar()))
    fire, seen = local(date(2026, 9, 28), 7, 30), []
    while fire < local(date(2026, 10, 13), 0):
        seen.append(fire.date())
        nxt = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        assert nxt is not None
        fire = nxt
    assert seen == [date(2026, 9, 28), date(2026, 9, 29), date(2026, 9, 30), date(2026, 10, 8), date(2026, 10, 9),
                    date(2026, 10, 10), date(2026, 10, 12)]  # fmt: skip
    nothing = WorkCalendar(extra_days_off=[date(2026, 1, 1) + timedelta(days=i) for i in range(800)])
    stuck = WorkingDayTrigger(time(7, 30), SHANGHAI, CalendarRef(nothing))
    assert stuck.get_next_fire_time(None, local(date(2026, 1, 1), 0)) is None
