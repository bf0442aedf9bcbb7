"""Slash commands (and their Chinese aliases). Thin: parse, call one core service, reply."""

from __future__ import annotations

from bot.dispatcher import Context, Router
from bot.events import TextMessage
from core.enums import EntryMethod
from core.variance.service import WorkflowError, counter_tasks, record_count

router = Router()

ALIASES = {
    "/help": "/help", "/帮助": "/help",
    "/tasks": "/tasks", "/任务": "/tasks",
    "/count": "/count", "/盘点": "/count",
}  # fmt: skip

HELP = {
    "counter": [
        "开始 / start：逐项盘点今天的任务（回复数量，或 跳过 / 空 / 找不到）",
        "/任务 /tasks：今天的盘点任务",
        "/盘点 任务号 数量 /count：快速录入，如 /盘点 123 3箱5个",
    ],
    "all": ["/帮助 /help：显示这条帮助"],
}


def _command(text: str) -> tuple[str | None, list[str]]:
    parts = text.strip().split()
    if not parts or not parts[0].startswith("/"):
        return None, parts
    return ALIASES.get(parts[0].lower()), parts[1:]


@router.on(TextMessage)
async def commands(ctx: Context) -> bool:
    assert isinstance(ctx.event, TextMessage)
    cmd, args = _command(ctx.event.text)
    if cmd is None:
        return False
    roles = set(ctx.user.roles or [])
    if cmd == "/help":
        lines = [line for role, items in HELP.items() if role == "all" or role in roles for line in items]
        ctx.reply_text("可用命令 / commands:\n" + "\n".join(lines))
        return True
    if cmd == "/tasks":
        today = ctx.event.received_at.astimezone(ctx.settings.tz).date()
        rows = await counter_tasks(ctx.session, ctx.user.id, today)
        if not rows:
            ctx.reply_text("今天没有待盘点的任务 👍")
        else:
            lines = [
                f"#{t.id} {loc.code} · {item.name} {item.spec or ''}（{item.sku}）"
                for t, item, loc in rows[:20]
            ]
            more = f"\n…还有 {len(rows) - 20} 项" if len(rows) > 20 else ""
            ctx.reply_text(f"今天的盘点任务（{len(rows)} 项，按行走顺序）：\n" + "\n".join(lines) + more)
        return True
    if cmd == "/count":
        if "counter" not in roles:
            ctx.reply_text("只有盘点员可以录入盘点数量")
            return True
        if len(args) < 2 or not args[0].lstrip("#").isdigit():
            ctx.reply_text("用法：/盘点 任务号 数量，例如 /盘点 123 3箱5个")
            return True
        try:
            result = await record_count(
                ctx.session, ctx.settings, task_id=int(args[0].lstrip("#")), counter_id=ctx.user.id,
                text=" ".join(args[1:]), counted_at=ctx.event.received_at, method=EntryMethod.TYPED,
                dedup_key=ctx.event.dedup_key,
            )  # fmt: skip
        except WorkflowError as exc:
            ctx.reply_text(exc.zh)
            return True
        understood = f"（{result.understood}）" if result.understood else ""
        ctx.reply_text(f"已记录{understood}。{result.message_zh}")
        return True
    return False


fallback_router = Router()


@fallback_router.on(TextMessage)
async def fallback(ctx: Context) -> bool:
    ctx.reply_text("没看懂这条消息。发送 /帮助 查看可用命令。")
    return True
