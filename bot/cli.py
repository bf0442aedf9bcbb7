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
    from core.config_check import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:  # one bilingual line per mistake, never a value
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from None
    except Exception as exc:
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from exc
    from bot.cli_config import database_present

    database_present(settings)  # a missing SQLite file: refused (or, by the commands that fill it, created)
    try:
        return asyncio.run(coro_fn(settings))
    except Exception as exc:
        from bot.cli_config import database_unreachable

        said = database_unreachable(settings, exc)
        if said is None:
            raise
        raise click.ClickException(said) from None


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


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _bilingual_usage(exc: click.UsageError) -> click.UsageError:
    """Click's own usage errors (a missing option, an unknown one, "abc" for a number) in Chinese and English."""
    message = exc.format_message()
    if _has_cjk(message):
        return exc  # ours: already bilingual
    param = getattr(exc, "param", None)
    name = (
        ("/".join(param.opts) if isinstance(param, click.Option) else param.human_readable_name)
        if param
        else ""
    )
    if isinstance(exc, click.MissingParameter):
        zh = f"缺少{'选项' if isinstance(param, click.Option) else '参数'} {name}"
    elif isinstance(exc, click.NoSuchOption):
        zh = f"没有选项 {exc.option_name}"
    elif isinstance(exc, click.BadOptionUsage):
        zh = f"选项 {exc.option_name} 的用法有误"
    elif isinstance(exc, click.BadParameter):
        zh = f"{name} 的值无效" if name else "参数值无效"
    else:
        zh = "命令用法有误"
    return click.UsageError(f"{zh}，请用 --help 查看用法 / {message}", ctx=exc.ctx)


