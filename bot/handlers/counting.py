"""The counting conversation: one task at a time, in the walk's order; the counter replies with a quantity.

States (kept in the conversation store, with a TTL):

    idle --"开始" / 开始盘点 on a card--> await_qty(first task) --quantity--> record --> await_qty(next) ... --> idle
                         |--"跳过"--> await_qty(next); the skipped one goes to the end of the walk
                         |--"空"--> record empty --> next        |--"找不到"--> record not here --> next
                         |--"结束"--> idle, saying what remains (the skipped ones stay at the end for "开始")
                         `--a quantity the parser rejects: its message, same task
    any state --"撤销"--> the last count taken back (core.variance.undo) --> await_qty(that task) + the rest
                  `--something downstream already happened: a neutral refusal, state unchanged

The walk is all of the counter's open tasks (``bot.walk``): recounts first, then the walking order, tasks
planned on earlier days and still open included; a task assigned during the walk (a recount) joins it. A card
that names one task (a recount card) starts with that task. The walk ends with "都完成了" only when nothing is
left open; 结束 says how many are left (and how many of them were skipped).

One message per count: the confirmation ("✓ 已记录（41个）") and the next prompt go out together (WeCom allows 30
messages per person per minute). Blind: the confirmation is the same whatever the count's outcome (a match,
within tolerance, a recount, a review): the counter hears back their own quantity as understood and what is
next, never the book, never whether they matched it; an undo, its refusal and a count typed again say nothing
more (the refusals that would name a recount, a review or an adjustment are one neutral sentence).

A photo is kept as evidence and its barcodes are read: the current task's item (or its location label)
confirms it, and a lot from a GS1 label goes with the count; any other code is questioned, not recorded.
Locations are shown with their warehouse when the company has several (``CK01/A-01-02``). Replies are in the
counter's language (``bot.i18n``); the Chinese and the English words are understood from everyone.
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
from bot.walk import Stop, open_walk, where_is
from core.enums import CountOutcome, EntryMethod
from core.models import CountTask, Item, ItemBarcode, Location
from core.variance.service import CountResult, WorkflowError, record_count
from core.variance.undo import UndoBlocked, undo_last_count

router = Router()

START = {"开始", "开始盘点", "start", "/开始", "/start"}
SKIP = {"跳过", "skip"}
EMPTY = {"空", "库位空", "empty"}
NOT_HERE = {"找不到", "无法找到", "没有", "not here"}
STOP = {"结束", "停止", "stop", "end"}
UNDO = {"撤销", "撤回", "/撤销", "undo", "/undo"}

# undo refusals that tell the counter nothing about what came of their count; every other one (a recount was
# counted, a review or an approval exists, an adjustment left pandian, "this recount decided variance #7 (closed)")
# would tell them their count missed the book, or matched it, so they read one neutral sentence instead
PLAIN_UNDO_REFUSALS = ("nothing to undo", "the last count was undone already", "another open task")
UNDO_BLOCKED_ZH = "这条盘点已进入后续处理，不能撤销；如需更正，请联系主管。"
UNDO_BLOCKED_EN = (
    "This count has been taken further and can't be undone; ask your supervisor if it needs correcting."
)


def prompt(stop: Stop, left: int, skipped: int = 0, lang: Lang = "zh") -> str:
    """The text prompt for one task: where, what, the unit, and how many are left (this one included)."""
    item = stop.item
    spec = f" {item.spec}" if item.spec else ""
    if lang == "en":
        of_them = f" ({skipped} skipped)" if skipped else ""
        return (
            f"Location {stop.where} · {item.name}{spec} ({item.sku}): enter the quantity (unit: {item.base_unit})"
            f"\n{left} left{of_them}. You can also reply: skip / empty / not here / stop"
        )
    of_them = f"（其中 {skipped} 项已跳过）" if skipped else ""
    return (
        f"库位 {stop.where} · {item.name}{spec}（{item.sku}），请输入数量（单位：{item.base_unit}）"
        f"\n还剩 {left} 项{of_them}。可回复：跳过 / 空 / 找不到 / 结束"
    )


def recorded(ctx: Context, result: CountResult) -> str:
    """The counter's confirmation of a count: the same words whatever came of it, with their own quantity."""
    if lang(ctx) == "en":
        return (
            f"✓ {result.message_en} ({result.understood})" if result.understood else f"✓ {result.message_en}"
        )
    return f"✓ {result.message_zh}（{result.understood}）" if result.understood else f"✓ {result.message_zh}"


def _left(ctx: Context, n: int, skipped: int) -> str:
    of_them = tr(ctx, f"（其中 {skipped} 项已跳过）", f" ({skipped} skipped)") if skipped else ""
    return tr(ctx, f"还有 {n} 项未完成{of_them}", f"{n} left{of_them}")


