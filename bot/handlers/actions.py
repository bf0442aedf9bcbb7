"""Card buttons: 开始盘点 / 无法找到 / 提交 on count cards, 提交原因 on review cards, 通过 / 复盘 / 驳回 on
approval cards.

A payload is trusted only after its signature and age check (``bot.cards.payload``). The button names a task
or a variance; whether the person pressing it may act is decided by the same core services the CLI uses, so a
forwarded card gives nobody new rights. A rejection needs a reason, which a button cannot carry: the bot asks
for it and the next chat reply is taken as the reason (发送“取消”放弃).
Replies are in the user's language (``bot.i18n``).
"""

from __future__ import annotations

import logging

from bot.cards.payload import (
    Approve,
    BadPayload,
    CannotFind,
    ExpiredPayload,
    Payload,
    PickReason,
    Reject,
    SendBack,
    StartCounting,
    SubmitQuantity,
    SubmitReason,
    unpack,
)
from bot.dispatcher import Context, Router
from bot.events import CardAction, TextMessage
from bot.flows import payload_key, remember_update_token
from bot.handlers.counting import recorded, start_walk, walked_one, what_is_next
from bot.i18n import lang, refusal, tr
from bot.walk import tasks_named
from core.enums import OPEN_STATUSES, ApprovalDecision, CountOutcome, EntryMethod
from core.models import CountTask
from core.variance.service import WorkflowError, decide, record_count, review_variance
from core.variance.workflow import VarianceState

log = logging.getLogger("pandian.actions")

router = Router()
CANCEL = {"取消", "cancel", "算了"}


def _unpack(ctx: Context, text: str) -> Payload | None:
    max_age = ctx.settings.server.card_max_age_days * 86400
    try:
        return unpack(
            text, payload_key(ctx.settings), now=int(ctx.event.received_at.timestamp()), max_age=max_age
        )
    except ExpiredPayload:
        ctx.reply_text(
            tr(
                ctx,
                "这张卡片已过期，请以最新的卡片为准（发送 /任务 查看今天的任务）。",
                "This card has expired; please use the latest one (send /tasks for today's tasks).",
            )
        )
    except BadPayload as exc:
        log.warning("refused card payload from %s: %s", ctx.event.sender.user_id, exc)
        ctx.reply_text(
            tr(
                ctx,
                "无法识别这张卡片的操作，请使用系统最新发送的卡片。",
                "This card's button wasn't recognised; please use the latest card the bot sent.",
            )
        )
    return None


def _subject(p: Payload) -> str | None:
    if isinstance(p, Approve | Reject | SendBack):
        return f"approval:{p.variance_id}:{p.step_seq}"
    if isinstance(p, SubmitReason):
        return f"review:{p.variance_id}"
    # a recount card's buttons (a daily task card has no copy under this subject, so nothing matches there)
    if isinstance(p, StartCounting) and len(p.task_ids) == 1:
        return f"recount:{p.task_ids[0]}"
    if isinstance(p, CannotFind):
        return f"recount:{p.task_id}"
    return None


@router.on(CardAction)
async def card_action(ctx: Context) -> bool:
    ev = ctx.event
    assert isinstance(ev, CardAction)
    p = _unpack(ctx, ev.payload)
    if p is None:
        return True
    subject = _subject(p)
    if subject is not None:
        await remember_update_token(
            ctx.session, ev.platform, ev.sender.user_id, ev.card_ref, ev.update_token, subject
        )
    try:
        await _act(ctx, p, ev)
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))
    return True


