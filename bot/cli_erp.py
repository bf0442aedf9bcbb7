"""`pandian erp ...`: the ERP connector from the command line (check, sync, post, reconcile).

The connector is the one configured in ``erp.connector`` (spreadsheet by default). ``bot.cli`` registers this
group at its end, so its helpers are imported inside the commands."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import click
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.cli_clock import now as cli_now
from core.config import Settings
from core.db import make_engine, make_sessionmaker

T = TypeVar("T")
ENTITIES = ("items", "locations", "stock", "movements")


async def _with_sessionmaker(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    """Open the database, bring the schema up to date, hand over a session factory (the ERP code commits
    page by page and posting by posting)."""
    from core import migrate

    engine = make_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
        return await work(make_sessionmaker(engine))
    finally:
        await engine.dispose()


def _erp_failure(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def erp() -> None:
    """ERP connector: book stock in, approved adjustments out (erp.connector: spreadsheet, kingdee, yonbip, u8,
    sap)."""


@erp.command()
def check() -> None:
    """Log in to the ERP and read a little; show the queue and the last sync."""
    from sqlalchemy import select

    from bot.cli import console, run
    from core.models import ErpSyncRun
    from integrations.erp import make_connector
    from integrations.erp.base import ErpError
    from integrations.erp.posting import queue_summary

    async def go(settings: Settings) -> Any:
        connector = make_connector(settings)
        try:
            lines = await connector.check()
        finally:
            await connector.close()

        async def work(sm: async_sessionmaker[AsyncSession]) -> Any:
            async with sm() as s:
                last = (
                    await s.execute(
                        select(ErpSyncRun).where(ErpSyncRun.system == connector.system)
                        .order_by(ErpSyncRun.id.desc()).limit(1)
                    )
                ).scalar_one_or_none()  # fmt: skip
                return await queue_summary(s), last

        queue, last = await _with_sessionmaker(settings, work)
        return settings, connector, lines, queue, last

    try:
        settings, connector, lines, queue, last = run(go)
    except ErpError as exc:
        raise _erp_failure(exc) from None
    console.print(f"[green]✓[/] {connector.label}（erp.connector = {connector.system}）")
    for line in lines:
        console.print(f"  {line}")
    if last is not None:
        when = last.finished_at.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M")
        state = "成功 ok" if last.ok else f"失败 failed: {last.error}"
        console.print(f"  上次同步 last sync: {when} {state}")
    else:
        console.print("  还没有同步过 / never synced: pandian erp sync")
    if queue:
        console.print("  回写队列 posting queue: " + "，".join(f"{k} {v}" for k, v in sorted(queue.items())))


@erp.command()
@click.option(
    "--full", is_flag=True, help="Ignore the stored cursors and pull everything (unchanged rows stay)."
)
@click.option(
    "--only", "only", multiple=True, type=click.Choice(ENTITIES), help="Sync these only (repeatable)."
)
@click.option("--reset", is_flag=True, help="Forget the stored cursors first (the next syncs start over).")
def sync(full: bool, only: tuple[str, ...], reset: bool) -> None:
    """Pull items, locations, book stock and movements changed since the last sync."""
    from bot.cli import console, err, run
    from integrations.erp import make_connector
    from integrations.erp.base import ENTITY_ZH, Entity
    from integrations.erp.sync import EntityStats, reset_cursors
    from integrations.erp.sync import sync as run_sync

    async def go(settings: Settings) -> Any:
        connector = make_connector(settings)

        async def work(sm: async_sessionmaker[AsyncSession]) -> Any:
            if reset:
                async with sm() as s, s.begin():
                    await reset_cursors(s, connector.system)
            with console.status(f"从{connector.label}同步 / syncing…") as status:

                def progress(entity: Entity, st: EntityStats) -> None:
                    status.update(f"{ENTITY_ZH[entity]} {entity.value}：已读 {st.pulled:,} 条，第 {st.pages} 页 / "
                                  f"{st.pulled:,} read, page {st.pages}")  # fmt: skip

                return await run_sync(sm, settings, connector, entities=[Entity(e) for e in only] or None,
                                      full=full, progress=progress)  # fmt: skip

        try:
            return connector, await _with_sessionmaker(settings, work)
        finally:
            await connector.close()

    connector, report = run(go)
    table = Table(title=f"{connector.label} 同步 / sync")
    for col in (
        "内容 what",
        "读取 pulled",
        "新增 created",
        "更新 updated",
        "未变 unchanged",
        "跳过 skipped",
        "秒 s",
    ):
        table.add_column(col, justify="left" if col.startswith("内容") else "right")
    from integrations.erp.base import ENTITY_ZH as ZH
    from integrations.erp.base import Entity as E

    for name, st in report.entities.items():
        if st.not_due:
            table.add_row(f"{ZH[E(name)]} {name}", "-", "-", "-", "-", "-", "未到时间 not due")
            continue
        table.add_row(f"{ZH[E(name)]} {name}", f"{st.pulled:,}", f"{st.created:,}", f"{st.updated:,}",
                      f"{st.unchanged:,}", f"{st.skipped:,}", f"{st.seconds:.1f}")  # fmt: skip
    console.print(table)
    for name, st in report.entities.items():
        for w in st.warnings:
            console.print(f"[yellow]![/] {name}: {w}", markup=True, highlight=False)
    if report.error:
        err.print(f"同步中止，已写入的页保留，下次从中止处继续 / sync stopped; pages written are kept:\n{report.error}",
                  markup=False)  # fmt: skip
        raise SystemExit(1)


@erp.command()
@click.option("--retry", "retry_ids", multiple=True, type=int, metavar="ADJUSTMENT_ID",
              help="Put this failed adjustment back in the queue first (repeatable).")  # fmt: skip
@click.option("--retry-failed", is_flag=True, help="Put every failed adjustment back in the queue first.")
@click.option("--list", "show", is_flag=True, help="Only show the queue: waiting, failed, recently posted.")
@click.option("--confirm-absent", "absent_ids", multiple=True, type=int, metavar="ADJUSTMENT_ID",
              help="A held adjustment whose bill you looked for in the ERP and did not find: post it once "
                   "(repeatable; needs --as).")  # fmt: skip
@click.option("--as", "as_", metavar="EMPLOYEE_NO", help="Who confirms (recorded in the audit trail).")
def post(
    retry_ids: tuple[int, ...], retry_failed: bool, show: bool, absent_ids: tuple[int, ...], as_: str | None
) -> None:
    """Write approved adjustments back: post them (exactly once) or, for the spreadsheet, export them.

    A posting whose outcome cannot be proven is held (state held): look for our number in the ERP's bill
    note, then --retry ID when one bill carries it (pandian carries on with that one), or --confirm-absent ID
    --as EMPLOYEE_NO when none does (pandian posts it once)."""
    from bot.cli import console, run
    from core.variance.service import WorkflowError, user_by_employee_no
    from integrations.erp import make_connector
    from integrations.erp.base import ErpError
    from integrations.erp.posting import confirm_absent, held, retry

    if absent_ids and not as_:
        raise click.UsageError("--confirm-absent 需要 --as 工号 / --confirm-absent needs --as EMPLOYEE_NO")

    async def go(settings: Settings) -> Any:
        connector = make_connector(settings)
        now = cli_now()

        async def work(sm: async_sessionmaker[AsyncSession]) -> Any:
            retried: list[int] = []
            if absent_ids:
                async with sm() as s, s.begin():
                    who = await user_by_employee_no(s, str(as_))
                    retried += await confirm_absent(s, settings, list(absent_ids), now=now, actor_id=who.id)
            if retry_ids or retry_failed:
                async with sm() as s, s.begin():
                    retried += await retry(s, settings, list(retry_ids) if retry_ids else None, now=now)
            counts = {} if show else await connector.write_back(sm, settings, now=now)
            async with sm() as s:
                waiting = await held(s, settings, now)
                rows = await _queue_rows(s)
            return retried, counts, waiting, rows

        try:
            return settings, connector, await _with_sessionmaker(settings, work)
        finally:
            await connector.close()

    try:
        settings, connector, (retried, counts, (n_held, first_due), rows) = run(go)
    except ErpError as exc:
        raise _erp_failure(exc) from None
    except WorkflowError as exc:
        raise click.ClickException(str(exc)) from None
    if retried:
        console.print(f"重新排队 / re-queued: {', '.join(map(str, retried))}")
    if retry_ids and set(retry_ids) - set(retried):
        console.print(
            f"[yellow]![/] 这些不是回写失败或暂停的调整单 / not failed or held: {sorted(set(retry_ids) - set(retried))}"
        )
    if absent_ids and set(absent_ids) - set(retried):
        console.print(
            f"[yellow]![/] 这些不是暂停回写的调整单 / not held: {sorted(set(absent_ids) - set(retried))}"
        )
    if counts:
        console.print(f"{connector.label}：" + "，".join(f"{k} {v}" for k, v in counts.items()))
    if n_held:
        due = first_due.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M") if first_due else "-"
        console.print(
            f"{n_held} 张调整单在错位配对窗口内（{settings.reasons.misslot_window_days} 天），最早 {due} 回写 / "
            f"{n_held} adjustments wait out the mis-slot window; the first is due {due}"
        )
    if rows:
        table = Table(title="回写队列 / posting queue")
        for col in (
            "调整单 adj.",
            "单号 key",
            "状态 state",
            "尝试 tries",
            "ERP 单号",
            "下次 next",
            "错误 error",
        ):
            table.add_column(col, overflow="fold")
        for r in rows:
            nxt = r["next"].astimezone(settings.tz).strftime("%m-%d %H:%M") if r["state"] == "pending" else ""
            table.add_row(str(r["adjustment"]), r["key"], r["state"], str(r["attempts"]), r["doc_no"] or "", nxt,
                          r["error"] or "")  # fmt: skip
        console.print(table)
    if any(r["state"] == "failed" for r in rows):
        console.print(
            "[yellow]![/] 处理后用 --retry ID 重新回写 / fix, then re-post with --retry ID", markup=True
        )
    if any(r["state"] == "held" for r in rows):
        console.print(
            "[yellow]![/] 暂停（held）：请在 ERP 里按单号（单据备注）查找；只有一张时 --retry ID，没有时 --confirm-absent ID "
            "--as 工号 / held: look for our number in the ERP's bill note; one bill: --retry ID; none: "
            "--confirm-absent ID --as EMPLOYEE_NO",
            markup=True,
        )


async def _queue_rows(s: AsyncSession, limit: int = 50) -> list[dict[str, Any]]:
    from sqlalchemy import case, select

    from core.models import ErpPosting

    order = case((ErpPosting.state.in_(["held", "failed"]), 0), (ErpPosting.state == "pending", 1), else_=2)
    rows = (await s.execute(select(ErpPosting).order_by(order, ErpPosting.id.desc()).limit(limit))).scalars()
    return [{"adjustment": p.adjustment_id, "key": p.doc_key, "state": p.state, "attempts": p.attempts,
             "doc_no": p.erp_doc_no, "next": p.next_attempt_at, "error": p.last_error} for p in rows]  # fmt: skip


@erp.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also rows explained by unposted adjustments only.")
def reconcile(fmt: str, show_all: bool) -> None:
    """Where the ERP's book stock differs from what was approved here and posted there (exit status 1 when
    some difference is unexplained, like diff)."""
    from bot.cli import console, run
    from integrations.erp import make_connector
    from integrations.erp.base import ErpError
    from integrations.erp.reconcile import reconcile as run_reconcile

    async def go(settings: Settings) -> Any:
        connector = make_connector(settings)
        try:
            return (
                settings,
                connector,
                await _with_sessionmaker(settings, lambda sm: run_reconcile(sm, settings, connector)),
            )
        finally:
            await connector.close()

    try:
        settings, connector, report = run(go)
    except ErpError as exc:
        raise _erp_failure(exc) from None
    rows = report.rows if show_all else [r for r in report.rows if r.unexplained != 0 or r.unposted != 0]
    if fmt == "json":

        def num(d: Decimal) -> float | int:
            return int(d) if d == d.to_integral_value() else float(d)

        click.echo(json.dumps({
            "system": report.system, "compared": report.compared,
            "last_sync": report.last_sync.isoformat() if report.last_sync else None,
            "rows": [{"sku": r.sku, "name": r.name, "warehouse": r.warehouse, "location": r.location,
                      "book": num(r.book), "erp": num(r.erp), "unposted": num(r.unposted),
                      "unexplained": num(r.unexplained), "docs": r.docs} for r in rows],
            "failed": [vars(f) for f in report.failed], "unknown_skus": report.unknown_skus,
        }, ensure_ascii=False, indent=1))  # fmt: skip
        return
    last = (
        report.last_sync.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M")
        if report.last_sync
        else "从未 never"
    )
    console.print(f"{connector.label}：比较 {report.compared:,} 个物料库位，上次成功同步 {last} / compared "
                  f"{report.compared:,} item-locations; last good sync {last}")  # fmt: skip
    if not rows and not report.failed:
        console.print(
            "[green]✓[/] ERP 账面与已审批、已过账的调整一致 / the ERP agrees with what was approved and posted"
        )
    if rows:
        table = Table(title="差异 / differences (unexplained = ERP − (pandian − unposted))")
        for col in ("物料 sku", "名称 name", "仓库 wh", "库位 loc", "pandian", "ERP", "未回写 unposted",
                    "无法解释 unexplained", "调整单 adjustments"):  # fmt: skip
            table.add_column(col, overflow="fold", justify="right" if col[0] in "pEu未无" else "left")
        for r in sorted(rows, key=lambda r: (r.unexplained == 0, r.warehouse, r.location, r.sku)):
            mark = "[red]" if r.unexplained != 0 else ""
            table.add_row(r.sku, r.name, r.warehouse, r.location, f"{r.book.normalize():f}", f"{r.erp.normalize():f}",
                          f"{r.unposted.normalize():+f}" if r.unposted else "",
                          f"{mark}{r.unexplained.normalize():+f}" if r.unexplained else "", "\n".join(r.docs))  # fmt: skip
        console.print(table)
    if report.failed:
        ft = Table(title="回写失败 / failed postings")
        for col in ("调整单 adj.", "单号 key", "尝试 tries", "ERP 的回答 error"):
            ft.add_column(col, overflow="fold")
        for f in report.failed:
            ft.add_row(str(f.adjustment_id), f.key, str(f.attempts), f.error or "")
        console.print(ft)
    if report.unknown_skus:
        console.print(f"[yellow]![/] ERP 库存中有 {len(report.unknown_skus)} 个物料 pandian 没有 / unknown SKUs in the ERP's "
                      f"stock: {', '.join(report.unknown_skus[:20])}")  # fmt: skip
    if any(r.unexplained != 0 for r in rows):
        raise SystemExit(1)
