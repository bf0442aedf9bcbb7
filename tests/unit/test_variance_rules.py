from datetime import datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.enums import MovementType as MT
from core.enums import Role
from core.variance.rules import (
    ApprovalSettings,
    Confidence,
    InvalidReason,
    Movement,
    NotAllowed,
    Pair,
    ReasonCode,
    ReasonEvent,
    ReasonSettings,
    Refusal,
    VarianceLine,
    check_can_decide,
    escalation_due,
    pair_misslots,
    recurring_reasons,
    remainders,
    route,
    suggest_reason,
    validate_reason,
)
from core.variance.tolerance import Severity

T0 = datetime(2025, 3, 5, 10, 0)


def at(h: int, m: int = 0, day: int = 5) -> datetime:
    return datetime(2025, 3, day, h, m)


# ---- reason codes


def test_default_codes() -> None:
    s = ReasonSettings()
    assert [c.code for c in s.codes] == [
        "data_entry",
        "receiving",
        "shipping",
        "production_issue",
        "unrecorded_loss",
        "supplier_label",
        "misplaced",
        "other",
    ]
    assert [c.code for c in s.codes if c.requires_note] == ["other"]
    assert s.get("receiving") == ReasonCode("receiving", "收货环节错漏", "Receiving error")


@pytest.mark.parametrize(
    ("code", "note", "zh", "en"),
    [
        (None, None, "请选择差异原因", "Pick a reason"),
        ("", "x", "请选择差异原因", "Pick a reason"),
        ("theft", None, "未知的差异原因 'theft'", "Unknown reason 'theft'"),
        ("other", None, "原因「其他」需要填写说明", "requires a note"),
        ("other", "   ", "原因「其他」需要填写说明", "requires a note"),
    ],
)
def test_validate_reason_errors(code: str | None, note: str | None, zh: str, en: str) -> None:
    with pytest.raises(InvalidReason) as e:
        validate_reason(code, note, ReasonSettings())
    assert zh in e.value.zh and en in e.value.en


def test_validate_reason_ok() -> None:
    s = ReasonSettings()
    assert validate_reason("shipping", None, s).zh == "发货环节错漏"
    assert validate_reason("other", "叉车撞坏两箱", s).code == "other"


def test_configured_codes() -> None:
    s = ReasonSettings.model_validate(
        {"codes": [{"code": "damaged", "zh": "破损", "en": "Damaged", "requires_note": True}]}
    )
    assert validate_reason("damaged", "外箱压坏", s).en == "Damaged"
    with pytest.raises(InvalidReason):
        validate_reason("shipping", None, s)
    with pytest.raises(ValidationError, match="unique"):
        ReasonSettings(codes=[ReasonCode("a", "甲", "A"), ReasonCode("a", "乙", "B")])


# ---- reason suggestion


def mv(qty: int, t: MT, when: datetime) -> Movement:
    return Movement(D(qty), t, when)


