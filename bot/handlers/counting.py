"""The counting conversation: one task at a time, in walking order; the counter replies with a quantity.

States (kept in the conversation store, with a TTL):

    idle --"开始"--> await_qty(task) --quantity--> record --> await_qty(next task) ... --> idle (all done)
                         |--"跳过"--> await_qty(next)      |--"空"--> record empty --> next
                         |--"找不到"--> record not here --> next
                         `--a quantity the parser rejects: its message, same task
    any state --"撤销"--> the last count taken back (core.variance.undo) --> await_qty(that task) + the rest
                  `--something downstream already happened: what blocks it, state unchanged

A photo is kept as evidence and its barcodes are read: the current task's item (or its location label)
confirms it, and a lot from a GS1 label goes with the count; any other code is questioned, not recorded.
Book quantities are never shown (blind counts). Replies are in the counter's language (``bot.i18n``); the
Chinese and the English words are understood from everyone.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, time
from typing import Any

from sqlalchemy import select

from bot.cards.model import Lang
from bot.channel import ChannelError
from bot.dispatcher import Context, Router
from bot.events import ImageMessage, InboundEvent, TextMessage
from bot.flows import lang_of
from bot.i18n import bilingual, lang, refusal, tr
from bot.notify import notify
from core.enums import CountOutcome, EntryMethod
from core.models import CountTask, Item, ItemBarcode, Location
from core.variance.service import WorkflowError, counter_tasks, record_count
from core.variance.undo import undo_last_count

router = Router()

START = {"开始", "开始盘点", "start", "/开始", "/start"}
SKIP = {"跳过", "skip"}
EMPTY = {"空", "库位空", "empty"}
NOT_HERE = {"找不到", "无法找到", "没有", "not here"}
STOP = {"结束", "停止", "stop", "end"}
UNDO = {"撤销", "撤回", "/撤销", "undo", "/undo"}


def prompt(task: CountTask, item: Item, loc: Location, left: int, lang: Lang = "zh") -> str:
    spec = f" {item.spec}" if item.spec else ""
    if lang == "en":
        return (
            f"Location {loc.code} · {item.name}{spec} ({item.sku}): enter the quantity (unit: {item.base_unit})"
            f"\n{left} left. You can also reply: skip / empty / not here / stop"
        )
    return (
        f"库位 {loc.code} · {item.name}{spec}（{item.sku}），请输入数量（单位：{item.base_unit}）"
        f"\n还剩 {left} 项。可回复：跳过 / 空 / 找不到 / 结束"
    )


async def _next(ctx: Context, queue: list[int]) -> None:
    """Prompt the next open task of the queue, or finish."""
    today = ctx.today
    open_rows = {t.id: (t, i, lo) for t, i, lo in await counter_tasks(ctx.session, ctx.user.id, today)}
    queue = [tid for tid in queue if tid in open_rows]
    if not queue:
        ctx.state.clear()
        ctx.reply_text(
            tr(ctx, "今天的盘点任务都完成了，辛苦了！", "All of today's tasks are done. Thank you!")
        )
        return
    t, item, loc = open_rows[queue[0]]
    ctx.state.update({"step": "await_qty", "task_id": t.id, "queue": queue})
    channel = ctx.services.get("channels", {}).get(ctx.event.platform.value)
    if getattr(
        getattr(channel, "capabilities", None), "inputs_in_card", False
    ):  # Feishu: the box is in the card
        from bot.cards import count_prompt
        from bot.cards.text import ItemAt
        from bot.flows import render

        lg = lang(ctx)
        at = ItemAt(loc.code, item.sku, item.name, item.spec, item.base_unit)
        ref = f"cp-{t.id}-{hashlib.sha1(ctx.event.dedup_key.encode()).hexdigest()[:10]}"
        card = count_prompt.build(count_prompt.CountPrompt(t.id, at, len(open_rows) - len(queue) + 1, len(open_rows)),
                                  lang=lg, ref=ref)  # fmt: skip
        ctx.reply_card(render(ctx.event.platform, card, ctx.settings, ctx.now, lg))
        return
    ctx.reply_text(prompt(t, item, loc, len(queue), lang(ctx)))


@router.on(TextMessage)
async def counting(ctx: Context) -> bool:
    assert isinstance(ctx.event, TextMessage)
    said = ctx.event.text.strip()
    low = said.lower()
    if low in START:
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text(tr(ctx, "只有盘点员可以开始盘点", "Only counters can start counting"))
            return True
        today = ctx.today
        rows = await counter_tasks(ctx.session, ctx.user.id, today)
        await _next(ctx, [t.id for t, _, _ in rows])
        return True
    if low in UNDO:
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text(tr(ctx, "只有盘点员可以撤销自己的盘点", "Only counters can undo their counts"))
            return True
        await _undo(ctx)
        return True
    if ctx.state.get("step") != "await_qty":
        return False
    queue: list[int] = list(ctx.state.get("queue") or [])
    task_id = int(ctx.state["task_id"])
    if low in STOP:
        ctx.state.clear()
        ctx.reply_text(tr(ctx, "已暂停。发送“开始”继续。", "Paused. Send “start” to carry on."))
        return True
    if low in SKIP:  # to the end of the queue; the last one comes straight back
        if len(queue) == 1:
            ctx.reply_text(tr(ctx, "这是最后一项了。", "This is the last one."))
        await _next(ctx, queue[1:] + queue[:1])
        return True
    kwargs: dict[str, Any] = {"text": said, "outcome": CountOutcome.COUNTED}
    kwargs["photos"] = list(ctx.state.get("photos") or [])
    kwargs["lot"] = ctx.state.get("lot")
    if low in EMPTY:
        kwargs.update(text=None, outcome=CountOutcome.EMPTY)
    elif low in NOT_HERE:
        kwargs.update(text=None, outcome=CountOutcome.NOT_HERE)
    try:
        result = await record_count(
            ctx.session, ctx.settings, task_id=task_id, counter_id=ctx.user.id, counted_at=ctx.event.received_at,
            method=EntryMethod.TYPED, dedup_key=ctx.event.dedup_key, now=ctx.now, **kwargs,
        )  # fmt: skip
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))  # the same task stays open: try again
        return True
    if lang(ctx) == "en":
        ctx.reply_text(f"✓ Recorded ({result.understood})" if result.understood else "✓ Recorded")
    else:
        understood = f"（{result.understood}）" if result.understood else ""
        ctx.reply_text(f"✓ 已记录{understood}")
    ctx.state.pop("photos", None)
    ctx.state.pop("lot", None)
    await _next(ctx, [t for t in queue if t != task_id])
    return True


async def _undo(ctx: Context) -> None:
    """Take back the counter's last count today and go back to that task (see core.variance.undo)."""
    today = ctx.today
    since = datetime.combine(today, time(0), tzinfo=ctx.settings.tz)
    try:
        undone = await undo_last_count(
            ctx.session, counter_id=ctx.user.id, since=since, now=ctx.event.received_at
        )
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))
        return
    e, item, loc = undone.entry, undone.item, undone.location
    en = lang(ctx) == "en"
    if e.outcome is CountOutcome.COUNTED:
        qty = f"{format(e.qty.normalize(), 'f') if e.qty is not None else '?'} {item.base_unit}"
        if (e.raw_text or "").strip() in ("", qty.split()[0]):
            what = qty
        else:
            what = f"{e.raw_text} ({qty})" if en else f"{e.raw_text}（{qty}）"
    elif en:
        what = {CountOutcome.EMPTY: "empty", CountOutcome.NOT_HERE: "not here"}.get(
            e.outcome, e.outcome.value
        )
    else:
        what = {CountOutcome.EMPTY: "库位空", CountOutcome.NOT_HERE: "找不到"}.get(e.outcome, e.outcome.value)
    ctx.reply_text(tr(ctx, f"↩️ 已撤销：库位 {loc.code} · {item.name} 的盘点「{what}」。",
                      f"↩️ Undone: your count “{what}” for location {loc.code} · {item.name}."))  # fmt: skip
    for task, assignee in undone.cancelled_recounts:
        if assignee is not None:  # their recount card is stale now: tell them, in their language
            said = (
                f"Recount task #{task.id} (location {loc.code} · {item.name}) is cancelled: the first count was "
                "undone, so no recount is needed."
                if lang_of(ctx.settings, assignee) == "en"
                else f"复盘任务 #{task.id}（库位 {loc.code} · {item.name}）已取消：首次盘点已被撤销，无需复盘。"
            )
            await notify(
                ctx.session, ctx.settings, assignee, key=f"{ctx.event.dedup_key}:recount-cancelled:{task.id}",
                kind="text", trace_id=ctx.trace_id, prefer=ctx.event.platform, body={"text": said}, now=ctx.now,
            )  # fmt: skip
    # back to that task, its evidence kept for the new count, then the rest of the queue
    ctx.state.pop("lot", None)
    ctx.state["photos"] = list(e.photos or [])
    if e.lot:
        ctx.state["lot"] = e.lot
    queue = [t for t in (ctx.state.get("queue") or []) if t != undone.task.id]
    if not queue:
        queue = [t.id for t, _, _ in await counter_tasks(ctx.session, ctx.user.id, today)]
    await _next(ctx, [undone.task.id, *[t for t in queue if t != undone.task.id]])


