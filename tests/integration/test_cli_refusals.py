"""Every verb of the command line answers bad input with one bilingual line and an exit code, never a traceback,
and a refusal changes nothing (issue 10, §2: ``resolve`` without a side closed a 290,929 元 dispute)."""

from __future__ import annotations

import asyncio
import re
from datetime import date

from click.testing import Result
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import make_engine, make_sessionmaker
from core.enums import TaskStatus
from core.models import AuditEvent, CountRequest, CountTask, User, Variance, Warehouse
from core.variance.workflow import VarianceState
from tests.clock import local
from tests.integration.builders import build_company
from tests.integration.pinned_cli import PinnedCli, query, recount_of

DAY = date(2026, 11, 30)
NOW = local(DAY, 11, 0)
CJK = re.compile(r"[\u4e00-\u9fff]")
# codes that must never show in the Chinese half of a message
CODES = {s.value for s in VarianceState if s is not VarianceState.OPEN} | {"in_progress", "done", "cancelled"}


def seed(url: str) -> None:
    async def go() -> None:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            co = await build_company(s, items=10, counters=2)
            s.add(User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=co.teams[0].id))
            await s.commit()
        await eng.dispose()

    asyncio.run(go())


def first_task(url: str, employee_no: str) -> int:
    rows = query(url, select(CountTask.id).join(User, User.id == CountTask.assignee_id)
                 .where(User.employee_no == employee_no, CountTask.status == TaskStatus.OPEN)
                 .order_by(CountTask.id).limit(1))  # fmt: skip
    return int(rows[0][0])


def disputed(cli: PinnedCli, url: str) -> tuple[int, int]:
    """Plan the day; the first count (4 of a book of 10) and its blind recount (7) disagree. (variance, task)"""
    cli.ok("plan", "--date", DAY.isoformat())
    task = first_task(url, "WH1-E01")
    out = cli.ok("count", str(task), "4", "--as", "WH1-E01", "--at", "2026-11-30T09:00")
    recount = str(recount_of(url, task))
    assert "复盘" not in out  # blind: the counter is not told the count differed
    cli.ok("count", recount, "7", "--as", "WH1-E02", "--at", "2026-11-30T09:10")
    ((vid,),) = query(url, select(Variance.id))
    return int(vid), task


def refused(r: Result, code: int, *said: str) -> str:
    """A refusal as a person should get it: exit 1 (workflow, data) or 2 (command line), Chinese and English."""
    out = r.output
    assert "Traceback" not in out and (r.exception is None or isinstance(r.exception, SystemExit)), (
        out,
        r.exception,
    )
    assert r.exit_code == code, (r.exit_code, out)
    line = next(x for x in out.splitlines() if x.startswith("Error:") or "/" in x)
    zh, _, en = line.partition(" / ")
    assert CJK.search(zh) and en.strip() and re.search(r"[A-Za-z]{3}", en), out
    assert not any(re.search(rf"\b{c}\b", zh) for c in CODES), zh  # "已结束（已完成）", not "（done）"
    for s in said:
        assert s in out, (s, out)
    return out


def audit_rows(url: str) -> int:
    return int(query(url, select(func.count()).select_from(AuditEvent))[0][0])


