"""The /accuracy chart: drawn in the reader's language, with the figures the text reply gives."""

from __future__ import annotations

import io

from PIL import Image

from bot.charts import ClassAccuracy, cjk_font, render_accuracy

ROWS = [
    ClassAccuracy("A", 4, 3, 0.75, 0.9, 0.8),
    ClassAccuracy("B", 2, 2, 1.0, 1.0, 1.0),
    ClassAccuracy("C", 0, 0, None, None, None),
    ClassAccuracy("total", 6, 5, 5 / 6, 0.95, 0.85),
]


def test_an_english_reader_gets_english_labels() -> None:
    chart = render_accuracy(ROWS, days=7, lang="en")
    assert chart.lang == "en" and chart.font is None
    assert chart.labels == (
        "Inventory record accuracy, last 7 days", "Record accuracy", "Quantity accuracy", "Value accuracy",
        "Class A\n(n=4)", "Class B\n(n=2)", "Class C\n(n=0)", "Total\n(n=6)",
    )  # fmt: skip
    with Image.open(io.BytesIO(chart.png)) as img:
        assert img.format == "PNG" and img.size == (960, 540)


def test_a_chinese_reader_gets_chinese_labels_when_a_cjk_font_is_installed() -> None:
    chart = render_accuracy(ROWS, days=7, lang="zh")
    if cjk_font() is None:  # no font to draw Chinese with: English labels rather than empty boxes
        assert chart.lang == "en" and chart.labels[0] == "Inventory record accuracy, last 7 days"
        return
    assert chart.lang == "zh" and chart.font == cjk_font()[0]  # type: ignore[index]
    assert chart.labels == (
        "近 7 天库存记录准确率（按 ABC 分类）", "记录准确率", "数量准确率", "金额准确率",
        "A 类\n(n=4)", "B 类\n(n=2)", "C 类\n(n=0)", "合计\n(n=6)",
    )  # fmt: skip
    assert chart.png != render_accuracy(ROWS, days=7, lang="en").png
