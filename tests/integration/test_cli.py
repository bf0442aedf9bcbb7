"""The pandian command line against the suite's database."""

from __future__ import annotations

import asyncio
import json
from datetime import date

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cli import main
from core.db import make_engine, make_sessionmaker
from core.models import ClassChange, CountTask, Item, Movement
from tests.clock import local
from tests.integration.builders import build_company
from tests.integration.pinned_cli import PinnedCli


def seed(url: str, **kw: object) -> None:
    async def go() -> None:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            await build_company(s, **kw)  # type: ignore[arg-type]
            await s.commit()
        await eng.dispose()

    asyncio.run(go())


def scalar(url: str, stmt: object) -> int:
    async def go() -> int:
        eng = make_engine(url)
        async with eng.connect() as c:
            v = (await c.execute(stmt)).scalar_one()  # type: ignore[call-overload]
        await eng.dispose()
        return int(v)

    return asyncio.run(go())


@pytest.fixture
def cli(engine: AsyncEngine, database_url: str) -> CliRunner:
    """The command line at 09:00 on Monday 2026-11-30 (never the wall clock)."""
    return PinnedCli(local(date(2026, 11, 30), 9, 0), env={"PANDIAN_DATABASE_URL": database_url})


def test_plan_json_fields_and_dry_run(cli: CliRunner, database_url: str) -> None:
    seed(database_url, items=20, classes="AB")
    dry = cli.invoke(main, ["plan", "--date", "2026-11-30", "--dry-run", "--format", "json"])
    assert dry.exit_code == 0, dry.output
    tasks = json.loads(dry.stdout)
    assert tasks and set(tasks[0]) >= {
        "date",
        "warehouse",
        "location",
        "sku",
        "abc_class",
        "reason",
        "assignee",
        "priority",
    }
    assert scalar(database_url, select(func.count()).select_from(CountTask)) == 0  # dry run saved nothing
    real = cli.invoke(main, ["plan", "--date", "2026-11-30", "--format", "json"])
    assert json.loads(real.stdout) == tasks
    assert scalar(database_url, select(func.count()).select_from(CountTask)) == len(tasks)
    table = cli.invoke(main, ["plan", "--date", "2026-11-30"])
    assert table.exit_code == 0 and "盘点计划" in table.output and "新建 0" in table.output


def test_plan_bad_input(cli: CliRunner, database_url: str) -> None:
    seed(database_url, items=3)
    r = cli.invoke(main, ["plan", "--date", "30/11/2026"])
    assert r.exit_code != 0 and "YYYY-MM-DD" in r.output
    r = cli.invoke(main, ["plan", "--date", "2026-11-30", "--warehouse", "NOPE"])
    assert r.exit_code == 1 and "NOPE" in r.output and "WH1" in r.output
    holiday = cli.invoke(main, ["plan", "--date", "2026-10-01"])
    assert holiday.exit_code == 0 and "不是工作日" in holiday.output


def test_classify_prints_summary_and_history(cli: CliRunner, database_url: str) -> None:
    seed(database_url, items=10)
    r = cli.invoke(main, ["classify", "--as-of", "2026-11-27"])
    assert r.exit_code == 0, r.output
    assert "ABC 分类" in r.output and "% value" in r.output
    assert scalar(database_url, select(func.count()).select_from(ClassChange)) == 10
    again = cli.invoke(main, ["classify", "--as-of", "2026-11-27"])
    assert "类别变化 0" in again.output


def test_bad_configuration_is_reported(database_url: str) -> None:
    at = local(date(2026, 11, 30), 9, 0)
    r = PinnedCli(at, env={"PANDIAN_DATABASE_URL": "mysql://x@localhost/db"}).invoke(main, ["plan"])
    assert r.exit_code != 0 and "PostgreSQL" in str(r.exception or r.output)
    r = PinnedCli(at, env={"PANDIAN_TIMEZONE": "Mars/Olympus"}).invoke(main, ["plan"])
    assert r.exit_code != 0 and "配置错误" in r.output


def test_ledger_untouched_by_plan(cli: CliRunner, database_url: str) -> None:
    seed(database_url, items=5)
    cli.invoke(main, ["plan", "--date", date(2026, 11, 30).isoformat()])
    assert scalar(database_url, select(func.count()).select_from(Movement)) == 0


def test_import_command(cli: CliRunner, database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    locs = tmp_path / "库位.csv"
    locs.write_bytes(
        "仓库,库位,库位条码,库区\nSH01,A-01-01,LOC-A0101,A\nSH01,A-01-02,LOC-A0102,A\n".encode("gbk")
    )
    ok = cli.invoke(main, ["import", str(locs)])
    assert ok.exit_code == 0, ok.output
    assert "locations" in ok.output and "2 created" in ok.output
    again = cli.invoke(main, ["import", str(locs)])
    assert "0 created, 0 updated, 2 unchanged" in again.output
    bad = tmp_path / "items.csv"
    bad.write_text("物料编码,物料名称,单价\nSKU1,螺栓,1.5\nSKU2,螺母,abc\n", encoding="utf-8")
    r = cli.invoke(main, ["import", str(bad), "--kind", "items"])
    assert r.exit_code == 1
    assert "items.csv" in r.output and "第 3 行" in r.output and "单价" in r.output and "row 3" in r.output
    assert scalar(database_url, select(func.count()).select_from(Item)) == 0  # all or nothing


def test_serve_migrates_in_a_child_and_answers_health(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``pandian serve`` as an admin starts it: the schema is upgraded by a child process (Alembic stays
    out of the server), then /healthz answers and /metrics shows the dispatcher; SIGTERM stops it cleanly."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PANDIAN_DATABASE_URL": database_url, "PANDIAN_SCHEDULE__ENABLED": "false"}
    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('ALEMBIC', 'alembic' in sys.modules, file=sys.stderr, flush=True))\n"
        "from bot.cli import main\n"
        f"main(['serve', '--port', '{port}'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        body = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = json.loads(resp.read())
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
        assert body is not None and body["ok"] is True and body["database"] == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            assert "pandian_dispatch_backlog 0" in resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert "schema at revision" in out
    assert "ALEMBIC False" in err, err
