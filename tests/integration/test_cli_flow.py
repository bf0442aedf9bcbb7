"""The whole flow from the command line: plan → tasks → count → blind recount → review → approve → export."""

from __future__ import annotations

import asyncio
import csv
import re
from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cli import main
from core.db import make_engine, make_sessionmaker
from core.models import CountTask, User
from tests.clock import local
from tests.integration.builders import PCT_TIERS_ENV, build_company
from tests.integration.pinned_cli import PinnedCli, recount_of

DAY = date(2026, 11, 30)


def seed(url: str) -> None:
    async def go() -> None:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            co = await build_company(s, items=10, counters=2)
            s.add_all([
                User(employee_no="F01", name="财务", roles=["finance"], team_id=co.teams[0].id),
                User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=co.teams[0].id),
            ])  # fmt: skip
            await s.commit()
        await eng.dispose()

    asyncio.run(go())


def open_task(url: str, employee_no: str) -> int:
    async def go() -> int:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            uid = (await s.execute(select(User.id).where(User.employee_no == employee_no))).scalar_one()
            tid = (
                await s.execute(select(CountTask.id).where(CountTask.assignee_id == uid, CountTask.status == "open")
                                .order_by(CountTask.id).limit(1))
            ).scalar_one()  # fmt: skip
        await eng.dispose()
        return int(tid)

    return asyncio.run(go())


def test_flow_end_to_end(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    seed(database_url)
    cli = PinnedCli(
        local(DAY, 11, 0), env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250", **PCT_TIERS_ENV}
    )

    def ok(*args: str) -> str:
        r = cli.invoke(main, list(args))
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.output

    ok("plan", "--date", "2026-11-30")
    listing = ok("tasks", "--as", "WH1-E01", "--date", "2026-11-30")
    assert "盘点任务" in listing and "账" not in listing  # blind: no book quantity anywhere
    task = open_task(database_url, "WH1-E01")
    bad = cli.invoke(main, ["count", str(task), "三桶", "--as", "WH1-E01"])
    assert bad.exit_code == 1 and "三桶" in bad.output
    out = ok("count", str(task), "４", "--as", "WH1-E01", "--at", "2026-11-30T10:00")  # full-width digits
    recount = recount_of(database_url, task)
    assert "已记录" in out and "复盘" not in out  # blind: the counter is not told the count differed
    ok("count", str(recount), "4", "--as", "WH1-E02", "--at", "2026-11-30T10:30")
    table = ok("variances")
    vid = re.search(r"│ (\d+) ", table).group(1)  # type: ignore[union-attr]
    assert "in_review" in table
    ok("review", vid, "--reason", "shipping", "--note", "发错货", "--as", "WH1-S01")
    refused = cli.invoke(main, ["approve", vid, "--as", "WH1-S01"])  # the reviewer may not approve
    assert refused.exit_code == 1 and "审核" in refused.output
    ok("approve", vid, "--as", "S02")
    ok("approve", vid, "--as", "F01")
    export = tmp_path / "adj.csv"
    out = ok("adjustments", "export", "--format", "csv", "--out", str(export))
    assert "1 张单据" in out
    rows = list(csv.reader(export.open(encoding="utf-8-sig")))
    assert rows[0][:3] == ["单据类型", "单据编号", "日期"] and rows[1][0] == "盘亏单" and rows[1][12] == "6"
    again = ok("adjustments", "export", "--format", "xlsx", "--out", str(tmp_path / "again.xlsx"))
    assert "没有待导出" in again and not (tmp_path / "again.xlsx").exists()  # exported exactly once
    trail = ok("audit", vid)
    for action in ("recount_assigned", "review_submitted", "approved", "adjustment_recorded"):
        assert action in trail


def test_dispute_resolved_by_supervisor_and_dossier(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = PinnedCli(
        local(DAY, 11, 0), env={"PANDIAN_DATABASE_URL": database_url, "COLUMNS": "250", **PCT_TIERS_ENV}
    )

    def ok(*args: str) -> str:
        r = cli.invoke(main, list(args))
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.output

    ok("plan", "--date", "2026-11-30")
    task = open_task(database_url, "WH1-E01")
    out = ok(
        "count", str(task), "4", "--as", "WH1-E01", "--at", "2026-11-30T10:00", "--note", "货架后面可能还有"
    )
    recount = recount_of(database_url, task)
    assert "已记录" in out and "复盘" not in out  # blind: the counter is not told the count differed
    disagree = ok("count", str(recount), "7", "--as", "WH1-E02", "--at", "2026-11-30T10:20")
    assert "不一致" not in disagree and "账" not in disagree  # blind: the recounter learns nothing of either
    listing = ok("variances")
    assert "复盘不一致 / disputed" in listing  # the supervisor sees the dispute
    vid = re.search(r"│ (\d+) ", listing).group(1)  # type: ignore[union-attr]
    dossier = ok("show", vid)
    assert (
        "盘点员1" in dossier
        and "盘点员2" in dossier
        and "货架后面可能还有" in dossier
        and "disputed" in dossier
    )
    assert cli.invoke(main, ["resolve", vid, "--book", "--as", "WH1-E01"]).exit_code == 1  # not a supervisor
    assert "closed_count_error" in ok("resolve", vid, "--book", "--as", "WH1-S01")
    assert "升级审批 0" in ok("housekeeping")
