from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.quantity import Problem, QuantityError, UnitSpec, cn_to_int, parse_quantity

PIECES = UnitSpec("个", {"箱": D(24), "盒": D(6)})
CASES_ONLY = UnitSpec("个", {"箱": D(24)})
KG = UnitSpec("千克", {"袋": D(25)}, decimals=3)
BARE = UnitSpec("个")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    ("text", "qty"),
    [
        ("24", 24),
        (" 24 ", 24),
        ("２４", 24),
        ("0", 0),
        ("1,200", 1200),
        ("1，200", 1200),
        ("1,200,000", 1_200_000),
        ("24个", 24),
        ("24 个", 24),
        ("3箱", 72),
        ("3 箱", 72),
        ("0箱", 0),
        ("3箱5个", 77),
        ("3箱 5个", 77),
        ("3箱，5个", 77),
        ("3箱5", 77),
        ("3箱+5", 77),
        ("3箱 + 5个", 77),
        ("3箱又5个", 77),
        ("3箱加5个", 77),
        ("3*24+5", 77),
        ("3×24+5", 77),
        ("3x24+5", 77),
        ("3X24+5", 77),
        ("3＊24＋5", 77),
        ("3×24个", 72),
        ("3箱×24+5", 77),
        ("3箱x24个+5个", 77),
        ("1箱×4盒", 24),
        ("2箱3盒4个", 70),
        ("10+5+3", 18),
        ("三箱五个", 77),
        ("三箱又五个", 77),
        ("十二", 12),
        ("两箱", 48),
        ("三箱零五个", 77),
        ("3箱零5个", 77),
        ("一百零五", 105),
        ("３箱５个", 77),
        ("共77个", 77),
        ("共 77", 77),
        ("合计：3箱5个", 77),
        ("一共3箱", 72),
        ("77。", 77),
        ("77个。", 77),
        ("2.5箱", 60),  # whole in base units
        ("24.0", 24),
    ],
)
def test_accepted(text: str, qty: int) -> None:
    assert parse_quantity(text, PIECES).qty == D(qty)


@pytest.mark.parametrize(
    ("text", "qty"),
    [
        ("12.5", D("12.5")),
        ("２４．５", D("24.5")),
        ("0.125", D("0.125")),
        (".5", D("0.5")),
        ("12.50", D("12.5")),
        ("1袋2.5千克", D("27.5")),
        ("2袋", D(50)),
        ("3千克", D(3)),
        ("三千克", D(3)),  # the unit wins over the numeral 千
        ("三千", D(3000)),
        ("3 kg".replace("kg", "千克"), D(3)),
    ],
)
def test_weighed(text: str, qty: D) -> None:
    res = parse_quantity(text, KG)
    assert res.qty == qty
    assert res.qty.as_tuple().exponent == -3  # the item's decimal places


@pytest.mark.parametrize(
    ("text", "understood", "parts"),
    [
        ("24", "24个", ((24, "个"),)),
        ("3箱", "3箱×24 = 72个", ((3, "箱"),)),
        ("3箱5个", "3箱×24 + 5个 = 77个", ((3, "箱"), (5, "个"))),
        ("3箱+5", "3箱×24 + 5个 = 77个", ((3, "箱"), (5, "个"))),
        ("3箱×24+5", "3箱×24 + 5个 = 77个", ((3, "箱"), (5, "个"))),
        ("3*24+5", "3×24 + 5个 = 77个", ((72, "个"), (5, "个"))),
        ("2箱3盒4个", "2箱×24 + 3盒×6 + 4个 = 70个", ((2, "箱"), (3, "盒"), (4, "个"))),
        ("10+5+3", "10个 + 5个 + 3个 = 18个", ((10, "个"), (5, "个"), (3, "个"))),
        ("三箱五个", "3箱×24 + 5个 = 77个", ((3, "箱"), (5, "个"))),
    ],
)
def test_understood_and_parts(text: str, understood: str, parts: tuple[tuple[int, str], ...]) -> None:
    res = parse_quantity(text, PIECES)
    assert res.understood == understood
    assert res.parts == tuple((D(a), u) for a, u in parts)


