"""Photo -> barcodes, off the event loop.

Counters send phone photos of bin labels and item barcodes. This module finds every code in a photo
(zxing-cpp and pyzbar together, with a retry chain of preprocessed copies), says how sure it is of each
read, parses GS1 element strings and matches codes against the item master and location labels.

The chain (``_chain``), each step only while a code is still missing or uncertain: both decoders on the
photo; a blurred and a sharpened copy to cross-check linear reads; retries (2x upscale of small photos,
contrast, sharp, blur, +-30 degrees); QR / Data Matrix codes zxing-cpp locates but cannot read, warped
square (``_rectified``); upscaled, bar-smoothed, sharpened copies for blurred small codes (``DEBLUR``).
Big frames (12 MP) are searched on an 800 px copy and read on crops around what zxing-cpp locates there,
within ``BIG_FRAME_BUDGET_MS``. bench/barcode.py --ablation measures what each step adds.

The rule that shapes everything: **never take the wrong item.** A read is ``certain`` only when the image
supports it well (see ``_is_certain``); anything else, and anything that matches nothing, goes back to the
counter for confirmation. ``match_codes`` only ever matches certain codes.

Public API: ``decode_image_bytes`` (sync, CPU work), ``BarcodeReader`` (async, bounded pool),
``parse_gs1``, ``equivalents``, ``match_codes`` and the frozen dataclasses ``Code``, ``GS1Data``,
``DecodeResult``, ``Match``. No SQLAlchemy here: the caller passes plain lookup maps.
"""

from __future__ import annotations

import asyncio
import calendar
import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

import zxingcpp
from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError
from pyzbar import pyzbar

__all__ = [
    "MAX_BYTES",
    "MAX_PIXELS",
    "BarcodeReader",
    "Code",
    "DecodeResult",
    "GS1Data",
    "Match",
    "decode_image_bytes",
    "equivalents",
    "match_codes",
    "parse_gs1",
]

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})  # MPO: what some phones' JPEGs open as
WORK_LONG_SIDE = 1600  # first pass runs on a copy no longer than this (12 MP frames are ~4000 px)
SMALL_LONG_SIDE = 800  # images smaller than this get a 2x upscaled copy in the retry chain
FIND_LONG_SIDE = 800  # big frames: codes are located on a copy this size, then read on crops
CROP_LONG_SIDE = 600  # the chain on a crop starts from a copy no longer than this (native crop later)
MAX_REGIONS = 3  # at most this many crops of a big frame go through the retry chain
RECTIFIED_SIDE = 240  # a located matrix code is warped to a square this size (with a quiet zone)
DEBLUR_LONG_SIDE = 1000  # deblurred copies are upscaled (bicubic, at most 3x) to no longer than this
MIN_LINE_SUPPORT = 0.02  # a zxing-only linear read needs an outline this tall (x its length); see _is_certain
TIME_BUDGET_MS = 1500.0  # the retry chain stops starting new steps after this
BIG_FRAME_BUDGET_MS = 180.0  # ... and on big frames (crops of them) after this

Point = tuple[int, int]


# --------------------------------------------------------------------------------------------- messages

MSG_EMPTY = "收到的文件是空的，请重新发送照片。 / The file is empty; please send the photo again."
MSG_TOO_BIG = (
    "图片文件太大（超过 20 MB），请压缩或截图后重新发送。 / "
    "The file is larger than 20 MB; please send a smaller photo."
)
MSG_TOO_MANY_PIXELS = (
    "图片像素过多（超过 5000 万像素），请缩小后重新发送。 / "
    "The image has more than 50 megapixels; please send a smaller one."
)
MSG_NOT_IMAGE = (
    "无法识别这个文件，请发送 JPG、PNG 或 WebP 格式的照片。 / "
    "This file is not a photo we can read; please send a JPEG, PNG or WebP image."
)
MSG_TRUNCATED = (
    "图片文件不完整或已损坏（可能没有传完），请重新发送。 / "
    "The image is incomplete or damaged (perhaps cut off in transfer); please send it again."
)
MSG_NO_CODE = (
    "照片里没有找到条码。建议：\n"
    "① 靠近一些，让条码占画面宽度的一半左右，但不要近到对不上焦；\n"
    "② 对准后稍等一下，等画面清晰再拍，拍时手要稳；\n"
    "③ 避开反光和阴影：换个角度，或在暗处打开闪光灯；\n"
    "④ 让标签平整、条码摆正，整个条码（含两侧空白）都要在画面里；\n"
    "⑤ 仍然不行，可以直接输入条码下方的数字。\n"
    "No barcode found. Move closer so the code fills about half the width, hold steady until it is "
    "sharp, avoid glare and shadows, keep the whole label flat and in the frame, or type the digits."
)


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GS1Data:
    """A parsed GS1 element string. ``raw`` maps every AI found to its value."""

    gtin: str | None
    lot: str | None
    expiry: date | None
    serial: str | None
    count: int | None
    raw: dict[str, str] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True)
