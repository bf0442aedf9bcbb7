"""Variance rules (pure): reason codes, reason suggestions, mis-slot pairing, approval routing, segregation of
duties and recurring reasons.

Everything here works on plain data; time comes in as parameters. Errors a person will read carry a Chinese
and an English message (``.zh`` / ``.en``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from core.enums import ROLE_LABEL_ZH, MovementType, Role
from core.variance.tolerance import Severity

DEFAULT_SUGGEST_WINDOW = timedelta(hours=24)
DEFAULT_MISSLOT_WINDOW = timedelta(days=7)
DEFAULT_RECURRENCE_K = 5
DEFAULT_RECURRENCE_WINDOW_DAYS = 30
DEFAULT_SLA_HOURS = 24


class RuleViolation(ValueError):
    """A rule said no. ``zh`` is shown to people by default, ``en`` when the locale asks for it."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(f"{zh} / {en}")
        self.zh = zh
        self.en = en


# --------------------------------------------------------------------------------------------------------
# Reason codes


@dataclass(frozen=True, slots=True)
class ReasonCode:
    code: str
    zh: str
    en: str
    requires_note: bool = False


def _default_codes() -> list[ReasonCode]:
    # The six tags of common practice, plus mis-slot (the pairing below proposes it) and "other" with a note.
    return [
        ReasonCode("data_entry", "系统账目录入错误", "Data entry error"),
        ReasonCode("receiving", "收货环节错漏", "Receiving error"),
        ReasonCode("shipping", "发货环节错漏", "Shipping error"),
        ReasonCode("production_issue", "生产领料错误", "Production issue error"),
        ReasonCode("unrecorded_loss", "未记录的损耗", "Unrecorded loss"),
        ReasonCode("supplier_label", "供应商标签错误", "Supplier label error"),
        ReasonCode("misplaced", "串货/错放库位", "Misplaced (wrong location)"),
        ReasonCode("other", "其他", "Other", requires_note=True),
    ]


class InvalidReason(RuleViolation):
    pass


class ReasonSettings(BaseModel):
    codes: list[ReasonCode] = Field(default_factory=_default_codes)
    suggest_window_hours: int = Field(
        default=DEFAULT_SUGGEST_WINDOW // timedelta(hours=1),
        ge=1,
        description="movements this close to a count explain it",
    )
    misslot_window_days: int = Field(
        default=DEFAULT_MISSLOT_WINDOW.days, ge=0, description="gain and loss this close in time pair up"
    )
    recurrence_k: int = Field(default=DEFAULT_RECURRENCE_K, ge=1, description="this many of one reason...")
    recurrence_window_days: int = Field(
        default=DEFAULT_RECURRENCE_WINDOW_DAYS, ge=1, description="...in this many days opens an improvement"
    )

    @field_validator("codes")
    @classmethod
    def _unique(cls, v: list[ReasonCode]) -> list[ReasonCode]:
        seen: set[str] = set()
        for c in v:
            if not c.code or c.code in seen:
                raise ValueError(f"reason codes must be non-empty and unique: {c.code!r}")
            seen.add(c.code)
        return v

    @property
    def suggest_window(self) -> timedelta:
        return timedelta(hours=self.suggest_window_hours)

    @property
    def misslot_window(self) -> timedelta:
        return timedelta(days=self.misslot_window_days)

    def get(self, code: str) -> ReasonCode | None:
        return next((c for c in self.codes if c.code == code), None)


def validate_reason(code: str | None, note: str | None, settings: ReasonSettings) -> ReasonCode:
    """The reason a reviewer picked, or :class:`InvalidReason` saying what is missing."""
    known = "、".join(f"{c.zh}({c.code})" for c in settings.codes)
    known_en = ", ".join(c.code for c in settings.codes)
    if not code:
        raise InvalidReason(f"请选择差异原因：{known}", f"Pick a reason: {known_en}")
    reason = settings.get(code)
    if reason is None:
        raise InvalidReason(
            f"未知的差异原因 {code!r}，可选：{known}", f"Unknown reason {code!r}; choose one of: {known_en}"
        )
    if reason.requires_note and not (note and note.strip()):
        raise InvalidReason(f"原因「{reason.zh}」需要填写说明", f"Reason '{reason.en}' requires a note")
    return reason


