"""Benchmark: ``pandian import`` of N-row items, locations, stock and movements files, on SQLite and PostgreSQL.

For every database and repetition it

1. builds an empty schema with the migrations (not measured);
2. imports, each in a fresh subprocess, the four generated files in order: items, locations, stock,
   movements, and then the movements file again (``movements again``: nothing new, the idempotent path an ERP
   sync takes for lines it has already seen). A step is what ``pandian import`` does: ``import_file`` and, for
   movements that created something, ``reevaluate_open_variances``, then the commit. It records the wall time,
   the process's peak RSS, the report's counts and how many statements went to the database (executemany
   batches count once; their parameter sets are counted apart);
3. prints, per kind and database, the median of the repetitions, the PostgreSQL / SQLite ratio and the peak RSS.

The files (CSV, generated once from a seed) are shaped like an ERP export: items with barcodes (some two),
pack units and every tenth item lot-tracked; locations in four warehouses with zones; one stock row per
item-location, taken at a snapshot time, with a lot for lot-tracked items; movements spread over the
item-locations, about half of them before the snapshot (ledger only) and half after (they move the book).

``--profile KIND`` runs that kind once more under cProfile per database and prints the top functions.

    nice -n 10 .venv/bin/python bench/import.py --rows 100000 --db sqlite,postgresql \\
        --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench_import
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_import"
KINDS = ("items", "locations", "stock", "movements")
STEPS = (*KINDS, "movements again", "erp page")
TZ = "Asia/Shanghai"
SNAPSHOT = "2025-06-01 00:00"


# ------------------------------------------------------------------------------------------ files


def write_files(folder: Path, n: int, seed: int) -> dict[str, Path]:
    """Four CSV files of ``n`` data rows each (see the module docstring)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}-{n}.csv" for k in KINDS}
    lot_item = [i % 10 == 3 for i in range(n)]
    with paths["items"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["物料编码", "物料名称", "规格型号", "单位", "单价", "条码", "包装单位", "换算", "批次管理"]
        )
        for i in range(n):
            codes = f"69{i:011d}" + (f",69{i + 50_000_000:011d}" if i % 7 == 0 else "")
            pack = ("箱", 12 * (1 + i % 4)) if i % 5 == 0 else ("", "")
            w.writerow(
                [
                    f"SKU{i:07d}",
                    f"螺栓 M{6 + i % 20}×{10 + i % 90}",
                    f"GB/T {5780 + i % 50}",
                    "个",
                    f"{rng.uniform(0.1, 500):.2f}",
                    codes,
                    *pack,
                    "是" if lot_item[i] else "否",
                ]
            )
    per_wh = -(-n // 4)
    locs: list[tuple[str, str]] = []
    with paths["locations"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["仓库", "库位", "库区", "库位条码", "仓库名称"])
        for j in range(n):
            wh, k = f"W{j // per_wh + 1:02d}", j % per_wh
            code = f"{chr(65 + k // 5000 % 26)}-{k // 50 % 100:02d}-{k % 50 + 1}"
            code += f"-{k // 130000}" if k >= 130000 else ""
            locs.append((wh, code))
            w.writerow([wh, code, f"Z{k // 5000 % 26}", f"L{j:08d}", f"{wh} 仓"])
    with paths["stock"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["物料编码", "仓库", "库位", "数量", "批次", "时间"])
        for i in range(n):
            wh, code = locs[(i * 7919) % n]
            w.writerow(
                [f"SKU{i:07d}", wh, code, rng.randint(0, 500), "B2505" if lot_item[i] else "", SNAPSHOT]
            )
    types = ("入库", "出库", "生产领料", "调拨", "调整")
    with paths["movements"].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["物料编码", "仓库", "库位", "数量", "类型", "时间", "单据号", "批次"])
        for m in range(n):
            i = rng.randrange(n)
            wh, code = locs[(i * 7919) % n]
            typ = types[rng.randrange(5)]
            qty = rng.randint(1, 40) * (1 if typ == "入库" else -1)
            day, minute = 22 + rng.randrange(20), rng.randrange(600)
            when = f"2025-{5 + day // 31:02d}-{day % 31 + 1:02d} {8 + minute // 60:02d}:{minute % 60:02d}"
            w.writerow(
                [f"SKU{i:07d}", wh, code, qty, typ, when, f"DOC{m // 4:07d}", "B2505" if lot_item[i] else ""]
            )
    return paths