class Code:
    """One code found in a photo.

    ``text`` is the decoded content. EAN/UPC codes are given as 13-digit GTIN-13 (UPC-A and UPC-E
    expanded, with a leading 0) or 8 digits for EAN-8; GS1 element strings keep their GS (0x1D)
    separators. ``symbology`` is one of ``ean13 ean8 upca upce code128 code39 itf qrcode datamatrix``.
    ``position`` is the outline in the original image's pixels. ``certain`` is False when the image does
    not support the read well enough to use it without the counter's confirmation.
    """

    text: str
    symbology: str
    position: tuple[Point, ...]
    certain: bool
    sources: frozenset[str]
    gs1: GS1Data | None = None


@dataclass(frozen=True)
class DecodeResult:
    codes: tuple[Code, ...]
    error: str | None  # Chinese + English message for the counter when refused / unreadable / no code
    elapsed_ms: float


@dataclass(frozen=True)
class Match:
    code: Code
    kind: Literal["item", "location"]
    id: int
    unit: str | None
    lot: str | None


# --------------------------------------------------------------------------------------------- check digits


def _gs1_check_ok(digits: str) -> bool:
    """GS1 mod-10 check digit (EAN-8/13, UPC-A, GTIN-14, ITF-14, SSCC)."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits[:-1])):
        total += int(ch) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10 == int(digits[-1])


def _expand_upce(code8: str) -> str | None:
    """UPC-E (8 digits, number system 0/1) -> UPC-A (12 digits), or None."""
    if len(code8) != 8 or not code8.isdigit() or code8[0] not in "01":
        return None
    ns, d, check = code8[0], code8[1:7], code8[7]
    last = d[5]
    if last in "012":
        body = d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        body = d[0:3] + "00000" + d[3:5]
    elif last == "4":
        body = d[0:4] + "00000" + d[4]
    else:
        body = d[0:5] + "0000" + last
    upca = ns + body + check
    return upca if _gs1_check_ok(upca) else None


def _compress_upca(upca: str) -> str | None:
    """UPC-A (12 digits) -> UPC-E (8 digits) when it can be zero-suppressed, else None."""
    if len(upca) != 12 or upca[0] not in "01":
        return None
    ns, m, check = upca[0], upca[1:11], upca[11]
    candidates = []
    if m[2] in "012" and m[3:7] == "0000":
        candidates.append(m[0:2] + m[7:10] + m[2])
    if m[3:8] == "00000":
        candidates.append(m[0:3] + m[8:10] + "3")
    if m[4:9] == "00000":
        candidates.append(m[0:4] + m[9] + "4")
    if m[5:9] == "0000" and m[9] in "56789":
        candidates.append(m[0:5] + m[9])
    for c in candidates:
        e = ns + c + check
        if _expand_upce(e) == upca:
            return e
    return None


def equivalents(code: str) -> set[str]:
    """Every spelling of the same trade item: UPC-A <-> EAN-13 <-> GTIN-14 with indicator 0, UPC-E,
    GTIN-8 padded. A GTIN-14 with indicator digit 1-8 is a *different* item (a case) and is not
    included. A code whose check digit fails, or that is not numeric, is only equivalent to itself."""
    code = code.strip()
    out = {code}
    if not code.isdigit():
        return out
    gtin14: str | None = None
    if len(code) == 8:
        upca = _expand_upce(code)
        if upca is not None:
            out.update({upca, "0" + upca, "00" + upca})
        if _gs1_check_ok(code):
            gtin14 = code.zfill(14)
    elif len(code) in (12, 13, 14) and _gs1_check_ok(code):
        gtin14 = code.zfill(14)
    if gtin14 is None:
        return out
    stripped = gtin14.lstrip("0")
    if gtin14.startswith("000000") and len(stripped) <= 8:
        gtin8 = gtin14[6:]
        out.update({gtin8, gtin14, gtin14[1:]})  # an EAN-8 padded to 13 and 14 digits
        return out
    out.update({gtin14, gtin14[1:]} if gtin14[0] == "0" else {gtin14})
    if gtin14.startswith("00"):
        upca = gtin14[2:]
        out.add(upca)
        upce = _compress_upca(upca)
        if upce is not None:
            out.add(upce)
    return out


# --------------------------------------------------------------------------------------------- GS1

GS = "\x1d"
_FIXED_BY_PREFIX = {"00": 18, "01": 14, "02": 14, "03": 14, "04": 16, "20": 2, "41": 13}
_FIXED_BY_PREFIX.update({str(p): 6 for p in range(11, 20)})
_FIXED_BY_PREFIX.update({str(p): 6 for p in range(31, 37)})
_SYMBOLOGY_IDS = ("]C1", "]e0", "]d2", "]Q3", "]J1")


def _ai_length(s: str) -> int | None:
    """How many digits the AI at the start of ``s`` has (GS1 General Specifications, figure 3.2-1)."""
    p = s[:2]
    if not p.isdigit():
        return None
    n = int(p)
    if n <= 22 or n == 30 or n == 37 or 90 <= n <= 99:
        return 2
    if 23 <= n <= 29 or 40 <= n <= 42 or p == "71":
        return 3
    if 31 <= n <= 36 or n == 39 or n == 43 or 70 <= n <= 89:
        return 4
    return None


def _expiry(v: str) -> date | None:
    if len(v) != 6 or not v.isdigit():
        return None
    yy, mm, dd = int(v[:2]), int(v[2:4]), int(v[4:6])
    year = 2000 + yy  # GS1's sliding century would need "today"; labels in use are 20xx
    if not 1 <= mm <= 12:
        return None
    if dd == 0:  # GS1: day 00 means the last day of the month
        dd = calendar.monthrange(year, mm)[1]
    try:
        return date(year, mm, dd)
    except ValueError:
        return None


def parse_gs1(text: str) -> GS1Data | None:
    """Parse a GS1 element string: human-readable ``(01)...(10)...``, or raw with FNC1 as GS (0x1D),
    optionally with a leading FNC1 or symbology identifier (``]C1``, ``]d2``, ``]Q3``).

    Returns None when the text is not a well-formed GS1 element string, or when AI 01 fails its check
    digit (the label itself is then not trusted)."""
    s = text.strip()
    for sid in _SYMBOLOGY_IDS:
        if s.startswith(sid):
            s = s[len(sid) :]
            break
    s = s.lstrip(GS)
    raw: dict[str, str] = {}
    if s.startswith("("):
        for part in s.split("(")[1:]:
            ai, sep, value = part.partition(")")
            if not sep or not ai.isdigit() or _ai_length(ai) != len(ai):
                return None
            raw[ai] = value.rstrip(GS)
    else:
        i = 0
        while i < len(s):
            n = _ai_length(s[i:])
            if n is None or not s[i : i + n].isdigit():
                return None
            ai = s[i : i + n]
            i += n
            fixed = _FIXED_BY_PREFIX.get(ai[:2])
            if fixed is not None:
                value = s[i : i + fixed]
                if len(value) != fixed:
                    return None
                i += fixed
                if i < len(s) and s[i] == GS:  # a needless separator after a fixed field
                    i += 1
            else:
                end = s.find(GS, i)
                end = len(s) if end < 0 else end
                value = s[i:end]
                i = end + 1
            raw[ai] = value
    if not raw:
        return None
    gtin = raw.get("01") or raw.get("02")
    if gtin is not None and (len(gtin) != 14 or not _gs1_check_ok(gtin)):
        return None
    count_s = raw.get("30") or raw.get("37")
    return GS1Data(
        gtin=gtin,
        lot=raw.get("10"),
        expiry=_expiry(raw["17"]) if "17" in raw else None,
        serial=raw.get("21"),
        count=int(count_s) if count_s and count_s.isdigit() else None,
        raw=raw,
    )


# --------------------------------------------------------------------------------------------- matching


def match_codes(
    codes: Iterable[Code],
    item_barcodes: Mapping[str, tuple[int, str | None]],
    location_barcodes: Mapping[str, int],
) -> tuple[list[Match], list[Code]]:
    """Match decoded codes against the item master (barcode -> (item id, unit)) and location labels
    (barcode -> location id). Returns (matched, to_confirm).

    Only certain codes are matched. A code that matches nothing, or more than one thing, goes to
    ``to_confirm``. For the counting flow, pass only the barcodes of the items on the counter's list
    for that location: anything else is then questioned, not recorded.
    """
    matched: list[Match] = []
    to_confirm: list[Code] = []
    for code in codes:
        if not code.certain:
            to_confirm.append(code)
            continue
        keys = equivalents(code.text)
        if code.gs1 is not None and code.gs1.gtin is not None:
            keys |= equivalents(code.gs1.gtin)
        hits: set[tuple[Literal["item", "location"], int, str | None]] = set()
        for k in keys:
            if k in item_barcodes:
                item_id, unit = item_barcodes[k]
                hits.add(("item", item_id, unit))
            if k in location_barcodes:
                hits.add(("location", location_barcodes[k], None))
        if len(hits) != 1:
            to_confirm.append(code)
            continue
        kind, ident, unit = hits.pop()
        lot = code.gs1.lot if (code.gs1 is not None and kind == "item") else None
        matched.append(Match(code=code, kind=kind, id=ident, unit=unit, lot=lot))
    return matched, to_confirm


# --------------------------------------------------------------------------------------------- decoding

_ZX_FORMATS = zxingcpp.barcode_formats_from_str("EAN13,EAN8,UPCA,UPCE,Code128,Code39,ITF,QRCode,DataMatrix")
_ZX_MATRIX = zxingcpp.barcode_formats_from_str("QRCode,DataMatrix")
_ZX_NAMES = {
    "EAN13": "ean13",
    "EAN8": "ean8",
    "UPCA": "upca",
    "UPCE": "upce",
    "Code128": "code128",
    "Code39": "code39",
    "Code39Std": "code39",
    "Code39Ext": "code39",
    "Code32": "code39",
    "PZN": "code39",
    "ITF": "itf",
    "ITF14": "itf",
    "QRCode": "qrcode",
    "QRCodeModel2": "qrcode",
    "QRCodeModel1": "qrcode",
    "DataMatrix": "datamatrix",
}
_ZBAR_NAMES = {
    "EAN13": "ean13",
    "EAN8": "ean8",
    "UPCA": "upca",
    "UPCE": "upce",
    "CODE128": "code128",
    "CODE39": "code39",
    "I25": "itf",
    "QRCODE": "qrcode",
}
_ZBAR_SYMBOLS = [getattr(pyzbar.ZBarSymbol, n) for n in _ZBAR_NAMES]
RETAIL = frozenset({"ean13", "ean8", "upca", "upce"})
MATRIX = frozenset({"qrcode", "datamatrix"})


@dataclass
class _Obs:
    """One read by one decoder on one preprocessed copy."""

    symbology: str
    text: str
    points: tuple[Point, ...]  # in original-image pixels
    decoder: str  # "zxing" | "zbar"
    variant: str
    gs1: bool = False


def _family_key(symbology: str, text: str) -> tuple[str, str]:
    """Reads that are the same code compare equal under this key (UPC-A is an EAN-13 with a leading 0)."""
    if symbology in RETAIL:
        return ("retail", text)
    return (symbology, text)


def _retail_text(symbology: str, text: str) -> tuple[str, str] | None:
    """Normalise an EAN/UPC read to (symbology, 13-digit GTIN-13 or 8-digit EAN-8)."""
    if not text.isdigit():
        return None
    if symbology == "upce" and len(text) == 8:
        upca = _expand_upce(text)
        return ("upce", "0" + upca) if upca else None
    if len(text) == 12:
        text = "0" + text
    if len(text) == 13:
        if not _gs1_check_ok(text):
            return None
        if symbology == "ean13" and text.startswith("0"):
            symbology = "upca"
        return (symbology, text)
    if len(text) == 8 and symbology == "ean8" and _gs1_check_ok(text):
        return (symbology, text)
    return None


_CODE39_EXT = {
    "$": {chr(c): chr(c - 64) for c in range(ord("A"), ord("Z") + 1)},
    "%": dict(
        zip(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "\x1b\x1c\x1d\x1e\x1f;<=>?[\\]^_{|}~\x7f\x00@`\x7f\x7f\x7f",
            strict=True,
        )
    ),
    "/": dict(zip("ABCDEFGHIJKLZ", "!\"#$%&'()*+,:", strict=True)),
    "+": {chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)},
}


def _code39_full_ascii(raw: str) -> str | None:
    """Interpret a Code 39 string as Code 39 Extended (full ASCII); None if it has no shift pairs."""
    if not any(c in raw for c in "$%/+"):
        return None
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c in _CODE39_EXT and i + 1 < len(raw) and raw[i + 1] in _CODE39_EXT[c]:
            out.append(_CODE39_EXT[c][raw[i + 1]])
            i += 2
        elif c in _CODE39_EXT:
            return None
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass
class _Variant:
    name: str
    image: Image.Image
    to_orig: Callable[[float, float], Point]


def _scaled(name: str, img: Image.Image, factor: float, base: Callable[[float, float], Point]) -> _Variant:
    w, h = img.size
    out = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
    return _Variant(name, out, lambda x, y: base(x / factor, y / factor))


def _rotated(name: str, img: Image.Image, degrees: float, base: Callable[[float, float], Point]) -> _Variant:
    w, h = img.size
    out = img.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=255)
    cx, cy, ncx, ncy = w / 2, h / 2, out.width / 2, out.height / 2
    t = math.radians(degrees)
    cos_t, sin_t = math.cos(t), math.sin(t)

    def back(x: float, y: float) -> Point:
        dx, dy = x - ncx, y - ncy
        return base(cx + dx * cos_t - dy * sin_t, cy + dx * sin_t + dy * cos_t)

    return _Variant(name, out, back)


def _zxing_reads(v: _Variant, binarizer: zxingcpp.Binarizer = zxingcpp.Binarizer.LocalAverage) -> list[_Obs]:
    """zxing-cpp's reads of one copy. (For linear codes zxing-cpp thresholds each scan line by its own
    histogram whatever the binarizer, so ``GlobalHistogram`` changes only matrix reads; the reads of
    one copy count as one observation however they were binarized.)"""
    label = v.name
    out = []
    for b in zxingcpp.read_barcodes(
        v.image, formats=_ZX_FORMATS, text_mode=zxingcpp.TextMode.Plain, binarizer=binarizer
    ):
        if not b.valid:
            continue
        sym = _ZX_NAMES.get(b.format.name)
        if sym is None:
            continue
        text = b.text or b.bytes.decode("latin-1")  # binary / mixed-ECI content has no Plain text
        if not text:
            continue
        if sym in RETAIL:
            norm = _retail_text(sym, text)
            if norm is None:
                continue
            sym, text = norm
        p = b.position
        pts = tuple(v.to_orig(q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))
        out.append(_Obs(sym, text, pts, "zxing", label, b.content_type == zxingcpp.ContentType.GS1))
    return out


def _zbar_reads(v: _Variant) -> list[_Obs]:
    out = []
    for r in pyzbar.decode(v.image, symbols=_ZBAR_SYMBOLS):
        sym = _ZBAR_NAMES.get(r.type)
        if sym is None:
            continue
        try:
            text = r.data.decode("utf-8")
        except UnicodeDecodeError:
            text = r.data.decode("latin-1")
        if sym in RETAIL:
            norm = _retail_text(sym, text)
            if norm is None:
                continue
            sym, text = norm
        elif sym == "code39":
            text = _code39_full_ascii(text) or text
        pts = tuple(v.to_orig(p.x, p.y) for p in r.polygon)
        out.append(_Obs(sym, text, pts, "zbar", v.name))
    return out


def _bbox(points: Iterable[Point]) -> tuple[int, int, int, int]:
    xs, ys = zip(*points, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _overlap(a: tuple[Point, ...], b: tuple[Point, ...]) -> bool:
    ax0, ay0, ax1, ay1 = _bbox(a)
    bx0, by0, bx1, by1 = _bbox(b)
    m = 0.15 * max(ax1 - ax0, ay1 - ay0, bx1 - bx0, by1 - by0) + 4  # 1D outlines can be thin lines
    return ax0 - m <= bx1 and bx0 - m <= ax1 and ay0 - m <= by1 and by0 - m <= ay1


@dataclass
class _Candidate:
    key: tuple[str, str]
    obs: list[_Obs]

    @property
    def symbology(self) -> str:
        zx = [o.symbology for o in self.obs if o.decoder == "zxing"]
        return (zx or [self.obs[0].symbology])[0]

    @property
    def support(self) -> set[tuple[str, str]]:
        return {(o.decoder, o.variant) for o in self.obs}

    @property
    def decoders(self) -> frozenset[str]:
        return frozenset(o.decoder for o in self.obs)


def _group(observations: list[_Obs]) -> list[_Candidate]:
    by_key: dict[tuple[str, str], _Candidate] = {}
    for o in observations:
        k = _family_key(o.symbology, o.text)
        by_key.setdefault(k, _Candidate(k, [])).obs.append(o)
    groups = list(by_key.values())
    # ITF has no start/stop structure strong enough to stop partial scans: a short read inside a
    # longer one at the same place is a fragment of it, not a second code (nor a conflict).
    return [c for c in groups if not any(_is_fragment(c, other) for other in groups)]


def _is_fragment(c: _Candidate, other: _Candidate) -> bool:
    if c is other or c.symbology != "itf" or other.symbology != "itf":
        return False
    if len(c.key[1]) >= len(other.key[1]) or c.key[1] not in other.key[1]:
        return False
    return any(_overlap(a.points, b.points) for a in c.obs for b in other.obs)


def _check_ok(c: _Candidate, gs1: GS1Data | None) -> bool:
    sym, text = c.symbology, c.key[1]
    if c.key[0] == "retail":
        return _gs1_check_ok(text)
    if sym == "itf" and len(text) == 14 and not _gs1_check_ok(text):
        return False
    # flagged GS1 by the symbol but not a valid element string / bad AI 01 check digit
    return not (any(o.gs1 for o in c.obs) and gs1 is None)


def _is_certain(c: _Candidate, others: list[_Candidate], gs1: GS1Data | None) -> bool:
    """The certainty policy (measured by bench/barcode.py):

    - the check digits must hold (EAN/UPC, ITF-14, GS1 AI 01);
    - QR and Data Matrix carry Reed-Solomon error correction: one zxing read is enough; a pyzbar-only
      QR read only when its text is ASCII (zbar guesses the character set of Japanese QR wrongly);
    - linear codes need two independent observations: both decoders, or zxing on two differently
      preprocessed copies (zbar alone misreads EAN/UPC consistently across copies; the deblurred copies
      count as one), and no *conflicting* linear read at the same place in any copy. Every linear read
      is therefore cross-checked on a blurred and a sharpened copy: a marginal symbol reads differently
      there, which voids it;
    - zxing-only agreement also needs one read that held over a stretch of scan lines (an outline at
      least ``MIN_LINE_SUPPORT`` of the code's length tall): a read from one or two adjacent lines is
      where checksum-valid misreads come from (on the photo set, reads under 3 % tall are wrong 1 time
      in 4, taller ones 1 time in 60), and a sharpened copy can repeat the same lucky line.
    """
    if not _check_ok(c, gs1):
        return False
    if c.symbology in MATRIX:
        return "zxing" in c.decoders or c.key[1].isascii()
    # the deblurred copies count as one: all are upscaled and strongly sharpened from the same pixels
    zxing_variants = {"deblur" if v.startswith("deblur") else v for d, v in c.support if d == "zxing"}
    held = any(_line_support(o.points) >= MIN_LINE_SUPPORT for o in c.obs)
    if len(c.decoders) != 2 and (len(zxing_variants) < 2 or not held):
        return False
    mine = [o.points for o in c.obs]
    for other in others:
        if other is c or other.symbology in MATRIX:
            continue
        if any(_overlap(p, o.points) for p in mine for o in other.obs):
            return False
    return True


def _line_support(points: tuple[Point, ...]) -> float:
    """How tall a linear read's outline is, as a fraction of its length (zxing-cpp gives the first and
    last scan line that agreed as the top and bottom edge)."""
    if len(points) < 4:
        return 0.0
    (x0, y0), (x1, y1), _, (x3, y3) = points[:4]
    return math.hypot(x3 - x0, y3 - y0) / max(1.0, math.hypot(x1 - x0, y1 - y0))


def _finish(candidates: list[_Candidate]) -> list[Code]:
    codes = []
    for c in candidates:
        text = c.key[1]
        gs1 = (
            parse_gs1(text) if (any(o.gs1 for o in c.obs) or text.startswith(("]C1", "]d2", "]Q3"))) else None
        )
        best = max(c.obs, key=lambda o: (o.decoder == "zxing", o.variant == "base"))
        codes.append(
            Code(
                text=text,
                symbology=c.symbology,
                position=best.points,
                certain=_is_certain(c, candidates, gs1),
                sources=c.decoders,
                gs1=gs1,
            )
        )
    codes.sort(key=lambda k: (not k.certain, _bbox(k.position)[1], _bbox(k.position)[0]))
    return codes


@dataclass(frozen=True)
class Steps:
    """Which parts of the chain run; bench/barcode.py switches them off one by one (ablation)."""

    pyzbar: bool = True
    retry: bool = True
    rectify: bool = True  # matrix codes zxing-cpp locates but cannot read, warped square and read again
    deblur: bool = True  # upscaled, smoothed along the bars and sharpened copies, for blurred small codes
    policy: bool = True  # False: every read is "certain" (what a naive reader would do)
    budget_ms: float = TIME_BUDGET_MS


def _open(data: bytes) -> tuple[Image.Image | None, float, str | None]:
    """The photo as grayscale, the factor from its pixels to the original's (JPEG draft mode decodes
    big frames at half size), or an error message."""
    if not data:
        return None, 1.0, MSG_EMPTY
    if len(data) > MAX_BYTES:
        return None, 1.0, MSG_TOO_BIG
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return None, 1.0, MSG_TOO_MANY_PIXELS
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, 1.0, MSG_NOT_IMAGE
    if img.format not in ACCEPTED_FORMATS:
        return None, 1.0, MSG_NOT_IMAGE
    w, h = img.size
    if w * h > MAX_PIXELS:  # checked from the header, before any pixel is decoded
        return None, 1.0, MSG_TOO_MANY_PIXELS
    try:
        if img.format in ("JPEG", "MPO") and max(w, h) > 2 * WORK_LONG_SIDE:
            img.draft("L", (w // 2, h // 2))  # DCT-domain downscale while decoding: a 12 MP JPEG in ~1/4 time
        img.load()
        factor = w / img.width
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            # a transparent background is white paper, whatever colour its hidden pixels have (often black)
            img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
        gray = img.convert("L") if img.mode != "L" else img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, 1.0, MSG_TRUNCATED
    return gray, factor, None


def decode_image_bytes(data: bytes, steps: Steps | None = None) -> DecodeResult:
    """Find every code in a JPEG/PNG/WebP photo. Synchronous CPU work: call it off the event loop
    (``BarcodeReader`` does). Never raises for bad input; ``error`` then says what is wrong."""
    steps = steps or Steps()
    t0 = time.perf_counter()

    def done(codes: Iterable[Code], error: str | None) -> DecodeResult:
        return DecodeResult(tuple(codes), error, (time.perf_counter() - t0) * 1000)

    gray, factor, error = _open(bytes(data))
    if gray is None:
        return done((), error)
    try:
        codes = _decode_gray(gray, factor, steps, t0)
    except Exception:  # a decoder bug must not take the conversation down; say we could not read it
        return done((), MSG_TRUNCATED)
    return done(codes, None if codes else MSG_NO_CODE)


def _decode_gray(gray: Image.Image, factor: float, steps: Steps, t0: float) -> list[Code]:
    def to_orig(x: float, y: float) -> Point:
        return round(x * factor), round(y * factor)

    if max(gray.size) > WORK_LONG_SIDE and steps.retry:
        obs = _regions_chain(gray, to_orig, steps, t0)
    else:
        obs = _chain(gray, to_orig, steps, t0, steps.budget_ms)
    codes = _finish(_group(obs))
    if not steps.policy:
        codes = [Code(c.text, c.symbology, c.position, True, c.sources, c.gs1) for c in codes]
    return codes


def _find_regions(gray: Image.Image) -> tuple[Image.Image, float, list[tuple[int, int, int, int]]]:
    """A small copy of a big frame (``FIND_LONG_SIDE``), its scale, and boxes (in ``gray``'s pixels)
    around every code zxing-cpp *locates* on it, including reads that fail their checks
    (``return_errors``). (A gradient-density saliency map was tried as well: on busy frames it picked
    clutter and cost reads; see bench/barcode.py.)"""
    f = FIND_LONG_SIDE / max(gray.size)
    small_size = (round(gray.width * f), round(gray.height * f))
    small = gray.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0)  # box-reduces first
    outlines: list[list[tuple[float, float]]] = []
    for found in zxingcpp.read_barcodes(small, formats=_ZX_FORMATS, return_errors=True):
        p = found.position
        outlines.append([(q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)])
    boxes: list[tuple[int, int, int, int]] = []
    for pts in outlines:
        xs, ys = [x / f for x, _ in pts], [y / f for _, y in pts]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        size = max(x1 - x0, y1 - y0, 40 / f)  # a 1D outline can be a line: pad by the code's length
        m = 0.6 * size
        box = (
            max(0, int(x0 - m)),
            max(0, int(y0 - m)),
            min(gray.width, int(x1 + m)),
            min(gray.height, int(y1 + m)),
        )
        for other in [o for o in boxes if _mostly_overlap(o, box)]:  # one crop for one place
            boxes.remove(other)
            box = (min(other[0], box[0]), min(other[1], box[1]), max(other[2], box[2]), max(other[3], box[3]))
        boxes.append(box)
    return small, f, boxes[:MAX_REGIONS]


def _mostly_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """The boxes share at least half of the smaller one."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w > 0 and h > 0 and w * h >= 0.5 * smaller


def _regions_chain(
    gray: Image.Image, to_orig: Callable[[float, float], Point], steps: Steps, t0: float
) -> list[_Obs]:
    """A big frame: the retry chain runs on native-resolution crops around the located codes, not on
    the whole frame; on the small search copy only when nothing is located or read there. (On the whole
    frame at ``WORK_LONG_SIDE`` one cross-check step costs ~100 ms, and read no more within the budget.)"""
    obs: list[_Obs] = []
    budget = min(steps.budget_ms, BIG_FRAME_BUDGET_MS)
    small, f, regions = _find_regions(gray)
    for i, (x0, y0, x1, y1) in enumerate(regions):
        elapsed = (time.perf_counter() - t0) * 1000
        if elapsed > budget:
            break

        def crop_to_orig(x: float, y: float, x0: int = x0, y0: int = y0) -> Point:
            return to_orig(x + x0, y + y0)

        # each crop gets an equal share of what is left, the whole search copy one more share: a located
        # "code" can be clutter, and its retries must not use up the time of the real code
        deadline = elapsed + (budget - elapsed) / (len(regions) - i + 1)
        crop = gray.crop((x0, y0, x1, y1))
        obs += _chain(crop, crop_to_orig, steps, t0, deadline, work_side=CROP_LONG_SIDE)
    if not obs and (time.perf_counter() - t0) * 1000 < budget:

        def small_to_orig(x: float, y: float) -> Point:
            return to_orig(x / f, y / f)

        def detail() -> _Variant:  # small QR / Data Matrix codes need more pixels than the search copy has
            return _scaled("detail", gray, WORK_LONG_SIDE / max(gray.size), to_orig)

        obs = _chain(small, small_to_orig, steps, t0, budget, False, FIND_LONG_SIDE, detail)
    return obs


def _chain(
    gray: Image.Image,
    to_orig: Callable[[float, float], Point],
    steps: Steps,
    t0: float,
    budget_ms: float,
    native: bool = True,
    work_side: int = WORK_LONG_SIDE,
    detail: Callable[[], _Variant] | None = None,
) -> list[_Obs]:
    """Read ``gray`` and, while a code is missing or uncertain, preprocessed copies of it. Every read
    after the first checks the time budget first (a step on a big copy costs tens of ms). ``detail``
    makes a larger copy to read first among the retries (big frames searched on a small copy)."""
    full = _Variant("full", gray, to_orig)
    long_side = max(gray.size)
    if long_side > work_side:
        base = _scaled("base", gray, work_side / long_side, to_orig)
    else:
        base = _Variant("base", gray, to_orig)

    def spent() -> bool:
        return (time.perf_counter() - t0) * 1000 > budget_ms

    obs: list[_Obs] = []

    def read(
        v: _Variant, binarizer: zxingcpp.Binarizer = zxingcpp.Binarizer.LocalAverage, always: bool = False
    ) -> None:
        obs.extend(_zxing_reads(v, binarizer))
        if steps.pyzbar and (always or not spent()):
            obs.extend(_zbar_reads(v))

    def copy(name: str) -> _Variant:
        if name == "up2":
            return _scaled("up2", gray, 2.0, to_orig)
        if name == "full":
            return full
        if name == "detail" and detail is not None:
            return detail()
        if name in _COPIES:
            return _Variant(name, _COPIES[name](base.image), base.to_orig)
        return _rotated(name, base.image, float(name.removeprefix("rot")), base.to_orig)

    def settled() -> bool:
        codes = _finish(_group(obs))
        return bool(codes) and all(c.certain for c in codes)

    read(base, always=True)
    done = {"base"}
    if steps.retry and any(o.symbology not in MATRIX for o in obs):
        # Cross-check linear reads: a checksum-valid misread rarely survives a blurred and a sharpened
        # copy. Never skipped for time: without it zxing-cpp and zbar agreeing on a misread would be
        # certain (2 wrong certain reads on the photo set with the retry chain off).
        for name in ("blur", "sharp"):
            read(copy(name), always=True)
            done.add(name)

    if steps.retry and not settled():
        chain = ["up2"] if long_side < SMALL_LONG_SIDE else []
        chain += ["detail"] if detail is not None else []
        chain += [*_COPIES, "rot+30", "rot-30"]
        if base is not full and native:
            chain.append("full")
        for name in chain:
            if name in done:
                continue
            if spent():
                break
            read(copy(name))
            if settled():
                break

    if steps.rectify and not spent() and not settled():
        for v in _rectified(base):
            obs += _zxing_reads(v) + _zxing_reads(v, zxingcpp.Binarizer.GlobalHistogram)
            if settled() or spent():
                break
    if steps.deblur and not spent() and not settled():
        axis = _bar_axis(base.image)
        for name, most, smooth, usm in DEBLUR:
            if spent():
                break
            read(_deblurred(name, base, most, smooth, axis, usm), zxingcpp.Binarizer.GlobalHistogram)
            if settled():
                break
    return obs


# The preprocessed copies of the retry chain, in order; blur and sharp also cross-check linear reads.
_COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "contrast": lambda im: ImageOps.autocontrast(im, cutoff=2),
    "sharp": lambda im: im.filter(ImageFilter.UnsharpMask(2, 200, 2)),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
}


