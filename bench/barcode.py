"""Benchmark of integrations.barcode on the real photo set.

    .venv/bin/python bench/barcode.py [DIR] [--frames12mp] [--ablation] [--pool] [--misses] [--cpu-clock]
                                      [--json FILE]

DIR defaults to ../shared/barcode-photos (found from the project root). Per symbology and in total it
prints: read (the truth is among the codes returned), certain (returned as certain), wrong (a code
returned as certain that differs from the truth), median and p95 ms per image. ``--frames12mp`` also
runs over 12-megapixel versions: each photo upscaled into a 4000x3000 busy frame, saved as JPEG like a
phone does. ``--ablation`` runs the chain step by step. ``--pool`` compares thread and process pools.
``--cpu-clock`` measures (and budgets) in CPU time, for comparing runs while other work loads the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

import integrations.barcode as barcode_module  # noqa: E402
from integrations.barcode import (  # noqa: E402
    GS,
    BarcodeReader,
    Code,
    Steps,
    decode_image_bytes,
)

DEFAULT_DIR = ROOT.parent / "shared" / "barcode-photos"
RETAIL = {"ean13", "ean8", "upca", "upce"}
MATRIX = {"qrcode", "datamatrix"}


@dataclass
class Sample:
    symbology: str
    name: str
    data: bytes
    truth: bytes


def load(directory: Path) -> list[Sample]:
    errata: dict[str, str] = {}
    if (directory / "errata.csv").exists():
        with open(directory / "errata.csv", newline="") as f:
            errata = {r["image"]: r["corrected_expected"] for r in csv.DictReader(f)}
    out = []
    with open(directory / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            truth = (directory / r["expected"]).read_bytes()
            if r["image"] in errata:
                truth = errata[r["image"]].encode()
            out.append(Sample(r["symbology"], r["image"], (directory / r["image"]).read_bytes(), truth))
    return out


def same(code: Code, sample: Sample) -> bool:
    truth = sample.truth
    if sample.symbology in RETAIL or sample.symbology == "itf":
        return code.text == truth.decode().strip()
    if not _is_utf8(truth):  # binary payloads (.bin truths)
        return code.text.encode("latin-1", "replace") == truth or code.text.encode() == truth
    want = truth.decode("utf-8")
    return code.text.replace(GS, "").strip() == want.replace(GS, "").strip()


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def frame12mp(sample: Sample, seed: int) -> bytes:
    """The photo scaled up into a 4000x3000 frame with a busy background, as a phone JPEG."""
    rnd = random.Random(seed)
    frame = Image.new("RGB", (4000, 3000), (rnd.randint(90, 200),) * 3)
    draw = ImageDraw.Draw(frame)
    for _ in range(300):  # clutter: boxes, lines and text-like strokes
        x, y = rnd.randint(0, 3999), rnd.randint(0, 2999)
        color = tuple(rnd.randint(0, 255) for _ in range(3))
        if rnd.random() < 0.5:
            draw.rectangle((x, y, x + rnd.randint(20, 500), y + rnd.randint(20, 400)), outline=color, width=6)
        else:
            draw.line((x, y, x + rnd.randint(-600, 600), y + rnd.randint(-600, 600)), fill=color, width=4)
    photo = Image.open(io.BytesIO(sample.data)).convert("RGB")
    scale = min(2000 / photo.width, 1500 / photo.height) * rnd.uniform(0.7, 1.0)
    photo = photo.resize((int(photo.width * scale), int(photo.height * scale)), Image.Resampling.BICUBIC)
    photo = photo.filter(ImageFilter.GaussianBlur(1.0))
    frame.paste(photo, (rnd.randint(0, 4000 - photo.width), rnd.randint(0, 3000 - photo.height)))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def run(samples: list[Sample], steps: Steps, misses: list[str] | None = None) -> dict[str, dict[str, float]]:
    per: dict[str, list[tuple[bool, bool, bool, float]]] = defaultdict(list)
    for s in samples:
        res = decode_image_bytes(s.data, steps)
        read = any(same(c, s) for c in res.codes)
        certain = any(c.certain and same(c, s) for c in res.codes)
        # A second, different matrix code in a photo whose truth was read (qrcode-2_16 holds two QR codes)
        # is another code, not a misread; any other certain code that differs from the truth is wrong.
        wrong = any(
            c.certain and not same(c, s) and not (certain and c.symbology in MATRIX) for c in res.codes
        )
        per[s.symbology].append((read, certain, wrong, res.elapsed_ms))
        if misses is not None and not certain:
            got = ", ".join(f"{c.symbology}:{c.text!r}{'' if c.certain else '?'}" for c in res.codes)
            misses.append(f"{s.name:<40} {'read' if read else 'MISS':<5} {res.elapsed_ms:7.1f} ms  {got}")
    per["TOTAL"] = [row for k in sorted(per) for row in per[k]]
    table = {}
    for sym, rows in per.items():
        ms = sorted(r[3] for r in rows)
        table[sym] = {
            "images": len(rows),
            "read_pct": 100 * sum(r[0] for r in rows) / len(rows),
            "certain_pct": 100 * sum(r[1] for r in rows) / len(rows),
            "wrong": sum(r[2] for r in rows),
            "median_ms": statistics.median(ms),
            "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        }
    return table


def show(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(
        f"{'symbology':<11}{'images':>7}{'read %':>8}{'certain %':>10}{'wrong':>6}{'med ms':>8}{'p95 ms':>8}"
    )
    for sym, r in table.items():
        print(
            f"{sym:<11}{r['images']:>7}{r['read_pct']:>8.1f}{r['certain_pct']:>10.1f}"
            f"{r['wrong']:>6}{r['median_ms']:>8.1f}{r['p95_ms']:>8.1f}"
        )


_NONE = {"pyzbar": False, "retry": False, "rectify": False, "deblur": False}
_CUMULATIVE = [
    ("zxing-cpp alone", Steps(**_NONE)),
    ("+ pyzbar", Steps(**{**_NONE, "pyzbar": True})),
    ("+ retry chain (rotations, 2x, contrast, sharp, blur)", Steps(rectify=False, deblur=False)),
    ("+ rectify located QR/DM", Steps(deblur=False)),
    ("+ deblur copies (the shipped chain)", Steps()),
]
# (title, steps, module constants to change for the run)
ABLATION: list[tuple[str, Steps, dict[str, float]]] = [
    *[(f"{t} | every read taken", replace(s, policy=False), {}) for t, s in _CUMULATIVE],
    *[(f"{t} | certainty policy", s, {}) for t, s in _CUMULATIVE],
    ("shipped chain without the line-support rule", Steps(), {"MIN_LINE_SUPPORT": 0.0}),
]


def run_patched(samples: list[Sample], steps: Steps, patch: dict[str, float]) -> dict[str, dict[str, float]]:
    saved = {k: getattr(barcode_module, k) for k in patch}
    try:
        for k, v in patch.items():
            setattr(barcode_module, k, v)
        return run(samples, steps)
    finally:
        for k, v in saved.items():
            setattr(barcode_module, k, v)


def show_summary(title: str, tables: dict[str, dict[str, dict[str, float]]]) -> None:
    """One line per configuration: the totals, then the read % of each symbology."""
    syms = [k for k in next(iter(tables.values())) if k != "TOTAL"]
    print(f"\n{title}")
    head = f"{'configuration':<70}{'read %':>7}{'cert %':>7}{'wrong':>6}{'med ms':>7}{'p95 ms':>7}  "
    print(head + "".join(f"{s[:6]:>7}" for s in syms))
    for name, t in tables.items():
        r = t["TOTAL"]
        line = (
            f"{name:<70}{r['read_pct']:>7.1f}{r['certain_pct']:>7.1f}{r['wrong']:>6}"
            f"{r['median_ms']:>7.1f}{r['p95_ms']:>7.1f}  "
        )
        print(line + "".join(f"{t[s]['read_pct']:>7.1f}" for s in syms))


async def pool_compare(samples: list[Sample]) -> dict[str, float]:
    out = {}
    for kind in ("thread", "process"):
        async with BarcodeReader(2, executor=kind) as reader:
            await reader.decode(samples[0].data)  # start the workers
            t = time.perf_counter()
            await asyncio.gather(*(reader.decode(s.data) for s in samples))
            out[kind] = (time.perf_counter() - t) * 1000 / len(samples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--frames12mp", action="store_true", help="also run over 12 MP frames")
    ap.add_argument("--frames-limit", type=int, default=0, help="only the first N 12 MP frames (0: all)")
    ap.add_argument("--ablation", action="store_true", help="run each step of the chain on its own")
    ap.add_argument("--pool", action="store_true", help="compare thread and process pools (2 workers)")
    ap.add_argument("--misses", action="store_true", help="list the images not read as certain")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time budgets and figures in this process's CPU time: comparable while other work loads the "
        "machine (on an idle machine it equals wall-clock time; the decoder is single-threaded here)",
    )
    args = ap.parse_args()
    if args.cpu_clock:
        barcode_module.time = SimpleNamespace(perf_counter=time.process_time)  # type: ignore[assignment]

    samples = load(args.directory)
    report: dict[str, object] = {}
    if args.ablation:
        tables = {title: run_patched(samples, steps, patch) for title, steps, patch in ABLATION}
        show_summary("ablation on the photo set (read % per symbology on the right)", tables)
        report["ablation"] = tables
    else:
        misses: list[str] = []
        table = run(samples, Steps(), misses)
        show("photo set, shipped chain", table)
        if args.misses:
            print("\nnot certain (MISS: truth not returned; ?: returned as uncertain):")
            print("\n".join(misses))
        report["photo set"] = table
    if args.frames12mp:
        chosen = samples[: args.frames_limit] if args.frames_limit else samples
        frames = [Sample(s.symbology, s.name, frame12mp(s, i), s.truth) for i, s in enumerate(chosen)]
        table = run(frames, Steps())
        show("12 MP frames, shipped chain", table)
        report["12 MP frames"] = table
    if args.pool:
        per_image = asyncio.run(pool_compare(samples))
        print("\npool, 2 workers, ms per image (wall clock over the set):", per_image)
        report["pool"] = per_image
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
