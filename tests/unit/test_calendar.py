from datetime import date

import pytest

from core.calendar import WorkCalendar

cal = WorkCalendar()


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 11, 27), True),  # Friday
        (date(2026, 11, 28), False),  # Saturday
        (date(2026, 10, 1), False),  # National Day
        (date(2026, 10, 7), False),  # National Day week
        (date(2026, 1, 4), True),  # Sunday make-up working day (调休)
        (date(2026, 2, 16), False),  # Spring Festival eve week
    ],
)
def test_statutory_days(day: date, working: bool) -> None:
    assert cal.is_working_day(day) is working


def test_company_overrides_win() -> None:
    c = WorkCalendar(extra_working_days=[date(2026, 11, 28)], extra_days_off=[date(2026, 11, 27)])
    assert c.is_working_day(date(2026, 11, 28))
    assert not c.is_working_day(date(2026, 11, 27))


def test_conflicting_overrides_rejected() -> None:
    with pytest.raises(ValueError):
        WorkCalendar(extra_working_days=[date(2026, 1, 1)], extra_days_off=[date(2026, 1, 1)])


def test_working_day_arithmetic() -> None:
    # Fri 2026-09-25 + 1 working day skips the weekend but Sunday 09-27 is a make-up day? check the library
    days = cal.working_days(date(2026, 9, 28), date(2026, 10, 11))
    assert date(2026, 10, 1) not in days and date(2026, 10, 8) in days
    assert cal.add_working_days(date(2026, 11, 27), 1) == date(2026, 11, 30)
    assert cal.add_working_days(date(2026, 11, 30), -1) == date(2026, 11, 27)
    assert cal.add_working_days(date(2026, 11, 30), 0) == date(2026, 11, 30)
    assert cal.late_working_days(date(2026, 11, 26), date(2026, 11, 30)) == 2  # Fri, Mon
    assert cal.late_working_days(date(2026, 11, 30), date(2026, 11, 30)) == 0