def _done(ctx: Context) -> str:
    return tr(ctx, "今天的盘点任务都完成了，辛苦了！", "All of today's tasks are done. Thank you!")


async def what_is_next(ctx: Context, said: str) -> None:
    """``said`` and what is next, in one message, outside a walk (a /count, a card button): how many tasks are
    left and how to go on, or that all are done. Inside a walk, the walk goes on instead (:func:`_next`)."""
    if ctx.state.get("step") == "await_qty":
        await _next(ctx, list(ctx.state.get("queue") or []), ack=said)
        return
    stops = await open_walk(ctx.session, ctx.user.id, ctx.today)
    if not stops:
        ctx.reply_text(f"{said}\n{_done(ctx)}")
        return
    skipped = len(set(ctx.state.get("skipped") or []) & {s.task.id for s in stops})
    ctx.reply_text(f"{said}\n" + _left(ctx, len(stops), skipped) + tr(ctx, "，发送“开始”逐项盘点。",
                                                                       ": send “start” to count them one by one."))  # fmt: skip


async def _next(ctx: Context, queue: list[int], *, ack: str | None = None, first: int | None = None) -> None:
    """Prompt the next task of the walk (``ack`` first, in the same message), or finish when nothing is open.

    The walk is ``queue`` (its order: skipped ones at the end) with every other open task of the counter after it
    in walking order; ``first`` goes to the front."""
    stops = await open_walk(ctx.session, ctx.user.id, ctx.today)
    by_id = {s.task.id: s for s in stops}
    skipped = [int(t) for t in ctx.state.get("skipped") or [] if int(t) in by_id]
    order = [int(t) for t in queue if int(t) in by_id]
    if not order:  # a fresh walk: the walking order, what was skipped before at the end
        order = [s.task.id for s in stops if s.task.id not in skipped] + skipped
    order += [s.task.id for s in stops if s.task.id not in order]
    if first is not None and first in by_id:
        order = [first, *[t for t in order if t != first]]
    lead = f"{ack}\n" if ack else ""
    if not order:
        ctx.state.clear()
        ctx.reply_text(lead + _done(ctx))
        return
    walked = int(ctx.state.get("walked") or 0)
    ctx.state.update({"step": "await_qty", "task_id": order[0], "queue": order, "skipped": skipped})
    stop = by_id[order[0]]
    channel = ctx.services.get("channels", {}).get(ctx.event.platform.value)
    if getattr(
        getattr(channel, "capabilities", None), "inputs_in_card", False
    ):  # Feishu: the box is in the card, and the answer to the last message with it
        from bot.cards import count_prompt
        from bot.flows import render

        lg = lang(ctx)
        ref = f"cp-{stop.task.id}-{hashlib.sha1(ctx.event.dedup_key.encode()).hexdigest()[:10]}"
        data = count_prompt.CountPrompt(
            stop.task.id, stop.item_at(), walked + 1, walked + len(order), note=ack
        )
        card = count_prompt.build(data, lang=lg, ref=ref)
        ctx.reply_card(render(ctx.event.platform, card, ctx.settings, ctx.now, lg))
        return
    ctx.reply_text(lead + prompt(stop, len(order), len(set(skipped) & set(order)), lang(ctx)))


def walked_one(ctx: Context) -> None:
    """One more task counted on this walk (the count prompt card's 第 n/m 项)."""
    ctx.state["walked"] = int(ctx.state.get("walked") or 0) + 1


@router.on(TextMessage)
async def counting(ctx: Context) -> bool:
    assert isinstance(ctx.event, TextMessage)
    said = ctx.event.text.strip()
    low = said.lower()
    if low in START:
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text(tr(ctx, "只有盘点员可以开始盘点", "Only counters can start counting"))
            return True
        await start_walk(ctx)
        return True
    if low in UNDO:
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text(tr(ctx, "只有盘点员可以撤销自己的盘点", "Only counters can undo their counts"))
            return True
        await _undo(ctx)
        return True
    if ctx.state.get("step") != "await_qty":
        return False
    queue: list[int] = [int(t) for t in ctx.state.get("queue") or []]
    task_id = int(ctx.state["task_id"])
    if low in STOP:
        stops = await open_walk(ctx.session, ctx.user.id, ctx.today)
        skipped = [int(t) for t in ctx.state.get("skipped") or [] if int(t) in {s.task.id for s in stops}]
        ctx.state.clear()
        if not stops:
            ctx.reply_text(_done(ctx))
            return True
        if skipped:
            ctx.state["skipped"] = skipped  # "开始" puts them at the end again
        ctx.reply_text(tr(ctx, "已暂停。", "Paused. ") + _left(ctx, len(stops), len(skipped))
                       + tr(ctx, "，发送“开始”继续。", "; send “start” to carry on."))  # fmt: skip
        return True
    if low in SKIP:  # to the end of the walk; the last one comes straight back
        skipped = [int(t) for t in ctx.state.get("skipped") or [] if int(t) != task_id] + [task_id]
        ctx.state["skipped"] = skipped
        last = tr(ctx, "这是最后一项了。", "This is the last one.") if len(queue) <= 1 else None
        await _next(ctx, queue[1:] + queue[:1], ack=last)
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
    ctx.state.pop("photos", None)
    ctx.state.pop("lot", None)
    walked_one(ctx)
    await _next(ctx, [t for t in queue if t != task_id], ack=recorded(ctx, result))
    return True