class _Pandian(click.Group):
    """The root group: every usage error of every verb gets its Chinese line (exit code 2, never a traceback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _bilingual_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _bilingual_usage(exc) from None


@click.group(cls=_Pandian, context_settings={"help_option_names": ["-h", "--help"]})
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
    from alembic.util import CommandError

    from core import migrate

    async def go(settings: Settings) -> Any:
        engine = make_engine(settings.database_url)
        try:
            await migrate.upgrade(engine, revision)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    try:
        rev = run(go)
    except CommandError as exc:  # an unknown --revision
        raise click.ClickException(
            f"无法升级到 {revision!r}，已知版本：{'、'.join(migrate.revisions())} / cannot upgrade to {revision!r}: {exc}"
        ) from None
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
    from contextlib import nullcontext

    from rich.markup import escape

    from core.importing import ImportFailed, import_file

    # Progress goes to stderr: a spinner with the step and the rows in a terminal; otherwise (a pipe, a log,
    # CI) one line per step and one every PLAIN_EVERY rows, so a long import is never silent.
    plain_every = 100_000
    live = err.is_terminal
    state: dict[str, Any] = {"stage": "checking", "printed": 0}
    words = {
        "checking": ("检查文件", "checking the file"),
        "reading": ("读取并检查每一行", "reading and checking every row"),
        "writing": ("写入数据库", "writing to the database"),
    }

    def line(text: str) -> None:
        if live:
            status.update(text)
        else:
            err.print(text, markup=False, highlight=False)

    def stage(name: str, rows: int) -> None:
        state["stage"] = name
        if name in words:
            zh, en = words[name]
            if name == "writing":  # set-based statements: no row count until they are done
                zh, en = (
                    f"{zh} {rows:,} 行（这一步不显示进度）",
                    f"{en}, {rows:,} rows (no progress shown for this step)",
                )
            line(f"导入 {file.name}：{zh}… / {en}…")

    def progress(done: int) -> None:
        if not live and done - state["printed"] < plain_every and state["printed"]:
            return
        state["printed"] = done
        if state["stage"] == "writing":  # users are written row by row
            line(f"导入 {file.name}：已写入 {done:,} 行 / {done:,} rows written")
        else:
            line(f"导入 {file.name}：已读 {done:,} 行 / {done:,} rows read")

    status: Any = err.status(f"导入 {file.name} … / importing {file.name} …") if live else nullcontext()

    async def go(settings: Settings) -> Any:
        async def work(s: AsyncSession) -> Any:
            report = await import_file(
                s,
                file,
                kind,
                tz=settings.tz,
                progress=progress,
                now=now(),
                limits=settings.importing,
                stage=stage,
            )
            if report.kind == "movements" and report.created:
                # late movements that happened before a count change that count's book
                from core.variance.service import reevaluate_open_variances

                await reevaluate_open_variances(s, settings, now())
            return report

        return await _with_session(settings, work)

    try:
        with status:
            if not live:
                err.print(f"导入 {file.name} … / importing {file.name} …", markup=False, highlight=False)
            report = run(go)
    except ImportFailed as exc:
        err.print(str(exc), markup=False)  # says that nothing was changed
        raise SystemExit(1) from None
    console.print(
        f"[green]✓[/] {file.name}（{report.kind}）：{report.rows} 行；新增 {report.created}，更新 {report.updated}，"
        f"未变 {report.unchanged} / {report.rows} rows: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged"
    )
    for note in report.notes:  # worth knowing, not errors: ignored columns, a warehouse nobody can count...
        console.print(f"[yellow]注意 / note[/] {escape(str(note))}")


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
@click.option("--as", "as_", metavar="EMPLOYEE_NO", help="Who asks (recorded with the request).")
def request(sku: str, warehouse: str, location: str, note: str | None, as_: str | None) -> None:
    """Ask for an ad-hoc count of one item at one location; the next plan puts it first in line.

    Asking again while a request for the same item and location waits to be planned adds the note to it."""
    from sqlalchemy import func, select

    from core.models import CountRequest, Item, ItemLocation, Location, Warehouse
    from core.scheduling.service import request_count
    from core.variance.service import WorkflowError, user_by_employee_no

    async def work(settings: Settings, session: AsyncSession) -> Any:
        asker = await user_by_employee_no(session, as_) if as_ else None
        await _known_warehouse(session, warehouse)
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
            raise WorkflowError(f"{warehouse}/{location} 没有物料 {sku} 的库存记录",
                                f"no stock record of {sku} at {warehouse}/{location}")  # fmt: skip
        last = int(await session.scalar(select(func.max(CountRequest.id))) or 0)
        req = await request_count(
            session, il, requested_by_id=asker.id if asker else None, note=note, now=now()
        )
        return req, req.id <= last

    req, merged = _flow(work)
    if merged:
        console.print(
            f"[green]✓[/] {warehouse}/{location} {sku} 已有待排程的临时盘点请求 #{req.id}，备注已合并 / "
            f"already requested (#{req.id}); the note was added to it"
        )
        return
    console.print(
        f"[green]✓[/] 已登记临时盘点请求 #{req.id}（{warehouse}/{location} {sku}），下次排程时优先安排 / "
        f"ad-hoc count #{req.id} requested"
    )


# ------------------------------------------------------------------------------------ the count workflow


def _flow(work: Callable[[Settings, AsyncSession], Awaitable[T]]) -> T:
    """Run one workflow step; its refusals become clear errors (exit 1) and change nothing (the unit of work
    is rolled back: nothing is committed when ``work`` raises)."""
    from core.quantity import QuantityError
    from core.variance.rules import RuleViolation
    from core.variance.service import WorkflowError
    from core.variance.workflow import IllegalTransition

    async def go(settings: Settings) -> T:
        return await _with_session(settings, lambda s: work(settings, s))

    try:
        return run(go)
    except (WorkflowError, IllegalTransition, RuleViolation) as exc:
        raise click.ClickException(f"{_zh_states(exc.zh)} / {exc.en}") from None
    except QuantityError as exc:
        raise click.ClickException(str(exc)) from None


def _state_names() -> dict[str, str]:
    from core.variance.workflow import ADJUSTMENT, COUNT_TASK, VARIANCE

    names: dict[str, str] = {}
    for table in (ADJUSTMENT, COUNT_TASK, VARIANCE):  # a variance's "open" wins over a task's
        names |= {e.value: zh for e, zh in table.event_zh.items()}
    for table in (ADJUSTMENT, COUNT_TASK, VARIANCE):
        names |= {s.value: zh for s, zh in table.state_zh.items()}
    return names


def _zh_states(text: str) -> str:
    """Chinese text without English state or event codes: "已结束（done）" reads "已结束（已完成）", and a code
    right after its Chinese name ("「待审批」(pending_approval)") is dropped."""
    import re

    names = _state_names()

    def plain(m: re.Match[str]) -> str:
        code = m.group(2)
        if code not in names:
            return m.group(0)
        return m.group(1) if m.group(1) == "」" else f"{m.group(1)}（{names[code]}）"

    return re.sub(r"(.?)[(（]([a-z_]+)[)）]", plain, text)


def _as_option(f: Any) -> Any:
    return click.option("--as", "as_", required=True, metavar="EMPLOYEE_NO", help="Who is doing this.")(f)


def _format_option(f: Any) -> Any:
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
        help="json: one stable document for scripts (fields in the README).",
    )(f)  # fmt: skip


# Formatting for people, one place for the whole command line: quantities as the unit needs them (330, 12.5;
# never 330.0000), percentages to one decimal (+33.3 %), states and severities by their Chinese names with the
# code after " / ". JSON (``_json_value``) keeps numbers as numbers, as ``report --format json`` does.


def _qty(q: Any) -> str:
    from bot.cards.text import qty

    return "" if q is None else qty(q)


def _signed(q: Any) -> str:
    from bot.cards.text import signed

    return signed(q)


def _pct(p: Any) -> str:
    return "—" if p is None else f"{p:+.1f} %"


def _state(code: str) -> str:
    from core.variance.workflow import VARIANCE, VarianceState

    try:
        return f"{VARIANCE.state_zh[VarianceState(code)]} / {code}"
    except ValueError:
        return code


def _severity(code: str) -> str:
    from core.variance.tolerance import SEVERITY_LABEL_ZH, Severity

    try:
        return f"{SEVERITY_LABEL_ZH[Severity(code)]} / {code}"
    except ValueError:
        return code


def _json_value(value: Any) -> Any:
    out = _report_json(value)  # Decimal -> number, date -> ISO text
    return str(out) if out is value else out


def _echo_json(doc: Any) -> None:
    import json

    click.echo(json.dumps(doc, ensure_ascii=False, indent=1, default=_json_value))


async def _many_warehouses(s: AsyncSession) -> bool:
    """Whether a location needs its warehouse to be told apart (the same bin codes exist in each warehouse)."""
    from sqlalchemy import func, select

    from core.models import Warehouse

    return int(await s.scalar(select(func.count()).select_from(Warehouse)) or 0) > 1


def _where(warehouse: str, location: str, many: bool) -> str:
    return f"{warehouse}/{location}" if many else location


async def _known_warehouse(s: AsyncSession, code: str | None) -> None:
    """Refuse an unknown warehouse code, naming the known ones (an empty listing would look like "all done")."""
    from sqlalchemy import select

    from core.models import Warehouse
    from core.variance.service import WorkflowError

    if code is None:
        return
    known = list((await s.execute(select(Warehouse.code).order_by(Warehouse.code))).scalars())
    if code not in known:
        raise WorkflowError(f"没有仓库 {code}，已有：{'、'.join(known) or '无'}",
                            f"unknown warehouse {code}; known: {', '.join(known) or 'none'}")  # fmt: skip


# Reasons that would tell a counter about the book (below zero, zero, stock that does not move): a counter's
# listing leaves them out, as it leaves out the book quantity.
_BOOK_REVEALING_REASONS = frozenset({"negative", "zero", "dormant"})


@main.command()
@_as_option
@click.option("--date", "day", metavar="DATE", help="Tasks due by this day (default: today).")
@_format_option
def tasks(as_: str, day: str | None, fmt: str) -> None:
    """A counter's open tasks, in walking order (book quantities are never shown: counts are blind)."""
    from sqlalchemy import select

    from core.enums import REASON_LABEL_ZH, TaskReason
    from core.models import Warehouse
    from core.variance.service import counter_tasks, user_by_employee_no

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        rows = await counter_tasks(s, user.id, _parse_day(day, settings))
        codes = dict((await s.execute(select(Warehouse.id, Warehouse.code))).all())
        return user.name, rows, codes, await _many_warehouses(s)

    name, rows, codes, many = _flow(work)

    def reason(t: Any) -> str | None:
        return None if str(t.reason) in _BOOK_REVEALING_REASONS else TaskReason(t.reason).value

    if fmt == "json":
        _echo_json([
            {"task_id": t.id, "warehouse": codes[loc.warehouse_id], "location": loc.code, "sku": item.sku,
             "item_name": item.name, "spec": item.spec, "unit": item.base_unit, "reason": reason(t),
             "plan_date": t.plan_date, "due_date": t.due_date, "status": str(t.status)}
            for t, item, loc in rows
        ])  # fmt: skip
        return
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
    for t, item, loc in rows:
        why = reason(t)
        table.add_row(str(t.id), _where(codes[loc.warehouse_id], loc.code, many), item.sku, item.name,
                      item.spec or "", item.base_unit, REASON_LABEL_ZH[TaskReason(why)] if why else "盘点")  # fmt: skip
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
    # the same neutral words for every outcome, whoever runs it: counts are blind (a recount is the recounter's
    # news, on their list; supervisors see the outcome with `pandian variances` and `show`)
    console.print(f"[green]✓[/] 任务 #{task_id}{understood}：{r.message_zh} / {r.message_en}")


