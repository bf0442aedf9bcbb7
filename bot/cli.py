"""The ``pandian`` command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli_clock import CliRoot, clock, now
from core.clock import local_day
from core.config import Settings, load_settings
from core.db import make_engine, make_sessionmaker

T = TypeVar("T")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def run(coro_fn: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic ValidationError: bad env var or pandian.toml
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from exc
    return asyncio.run(coro_fn(settings))


async def _with_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], commit: bool = True
) -> T:
    """Open the database, make sure the schema is current, run one unit of work."""
    from core import migrate

    engine = make_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        sm = make_sessionmaker(engine)
        async with sm() as session:
            out = await work(session)
            if commit:
                await session.commit()
            else:
                await session.rollback()
            return out
    finally:
        await engine.dispose()


def _parse_day(value: str | None, settings: Settings) -> date:
    if value is None or value == "today":
        return local_day(now(), settings.tz)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"日期格式应为 YYYY-MM-DD / expected YYYY-MM-DD, got {value!r}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pandian")
@click.pass_context
def main(ctx: click.Context) -> None:
    """pandian 盘点: cycle counting in WeCom, Feishu and DingTalk.

    Configuration comes from PANDIAN_* environment variables and an optional pandian.toml
    (see README). The database defaults to pandian.db in the working directory.
    """
    ctx.ensure_object(CliRoot)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema (Alembic)."""
    from core import migrate

    async def go(settings: Settings) -> Any:
        engine = make_engine(settings.database_url)
        try:
            await migrate.upgrade(engine, revision)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    rev = run(go)
    console.print(f"数据库已升级到 {rev} / schema at revision {rev}")


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["items", "locations", "stock", "movements", "users"]),
    help="What the file holds; guessed from the headers when left out.",
)
def import_cmd(file: Path, kind: str | None) -> None:
    """Import FILE (.xlsx or .csv, UTF-8 or GBK). All or nothing; importing it again changes nothing."""
    from core.importing import ImportFailed, import_file

    async def go(settings: Settings) -> Any:
        with console.status(f"导入 {file.name} …") as status:

            def progress(done: int) -> None:
                status.update(f"导入 {file.name}：已读 {done:,} 行 / {done:,} rows read")

            async def work(s: AsyncSession) -> Any:
                report = await import_file(s, file, kind, tz=settings.tz, progress=progress, now=now())
                if report.kind == "movements" and report.created:
                    # late movements that happened before a count change that count's book
                    from core.variance.service import reevaluate_open_variances

                    await reevaluate_open_variances(s, settings, now())
                return report

            return await _with_session(settings, work)

    try:
        report = run(go)
    except ImportFailed as exc:
        err.print(str(exc), markup=False)  # says that nothing was changed
        raise SystemExit(1) from None
    console.print(
        f"[green]✓[/] {file.name}（{report.kind}）：{report.rows} 行；新增 {report.created}，更新 {report.updated}，"
        f"未变 {report.unchanged} / {report.rows} rows: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged"
    )


@main.command()
@click.option("--warehouse", "warehouse", metavar="CODE", help="Classify within one warehouse only.")
@click.option("--as-of", "as_of", metavar="DATE", help="Last day of the 365-day window (default: today).")
def classify(warehouse: str | None, as_of: str | None) -> None:
    """ABC-classify items by annual consumption value (stock value when there is no history)."""
    from core.classification_service import classify as classify_items

    async def go(settings: Settings) -> Any:
        day = _parse_day(as_of, settings)
        return await _with_session(
            settings, lambda s: classify_items(s, settings, as_of=day, now=now(), warehouse_code=warehouse)
        )

    try:
        summary = run(go)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    print_classification(summary)


def print_classification(summary: Any) -> None:
    for scope in summary.scopes:
        title = f"ABC 分类（{scope.warehouse or '全公司'}，截至 {summary.as_of}）"
        table = Table(title=title)
        for col in ("类别 class", "物料数 items", "物料占比 % items", "价值占比 % value"):
            table.add_column(col, justify="right")
        for r in scope.rows:
            table.add_row(r.abc_class, f"{r.items:,}", f"{r.item_share:.1%}", f"{r.value_share:.1%}")
        console.print(table)
        bases = "，".join(f"{k} {v}" for k, v in sorted(scope.by_basis.items()))
        console.print(f"类别变化 {scope.changed} 个 / {scope.changed} class changes；依据 basis: {bases}")


