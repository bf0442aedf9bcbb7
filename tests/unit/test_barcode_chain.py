"""The certainty policy and the rescue steps of integrations.barcode, on images the tests make themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

import integrations.barcode as barcode_module
from integrations.barcode import Steps, decode_image_bytes
from tests.unit.test_barcode import certain_texts, pad, python_barcode, qr, to_bytes

ZXING_ONLY = Steps(pyzbar=False)  # the line-support rule is about zxing-cpp confirming itself


def test_a_zxing_read_from_a_single_scan_line_is_returned_but_not_certain():
    # One row of pixels: zxing-cpp reads it, and its sharpened copy gives the same single line again.
    # Two copies agreeing on one line are not two observations of the code.
    code = python_barcode("ean13", "4006381333931")
    row = pad(code, 10).crop((0, code.height // 2, code.width + 20, code.height // 2 + 1))
    result = decode_image_bytes(to_bytes(row, "PNG"), ZXING_ONLY)
    assert [c.text for c in result.codes] == ["4006381333931"]
    assert certain_texts(result) == {}


def test_the_same_code_in_a_strip_a_few_lines_tall_is_certain():
    code = python_barcode("ean13", "4006381333931")
    strip = np.asarray(pad(code, 10))[code.height // 2 - 6 : code.height // 2 + 6]
    result = decode_image_bytes(to_bytes(Image.fromarray(strip), "PNG"), ZXING_ONLY)
    assert certain_texts(result) == {"4006381333931": "ean13"}


# ------------------------------------------------------------------------------------------ rescue steps


def small_blurred_ean13(px_per_module: float, blur: float) -> Image.Image:
    """An EAN-13 photographed from too far away: about 1.5 pixels a module, out of focus, a little noise."""
    code = pad(python_barcode("ean13", "4006381333931"), 30)  # rendered at 200 dpi, 0.3 mm modules
    f = px_per_module / (0.3 * 200 / 25.4)
    img = code.resize((round(code.width * f), round(code.height * f)), Image.Resampling.BOX)
    img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img, np.float32) + np.random.default_rng(1).normal(0, 6, (img.height, img.width))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_a_small_blurred_ean13_is_read_on_an_upscaled_sharpened_copy():
    data = to_bytes(small_blurred_ean13(1.5, 0.7), "JPEG", quality=90)
    assert decode_image_bytes(data, Steps(deblur=False)).codes == ()
    assert certain_texts(decode_image_bytes(data)) == {"4006381333931": "ean13"}  # zbar agrees


def test_zxing_agreeing_with_itself_on_two_deblurred_copies_is_not_certain():
    # the deblurred copies are all upscaled and sharpened from the same pixels: one observation
    data = to_bytes(small_blurred_ean13(1.5, 0.7), "JPEG", quality=90)
    result = decode_image_bytes(data, ZXING_ONLY)
    assert [c.text for c in result.codes] == ["4006381333931"]
    assert certain_texts(result) == {}


def qr_on_fabric(text: str, seed: int) -> Image.Image:
    """A QR label sewn on a shirt: seen at a slant on a dark background, with smooth wrinkles."""
    rng = np.random.default_rng(seed)
    size = 240
    canvas = Image.new("L", (size, size), 30)
    label = pad(qr(text).resize((150, 150), Image.Resampling.BILINEAR), 12)
    canvas.paste(label, ((size - label.width) // 2, (size - label.height) // 2))
    d = 0.05 * size
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = rng.uniform(-d, d, (4, 2))
    quad = (x0, y0, x1, size + y1, size + x2, size + y2, size + x3, y3)
    img = canvas.transform((size, size), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=30)
    a = np.asarray(img, np.float32)
    # wrinkles: a displacement field of up to a few pixels, smooth over ~1/4 of the label
    field = [Image.fromarray(f) for f in rng.normal(0, 1, (2, 5, 5)).astype(np.float32)]
    fx, fy = (2 * np.asarray(f.resize((size, size), Image.Resampling.BICUBIC)) for f in field)
    yy, xx = np.mgrid[0:size, 0:size]
    xi = np.clip(np.round(xx + fx).astype(int), 0, size - 1)
    yi = np.clip(np.round(yy + fy).astype(int), 0, size - 1)
    return Image.fromarray(a[yi, xi].astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


@pytest.mark.parametrize("seed", [1, 3, 17])  # of 40 seeds: 5 read anyway, these 3 only warped square
def test_a_wrinkled_qr_zxing_locates_but_cannot_read_is_read_warped_square(seed):
    data = to_bytes(qr_on_fabric("https://example.com/bin/A-01-03", seed), "JPEG", quality=85)
    assert decode_image_bytes(data, Steps(rectify=False)).codes == ()
    result = decode_image_bytes(data)
    assert certain_texts(result) == {"https://example.com/bin/A-01-03": "qrcode"}
    (code,) = result.codes
    xs, ys = zip(*code.position, strict=True)
    assert 50 < min(xs) < max(xs) < 190 and 50 < min(ys) < max(ys) < 190  # where the label is, in the photo


# ------------------------------------------------------------------------------------------ big frames


def test_a_small_code_in_a_12_mp_frame_is_read_on_a_more_detailed_copy(monkeypatch):
    # 120 px in a 4000 px frame: too small to be located on the 800 px search copy (24 px there)
    monkeypatch.setattr(barcode_module, "BIG_FRAME_BUDGET_MS", float("inf"))  # what is read, not how fast
    frame = Image.new("L", (4000, 3000), 200)
    frame.paste(qr("BIN-Z-99").resize((120, 120), Image.Resampling.NEAREST), (2600, 1700))
    result = decode_image_bytes(to_bytes(frame, "JPEG", quality=85))
    assert certain_texts(result) == {"BIN-Z-99": "qrcode"}
    xs, ys = zip(*result.codes[0].position, strict=True)
    assert 2590 < min(xs) < max(xs) < 2730 and 1690 < min(ys) < max(ys) < 1830


# ------------------------------------------------------------------------------------------ input


def test_a_code_on_a_transparent_background_is_read_as_if_on_white():
    # An exported label: black modules, the background transparent with black hidden pixels
    rgba = qr("LOC-T-01").convert("RGBA")
    a = np.asarray(rgba).copy()
    light = a[:, :, 0] > 128
    a[light] = (0, 0, 0, 0)
    result = decode_image_bytes(to_bytes(Image.fromarray(a), "PNG"))
    assert certain_texts(result) == {"LOC-T-01": "qrcode"}
