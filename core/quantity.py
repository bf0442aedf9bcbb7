"""What a counter types -> a Decimal quantity in the item's base unit (pure).

Counters type on phones, in whatever shape comes to hand: "24", "２４", "1,200", "3箱5个", "3箱 5",
"3箱+5", "3*24+5", "3箱×24+5", "2箱3盒4个", "三箱五个", "共77个。". The text is NFKC-normalised (full-width
digits and punctuation become ASCII), tokenised, and read with a small grammar:

    quantity := term ((operator | <nothing, after a unit>) term)*      operator: + 加 又 和, 零 after a unit
    term     := number (× number)* [unit] [× number (× number)* [unit]]  ×: * × x X 乘

A term without a unit is in the base unit. Two terms may stand side by side only when the first has a unit
("3箱5" is 3箱 + 5个, "3 5" is ambiguous). "3箱×24" states the pack factor; it must agree with the item's.
Decimals are allowed when each term, in base units, fits the item's decimal places ("2.5箱" of 24 is 60个).

Chinese numerals (零〇一二两三四五六七八九十百千万) are read by a hand-written converter: cn2an 0.5.24, the
maintained library, installs stray top-level packages (`build`, `example`, `src`) into site-packages, returns
float for decimals and needs another dependency, while counts need only whole numbers below 10^8. Runs of
bare digits such as 三五 are rejected, since in Chinese they mean "three or five".

Everything that is not understood raises QuantityError with a Chinese and an English message that says what
was read and what is expected.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from enum import StrEnum
from types import MappingProxyType

MAX_DIGITS = 12  # a typed number with more digits is absurd
MAX_LENGTH = 100  # characters, after normalisation

_PREFIXES = ("合计", "总计", "一共", "总共", "共")
_SUFFIXES = ("。", ".", "!", "！")
_KEEP_TAGS = ("<super>", "<sub>", "<fraction>")
_PLUS = frozenset("+加又和")
_TIMES = frozenset("*×xX乘✕✖∗")
_MINUS = frozenset("-−负")
_SEPARATORS = frozenset(" \t\n,、;")
_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_WAN = "万"
_CN_CHARS = frozenset(_CN_DIGITS) | frozenset(_CN_UNITS) | {_CN_WAN}
_NUMBER = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?(?![0-9])|[0-9]*\.[0-9]+|[0-9]+")
_FORBIDDEN_IN_UNIT = (
    frozenset("0123456789.,+*-:") | _SEPARATORS
)  # units are matched before numerals and operators


class Problem(StrEnum):
    EMPTY = "empty"
    UNREADABLE = "unreadable"
    UNKNOWN_UNIT = "unknown_unit"
    NEGATIVE = "negative"
    SUBTRACTION = "subtraction"
    TOO_LARGE = "too_large"
    TOO_MANY_DECIMALS = "too_many_decimals"
    AMBIGUOUS = "ambiguous"
    FACTOR_MISMATCH = "factor_mismatch"


@dataclass(frozen=True)
class UnitSpec:
    """One item's units. Pack factors are in base units; ints are accepted and stored as Decimal."""

    base_unit: str  # e.g. "个"
    packs: Mapping[str, Decimal] = field(default_factory=dict)  # e.g. {"箱": Decimal(24), "盒": Decimal(6)}
    decimals: int = 0  # decimal places allowed in the base unit (0 = counted items; 3 for weighed kg)
    max_qty: Decimal = Decimal("1e7")  # anything above is absurd

    def __post_init__(self) -> None:
        base = unicodedata.normalize("NFKC", self.base_unit).strip()
        packs: dict[str, Decimal] = {}
        for name, factor in self.packs.items():
            if isinstance(factor, bool) or not isinstance(factor, Decimal | int):
                raise TypeError(
                    f"pack factor for {name!r} must be Decimal or int, not {type(factor).__name__}"
                )
            packs[unicodedata.normalize("NFKC", name).strip()] = Decimal(factor)
        for name in (base, *packs):
            if not name or any(c in _FORBIDDEN_IN_UNIT or c.isspace() for c in name):
                raise ValueError(f"unit name {name!r} is empty or contains a digit, sign or space")
        if base in packs or len({n.casefold() for n in (base, *packs)}) != len(packs) + 1:
            raise ValueError("unit names must be distinct")
        if any(not f.is_finite() or f <= 0 for f in packs.values()):
            raise ValueError("pack factors must be positive")
        if not 0 <= self.decimals <= MAX_DIGITS:
            raise ValueError(f"decimals must be between 0 and {MAX_DIGITS}")
        object.__setattr__(self, "base_unit", base)
        object.__setattr__(self, "packs", MappingProxyType(packs))
        object.__setattr__(self, "max_qty", Decimal(self.max_qty))

    def factor(self, unit: str) -> Decimal:
        return Decimal(1) if unit == self.base_unit else self.packs[unit]

    @property
    def units(self) -> tuple[str, ...]:
        return (self.base_unit, *self.packs)


