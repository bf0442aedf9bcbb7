"""The report figures (pure): hit rate, unit and value accuracy, progress, next actor, Pareto, counters."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.analytics import (
    AdjustmentFact,
    CountFact,
    EntryFact,
    OpenVarianceFact,
    ReasonFact,
    ReportError,
    ReportFilter,
    TaskFact,
    accuracy_ratio,
    accuracy_rows,
    count_intervals,
    counter_rows,
    hit_rate,
    iso_week,
    next_actor,
    open_variance_rows,
    pareto,
    progress_rows,
    utc_bounds,
)

SH = ZoneInfo("Asia/Shanghai")
MON = date(2026, 11, 30)  # ISO week 2026-W49


def count(
    cls: str, hit: bool, book: int, counted: int, cost: int = 10, day: date = MON, wh: str = "SH01"
) -> CountFact:
    return CountFact(cls, wh, day, hit, D(book), D(counted), D(cost))


# ---- filters and periods


def test_filter_checks_period_and_class() -> None:
    assert ReportFilter(MON, MON, None, " b ").checked().abc_class == "B"
    with pytest.raises(ReportError) as late:
        ReportFilter(MON, MON - timedelta(days=1)).checked()
    assert "晚于" in late.value.zh and "after" in late.value.en
    with pytest.raises(ReportError) as bad:
        ReportFilter(abc_class="D").checked()
    assert "A、B、C" in bad.value.zh and "A, B or C" in bad.value.en


def test_local_period_in_utc() -> None:
    lo, hi = utc_bounds(MON, MON, SH)
    assert lo == datetime(2026, 11, 29, 16, tzinfo=UTC) and hi == datetime(2026, 11, 30, 16, tzinfo=UTC)
    assert utc_bounds(None, None, SH) == (None, None)
    assert iso_week(MON) == "2026-W49" and iso_week(date(2026, 11, 29)) == "2026-W48"
    assert iso_week(date(2027, 1, 1)) == "2026-W53"


# ---- accuracy


def test_hit_rate() -> None:
    assert hit_rate(3, 4) == 0.75
    assert hit_rate(0, 0) is None


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], None),
        ([(10, 10)], 1.0),
        ([(10, 7), (10, 10)], 0.85),  # 1 - 3/20
        ([(10, 40)], 0.0),  # 1 - 30/10 clamps at 0
        ([(0, 0)], 1.0),  # book 0 and nothing found: exact
        ([(0, 5)], 0.0),  # book 0 and stock found: all error
        ([(0, 5), (10, 10)], 0.5),  # book 0 lines still add their error: 1 - 5/10
        ([(-4, 0), (4, 4)], 0.5),  # a negative book counts by its size: 1 - 4/8
    ],
)
def test_accuracy_ratio(pairs: list[tuple[int, int]], expected: float | None) -> None:
    got = accuracy_ratio((D(b), D(c)) for b, c in pairs)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_accuracy_rows_group_by_class_warehouse_and_week() -> None:
    counts = [
        count("A", True, 10, 10),
        count("A", False, 10, 7, cost=100),
        count("B", False, 100, 101, day=MON + timedelta(days=7), wh="BJ01"),
        count("B", True, 0, 0, day=MON + timedelta(days=7), wh="BJ01"),
    ]
    adjustments = [
        AdjustmentFact("A", "SH01", MON, D(-300)),
        AdjustmentFact("B", "BJ01", MON + timedelta(days=7), D(10)),
        AdjustmentFact(None, "SH01", MON, D(0)),  # a line without a variance: no class row
    ]
    rows = {r.group: r for r in accuracy_rows(counts, adjustments)}
    assert list(rows) == [
        "class=A", "class=B", "warehouse=BJ01", "warehouse=SH01", "week=2026-W49", "week=2026-W50", "total",
    ]  # fmt: skip
    a = rows["class=A"]
    assert (a.counts, a.hits, a.hit_rate) == (2, 1, 0.5)
    assert a.unit_accuracy == pytest.approx(1 - 3 / 20)
    assert a.value_accuracy == pytest.approx(1 - 300 / 1100)
    assert (a.gross_adjustment, a.net_adjustment) == (D(300), D(-300))
    t = rows["total"]
    assert (t.counts, t.hits, t.hit_rate) == (4, 2, 0.5)
    assert t.unit_accuracy == pytest.approx(1 - 4 / 120)
    assert t.value_accuracy == pytest.approx(1 - 310 / 2100)
    assert (t.gross_adjustment, t.net_adjustment) == (D(310), D(-290))
    assert rows["week=2026-W50"].counts == 2 and rows["warehouse=SH01"].gross_adjustment == D(300)


def test_accuracy_rows_with_adjustments_only() -> None:
    rows = accuracy_rows([], [AdjustmentFact("C", "SH01", MON, D(5))])
    assert [r.group for r in rows] == ["class=C", "warehouse=SH01", "week=2026-W49", "total"]
    assert rows[-1].hit_rate is None and rows[-1].unit_accuracy is None and rows[-1].net_adjustment == D(5)


# ---- progress


def test_progress_rows() -> None:
    tue = MON + timedelta(days=1)
    tasks = [
        TaskFact(MON, "甲 (E1)", "SH01/A", "done", False),
        TaskFact(MON, "甲 (E1)", "SH01/A", "open", True),
        TaskFact(MON, None, None, "in_progress", False),
        TaskFact(tue, "乙 (E2)", "SH01/B", "done", True),
        TaskFact(tue, "乙 (E2)", "SH01/B", "cancelled", False),  # left out
    ]
    rows = {r.group: r for r in progress_rows(tasks)}
    assert list(rows) == [
        "day=2026-11-30", "day=2026-12-01", "counter=乙 (E2)", "counter=甲 (E1)", "counter=未分配",
        "zone=SH01/A", "zone=SH01/B", "zone=未分区", "total",
    ]  # fmt: skip
    mon = rows["day=2026-11-30"]
    assert (mon.planned, mon.done, mon.open, mon.overdue) == (3, 1, 2, 1)
    assert mon.done_rate == pytest.approx(1 / 3)
    total = rows["total"]
    assert (total.planned, total.done, total.open, total.overdue) == (4, 2, 2, 2)


# ---- open variances


def test_next_actor() -> None:
    assert next_actor("pending_approval", "finance", None) == ("finance", None)
    assert next_actor("recount_pending", None, "乙 (E2)") == ("counter", "乙 (E2)")
    assert next_actor("recount_requested", None, None) == ("counter", None)
    assert next_actor("in_review", None, "乙 (E2)") == ("supervisor", None)
    assert next_actor("disputed", None, None) == ("supervisor", None)
    assert next_actor("approved", None, None) == ("system", None)


def test_open_variance_rows_oldest_first_with_age() -> None:
    now = datetime(2026, 12, 2, 2, tzinfo=UTC)

    def fact(vid: int, hours: float, state: str, role: str | None = None) -> OpenVarianceFact:
        return OpenVarianceFact(vid, "SH01", "A-001", "SKU1", "螺栓", "A", state, "major", D(-3), D(-30),
                                now - timedelta(hours=hours), approval_role=role)  # fmt: skip

    rows = open_variance_rows([fact(1, 2.25, "in_review"), fact(2, 30, "pending_approval", "manager")], now)
    assert [r.id for r in rows] == [2, 1]
    assert rows[0].age_hours == 30.0 and rows[0].next_role == "manager" and rows[0].next_role_zh == "经理"
    assert rows[0].state_zh == "待审批"
    assert rows[1].age_hours == pytest.approx(2.2, abs=0.06) and rows[1].next_role_zh == "主管"


# ---- reasons


def test_pareto() -> None:
    facts = [
        ReasonFact("shipping", D(-300)),
        ReasonFact("receiving", D(50)),
        ReasonFact("shipping", D(100)),
        ReasonFact("other", D(50)),
        ReasonFact("other", D(0)),
    ]
    rows = pareto(facts, {"shipping": "发货环节错漏", "receiving": "收货环节错漏"})
    assert [(r.reason_code, r.count, r.value) for r in rows] == [
        ("shipping", 2, D(400)),
        ("other", 2, D(50)),  # ties on value: more occurrences first
        ("receiving", 1, D(50)),
    ]
    assert rows[0].reason_zh == "发货环节错漏" and rows[1].reason_zh == "other"  # unknown code: the code
    assert [r.share for r in rows] == pytest.approx([0.8, 0.1, 0.1])
    assert [r.cumulative_share for r in rows] == pytest.approx([0.8, 0.9, 1.0])
    assert rows[-1].cumulative_share == 1.0


def test_pareto_without_value() -> None:
    rows = pareto([ReasonFact("other", D(0))], {})
    assert rows[0].count == 1 and rows[0].share is None and rows[0].cumulative_share is None
    assert pareto([], {}) == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["data_entry", "receiving", "shipping", "misplaced", "other"]),
            st.decimals(min_value=-(10**6), max_value=10**6, places=4, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
    )
)
def test_pareto_cumulative_share_never_decreases_and_ends_at_one(pairs: list[tuple[str, D]]) -> None:
    rows = pareto([ReasonFact(c, v) for c, v in pairs], {})
    assert sum(r.count for r in rows) == len(pairs)
    assert [r.value for r in rows] == sorted((r.value for r in rows), reverse=True)
    if all(v == 0 for _, v in pairs):
        assert all(r.cumulative_share is None for r in rows)
        return
    cums = [r.cumulative_share for r in rows if r.cumulative_share is not None]
    assert len(cums) == len(rows)
    assert all(a <= b for a, b in pairwise(cums))
    assert cums[-1] == 1.0
    assert sum(r.share or 0 for r in rows) == pytest.approx(1.0)


# ---- counters


def at(hh: int, mm: int, day: int = 30) -> datetime:
    """A local Shanghai time on 2026-11-<day> (or 2026-12-<day - 30>), as an aware datetime."""
    return datetime(2026, 11, 30, hh, mm, tzinfo=SH) + timedelta(days=day - 30)


def test_count_intervals_skip_breaks_and_day_changes() -> None:
    times = [at(9, 0), at(9, 4), at(9, 10), at(11, 0), at(11, 3), at(23, 58), at(0, 2, day=31)]
    # 4 and 6 minutes; 110 minutes is a break; 3; 12:55 later is too long; the next local day starts afresh
    assert count_intervals(times, SH) == [4.0, 6.0, 3.0]
    assert count_intervals(reversed(times), SH) == [4.0, 6.0, 3.0]  # order of arrival does not matter
    assert count_intervals([at(9, 0), at(10, 0)], SH) == [60.0]  # exactly 60 minutes still counts
    assert count_intervals([at(9, 0)], SH) == []


def test_count_intervals_use_the_local_day_not_the_utc_day() -> None:
    # 07:50 and 08:10 in Shanghai are 23:50 and 00:10 UTC: two UTC days, one local day
    assert count_intervals([at(7, 50), at(8, 10)], SH) == [20.0]
    # 23:50 and 00:10 in Shanghai are one UTC day but two local days
    assert count_intervals([at(23, 50), at(0, 10, day=31)], SH) == []


def test_counter_rows() -> None:
    entries = [
        EntryFact("甲 (E1)", at(9, 0), False, False),
        EntryFact("甲 (E1)", at(9, 5), False, True),
        EntryFact("甲 (E1)", at(9, 15), False, False),
        EntryFact("甲 (E1)", at(14, 0), False, True),
        EntryFact("甲 (E1)", at(14, 30), True, False),  # a recount of someone else's count
        EntryFact("乙 (E2)", at(10, 0), True, False),
    ]
    rows = {r.counter: r for r in counter_rows(entries, SH)}
    a = rows["甲 (E1)"]
    assert (a.counts, a.recounts, a.timed_counts, a.overturned) == (5, 1, 3, 2)
    assert a.avg_minutes == pytest.approx((5 + 10 + 30) / 3)
    assert a.overturn_rate == 0.5  # 2 of 4 first counts
    b = rows["乙 (E2)"]
    assert (b.counts, b.recounts, b.avg_minutes, b.timed_counts, b.overturned, b.overturn_rate) == (
        1, 1, None, 0, 0, None,
    )  # fmt: skip
