"""The pure planner: even workload, no duplicates, triggers."""

from __future__ import annotations

from collections import Counter as Tally
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from core.calendar import WorkCalendar
from core.enums import TaskReason
from core.scheduling.planner import Candidate, RotationWindow, Rules, decide, plan_stream, triggers
from core.scheduling.policy import Cycle, cycle_for

RULES = Rules()
NOW = datetime(2026, 11, 30, tzinfo=UTC)
DAY = date(2026, 11, 30)


def cand(i: int, cls: str = "A", wh: int = 1, **kw: object) -> Candidate:
    return Candidate(i, 1000 + i, 2000 + i, wh, cls, **kw)  # type: ignore[arg-type]


def simulate_cycle(
    members: list[Candidate], days: list[date], cycle: Cycle, join: dict[int, list[Candidate]] | None = None
) -> dict[date, list[int]]:
    """Run the planner every working day of one cycle, applying what it writes (the rotation marks)."""
    planned: dict[date, list[int]] = {}
    join = join or {}
    for i, d in enumerate(days):
        members = members + join.get(i, [])
        by_key = Tally((c.warehouse_id, c.abc_class) for c in members)
        windows = {k: RotationWindow(cycle, n, len(days), i) for k, n in by_key.items()}
        out = list(plan_stream(members, windows, d, NOW, RULES))
        planned[d] = [x.proposal.item_location_id for x in out if x.proposal]
        marks = {x.item_location_id: x.satisfies_cycle for x in out}
        for c in members:
            if marks.get(c.item_location_id):
                c.last_rotation_cycle = marks[c.item_location_id]
        # a re-plan of the same day changes nothing
        again = [x for x in plan_stream(members, windows, d, NOW, RULES) if x.proposal]
        assert again == []
    return planned


CAL = WorkCalendar()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=400),
    k=st.sampled_from([52, 12, 4]),
    start=st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 12, 31)),
)
def test_every_member_once_per_cycle_and_days_within_one(n: int, k: int, start: date) -> None:
    cycle = cycle_for(start, k, "A")
    days = CAL.working_days(cycle.start, cycle.end)
    if not days:
        return
    members = [cand(i) for i in range(n)]
    planned = simulate_cycle(members, days, cycle)
    flat = [x for day in planned.values() for x in day]
    assert sorted(flat) == list(range(n))  # everyone, exactly once
    sizes = [len(v) for v in planned.values()]
    assert max(sizes) - min(sizes) <= 1  # within one of the mean, every day


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=5, max_value=200),
    joins=st.lists(st.integers(min_value=0, max_value=19), max_size=15),
)
def test_new_members_join_without_duplicates_or_misses(n: int, joins: list[int]) -> None:
    cycle = cycle_for(date(2026, 11, 2), 12, "B")  # November 2026
    days = CAL.working_days(cycle.start, cycle.end)
    members = [cand(i, "B") for i in range(n)]
    join: dict[int, list[Candidate]] = {}
    for j, day_index in enumerate(joins):
        join.setdefault(day_index % len(days), []).append(cand(n + j, "B"))
    planned = simulate_cycle(members, days, cycle, join)
    flat = [x for day in planned.values() for x in day]
    assert len(flat) == len(set(flat)) == n + len(joins)
    # the others are not upset: each day moves by at most the number of members joined that day or before
    base = simulate_cycle([cand(i, "B") for i in range(n)], days, cycle)
    for d in days:
        assert abs(len(planned[d]) - len(base[d])) <= len(joins)


def test_classes_and_warehouses_rotate_independently() -> None:
    cyc = cycle_for(DAY, 52, "A")
    days = CAL.working_days(cyc.start, cyc.end)
    members = [cand(i, "A", wh=1 + i % 2) for i in range(50)]
    planned = simulate_cycle(members, days, cyc)
    for d in days:
        per_wh = Tally(1 + i % 2 for i in planned[d])
        assert set(per_wh.values()) <= {5}


def test_first_plan_mid_cycle_does_not_pile_up() -> None:
    cycle = cycle_for(date(2026, 11, 16), 12, "B")
    days = CAL.working_days(cycle.start, cycle.end)
    today = days.index(date(2026, 11, 16))
    w = RotationWindow(cycle, 210, len(days), today, first_index=today)
    due = [r for r in range(210) if w.is_due(r)]
    assert len(due) == 210 // len(days) or len(due) == 210 // len(days) + 1


def window_for(day: date = DAY) -> RotationWindow:
    cyc = cycle_for(day, 52, "A")
    days = CAL.working_days(cyc.start, cyc.end)
    return RotationWindow(cyc, 1000, len(days), days.index(day))


