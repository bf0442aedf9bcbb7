"""Pinned time for tests: every test says what time it is (``core.clock``), never the wall clock."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from core.clock import FixedClock, RunningClock

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(day: date, hour: int = 7, minute: int = 30) -> datetime:
    """``hour:minute`` in the company's time zone (Asia/Shanghai, the default) on ``day``."""
    return datetime.combine(day, time(hour, minute), SHANGHAI)


def morning(day: date) -> datetime:
    """When the morning plan runs on ``day`` (07:30 local)."""
    return local(day)


def running(day: date, hour: int = 10, minute: int = 0) -> RunningClock:
    """A clock for a real server under test: it starts at ``hour:minute`` on ``day`` and runs at the wall
    clock's pace, so timeouts, retries and rate limits still see time pass, on a day the test chose."""
    return RunningClock(local(day, hour, minute))


__all__ = ["SHANGHAI", "FixedClock", "RunningClock", "local", "morning", "running"]
