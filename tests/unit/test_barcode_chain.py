"""The certainty policy and the rescue steps of integrations.barcode, on images the tests make themselves."""

from __future__ import annotations

import numpy as np
from PIL import Image

from integrations.barcode import decode_image_bytes
from tests.unit.test_barcode import certain_texts, pad, python_barcode, to_bytes


def test_a_read_from_a_single_scan_line_is_returned_but_not_certain():
    # One row of pixels: zxing-cpp reads it, and its sharpened copy gives the same single line again.
    # Two copies agreeing on one line are not two observations of the code.
    code = python_barcode("ean13", "4006381333931")
    row = pad(code, 10).crop((0, code.height // 2, code.width + 20, code.height // 2 + 1))
    result = decode_image_bytes(to_bytes(row, "PNG"))
    assert [c.text for c in result.codes] == ["4006381333931"]
    assert certain_texts(result) == {}


def test_the_same_code_photographed_tall_enough_is_certain():
    code = python_barcode("ean13", "4006381333931")
    strip = np.asarray(pad(code, 10))[code.height // 2 - 6 : code.height // 2 + 6]
    result = decode_image_bytes(to_bytes(Image.fromarray(strip), "PNG"))
    assert certain_texts(result) == {"4006381333931": "ean13"}
