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
        return datetime.now(settings.tz).date()
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"日期格式应为 YYYY-MM-DD / expected YYYY-MM-DD, got {value!r}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pandian")
def main() -> None:
    """pandian 盘点: cycle counting in WeCom, Feishu and DingTalk.

    Configuration comes from PANDIAN_* environment variables and an optional pandian.toml
    (see README). The database defaults to pandian.db in the working directory.
    """


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

            return await _with_session(
                settings, lambda s: import_file(s, file, kind, tz=settings.tz, progress=progress)
            )

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
            settings, lambda s: classify_items(s, settings, as_of=day, warehouse_code=warehouse)
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
            settings, lambda s: plan_day(s, settings, d, warehouse_code=warehouse), commit=not dry_run
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
        table.add_column(col)
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

    today = datetime.now(settings.tz).date()

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
@click.option("--items", default=2000, show_default=True)
def demo(items: int) -> None:
    """The quick-start demo: generate the demo company, classify it, plan the next working day."""
    from core.classification_service import classify as classify_items
    from core.scheduling.service import load_calendar, plan_day

    async def go(settings: Settings) -> Any:
        await _generate(settings, items, 20261128)

        async def work(session: AsyncSession) -> Any:
            today = datetime.now(settings.tz).date()
            summary = await classify_items(session, settings, as_of=today)
            cal = await load_calendar(session, settings)
            day = today if cal.is_working_day(today) else cal.add_working_days(today, 1)
            return summary, await plan_day(session, settings, day)

        return await _with_session(settings, work)

    summary, result = run(go)
    print_classification(summary)
    print_plan(result, limit=40)


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