@main.command()
@click.option("--date", "day", metavar="DATE", help="Day to plan, YYYY-MM-DD (default: today).")
@click.option("--warehouse", metavar="CODE", help="Plan one warehouse only.")
@click.option("--dry-run", is_flag=True, help="Show the plan without saving anything.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--limit", default=200, show_default=True, help="Rows shown in table format (json shows all).")
def plan(day: str | None, warehouse: str | None, dry_run: bool, fmt: str, limit: int) -> None:
    """Plan a day's counts and assign them. Running it again for the same day changes nothing."""
    from core.scheduling.service import PlanningError, plan_day

    async def go(settings: Settings) -> Any:
        d = _parse_day(day, settings)
        return await _with_session(
            settings,
            lambda s: plan_day(s, settings, d, now=now(), warehouse_code=warehouse),
            commit=not dry_run,
        )

    try:
        result = run(go)
    except PlanningError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "json":
        import json

        click.echo(json.dumps([t.as_json() for t in result.tasks], ensure_ascii=False, indent=1))
        for w in result.warnings:
            err.print(w, markup=False)
        return
    print_plan(result, limit, dry_run)


def print_plan(result: Any, limit: int = 200, dry_run: bool = False) -> None:
    for w in result.warnings:
        console.print(f"[yellow]![/] {w}", markup=True)
    if not result.tasks:
        console.print(f"{result.day}：没有盘点任务 / no count tasks")
        return
    per: dict[str, list[Any]] = {}
    for t in result.tasks:
        per.setdefault(t.assignee_name or "（未分配 unassigned）", []).append(t)
    summary = Table(title=f"{result.day} 盘点计划{'（试算，未保存）' if dry_run else ''}")
    for col in ("盘点员 counter", "任务 tasks", "预计分钟 minutes", "A", "B", "C"):
        summary.add_column(col, justify="right")
    for who, tasks in per.items():
        by = {c: sum(1 for t in tasks if t.abc_class == c) for c in "ABC"}
        summary.add_row(
            who, str(len(tasks)), f"{sum(t.est_minutes for t in tasks):.0f}", *(str(by[c]) for c in "ABC")
        )
    console.print(summary)
    reasons = "，".join(f"{k} {v}" for k, v in sorted(result.by_reason.items()))
    console.print(
        f"新建 {result.created}，结转 {result.carried_over}，逾期 {result.overdue}，未分配 {result.unassigned} / "
        f"{result.created} new, {result.carried_over} carried over, {result.overdue} newly overdue; reasons: {reasons}"
    )
    table = Table()
    for col in (
        "仓库",
        "库位 location",
        "物料 sku",
        "名称 name",
        "类",
        "原因 reason",
        "优先",
        "盘点员",
        "逾期",
    ):
        table.add_column(col, overflow="fold")
    for t in result.tasks[:limit]:
        table.add_row(
            t.warehouse,
            t.location,
            t.sku,
            t.item_name,
            t.abc_class,
            t.reason_zh,
            str(t.priority),
            t.assignee_name or "-",
            "是" if t.overdue else "",
        )
    console.print(table)
    if len(result.tasks) > limit:
        console.print(
            f"… 另有 {len(result.tasks) - limit} 条，完整列表请用 --format json / {len(result.tasks) - limit} more"
        )


@main.command("demo-data")
@click.option("--items", default=2000, show_default=True, help="Number of items to generate.")
@click.option("--seed", default=20261128, show_default=True)
def demo_data(items: int, seed: int) -> None:
    """Generate a realistic demo company (two warehouses, a year of movements, eight users)."""
    summary = run(lambda settings: _generate(settings, items, seed))
    console.print(f"[green]✓[/] 演示数据已生成 / demo data generated: {summary}")


async def _generate(settings: Settings, items: int, seed: int) -> Any:
    from sqlalchemy import func, select

    from core.demo import generate_demo
    from core.models import Item

    today = local_day(now(), settings.tz)

    async def work(session: AsyncSession) -> Any:
        if (await session.execute(select(func.count()).select_from(Item))).scalar_one():
            raise click.ClickException(
                "数据库里已有物料，演示数据只能生成到空库 / the database already has items; "
                "point PANDIAN_DATABASE_URL at an empty database"
            )
        with console.status("生成演示数据 / generating demo data") as status:
            return await generate_demo(
                session,
                items=items,
                seed=seed,
                today=today,
                tz=settings.tz,
                progress=lambda m: status.update(m),
            )

    return await _with_session(settings, work)