# --------------------------------------------------------------------------------------------------------
# Reason suggestion from the movements around a count


@dataclass(frozen=True, slots=True)
class Movement:
    qty: Decimal  # signed: + into the location, - out of it
    type: MovementType
    occurred_at: datetime


class Confidence(StrEnum):
    HIGH = "high"  # a movement of exactly the variance's size
    LOW = "low"  # only a nearby movement of a fitting type


@dataclass(frozen=True, slots=True)
class Suggestion:
    reason_code: str
    zh: str
    en: str
    confidence: Confidence
    movement: Movement


_REASON_BY_TYPE: dict[MovementType, str] = {
    MovementType.RECEIPT: "receiving",
    MovementType.ISSUE: "shipping",
    MovementType.PRODUCTION_ISSUE: "production_issue",
    MovementType.TRANSFER: "misplaced",
    MovementType.ADJUSTMENT: "data_entry",
}

_TYPE_ZH: dict[MovementType, str] = {
    MovementType.RECEIPT: "入库",
    MovementType.ISSUE: "出库",
    MovementType.PRODUCTION_ISSUE: "生产领料",
    MovementType.TRANSFER: "移库",
    MovementType.ADJUSTMENT: "库存调整",
}

# Why a movement of the variance's exact size explains it, by how the two relate:
# "unshelved": the movement is in the book at count time but did not happen on the shelf (variance = -movement);
# "late": it happened on the shelf before it was booked after the count (variance = +movement);
# "same": same size otherwise (done twice, wrong quantity keyed).
_HINT_ZH: dict[tuple[MovementType, str], str] = {
    (MovementType.RECEIPT, "unshelved"): "已记账，可能尚未上架",
    (MovementType.RECEIPT, "late"): "在盘点后才记账，货可能已先上架",
    (MovementType.RECEIPT, "same"): "，与差异数量相同，可能实收数量与入库单不符",
    (MovementType.ISSUE, "unshelved"): "已记账，货可能还未拣走",
    (MovementType.ISSUE, "late"): "在盘点后才记账，货可能已先拣走",
    (MovementType.ISSUE, "same"): "，与差异数量相同，可能重复发货或发错货",
    (MovementType.PRODUCTION_ISSUE, "unshelved"): "已记账，料可能还未领走",
    (MovementType.PRODUCTION_ISSUE, "late"): "在盘点后才记账，料可能已先领走",
    (MovementType.PRODUCTION_ISSUE, "same"): "，与差异数量相同，可能重复领料或领错料",
    (MovementType.TRANSFER, "unshelved"): "已记账，货可能还未搬动",
    (MovementType.TRANSFER, "late"): "在盘点后才记账，货可能已先搬动",
    (MovementType.TRANSFER, "same"): "，与差异数量相同，可能放错库位",
    (MovementType.ADJUSTMENT, "unshelved"): "，与差异数量相同，可能录入错误",
    (MovementType.ADJUSTMENT, "late"): "，与差异数量相同，可能录入错误",
    (MovementType.ADJUSTMENT, "same"): "，与差异数量相同，可能录入错误",
}
_HINT_EN: dict[str, str] = {
    "unshelved": "was booked but may not have happened on the shelf yet",
    "late": "was booked after the count but may have happened before it",
    "same": "has the same size as the variance",
}
_NEARBY_ZH: dict[MovementType, str] = {
    MovementType.RECEIPT: "，可能收货数量有误或尚未正确上架",
    MovementType.ISSUE: "，可能发货数量有误",
    MovementType.PRODUCTION_ISSUE: "，可能领料数量有误",
}
# Without an exact match, only these (variance direction, movement type) pairs are worth a hint.
_NEARBY_TYPES: dict[bool, tuple[MovementType, ...]] = {
    True: (MovementType.RECEIPT,),  # gain
    False: (MovementType.ISSUE, MovementType.PRODUCTION_ISSUE),  # loss
}
_TYPE_ORDER = {t: i for i, t in enumerate(MovementType)}