def test_negative_stock_counts_today_first() -> None:
    d = decide(cand(1, qty=Decimal(-3)), 999, window_for(), DAY, NOW, RULES)
    assert d.proposal is not None and d.proposal.reason is TaskReason.NEGATIVE and d.proposal.priority == 0
    assert d.proposal.due_date == DAY and d.proposal.cycle_key == "negative:2026-11-30"


def test_trigger_on_rotation_day_satisfies_rotation() -> None:
    w = window_for()
    rank = 0 if w.is_due(0) else next(r for r in range(1000) if w.is_due(r))
    d = decide(cand(1, qty=Decimal(-1)), rank, w, DAY, NOW, RULES)
    assert d.proposal is not None and d.proposal.reason is TaskReason.NEGATIVE
    assert d.satisfies_cycle == w.cycle.key


def test_open_task_blocks_everything_but_marks_rotation() -> None:
    w = window_for()
    rank = next(r for r in range(1000) if w.is_due(r))
    d = decide(cand(1, qty=Decimal(-1), has_open_task=True), rank, w, DAY, NOW, RULES)
    assert d.proposal is None and d.satisfies_cycle == w.cycle.key


def test_zero_reached_recently_is_confirmed_next_working_day() -> None:
    c = cand(1, qty=Decimal(0), last_movement_at=NOW - timedelta(hours=5))
    d = decide(c, 999, None, DAY, NOW, RULES, zero_due=date(2026, 12, 1))
    assert (
        d.proposal is not None
        and d.proposal.reason is TaskReason.ZERO
        and d.proposal.due_date == date(2026, 12, 1)
    )
    old = cand(1, qty=Decimal(0), last_movement_at=NOW - timedelta(days=40))
    assert TaskReason.ZERO not in triggers(old, NOW, RULES)
    counted = cand(
        1, qty=Decimal(0), last_movement_at=NOW - timedelta(hours=5), last_counted_at=NOW - timedelta(hours=1)
    )
    assert TaskReason.ZERO not in triggers(counted, NOW, RULES)


def test_dormant_turnover_inaccurate_adhoc() -> None:
    dormant = cand(1, qty=Decimal(5), last_movement_at=NOW - timedelta(days=91))
    assert triggers(dormant, NOW, RULES) == [TaskReason.DORMANT]
    recently_counted = cand(
        1,
        qty=Decimal(5),
        last_movement_at=NOW - timedelta(days=200),
        last_counted_at=NOW - timedelta(days=10),
    )
    assert triggers(recently_counted, NOW, RULES) == []
    assert triggers(cand(1, qty=Decimal(5), last_movement_at=NOW - timedelta(days=89)), NOW, RULES) == []
    busy = cand(1, qty=Decimal(5), turnover_value=Decimal(50000), last_counted_at=NOW - timedelta(days=20))
    assert triggers(busy, NOW, RULES) == [TaskReason.TURNOVER]
    never_counted = cand(1, qty=Decimal(5), turnover_value=Decimal(10**6))
    assert triggers(never_counted, NOW, RULES) == []  # its rotation reaches it first
    missed = cand(
        1, qty=Decimal(5), last_miss_at=NOW - timedelta(days=3), last_counted_at=NOW - timedelta(days=3)
    )
    assert triggers(missed, NOW, RULES) == [TaskReason.INACCURATE]
    recounted = cand(
        1, qty=Decimal(5), last_miss_at=NOW - timedelta(days=3), last_counted_at=NOW - timedelta(days=1)
    )
    assert triggers(recounted, NOW, RULES) == []
    asked = cand(1, qty=Decimal(5), request_id=7)
    d = decide(asked, 999, None, DAY, NOW, RULES)
    assert d.proposal is not None and d.proposal.reason is TaskReason.ADHOC and d.proposal.request_id == 7


def test_most_urgent_trigger_wins() -> None:
    c = cand(
        1,
        qty=Decimal(-2),
        request_id=3,
        turnover_value=Decimal(10**6),
        last_counted_at=NOW - timedelta(days=9),
        last_movement_at=NOW - timedelta(days=1),
    )
    assert triggers(c, NOW, RULES)[0] is TaskReason.NEGATIVE


def test_trigger_tasks_take_longer() -> None:
    d = decide(cand(1, "B", qty=Decimal(-1)), 0, None, DAY, NOW, RULES)
    assert d.proposal is not None and d.proposal.est_minutes == 4.5


@given(
    n=st.integers(min_value=1, max_value=3000),
    days=st.integers(min_value=1, max_value=70),
    data=st.data(),
)
def test_due_ranks_is_the_inverse_of_slot(n: int, days: int, data: st.DataObject) -> None:
    today = data.draw(st.integers(min_value=0, max_value=days - 1))
    first = data.draw(st.integers(min_value=0, max_value=today))
    w = RotationWindow(cycle_for(DAY, 52, "A"), n, days, today, first)
    assert list(w.due_ranks()) == [r for r in range(n) if w.is_due(r)]
