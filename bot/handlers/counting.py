"""The counting conversation: one task at a time, in walking order; the counter replies with a quantity.

States (kept in the conversation store, with a TTL):

    idle --"开始"--> await_qty(task) --quantity--> record --> await_qty(next task) ... --> idle (all done)
                         |--"跳过"--> await_qty(next)      |--"空"--> record empty --> next
                         |--"找不到"--> record not here --> next
                         `--a quantity the parser rejects: its message, same task

Book quantities are never shown (blind counts). Photos come with the barcode reader (issue 5).
"""

from __future__ import annotations

from typing import Any

from bot.dispatcher import Context, Router
from bot.events import TextMessage
from core.enums import CountOutcome, EntryMethod
from core.models import CountTask, Item, Location
from core.variance.service import WorkflowError, counter_tasks, record_count

router = Router()

START = {"开始", "开始盘点", "start", "/开始", "/start"}
SKIP = {"跳过", "skip"}
EMPTY = {"空", "库位空", "empty"}
NOT_HERE = {"找不到", "无法找到", "没有", "not here"}
STOP = {"结束", "停止", "stop"}


def prompt(task: CountTask, item: Item, loc: Location, left: int) -> str:
    spec = f" {item.spec}" if item.spec else ""
    return (
        f"库位 {loc.code} · {item.name}{spec}（{item.sku}），请输入数量（单位：{item.base_unit}）"
        f"\n还剩 {left} 项。可回复：跳过 / 空 / 找不到 / 结束"
    )


async def _next(ctx: Context, queue: list[int]) -> None:
    """Prompt the next open task of the queue, or finish."""
    today = ctx.event.received_at.astimezone(ctx.settings.tz).date()
    open_rows = {t.id: (t, i, lo) for t, i, lo in await counter_tasks(ctx.session, ctx.user.id, today)}
    queue = [tid for tid in queue if tid in open_rows]
    if not queue:
        ctx.state.clear()
        ctx.reply_text("今天的盘点任务都完成了，辛苦了！")
        return
    t, item, loc = open_rows[queue[0]]
    ctx.state.update({"step": "await_qty", "task_id": t.id, "queue": queue})
    ctx.reply_text(prompt(t, item, loc, len(queue)))


@router.on(TextMessage)
async def counting(ctx: Context) -> bool:
    assert isinstance(ctx.event, TextMessage)
    said = ctx.event.text.strip()
    low = said.lower()
    if low in START:
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text("只有盘点员可以开始盘点")
            return True
        today = ctx.event.received_at.astimezone(ctx.settings.tz).date()
        rows = await counter_tasks(ctx.session, ctx.user.id, today)
        await _next(ctx, [t.id for t, _, _ in rows])
        return True
    if ctx.state.get("step") != "await_qty":
        return False
    queue: list[int] = list(ctx.state.get("queue") or [])
    task_id = int(ctx.state["task_id"])
    if low in STOP:
        ctx.state.clear()
        ctx.reply_text("已暂停。发送“开始”继续。")
        return True
    if low in SKIP:  # to the end of the queue; the last one comes straight back
        if len(queue) == 1:
            ctx.reply_text("这是最后一项了。")
        await _next(ctx, queue[1:] + queue[:1])
        return True
    kwargs: dict[str, Any] = {"text": said, "outcome": CountOutcome.COUNTED}
    if low in EMPTY:
        kwargs = {"text": None, "outcome": CountOutcome.EMPTY}
    elif low in NOT_HERE:
        kwargs = {"text": None, "outcome": CountOutcome.NOT_HERE}
    try:
        result = await record_count(
            ctx.session, ctx.settings, task_id=task_id, counter_id=ctx.user.id, counted_at=ctx.event.received_at,
            method=EntryMethod.TYPED, dedup_key=ctx.event.dedup_key, **kwargs,
        )  # fmt: skip
    except WorkflowError as exc:
        ctx.reply_text(exc.zh)  # the same task stays open: try again
        return True
    understood = f"（{result.understood}）" if result.understood else ""
    ctx.reply_text(f"✓ 已记录{understood}")
    await _next(ctx, [t for t in queue if t != task_id])
    return True
