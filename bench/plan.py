"""Benchmark: planning one day for 10k, 100k and 1,000,000 item-locations, on SQLite and PostgreSQL.

For every database and size it

1. builds the demo company with exactly that many item-locations (``core.demo.bulk_item_locations``), classifies
   it (``core.classification_service.classify``, or a value-rank fallback of A 10% / B 20% / C 70% when that is
   missing), and runs ANALYZE / VACUUM ANALYZE. None of this is measured;
2. measures, each in a fresh subprocess: an idle process that imported the same modules (the memory
   baseline); ``plan_day`` plus its commit (wall time, the process's peak RSS); a re-plan of the same day
   (idempotent: should create nothing);
3. measures the floor: one ``INSERT INTO count_task (...) SELECT ... FROM item_location ...`` writing as many
   task rows as the plan created, plus its commit, on the same database;
4. prints the figures, the time per item-location at each size, the growth ratios and the targets
   (1M item-locations planned in under 15 s with peak memory under 1 GB, linear growth).

    .venv/bin/python bench/plan.py --sizes 10000,100000,1000000 --db sqlite,postgresql \\
        --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DAY = date(2026, 11, 30)  # a Monday, a working day in China
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"
TARGET_SECONDS = 15.0
TARGET_BYTES = 1024**3


# ------------------------------------------------------------------------------------------ child side


def _import_planning() -> tuple[Any, Any, str | None]:
    """The modules a planning process needs; (plan_day, classify, why-not) with None for what is missing."""
    import core.config
    import core.db
    import core.models  # noqa: F401

    plan_day = classify = None
    missing = []
    try:
        from core.scheduling.service import plan_day
    except ImportError as exc:
        missing.append(f"planner: {exc}")
    try:
        from core.classification_service import classify
    except ImportError as exc:
        missing.append(f"classification: {exc}")
    return plan_day, classify, "; ".join(missing) or None


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _settings(url: str) -> Any:
    from core.config import load_settings

    return load_settings(database_url=url)


async def _child_setup(url: str, size: int, day: date, seed: int, mpi: float) -> dict[str, Any]:
    from sqlalchemy import text

    from core.db import make_engine, make_sessionmaker
    from core.demo import bulk_item_locations
    from core.models import Base

    _plan_day, classify, missing = _import_planning()
    settings = _settings(url)
    engine = make_engine(url)
    out: dict[str, Any] = {}
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            await conn.run_sync(Base.metadata.create_all)
        sm = make_sessionmaker(engine)
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            summary = await bulk_item_locations(
                s, size, seed=seed, today=day, tz=settings.tz, movements_per_item=mpi
            )
        out["generate_s"] = time.perf_counter() - t0
        out["summary"] = {k: getattr(summary, k) for k in summary.__slots__}
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            if classify is not None:
                await classify(s, settings, as_of=day - timedelta(days=1), now=datetime.now(UTC))
                out["classified_by"] = "core.classification_service.classify"
            else:
                await _fallback_classes(s, day, settings)
                out["classified_by"] = f"fallback value rank ({missing})"
        out["classify_s"] = time.perf_counter() - t0
        async with sm() as s:
            mix = (await s.execute(text("SELECT abc_class, count(*) FROM item GROUP BY abc_class"))).all()
        out["class_mix"] = {c: n for c, n in mix}
        t0 = time.perf_counter()
        if engine.dialect.name == "postgresql":
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM ANALYZE")
        else:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
            async with engine.connect() as conn:
                # outside a transaction: core.db begins every SQLite transaction (BEGIN IMMEDIATE), and a
                # checkpoint inside one fails with "database table is locked" (SQLAlchemy 2.1, aiosqlite 0.22)
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        out["analyze_s"] = time.perf_counter() - t0
    finally:
        await engine.dispose()
    return out


async def _fallback_classes(session: Any, day: date, settings: Any) -> None:
    """A 10% / B 20% / C 70% of items by count, ranked by consumption value over the last year."""
    from datetime import time as dtime

    from sqlalchemy import func, select, update

    from core.models import CONSUMPTION_TYPES, Item, Movement

    end = datetime.combine(day, dtime(0), settings.tz)
    value = func.coalesce(func.sum(-Movement.qty * Item.unit_cost), 0)
    rows = await session.execute(
        select(Item.id, value)
        .outerjoin(
            Movement,
            (Movement.item_id == Item.id)
            & Movement.type.in_(CONSUMPTION_TYPES)
            & (Movement.occurred_at >= end - timedelta(days=365))
            & (Movement.occurred_at < end),
        )
        .group_by(Item.id)
    )
    ranked = [i for i, _v in sorted(rows, key=lambda r: (-float(r[1] or 0), r[0]))]
    n = len(ranked)
    for cls, ids in (("A", ranked[: n // 10]), ("B", ranked[n // 10 : n * 3 // 10])):
        for i in range(0, len(ids), 5000):
            await session.execute(update(Item).where(Item.id.in_(ids[i : i + 5000])).values(abc_class=cls))


async def _child_plan(url: str, day: date) -> dict[str, Any]:
    from sqlalchemy import text

    from core.db import make_engine, make_sessionmaker

    plan_day, _classify, missing = _import_planning()
    if plan_day is None:
        return {"error": f"planner not available: {missing}"}
    settings = _settings(url)
    engine = make_engine(url)
    try:
        sm = make_sessionmaker(engine)
        async with sm() as s:  # connect outside the measurement
            await s.execute(text("SELECT 1"))
        rss_before = _peak_rss()
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            result = await plan_day(s, settings, day, now=datetime.now(UTC))
        seconds = time.perf_counter() - t0
        peak = _peak_rss()
        out = {
            "seconds": seconds,
            "created": result.created,
            "listed": len(result.tasks),
            "by_reason": result.by_reason,
            "by_class": result.by_class,
            "unassigned": result.unassigned,
            "warnings": result.warnings[:3],
            "peak_rss": peak,
            "rss_before": rss_before,
        }
        del result
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            again = await plan_day(s, settings, day, now=datetime.now(UTC))
        out["replan_seconds"] = time.perf_counter() - t0
        out["replan_created"] = again.created
    finally:
        await engine.dispose()
    return out


FLOOR_SQL = """
INSERT INTO count_task (plan_date, due_date, warehouse_id, location_id, item_id, item_location_id, abc_class,
                        reason, priority, status, est_minutes, cycle_key, overdue, created_at)