# The deblur steps, in order: (name, largest upscale, smoothing along the bars in original pixels,
# unsharp mask (radius, percent, threshold)). Chosen on the photo set's misses by trying each of 60
# combinations alone (scale 1-3x, smoothing 0/5/15 px, five unsharp masks): blurred small codes whose thin
# bars have turned grey come back when the copy is upscaled before a strong unsharp mask; smoothing along
# the bars keeps the mask from amplifying noise and glare. These three cover every image any of the 60 read.
DEBLUR: tuple[tuple[str, float, int, tuple[int, int, int]], ...] = (
    ("deblur3s5", 3.0, 5, (3, 300, 0)),
    ("deblur3", 3.0, 0, (4, 400, 0)),
    ("deblur2", 2.0, 0, (4, 400, 0)),
)


def _bar_axis(img: Image.Image) -> int | None:
    """The axis the bars of a linear code run along: 0 (vertical bars) when horizontal gradients
    dominate the image, 1 in the other case, None when neither does (a tilted or matrix code)."""
    gx = ImageStat.Stat(ImageChops.difference(img, ImageChops.offset(img, 1, 0))).sum[0]
    gy = ImageStat.Stat(ImageChops.difference(img, ImageChops.offset(img, 0, 1))).sum[0]
    if gx > 1.5 * gy:
        return 0
    if gy > 1.5 * gx:
        return 1
    return None