# ------------------------------------------------------------------------------------------ child side


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _imports() -> None:
    import core.db
    import core.importing
    import core.variance.service  # noqa: F401


async def _child_reset(url: str) -> dict[str, Any]:
    from core import migrate
    from core.db import make_engine

    engine = make_engine(url)
    try:
        await migrate.rebuild(engine)
    finally:
        await engine.dispose()
    return {}


def _head(path: str, n: int) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [r for _, r in zip(range(n + 1), csv.reader(f), strict=False)][1:]


async def _erp_lines(sm: Any, path: str, n: int) -> list[Any]:
    """The first ``n`` lines of the movements file as an ERP page: ids resolved, new import keys."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import select

    from core.importing import parse_datetime, parse_decimal, parse_movement_type
    from core.models import Item, Location, Warehouse
    from core.stock import MovementLine

    rows = _head(path, n)
    async with sm() as s:
        items = dict(tuple(r) for r in await s.execute(select(Item.sku, Item.id)))
        locs = {
            (w, c): i
            for w, c, i in await s.execute(
                select(Warehouse.code, Location.code, Location.id).join(
                    Warehouse, Warehouse.id == Location.warehouse_id
                )
            )
        }
    tag = time.time_ns()
    return [
        MovementLine(
            item_id=items[sku],
            location_id=locs[(wh, code)],
            item_location_id=0,  # filled in like the sync does, after ensure_item_locations
            qty=parse_decimal(qty),
            type=parse_movement_type(typ),
            occurred_at=parse_datetime(when, ZoneInfo(TZ)),
            source_doc=doc,
            import_key=f"erp:{tag}:{i}",
        )
        for i, (sku, wh, code, qty, typ, when, doc, _lot) in enumerate(rows)
    ]


async def _erp_page(s: Any, lines: list[Any]) -> int:
    """What ``integrations.erp.sync._write_movements`` does with a page once its codes are resolved."""
    from dataclasses import replace

    from core.stock import apply_movements, ensure_item_locations, item_location_ids

    pairs = {(ln.item_id, ln.location_id) for ln in lines}
    await ensure_item_locations(s, pairs)
    ils = await item_location_ids(s, pairs)
    lines = [replace(ln, item_location_id=ils[(ln.item_id, ln.location_id)]) for ln in lines]
    return int(await apply_movements(s, lines, recorded_at=datetime.now(UTC)))


async def _child_import(url: str, kind: str, path: str, profile: bool, erp_lines: int) -> dict[str, Any]:
    from sqlalchemy import event, text

    from core.config import load_settings
    from core.db import make_engine, make_sessionmaker
    from core.importing import ImportReport, import_file
    from core.variance.service import reevaluate_open_variances

    _imports()
    settings = load_settings(database_url=url, timezone=TZ)
    engine = make_engine(url)
    counts = {"statements": 0, "executemany_rows": 0}
    spent: dict[str, list[float]] = {}  # statement (first words) -> [calls, seconds]
    started: list[float] = []

    def count(_conn: Any, _cursor: Any, _stmt: Any, params: Any, _ctx: Any, executemany: bool) -> None:
        counts["statements"] += 1
        if executemany:
            counts["executemany_rows"] += len(params)
        started.append(time.perf_counter())

    def done(_conn: Any, _cursor: Any, stmt: Any, _params: Any, _ctx: Any, _many: bool) -> None:
        took = time.perf_counter() - started.pop() if started else 0.0
        key = " ".join(str(stmt).split())[:110]
        entry = spent.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += took

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    event.listen(engine.sync_engine, "after_cursor_execute", done)
    profiler = None
    try:
        sm = make_sessionmaker(engine)
        async with sm() as s:  # connect outside the measurement
            await s.execute(text("SELECT 1"))
        page = await _erp_lines(sm, path, erp_lines) if kind == "erp" else []
        counts["statements"] = 0
        spent.clear()
        rss_before = _peak_rss()
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            if kind == "erp":
                created = await _erp_page(s, page)
                report = ImportReport("erp", len(page), created, 0, len(page) - created)
            else:
                report = await import_file(s, Path(path), kind, tz=settings.tz, now=datetime.now(UTC))
            if report.kind in ("movements", "erp") and report.created:
                await reevaluate_open_variances(s, settings, datetime.now(UTC))
        seconds = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
    finally:
        await engine.dispose()
    out: dict[str, Any] = {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "rss_before": rss_before,
        "rows": report.rows,
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        **counts,
        "sql_seconds": sum(v[1] for v in spent.values()),
        "top_statements": sorted(([round(v[1], 3), v[0], k] for k, v in spent.items()), reverse=True)[:12],
    }
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(20)
        out["profile"] = buf.getvalue()
    return out


def _child(argv: list[str]) -> None:
    what, url, *rest = argv
    if what == "reset":
        out = asyncio.run(_child_reset(url))
    elif what == "import":
        kind, path, profile, erp_lines = rest
        out = asyncio.run(_child_import(url, kind, path, profile == "1", int(erp_lines)))
    else:
        raise SystemExit(f"unknown child step {what}")
    print("@@" + json.dumps(out, default=str))


# ------------------------------------------------------------------------------------------ parent side


def _run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            result: dict[str, Any] = json.loads(line[2:])
            return result
    raise RuntimeError(f"child {args[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _mb(n: float) -> str:
    return f"{n / 1024**2:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--erp-lines", type=int, default=10_000, help="lines in the ERP page step")
    ap.add_argument("--seed", type=int, default=20250601)
    ap.add_argument("--dir", default=None, help="where the files and the SQLite database go (default: temp)")
    ap.add_argument("--profile", choices=STEPS, help="run this step once more under cProfile, per database")
    ap.add_argument("--statements", action="store_true", help="list each step's slowest statements")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pandian-import-bench-"))
    t0 = time.perf_counter()
    files = write_files(folder, args.rows, args.seed)
    print(f"files: {args.rows:,} rows per kind in {folder} ({time.perf_counter() - t0:.1f} s)", flush=True)
    urls = {}
    for db in args.db.split(","):
        if db == "sqlite":
            urls[db] = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
        elif db == "postgresql":
            from bench.plan import ensure_pg_database  # one place creates a missing benchmark database

            ensure_pg_database(args.pg_url)
            urls[db] = args.pg_url
        else:
            raise SystemExit(f"unknown database {db}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {db: {s: [] for s in STEPS} for db in urls}

    def one_pass(db: str, url: str, profile_step: str | None = None) -> None:
        if db == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{folder / 'bench.db'}{suffix}").unlink(missing_ok=True)
        _run_child("reset", url)
        for step in STEPS:
            kind = "erp" if step == "erp page" else step.split()[0]
            prof = step == profile_step
            path = files["movements" if kind == "erp" else kind]
            r = _run_child("import", url, kind, str(path), "1" if prof else "0", str(args.erp_lines))
            if profile_step is None:
                results[db][step].append(r)
                print(
                    f"  {db:<10} {step:<16} {r['seconds']:7.2f} s  peak {_mb(r['peak_rss'])} MB  "
                    f"created {r['created']} updated {r['updated']} unchanged {r['unchanged']}  "
                    f"statements {r['statements']} (+{r['executemany_rows']} executemany rows)",
                    flush=True,
                )
            elif prof:
                print(f"\n==== cProfile: {db} {step} ({r['seconds']:.2f} s) ====\n{r['profile']}", flush=True)
            if step == profile_step or (profile_step is None and args.statements):
                print(f"     database calls {r['sql_seconds']:.2f} s; slowest statements (seconds, calls):")
                for secs, calls, text in r["top_statements"]:
                    print(f"       {secs:7.3f} {calls:5d}  {text}")

    for rep in range(args.repeat):
        for db, url in urls.items():
            print(f"repetition {rep + 1}/{args.repeat}: {db}", flush=True)
            one_pass(db, url)
    if args.profile:
        for db, url in urls.items():
            one_pass(db, url, args.profile)

    print(f"\n{args.rows:,} rows per file, median of {args.repeat} (seconds; peak RSS in MB)")
    dbs = list(urls)
    head = f"{'kind':<16}" + "".join(f"{db + ' s':>14}{'MB':>6}" for db in dbs)
    if len(dbs) == 2:
        head += f"{'ratio':>8}"
    print(head)
    for step in STEPS:
        line = f"{step:<16}"
        med = {}
        for db in dbs:
            runs = results[db][step]
            med[db] = statistics.median(r["seconds"] for r in runs)
            line += f"{med[db]:>14.2f}{_mb(max(r['peak_rss'] for r in runs)):>6}"
        if len(dbs) == 2:
            line += f"{med[dbs[1]] / med[dbs[0]]:>7.1f}×"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