def _at(t: datetime | None, tz: Any) -> str | None:
    """An instant for JSON: the company's local time with its offset, to the second."""
    return None if t is None else t.astimezone(tz).isoformat(timespec="seconds")


def _variance_json(v: Any, item: Any, location: str, warehouse: str, tz: Any) -> dict[str, Any]:
    """One variance as ``variances --format json`` and ``show --format json`` give it (fields in the README)."""
    from core.variance.tolerance import SEVERITY_LABEL_ZH, Severity
    from core.variance.workflow import VARIANCE, VarianceState

    return {
        "id": v.id, "warehouse": warehouse, "location": location, "sku": item.sku, "item_name": item.name,
        "unit": item.base_unit, "abc_class": v.abc_class, "state": v.state,
        "state_zh": VARIANCE.state_zh[VarianceState(v.state)], "severity": v.severity,
        "severity_zh": SEVERITY_LABEL_ZH[Severity(v.severity)], "book_qty": v.book_qty,
        "counted_qty": v.counted_qty, "qty": v.qty, "pct": v.pct, "value": v.value,
        "moved_during_count": v.moved_during_count, "recounts": v.recounts,
        "suggested_reason": v.suggested_reason, "suggestion_text": v.suggestion_text,
        "reason_code": v.reason_code, "reason_note": v.reason_note, "count_time": _at(v.count_time, tz),
        "created_at": _at(v.created_at, tz), "closed_at": _at(v.closed_at, tz),
    }  # fmt: skip