def _deblurred(
    name: str, base: _Variant, most: float, smooth: int, axis: int | None, usm: tuple[int, int, int]
) -> _Variant:
    img = base.image
    factor = max(1.0, min(most, DEBLUR_LONG_SIDE / max(img.size)))
    if factor > 1.0:
        img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BICUBIC)
    r = round(smooth * factor / 2)
    if r and axis is not None:  # a running mean along the bars only
        img = img.filter(ImageFilter.BoxBlur((0, r) if axis == 0 else (r, 0)))
    img = img.filter(ImageFilter.UnsharpMask(*usm))
    return _Variant(name, img, lambda x, y: base.to_orig(x / factor, y / factor))


def _rectified(base: _Variant) -> list[_Variant]:
    """Every QR / Data Matrix code zxing-cpp locates on ``base`` but cannot read (a checksum error:
    its sampling grid missed), warped so its corners make a square with a quiet zone. A creased or
    curved label sampled again on a square grid often reads (the QR codes printed on T-shirts)."""
    out: list[_Variant] = []
    for b in zxingcpp.read_barcodes(base.image, formats=_ZX_MATRIX, return_errors=True):
        if b.valid or _ZX_NAMES.get(b.format.name) not in MATRIX:
            continue
        p = b.position
        quad = [(float(q.x), float(q.y)) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]
        out.append(_warped(f"rect{len(out)}", base, quad))
    return out


