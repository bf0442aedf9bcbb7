import itertools
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.scheduling.policy import cycle_for, rotation_slot


@pytest.mark.parametrize(
    ("k", "key"), [(52, "A:2026-W48"), (12, "A:2026-M11"), (4, "A:2026-Q4"), (1, "A:2026-Y")]
)
def test_cycle_keys(k: int, key: str) -> None:
    assert cycle_for(date(2026, 11, 28), k, "A").key == key


def test_iso_week_53_joins_the_last_weekly_cycle() -> None:
    # 2026 has 53 ISO weeks; a weekly class still has 52 cycles, the last one two weeks long
    last = cycle_for(date(2026, 12, 30), 52, "A")
    assert last.key == "A:2026-W52" and last.start == date(2026, 12, 21) and last.end == date(2027, 1, 3)


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=2024, max_value=2030))
def test_cycles_partition_the_year(k: int, year: int) -> None:
    d = date(year, 1, 1)
    seen: dict[str, tuple[date, date]] = {}
    while d.year == year:
        c = cycle_for(d, k, "C")
        assert c.contains(d)
        assert seen.setdefault(c.key, (c.start, c.end)) == (c.start, c.end)  # one key, one span
        d += timedelta(days=1)
    spans = sorted(seen.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start == end + timedelta(days=1)  # contiguous, no overlap
    assert abs(len(seen) - k) <= 1  # ISO-week cycles may straddle the year boundary


@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=1, max_value=70))
def test_slots_are_balanced(n: int, days: int) -> None:
    per_day = [0] * days
    for r in range(n):
        per_day[rotation_slot(r, n, days)] += 1
    assert max(per_day) - min(per_day) <= 1
    assert sum(per_day) == n


def test_slot_arguments_checked() -> None:
    with pytest.raises(ValueError):
        rotation_slot(5, 5, 3)
    with pytest.raises(ValueError):
        rotation_slot(0, 5, 0)
