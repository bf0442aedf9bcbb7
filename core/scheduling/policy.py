"""Count policies and cycles (pure).

A class counted k times a year has k cycles a year. Cycles follow the calendar people use:
- k dividing 12 (12 monthly, 6, 4 quarterly, 3, 2, 1 yearly): groups of 12/k months;
- k dividing 52 with k >= 13 (52 weekly, 26 fortnightly, 13): groups of 52/k ISO weeks (an ISO week 53
  joins the last group of its year);
- anything else: the year's days split into k near-equal parts.
Every item of the class is counted once per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True, slots=True)
class Cycle:
    abc_class: str
    key: str  # e.g. "A:2026-W48", "B:2026-M11", "C:2026-Q4"
    start: date
    end: date  # inclusive

    def contains(self, d: date) -> bool:
        return self.start <= d <= self.end


def _iso_week_monday(year: int, week: int) -> date:
    return date.fromisocalendar(year, week, 1)


def _weeks_in_iso_year(year: int) -> int:
    return date(year, 12, 28).isocalendar().week


def cycle_for(day: date, counts_per_year: int, abc_class: str) -> Cycle:
    k = counts_per_year
    if k < 1 or k > 366:
        raise ValueError(f"counts_per_year must be 1..366, got {k}")
    if 12 % k == 0:
        months = 12 // k
        idx = (day.month - 1) // months
        start = date(day.year, idx * months + 1, 1)
        end_month = idx * months + months
        end = (
            date(day.year + 1, 1, 1) - timedelta(days=1)
            if end_month == 12
            else date(day.year, end_month + 1, 1) - timedelta(days=1)
        )
        label = {12: f"M{idx + 1:02d}", 4: f"Q{idx + 1}", 1: "Y"}.get(k, f"P{k}-{idx + 1}")
        return Cycle(abc_class, f"{abc_class}:{day.year}-{label}", start, end)
    if 52 % k == 0 and k >= 13:
        weeks = 52 // k
        iso = day.isocalendar()
        idx = min((iso.week - 1) // weeks, k - 1)
        first_week = idx * weeks + 1
        last_week = _weeks_in_iso_year(iso.year) if idx == k - 1 else first_week + weeks - 1
        start = _iso_week_monday(iso.year, first_week)
        end = _iso_week_monday(iso.year, last_week) + timedelta(days=6)
        label = f"W{first_week:02d}" if k == 52 else f"P{k}-{idx + 1}"
        return Cycle(abc_class, f"{abc_class}:{iso.year}-{label}", start, end)
    year_start = date(day.year, 1, 1)
    days = (date(day.year + 1, 1, 1) - year_start).days
    doy = (day - year_start).days
    idx = doy * k // days
    # the first day of part i is the smallest doy with doy*k//days == i
    first = -(-idx * days // k)
    nxt = -(-(idx + 1) * days // k)
    return Cycle(
        abc_class,
        f"{abc_class}:{day.year}-P{k}-{idx + 1}",
        year_start + timedelta(days=first),
        year_start + timedelta(days=nxt - 1),
    )


def rotation_slot(rank: int, members: int, working_days: int) -> int:
    """The working-day index (0-based) on which the member at ``rank`` (0-based) is counted.

    floor(rank * days / members) puts floor or ceil of members/days on every day, so each day's count is
    within one of the mean, and ranks stay contiguous (walking order) within a day.
    """
    if not 0 <= rank < members:
        raise ValueError("rank out of range")
    if working_days <= 0:
        raise ValueError("a cycle without working days has no slots")
    return rank * working_days // members