def fmt_qty(q: Decimal) -> str:
    """10 -> "10", 2.50 -> "2.5", never scientific notation."""
    return format(abs(q).normalize(), "f")


def _when(m: Movement, count_time: datetime) -> str:
    if m.occurred_at.date() == count_time.date():
        return f"{m.occurred_at:%H:%M}"
    return f"{m.occurred_at.month}月{m.occurred_at.day}日 {m.occurred_at:%H:%M}"


def suggest_reason(
    variance_qty: Decimal,
    count_time: datetime,
    movements: Iterable[Movement],
    *,
    window: timedelta = DEFAULT_SUGGEST_WINDOW,
    unit: str = "个",
) -> Suggestion | None:
    """The likeliest reason for a variance, from the item's movements at the location around the count.

    1. A movement within ``window`` of the count whose size equals the variance's (high confidence); the
       closest in time wins, then the earlier, then the movement type's order. Its type gives the reason:
       receipt -> receiving, issue -> shipping, production issue -> production_issue, transfer -> misplaced,
       adjustment -> data_entry.
    2. Otherwise a gain near a receipt, or a loss near an issue or production issue (low confidence).
    3. Otherwise None: nothing in the ledger explains it.
    """
    if variance_qty == 0:
        return None
    near = [m for m in movements if m.qty != 0 and abs(m.occurred_at - count_time) <= window]

    def key(m: Movement) -> tuple[timedelta, datetime, int]:
        return abs(m.occurred_at - count_time), m.occurred_at, _TYPE_ORDER[m.type]

    exact = sorted((m for m in near if abs(m.qty) == abs(variance_qty)), key=key)
    if exact:
        m = exact[0]
        booked = m.occurred_at <= count_time
        story = (
            "unshelved"
            if booked and variance_qty == -m.qty
            else "late"
            if not booked and variance_qty == m.qty
            else "same"
        )
        when = _when(m, count_time)
        head = f"{when} 有一笔 {fmt_qty(m.qty)} {unit}的{_TYPE_ZH[m.type]}"
        return Suggestion(
            _REASON_BY_TYPE[m.type],
            head + _HINT_ZH[m.type, story],
            f"A {m.type.value} of {fmt_qty(m.qty)} at {when} {_HINT_EN[story]}",
            Confidence.HIGH,
            m,
        )
    fitting = _NEARBY_TYPES[variance_qty > 0]
    nearby = sorted((m for m in near if m.type in fitting), key=key)
    if nearby:
        m = nearby[0]
        when = _when(m, count_time)
        return Suggestion(
            _REASON_BY_TYPE[m.type],
            f"{when} 有一笔 {fmt_qty(m.qty)} {unit}的{_TYPE_ZH[m.type]}{_NEARBY_ZH[m.type]}",
            f"A {m.type.value} of {fmt_qty(m.qty)} at {when} is close to the count",
            Confidence.LOW,
            m,
        )
    return None


# --------------------------------------------------------------------------------------------------------
# Mis-slot pairing


@dataclass(frozen=True, slots=True)
class VarianceLine:
    id: int
    item_id: int
    location_id: int
    warehouse_id: int
    qty: Decimal  # signed: + gain, - loss
    counted_at: datetime


@dataclass(frozen=True, slots=True)
class Pair:
    """A proposed transfer of ``qty`` from the loss's location to the gain's location."""

    gain_id: int
    loss_id: int
    item_id: int
    warehouse_id: int
    from_location_id: int
    to_location_id: int
    qty: Decimal  # > 0: min(|gain|, |loss|)


