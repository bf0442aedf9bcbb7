"""Charts for chat replies: PNG bytes drawn with matplotlib's Agg backend.

- matplotlib is imported only when a chart is drawn, never at start-up: a server that is never asked for a
  chart does not pay for it (see :func:`render_accuracy` for the cost when it is).
- Drawing runs in a worker thread (:func:`accuracy_chart` uses ``asyncio.to_thread``), one chart at a time
  (matplotlib's global settings are not thread-safe), never on the event loop.
- Labels follow the reader's language (``lang``, as the text replies do). Chinese labels need a CJK font:
  ``fc-list :lang=zh`` is asked first, then matplotlib's own font list by family name. Without one the labels
  fall back to English rather than drawing empty boxes. No font is shipped or installed by pandian.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pandian.charts")

# families that cover Simplified Chinese, looked up in matplotlib's font list when fc-list is not there
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)
_DRAW = threading.Lock()


@dataclass(frozen=True, slots=True)
class ClassAccuracy:
    """One bar group: the first counts of one ABC class (or ``total``) in the window."""

    label: str  # "A", "B", "C" or "total"
    counts: int
    hits: int
    hit_rate: float | None  # inventory record accuracy: hits / counts
    unit_accuracy: float | None
    value_accuracy: float | None


@dataclass(frozen=True, slots=True)
class Chart:
    png: bytes
    font: str | None  # the CJK family the labels used; None for English labels
    seconds: float  # time spent drawing (matplotlib's import included the first time)
    lang: str = "zh"  # the language the labels are in: "en" when asked for, or when no CJK font was found
    labels: tuple[str, ...] = ()  # the title, the series and the class labels, as drawn


@functools.lru_cache(maxsize=1)
def cjk_font() -> tuple[str, str] | None:
    """``(family, file)`` of an installed font that covers Chinese, or None. Asked once per process."""
    try:
        out = subprocess.run(
            ["fc-list", ":lang=zh", "family", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found: list[tuple[str, str]] = []
    for line in out.splitlines():  # "/path/font.ttf: Family,Other names"
        path, _, families = line.partition(": ")
        if path.lower().endswith((".ttf", ".otf", ".ttc")) and families:
            found.append((families.split(",")[0].strip(), path.strip()))
    if found:
        # a face that names itself SC / Simplified Chinese first, then fc-list's order
        found.sort(key=lambda f: (not any(k in f[0] for k in ("SC", "CN", "Hei", "Fallback")), f[0]))
        return found[0]
    from matplotlib import font_manager

    for family in CJK_FAMILIES:
        for entry in font_manager.fontManager.ttflist:
            if entry.name == family:
                return entry.name, entry.fname
    return None


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def render_accuracy(rows: Sequence[ClassAccuracy], *, days: int, lang: str = "zh") -> Chart:
    """A grouped bar chart of record, quantity and value accuracy per ABC class (blocking: call it through
    :func:`accuracy_chart`), labelled in ``lang``. Raises whatever matplotlib raises; the caller falls back to
    text."""
    started = time.perf_counter()
    with _DRAW:
        import matplotlib

        matplotlib.use("Agg")  # no display, ever (a no-op when it already is)
        from matplotlib import font_manager, rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        font = cjk_font() if lang == "zh" else None
        rc: dict[Any, Any] = {"axes.unicode_minus": False}  # matplotlib types the keys as literals
        if font is not None:
            family, path = font
            if family not in {f.name for f in font_manager.fontManager.ttflist}:
                font_manager.fontManager.addfont(path)
            rc["font.family"] = [family, "DejaVu Sans"]
        zh = font is not None
        series = (
            ("hit_rate", "记录准确率" if zh else "Record accuracy", "#2f6fde"),
            ("unit_accuracy", "数量准确率" if zh else "Quantity accuracy", "#3fb27f"),
            ("value_accuracy", "金额准确率" if zh else "Value accuracy", "#f0a030"),
        )
        with rc_context(rc):
            fig = Figure(figsize=(6.4, 3.6), dpi=150)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            width = 0.26
            for i, (attr, name, color) in enumerate(series):
                xs = [g + (i - 1) * width for g in range(len(rows))]
                values = [getattr(r, attr) for r in rows]
                bars = ax.bar(xs, [(v or 0) * 100 for v in values], width, label=name, color=color)
                for bar, v in zip(bars, values, strict=True):
                    if v is not None:
                        ax.annotate(f"{v * 100:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                    ha="center", va="bottom", fontsize=6, xytext=(0, 1),
                                    textcoords="offset points")  # fmt: skip
            for g, r in enumerate(rows):
                if r.counts == 0:
                    ax.text(g, 8, "无盘点" if zh else "no counts", ha="center", fontsize=8, color="#888888")
            total = "合计" if zh else "Total"
            cls = "{} 类" if zh else "Class {}"
            ticks = [f"{total if r.label == 'total' else cls.format(r.label)}\n(n={r.counts})" for r in rows]
            ax.set_xticks(range(len(rows)), ticks)
            ax.set_ylim(0, 112)
            ax.set_yticks([0, 25, 50, 75, 100], ["0", "25%", "50%", "75%", "100%"])
            title = (
                f"近 {days} 天库存记录准确率（按 ABC 分类）"
                if zh
                else f"Inventory record accuracy, last {days} days"
            )
            ax.set_title(title)
            ax.spines[["top", "right"]].set_visible(False)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
    labels = (title, *(name for _, name, _ in series), *ticks)
    return Chart(buf.getvalue(), font[0] if font else None, time.perf_counter() - started, "zh" if zh else "en",
                 labels)  # fmt: skip


async def accuracy_chart(rows: Sequence[ClassAccuracy], *, days: int, lang: str = "zh") -> Chart:
    """:func:`render_accuracy` in a worker thread."""
    chart = await asyncio.to_thread(render_accuracy, rows, days=days, lang=lang)
    log.info(
        "accuracy chart: %d bytes in %.0f ms (font %s)", len(chart.png), chart.seconds * 1000, chart.font
    )
    return chart


def accuracy_text(rows: Sequence[ClassAccuracy], *, days: int, lang: str = "zh") -> str:
    """The same figures as a short text: always sent, and all there is when the picture cannot be."""
    en = lang == "en"
    if en:
        lines = [f"Inventory record accuracy, last {days} days (by ABC class, first counts):"]
    else:
        lines = [f"近 {days} 天库存记录准确率（按 ABC 分类，首次盘点）："]
    for r in rows:
        total = r.label == "total"
        name = ("Total" if total else f"Class {r.label}") if en else ("合计" if total else f"{r.label} 类")
        if r.counts == 0:
            lines.append(f"{name}: no counts" if en else f"{name}：无盘点")
            continue
        hit, qty, value = _pct(r.hit_rate), _pct(r.unit_accuracy), _pct(r.value_accuracy)
        lines.append(
            f"{name}: {hit} ({r.hits}/{r.counts} within tolerance), quantity {qty}, value {value}"
            if en
            else f"{name}：{hit}（{r.hits}/{r.counts} 次在容差内），数量 {qty}，金额 {value}"
        )
    return "\n".join(lines)