@pytest.mark.parametrize(
    ("variance", "movements", "code", "zh", "confidence"),
    [
        # receipt booked before the count, goods not yet on the shelf: a loss of the same size
        (
            -10,
            [mv(10, MT.RECEIPT, at(9, 12))],
            "receiving",
            "09:12 有一笔 10 个的入库已记账，可能尚未上架",
            "high",
        ),
        # receipt booked after the count, goods already shelved: a gain of the same size
        (10, [mv(10, MT.RECEIPT, at(11, 30))], "receiving", "11:30 有一笔 10 个的入库在盘点后才记账", "high"),
        # a gain near a receipt of another size
        (
            3,
            [mv(10, MT.RECEIPT, at(9, 12))],
            "receiving",
            "09:12 有一笔 10 个的入库，可能收货数量有误",
            "low",
        ),
        # a loss equal to a recent issue
        (-6, [mv(-6, MT.ISSUE, at(8, 5))], "shipping", "08:05 有一笔 6 个的出库，与差异数量相同", "high"),
        # a variance equal to a production issue, either sign
        (-4, [mv(-4, MT.PRODUCTION_ISSUE, at(7))], "production_issue", "07:00 有一笔 4 个的生产领料", "high"),
        (4, [mv(-4, MT.PRODUCTION_ISSUE, at(7))], "production_issue", "料可能还未领走", "high"),
        (2, [mv(-2, MT.TRANSFER, at(9))], "misplaced", "有一笔 2 个的移库已记账，货可能还未搬动", "high"),
        (-5, [mv(5, MT.ADJUSTMENT, at(9))], "data_entry", "库存调整，与差异数量相同，可能录入错误", "high"),
        # the day before: the date is spelled out
        (
            -10,
            [mv(10, MT.RECEIPT, at(16, 40, day=4))],
            "receiving",
            "3月4日 16:40 有一笔 10 个的入库",
            "high",
        ),
        # an exact match beats a closer receipt of another size
        (
            -7,
            [mv(20, MT.RECEIPT, at(9, 55)), mv(-7, MT.ISSUE, at(6))],
            "shipping",
            "06:00 有一笔 7 个的出库",
            "high",
        ),
        # two exact matches: the closer in time
        (
            -3,
            [mv(-3, MT.ISSUE, at(6)), mv(-3, MT.PRODUCTION_ISSUE, at(9))],
            "production_issue",
            "09:00",
            "high",
        ),
        (
            D("-2.5"),
            [mv(0, MT.ISSUE, at(9)), Movement(D("-2.50"), MT.ISSUE, at(9))],
            "shipping",
            "2.5 个",
            "high",
        ),
    ],
)
def test_suggest_reason(
    variance: int, movements: list[Movement], code: str, zh: str, confidence: str
) -> None:
    s = suggest_reason(D(variance), T0, movements)
    assert s is not None
    assert s.reason_code == code and zh in s.zh and s.confidence == Confidence(confidence)
    assert s.en and s.movement in movements


@pytest.mark.parametrize(
    ("variance", "movements"),
    [
        (5, []),
        (0, [mv(10, MT.RECEIPT, at(9))]),  # no variance, nothing to explain
        (-3, [mv(10, MT.RECEIPT, at(9))]),  # a loss is not explained by a receipt of another size
        (3, [mv(-10, MT.ISSUE, at(9))]),  # nor a gain by an issue of another size
        (-10, [mv(10, MT.RECEIPT, at(9, day=3))]),  # outside the 24 h window
        (-4, [mv(-1, MT.TRANSFER, at(9))]),
    ],
)
def test_suggest_nothing(variance: int, movements: list[Movement]) -> None:
    assert suggest_reason(D(variance), T0, movements) is None


def test_suggest_window_and_unit() -> None:
    m = [mv(-10, MT.ISSUE, at(9, day=3))]
    s = suggest_reason(D(-10), T0, m, window=timedelta(days=3), unit="kg")
    assert s is not None and "10 kg的出库" in s.zh


def test_suggest_is_order_independent() -> None:
    ms = [mv(-3, MT.ISSUE, at(9)), mv(-3, MT.PRODUCTION_ISSUE, at(11)), mv(3, MT.RECEIPT, at(8))]
    first = suggest_reason(D(-3), T0, ms)
    assert first is not None and first.movement == ms[0]  # 09:00 and 11:00 tie on distance: earlier wins
    assert suggest_reason(D(-3), T0, list(reversed(ms))) == first


# ---- mis-slot pairing


def vl(id: int, qty: int, loc: int, item: int = 1, wh: int = 1, day: int = 5) -> VarianceLine:
    return VarianceLine(id, item, loc, wh, D(qty), datetime(2025, 3, day, 10))


def test_pairs_gain_with_loss_elsewhere() -> None:
    vs = [vl(1, 10, loc=1), vl(2, -6, loc=2)]
    assert pair_misslots(vs) == [Pair(1, 2, 1, 1, from_location_id=2, to_location_id=1, qty=D(6))]
    assert remainders(vs, pair_misslots(vs)) == {1: D(4), 2: D(0)}


@pytest.mark.parametrize(
    "vs",
    [
        [vl(1, 10, loc=1), vl(2, -10, loc=1)],  # same location: not a mis-slot
        [vl(1, 10, loc=1), vl(2, -10, loc=2, item=2)],  # another item
        [vl(1, 10, loc=1), vl(2, -10, loc=2, wh=2)],  # another warehouse
        [vl(1, 10, loc=1, day=1), vl(2, -10, loc=2, day=9)],  # 8 days apart
        [vl(1, 10, loc=1), vl(2, 10, loc=2)],  # two gains
    ],
)
def test_no_pair(vs: list[VarianceLine]) -> None:
    assert pair_misslots(vs) == []