def pair_misslots(
    variances: Iterable[VarianceLine], *, window: timedelta = DEFAULT_MISSLOT_WINDOW
) -> list[Pair]:
    """Pair a gain of an item with a loss of the same item elsewhere in the same warehouse.

    Greedy and deterministic: candidate pairs are taken closest quantities first, then closest in time, then
    by ids; each variance is used at most once. What a pair does not cover stays a gain or loss of its own
    (see :func:`remainders`).
    """
    lines = list(variances)
    gains = sorted((v for v in lines if v.qty > 0), key=lambda v: v.id)
    losses_by: dict[tuple[int, int], list[VarianceLine]] = defaultdict(list)
    for v in sorted((v for v in lines if v.qty < 0), key=lambda v: v.id):
        losses_by[v.warehouse_id, v.item_id].append(v)
    candidates: list[tuple[Decimal, timedelta, int, int, VarianceLine, VarianceLine]] = []
    for g in gains:
        for lo in losses_by.get((g.warehouse_id, g.item_id), ()):
            gap = abs(g.counted_at - lo.counted_at)
            if lo.location_id != g.location_id and gap <= window:
                candidates.append((abs(g.qty + lo.qty), gap, g.id, lo.id, g, lo))
    candidates.sort(key=lambda c: c[:4])
    used: set[int] = set()
    pairs: list[Pair] = []
    for *_, g, lo in candidates:
        if g.id in used or lo.id in used:
            continue
        used.update((g.id, lo.id))
        pairs.append(
            Pair(g.id, lo.id, g.item_id, g.warehouse_id, lo.location_id, g.location_id, min(g.qty, -lo.qty))
        )
    return pairs


def remainders(variances: Iterable[VarianceLine], pairs: Sequence[Pair]) -> dict[int, Decimal]:
    """Signed quantity of each variance not covered by a pair (0 when fully covered)."""
    out = {v.id: v.qty for v in variances}
    for p in pairs:
        out[p.gain_id] -= p.qty
        out[p.loss_id] += p.qty
    return out


# --------------------------------------------------------------------------------------------------------
# Approval routing


def _default_steps() -> dict[Severity, list[Role]]:
    return {
        Severity.AUTO: [],
        Severity.MINOR: [Role.SUPERVISOR],
        Severity.MAJOR: [Role.SUPERVISOR, Role.FINANCE],
        Severity.CRITICAL: [Role.SUPERVISOR, Role.FINANCE, Role.MANAGER],
    }


def _default_escalation() -> dict[Role, Role]:
    return {Role.SUPERVISOR: Role.MANAGER, Role.FINANCE: Role.MANAGER, Role.MANAGER: Role.ADMIN}


class ApprovalSettings(BaseModel):
    steps: dict[Severity, list[Role]] = Field(default_factory=_default_steps)
    sla_hours: int = Field(default=DEFAULT_SLA_HOURS, ge=1, description="hours a step may stay open")
    sla_hours_by_role: dict[Role, int] = Field(default_factory=dict, description="overrides sla_hours")
    # Who is told when a step's SLA passes. A role missing here is not escalated.
    escalate_to: dict[Role, Role] = Field(default_factory=_default_escalation)

    @field_validator("steps")
    @classmethod
    def _all_severities(cls, v: dict[Severity, list[Role]]) -> dict[Severity, list[Role]]:
        merged = {**_default_steps(), **v}
        if merged[Severity.AUTO]:
            raise ValueError("auto-accepted variances take no approval steps")
        for sev, roles in merged.items():
            if sev is not Severity.AUTO and not roles:
                raise ValueError(f"severity {sev.value!r} needs at least one approval step")
            if len(set(roles)) != len(roles):
                raise ValueError(f"severity {sev.value!r} names a role twice")
        return merged

    @field_validator("sla_hours_by_role")
    @classmethod
    def _positive(cls, v: dict[Role, int]) -> dict[Role, int]:
        if any(h < 1 for h in v.values()):
            raise ValueError("an SLA is at least one hour")
        return v


@dataclass(frozen=True, slots=True)
class Step:
    seq: int  # 1-based
    role: Role
    sla: timedelta
    escalate_to: Role | None


def route(severity: Severity, settings: ApprovalSettings | None = None) -> list[Step]:
    """The approval steps for a severity, in order (empty for AUTO)."""
    s = settings or ApprovalSettings()
    return [
        Step(
            seq=i,
            role=role,
            sla=timedelta(hours=s.sla_hours_by_role.get(role, s.sla_hours)),
            escalate_to=s.escalate_to.get(role),
        )
        for i, role in enumerate(s.steps[severity], start=1)
    ]