async def _act(ctx: Context, p: Payload, ev: CardAction) -> None:
    now = ev.received_at
    if isinstance(p, StartCounting):
        if "counter" not in (ctx.user.roles or []):
            ctx.reply_text(tr(ctx, "只有盘点员可以开始盘点", "Only counters can start counting"))
            return
        # the walk is all of the counter's open tasks (bot.walk), whatever the card lists; a card about one task
        # (a recount card) starts with it. A forwarded card gives nobody else's tasks
        named = [t for t in await tasks_named(ctx.session, p.task_ids) if t.assignee_id == ctx.user.id]
        if p.task_ids and not named:
            ctx.reply_text(tr(ctx, "这张卡片上没有分配给您的任务。发送“开始”盘点您自己的任务（/任务 查看）。",
                              "This card has no tasks assigned to you. Send “start” to count your own "
                              "(/tasks lists them)."))  # fmt: skip
            return
        first, ack = None, None
        if len(p.task_ids) == 1:
            if named[0].status in OPEN_STATUSES:
                first = named[0].id
            else:
                ack = tr(ctx, "这张卡片上的任务已经结束。", "The task on this card is closed already.")
        await start_walk(ctx, first=first, ack=ack)
        return
    if isinstance(p, CannotFind | SubmitQuantity):
        task = await ctx.session.get(CountTask, p.task_id)
        if task is None or task.assignee_id != ctx.user.id:
            ctx.reply_text(tr(ctx, "这不是分配给您的盘点任务。", "This count task is not assigned to you."))
            return
        if isinstance(p, CannotFind):
            await record_count(ctx.session, ctx.settings, task_id=task.id, counter_id=ctx.user.id,
                               outcome=CountOutcome.NOT_HERE, counted_at=now, dedup_key=ev.dedup_key, now=now)  # fmt: skip
            said = tr(
                ctx, "已记录：无法找到。主管会跟进。", "Recorded as not found. A supervisor will follow up."
            )
        else:
            qty = (ev.form.get("qty") or ev.form.get("quantity") or "").strip()
            result = await record_count(ctx.session, ctx.settings, task_id=task.id, counter_id=ctx.user.id,
                                        text=qty or None, counted_at=now, method=EntryMethod.TYPED,
                                        dedup_key=ev.dedup_key, now=now)  # fmt: skip
            said = recorded(ctx, result)  # blind: the same words whatever came of the count
        # one message: the confirmation and what is next (the walk goes on, or how many are left)
        if ctx.state.get("step") == "await_qty":
            walked_one(ctx)
            ctx.state["queue"] = [int(t) for t in ctx.state.get("queue") or [] if int(t) != task.id]
        await what_is_next(ctx, said)
        return
    if isinstance(p, SubmitReason):
        picked = ev.form.get("reason") or ""
        choice = _unpack(ctx, picked) if picked else None
        if not isinstance(choice, PickReason) or choice.variance_id != p.variance_id:
            if picked and choice is None:
                return  # _unpack has answered
            ctx.reply_text(tr(ctx, "请先在卡片上选择差异原因，再点「提交原因」。",
                              "Please pick a reason on the card first, then press “Submit reason”."))  # fmt: skip
            return
        note = (ev.form.get("note") or "").strip() or None
        reason = next((r for r in ctx.settings.reasons.codes if r.code == choice.code), None)
        if reason is not None and reason.requires_note and not note:
            ctx.state.update({"step": "await_review_note", "variance_id": p.variance_id, "code": choice.code})
            ctx.reply_text(
                tr(
                    ctx,
                    f"「{reason.zh}」需要说明，请回复一句说明（发送“取消”放弃）。",
                    f"“{reason.en}” needs a note: please reply with a short note (send “cancel” to drop it).",
                )
            )
            return
        await review_variance(ctx.session, ctx.settings, variance_id=p.variance_id, reviewer_id=ctx.user.id,
                              reason_code=choice.code, note=note, now=now)  # fmt: skip
        ctx.reply_text(tr(ctx, f"✓ 差异 #{p.variance_id} 已复核，已提交审批。",
                          f"✓ Variance #{p.variance_id} reviewed and sent for approval."))  # fmt: skip
        return
    if isinstance(p, Reject):
        comment = (ev.form.get("comment") or ev.form.get("note") or "").strip()
        if not comment:
            ctx.state.update({"step": "await_reject_reason", "variance_id": p.variance_id, "seq": p.step_seq})
            ctx.reply_text(tr(ctx, f"请回复驳回差异 #{p.variance_id} 的原因（发送“取消”放弃）。",
                              f"Please reply with the reason for rejecting variance #{p.variance_id} "
                              "(send “cancel” to drop it)."))  # fmt: skip
            return
        await _decide(ctx, p.variance_id, p.step_seq, ApprovalDecision.REJECTED, comment)
        return
    if isinstance(p, Approve | SendBack):
        decision = ApprovalDecision.APPROVED if isinstance(p, Approve) else ApprovalDecision.RECOUNT
        await _decide(ctx, p.variance_id, p.step_seq, decision, None)
        return
    ctx.reply_text(tr(ctx, "这个按钮在这里不能用。", "This button can't be used here."))