@main.command()
@click.option("--items", default=2000, show_default=True, help="size of the demo company")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the transcript here")
def demo(items: int, out: str | None) -> None:
    """The quick-start demo: a whole working day, played through the real server.

    Generates the demo company into an empty database, starts the server with WeCom switched on against a
    built-in simulated WeCom (signed, encrypted callbacks; its real message API), and plays a scripted day:
    the morning push, counting by text, pack units and a barcode photo, a variance, the blind recount, the
    review and approvals from cards, the afternoon reminder and the evening summary. Prints the chat.
    """
    from bot.demo_day import play

    try:
        settings = load_settings()
    except Exception as exc:
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from exc
    console.print(
        "[bold]pandian 演示：模拟企业微信上的一个工作日[/]（服务器、数据库、卡片、回调均为真实运行）"
    )
    try:
        transcript = asyncio.run(
            play(
                settings,
                clock=clock(),
                items=items,
                echo=lambda line: console.print(line, markup=False, highlight=False),
            )
        )
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if out:
        Path(out).write_text("\n".join(transcript.lines) + "\n", encoding="utf-8")
        console.print(f"[green]✓[/] 对话记录已写入 / transcript written to {out}")


@main.command()
@click.option("--sku", required=True)
@click.option("--warehouse", required=True, metavar="CODE")
@click.option("--location", required=True, metavar="CODE")
@click.option("--note", default=None)
def request(sku: str, warehouse: str, location: str, note: str | None) -> None:
    """Ask for an ad-hoc count of one item at one location; the next plan puts it first in line."""
    from sqlalchemy import select

    from core.models import Item, ItemLocation, Location, Warehouse
    from core.scheduling.service import request_count

    async def go(settings: Settings) -> Any:
        async def work(session: AsyncSession) -> Any:
            il = (
                await session.execute(
                    select(ItemLocation.id)
                    .join(Item, Item.id == ItemLocation.item_id)
                    .join(Location, Location.id == ItemLocation.location_id)
                    .join(Warehouse, Warehouse.id == Location.warehouse_id)
                    .where(Item.sku == sku, Location.code == location, Warehouse.code == warehouse)
                )
            ).scalar_one_or_none()
            if il is None:
                raise click.ClickException(
                    f"{warehouse}/{location} 没有物料 {sku} 的库存记录 / no stock record of {sku} at {warehouse}/{location}"
                )
            return await request_count(session, il, note=note)

        return await _with_session(settings, work)

    req = run(go)
    console.print(
        f"[green]✓[/] 已登记临时盘点请求 #{req.id}，下次排程时优先安排 / ad-hoc count #{req.id} requested"
    )


# ------------------------------------------------------------------------------------ the count workflow


def _flow(work: Callable[[Settings, AsyncSession], Awaitable[T]]) -> T:
    """Run one workflow step; its refusals become clear errors (exit 1) and change nothing."""
    from core.variance.service import WorkflowError

    async def go(settings: Settings) -> T:
        return await _with_session(settings, lambda s: work(settings, s))

    try:
        return run(go)
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None


def _as_option(f: Any) -> Any:
    return click.option("--as", "as_", required=True, metavar="EMPLOYEE_NO", help="Who is doing this.")(f)


@main.command()
@_as_option
@click.option("--date", "day", metavar="DATE", help="Tasks due by this day (default: today).")
def tasks(as_: str, day: str | None) -> None:
    """A counter's open tasks, in walking order (book quantities are never shown: counts are blind)."""
    from core.variance.service import counter_tasks, user_by_employee_no

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        return user.name, await counter_tasks(s, user.id, _parse_day(day, settings))

    name, rows = _flow(work)
    if not rows:
        console.print(f"{name}：今天没有盘点任务 / no open tasks")
        return
    table = Table(title=f"{name} 的盘点任务 / tasks")
    for col in (
        "任务 task",
        "库位 location",
        "物料 sku",
        "名称 name",
        "规格 spec",
        "单位 unit",
        "原因 reason",
    ):
        table.add_column(col, overflow="fold")
    from core.enums import REASON_LABEL_ZH, TaskReason

    for t, item, loc in rows:
        table.add_row(str(t.id), loc.code, item.sku, item.name, item.spec or "", item.base_unit,
                      REASON_LABEL_ZH[TaskReason(t.reason)])  # fmt: skip
    console.print(table)