@main.command()
@click.option("--warehouse", metavar="CODE")
@click.option("--all", "show_all", is_flag=True, help="Closed ones too.")
@_format_option
def variances(warehouse: str | None, show_all: bool, fmt: str) -> None:
    """Open variances and their state."""
    from sqlalchemy import select

    from core.models import Item, Location, Variance, Warehouse

    async def work(settings: Settings, s: AsyncSession) -> Any:
        await _known_warehouse(s, warehouse)
        stmt = (
            select(Variance, Item, Location.code, Warehouse.code)
            .join(Item, Item.id == Variance.item_id)
            .join(Location, Location.id == Variance.location_id)
            .join(Warehouse, Warehouse.id == Variance.warehouse_id)
            .order_by(Variance.id)
        )
        if not show_all:
            stmt = stmt.where(Variance.closed_at.is_(None))
        if warehouse:
            stmt = stmt.where(Warehouse.code == warehouse)
        return settings, (await s.execute(stmt)).all()

    settings, rows = _flow(work)
    if fmt == "json":
        _echo_json([_variance_json(v, item, loc, wh, settings.tz) for v, item, loc, wh in rows])
        return
    table = Table(title="差异 / variances")
    for col in (
        "#",
        "仓库",
        "库位",
        "物料",
        "账存 book",
        "实盘 counted",
        "差异 qty",
        "差异率 pct",
        "金额 value",
        "级别",
        "状态 state",
        "建议原因",
    ):
        table.add_column(col, overflow="fold")
    for v, item, loc, wh in rows:
        table.add_row(str(v.id), wh, loc, item.sku, _qty(v.book_qty), _qty(v.counted_qty), _signed(v.qty),
                      _pct(v.pct), f"{v.value:,.2f}", _severity(v.severity), _state(v.state),
                      v.suggestion_text or "")  # fmt: skip
    console.print(table)
    if not rows:
        console.print("没有差异 / no variances")


def _reason_code(text: str, codes: Any) -> str:
    """The reason code a reviewer means: the code (receiving), its Chinese label (收货环节错漏), its English
    label (Receiving error, any case) or the "收货环节错漏(receiving)" that the refusal lists. Anything else is
    passed on for the workflow to refuse with the list."""
    import re

    said = text.strip()
    listed = re.fullmatch(r".*[(（]\s*([^()（）]+?)\s*[)）]", said)
    for c in codes:
        if (
            said in (c.code, c.zh)
            or said.casefold() == c.en.casefold()
            or (listed and listed.group(1) == c.code)
        ):
            return str(c.code)
    return said


@main.command()
@click.argument("variance_id", type=int)
@click.option("--reason", "reason", required=True,
              help="Reason: its code (receiving) or its label (收货环节错漏); other needs --note.")  # fmt: skip
@click.option("--note", default=None)
@_as_option
def review(variance_id: int, reason: str, note: str | None, as_: str) -> None:
    """Review a confirmed variance with a standard reason; opens its approval steps."""
    from core.variance.service import review_variance, user_by_employee_no

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        code = _reason_code(reason, settings.reasons.codes)
        v = await review_variance(s, settings, variance_id=variance_id, reviewer_id=user.id, reason_code=code,
                                  note=note, now=now())  # fmt: skip
        return v, settings.reasons.get(v.reason_code or "")

    v, picked = _flow(work)
    label = f"{picked.zh} / {picked.code}" if picked else v.reason_code
    console.print(f"[green]✓[/] 差异 #{v.id} 已审核（{label}），进入审批 / reviewed; awaiting approval")