def test_resolve_without_a_side_refuses_and_changes_nothing(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = PinnedCli(NOW, env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250"})
    vid, _ = disputed(cli, database_url)
    trail = audit_rows(database_url)
    for args in (
        ["resolve", str(vid), "--as", "WH1-S01"],
        ["resolve", str(vid), "--count", "--book", "--as", "WH1-S01"],
    ):
        refused(cli.run(*args), 2, "--count", "--book", "nothing was changed")
    assert query(database_url, select(Variance.state, Variance.closed_at)) == [("disputed", None)]
    assert audit_rows(database_url) == trail
    assert "初盘错误已关闭 / closed_count_error" in cli.ok("resolve", str(vid), "--book", "--as", "WH1-S01")
    # the traceback of the report: deciding a closed variance again
    closed = audit_rows(database_url)
    for side in ("--count", "--book"):
        refused(cli.run("resolve", str(vid), side, "--as", "WH1-S01"), 1, "初盘错误已关闭", "final state")
    assert audit_rows(database_url) == closed


def test_every_verb_answers_bad_input_in_both_languages(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = PinnedCli(NOW, env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250"})
    vid, done_task = disputed(cli, database_url)
    cli.ok("resolve", str(vid), "--book", "--as", "WH1-S01")  # closed from here on
    task = first_task(database_url, "WH1-E02")
    v, t = str(vid), str(task)
    cases: list[tuple[list[str], int, tuple[str, ...]]] = [
        (["tasks", "--as", "NOPE"], 1, ("NOPE",)),
        (["tasks"], 2, ("--as",)),
        (["tasks", "--as", "WH1-E01", "--date", "30/11/2026"], 2, ("YYYY-MM-DD",)),
        (["tasks", "--as", "WH1-E01", "--format", "xml"], 2, ("xml",)),
        (["count", "999", "4", "--as", "WH1-E02"], 1, ("#999",)),
        (["count", "abc", "4", "--as", "WH1-E02"], 2, ("TASK_ID",)),
        (["count", t, "abc", "--as", "WH1-E02"], 1, ("abc",)),
        (["count", t, "三桶", "--as", "WH1-E02"], 1, ("三桶",)),
        (["count", t, "-5", "--as", "WH1-E02"], 2, ("-5",)),
        (["count", t, "4", "--as", "NOPE"], 1, ("NOPE",)),
        (["count", t, "4", "--as", "WH1-S01"], 1, ("不是盘点员",)),
        (["count", t, "4", "--as", "WH1-E02", "--at", "yesterday"], 2, ("yesterday",)),
        (["count", t, "--as", "WH1-E02"], 2, ("--empty",)),
        (["count", str(done_task), "5", "--as", "WH1-E01"], 1, ("已完成",)),
        (["variances", "--warehouse", "NOPE"], 1, ("NOPE", "WH1")),
        (["show", "999"], 1, ("#999",)),
        (["show", "999", "--format", "json"], 1, ("#999",)),
        (["show", "abc"], 2, ("VARIANCE_ID",)),
        (["audit", "999"], 1, ("#999",)),
        (["audit", "999", "--format", "json"], 1, ("#999",)),
        (["review", "999", "--reason", "receiving", "--as", "WH1-S01"], 1, ("#999",)),
        (["review", v, "--reason", "receiving", "--as", "WH1-S01"], 1, ("初盘错误已关闭",)),
        (["review", v, "--as", "WH1-S01"], 2, ("--reason",)),
        (["approve", v, "--as", "S02"], 1, ("初盘错误已关闭",)),
        (["approve", "999", "--as", "S02"], 1, ("#999",)),
        (["reject", v, "--as", "NOPE"], 1, ("NOPE",)),
        (["send-back", "999", "--as", "S02"], 1, ("#999",)),
        (["resolve", "999", "--count", "--as", "WH1-S01"], 1, ("#999",)),
        (["resolve", v, "--count", "--as", "WH1-S01"], 1, ("初盘错误已关闭",)),
        (["resolve", v, "--as", "WH1-S01"], 2, ("--count",)),
        (["request", "--sku", "NOPE", "--warehouse", "WH1", "--location", "A-000"], 1, ("NOPE",)),
        (
            ["request", "--sku", "WH1-SKU0000", "--warehouse", "NOPE", "--location", "A-000"],
            1,
            ("NOPE", "WH1"),
        ),
        (
            ["request", "--sku", "WH1-SKU0000", "--warehouse", "WH1", "--location", "A-000", "--as", "NOPE"],
            1,
            ("NOPE",),
        ),
        (["warehouse", "set-team", "NOPE", "--team", "WH1 盘点组"], 1, ("NOPE", "WH1")),
        (["warehouse", "set-team", "WH1", "--team", "盘点一祖"], 1, ("盘点一祖", "WH1 盘点组")),
        (["warehouse", "set-team", "WH1"], 2, ("--team", "--clear")),
        (["plan", "--date", "2026-02-30"], 2, ("2026-02-30",)),
        (["plan", "--date", DAY.isoformat(), "--warehouse", "NOPE"], 1, ("NOPE",)),
        (["classify", "--as-of", "bad"], 2, ("bad",)),
        (["classify", "--warehouse", "NOPE"], 1, ("NOPE",)),
        (["report", "accuracy", "--from", "bad"], 1, ("bad",)),
        (["report", "accuracy", "--class", "Z"], 1, ("Z",)),
        (["db", "upgrade", "--revision", "bogus"], 1, ("bogus",)),
        (["housekeeping", "--now"], 2, ("--now",)),
        (["adjustments", "export", "--format", "pdf"], 2, ("pdf",)),
        (["nosuchverb"], 2, ("nosuchverb",)),
        (["import", "/nonexistent/库位.csv"], 1, ("库位.csv",)),
        (["import", "/nonexistent/x.csv", "--kind", "bins"], 2, ("bins",)),
        (["demo-data", "--items", "5"], 1, ("PANDIAN_DATABASE_URL",)),
        (["jobs", "run", "bogus"], 1, ("bogus",)),
    ]
    trail = audit_rows(database_url)
    for args, code, said in cases:
        try:
            refused(cli.run(*args), code, *said)
        except AssertionError as exc:
            raise AssertionError(f"pandian {' '.join(args)}: {exc}") from None
    assert audit_rows(database_url) == trail  # nothing changed
    assert query(database_url, select(func.count()).select_from(CountRequest)) == [(0,)]
    assert query(database_url, select(Warehouse.code, Warehouse.default_team_id.is_not(None))) == [
        ("WH1", True)
    ]