@main.command()
@click.argument("task_id", type=int)
@click.argument("qty", required=False)
@_as_option
@click.option("--partial", is_flag=True, help="A partial count; partial counts are summed (see --finish).")
@click.option("--finish", is_flag=True, help="Close a task counted in parts.")
@click.option("--empty", "outcome", flag_value="empty", help="The location is empty.")
@click.option("--not-here", "outcome", flag_value="not_here", help="The item is not at this location.")
@click.option("--at", "at", metavar="TIME", help="When it was counted (ISO time; default: now).")
@click.option("--note", default=None)
def count(
    task_id: int, qty: str | None, as_: str, partial: bool, finish: bool, outcome: str | None, at: str | None,
    note: str | None,
) -> None:  # fmt: skip
    """Record a count: QTY as typed, e.g. 24, ２４, 3箱5个 or 3*24+5."""
    from core.enums import CountOutcome, EntryMethod
    from core.variance.service import finish_partial_count, record_count, user_by_employee_no

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        when = now().astimezone(settings.tz)
        if at:
            try:
                when = datetime.fromisoformat(at)
            except ValueError as exc:
                raise click.BadParameter(
                    f"时间格式如 2026-11-30T09:30 / expected an ISO time, got {at!r}"
                ) from exc
            when = when if when.tzinfo else when.replace(tzinfo=settings.tz)
        if finish:
            return await finish_partial_count(s, settings, task_id=task_id, actor_id=user.id, now=now())
        if qty is None and outcome is None:
            raise click.UsageError("请给出数量，或用 --empty / --not-here / --finish")
        return await record_count(
            s, settings, task_id=task_id, counter_id=user.id, text=qty,
            outcome=CountOutcome(outcome) if outcome else CountOutcome.COUNTED, partial=partial,
            counted_at=when, method=EntryMethod.CLI, note=note, now=now(),
        )  # fmt: skip

    r = _flow(work)
    understood = f"（{r.understood}）" if r.understood else ""
    console.print(f"[green]✓[/] 任务 #{task_id}{understood}：{r.message_zh}")
    if r.recount_task is not None:
        console.print(
            f"复盘任务 #{r.recount_task.id} 已派给另一位盘点员 / recount task #{r.recount_task.id} assigned"
        )


@main.command()
@click.option("--warehouse", metavar="CODE")
@click.option("--all", "show_all", is_flag=True, help="Closed ones too.")
def variances(warehouse: str | None, show_all: bool) -> None:
    """Open variances and their state."""
    from sqlalchemy import select

    from core.models import Item, Location, Variance, Warehouse

    async def work(settings: Settings, s: AsyncSession) -> Any:
        stmt = (
            select(Variance, Item.sku, Location.code, Warehouse.code)
            .join(Item, Item.id == Variance.item_id)
            .join(Location, Location.id == Variance.location_id)
            .join(Warehouse, Warehouse.id == Variance.warehouse_id)
            .order_by(Variance.id)
        )
        if not show_all:
            stmt = stmt.where(Variance.closed_at.is_(None))
        if warehouse:
            stmt = stmt.where(Warehouse.code == warehouse)
        return (await s.execute(stmt)).all()

    rows = _flow(work)
    table = Table(title="差异 / variances")
    for col in (
        "#",
        "仓库",
        "库位",
        "物料",
        "账存 book",
        "实盘 counted",
        "差异 qty",
        "金额 value",
        "级别",
        "状态 state",
        "建议原因",
    ):
        table.add_column(col, overflow="fold")
    for v, sku, loc, wh in rows:
        table.add_row(str(v.id), wh, loc, sku, f"{v.book_qty:g}", f"{v.counted_qty:g}", f"{v.qty:+g}",
                      f"{v.value:,.2f}", v.severity, v.state, v.suggestion_text or "")  # fmt: skip
    console.print(table)