_SAID = {
    "approved": "✓ 已通过差异 #{vid}",
    "rejected": "已驳回差异 #{vid}",
    "recount": "已退回差异 #{vid}，复盘任务已派给另一位盘点员",
}
_SAID_EN = {
    "approved": "✓ Variance #{vid} approved",
    "rejected": "Variance #{vid} rejected",
    "recount": "Variance #{vid} sent back; a recount has gone to another counter",
}


async def _decide(ctx: Context, vid: int, seq: int, decision: ApprovalDecision, comment: str | None) -> None:
    d = await decide(ctx.session, ctx.settings, variance_id=vid, actor_id=ctx.user.id, decision=decision,
                     comment=comment, now=ctx.event.received_at, step_seq=seq)  # fmt: skip
    nothing_to_adjust = d.variance.state == VarianceState.CLOSED_NO_DIFFERENCE
    if lang(ctx) == "en":
        said = _SAID_EN.get(d.outcome, "Variance #{vid} handled").format(vid=vid)
        if d.outcome == "approved" and nothing_to_adjust:
            said += "; no difference is left (a movement explains it), so nothing is adjusted."
        elif d.outcome == "approved":
            said += "; the stock adjustment is made." if d.final else "; on to the next approver."
    else:
        said = _SAID.get(d.outcome, "已处理差异 #{vid}").format(vid=vid)
        if d.outcome == "approved" and nothing_to_adjust:
            said += "，核实已无差异（库存变动已解释差异），无需调整库存。"
        elif d.outcome == "approved":
            said += "，已生成库存调整。" if d.final else "，已转下一级审批。"
    ctx.reply_text(said)


@router.on(TextMessage)
async def pending_reply(ctx: Context) -> bool:
    """The reply a card asked for: a rejection reason, or the note a review reason needs."""
    assert isinstance(ctx.event, TextMessage)
    step = ctx.state.get("step")
    if step not in ("await_reject_reason", "await_review_note"):
        return False
    said = ctx.event.text.strip()
    if said.lower() in CANCEL:
        ctx.state.clear()
        ctx.reply_text(tr(ctx, "已取消。", "Cancelled."))
        return True
    vid = int(ctx.state["variance_id"])
    try:
        if step == "await_reject_reason":
            await _decide(ctx, vid, int(ctx.state["seq"]), ApprovalDecision.REJECTED, said)
        else:
            await review_variance(ctx.session, ctx.settings, variance_id=vid, reviewer_id=ctx.user.id,
                                  reason_code=str(ctx.state["code"]), note=said, now=ctx.event.received_at)  # fmt: skip
            ctx.reply_text(tr(ctx, f"✓ 差异 #{vid} 已复核，已提交审批。",
                              f"✓ Variance #{vid} reviewed and sent for approval."))  # fmt: skip
    except WorkflowError as exc:
        ctx.reply_text(refusal(ctx, exc))
    ctx.state.clear()
    return True