def test_window_is_configurable() -> None:
    vs = [vl(1, 10, loc=1, day=1), vl(2, -10, loc=2, day=9)]
    assert len(pair_misslots(vs, window=timedelta(days=8))) == 1
    s = ReasonSettings(misslot_window_days=8, suggest_window_hours=72)
    assert len(pair_misslots(vs, window=s.misslot_window)) == 1
    assert s.suggest_window == timedelta(hours=72)
    assert ReasonSettings().misslot_window == timedelta(days=7)


def test_closest_quantities_first_then_time() -> None:
    vs = [vl(1, 10, loc=1), vl(2, -3, loc=2), vl(3, -10, loc=3, day=1), vl(4, -10, loc=4, day=4)]
    [p] = pair_misslots(vs)
    assert (p.gain_id, p.loss_id, p.qty) == (1, 4, D(10))  # equal qty; day 4 is closer than day 1
    vs2 = [vl(1, 5, loc=1), vl(2, 9, loc=2), vl(3, -9, loc=3)]
    assert [(p.gain_id, p.loss_id) for p in pair_misslots(vs2)] == [(2, 3)]


variance_lines = st.lists(
    st.builds(
        VarianceLine,
        id=st.integers(0, 10_000),
        item_id=st.integers(1, 3),
        location_id=st.integers(1, 4),
        warehouse_id=st.integers(1, 2),
        qty=st.integers(-20, 20).map(D),
        counted_at=st.integers(0, 20).map(lambda d: datetime(2025, 3, 1) + timedelta(days=d)),
    ),
    max_size=25,
    unique_by=lambda v: v.id,
)


@given(variance_lines)
def test_pairing_conserves_and_uses_each_once(vs: list[VarianceLine]) -> None:
    pairs = pair_misslots(vs)
    used = [p.gain_id for p in pairs] + [p.loss_id for p in pairs]
    assert len(used) == len(set(used))
    by = {v.id: v for v in vs}
    for p in pairs:
        g, lo = by[p.gain_id], by[p.loss_id]
        assert g.qty > 0 > lo.qty and p.qty == min(g.qty, -lo.qty) > 0
        assert g.item_id == lo.item_id == p.item_id and g.warehouse_id == lo.warehouse_id
        assert (p.from_location_id, p.to_location_id) == (lo.location_id, g.location_id)
        assert g.location_id != lo.location_id
        assert abs(g.counted_at - lo.counted_at) <= timedelta(days=7)
    rest = remainders(vs, pairs)
    for v in vs:
        # a remainder keeps the variance's sign and never exceeds it
        assert 0 <= rest[v.id] * (1 if v.qty >= 0 else -1) <= abs(v.qty)
    # net quantity per item and warehouse is conserved: a transfer moves stock, it creates none
    assert sum(v.qty for v in vs) == sum(rest.values())
    assert pair_misslots(list(reversed(vs))) == pairs


# ---- approval routing


def test_default_routes() -> None:
    assert route(Severity.AUTO) == []
    assert [s.role for s in route(Severity.MINOR)] == [Role.SUPERVISOR]
    assert [s.role for s in route(Severity.MAJOR)] == [Role.SUPERVISOR, Role.FINANCE]
    steps = route(Severity.CRITICAL)
    assert [(s.seq, s.role) for s in steps] == [(1, Role.SUPERVISOR), (2, Role.FINANCE), (3, Role.MANAGER)]
    assert all(s.sla == timedelta(hours=24) for s in steps)
    assert [s.escalate_to for s in steps] == [Role.MANAGER, Role.MANAGER, Role.ADMIN]


def test_configured_routes() -> None:
    s = ApprovalSettings.model_validate(
        {"steps": {"minor": ["finance"]}, "sla_hours": 8, "sla_hours_by_role": {"finance": 48}}
    )
    [step] = route(Severity.MINOR, s)
    assert step.role is Role.FINANCE and step.sla == timedelta(hours=48)
    assert route(Severity.MAJOR, s)[0].sla == timedelta(hours=8)