@main.command()
@click.argument("variance_id", type=int)
@click.option("--reason", "reason", required=True, help="Reason code, e.g. receiving, shipping, other.")
@click.option("--note", default=None)
@_as_option
def review(variance_id: int, reason: str, note: str | None, as_: str) -> None:
    """Review a confirmed variance with a standard reason; opens its approval steps."""
    from core.variance.service import review_variance, user_by_employee_no

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        return await review_variance(s, settings, variance_id=variance_id, reviewer_id=user.id, reason_code=reason,
                                     note=note, now=now())  # fmt: skip

    v = _flow(work)
    console.print(
        f"[green]✓[/] 差异 #{v.id} 已审核（{v.reason_code}），进入审批 / reviewed; awaiting approval"
    )


def _decision_command(name: str, decision: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @click.argument("variance_id", type=int)
    @click.option("--comment", default=None, help="Required when rejecting.")
    @_as_option
    def cmd(variance_id: int, comment: str | None, as_: str) -> None:
        from core.enums import ApprovalDecision
        from core.variance.service import decide, user_by_employee_no

        async def work(settings: Settings, s: AsyncSession) -> Any:
            user = await user_by_employee_no(s, as_)
            return await decide(s, settings, variance_id=variance_id, actor_id=user.id,
                                decision=ApprovalDecision(decision), comment=comment, now=now())  # fmt: skip

        d = _flow(work)
        from core.variance.workflow import VARIANCE, VarianceState

        state = VarianceState(d.variance.state)
        if not d.final:
            said = "本级已通过，等待下一级审批 / approved at this step; on to the next approver"
        else:
            said = f"{VARIANCE.state_zh[state]} / {state.value}"
        console.print(f"[green]✓[/] 差异 #{variance_id}：{said}")


_decision_command("approve", "approved", "Approve the current approval step of a variance.")
_decision_command("reject", "rejected", "Reject a variance (closed without adjustment); --comment says why.")
_decision_command("send-back", "recount", "Send a variance back for another blind recount.")


@main.command("audit")
@click.argument("variance_id", type=int)
def audit_cmd(variance_id: int) -> None:
    """The audit trail of a variance: every state change with actor and time."""
    from sqlalchemy import select

    from core.audit import trail
    from core.models import User

    async def work(settings: Settings, s: AsyncSession) -> Any:
        events = await trail(s, variance_id)
        names = dict((await s.execute(select(User.id, User.name))).all())
        return settings, events, names

    settings, events, names = _flow(work)
    if not events:
        raise click.ClickException(
            f"差异 #{variance_id} 没有记录 / no audit trail for variance #{variance_id}"
        )
    table = Table(title=f"差异 #{variance_id} 审计记录 / audit trail")
    for col in ("时间 time", "对象 entity", "动作 action", "状态 state", "操作人 actor", "详情 data"):
        table.add_column(col, overflow="fold")
    for e in events:
        states = f"{e.from_state or ''} → {e.to_state}" if e.to_state else ""
        table.add_row(e.at.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S"), f"{e.entity}#{e.entity_id}",
                      e.action, states, names.get(e.actor_id, "系统") if e.actor_id else "系统",
                      ", ".join(f"{k}={v}" for k, v in (e.data or {}).items()))  # fmt: skip
    console.print(table)


@main.group()
def adjustments() -> None:
    """Inventory adjustments from approved variances."""


@adjustments.command("export")
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv"]), default="xlsx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
def adjustments_export(fmt: str, out: Path | None) -> None:
    """Export pending adjustments (盘盈单 / 盘亏单 / 调拨单) for Kingdee or Yonyou; each is exported once."""
    from core.variance.export import export_adjustments

    async def go(settings: Settings) -> Any:
        from core import migrate

        at = now()
        path = out or Path(f"pandian-adjustments-{at.astimezone(settings.tz):%Y%m%d-%H%M%S}.{fmt}")
        engine = make_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            async with make_sessionmaker(engine)() as s:
                result = await export_adjustments(s, path, fmt, tz=settings.tz, now=at)
                try:
                    await s.commit()
                except BaseException:
                    result.discard()
                    raise
                result.publish()
                return result
        finally:
            await engine.dispose()

    r = run(go)
    if not r.adjustments:
        console.print("没有待导出的调整单 / nothing to export")
        return
    console.print(
        f"[green]✓[/] {r.path}：{r.adjustments} 张单据，{r.lines} 行，金额合计 {r.value:,.2f}（批次 {r.batch}）"
    )


# ---------------------------------------------------------------------------------------------- reports

_REPORT_KINDS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    # name: (title, [(field, label, kind)]); kinds: text int ratio money qty hours minutes
    "accuracy": ("盘点准确率 / record accuracy", [
        ("group", "分组 group", "text"), ("counts", "初盘数 counts", "int"), ("hits", "命中 hits", "int"),
        ("hit_rate", "准确率 hit rate", "ratio"), ("unit_accuracy", "数量准确率 unit acc.", "ratio"),
        ("value_accuracy", "金额准确率 value acc.", "ratio"), ("gross_adjustment", "调整总额 gross", "money"),
        ("net_adjustment", "调整净额 net", "money"),
    ]),
    "progress": ("盘点进度 / progress", [
        ("group", "分组 group", "text"), ("planned", "计划 planned", "int"), ("done", "完成 done", "int"),
        ("open", "未完成 open", "int"), ("overdue", "逾期 overdue", "int"), ("done_rate", "完成率 done %", "ratio"),
    ]),
    "variances": ("未关闭差异 / open variances", [
        ("id", "#", "int"), ("warehouse", "仓库 wh", "text"), ("location", "库位 location", "text"),
        ("sku", "物料 sku", "text"), ("item_name", "名称 name", "text"), ("abc_class", "类 class", "text"),
        ("state", "状态 state", "text"), ("state_zh", "状态说明", "text"), ("age_hours", "已过小时 age h", "hours"),
        ("severity", "级别 severity", "text"), ("qty", "差异 qty", "qty"), ("value", "金额 value", "money"),
        ("next_role", "待办角色 next", "text"), ("next_role_zh", "待办", "text"),
        ("next_person", "待办人 person", "text"),
    ]),
    "reasons": ("差异原因排列 / reason Pareto", [
        ("reason_code", "原因 reason", "text"), ("reason_zh", "说明", "text"), ("count", "次数 count", "int"),
        ("value", "金额 |value|", "money"), ("share", "占比 share", "ratio"),
        ("cumulative_share", "累计占比 cumulative", "ratio"),
    ]),
    "counters": ("盘点员 / counters", [
        ("counter", "盘点员 counter", "text"), ("counts", "盘点次数 counts", "int"),
        ("recounts", "其中复盘 recounts", "int"), ("avg_minutes", "平均分钟 min/count", "minutes"),
        ("timed_counts", "计时次数 timed", "int"), ("overturned", "被推翻 overturned", "int"),
        ("overturn_rate", "推翻率 overturn rate", "ratio"),
    ]),
}  # fmt: skip


