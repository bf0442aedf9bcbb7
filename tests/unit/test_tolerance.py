from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.variance.tolerance import (
    SEVERITY_RANK,
    Breach,
    Direction,
    Limits,
    Severity,
    SeverityTiers,
    Tier,
    Tolerance,
    ToleranceSettings,
    assess,
    compute_variance,
)

SETTINGS = ToleranceSettings()


# ---- compute_variance


@pytest.mark.parametrize(
    ("book", "counted", "cost", "qty", "pct", "value", "direction"),
    [
        (100, 100, 5, 0, 0, 0, Direction.NONE),
        (100, 103, 5, 3, 3, 15, Direction.GAIN),
        (100, 90, 2, -10, -10, -20, Direction.LOSS),
        (0, 4, 10, 4, None, 40, Direction.GAIN),  # book 0, stock found: a variance, no division by zero
        (0, 0, 10, 0, None, 0, Direction.NONE),
        (-5, 0, 1, 5, 100, 5, Direction.GAIN),  # negative book: pct over |book|, sign of qty
        (8, D("7.5"), D("0.2"), D("-0.5"), D("-6.25"), D("-0.1"), Direction.LOSS),
    ],
)
def test_compute_variance(
    book: int, counted: int, cost: int, qty: int, pct: int | None, value: int, direction: Direction
) -> None:
    v = compute_variance(D(book), D(counted), D(cost))
    assert v.qty == qty and v.value == value and v.direction is direction
    assert v.pct == (None if pct is None else D(pct))
    assert v.exact == (qty == 0)


def test_compute_variance_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="negative"):
        compute_variance(D(1), D(-1), D(1))
    with pytest.raises(ValueError, match="cost"):
        compute_variance(D(1), D(1), D(-1))


# ---- tolerances


@pytest.mark.parametrize(
    ("abc", "book", "counted", "cost", "within", "breaches"),
    [
        ("A", 100, 101, 1, True, ()),  # 1 % is the A limit, inclusive
        ("A", 100, 102, 1, False, (Breach.PCT,)),
        ("A", 1000, 1005, 50, False, (Breach.VALUE,)),  # 0.5 % but 250 元 > 200 元
        ("B", 100, 97, 10, True, ()),
        ("B", 100, 96, 10, False, (Breach.PCT,)),
        ("C", 100, 95, 10, True, ()),
        ("C", 100, 94, 500, False, (Breach.PCT, Breach.VALUE)),
        ("C", 0, 1, D("0.01"), False, (Breach.PCT,)),  # book 0: pct undefined exceeds any pct limit
        ("A", 7, 7, 1000, True, ()),
    ],
)
def test_class_defaults(abc: str, book: int, counted: int, cost: D, within: bool, breaches: tuple) -> None:
    a = assess(compute_variance(D(book), D(counted), D(cost)), abc, "SKU", SETTINGS)
    assert a.within_tolerance is within
    assert a.breaches == breaches
    assert (a.severity is Severity.AUTO) is within


def test_gain_and_loss_limits_apart() -> None:
    tol = Tolerance(gain=Limits(pct=D(5)), loss=Limits(pct=D(1), qty=D(2)))
    assert tol.admits(compute_variance(D(100), D(105), D(1)))
    assert not tol.admits(compute_variance(D(100), D(98), D(1)))  # -2 % loss
    assert not tol.admits(compute_variance(D(1000), D(997), D(1)))  # -0.3 % but 3 units
    assert tol.admits(compute_variance(D(1000), D(998), D(1)))


def test_no_limits_means_unlimited() -> None:
    assert Tolerance().admits(compute_variance(D(0), D(1_000_000), D(1000)))


def test_item_override_wins_over_class() -> None:
    s = ToleranceSettings(item_overrides={"BOLT-M6": Tolerance.symmetric(pct=D(10))})
    v = compute_variance(D(100), D(108), D(1))
    assert assess(v, "A", "BOLT-M6", s).within_tolerance
    assert assess(v, "A", "BOLT-M6", s).item_override
    assert not assess(v, "A", "OTHER", s).within_tolerance


def test_hit_miss_is_separate_from_approval() -> None:
    # 0.5 % of an expensive item: a hit for accuracy, but the 200 元 cap sends it for approval.
    a = assess(compute_variance(D(1000), D(1005), D(100)), "A", None, SETTINGS)
    assert a.hit and not a.within_tolerance and a.severity is Severity.MINOR
    # A generous approval tolerance does not make a 4 % miss a hit.
    s = ToleranceSettings(by_class={"A": Tolerance.symmetric(pct=D(10))})
    a = assess(compute_variance(D(100), D(104), D(1)), "A", None, s)
    assert a.within_tolerance and not a.hit


def test_exact_match_always_hit() -> None:
    s = ToleranceSettings(hit_miss={"A": Tolerance.symmetric(qty=D(0), pct=D(0))})
    assert assess(compute_variance(D(0), D(0), D(1)), "A", None, s).hit


def test_partial_config_keeps_other_class_defaults() -> None:
    s = ToleranceSettings.model_validate({"by_class": {"A": {"gain": {"pct": "0"}, "loss": {"pct": "0"}}}})
    assert s.by_class["A"].gain.pct == 0 and s.by_class["A"].gain.value is None
    assert s.by_class["B"] == ToleranceSettings().by_class["B"]


def test_bad_config() -> None:
    with pytest.raises(ValidationError, match="unknown ABC class"):
        ToleranceSettings.model_validate({"by_class": {"D": {}}})
    with pytest.raises(ValidationError):
        Limits(pct=D(-1))
    with pytest.raises(ValueError, match="unknown ABC class"):
        assess(compute_variance(D(1), D(2), D(1)), "X", None, SETTINGS)