SELECT :day, :day, il.warehouse_id, il.location_id, il.item_id, il.id, i.abc_class,
       'rotation', 5, 'open', 3.0, 'floor', :no, :now
FROM item_location il JOIN item i ON i.id = il.item_id
ORDER BY il.warehouse_id, il.rotation_seq
LIMIT :n
"""


async def _child_floor(url: str, day: date, n: int) -> dict[str, Any]:
    from sqlalchemy import Boolean, Date, Integer, bindparam, text

    from core.db import make_engine, make_sessionmaker
    from core.models import UTCDateTime

    _import_planning()
    engine = make_engine(url)
    stmt = text(FLOOR_SQL).bindparams(
        bindparam("day", type_=Date),
        bindparam("no", type_=Boolean),
        bindparam("now", type_=UTCDateTime()),
        bindparam("n", type_=Integer),
    )
    try:
        sm = make_sessionmaker(engine)
        async with sm() as s:
            await s.execute(text("SELECT 1"))
        t0 = time.perf_counter()
        async with sm() as s, s.begin():
            res = await s.execute(stmt, {"day": day, "no": False, "now": datetime.now(UTC), "n": n})
            rows = res.rowcount  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t0
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows": rows, "peak_rss": _peak_rss()}


async def _child_probe(url: str) -> dict[str, Any]:
    """How many item-locations the database holds (None when it has no schema yet)."""
    from sqlalchemy import text

    from core.db import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            n = (await conn.execute(text("SELECT count(*) FROM item_location"))).scalar_one()
            classified = (
                await conn.execute(text("SELECT count(*) FROM item WHERE abc_class <> 'C'"))
            ).scalar_one()
    except Exception:
        return {"item_locations": None}
    finally:
        await engine.dispose()
    return {"item_locations": n, "classified": classified}


async def _child_reset(url: str) -> dict[str, Any]:
    from sqlalchemy import text

    from core.db import make_engine

    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM count_task"))
            await conn.execute(text("DELETE FROM plan_run"))
            await conn.execute(
                text(
                    "UPDATE item_location SET last_rotation_cycle = NULL, last_planned_on = NULL "
                    "WHERE last_rotation_cycle IS NOT NULL OR last_planned_on IS NOT NULL"
                )
            )
        if engine.dialect.name == "postgresql":
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM ANALYZE count_task")
                await conn.exec_driver_sql("VACUUM ANALYZE item_location")
        else:
            async with engine.connect() as conn:
                # outside a transaction: core.db begins every SQLite transaction (BEGIN IMMEDIATE), and a
                # checkpoint inside one fails with "database table is locked" (SQLAlchemy 2.1, aiosqlite 0.22)
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await engine.dispose()
    return {}


def _child_baseline() -> dict[str, Any]:
    _import_planning()
    import aiosqlite  # noqa: F401
    import asyncpg  # noqa: F401

    return {"peak_rss": _peak_rss()}


def _child_main(kind: str, spec: dict[str, Any]) -> None:
    day = date.fromisoformat(spec.get("day", DEFAULT_DAY.isoformat()))
    if kind == "baseline":
        out = _child_baseline()
    elif kind == "setup":
        out = asyncio.run(_child_setup(spec["url"], spec["size"], day, spec["seed"], spec["mpi"]))
    elif kind == "plan":
        out = asyncio.run(_child_plan(spec["url"], day))
    elif kind == "floor":
        out = asyncio.run(_child_floor(spec["url"], day, spec["n"]))
    elif kind == "probe":
        out = asyncio.run(_child_probe(spec["url"]))
    elif kind == "reset":
        out = asyncio.run(_child_reset(spec["url"]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print("RESULT " + json.dumps(out, default=str), flush=True)


# ------------------------------------------------------------------------------------------ parent side


def _run(kind: str, **spec: Any) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec, default=str)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def ensure_pg_database(url: str) -> None:
    from sqlalchemy.engine import make_url

    from core.db import make_engine, normalise_url

    u = make_url(normalise_url(url))
    name = u.database

    async def go() -> None:
        admin = make_engine(
            u.set(database="test").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
        )
        try:
            async with admin.connect() as conn:
                exists = await conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
                if exists.first() is None:
                    await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            await admin.dispose()

    asyncio.run(go())


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, with every run's time and the highest peak memory."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    out["peak_rss"] = max(r["peak_rss"] for r in runs)
    return out


@dataclass
class Measure:
    db: str
    size: int
    setup: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)
    baseline: int = 0


def _mb(b: float) -> str:
    return f"{b / 1024**2:,.0f}"


def _report(results: list[Measure]) -> None:
    print()
    head = (
        f"{'db':<10} {'item-loc':>9} {'tasks':>7} {'plan s':>7} {'µs/IL':>6} {'peak MB':>8} {'base MB':>8} "
        f"{'Δ MB':>6} {'floor s':>8} {'plan/floor':>10} {'re-plan s':>9}"
    )
    print(head)
    print("-" * len(head))
    for m in results:
        p = m.plan
        if "error" in p:
            print(f"{m.db:<10} {m.size:>9,} {p['error']}")
            continue
        f = m.floor
        print(
            f"{m.db:<10} {m.size:>9,} {p['created']:>7,} {p['seconds']:>7.2f} {p['seconds'] / m.size * 1e6:>6.1f} "
            f"{_mb(p['peak_rss']):>8} {_mb(m.baseline):>8} {_mb(p['peak_rss'] - m.baseline):>6} "
            f"{f.get('seconds', float('nan')):>8.3f} "
            f"{p['seconds'] / f['seconds'] if f.get('seconds') else float('nan'):>10.1f} "
            f"{p.get('replan_seconds', float('nan')):>9.2f}"
        )
    print()
    for db in dict.fromkeys(m.db for m in results):
        rows = {m.size: m for m in results if m.db == db and "seconds" in m.plan}
        sizes = sorted(rows)
        for a, b in itertools.pairwise(sizes):
            ta, tb = rows[a].plan["seconds"], rows[b].plan["seconds"]
            print(
                f"{db}: plan time {b:,}/{a:,} = {tb / ta:.1f}× for {b / a:.0f}× the item-locations "
                f"(per item-location {tb / b / (ta / a):.2f}×; 1.00 is linear)"
            )
        big = [m for m in rows.values() if m.size >= 1_000_000]
        for m in big:
            ok_t = m.plan["seconds"] < TARGET_SECONDS
            ok_m = m.plan["peak_rss"] < TARGET_BYTES
            print(
                f"{db}: {m.size:,} planned in {m.plan['seconds']:.1f} s ({'OK' if ok_t else 'MISSED'} < 15 s), "
                f"peak {_mb(m.plan['peak_rss'])} MB ({'OK' if ok_m else 'MISSED'} < 1024 MB)"
            )
    print()
    for m in results:
        s, p = m.setup, m.plan
        if "all_seconds" in p and len(p["all_seconds"]) > 1:
            print(
                f"{m.db} {m.size:,}: plan runs {p['all_seconds']} s, floor runs {m.floor.get('all_seconds')} s"
            )
        if s.get("reused"):
            print(
                f"{m.db} {m.size:,}: data reused; reasons {p.get('by_reason')}; re-plan created {p.get('replan_created')}"
            )
            continue
        print(
            f"{m.db} {m.size:,}: setup generate {s.get('generate_s', 0):.1f} s, classify {s.get('classify_s', 0):.1f} s "
            f"({s.get('classified_by')}), analyze {s.get('analyze_s', 0):.1f} s; classes {s.get('class_mix')}; "
            f"reasons {p.get('by_reason')}; re-plan created {p.get('replan_created')}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--sqlite-dir", default=None, help="where the SQLite files go (default: a temporary dir)")
    ap.add_argument(
        "--day", default=DEFAULT_DAY.isoformat(), help="the day planned (data ends the day before)"
    )
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument(
        "--movements-per-item",
        type=float,
        default=1.0,
        help="ledger rows per item-location besides the opening receipt (set-up cost only)",
    )
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument(
        "--repeat", type=int, default=1, help="measure plan and floor this many times; report the median"
    )
    ap.add_argument(
        "--reuse-data",
        action="store_true",
        help="keep a database that already holds exactly that many classified item-locations",
    )
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child_main(args.child[0], json.loads(args.child[1]))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    _plan, _cls, missing = _import_planning()
    if _plan is None:
        print(
            f"注意 / note: {missing}. Only the floor is measured; classes come from the value-rank fallback."
        )
    tmp = Path(args.sqlite_dir or tempfile.mkdtemp(prefix="pandian-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    baseline = _run("baseline")["peak_rss"]
    results: list[Measure] = []
    for db in dbs:
        if db == "postgresql":
            ensure_pg_database(args.pg_url)
        for size in sizes:
            if db == "sqlite":
                path = tmp / f"bench-{size}.db"
                url = f"sqlite+aiosqlite:///{path}"
            elif db == "postgresql":
                url = args.pg_url
            else:
                raise SystemExit(f"unknown database {db!r}; use sqlite and/or postgresql")
            m = Measure(db, size, baseline=baseline)
            have = _run("probe", url=url) if args.reuse_data else {}
            if have.get("item_locations") == size and have.get("classified"):
                _run("reset", url=url)
                m.setup = {"reused": True}
                print(f"[{db} {size:,}] reusing the data already there", flush=True)
            else:
                if db == "sqlite":
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                print(f"[{db} {size:,}] setting up …", flush=True)
                m.setup = _run(
                    "setup", url=url, size=size, day=args.day, seed=args.seed, mpi=args.movements_per_item
                )
                print(
                    f"[{db} {size:,}] set up in {m.setup['generate_s']:.1f} s: {m.setup['summary']}",
                    flush=True,
                )
            n = round(size * 0.05)  # without a planner: a typical day, about 5% of item-locations
            m.plan = {"error": "planner not available"}
            if _plan is not None:
                runs = []
                for _ in range(args.repeat):
                    runs.append(_run("plan", url=url, day=args.day))
                    _run("reset", url=url)
                    print(
                        f"[{db} {size:,}] plan {runs[-1]['seconds']:.2f} s, {runs[-1]['created']:,} tasks",
                        flush=True,
                    )
                m.plan = _median(runs)
                n = m.plan["created"]
            if n:
                floors = []
                for _ in range(args.repeat):
                    floors.append(_run("floor", url=url, day=args.day, n=n))
                    _run("reset", url=url)
                    print(
                        f"[{db} {size:,}] floor {floors[-1]['seconds']:.3f} s for {floors[-1]['rows']:,} rows",
                        flush=True,
                    )
                m.floor = _median(floors)
            results.append(m)
            if db == "sqlite" and not args.sqlite_dir:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    _report(results)
    if args.json:
        Path(args.json).write_text(json.dumps([m.__dict__ for m in results], indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