@pytest.mark.parametrize(
    ("text", "units", "problem", "zh_part", "en_part"),
    [
        ("3桶", CASES_ONLY, Problem.UNKNOWN_UNIT, "个、箱（1箱=24个）", "个 or 箱 (1 箱 = 24 个)"),
        ("3箱子", CASES_ONLY, Problem.UNKNOWN_UNIT, "单位是", "counted in"),
        ("3kg", PIECES, Problem.UNKNOWN_UNIT, "1盒=6个", "1 盒 = 6 个"),
        ("3箱", BARE, Problem.UNKNOWN_UNIT, "单位是 个", "counted in 个"),
        ("-3", PIECES, Problem.NEGATIVE, "负数", "negative"),
        ("－3", PIECES, Problem.NEGATIVE, "负数", "negative"),
        ("负3", PIECES, Problem.NEGATIVE, "负数", "negative"),
        ("3箱-2个", PIECES, Problem.SUBTRACTION, "不能减", "not -"),
        ("abc", PIECES, Problem.UNREADABLE, "没有读到数字", "no number"),
        ("", PIECES, Problem.EMPTY, "请输入数量", "type a quantity"),
        ("   ", PIECES, Problem.EMPTY, "请输入数量", "type a quantity"),
        ("。", PIECES, Problem.EMPTY, "请输入数量", "type a quantity"),
        ("??", PIECES, Problem.UNREADABLE, "没有读到数字", "no number"),
        ("3箱箱", PIECES, Problem.UNREADABLE, "读到“3箱”，后面的“箱”", 'read "3箱", then'),
        ("箱", PIECES, Problem.UNREADABLE, "没有读到数字", "no number"),
        ("箱5", PIECES, Problem.UNREADABLE, "不能以“箱”开头", "cannot start"),
        ("+5", PIECES, Problem.UNREADABLE, "不能以“+”开头", "cannot start"),
        ("3+", PIECES, Problem.UNREADABLE, "缺少数字", "missing"),
        ("3++5", PIECES, Problem.UNREADABLE, "看不懂", "did not understand"),
        ("3/4", PIECES, Problem.UNREADABLE, "“/”", '"/"'),
        ("3²", PIECES, Problem.UNREADABLE, "“²”", '"²"'),
        ("½", PIECES, Problem.UNREADABLE, "没有读到数字", "no number"),
        ("零五", PIECES, Problem.UNREADABLE, "不是一个明确的数", "not one definite number"),
        ("三五", PIECES, Problem.UNREADABLE, "不是一个明确的数", "not one definite number"),
        ("12000000", PIECES, Problem.TOO_LARGE, "超过上限 10000000个", "above the limit of 10000000 个"),
        ("500000箱", PIECES, Problem.TOO_LARGE, "500000箱×24 = 12000000个", "limit"),
        ("1234567890123", PIECES, Problem.TOO_LARGE, "超过 12 位", "more than 12 digits"),
        ("9" * 50, PIECES, Problem.TOO_LARGE, "超过 12 位", "more than 12 digits"),
        ("9" * 500, PIECES, Problem.UNREADABLE, "太长", "too long"),
        ("1+" * 60 + "1", PIECES, Problem.UNREADABLE, "太长", "too long"),
        ("12.5", PIECES, Problem.TOO_MANY_DECIMALS, "按整数计数", "whole 个"),
        ("0.5个+0.5个", PIECES, Problem.TOO_MANY_DECIMALS, "0.5个", "whole"),
        ("2.5盒", CASES_ONLY, Problem.UNKNOWN_UNIT, "单位是", "counted in"),
        ("1.2345", KG, Problem.TOO_MANY_DECIMALS, "最多 3 位小数", "at most 3 decimal places"),
        ("3 5", PIECES, Problem.AMBIGUOUS, "3箱5个 还是 3+5", "3箱5个 or 3+5"),
        ("3 5", BARE, Problem.AMBIGUOUS, "35 还是 3+5", "35 or 3+5"),
        ("1,2", PIECES, Problem.AMBIGUOUS, "“1”和“2”", "between 1 and 2"),
        ("3*24 5", PIECES, Problem.AMBIGUOUS, "72", "72"),
        ("3箱×30+5", PIECES, Problem.FACTOR_MISMATCH, "写的是 1箱=30个，但这个物料 1箱=24个", "1 箱 = 24 个"),
        ("1箱×3盒", PIECES, Problem.FACTOR_MISMATCH, "1箱=3盒", "1 箱 = 3 盒"),
    ],
)
def test_rejected(text: str, units: UnitSpec, problem: Problem, zh_part: str, en_part: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text, units)
    err = info.value
    assert err.problem is problem
    assert zh_part in err.message_zh
    assert en_part in err.message_en
    assert str(err) == f"{err.message_zh} / {err.message_en}"