def _warped(name: str, base: _Variant, quad: list[tuple[float, float]]) -> _Variant:
    side, grow = RECTIFIED_SIDE, 1.25  # the symbol fills the middle 80 % of the square
    cx = sum(x for x, _ in quad) / 4
    cy = sum(y for _, y in quad) / 4
    tl, tr, br, bl = [(cx + (x - cx) * grow, cy + (y - cy) * grow) for x, y in quad]
    img = base.image.transform(
        (side, side), Image.Transform.QUAD, (*tl, *bl, *br, *tr), Image.Resampling.BILINEAR, fillcolor=255
    )

    def back(x: float, y: float) -> Point:  # Pillow's QUAD is a bilinear map of the square
        s, t = x / side, y / side
        px = tl[0] * (1 - s) * (1 - t) + tr[0] * s * (1 - t) + br[0] * s * t + bl[0] * (1 - s) * t
        py = tl[1] * (1 - s) * (1 - t) + tr[1] * s * (1 - t) + br[1] * s * t + bl[1] * (1 - s) * t
        return base.to_orig(px, py)

    return _Variant(name, img, back)


# --------------------------------------------------------------------------------------------- async reader


class BarcodeReader:
    """Decodes photos off the event loop, at most ``max_workers`` at a time.

    A thread pool is the default: zxing-cpp, zbar and Pillow's codecs release the GIL, so threads run
    in parallel without pickling the photo to another process (measured in bench/barcode.py --pool).
    ``executor="process"`` isolates native-library crashes at the cost of ~1-3 ms per call and a
    worker start-up.
    """

    def __init__(self, max_workers: int = 2, *, executor: Literal["thread", "process"] = "thread") -> None:
        self._pool: Executor = (
            ProcessPoolExecutor(max_workers=max_workers)
            if executor == "process"
            else ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="barcode")
        )
        self._slots = asyncio.Semaphore(max_workers)  # queue in the loop, not in the pool
        self._decode: Callable[[bytes], DecodeResult] = decode_image_bytes

    async def decode(self, data: bytes) -> DecodeResult:
        if len(data) > MAX_BYTES:  # refuse before copying it anywhere
            return DecodeResult((), MSG_TOO_BIG, 0.0)
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._decode, data)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)

    async def __aenter__(self) -> BarcodeReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
