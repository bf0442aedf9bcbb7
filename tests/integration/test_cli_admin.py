"""The command line as an admin and a supervisor of a company with several warehouses use it (issue 10, §3, §5):
``--format json`` for scripts, Chinese first (labels, state names, quantities as the unit needs), requests
that merge, and the warehouse's default team set from the command line."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.cli import _reason_code
from core.db import make_engine, make_sessionmaker
from core.enums import TaskStatus
from core.models import AuditEvent, CountRequest, CountTask, ItemLocation, Team, User, Variance, Warehouse
from core.variance.rules import ReasonSettings
from tests.clock import local
from tests.integration.builders import build_company
from tests.integration.pinned_cli import PinnedCli, query, recount_of

DAY = date(2026, 11, 30)
NOW = local(DAY, 11, 0)


def seed(url: str) -> None:
    """Two warehouses with the same bin codes (A-000, B-001, ...), a book of 3 everywhere, a finance user."""

    async def go() -> None:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            co = await build_company(s, items=6, counters=2)
            await build_company(s, items=6, counters=1, code="WH2")
            s.add_all([
                User(employee_no="S02", name="主管二", roles=["supervisor"], team_id=co.teams[0].id),
                Team(name="盘点一组"),
            ])  # fmt: skip
            await s.execute(update(ItemLocation).values(qty=3))
            await s.commit()
        await eng.dispose()

    asyncio.run(go())


def cli_for(url: str) -> PinnedCli:
    return PinnedCli(NOW, env={"PANDIAN_DATABASE_URL": url, "COLUMNS": "250"})


def in_review(cli: PinnedCli, url: str) -> tuple[int, int]:
    """WH1-E01 counts 4 where the book is 3 (+33.3333 %) at 09:00:07; WH1-E02's blind recount agrees at
    09:10:30. (variance id, first task id)"""
    cli.ok("plan", "--date", DAY.isoformat())
    ((task,),) = query(url, select(CountTask.id).join(User, User.id == CountTask.assignee_id)
                       .where(User.employee_no == "WH1-E01", CountTask.status == TaskStatus.OPEN)
                       .order_by(CountTask.id).limit(1))  # fmt: skip
    out = cli.ok("count", str(task), "4", "--as", "WH1-E01", "--at", "2026-11-30T09:00:07")
    recount = str(recount_of(url, task))
    assert "复盘" not in out  # blind: the counter is not told the count differed
    cli.ok("count", recount, "4", "--as", "WH1-E02", "--at", "2026-11-30T09:10:30")
    ((vid, state),) = query(url, select(Variance.id, Variance.state))
    assert state == "in_review"
    return int(vid), int(task)


def js(cli: PinnedCli, *args: str) -> Any:
    r = cli.run(*args, "--format", "json")
    assert r.exit_code == 0, (args, r.output, r.exception)
    return json.loads(r.stdout)


def test_json_views_for_scripts(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = cli_for(database_url)
    assert js(cli, "tasks", "--as", "WH1-E01") == []  # nothing planned yet: an empty list
    vid, task = in_review(cli, database_url)

    tasks = js(cli, "tasks", "--as", "WH1-E02")
    assert tasks and set(tasks[0]) == {"task_id", "warehouse", "location", "sku", "item_name", "spec", "unit",
                                       "reason", "plan_date", "due_date", "status"}  # fmt: skip
    assert {t["warehouse"] for t in tasks} == {"WH1"} and tasks[0]["plan_date"] == "2026-11-30"

    (row,) = js(cli, "variances")
    assert row == {
        "id": vid, "warehouse": "WH1", "location": "A-000", "sku": "WH1-SKU0000", "item_name": "物料0", "unit": "个",
        "abc_class": "A", "state": "in_review", "state_zh": "原因审核中", "severity": row["severity"],
        "severity_zh": row["severity_zh"], "book_qty": 3, "counted_qty": 4, "qty": 1, "pct": 33.3333, "value": 10,
        "moved_during_count": False, "recounts": 1, "suggested_reason": None, "suggestion_text": None,
        "reason_code": None, "reason_note": None, "count_time": "2026-11-30T09:00:07+08:00",
        "created_at": row["created_at"], "closed_at": None,
    }  # fmt: skip
    assert js(cli, "variances", "--warehouse", "WH2") == []

    doc = js(cli, "show", str(vid))
    assert {k: doc[k] for k in row} == row and doc["spec"] is None
    assert [(c["counter"], c["qty"], c["captured_at"], c["recount"]) for c in doc["counts"]] == [
        ("WH1-E01", 4, "2026-11-30T09:00:07+08:00", False),
        ("WH1-E02", 4, "2026-11-30T09:10:30+08:00", True),
    ]
    assert set(doc["counts"][0]) == {
        "entry_id", "task_id", "counter", "counter_name", "qty", "raw_text", "outcome", "method", "partial",
        "recount", "photos", "note", "captured_at", "recorded_at", "superseded", "overturned",
    }  # fmt: skip
    assert doc["counts"][0]["task_id"] == task and doc["movements"] == [] and doc["approvals"] == []

    trail = js(cli, "audit", str(vid))
    assert set(trail[0]) == {"at", "entity", "entity_id", "action", "action_zh", "from_state", "from_state_zh",
                             "to_state", "to_state_zh", "actor", "actor_name", "data"}  # fmt: skip
    assigned = next(e for e in trail if e["action"] == "recount_assigned")
    assert assigned["action_zh"] == "派发复盘" and assigned["to_state_zh"] == "复盘中"
    assert assigned["at"] == "2026-11-30T11:00:00+08:00"  # recorded when the command ran (the pinned clock)
    agreed = next(e for e in trail if e["action"] == "recount_confirmed_count")
    assert (agreed["actor"], agreed["actor_name"], agreed["from_state_zh"]) == (
        "WH1-E02",
        "盘点员2",
        "复盘中",
    )

    cli.ok("review", str(vid), "--reason", "receiving", "--as", "WH1-S01")
    steps = js(cli, "show", str(vid))["approvals"]
    assert [(a["seq"], a["decision"], a["opened_at"]) for a in steps][:1] == [
        (1, "pending", "2026-11-30T11:00:00+08:00")
    ]


def test_chinese_first_and_the_warehouse_beside_the_bin(engine: AsyncEngine, database_url: str) -> None:
    """States by their Chinese names (the code after " / "), 3 not 3.0000, +33.3 % not +33.3333 %, and
    WH1/A-000 where two warehouses both have an A-000; a counter's list never hints at the book."""
    seed(database_url)
    cli = cli_for(database_url)
    cli.ok("plan", "--date", DAY.isoformat())
    ((task,),) = query(database_url, select(CountTask.id).join(User, User.id == CountTask.assignee_id)
                       .where(User.employee_no == "WH1-E01").order_by(CountTask.id).limit(1))  # fmt: skip
    mine = cli.ok("tasks", "--as", "WH1-E01")
    assert "WH1/A-000" in mine and "周期盘点" in mine
    _set_reason(database_url, task, "negative")
    blind = cli.ok("tasks", "--as", "WH1-E01")
    assert "负库存" not in blind and "盘点" in blind
    assert [t["reason"] for t in js(cli, "tasks", "--as", "WH1-E01")] == [None]
    _set_reason(database_url, task, "rotation")

    out = cli.ok("count", str(task), "4", "--as", "WH1-E01", "--at", "2026-11-30T09:00:07")
    recount = str(recount_of(database_url, task))
    assert "复盘" not in out
    cli.ok("count", recount, "4", "--as", "WH1-E02", "--at", "2026-11-30T09:10:30")
    ((vid,),) = query(database_url, select(Variance.id))
    listing = cli.ok("variances")
    shown = cli.ok("show", str(vid))
    for text in (listing, shown):
        assert "+33.3 %" in text and "33.3333" not in text and ".0000" not in text
        assert "原因审核中 / in_review" in text and text.count("in_review") == text.count(
            "原因审核中 / in_review"
        )
    assert (
        "@ WH1/A-000" in shown
        and "账存 3个" in shown
        and "实盘 4个" in shown
        and "差异 +1个（+33.3 %" in shown
    )

    refused = cli.run("review", str(vid), "--reason", "不知道", "--as", "WH1-S01")
    assert refused.exit_code == 1 and "收货环节错漏(receiving)" in refused.output
    done = cli.ok("review", str(vid), "--reason", "收货环节错漏", "--as", "WH1-S01")
    assert "收货环节错漏 / receiving" in done
    assert query(database_url, select(Variance.reason_code, Variance.state)) == [
        ("receiving", "pending_approval")
    ]
    shown = cli.ok("show", str(vid))
    assert (
        "审核原因：收货环节错漏 / receiving" in shown
        and "审批 1. 主管：待审批 / supervisor: pending" in shown
    )
    trail = cli.ok("audit", str(vid))
    assert (
        "提交审核 / review_submitted" in trail
        and "原因审核中 → 待审批 / in_review → pending_approval" in trail
    )
    assert ".0000" not in trail  # recorded quantities read as the unit needs