def test_example_message_for_unknown_unit() -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity("3桶", CASES_ONLY)
    assert str(info.value) == (
        "无法识别“3桶”：这个物料的单位是 个、箱（1箱=24个）。请输入如 24 或 3箱5个 / "
        'Cannot read "3桶": this item is counted in 个 or 箱 (1 箱 = 24 个). Type e.g. 24 or 3箱5个'
    )


def test_quantity_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="负数"):
        parse_quantity("-1", PIECES)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("零", 0),
        ("〇", 0),
        ("五", 5),
        ("十", 10),
        ("十二", 12),
        ("二十", 20),
        ("二十五", 25),
        ("一百", 100),
        ("一百零五", 105),
        ("一百五", 150),
        ("一百一十", 110),
        ("两千三", 2300),
        ("一千零十", 1010),
        ("三万五", 35000),
        ("十万", 100000),
        ("一万零五", 10005),
        ("三五", None),
        ("一二", None),
        ("百", None),
        ("万", None),
        ("零五", None),
        ("十百", None),
        ("一万万", None),
        ("", None),
        ("abc", None),
    ],
)
def test_cn_to_int(text: str, value: int | None) -> None:
    assert cn_to_int(text) == value


def test_unit_spec_validation() -> None:
    assert UnitSpec("个", {"箱": 24}).packs["箱"] == D(24)  # type: ignore[dict-item]
    assert UnitSpec("ｋｇ").base_unit == "kg"
    with pytest.raises(ValueError):
        UnitSpec("个", {"箱": D(0)})
    with pytest.raises(ValueError):
        UnitSpec("个", {"个": D(2)})
    with pytest.raises(ValueError):
        UnitSpec("个", {"3箱": D(2)})
    with pytest.raises(ValueError):
        UnitSpec("个", decimals=-1)
    with pytest.raises(TypeError):
        UnitSpec("个", {"箱": 2.5})  # type: ignore[dict-item]


def test_units_are_matched_case_insensitively() -> None:
    units = UnitSpec("pcs", {"box": D(10)})
    assert parse_quantity("2BOX 3PCS", units).qty == D(23)
    assert parse_quantity("2 box x 10 + 3", units).qty == D(23)


# --- properties -------------------------------------------------------------------------------------------------

MAX = int(PIECES.max_qty)


@given(
    a=st.integers(min_value=0, max_value=10**5),
    b=st.integers(min_value=0, max_value=10**4),
    f=st.integers(min_value=1, max_value=99),
    full_width=st.booleans(),
)
def test_packs_and_pieces(a: int, b: int, f: int, full_width: bool) -> None:
    units = UnitSpec("个", {"箱": D(f)})
    text = f"{a}箱{b}个"
    if full_width:
        text = text.translate(FULL_WIDTH)
    res = parse_quantity(text, units)
    assert res.qty == D(a * f + b)
    assert res.parts == ((D(a), "箱"), (D(b), "个"))


@given(st.integers(min_value=0, max_value=MAX))
def test_plain_integers_round_trip(n: int) -> None:
    assert parse_quantity(str(n), PIECES).qty == D(n)
    assert parse_quantity(f"{n:,}", PIECES).qty == D(n)


@given(st.decimals(min_value=0, max_value=MAX, places=3, allow_nan=False, allow_infinity=False))
def test_weighed_decimals_round_trip(n: D) -> None:
    assert parse_quantity(str(n), KG).qty == n


@given(st.integers(min_value=MAX + 1, max_value=10**12 - 1))
def test_above_max_is_rejected(n: int) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(str(n), PIECES)
    assert info.value.problem is Problem.TOO_LARGE


_ALPHABET = st.sampled_from(
    list("0123456789０１２３４５６７８９.,，+-*×xX 箱盒个桶又加零一二两三十百千万负共合计。?a")
)


@given(st.one_of(st.text(), st.text(_ALPHABET, max_size=20)))
def test_only_quantity_errors_and_results_in_range(text: str) -> None:
    for units in (PIECES, KG):
        try:
            res = parse_quantity(text, units)
        except QuantityError as e:
            assert e.message_zh and e.message_en
            continue
        assert D(0) <= res.qty <= units.max_qty
        assert res.understood.endswith(units.base_unit)