@pytest.mark.parametrize(
    "steps",
    [{"auto": ["supervisor"]}, {"major": []}, {"minor": ["supervisor", "supervisor"]}],
)
def test_bad_routes(steps: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationError):
        ApprovalSettings.model_validate({"steps": steps})


@pytest.mark.parametrize(("hours", "due"), [(0, False), (23.9, False), (24, True), (30, True)])
def test_escalation_due(hours: float, due: bool) -> None:
    [step] = route(Severity.MINOR)
    assert escalation_due(step, T0, T0 + timedelta(hours=hours)) is due


# ---- segregation of duties


@pytest.mark.parametrize(
    ("actor", "roles", "step_role", "why", "zh"),
    [
        (1, {Role.SUPERVISOR}, Role.SUPERVISOR, Refusal.COUNTED, "您参与了该行的盘点"),
        (2, {Role.SUPERVISOR, Role.FINANCE}, Role.FINANCE, Refusal.REVIEWED, "您审核过该差异"),
        (3, {Role.SUPERVISOR}, Role.FINANCE, Refusal.ROLE, "这一步需要「财务」角色审批"),
        (3, {Role.ADMIN}, Role.MANAGER, Refusal.ROLE, "「经理」"),
    ],
)
def test_not_allowed(actor: int, roles: set[Role], step_role: Role, why: Refusal, zh: str) -> None:
    with pytest.raises(NotAllowed) as e:
        check_can_decide(actor, roles, step_role, counted_by={1}, reviewed_by={2})
    assert e.value.why is why and zh in e.value.zh and e.value.en


def test_allowed() -> None:
    check_can_decide(3, [Role.FINANCE, Role.SUPERVISOR], Role.FINANCE, counted_by={1}, reviewed_by={2})


# ---- recurring reasons


def ev(vid: int, code: str, days_ago: float, wh: int = 1) -> ReasonEvent:
    return ReasonEvent(vid, wh, code, T0 - timedelta(days=days_ago))


def test_recurrence_at_k() -> None:
    events = [ev(i, "receiving", i) for i in range(1, 6)] + [ev(10, "shipping", 1)]
    [r] = recurring_reasons(events, now=T0)
    assert (r.warehouse_id, r.reason_code, r.variance_ids) == (1, "receiving", (1, 2, 3, 4, 5))
    assert r.first_at == T0 - timedelta(days=5) and r.last_at == T0 - timedelta(days=1)


@pytest.mark.parametrize(
    "events",
    [
        [ev(i, "receiving", i) for i in range(1, 5)],  # only 4
        [ev(i, "receiving", 7 * i) for i in range(1, 6)],  # the fifth is 35 days ago
        [ev(i, "receiving", 1, wh=i % 2) for i in range(1, 6)],  # split over two warehouses
        [ev(1, "receiving", d) for d in range(1, 6)],  # one variance decided five times
        [ev(i, "receiving", -1) for i in range(1, 6)],  # in the future
    ],
)
def test_no_recurrence(events: list[ReasonEvent]) -> None:
    assert recurring_reasons(events, now=T0) == []


def test_recurrence_parameters() -> None:
    events = [ev(i, "misplaced", i * 10, wh=2) for i in range(1, 4)] + [ev(9, "other", 1, wh=1)] * 2
    assert [r.reason_code for r in recurring_reasons(events, k=3, window_days=31, now=T0)] == ["misplaced"]
    assert [r.warehouse_id for r in recurring_reasons(events, k=1, window_days=31, now=T0)] == [1, 2]
    with pytest.raises(ValueError):
        recurring_reasons(events, k=0, now=T0)


@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 2), st.sampled_from("ab"), st.integers(0, 60))))
def test_recurrence_properties(rows: list[tuple[int, int, str, int]]) -> None:
    events = [ReasonEvent(v, wh, c, T0 - timedelta(days=d)) for v, wh, c, d in rows]
    out = recurring_reasons(events, k=2, window_days=30, now=T0)
    ids = [i for r in out for i in r.variance_ids]
    assert len(ids) == len(set(ids))
    assert all(len(r.variance_ids) >= 2 and T0 - timedelta(days=30) < r.first_at <= r.last_at for r in out)
    assert out == sorted(out, key=lambda r: (r.warehouse_id, r.reason_code))