def test_unclassified_item_uses_c() -> None:
    v = compute_variance(D(100), D(104), D(1))
    assert assess(v, None, None, SETTINGS).within_tolerance
    assert not assess(v, None, None, ToleranceSettings(unclassified_as="A")).within_tolerance


# ---- severity


@pytest.mark.parametrize(
    ("book", "counted", "cost", "severity"),
    [
        (100, 100, 1, Severity.AUTO),
        (100, 95, 100, Severity.MINOR),  # 5 %, 500 元
        (100, 90, 10, Severity.MINOR),  # 10 %, 100 元: the tier follows value
        (24, 32, 1, Severity.MINOR),  # +33 %, 8 元: a supervisor's, not finance's and a manager's
        (1000, 990, 100, Severity.MAJOR),  # 1 %, 1,000 元 is not < 1,000
        (1000, 990, 999, Severity.MAJOR),  # 9,990 元
        (1000, 990, 1000, Severity.CRITICAL),  # 10,000 元
        (0, 1, 1, Severity.MINOR),  # book 0: by value too (it is out of tolerance: a person decides)
        (0, 20, 1000, Severity.CRITICAL),
    ],
)
def test_severity_tiers(book: int, counted: int, cost: int, severity: Severity) -> None:
    assert assess(compute_variance(D(book), D(counted), D(cost)), "A", None, SETTINGS).severity is severity


def test_custom_tiers() -> None:
    tiers = SeverityTiers(minor=Tier(max_value=D(50)), major=Tier(max_value=D(500), max_pct=D(20)))
    s = ToleranceSettings(tiers=tiers)
    sev = [
        assess(compute_variance(D(100), D(c), D(10)), "A", None, s).severity for c in (100, 104, 130, 60, 30)
    ]
    assert sev == [Severity.AUTO, Severity.MINOR, Severity.CRITICAL, Severity.CRITICAL, Severity.CRITICAL]
    assert assess(compute_variance(D(100), D(110), D(10)), "A", None, s).severity is Severity.MAJOR


def test_the_tier_says_why() -> None:
    tiers = SETTINGS.tiers
    small = compute_variance(D("24.3"), D("32.4"), D(1))  # +8.10 元, +33.3 %
    assert tiers.explain(small, Severity.MINOR) == (
        "金额 8.10 元低于 1,000.00 元，属一般差异",
        "value 8.10 stays below 1,000.00: minor",
    )
    big = compute_variance(D(1000), D(990), D(500))  # -5,000 元
    zh, en = tiers.explain(big, tiers.severity(big))
    assert zh == "金额 5,000.00 元达到一般差异上限 1,000.00 元、低于 10,000.00 元，属重大差异"
    assert en.endswith(": major") and "reaches the minor bound 1,000.00" in en
    huge = compute_variance(D(1000), D(980), D(1000))
    assert (
        tiers.explain(huge, tiers.severity(huge))[0]
        == "金额 20,000.00 元达到重大差异上限 10,000.00 元，属严重差异"
    )
    # a company that also bounds the percentage: the card names the percentage
    by_pct = SeverityTiers(minor=Tier(max_value=D(1000), max_pct=D(10)))
    assert by_pct.severity(small) is Severity.MAJOR
    assert "差异率 33.3% 达到一般差异上限 10%" in by_pct.explain(small, Severity.MAJOR)[0]
    found = compute_variance(D(0), D(3), D(1))
    assert "账面为 0，差异率无法计算" in by_pct.explain(found, by_pct.severity(found))[0]


# ---- properties

qty = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False, allow_infinity=False)
cost = st.decimals(min_value=0, max_value=5_000, places=2, allow_nan=False, allow_infinity=False)
limit = st.none() | st.decimals(
    min_value=0, max_value=10_000, places=1, allow_nan=False, allow_infinity=False
)
classes = st.sampled_from(["A", "B", "C"])


@given(book=qty, delta=qty, unit=cost, pct=limit, q=limit, value=limit)
def test_symmetric_tolerance_treats_gain_and_loss_alike(
    book: D, delta: D, unit: D, pct: D | None, q: D | None, value: D | None
) -> None:
    tol = Tolerance.symmetric(pct=pct, qty=q, value=value)
    gain = compute_variance(book, book + delta, unit)
    if book >= delta:
        loss = compute_variance(book, book - delta, unit)
        assert tol.admits(gain) == tol.admits(loss)
        assert tol.breaches(gain) == tol.breaches(loss)


@given(book=qty, d1=qty, d2=qty, unit=cost, abc=classes, gain=st.booleans())
def test_bigger_variance_never_milder(book: D, d1: D, d2: D, unit: D, abc: str, gain: bool) -> None:
    small, big = sorted((d1, d2))
    if not gain and big > book:
        return  # cannot lose more than the book
    sign = 1 if gain else -1
    a_small = assess(compute_variance(book, book + sign * small, unit), abc, None, SETTINGS)
    a_big = assess(compute_variance(book, book + sign * big, unit), abc, None, SETTINGS)
    assert SEVERITY_RANK[a_small.severity] <= SEVERITY_RANK[a_big.severity]
    assert a_small.within_tolerance or not a_big.within_tolerance
    assert a_small.hit or not a_big.hit


@given(book=qty, counted=qty, unit=cost, abc=classes)
def test_auto_exactly_when_within(book: D, counted: D, unit: D, abc: str) -> None:
    a = assess(compute_variance(book, counted, unit), abc, None, SETTINGS)
    assert (a.severity is Severity.AUTO) == a.within_tolerance == (not a.breaches)
    if counted == book:
        assert a.hit and a.within_tolerance