@router.before(ImageMessage)
async def fetch_photo(event: InboundEvent, services: dict[str, Any]) -> dict[str, Any]:
    """Download, keep and decode the photo before the event's transaction opens (slow I/O holds no lock).
    Messages are "中文 / English": the user is not known yet; :func:`photo` picks the side."""
    assert isinstance(event, ImageMessage)
    channel = services.get("channels", {}).get(event.platform.value)
    reader, store = services.get("barcode_reader"), services.get("photos")
    if channel is None or reader is None:
        return {
            "photo_error": "暂时无法处理图片，请直接输入条码或数量。 / "
            "Photos can't be read right now; please type the barcode or the quantity."
        }
    try:
        data = await channel.download_image(
            event.media_ref, message_id=event.message_id, url=event.download_url
        )
    except ChannelError:
        return {
            "photo_error": "图片下载失败，请重新发送，或直接输入数量。 / "
            "The photo didn't download; please send it again, or type the quantity."
        }
    saved = store.save(data) if store is not None else None
    return {"photo_ref": saved, "decoded": await reader.decode(data)}


@router.on(ImageMessage)
async def photo(ctx: Context) -> bool:
    """Keep the photo, read its codes, and confirm or question them against the current task."""
    from integrations.barcode import match_codes

    if "photo_error" in ctx.prepared:
        ctx.reply_text(bilingual(ctx.prepared["photo_error"], lang(ctx)))
        return True
    if ctx.prepared.get("photo_ref"):
        ctx.state.setdefault("photos", []).append(ctx.prepared["photo_ref"])
    result = ctx.prepared["decoded"]
    if result.error:
        ctx.reply_text(bilingual(result.error, lang(ctx)))
        return True
    if ctx.state.get("step") != "await_qty":
        codes = [c.text for c in result.codes]
        ctx.reply_text(tr(ctx, f"识别到条码 {'、'.join(codes)}。发送“开始”逐项盘点。",
                          f"Read barcode {', '.join(codes)}. Send “start” to count task by task."))  # fmt: skip
        return True
    task = await ctx.session.get(CountTask, int(ctx.state["task_id"]))
    assert task is not None
    item, loc = await ctx.session.get(Item, task.item_id), await ctx.session.get(Location, task.location_id)
    assert item is not None and loc is not None
    barcodes = (
        await ctx.session.execute(select(ItemBarcode).where(ItemBarcode.item_id == item.id))
    ).scalars()
    item_map = {b.barcode: (item.id, b.unit) for b in barcodes}
    loc_map = {loc.barcode: loc.id} if loc.barcode else {}
    matched, to_confirm = match_codes(result.codes, item_map, loc_map)
    items = [m for m in matched if m.kind == "item"]
    if items:
        if items[0].lot:
            ctx.state["lot"] = items[0].lot
        lot_zh = f"，批次 {items[0].lot}" if items[0].lot else ""
        lot_en = f", lot {items[0].lot}" if items[0].lot else ""
        ctx.reply_text(
            tr(ctx, f"已确认 库位 {loc.code} · {item.name}{lot_zh}，请输入数量（单位：{item.base_unit}）",
               f"Confirmed: location {loc.code} · {item.name}{lot_en}. Enter the quantity (unit: {item.base_unit})")
        )  # fmt: skip
    elif matched:
        ctx.reply_text(tr(ctx, f"已确认库位 {loc.code}。请拍物料条码，或直接输入 {item.name} 的数量。",
                          f"Location {loc.code} confirmed. Take a photo of the item's barcode, "
                          f"or type the quantity of {item.name}."))  # fmt: skip
    else:
        codes = [c.text for c in to_confirm]
        ctx.reply_text(
            tr(ctx, f"条码 {'、'.join(codes) or '无'} 不是当前任务（库位 {loc.code} · {item.name}）的物料，未记录。"
                    "请核对后重拍，或直接输入当前物料的数量。",
               f"Barcode {', '.join(codes) or '(none)'} is not the item of this task (location {loc.code} · "
               f"{item.name}); nothing recorded. Check and take the photo again, or type the quantity.")
        )  # fmt: skip
    return True