@dataclass(frozen=True)
class ParsedQuantity:
    qty: Decimal  # in base units, with the item's decimal places
    understood: str  # how it was read, in Chinese, e.g. "3箱×24 + 5个 = 77个"
    parts: tuple[
        tuple[Decimal, str], ...
    ]  # (amount, unit) per term; a term typed without a unit is in base units


class QuantityError(ValueError):
    def __init__(self, problem: Problem, message_zh: str, message_en: str) -> None:
        super().__init__(message_zh, message_en)
        self.problem = problem
        self.message_zh = message_zh
        self.message_en = message_en

    def __str__(self) -> str:
        return f"{self.message_zh} / {self.message_en}"


# --- tokens ---------------------------------------------------------------------------------------------------


class _Kind(StrEnum):
    NUM = "num"
    UNIT = "unit"
    PLUS = "plus"
    TIMES = "times"
    MINUS = "minus"
    SEP = "sep"
    WORD = "word"  # letters that are not one of the item's units
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    pos: int
    value: Decimal = Decimal(0)  # NUM: the number
    unit: str = ""  # UNIT: the canonical unit name


@dataclass(frozen=True, slots=True)
class _Term:
    numbers: tuple[Decimal, ...]  # multiplied together
    unit: str  # as the amount is counted; the base unit when none was typed
    typed_unit: bool
    factor: Decimal  # base units per `unit`

    @property
    def amount(self) -> Decimal:
        out = Decimal(1)
        for n in self.numbers:
            out *= n
        return out

    @property
    def base(self) -> Decimal:
        return self.amount * self.factor


def parse_quantity(text: str, units: UnitSpec) -> ParsedQuantity:
    """Read what a counter typed as a quantity in `units.base_unit`; raise QuantityError if it can't be read."""
    r = _Reader(text, units)
    return r.read()