def test_review_reason_by_code_label_or_as_listed() -> None:
    codes = ReasonSettings().codes
    for said, code in [("receiving", "receiving"), ("收货环节错漏", "receiving"), ("Receiving error", "receiving"),
                       ("RECEIVING ERROR", "receiving"), ("收货环节错漏(receiving)", "receiving"),
                       ("串货/错放库位（misplaced）", "misplaced"), (" 其他 ", "other"), ("不知道", "不知道")]:  # fmt: skip
        assert _reason_code(said, codes) == code, said


def _set_reason(url: str, task: int, reason: str) -> None:
    async def go() -> None:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            await s.execute(update(CountTask).where(CountTask.id == task).values(reason=reason))
            await s.commit()
        await eng.dispose()

    asyncio.run(go())


def test_request_takes_who_asks_and_merges_duplicates(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = cli_for(database_url)
    where = ["--sku", "WH1-SKU0005", "--warehouse", "WH1", "--location", "B-005"]
    first = cli.ok("request", *where, "--note", "拣货说没有", "--as", "WH1-S01")
    assert "已登记临时盘点请求" in first and "WH1/B-005" in first
    cli.clock.advance(minutes=20)
    again = cli.ok("request", *where, "--note", "又找不到", "--as", "WH1-E01")
    assert "已有待排程" in again and "备注已合并" in again
    cli.ok("request", *where, "--note", "又找不到")  # the same note twice is kept once
    refused = cli.run("request", *where, "--as", "NOPE")
    assert refused.exit_code == 1 and "NOPE" in refused.output
    ((sup,),) = query(database_url, select(User.id).where(User.employee_no == "WH1-S01"))
    rows = query(
        database_url, select(CountRequest.note, CountRequest.requested_by_id, CountRequest.requested_at)
    )
    assert [(n, by) for n, by, _ in rows] == [("拣货说没有\n又找不到", sup)]
    assert rows[0][2] == NOW  # asked at the command line's time, not the wall clock's
    cli.ok("plan", "--date", DAY.isoformat())  # the request becomes a task ...
    assert "已登记临时盘点请求" in cli.ok("request", *where)  # ... and a new request is a new one
    assert len(query(database_url, select(CountRequest.id))) == 2


def test_warehouse_default_team_from_the_command_line(engine: AsyncEngine, database_url: str) -> None:
    seed(database_url)
    cli = cli_for(database_url)
    assert js(cli, "warehouse", "list") == [
        {"code": "WH1", "name": "WH1 仓", "default_team": "WH1 盘点组", "team_counters": 2},
        {"code": "WH2", "name": "WH2 仓", "default_team": "WH2 盘点组", "team_counters": 1},
    ]
    out = cli.ok("warehouse", "set-team", "WH2", "--team", "盘点一组", "--as", "WH1-S01")
    assert "默认盘点组：盘点一组" in out and "没有在职的盘点员" in out  # nobody to count WH2 now: say so
    assert "未变" in cli.ok("warehouse", "set-team", "WH2", "--team", "盘点一组")
    typo = cli.run("warehouse", "set-team", "WH2", "--team", "盘点一祖")
    assert typo.exit_code == 1 and "是不是「盘点一组」" in typo.output
    assert "已清除" in cli.ok("warehouse", "set-team", "WH1", "--clear")
    teams = dict(query(database_url, select(Team.id, Team.name)))
    got = {
        code: teams.get(t)
        for code, t in query(database_url, select(Warehouse.code, Warehouse.default_team_id))
    }
    assert got == {"WH1": None, "WH2": "盘点一组"}
    ((sup,),) = query(database_url, select(User.id).where(User.employee_no == "WH1-S01"))
    events = query(database_url, select(AuditEvent.entity, AuditEvent.action, AuditEvent.actor_id, AuditEvent.data,
                                        AuditEvent.at).order_by(AuditEvent.id))  # fmt: skip
    assert [(e, a, by, d) for e, a, by, d, _ in events] == [
        (
            "warehouse",
            "default_team_set",
            sup,
            {"warehouse": "WH2", "team": "盘点一组", "previous": "WH2 盘点组"},
        ),
        ("warehouse", "default_team_set", None, {"warehouse": "WH1", "team": None, "previous": "WH1 盘点组"}),
    ]
    assert all(at == NOW for *_, at in events)