def _decision_command(name: str, decision: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @click.argument("variance_id", type=int)
    @click.option("--comment", default=None, help="Required when rejecting.")
    @_as_option
    def cmd(variance_id: int, comment: str | None, as_: str) -> None:
        from core.enums import ApprovalDecision
        from core.variance.service import decide, user_by_employee_no

        async def work(settings: Settings, s: AsyncSession) -> Any:
            from sqlalchemy import select

            from core.models import ApprovalStep

            user = await user_by_employee_no(s, as_)
            d = await decide(s, settings, variance_id=variance_id, actor_id=user.id,
                             decision=ApprovalDecision(decision), comment=comment, now=now())  # fmt: skip
            nxt = await s.scalar(
                select(ApprovalStep.role).where(ApprovalStep.variance_id == variance_id,
                                                ApprovalStep.decision == ApprovalDecision.PENDING,
                                                ApprovalStep.opened_at.is_not(None))
            )  # fmt: skip
            return d, nxt

        d, nxt = _flow(work)
        from core.enums import ROLE_LABEL_ZH, Role
        from core.variance.workflow import VARIANCE, VarianceState

        state = VarianceState(d.variance.state)
        if not d.final:
            role = Role(nxt) if nxt in Role._value2member_map_ else None
            said = (
                f"本级已通过，等待下一级（{ROLE_LABEL_ZH[role]}）审批 / approved at this step; on to the {role.value}"
                if role
                else "本级已通过，等待下一级审批 / approved at this step; on to the next approver"
            )
        else:
            said = f"{VARIANCE.state_zh[state]} / {state.value}"
        console.print(f"[green]✓[/] 差异 #{variance_id}：{said}")


_decision_command("approve", "approved", "Approve the current approval step of a variance.")
_decision_command("reject", "rejected", "Reject a variance (closed without adjustment); --comment says why.")
_decision_command("send-back", "recount", "Send a variance back for another blind recount.")


# What the audit trail's actions and entities are called, beyond the events of the state tables.
_AUDIT_ACTION_ZH = {
    "created": "创建", "counted": "盘点", "voided": "撤销", "reopened": "重新打开", "reevaluated": "按补录出入库重算",
    "unscheduled_created": "计划外盘点", "escalated": "升级审批", "misslot_paired": "串货配对调拨",
    "held": "暂缓回写", "confirmed_absent": "确认未过账", "opened": "建立改进项", "recount": "退回重盘",
    "cancelled": "取消", "default_team_set": "设置默认盘点组",
}  # fmt: skip
_AUDIT_ENTITY_ZH = {
    "variance": "差异", "task": "任务", "count": "盘点记录", "approval": "审批", "adjustment": "调整单",
    "improvement": "改进项", "warehouse": "仓库",
}  # fmt: skip


def _audit_tables() -> dict[str, Any]:
    from core.variance.workflow import ADJUSTMENT, COUNT_TASK, VARIANCE

    return {"variance": VARIANCE, "task": COUNT_TASK, "adjustment": ADJUSTMENT}


def _audit_action_zh(entity: str, action: str) -> str:
    from core.variance.workflow import VARIANCE

    table = _audit_tables().get(entity, VARIANCE)
    by_event = {str(e): zh for e, zh in table.event_zh.items()}
    return by_event.get(action) or _AUDIT_ACTION_ZH.get(action) or action


def _audit_state_zh(entity: str, state: str | None) -> str | None:
    table = _audit_tables().get(entity)
    if state is None or table is None:
        return state
    return next((zh for st, zh in table.state_zh.items() if str(st) == state), state)


def _audit_value(v: Any) -> str:
    """A recorded value for people: "4.0000" (a stored quantity) reads 4; codes such as "00123" stay as they are."""
    import re
    from decimal import Decimal

    if isinstance(v, str) and re.fullmatch(r"[+-]?\d+\.\d+", v):
        return _qty(Decimal(v))
    return str(v)


@main.command("audit")
@click.argument("variance_id", type=int)
@_format_option
def audit_cmd(variance_id: int, fmt: str) -> None:
    """The audit trail of a variance: every state change with actor and time."""
    from sqlalchemy import select

    from core.audit import trail
    from core.models import User

    async def work(settings: Settings, s: AsyncSession) -> Any:
        events = await trail(s, variance_id)
        people = {
            u: (no, name) for u, no, name in (await s.execute(select(User.id, User.employee_no, User.name)))
        }
        return settings, events, people

    settings, events, people = _flow(work)
    if not events:
        raise click.ClickException(
            f"差异 #{variance_id} 没有记录 / no audit trail for variance #{variance_id}"
        )
    if fmt == "json":
        _echo_json([
            {"at": _at(e.at, settings.tz), "entity": e.entity, "entity_id": e.entity_id, "action": e.action,
             "action_zh": _audit_action_zh(e.entity, e.action), "from_state": e.from_state,
             "from_state_zh": _audit_state_zh(e.entity, e.from_state), "to_state": e.to_state,
             "to_state_zh": _audit_state_zh(e.entity, e.to_state),
             "actor": people.get(e.actor_id, (None, None))[0], "actor_name": people.get(e.actor_id, (None, None))[1],
             "data": e.data or {}}
            for e in events
        ])  # fmt: skip
        return
    table = Table(title=f"差异 #{variance_id} 审计记录 / audit trail")
    for col in ("时间 time", "对象 entity", "动作 action", "状态 state", "操作人 actor", "详情 data"):
        table.add_column(col, overflow="fold")
    for e in events:
        states = ""
        if e.to_state:
            zh = f"{_audit_state_zh(e.entity, e.from_state) or ''} → {_audit_state_zh(e.entity, e.to_state)}"
            states = f"{zh} / {e.from_state or ''} → {e.to_state}"
        table.add_row(e.at.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S"),
                      f"{_AUDIT_ENTITY_ZH.get(e.entity, e.entity)}#{e.entity_id}",
                      f"{_audit_action_zh(e.entity, e.action)} / {e.action}", states,
                      people[e.actor_id][1] if e.actor_id in people else "系统",
                      ", ".join(f"{k}={_audit_value(v)}" for k, v in (e.data or {}).items()))  # fmt: skip
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
        from core.cells import safe_cell

        for r in rows:
            # text cells (names, codes) are made inert: a name such as "=HYPERLINK(…)" is not a formula
            writer.writerow(
                [
                    safe_cell(cell) if kind == "text" else cell
                    for f, _, kind in columns
                    for cell in (_report_cell(getattr(r, f), kind, True),)
                ]
            )
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


_OUTCOME_ZH = {
    "counted": "已盘点",
    "empty": "库位为空",
    "not_here": "物料不在此库位",
    "found_unlisted": "计划外发现",
}
_METHOD_ZH = {"scan": "扫码", "typed": "手输", "cli": "命令行"}
_DECISION_ZH = {"pending": "待审批", "approved": "已通过", "rejected": "已驳回", "recount": "退回重盘",
                "escalated": "已升级", "cancelled": "已取消"}  # fmt: skip


@main.command("show")
@click.argument("variance_id", type=int)
@_format_option
def show_variance(variance_id: int, fmt: str) -> None:
    """Everything about one variance: item, location, book, each count, photos, movements, approvals."""
    from sqlalchemy import select

    from core.analytics import ROLE_ZH
    from core.models import User, Warehouse
    from core.variance.rules import _TYPE_ZH as MOVEMENT_ZH
    from core.variance.service import dossier

    async def work(settings: Settings, s: AsyncSession) -> Any:
        d = await dossier(s, variance_id)
        wh = await s.get(Warehouse, d.variance.warehouse_id)
        people = {
            u: (no, name) for u, no, name in (await s.execute(select(User.id, User.employee_no, User.name)))
        }
        return settings, d, wh.code if wh else "", await _many_warehouses(s), people

    settings, d, wh, many, people = _flow(work)
    v, tz = d.variance, settings.tz
    from core.variance.tolerance import Severity, compute_variance

    why = settings.tolerance.tiers.explain(
        compute_variance(v.book_qty, v.counted_qty, v.unit_cost), Severity(v.severity)
    )
    if fmt == "json":
        doc = _variance_json(v, d.item, d.location.code, wh, tz)
        doc["spec"] = d.item.spec
        doc["severity_why_zh"], doc["severity_why_en"] = why
        doc["counts"] = [
            {"entry_id": e.id, "task_id": e.task_id, "counter": u.employee_no, "counter_name": u.name,
             "qty": e.qty, "raw_text": e.raw_text, "outcome": str(e.outcome), "method": str(e.method),
             "partial": e.partial, "recount": e.recount, "photos": len(e.photos or []), "note": e.note,
             "captured_at": _at(e.counted_at, tz), "recorded_at": _at(e.recorded_at, tz),
             "superseded": e.superseded_by_id is not None, "overturned": e.overturned}
            for e, u in d.entries
        ]  # fmt: skip
        doc["movements"] = [
            {
                "occurred_at": _at(m.occurred_at, tz),
                "type": str(m.type),
                "qty": m.qty,
                "source_doc": m.source_doc,
            }
            for m in d.movements
        ]
        doc["approvals"] = [
            {"seq": st.seq, "role": st.role, "decision": str(st.decision),
             "decided_by": people.get(st.decided_by_id, (None, None))[0],
             "decided_by_name": people.get(st.decided_by_id, (None, None))[1],
             "opened_at": _at(st.opened_at, tz), "due_at": _at(st.due_at, tz), "decided_at": _at(st.decided_at, tz),
             "comment": st.comment}
            for st in d.steps
        ]  # fmt: skip
        _echo_json(doc)
        return
    unit = d.item.base_unit
    pct = _pct(v.pct) if v.pct is not None else "—（账存为 0）"
    console.print(
        f"差异 #{v.id}  {d.item.sku} {d.item.name} {d.item.spec or ''} @ {_where(wh, d.location.code, many)}\n"
        f"状态 {_state(v.state)}  级别 {_severity(v.severity)}  账存 {_qty(v.book_qty)}{unit}  "
        f"实盘 {_qty(v.counted_qty)}{unit}  差异 {_signed(v.qty)}{unit}"
        f"（{pct}，{v.value:+,.2f} 元）{'  盘点时有出入库' if v.moved_during_count else ''}",
        markup=False,
    )
    console.print(f"级别原因：{why[0]} / {why[1]}", markup=False)
    if v.suggestion_text:
        console.print(f"建议原因：{v.suggestion_text}", markup=False)
    if v.reason_code:
        picked = settings.reasons.get(v.reason_code)
        label = f"{picked.zh} / {picked.code}" if picked else v.reason_code
        console.print(f"审核原因：{label} {v.reason_note or ''}", markup=False)
    table = Table(title="盘点记录 / counts")
    for col in ("时间", "盘点员", "数量", "输入", "方式", "部分", "照片", "备注", "状态"):
        table.add_column(col, overflow="fold")
    for e, u in d.entries:
        state = "已被替换" if e.superseded_by_id else ("被复盘推翻" if e.overturned else "")
        table.add_row(e.counted_at.astimezone(tz).strftime("%m-%d %H:%M:%S"), u.name, _qty(e.qty),
                      e.raw_text or _OUTCOME_ZH.get(str(e.outcome), str(e.outcome)),
                      _METHOD_ZH.get(str(e.method), str(e.method)), "是" if e.partial else "",
                      str(len(e.photos or [])), e.note or "", state)  # fmt: skip
    console.print(table)
    if d.movements:
        mt = Table(title="期间出入库 / movements")
        for col in ("时间", "类型", "数量", "单据"):
            mt.add_column(col)
        for m in d.movements:
            mt.add_row(
                m.occurred_at.astimezone(tz).strftime("%m-%d %H:%M"),
                MOVEMENT_ZH.get(m.type, str(m.type)),
                _signed(m.qty),
                m.source_doc or "",
            )
        console.print(mt)
    for st in d.steps:
        who = f"，{people[st.decided_by_id][1]}" if st.decided_by_id in people else ""
        console.print(
            f"审批 {st.seq}. {ROLE_ZH.get(st.role, st.role)}：{_DECISION_ZH.get(str(st.decision), str(st.decision))}"
            f"{who} / {st.role}: {st.decision}" + (f"（{st.comment}）" if st.comment else ""),
            markup=False,
        )


@main.command("resolve")
@click.argument("variance_id", type=int)
@click.option("--count", "count_stands", is_flag=True, help="The count stands: go on to review.")
@click.option("--book", "book_stands", is_flag=True, help="The book stands: close without adjustment.")
@_as_option
def resolve(variance_id: int, count_stands: bool, book_stands: bool, as_: str) -> None:
    """A supervisor decides a variance whose counts disagree: exactly one of --count or --book."""
    from core.variance.service import resolve_dispute, user_by_employee_no

    # Two separate flags: with one shared destination, leaving both out read as --book (the book stands).
    if count_stands == book_stands:
        raise click.UsageError(
            "请用 --count（盘点数正确）或 --book（账面数正确）二选一，未做任何修改 / "
            "pass exactly one of --count (the count stands) or --book (the book stands); nothing was changed"
        )
    count_is_right = count_stands

    async def work(settings: Settings, s: AsyncSession) -> Any:
        user = await user_by_employee_no(s, as_)
        return await resolve_dispute(s, settings, variance_id=variance_id, supervisor_id=user.id,
                                     count_is_right=bool(count_is_right), now=now())  # fmt: skip

    v = _flow(work)
    console.print(f"[green]✓[/] 差异 #{v.id}：{_state(v.state)}")


# ------------------------------------------------------------------------------------------- warehouses


@main.group()
def warehouse() -> None:
    """Warehouses and their default counting team."""


@warehouse.command("list")
@_format_option
def warehouse_list(fmt: str) -> None:
    """Each warehouse with its default team and how many active counters that team has."""
    from sqlalchemy import select

    from core.models import Team, Warehouse

    async def work(settings: Settings, s: AsyncSession) -> Any:
        teams: dict[int | None, str] = dict((await s.execute(select(Team.id, Team.name))).all())
        counters = await _counters_per_team(s)
        rows = (await s.execute(select(Warehouse).order_by(Warehouse.code))).scalars().all()
        return [(w, teams.get(w.default_team_id), counters.get(w.default_team_id, 0)) for w in rows]

    rows = _flow(work)
    if fmt == "json":
        _echo_json(
            [
                {"code": w.code, "name": w.name, "default_team": team, "team_counters": n}
                for w, team, n in rows
            ]
        )
        return
    table = Table(title="仓库 / warehouses")
    for col in ("仓库 code", "名称 name", "默认盘点组 default team", "盘点员 counters"):
        table.add_column(col, overflow="fold")
    for w, team, n in rows:
        table.add_row(w.code, w.name, team or "（未设置 not set）", str(n) if team else "")
    console.print(table)


async def _counters_per_team(s: AsyncSession) -> dict[int | None, int]:
    from sqlalchemy import select

    from core.models import User

    out: dict[int | None, int] = {}
    for team_id, roles in await s.execute(select(User.team_id, User.roles).where(User.active.is_(True))):
        if "counter" in (roles or []):
            out[team_id] = out.get(team_id, 0) + 1
    return out


@warehouse.command("set-team")
@click.argument("code")
@click.option("--team", metavar="NAME", help="The team's name, as in the users file (e.g. 盘点一组).")
@click.option("--clear", is_flag=True, help="Remove the default team.")
@click.option(
    "--as", "as_", metavar="EMPLOYEE_NO", help="Who makes the change (recorded in the audit trail)."
)
def warehouse_set_team(code: str, team: str | None, clear: bool, as_: str | None) -> None:
    """Set the team whose counters count warehouse CODE when a zone names no team of its own."""
    import difflib

    from sqlalchemy import select

    from core import audit
    from core.models import Team, Warehouse
    from core.variance.service import WorkflowError, user_by_employee_no

    if (team is None) == (not clear):
        raise click.UsageError(
            "请用 --team 盘点组名称，或 --clear 二选一 / pass exactly one of --team NAME or --clear"
        )

    async def work(settings: Settings, s: AsyncSession) -> Any:
        actor = await user_by_employee_no(s, as_) if as_ else None
        await _known_warehouse(s, code)
        wh = (await s.execute(select(Warehouse).where(Warehouse.code == code).with_for_update())).scalar_one()
        teams = dict((await s.execute(select(Team.name, Team.id))).all())
        names: dict[int | None, str] = {i: n for n, i in teams.items()}
        new_id = None
        if team is not None:
            new_id = teams.get(team.strip())
            if new_id is None:
                near = difflib.get_close_matches(team.strip(), list(teams), n=1)
                hint_zh = f"，是不是「{near[0]}」？" if near else "；"
                hint_en = f"; did you mean {near[0]!r}?" if near else ";"
                raise WorkflowError(
                    f"没有盘点组「{team}」{hint_zh}已有：{'、'.join(sorted(teams)) or '无'}（盘点组随用户导入建立）",
                    f"no team {team!r}{hint_en} known: {', '.join(sorted(teams)) or 'none'} "
                    "(teams come with the users import)",
                )
        old_id = wh.default_team_id
        if old_id == new_id:
            return wh, names.get(new_id), False, 0
        wh.default_team_id = new_id
        audit.record(s, "warehouse", wh.id, "default_team_set", actor_id=actor.id if actor else None, at=now(),
                     warehouse=wh.code, team=names.get(new_id), previous=names.get(old_id))  # fmt: skip
        counters = (await _counters_per_team(s)).get(new_id, 0) if new_id is not None else 0
        return wh, names.get(new_id), True, counters

    wh, name, changed, counters = _flow(work)
    if not changed:
        console.print(f"仓库 {wh.code} 的默认盘点组已是 {name or '（未设置）'}，未变 / unchanged")
        return
    if name is None:
        console.print(f"[green]✓[/] 仓库 {wh.code} 已清除默认盘点组 / default team removed")
        return
    console.print(f"[green]✓[/] 仓库 {wh.code} 的默认盘点组：{name} / default team of {wh.code}: {name}")
    if counters == 0:
        console.print(f"[yellow]![/] 盘点组「{name}」没有在职的盘点员 / team {name!r} has no active counter")


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
    from bot.cli_config import config
    from bot.cli_erp import erp
    from bot.cli_jobs import jobs

    main.add_command(config)

    main.add_command(jobs)
    main.add_command(erp)


_register_groups()