def cn_to_int(s: str) -> int | None:
    """Chinese numerals below 10^8 ("十二", "两千三", "一百零五", "三万五") -> int; None if not a number.

    Runs of bare digits ("三五", "一二") are None: in Chinese they mean "three or five", not 35.
    """
    if not s or any(c not in _CN_CHARS for c in s):
        return None
    if len(s) == 1 and s in _CN_DIGITS:
        return _CN_DIGITS[s]
    total = 0  # the part above 万
    section = 0  # the part below 万 read so far
    digit: int | None = None
    last_unit = 10**9  # units within a section must strictly decrease
    prev = ""
    seen_wan = False
    for c in s:
        if c in _CN_DIGITS:
            if digit is not None:
                return None  # two digits in a row
            if c in "零〇":
                if prev in ("", "零", "〇"):
                    return None
            else:
                digit = _CN_DIGITS[c]
        elif c in _CN_UNITS:
            u = _CN_UNITS[c]
            if u >= last_unit:
                return None
            if digit is None:
                if c != "十":
                    return None
                digit = 1  # "十二", "一百十"
            section += digit * u
            digit, last_unit = None, u
        else:  # 万
            if seen_wan:
                return None
            section += digit or 0
            if section == 0:
                return None
            total, section, digit, last_unit, seen_wan = section * 10000, 0, None, 10000, True
        prev = c
    if digit is not None:
        # "一百五" = 150, "三万五" = 35000: a digit right after a unit counts in the next lower unit
        if prev in _CN_DIGITS and len(s) >= 2 and (s[-2] in _CN_UNITS or s[-2] == _CN_WAN):
            section += digit * (last_unit // 10)
        else:
            section += digit
    return total + section


# --- the reader ------------------------------------------------------------------------------------------------


def _places(d: Decimal) -> int:
    """Decimal places that matter: 12.50 -> 1, 72 -> 0."""
    exponent = d.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _fmt(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


class _Reader:
    def __init__(self, raw: str, units: UnitSpec) -> None:
        self.raw = raw
        self.units = units
        self.text = _clean(raw)
        self._unit_keys = sorted(((u.casefold(), u) for u in units.units), key=lambda k: -len(k[0]))

    # messages

    def _shown(self) -> str:
        s = self.raw.strip()
        return s if len(s) <= 30 else s[:29] + "…"

    def _example(self) -> tuple[str, str]:
        u = self.units
        plain = "24" if u.decimals == 0 else "12.5"
        if not u.packs:
            return plain, plain
        pack = next(iter(u.packs))
        return f"{plain} 或 3{pack}5{u.base_unit}", f"{plain} or 3{pack}5{u.base_unit}"

    def _unit_list(self) -> tuple[str, str]:
        u = self.units
        zh = "、".join(u.units)
        names = list(u.units)
        en = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        if u.packs:
            zh += "（" + "，".join(f"1{p}={_fmt(f)}{u.base_unit}" for p, f in u.packs.items()) + "）"
            en += " (" + ", ".join(f"1 {p} = {_fmt(f)} {u.base_unit}" for p, f in u.packs.items()) + ")"
        return zh, en

    def fail(self, problem: Problem, zh: str, en: str) -> QuantityError:
        ex_zh, ex_en = self._example()
        if problem is Problem.EMPTY:
            return QuantityError(problem, f"请输入数量，如 {ex_zh}", f"Please type a quantity, e.g. {ex_en}")
        shown = self._shown()
        return QuantityError(
            problem,
            f"无法识别“{shown}”：{zh}。请输入如 {ex_zh}",
            f'Cannot read "{shown}": {en}. Type e.g. {ex_en}',
        )

    def _unread(self, tok: _Token | None) -> QuantityError:
        if tok is None:
            before = self.text.strip()
            return self.fail(
                Problem.UNREADABLE, f"“{before}”后面缺少数字", f'a number is missing after "{before}"'
            )
        before = self.text[: tok.pos].strip()
        if not before:
            return self.fail(
                Problem.UNREADABLE, f"不能以“{tok.text}”开头", f'a quantity cannot start with "{tok.text}"'
            )
        return self.fail(
            Problem.UNREADABLE,
            f"读到“{before}”，后面的“{tok.text}”看不懂",
            f'read "{before}", then did not understand "{tok.text}"',
        )

    # tokens

    def _unit_at(self, i: int) -> tuple[str, int] | None:
        for key, unit in self._unit_keys:
            if self.text[i : i + len(key)].casefold() == key:
                return unit, len(key)
        return None

    def _is_plain_letter(self, c: str) -> bool:
        return (
            unicodedata.category(c).startswith("L")
            and c not in _CN_CHARS
            and c not in _PLUS
            and c not in _TIMES
            and c not in _MINUS
        )

    def _word_end(self, i: int) -> int:
        t = self.text
        while i < len(t) and (self._is_plain_letter(t[i]) or self._unit_at(i)):
            m = self._unit_at(i)
            i += m[1] if m else 1
        return i

    def tokenize(self) -> list[_Token]:
        t, i = self.text, 0
        out: list[_Token] = []
        while i < len(t):
            c = t[i]
            unit = self._unit_at(i)
            if unit:
                end = i + unit[1]
                if end < len(t) and self._is_plain_letter(t[end]) and not self._unit_at(end):
                    end = self._word_end(end)  # "箱子": not a unit
                    out.append(_Token(_Kind.WORD, t[i:end], i))
                else:
                    out.append(_Token(_Kind.UNIT, t[i:end], i, unit=unit[0]))
                i = end
            elif (m := _NUMBER.match(t, i)) is not None:
                digits = sum(ch.isdigit() for ch in m.group())
                if digits > MAX_DIGITS:
                    raise self.fail(
                        Problem.TOO_LARGE,
                        f"数字“{m.group()}”超过 {MAX_DIGITS} 位，请检查是否多输了位数",
                        f'the number "{m.group()}" has more than {MAX_DIGITS} digits; check for extra digits',
                    )
                out.append(_Token(_Kind.NUM, m.group(), i, value=Decimal(m.group().replace(",", ""))))
                i = m.end()
            elif c in "零〇" and out and out[-1].kind is _Kind.UNIT and t[i + 1 : i + 2] not in ("", " "):
                out.append(_Token(_Kind.PLUS, c, i))  # "三箱零五个": 零 joins a pack and the loose pieces
                i += 1
            elif c in _CN_CHARS:
                end = i + 1
                while end < len(t) and t[end] in _CN_CHARS and not self._unit_at(end):
                    end += 1
                n = cn_to_int(t[i:end])
                if n is None:
                    raise self.fail(
                        Problem.UNREADABLE,
                        f"“{t[i:end]}”不是一个明确的数",
                        f'"{t[i:end]}" is not one definite number',
                    )
                out.append(_Token(_Kind.NUM, t[i:end], i, value=Decimal(n)))
                i = end
            elif c in _PLUS:
                out.append(_Token(_Kind.PLUS, c, i))
                i += 1
            elif c in _TIMES:
                out.append(_Token(_Kind.TIMES, c, i))
                i += 1
            elif c in _MINUS:
                out.append(_Token(_Kind.MINUS, c, i))
                i += 1
            elif c in _SEPARATORS or c.isspace():
                out.append(_Token(_Kind.SEP, c, i))
                i += 1
            elif self._is_plain_letter(c):
                end = self._word_end(i)
                out.append(_Token(_Kind.WORD, t[i:end], i))
                i = end
            else:
                out.append(_Token(_Kind.OTHER, c, i))
                i += 1
        return out

    # grammar

    def read(self) -> ParsedQuantity:
        if not self.text:
            raise self.fail(Problem.EMPTY, "", "")
        if len(self.text) > MAX_LENGTH:
            raise self.fail(Problem.UNREADABLE, "内容太长", "the text is too long")
        tokens = self.tokenize()
        toks = [k for k in tokens if k.kind is not _Kind.SEP]
        has_number = any(k.kind is _Kind.NUM for k in toks)
        for k in toks:
            if k.kind is _Kind.MINUS:
                if k is toks[0]:
                    raise self.fail(
                        Problem.NEGATIVE,
                        "数量不能是负数（0 表示没有）",
                        "a count cannot be negative (0 means none)",
                    )
                raise self.fail(
                    Problem.SUBTRACTION, "只能用 + 和 ×，不能减", "only + and × can be used, not -"
                )
        for k in toks:
            if k.kind is _Kind.WORD:
                if not has_number:
                    raise self.fail(Problem.UNREADABLE, "没有读到数字", "no number was found")
                zh, en = self._unit_list()
                raise self.fail(
                    Problem.UNKNOWN_UNIT, f"这个物料的单位是 {zh}", f"this item is counted in {en}"
                )
        if not has_number:
            raise self.fail(Problem.UNREADABLE, "没有读到数字", "no number was found")
        terms = self._terms(toks)
        return self._result(terms)

    def _numbers(self, toks: list[_Token], i: int) -> tuple[list[Decimal], int]:
        """number (× number)*, starting at toks[i]."""
        if i >= len(toks) or toks[i].kind is not _Kind.NUM:
            raise self._unread(toks[i] if i < len(toks) else None)
        nums = [toks[i].value]
        i += 1
        while i < len(toks) and toks[i].kind is _Kind.TIMES:
            if i + 1 >= len(toks) or toks[i + 1].kind is not _Kind.NUM:
                raise self._unread(toks[i + 1] if i + 1 < len(toks) else None)
            nums.append(toks[i + 1].value)
            i += 2
        return nums, i

    def _terms(self, toks: list[_Token]) -> list[_Term]:
        u = self.units
        terms: list[_Term] = []
        i = 0
        while True:
            nums, i = self._numbers(toks, i)
            unit, typed = u.base_unit, False
            if i < len(toks) and toks[i].kind is _Kind.UNIT:
                unit, typed = toks[i].unit, True
                i += 1
                if i < len(toks) and toks[i].kind is _Kind.TIMES:  # "3箱×24": the pack factor, stated
                    claimed_nums, i = self._numbers(toks, i + 1)
                    claimed_unit = u.base_unit
                    if i < len(toks) and toks[i].kind is _Kind.UNIT:
                        claimed_unit = toks[i].unit
                        i += 1
                    claimed = Decimal(1)
                    for n in claimed_nums:
                        claimed *= n
                    self._check_factor(unit, claimed, claimed_unit)
            terms.append(_Term(tuple(nums), unit, typed, u.factor(unit)))
            if i >= len(toks):
                return terms
            nxt = toks[i]
            if nxt.kind is _Kind.PLUS:
                i += 1
                if i >= len(toks):
                    raise self._unread(None)
            elif nxt.kind is _Kind.NUM:
                if not typed:
                    a, b = _fmt(terms[-1].amount), nxt.text
                    if u.packs:
                        pack = next(iter(u.packs))
                        meant = f"{a}{pack}{b}{u.base_unit}"
                    else:
                        meant = f"{a}{b}"
                    zh = f"不知道是 {meant} 还是 {a}+{b}"
                    en = f"it could be {meant} or {a}+{b}"
                    raise self.fail(
                        Problem.AMBIGUOUS,
                        f"“{a}”和“{b}”之间缺少单位或加号，{zh}",
                        f"there is no unit or + between {a} and {b}, so {en}",
                    )
            else:
                raise self._unread(nxt)

    def _check_factor(self, unit: str, claimed: Decimal, claimed_unit: str) -> None:
        u = self.units
        if claimed * u.factor(claimed_unit) == u.factor(unit):
            return
        raise self.fail(
            Problem.FACTOR_MISMATCH,
            f"写的是 1{unit}={_fmt(claimed)}{claimed_unit}，但这个物料 1{unit}={_fmt(u.factor(unit))}{u.base_unit}",
            f"you wrote 1 {unit} = {_fmt(claimed)} {claimed_unit}, "
            f"but for this item 1 {unit} = {_fmt(u.factor(unit))} {u.base_unit}",
        )

    def _result(self, terms: list[_Term]) -> ParsedQuantity:
        u = self.units
        with localcontext() as ctx:
            ctx.prec = 60  # exact for anything near max_qty; a product of many 12-digit numbers may round, far above it
            total = sum((t.base for t in terms), Decimal(0))
            rendered = " + ".join(_render(t, u.base_unit) for t in terms)
            shown_total = f"{_fmt(total)}{u.base_unit}"
            if len(terms) == 1 and len(terms[0].numbers) == 1 and terms[0].unit == u.base_unit:
                understood = shown_total
            else:
                understood = f"{rendered} = {shown_total}"
            if total > u.max_qty:
                raise self.fail(
                    Problem.TOO_LARGE,
                    f"读到 {understood}，超过上限 {_fmt(u.max_qty)}{u.base_unit}，请检查是否多输了位数",
                    f"read as {understood}, above the limit of "
                    f"{_fmt(u.max_qty)} {u.base_unit}; check for extra digits",
                )
            for t in terms:
                if _places(t.base) > u.decimals:
                    shown = _render(t, u.base_unit)
                    if t.typed_unit and t.unit != u.base_unit:
                        shown += f" = {_fmt(t.base)}{u.base_unit}"
                    if u.decimals == 0:
                        zh = f"读到 {shown}，但这个物料按整数计数（{u.base_unit}）"
                        en = f"read as {shown}, but this item is counted in whole {u.base_unit}"
                    else:
                        zh = f"读到 {shown}，但{u.base_unit}最多 {u.decimals} 位小数"
                        en = f"read as {shown}, but {u.base_unit} allows at most {u.decimals} decimal places"
                    raise self.fail(Problem.TOO_MANY_DECIMALS, zh, en)
            qty = total.quantize(Decimal(1).scaleb(-u.decimals))
        return ParsedQuantity(qty, understood, tuple((t.amount, t.unit) for t in terms))


def _render(t: _Term, base_unit: str) -> str:
    amount = "×".join(_fmt(n) for n in t.numbers)
    if t.unit == base_unit:
        return amount if len(t.numbers) > 1 else f"{amount}{base_unit}"
    return f"{amount}{t.unit}×{_fmt(t.factor)}"


def _clean(raw: str) -> str:
    """NFKC, trimmed, without a leading 共/合计 (and a colon after it) or a trailing 。

    Superscripts, subscripts and vulgar fractions are kept as they are (and so not understood): NFKC would
    turn "3²" into "32" and "½" into "1⁄2".
    """
    s = "".join(
        c if unicodedata.decomposition(c).startswith(_KEEP_TAGS) else unicodedata.normalize("NFKC", c)
        for c in raw
    )
    s = unicodedata.normalize("NFC", s).strip()
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if s.startswith(p):
                s, changed = s[len(p) :].lstrip(" :").strip(), True
        for x in _SUFFIXES:
            if s.endswith(x):
                s, changed = s[: -len(x)].strip(), True
    return s