def _report_cell(value: Any, kind: str, for_csv: bool) -> str:
    if value is None:
        return "" if for_csv else "-"
    if kind == "ratio":
        return f"{value:.4f}" if for_csv else f"{value:.1%}"
    if kind == "money":
        return f"{value:.2f}" if for_csv else f"{value:,.2f}"
    if kind == "qty":
        return f"{value.normalize():f}" if for_csv else f"{value.normalize():+f}"
    if kind in ("hours", "minutes"):
        return f"{value:.1f}" if kind == "hours" else f"{value:.2f}"
    return str(value)


def _report_json(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _report_day(value: str | None, option: str, today: date) -> date | None:
    if value is None:
        return None
    if value == "today":
        return today
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.ClickException(
            f"{option} 的日期格式应为 YYYY-MM-DD / {option} expects YYYY-MM-DD, got {value!r}"
        ) from None


def _report_command(name: str, help_text: str) -> Callable[[Callable[..., Any]], Any]:
    """A ``pandian report NAME`` command: shared options, one unit of work (read only), three formats."""

    def wrap(fetch: Callable[..., Awaitable[list[Any]]]) -> Any:
        @report.command(name=name, help=help_text)
        @click.option(
            "--from", "start", metavar="DATE", help="First day, YYYY-MM-DD (default: 29 days before --to)."
        )
        @click.option("--to", "end", metavar="DATE", help="Last day, YYYY-MM-DD (default: today).")
        @click.option("--warehouse", metavar="CODE", help="One warehouse only.")
        @click.option("--class", "abc_class", metavar="A|B|C", help="One ABC class only.")
        @click.option(
            "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
        )
        @click.option(
            "--out",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write csv or json to this file instead of stdout.",
        )
        def cmd(start: str | None, end: str | None, warehouse: str | None, abc_class: str | None, fmt: str,
                out: Path | None) -> None:  # fmt: skip
            from datetime import timedelta

            from core.analytics import ReportError, ReportFilter

            if out is not None and fmt == "table":
                raise click.ClickException("--out 只用于 csv 或 json / --out needs --format csv or json")

            async def go(settings: Settings) -> tuple[ReportFilter, list[Any]]:
                today = local_day(now(), settings.tz)
                first, last = _report_day(start, "--from", today), _report_day(end, "--to", today)
                # open variances: all of them unless a period is given; other reports: the last 30 days
                if name != "variances" or first or last:
                    last = last or today
                    first = first or last - timedelta(days=29)
                flt = ReportFilter(first, last, warehouse, abc_class)
                return flt, await _with_session(settings, lambda s: fetch(s, settings, flt), commit=False)

            try:
                flt, rows = run(go)
            except ReportError as exc:
                raise click.ClickException(str(exc)) from None
            _print_report(name, rows, flt, fmt, out)

        return cmd

    return wrap


def _print_report(name: str, rows: list[Any], flt: Any, fmt: str, out: Path | None) -> None:
    import csv
    import dataclasses
    import io
    import json

    title, columns = _REPORT_KINDS[name]
    if fmt == "json":
        text = json.dumps(
            [{k: _report_json(v) for k, v in dataclasses.asdict(r).items()} for r in rows],
            ensure_ascii=False,
            indent=1,
        )
        text += "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([label for _, label, _ in columns])
        for r in rows:
            writer.writerow([_report_cell(getattr(r, f), kind, True) for f, _, kind in columns])
        text = buf.getvalue()
    else:
        period = f"{flt.start or '…'} ~ {flt.end or '…'}" if flt.start or flt.end else "全部 all"
        scope = " ".join(
            x for x in (flt.warehouse, f"class {flt.abc_class.upper()}" if flt.abc_class else None) if x
        )
        table = Table(title=f"{title}（{period}{' ' + scope if scope else ''}）")
        for _, label, kind in columns:
            table.add_column(label, justify="left" if kind == "text" else "right", overflow="fold")
        for r in rows:
            table.add_row(*(_report_cell(getattr(r, f), kind, False) for f, _, kind in columns))
        console.print(table)
        if not rows:
            console.print("没有数据 / no data")
        return
    if out is not None:
        # UTF-8 with a BOM for csv, so Excel opens Chinese text correctly
        out.write_text(text, encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="")
        err.print(f"已写入 {out} / written: {len(rows)} rows")
    else:
        click.echo(("\ufeff" if fmt == "csv" else "") + text, nl=False)


@main.group()
def report() -> None:
    """Reports: accuracy, progress, open variances, reason Pareto, counters (table, csv or json)."""


@_report_command("accuracy", "Record accuracy (hit rate), unit and value accuracy, adjustment value: per class, "
                             "warehouse and ISO week.")  # fmt: skip
async def _report_accuracy(s: AsyncSession, settings: Settings, flt: Any) -> list[Any]:
    from core.analytics import accuracy_report

    return list(await accuracy_report(s, settings, flt))


@_report_command("progress", "Planned, done and overdue count tasks per day, counter and zone.")
async def _report_progress(s: AsyncSession, settings: Settings, flt: Any) -> list[Any]:
    from core.analytics import progress_report

    return list(await progress_report(s, settings, flt))


@_report_command("variances", "Open variances: state, age, severity, value and who acts next.")
async def _report_variances(s: AsyncSession, settings: Settings, flt: Any) -> list[Any]:

    from core.analytics import open_variances_report

    return list(await open_variances_report(s, settings, flt, now=now()))


@_report_command("reasons", "The reason Pareto: count and value per reason, shares and cumulative shares.")
async def _report_reasons(s: AsyncSession, settings: Settings, flt: Any) -> list[Any]:
    from core.analytics import reasons_report

    return list(await reasons_report(s, settings, flt))


@_report_command("counters", "Per counter: counts, average minutes per count, overturned counts and rate.")
async def _report_counters(s: AsyncSession, settings: Settings, flt: Any) -> list[Any]:
    from core.analytics import counters_report

    return list(await counters_report(s, settings, flt))


@main.command("show")
@click.argument("variance_id", type=int)
def show_variance(variance_id: int) -> None:
    """Everything about one variance: item, location, book, each count, photos, movements, approvals."""
    from core.variance.service import dossier

    async def work(settings: Settings, s: AsyncSession) -> Any:
        return settings, await dossier(s, variance_id)

    settings, d = _flow(work)
    v, tz = d.variance, settings.tz
    pct = f"{v.pct:+.1f}%" if v.pct is not None else "—（账存为 0）"
    console.print(
        f"差异 #{v.id}  {d.item.sku} {d.item.name} {d.item.spec or ''} @ {d.location.code}\n"
        f"状态 {v.state}  级别 {v.severity}  账存 {v.book_qty:g}  实盘 {v.counted_qty:g}  差异 {v.qty:+g}{d.item.base_unit}"
        f"（{pct}，{v.value:+,.2f} 元）{'  盘点时有出入库' if v.moved_during_count else ''}"
    )
    if v.suggestion_text:
        console.print(f"建议原因：{v.suggestion_text}")
    if v.reason_code:
        console.print(f"审核原因：{v.reason_code} {v.reason_note or ''}")
    table = Table(title="盘点记录 / counts")
    for col in ("时间", "盘点员", "数量", "输入", "方式", "部分", "照片", "备注", "状态"):
        table.add_column(col, overflow="fold")
    for e, u in d.entries:
        state = "已被替换" if e.superseded_by_id else ("被复盘推翻" if e.overturned else "")
        table.add_row(e.counted_at.astimezone(tz).strftime("%m-%d %H:%M"), u.name, f"{e.qty:g}" if e.qty is not None else "",
                      e.raw_text or e.outcome, e.method, "是" if e.partial else "", str(len(e.photos or [])),
                      e.note or "", state)  # fmt: skip
    console.print(table)
    if d.movements:
        mt = Table(title="期间出入库 / movements")
        for col in ("时间", "类型", "数量", "单据"):
            mt.add_column(col)
        for m in d.movements:
            mt.add_row(
                m.occurred_at.astimezone(tz).strftime("%m-%d %H:%M"),
                str(m.type),
                f"{m.qty:+g}",
                m.source_doc or "",
            )
        console.print(mt)
    for st in d.steps:
        console.print(
            f"审批 {st.seq}. {st.role}: {st.decision}" + (f"（{st.comment}）" if st.comment else "")
        )


@main.command("resolve")
@click.argument("variance_id", type=int)
@click.option("--count", "count_is_right", flag_value=True, help="The count stands: go on to review.")
@click.option("--book", "count_is_right", flag_value=False, help="The book stands: close without adjustment.")
@_as_option
def resolve(variance_id: int, count_is_right: bool | None, as_: str) -> None:
    """A supervisor decides a variance whose counts disagree."""
    from core.variance.service import resolve_dispute, user_by_employee_no

    if count_is_right is None:
        raise click.UsageError("请用 --count 或 --book 表明哪一方正确 / pass --count or --book")

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        return await resolve_dispute(s, settings, variance_id=variance_id, supervisor_id=user.id,
                                     count_is_right=bool(count_is_right), now=now())  # fmt: skip

    v = _flow(work)
    console.print(f"[green]✓[/] 差异 #{v.id}：{v.state}")


@main.command("housekeeping")
def housekeeping_cmd() -> None:
    """Run the workflow's periodic jobs: escalate late approvals, open improvement items, re-evaluate."""
    from core.variance.service import housekeeping

    done = _flow(lambda settings, s: housekeeping(s, settings, now()))
    console.print(
        f"升级审批 {done['escalated']}，改进项 {done['improvement_items']}，重新计算差异 {done['reevaluated']}"
    )


@main.command()
@click.option("--host", default=None, help="Default: server.host (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: server.port (8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the bot server: platform webhooks (those configured), /healthz and /metrics."""

    from aiohttp import web

    from bot.app import build_app
    from bot.logs import setup_logging
    from core import migrate

    try:
        settings = load_settings()
    except Exception as exc:
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from exc
    setup_logging(settings.server.log_format)
    try:  # in a child process: Alembic stays out of the long-running server
        revision = migrate.upgrade_in_child(settings.database_url)
    except migrate.MigrationFailed as exc:
        raise click.ClickException(f"数据库升级失败 / database upgrade failed: {exc}") from exc
    console.print(f"数据库结构 {revision} / schema at revision {revision}")
    web.run_app(
        build_app(settings, clock=clock()),
        host=host or settings.server.host,
        port=port or settings.server.port,
    )


def _register_groups() -> None:
    from bot.cli_erp import erp
    from bot.cli_jobs import jobs

    main.add_command(jobs)
    main.add_command(erp)


_register_groups()