def escalation_due(step: Step, opened_at: datetime, now: datetime) -> bool:
    """The step has been open for its whole SLA."""
    return now - opened_at >= step.sla


# --------------------------------------------------------------------------------------------------------
# Segregation of duties


class Refusal(StrEnum):
    COUNTED = "counted"
    REVIEWED = "reviewed"
    DECIDED = "decided"
    ROLE = "role"


class NotAllowed(RuleViolation):
    def __init__(self, why: Refusal, zh: str, en: str) -> None:
        super().__init__(zh, en)
        self.why = why


def check_can_decide(
    actor_id: int,
    actor_roles: Iterable[Role],
    step_role: Role,
    counted_by: set[int],
    reviewed_by: set[int],
    decided_by: set[int] | frozenset[int] = frozenset(),
) -> None:
    """Raise :class:`NotAllowed` unless the actor may decide this approval step.

    Whoever counted or reviewed the line may not approve it, whatever their roles; whoever decided an earlier
    step of the variance may not decide another (one person, one step: someone holding two roles does not
    shrink a two-person chain to one); otherwise the actor must hold the step's role (no role stands in for
    another, admin included).
    """
    if actor_id in counted_by:
        raise NotAllowed(
            Refusal.COUNTED,
            "您参与了该行的盘点，不能审批自己的盘点结果",
            "You counted this line and cannot approve it",
        )
    if actor_id in reviewed_by:
        raise NotAllowed(
            Refusal.REVIEWED,
            "您审核过该差异，不能再审批",
            "You reviewed this variance and cannot also approve it",
        )
    if actor_id in decided_by:
        raise NotAllowed(
            Refusal.DECIDED,
            "您已审批过该差异的上一级，同一人不能审批两级",
            "You approved an earlier step of this variance; one person cannot decide two steps",
        )
    if step_role not in set(actor_roles):
        raise NotAllowed(
            Refusal.ROLE,
            f"这一步需要「{ROLE_LABEL_ZH[step_role]}」角色审批",
            f"This step must be decided by the {step_role.value} role",
        )


# --------------------------------------------------------------------------------------------------------
# Recurring reasons ("closing the loop")


@dataclass(frozen=True, slots=True)
class ReasonEvent:
    variance_id: int
    warehouse_id: int
    reason_code: str
    decided_at: datetime


@dataclass(frozen=True, slots=True)
class Recurrence:
    warehouse_id: int
    reason_code: str
    variance_ids: tuple[int, ...]  # ascending
    first_at: datetime
    last_at: datetime


def recurring_reasons(
    events: Iterable[ReasonEvent],
    k: int = DEFAULT_RECURRENCE_K,
    window_days: int = DEFAULT_RECURRENCE_WINDOW_DAYS,
    *,
    now: datetime,
) -> list[Recurrence]:
    """One Recurrence per (warehouse, reason) decided at least ``k`` times in ``(now - window, now]``.

    A variance decided twice (e.g. sent back and reviewed again) counts once, with its latest decision.
    Sorted by warehouse, then reason code.
    """
    if k < 1 or window_days < 1:
        raise ValueError("k and window_days must be at least 1")
    start = now - timedelta(days=window_days)
    latest: dict[int, ReasonEvent] = {}
    for e in events:
        if start < e.decided_at <= now and (
            e.variance_id not in latest or e.decided_at >= latest[e.variance_id].decided_at
        ):
            latest[e.variance_id] = e
    groups: dict[tuple[int, str], list[ReasonEvent]] = defaultdict(list)
    for e in latest.values():
        groups[e.warehouse_id, e.reason_code].append(e)
    out: list[Recurrence] = []
    for (wh, code), evs in sorted(groups.items()):
        if len(evs) >= k:
            times = [e.decided_at for e in evs]
            out.append(
                Recurrence(wh, code, tuple(sorted(e.variance_id for e in evs)), min(times), max(times))
            )
    return out
