"""Working days: mainland China's statutory holidays and make-up working days (调休), plus company overrides.

Pure: no database. The statutory calendar comes from the ``holidays`` library, whose ``is_working_day``
already knows that a make-up Saturday is a working day and a substituted weekday is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from functools import lru_cache

import holidays


@lru_cache(maxsize=64)
def _statutory(country: str, year: int) -> holidays.HolidayBase:
    return holidays.country_holidays(country, years=year)


class WorkCalendar:
    def __init__(
        self,
        country: str = "CN",
        extra_working_days: Iterable[date] = (),
        extra_days_off: Iterable[date] = (),
    ) -> None:
        self.country = country
        self.extra_working = frozenset(extra_working_days)
        self.extra_off = frozenset(extra_days_off)
        overlap = self.extra_working & self.extra_off
        if overlap:
            raise ValueError(f"dates both working and off: {sorted(overlap)}")

    def is_working_day(self, d: date) -> bool:
        if d in self.extra_off:
            return False
        if d in self.extra_working:
            return True
        return bool(_statutory(self.country, d.year).is_working_day(d))

    def holiday_name(self, d: date) -> str | None:
        name = _statutory(self.country, d.year).get(d)
        return str(name) if name else None

    def working_days(self, start: date, end: date) -> list[date]:
        """Working days in [start, end], in order."""
        out = []
        d = start
        while d <= end:
            if self.is_working_day(d):
                out.append(d)
            d += timedelta(days=1)
        return out

    def add_working_days(self, d: date, n: int) -> date:
        """The n-th working day after d (n > 0) or before it (n < 0); d itself for n == 0."""
        step = timedelta(days=1 if n >= 0 else -1)
        left = abs(n)
        while left:
            d += step
            if self.is_working_day(d):
                left -= 1
        return d

    def late_working_days(self, due: date, today: date) -> int:
        """Working days after ``due`` up to and including ``today``."""
        if today <= due:
            return 0
        return len(self.working_days(due + timedelta(days=1), today))
