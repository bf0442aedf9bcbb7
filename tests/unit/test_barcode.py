"""integrations.barcode on images the tests make themselves (python-barcode, segno, zxing-cpp's writer)."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import threading
import time
import zlib
from datetime import date

import barcode as pybarcode
import numpy as np
import pytest
import segno
import zxingcpp
from barcode.writer import ImageWriter
from PIL import Image, ImageFilter

from integrations.barcode import (
    GS,
    MAX_BYTES,
    BarcodeReader,
    Code,
    DecodeResult,
    decode_image_bytes,
    equivalents,
    match_codes,
    parse_gs1,
)

# ------------------------------------------------------------------------------------------ image makers


def python_barcode(kind: str, text: str) -> Image.Image:
    cls = pybarcode.get_barcode_class(kind)
    options = {"write_text": False, "module_width": 0.3, "module_height": 12, "quiet_zone": 6, "dpi": 200}
    kwargs = {"add_checksum": False} if kind == "code39" else {}
    img = cls(text, writer=ImageWriter(), **kwargs).render(options)
    return img.convert("L")


def zxing_barcode(fmt: str, text: str, scale: int = 4, **kw: object) -> Image.Image:
    b = zxingcpp.create_barcode(text, getattr(zxingcpp.BarcodeFormat, fmt), **kw)
    img = Image.fromarray(np.array(zxingcpp.write_barcode_to_image(b, scale=scale)))
    return pad(img.convert("L"), 20)


def qr(text: str) -> Image.Image:
    buf = io.BytesIO()
    segno.make_qr(text).save(buf, kind="png", scale=6, border=4)
    return Image.open(buf).convert("L")


def pad(img: Image.Image, margin: int) -> Image.Image:
    out = Image.new("L", (img.width + 2 * margin, img.height + 2 * margin), 255)
    out.paste(img, (margin, margin))
    return out


def distort(
    img: Image.Image,
    *,
    rotate: float = 0,
    blur: float = 0,
    noise: float = 0,
    light: bool = False,
    seed: int = 1,
) -> Image.Image:
    img = pad(img, 40)
    if rotate:
        img = img.rotate(rotate, expand=True, fillcolor=255, resample=Image.Resampling.BILINEAR)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img, dtype=np.float32)
    if light:  # uneven light: a gradient from bright to dim across the photo
        a = a * np.linspace(1.0, 0.55, a.shape[1])[None, :] + 20
    if noise:
        a = a + np.random.default_rng(seed).normal(0, noise, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def to_bytes(img: Image.Image, fmt: str = "JPEG", quality: int = 40) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def certain_texts(result: DecodeResult) -> dict[str, str]:
    return {c.text: c.symbology for c in result.codes if c.certain}


# ------------------------------------------------------------------------------------------ symbologies

SYMBOLS = [
    # (id, image maker, expected text, expected symbology)
    ("ean13", lambda: python_barcode("ean13", "4006381333931"), "4006381333931", "ean13"),
    ("ean8", lambda: python_barcode("ean8", "96385074"), "96385074", "ean8"),
    ("upca", lambda: python_barcode("upca", "036000291452"), "0036000291452", "upca"),
    ("upce", lambda: zxing_barcode("UPCE", "01234565"), "0012345000065", "upce"),
    ("code128", lambda: python_barcode("code128", "BIN-A01-03"), "BIN-A01-03", "code128"),
    ("code39", lambda: python_barcode("code39", "LOC-17"), "LOC-17", "code39"),
    ("itf", lambda: zxing_barcode("ITF", "00012345678905", scale=3), "00012345678905", "itf"),
    ("qrcode", lambda: qr("库位 A-01-03"), "库位 A-01-03", "qrcode"),
    ("datamatrix", lambda: zxing_barcode("DataMatrix", "ITEM-000123"), "ITEM-000123", "datamatrix"),
]


@pytest.mark.parametrize(("name", "make", "text", "symbology"), SYMBOLS, ids=[s[0] for s in SYMBOLS])
@pytest.mark.parametrize(
    "how",
    [
        {},
        {"rotate": 8, "blur": 1.0},
        {"noise": 12, "light": True},
        {"rotate": 90},
    ],
    ids=["plain", "rotated-blurred", "noisy-uneven-light", "rot90"],
)
def test_every_symbology_is_read_as_certain_through_distortion_and_jpeg_40(name, make, text, symbology, how):
    data = to_bytes(distort(make(), **how), "JPEG", quality=40)
    result = decode_image_bytes(data)
    assert result.error is None
    assert certain_texts(result) == {text: symbology}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_png_webp_and_jpeg_are_accepted(fmt):
    data = to_bytes(pad(python_barcode("ean13", "4006381333931"), 10), fmt, quality=90)
    assert certain_texts(decode_image_bytes(data)) == {"4006381333931": "ean13"}


def test_gs1_128_datamatrix_and_qr_give_the_lot_from_the_label():
    element = "(01)09501101530003(17)270630(10)LOT-42(21)S123"
    gs1_128 = zxing_barcode("Code128", element, scale=3, gs1=True)
    gs1_dm = zxing_barcode("DataMatrix", element, gs1=True)
    gs1_qr = zxing_barcode("QRCode", element, gs1=True)
    for img in (gs1_128, gs1_dm, gs1_qr):
        result = decode_image_bytes(to_bytes(distort(img, rotate=5), "PNG"))
        (code,) = [c for c in result.codes if c.certain]
        assert code.gs1 is not None
        assert code.gs1.gtin == "09501101530003"
        assert code.gs1.lot == "LOT-42"
        assert code.gs1.serial == "S123"
        assert code.gs1.expiry == date(2027, 6, 30)


def test_python_barcode_gs1_128_rendering_is_parsed():
    img = python_barcode("gs1_128", "0109501101530003" + "10ABC")
    (code,) = decode_image_bytes(to_bytes(img, "PNG")).codes
    assert code.gs1 is not None and code.gs1.lot == "ABC"


def test_multi_code_photo_returns_every_code_with_its_position():
    photo = Image.new("L", (1400, 900), 235)
    photo.paste(python_barcode("ean13", "4006381333931"), (40, 40))
    photo.paste(qr("LOC-B-02-01"), (900, 60))
    photo.paste(zxing_barcode("DataMatrix", "ITEM-77"), (900, 600))
    photo.paste(python_barcode("code128", "PALLET-9"), (60, 560))
    result = decode_image_bytes(to_bytes(distort(photo, noise=6, blur=0.6), "JPEG", quality=60))
    found = certain_texts(result)
    assert found == {
        "4006381333931": "ean13",
        "LOC-B-02-01": "qrcode",
        "ITEM-77": "datamatrix",
        "PALLET-9": "code128",
    }
    qr_code = next(c for c in result.codes if c.text == "LOC-B-02-01")
    xs = [p[0] for p in qr_code.position]
    assert min(xs) > 900 and max(xs) < 1400  # positions are in the original photo's pixels


def test_large_frame_is_downscaled_and_positions_map_back():
    frame = Image.new("L", (4000, 3000), 200)
    code = qr("BIN-Z-99").resize((900, 900), Image.Resampling.NEAREST)
    frame.paste(code, (2600, 1700))
    result = decode_image_bytes(to_bytes(frame, "JPEG", quality=85))
    (c,) = result.codes
    assert c.text == "BIN-Z-99" and c.certain
    xs, ys = zip(*c.position, strict=True)
    assert min(xs) > 2500 and max(xs) < 3600 and min(ys) > 1600 and max(ys) < 2700


# ------------------------------------------------------------------------------------------ bad input


def test_no_code_gives_practical_advice_in_chinese():
    result = decode_image_bytes(to_bytes(Image.new("L", (300, 200), 180), "PNG"))
    assert result.codes == ()
    assert result.error is not None and "靠近" in result.error and "反光" in result.error


def test_empty_bytes_text_file_and_truncated_jpeg_are_refused_with_a_message():
    jpeg = to_bytes(distort(python_barcode("ean13", "4006381333931")), "JPEG", quality=90)
    for data in (b"", b"just some text, not a photo\n" * 10, jpeg[: len(jpeg) // 2]):
        result = decode_image_bytes(data)
        assert result.error and result.codes == ()


def test_decompression_bomb_is_refused_from_the_header():
    # A 60 MP PNG made cheaply: the header says 10000 x 6000, the data is one tiny compressed stream.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 6000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 10001 * 10)) + chunk(b"IEND", b"")
    t = time.perf_counter()
    result = decode_image_bytes(png)
    assert "5000 万像素" in (result.error or "")
    assert time.perf_counter() - t < 1.0


def test_file_over_20_mb_is_refused():
    result = decode_image_bytes(b"\xff\xd8\xff" + b"\0" * MAX_BYTES)
    assert result.error and "20 MB" in result.error


# ------------------------------------------------------------------------------------------ GS1


@pytest.mark.parametrize(
    "text",
    [
        "(01)09501101530003(10)AB-12(17)250600(30)12",
        "]C101095011015300031725060010AB-12" + GS + "3012",
        GS + "010950110153000310AB-12" + GS + "1725060030" + "12",
        "]d2010950110153000310AB-12\x1d17250600\x1d3012",
    ],
)
def test_parse_gs1_with_fnc1_separators_and_variable_length_ais(text):
    d = parse_gs1(text)
    assert d is not None
    assert d.gtin == "09501101530003"
    assert d.lot == "AB-12"
    assert d.expiry == date(2025, 6, 30)  # day 00: last day of the month
    assert d.count == 12


def test_parse_gs1_rejects_bad_gtin_check_digit_and_non_gs1_text():
    assert parse_gs1("(01)09501101530004(10)X") is None
    assert parse_gs1("hello world") is None
    assert parse_gs1("") is None
    d = parse_gs1("(00)106141411234567897(37)24")
    assert d is not None and d.gtin is None and d.count == 24 and d.raw["00"] == "106141411234567897"


# ------------------------------------------------------------------------------------------ equivalents


def test_equivalents_of_upc_ean_gtin14_and_gtin8():
    assert {"036000291452", "0036000291452", "00036000291452"} <= equivalents("036000291452")
    assert "036000291452" in equivalents("00036000291452")
    assert equivalents("10036000291459") == {"10036000291459"}  # indicator 1: a case, another item
    assert {"96385074", "00000096385074", "0000096385074"} <= equivalents("96385074")
    assert {"012345000065", "0012345000065", "01234565"} <= equivalents("01234565")
    assert "01234565" in equivalents("0012345000065")  # a zxing UPC-E read matches the stored UPC-E
    assert equivalents("4006381333932") == {"4006381333932"}  # bad check digit
    assert equivalents("BIN-A01") == {"BIN-A01"}


# ------------------------------------------------------------------------------------------ matching


def code(text: str, certain: bool = True, symbology: str = "ean13", gs1_text: str | None = None) -> Code:
    return Code(
        text, symbology, ((0, 0),), certain, frozenset({"zxing"}), parse_gs1(gs1_text) if gs1_text else None
    )


def test_match_codes_matches_certain_known_codes_and_sends_the_rest_to_confirm():
    items = {"4006381333931": (1, "EA"), "036000291452": (2, "BOX"), "09501101530003": (3, "EA")}
    locations = {"LOC-A-01": 10}
    upc_as_ean = code("0036000291452", symbology="upca")
    unknown = code("5901234123457")
    shaky = code("4006381333931", certain=False)
    location = code("LOC-A-01", symbology="code128")
    gs1 = code("0109501101530003" + "10LOT7", symbology="datamatrix", gs1_text="(01)09501101530003(10)LOT7")
    matched, to_confirm = match_codes([upc_as_ean, unknown, shaky, location, gs1], items, locations)
    assert [(m.kind, m.id, m.unit, m.lot) for m in matched] == [
        ("item", 2, "BOX", None),
        ("location", 10, None, None),
        ("item", 3, "EA", "LOT7"),
    ]
    assert to_confirm == [unknown, shaky]


def test_a_code_matching_two_things_is_questioned():
    matched, to_confirm = match_codes(
        [code("4006381333931")], {"4006381333931": (1, None)}, {"4006381333931": 5}
    )
    assert matched == [] and len(to_confirm) == 1


# ------------------------------------------------------------------------------------------ async reader


async def test_reader_runs_off_the_loop_and_is_bounded():
    reader = BarcodeReader(max_workers=2)
    running, peak, threads = 0, 0, set()
    lock = threading.Lock()

    def slow(data: bytes) -> DecodeResult:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threads.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            running -= 1
        return DecodeResult((), None, 50.0)

    reader._decode = slow
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1

    await asyncio.gather(ticker(), *(reader.decode(b"x") for _ in range(6)))
    await reader.close()
    assert peak == 2
    assert threading.get_ident() not in threads
    assert ticks == 10  # the loop kept running while photos were decoded


async def test_reader_decodes_a_real_photo():
    data = to_bytes(distort(qr("LOC-C-03"), rotate=20), "JPEG", quality=70)
    async with BarcodeReader(max_workers=1) as reader:
        result = await reader.decode(data)
    assert certain_texts(result) == {"LOC-C-03": "qrcode"}


def test_noisy_photos_never_give_a_certain_wrong_ean():
    rng = random.Random(7)
    for i in range(6):
        img = distort(
            python_barcode("ean13", "4006381333931"), rotate=rng.uniform(-20, 20), blur=2.2, noise=25, seed=i
        )
        for c in decode_image_bytes(to_bytes(img, "JPEG", quality=30)).codes:
            assert not c.certain or c.text == "4006381333931"
