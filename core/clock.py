"""The one clock: what time it is, handed in by the composition root (``bot.app.build_app``, the CLI's root).

Domain, handler and job code never read the wall clock: they take ``now`` (an aware datetime) or a
:class:`Clock` from their caller. Only :class:`SystemClock`, built by a composition root, reads it. Tests pin
the time with :class:`FixedClock`, so "what is due today" and "is this card too old" are decided by the test,
not by the day the suite happens to run (the suite also runs under ``faketime`` a year ahead in CI).

Durations (timeouts, leases measured with ``time.monotonic``) are not the time of day and stay where they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


class SystemClock:
    """The wall clock. Built only by a composition root."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that says what it is told: pinned at ``at``, moved on by :meth:`advance` or :meth:`set`."""

    def __init__(self, at: datetime) -> None:
        self.at = _aware(at)

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = _aware(at)

    def advance(self, delta: timedelta | None = None, **kw: float) -> datetime:
        self.at += delta if delta is not None else timedelta(**kw)
        return self.at


class RunningClock:
    """Time that passes at the wall clock's pace from a chosen instant, and can be moved forward (never back):
    the demo plays its day at the times its scenes name, while retries and rate limits still see time pass."""

    def __init__(self, start: datetime, pace: Callable[[], float] = time.monotonic) -> None:
        self._pace = pace
        self._start, self._t0 = _aware(start), pace()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._pace() - self._t0)

    def move_to(self, at: datetime) -> datetime:
        """Go forward to ``at`` (a time already past is left as it is: the clock never runs backwards)."""
        if _aware(at) > self.now():
            self._start, self._t0 = _aware(at), self._pace()
        return self.now()


def local_day(now: datetime, tz: tzinfo) -> date:
    """The company's calendar day at instant ``now``."""
    return _aware(now).astimezone(tz).date()


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"a clock needs a timezone-aware datetime, not {at!r}")
    return at.astimezone(UTC)
