"""The daily plan (pure): which item-locations are counted on a given working day, and why.

Two sources of tasks:

- **Rotation.** Members of one (warehouse, class) are ranked by ``rotation_seq`` (walking order; new
  item-locations are appended). Member ``r`` of ``n`` is counted on working day ``floor(r * D / n)`` of its
  cycle (``D`` working days), so each day gets floor or ceil of ``n / D`` counts: within one of the mean.
  A member whose slot has passed without a task (a day the plan did not run, or a class change) is caught up
  the next time the plan runs. When pandian starts mid-cycle, slots before its first plan in that cycle are
  left to the next cycle instead of piling onto day one.
- **Triggers**, beyond the rotation: negative book, stock that reached zero, no movement for N days,
  turnover value since the last count, recent inaccurate counts, and ad-hoc requests.

An item-location never gets a second open task: a trigger on an item-location that already has an open
task only marks its rotation as satisfied. A trigger task also satisfies the rotation of its cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from core.enums import REASON_PRIORITY, TaskReason
from core.scheduling.policy import Cycle, rotation_slot

# A zero balance is "reached" (and worth confirming) if the movement that made it happened this recently.
ZERO_RECENT_DAYS = 7


@dataclass(frozen=True, slots=True)
class Rules:
    dormant_days: int = 90
    turnover_threshold: Decimal = Decimal(50000)
    zero_confirm: bool = True
    inaccurate_days: int = 30
    trigger_minutes_factor: float = 1.5
    # Dormant and turnover counts are discretionary: at most this many a day per warehouse, so a backlog
    # (say, on the first day) is worked off over the following days instead of swamping one.
    discretionary_daily_cap: int = 100
    minutes_per_task: dict[str, float] = field(default_factory=lambda: {"A": 4.0, "B": 3.0, "C": 2.0})


@dataclass(slots=True)
class Candidate:
    """One item-location as the planner sees it."""

    item_location_id: int
    item_id: int
    location_id: int
    warehouse_id: int
    abc_class: str
    qty: Decimal = Decimal(0)
    last_movement_at: datetime | None = None
    last_counted_at: datetime | None = None
    turnover_value: Decimal = Decimal(0)
    last_miss_at: datetime | None = None
    last_rotation_cycle: str | None = None
    has_open_task: bool = False
    request_id: int | None = None  # a pending ad-hoc request
    rank: int | None = None  # 0-based rank in its rotation, when the caller already knows it


@dataclass(frozen=True, slots=True)
class RotationWindow:
    """The rotation of one (warehouse, class) as seen on the plan day."""

    cycle: Cycle
    members: int
    working_days: int  # D
    today_index: int  # index of the plan day among the cycle's working days
    first_index: int = 0  # earliest slot that is caught up (pandian's first plan in this cycle)

    def slot(self, rank: int) -> int:
        return rotation_slot(rank, self.members, self.working_days)

    def due_ranks(self) -> range:
        """The ranks whose slot lies in [first_index, today_index]: the inverse of ``slot``.

        slot(r) >= f  <=>  r >= ceil(f*n/D);  slot(r) <= t  <=>  r < ceil((t+1)*n/D).
        """
        if self.working_days <= 0 or self.first_index > self.today_index:
            return range(0)
        n, d = self.members, self.working_days
        lo = -(-self.first_index * n // d)
        hi = -(-(self.today_index + 1) * n // d)
        return range(lo, min(hi, n))

    def is_due(self, rank: int) -> bool:
        if self.working_days <= 0:
            return False
        s = self.slot(rank)
        return self.first_index <= s <= self.today_index


@dataclass(frozen=True, slots=True)
class Proposal:
    item_location_id: int
    item_id: int
    location_id: int
    warehouse_id: int
    abc_class: str
    reason: TaskReason
    priority: int
    cycle_key: str
    due_date: date
    est_minutes: float
    request_id: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    item_location_id: int
    proposal: Proposal | None
    satisfies_cycle: str | None  # rotation cycle this day's decision covers, if any


DISCRETIONARY = frozenset({TaskReason.DORMANT, TaskReason.TURNOVER})


def triggers(c: Candidate, now: datetime, rules: Rules) -> list[TaskReason]:
    """Every trigger that fires for ``c`` at ``now`` (the start of the plan day), most urgent first."""
    fired: list[TaskReason] = []
    moved_since_count = c.last_movement_at is not None and (
        c.last_counted_at is None or c.last_movement_at > c.last_counted_at
    )
    if c.qty < 0 and (c.last_counted_at is None or moved_since_count):
        fired.append(TaskReason.NEGATIVE)
    if c.request_id is not None:
        fired.append(TaskReason.ADHOC)
    if (
        rules.zero_confirm
        and c.qty == 0
        and c.last_movement_at is not None
        and c.last_movement_at >= now - timedelta(days=ZERO_RECENT_DAYS)
        and moved_since_count
    ):
        fired.append(TaskReason.ZERO)
    if (
        c.last_miss_at is not None
        and c.last_miss_at >= now - timedelta(days=rules.inaccurate_days)
        and (c.last_counted_at is None or c.last_counted_at <= c.last_miss_at)
    ):
        fired.append(TaskReason.INACCURATE)
    # Turnover since the last count: an item never counted yet is reached by its rotation first.
    if (
        rules.turnover_threshold > 0
        and c.last_counted_at is not None
        and c.turnover_value >= rules.turnover_threshold
    ):
        fired.append(TaskReason.TURNOVER)
    dormant_since = now - timedelta(days=rules.dormant_days)
    if (
        c.qty != 0
        and c.last_movement_at is not None
        and c.last_movement_at < dormant_since
        and (c.last_counted_at is None or c.last_counted_at < dormant_since)
    ):
        fired.append(TaskReason.DORMANT)
    fired.sort(key=lambda r: REASON_PRIORITY[r])
    return fired


def _proposal(
    c: Candidate, reason: TaskReason, cycle_key: str, due: date, minutes: float, request_id: int | None = None
) -> Proposal:
    return Proposal(
        c.item_location_id, c.item_id, c.location_id, c.warehouse_id, c.abc_class, reason,
        REASON_PRIORITY[reason], cycle_key, due, round(minutes, 2), request_id,
    )  # fmt: skip


def decide(
    c: Candidate,
    rank: int,
    window: RotationWindow | None,
    day: date,
    now: datetime,
    rules: Rules,
    zero_due: date | None = None,
    allow_discretionary: bool = True,
) -> Decision:
    """What happens to one item-location on ``day``. ``rank`` is its 0-based rank in its rotation."""
    rotation_due = window is not None and c.last_rotation_cycle != window.cycle.key and window.is_due(rank)
    satisfied = window.cycle.key if rotation_due and window is not None else None
    if c.has_open_task:
        return Decision(c.item_location_id, None, satisfied)
    fired = triggers(c, now, rules)
    if not allow_discretionary:
        fired = [r for r in fired if r not in DISCRETIONARY]
    minutes = rules.minutes_per_task.get(c.abc_class, 3.0)
    if fired:
        reason = fired[0]
        due = zero_due if reason is TaskReason.ZERO and zero_due else day
        request = c.request_id if reason is TaskReason.ADHOC else None
        task = _proposal(
            c,
            reason,
            f"{reason.value}:{day.isoformat()}",
            due,
            minutes * rules.trigger_minutes_factor,
            request,
        )
        return Decision(c.item_location_id, task, satisfied)
    if rotation_due and window is not None:
        task = _proposal(c, TaskReason.ROTATION, window.cycle.key, day, minutes)
        return Decision(c.item_location_id, task, satisfied)
    return Decision(c.item_location_id, None, None)


class RotationPlanner:
    """Decides for candidates fed in rotation order (warehouse, rotation_seq), in as many batches as wanted.

    Ranks are counted per (warehouse, class) as rows go by, so the caller streams rows and never holds the
    whole rotation in memory.
    """

    def __init__(
        self,
        windows: dict[tuple[int, str], RotationWindow],
        day: date,
        now: datetime,
        rules: Rules,
        zero_due: date | None = None,
        count_ranks: bool = True,
    ) -> None:
        self.windows, self.day, self.now, self.rules, self.zero_due = windows, day, now, rules, zero_due
        self.count_ranks = count_ranks
        self.ranks: dict[tuple[int, str], int] = {}
        self.discretionary: dict[int, int] = {}

    def feed(self, candidates: Iterable[Candidate]) -> Iterator[Decision]:
        """Yields only decisions that do something (a task, or a rotation marked as satisfied).

        With ``count_ranks``, every member must be fed in rotation order and ranks are counted here.
        Without it, the caller feeds only rows that may produce a decision: the rotation rows it found due
        (``rank`` set) and trigger candidates (``rank`` None: their rotation is not due today).
        """
        cap = self.rules.discretionary_daily_cap
        for c in candidates:
            key = (c.warehouse_id, c.abc_class)
            window = self.windows.get(key)
            if c.rank is not None:
                rank = c.rank
            elif self.count_ranks:
                rank = self.ranks.get(key, 0)
                self.ranks[key] = rank + 1
            else:
                rank, window = 0, None
            if window is not None and rank >= window.members:
                window = None  # more members than counted up front (a concurrent insert): the next plan
            used = self.discretionary.get(c.warehouse_id, 0)
            d = decide(c, rank, window, self.day, self.now, self.rules, self.zero_due, used < cap)
            if d.proposal is not None and d.proposal.reason in DISCRETIONARY:
                self.discretionary[c.warehouse_id] = used + 1
            if d.proposal is not None or d.satisfies_cycle is not None:
                yield d


def plan_stream(
    candidates: Iterable[Candidate],
    windows: dict[tuple[int, str], RotationWindow],
    day: date,
    now: datetime,
    rules: Rules,
    zero_due: date | None = None,
) -> Iterator[Decision]:
    """Decide for candidates given in rotation order; yields only non-empty decisions."""
    return RotationPlanner(windows, day, now, rules, zero_due).feed(candidates)