async def start_walk(ctx: Context, *, first: int | None = None, ack: str | None = None) -> None:
    """开始 (or 开始盘点 on a card): a walk over all of the counter's open tasks, ``first`` first."""
    for key in ("step", "task_id", "queue", "walked"):
        ctx.state.pop(key, None)
    await _next(ctx, [], first=first, ack=ack)


async def _undo(ctx: Context) -> None:
    """Take back the counter's last count today and go back to that task (see core.variance.undo)."""
    today = ctx.today
    since = datetime.combine(today, time(0), tzinfo=ctx.settings.tz)
    try:
        undone = await undo_last_count(
            ctx.session, counter_id=ctx.user.id, since=since, now=ctx.event.received_at
        )
    except UndoBlocked as exc:
        if exc.en.startswith(PLAIN_UNDO_REFUSALS):
            ctx.reply_text(refusal(ctx, exc))
        else:  # blind: what blocks it would say what came of the count
            ctx.reply_text(tr(ctx, UNDO_BLOCKED_ZH, UNDO_BLOCKED_EN))
        return
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))
        return
    e, item, loc = undone.entry, undone.item, undone.location
    where = await where_is(ctx.session, loc)
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
    ack = tr(ctx, f"↩️ 已撤销：库位 {where} · {item.name} 的盘点「{what}」。",
             f"↩️ Undone: your count “{what}” for location {where} · {item.name}.")  # fmt: skip
    for task, assignee in undone.cancelled_recounts:
        if assignee is not None:  # their recount card is stale now: tell them, in their language
            said = (
                f"Recount task #{task.id} (location {where} · {item.name}) is cancelled: the first count was "
                "undone, so no recount is needed."
                if lang_of(ctx.settings, assignee) == "en"
                else f"复盘任务 #{task.id}（库位 {where} · {item.name}）已取消：首次盘点已被撤销，无需复盘。"
            )
            await notify(
                ctx.session, ctx.settings, assignee, key=f"{ctx.event.dedup_key}:recount-cancelled:{task.id}",
                kind="text", trace_id=ctx.trace_id, prefer=ctx.event.platform, body={"text": said}, now=ctx.now,
            )  # fmt: skip
    # back to that task, its evidence kept for the new count, then the rest of the walk
    ctx.state.pop("lot", None)
    ctx.state["photos"] = list(e.photos or [])
    if e.lot:
        ctx.state["lot"] = e.lot
    if ctx.state.get("walked"):
        ctx.state["walked"] = int(ctx.state["walked"]) - 1
    queue = [int(t) for t in ctx.state.get("queue") or [] if int(t) != undone.task.id]
    await _next(ctx, queue, ack=ack, first=undone.task.id)


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
    where = await where_is(ctx.session, loc)
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
            tr(ctx, f"已确认 库位 {where} · {item.name}{lot_zh}，请输入数量（单位：{item.base_unit}）",
               f"Confirmed: location {where} · {item.name}{lot_en}. Enter the quantity (unit: {item.base_unit})")
        )  # fmt: skip
    elif matched:
        ctx.reply_text(tr(ctx, f"已确认库位 {where}。请拍物料条码，或直接输入 {item.name} 的数量。",
                          f"Location {where} confirmed. Take a photo of the item's barcode, "
                          f"or type the quantity of {item.name}."))  # fmt: skip
    else:
        codes = [c.text for c in to_confirm]
        ctx.reply_text(
            tr(ctx, f"条码 {'、'.join(codes) or '无'} 不是当前任务（库位 {where} · {item.name}）的物料，未记录。"
                    "请核对后重拍，或直接输入当前物料的数量。",
               f"Barcode {', '.join(codes) or '(none)'} is not the item of this task (location {where} · "
               f"{item.name}); nothing recorded. Check and take the photo again, or type the quantity.")
        )  # fmt: skip
    return True
