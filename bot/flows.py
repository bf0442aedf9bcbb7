"""The chat side of the workflow: which card goes to whom as counts, variances and approvals move on, and
keeping every copy of a card true after someone acts on it.

``sync_cards`` is derived from the database, not from the event that caused a change, so it is right whoever
made the change (a card button, a chat reply, the CLI, a late ERP movement, the escalation job) and whichever
server process runs it. Every send has a stable idempotency key, so running it twice, or in two processes at
once, queues nothing twice:

- an open recount task      -> a blind recount card to its counter             (``recount:<task>``)
- a variance in review      -> a review card to the line's supervisors         (``review:<variance>``)
- an open approval step     -> an approval card to each holder of the role     (``approval:<variance>:<seq>``)
- a step decided / a review done -> every copy sent about it is updated in place to show the outcome and who
  acted (copies not yet sent are cancelled instead).
- a recount task closed     -> its recount card is updated in place the same way: recorded (by whom, when) or
  cancelled, no buttons left, and still no quantity (a copy not yet sent is cancelled).

Whoever counted or reviewed a line never gets its approval card, and a card gives nobody rights: every button
goes through the same core service checks as the CLI.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import Any

from sqlalchemy import String, cast, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.cards import approval, recount, review
from bot.cards.facts import VarianceFacts
from bot.cards.model import Card, Lang, Link, pick
from bot.cards.render.common import Signer
from bot.cards.text import CountLine, ItemAt
from bot.channel import Address
from bot.events import Platform
from bot.notify import _IDS, address_for, notify
from bot.outbox import enqueue
from bot.photos import signed_url
from core.config import Settings
from core.enums import OPEN_STATUSES, ApprovalDecision, CountOutcome, Role, TaskReason, TaskStatus
from core.models import ApprovalStep, CountEntry, CountTask, Item, Location, OutboxMessage, User, Variance
from core.people import holders, site_holders, team_first
from core.variance.service import deciders, dossier, line_people, step_level
from core.variance.tolerance import Severity, SeverityTiers, compute_variance
from core.variance.workflow import VarianceState

log = logging.getLogger("pandian.flows")
MAX_PHOTO_LINKS = 3  # WeCom's jump_list holds three


# ------------------------------------------------------------------------------------------ signing, render


def payload_key(settings: Settings) -> bytes:
    """The key that signs card buttons: the configured secret, else one generated once into a file."""
    if settings.server.payload_secret:
        return settings.server.payload_secret.encode()
    return _key_file(str(Path(settings.server.payload_secret_file).resolve()))


@functools.cache
def _key_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32).encode()
    try:  # exclusive create: when two processes race, both end up with the winner's key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Path(path).read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def lang_of(settings: Settings, user: User | None) -> Lang:
    locale = (user.locale if user is not None and user.locale else None) or settings.locale
    return "en" if locale.lower().startswith("en") else "zh"


def render(platform: Platform, card: Card, settings: Settings, now: datetime, lang: Lang) -> dict[str, Any]:
    """A neutral card as one platform's JSON, its buttons signed now."""
    module = import_module(f"bot.cards.render.{platform.value}")
    signer = Signer(payload_key(settings), int(now.timestamp()))
    out: dict[str, Any] = module.render(card, lang=lang, signer=signer)
    return out


def with_photos(card: Card, settings: Settings, refs: Sequence[str], now: datetime, lang: Lang) -> Card:
    """The card with links to its count photos, signed and expiring (``server.photo_link_hours``), when the
    server has a public address (``server.public_url``); phones open them in the platform's browser."""
    base = settings.server.public_url
    if not base or not refs:
        return card
    expires = int(now.timestamp()) + settings.server.photo_link_hours * 3600
    key = payload_key(settings)
    links = tuple(
        Link(pick(lang, f"照片 {i}", f"Photo {i}"), signed_url(base, ref, key, expires))
        for i, ref in enumerate(refs[:MAX_PHOTO_LINKS], 1)
    )
    return replace(card, links=links)


async def photo_refs(session: AsyncSession, variance_id: int) -> list[str]:
    """The photos taken with the counts of a variance (first count and recounts), oldest first."""
    v = await session.get(Variance, variance_id)
    if v is None:
        return []
    task_ids = select(CountTask.id).where(
        (CountTask.id == v.task_id) | (CountTask.parent_task_id == v.task_id)
    )
    rows = await session.execute(
        select(CountEntry.photos).where(CountEntry.task_id.in_(task_ids)).order_by(CountEntry.counted_at)
    )
    refs: list[str] = []
    for photos in rows.scalars():
        refs.extend(p for p in photos or [] if p not in refs)
    return refs


async def send_card(
    session: AsyncSession,
    settings: Settings,
    user: User,
    card: Card,
    *,
    key: str,
    subject: str,
    now: datetime,
    trace_id: str | None = None,
    photos: Sequence[str] = (),
) -> bool:
    to = address_for(settings, user)
    if to is None:
        log.info("%s has no id on a configured platform: %s not sent", user.employee_no, subject)
        return False
    lang = lang_of(settings, user)
    card = with_photos(card, settings, photos, now, lang)
    body = {"card": render(to.platform, card, settings, now, lang)}
    return await enqueue(
        session,
        idempotency_key=key,
        to=to,
        kind="card",
        body=body,
        subject=subject,
        trace_id=trace_id,
        now=now,
    )


# ------------------------------------------------------------------------------------------------- facts


async def variance_facts(
    session: AsyncSession, variance_id: int, tiers: SeverityTiers | None = None
) -> VarianceFacts:
    """The variance as its cards show it; with ``tiers``, why it sits at its severity (approvers see it)."""
    from bot.walk import warehouse_codes

    d = await dossier(session, variance_id)
    v = d.variance
    warehouse = (await warehouse_codes(session)).get(d.location.warehouse_id)  # only when there are several
    counts = tuple(
        CountLine(u.name, e.qty if e.qty is not None else Decimal(0), e.counted_at, e.recount)
        for e, u in d.entries
        if e.superseded_by_id is None
    )
    return VarianceFacts(
        variance_id=v.id,
        at=ItemAt(d.location.code, d.item.sku, d.item.name, d.item.spec, d.item.base_unit, warehouse),
        abc_class=v.abc_class,
        book=v.book_qty,
        counts=counts,
        diff=v.qty,
        pct=v.pct,
        value=v.value,
        severity=Severity(v.severity),
        tier_why=None
        if tiers is None
        else tiers.explain(compute_variance(v.book_qty, v.counted_qty, v.unit_cost), Severity(v.severity)),
        suggested_reason=v.suggested_reason,
        suggestion_text=v.suggestion_text,
        moved_during_count=v.moved_during_count,
    )


# ------------------------------------------------------------------------------------------------- sync


@dataclass
class SyncCounts:
    recount: int = 0
    review: int = 0
    approval: int = 0
    updated: int = 0
    cancelled: int = 0
    unstaffed: int = 0  # notices to managers and admins: a step nobody may decide

    def total(self) -> int:
        return self.recount + self.review + self.approval + self.updated + self.cancelled + self.unstaffed


def _subject(prefix: str, *cols: Any) -> Any:
    expr: Any = literal(prefix)
    for i, c in enumerate(cols):
        expr = expr.concat(cast(c, String)) if i == 0 else expr.concat(":").concat(cast(c, String))
    return expr


def _not_sent(subject: Any) -> Any:
    return ~select(OutboxMessage.id).where(OutboxMessage.subject == subject).exists()


async def sync_cards(
    session: AsyncSession, settings: Settings, now: datetime, trace_id: str | None = None
) -> SyncCounts:
    """Queue the cards the workflow's state calls for and update the ones it has overtaken (see module doc)."""
    out = SyncCounts()
    reasons = settings.reasons.codes
    tz = settings.tz
    # 1. recount tasks: a blind card to the counter it went to
    rows = await session.execute(
        select(CountTask, Item, Location, User)
        .join(Item, Item.id == CountTask.item_id)
        .join(Location, Location.id == CountTask.location_id)
        .join(User, User.id == CountTask.assignee_id)
        .where(
            CountTask.reason == TaskReason.RECOUNT,
            CountTask.status.in_(OPEN_STATUSES),
            _not_sent(_subject("recount:", CountTask.id)),
        )
    )
    for task, item, loc, counter in rows.all():
        card = recount.build(
            recount.RecountRequest(task.id, await item_at(session, item, loc), task.due_date),
            lang=lang_of(settings, counter),
            ref=f"rc-{task.id}",
        )
        out.recount += await send_card(session, settings, counter, card, key=f"recount:{task.id}",
                                       subject=f"recount:{task.id}", now=now, trace_id=trace_id)  # fmt: skip
    # 2. variances waiting for review: the line's supervisors (never someone who counted it)
    in_review = (
        await session.execute(
            select(Variance).where(
                Variance.state == VarianceState.IN_REVIEW.value, _not_sent(_subject("review:", Variance.id))
            )
        )
    ).scalars()
    for v in list(in_review):
        line = await line_people(session, v)
        facts = await variance_facts(session, v.id, settings.tolerance.tiers)
        sups = await site_holders(session, Role.SUPERVISOR, v.warehouse_id, exclude=line.counted)
        if not sups:
            out.unstaffed += await _tell_unstaffed(session, settings, v, None, now, trace_id)
        for sup in team_first(sups, line.team_id):
            card = review.build(
                facts, lang=lang_of(settings, sup), ref=f"rv-{v.id}-{sup.id}", reasons=reasons
            )
            out.review += await send_card(session, settings, sup, card, key=f"review:{v.id}:{sup.id}",
                                          subject=f"review:{v.id}", now=now, trace_id=trace_id,
                                          photos=await photo_refs(session, v.id))  # fmt: skip
    # 3. open approval steps: every holder of the step's role who may decide it (the workflow moved the step up
    #    its escalation chain when it opened with nobody). When nobody may, the managers and admins are told once.
    steps = (
        await session.execute(
            select(ApprovalStep, Variance)
            .join(Variance, Variance.id == ApprovalStep.variance_id)
            .where(
                Variance.state == VarianceState.PENDING_APPROVAL.value,
                ApprovalStep.opened_at.is_not(None),
                ApprovalStep.decision == ApprovalDecision.PENDING,
                _not_sent(
                    _subject("approval:", ApprovalStep.variance_id, ApprovalStep.seq, ApprovalStep.role)
                ),
            )
        )
    ).all()
    for step, v in steps:
        line = await line_people(session, v, step)
        found = await deciders(session, v, step, line)
        if not found:
            out.unstaffed += await _tell_unstaffed(session, settings, v, step, now, trace_id)
            continue
        facts = await variance_facts(session, v.id, settings.tolerance.tiers)
        reviewer = await session.get(User, v.reviewer_id) if v.reviewer_id else None
        data = approval.ApprovalRequest(facts, step.seq, Role(step.role), v.reason_code, v.reason_note,
                                        reviewer.name if reviewer else None, level=await step_level(session, step))  # fmt: skip
        subject = f"approval:{v.id}:{step.seq}:{step.role}"
        people = team_first(found, line.team_id) if Role(step.role) is Role.SUPERVISOR else found
        for person in people:
            card = approval.build(data, lang=lang_of(settings, person), ref=f"ap-{v.id}-{step.seq}-{person.id}",
                                  reasons=reasons)  # fmt: skip
            out.approval += await send_card(session, settings, person, card, key=f"{subject}:{person.id}",
                                            subject=subject, now=now, trace_id=trace_id,
                                            photos=await photo_refs(session, v.id))  # fmt: skip
    # 4. cards overtaken by a decision, a review or a closed recount: update every copy in place (cancel unsent
    #    ones). Only copies younger than card_max_age_days: older buttons are refused anyway, WeCom's update codes
    #    expire after 72 h, and the scan stays bounded however long the outbox grows
    upd = aliased(OutboxMessage)
    sent = (
        await session.execute(
            select(OutboxMessage).where(
                OutboxMessage.kind == "card",
                OutboxMessage.created_at >= now - timedelta(days=settings.server.card_max_age_days),
                OutboxMessage.state.in_(("pending", "sending", "sent")),
                OutboxMessage.subject.like("approval:%")
                | OutboxMessage.subject.like("review:%")
                | OutboxMessage.subject.like("recount:%"),
                ~select(upd.id)
                .where(upd.idempotency_key == literal("upd:").concat(cast(OutboxMessage.id, String)))
                .exists(),
            )
        )
    ).scalars()
    for row in list(sent):
        platform = Platform(row.platform)
        user = await _user_at(session, platform, (row.address or {}).get("user_id"))
        lang = lang_of(settings, user)
        new_card = await _overtaken(session, settings, row, tz, now, lang)
        if new_card is None:
            continue
        if row.state == "pending":
            row.state, row.last_error = "cancelled", "overtaken before it was sent"
            out.cancelled += 1
            continue
        if row.state == "sending" or not row.sent_ref:
            continue  # a worker is sending it right now: the next pass updates it
        if not str(row.subject).startswith("recount:"):  # a recount card is blind: no count photos on it
            refs = await photo_refs(session, int(str(row.subject).split(":")[1]))
            new_card = with_photos(new_card, settings, refs, now, lang)
        body = {"ref": row.sent_ref, "card": render(platform, new_card, settings, now, lang)}
        to = Address(platform, (row.address or {}).get("user_id"), (row.address or {}).get("chat_id"))
        out.updated += await enqueue(session, idempotency_key=f"upd:{row.id}", to=to, kind="update", body=body,
                                     subject=row.subject, trace_id=trace_id, now=now)  # fmt: skip
    return out


async def _tell_unstaffed(
    session: AsyncSession,
    settings: Settings,
    v: Variance,
    step: ApprovalStep | None,
    now: datetime,
    trace_id: str | None,
) -> int:
    """Tell the managers and admins, once, that nobody may do a variance's next piece of work: its review
    (``step`` None: every supervisor of its site counted it) or an open approval step (its chain cannot be
    completed by distinct eligible people). The work waits; it is never done by fewer people. Once told, later
    syncs only look for someone eligible (cheap), without building the notice again."""
    role = Role(step.role) if step is not None else Role.SUPERVISOR
    subject = f"unstaffed:{v.id}:{step.seq if step is not None else 'review'}:{role.value}"
    if await session.scalar(select(OutboxMessage.id).where(OutboxMessage.subject == subject).limit(1)):
        return 0
    facts = await variance_facts(session, v.id, settings.tolerance.tiers)
    role_zh, role_en = approval.role_name(role, "zh"), approval.role_name(role, "en")
    at = f"{facts.at.where} · {facts.at.sku} {facts.at.item}"
    if step is None:
        what_zh = f"⚠ 差异单 {v.id}（{at}）找不到可以审核的主管：该仓库的主管都参与了这一行的盘点。"
        what_en = f"⚠ Variance {v.id} ({at}): no supervisor may review it; every supervisor of its warehouse counted it."
        card_zh, card_en = "审核卡片", "review card"
    else:
        level = await step_level(session, step)
        what_zh = (f"⚠ 差异单 {v.id}（{at}）的第 {level} 级审批（{role_zh}）找不到可以审批的人：具有该角色的人都参与了"
                   "盘点、审核或已审批了前一级，升级链也已用尽。同一人不能审批两级。")  # fmt: skip
        what_en = (f"⚠ Variance {v.id} ({at}): nobody may decide approval step {level} ({role_en}). Everyone holding "
                   "the role counted, reviewed or approved an earlier step, and the escalation chain is used up. One "
                   "person cannot decide two steps.")  # fmt: skip
        card_zh, card_en = "审批卡片", "approval card"
    sent, told = 0, False
    for person in await holders(session, Role.MANAGER, Role.ADMIN):
        text = pick(
            lang_of(settings, person),
            f"{what_zh}请给另一位同事分配「{role_zh}」角色（人员表的角色列，pandian import users），{card_zh}随后会自动发出。",
            f"{what_en} Give the {role_en} role to another colleague (the roles column of the users file, pandian "
            f"import users); the {card_en} then goes out by itself.",
        )
        sent += await notify(session, settings, person, key=f"{subject}:{person.id}",
                             kind="text", body={"text": text}, subject=subject,
                             trace_id=trace_id, now=now)  # fmt: skip
        told = told or address_for(settings, person) is not None
    if not told and subject not in _UNTOLD:
        _UNTOLD.add(subject)
        log.warning("nobody may do the next piece of work on variance %s (%s), and no manager or admin can be told",
                    v.id, subject)  # fmt: skip
    return sent


_UNTOLD: set[str] = set()  # subjects warned about, once per process


async def _user_at(session: AsyncSession, platform: Platform, ident: str | None) -> User | None:
    if not ident:
        return None
    col = getattr(User, _IDS[platform])
    return (await session.execute(select(User).where(col == ident))).scalar_one_or_none()


async def _overtaken(
    session: AsyncSession, settings: Settings, row: OutboxMessage, tz: Any, now: datetime, lang: Lang
) -> Card | None:
    """The card that should now replace ``row``'s (in its recipient's ``lang``), or None while its subject is
    still open."""
    assert row.subject is not None
    ref = str((row.body.get("card") or {}).get("task_id") or f"upd-{row.id}")
    parts = row.subject.split(":")
    reasons = settings.reasons.codes
    if parts[0] == "approval":
        vid, seq, role = int(parts[1]), int(parts[2]), parts[3]
        step = (
            await session.execute(
                select(ApprovalStep).where(ApprovalStep.variance_id == vid, ApprovalStep.seq == seq)
            )
        ).scalar_one_or_none()
        if step is None:
            return None
        escalated = step.role != role
        if step.decision == ApprovalDecision.PENDING and not escalated:
            return None
        if not escalated and (step.decided_by_id is None or step.decided_at is None):
            return None  # closed some other way (cancelled); leave the card
        who = await session.get(User, step.decided_by_id) if step.decided_by_id else None
        facts = await variance_facts(session, vid, settings.tolerance.tiers)
        reviewer = None
        v = await session.get(Variance, vid)
        if v is not None and v.reviewer_id:
            reviewer = await session.get(User, v.reviewer_id)
        data = approval.ApprovalRequest(facts, seq, Role(role), v.reason_code if v else None,
                                        v.reason_note if v else None, reviewer.name if reviewer else None)  # fmt: skip
        if escalated:
            to = approval.role_name(Role(step.role), lang)
            return approval.approval_decided(
                data, decision=ApprovalDecision.ESCALATED, decided_by=pick(lang, "系统", "System"),
                decided_at=now.astimezone(tz), comment=pick(lang, f"已转交{to}", f"passed on to {to}"), lang=lang,
                ref=ref, reasons=reasons,
            )  # fmt: skip
        assert step.decided_at is not None
        return approval.approval_decided(
            data, decision=ApprovalDecision(step.decision), decided_by=who.name if who else "?",
            decided_at=step.decided_at.astimezone(tz), comment=step.comment, lang=lang, ref=ref, reasons=reasons,
        )  # fmt: skip
    if parts[0] == "review":
        vid = int(parts[1])
        v = await session.get(Variance, vid)
        if (
            v is None
            or v.state == VarianceState.IN_REVIEW.value
            or v.reviewer_id is None
            or not v.reason_code
        ):
            return None
        who = await session.get(User, v.reviewer_id)
        facts = await variance_facts(session, vid, settings.tolerance.tiers)
        return review.reviewed(facts, reviewer=who.name if who else "?", reason_code=v.reason_code,
                               note=v.reason_note, lang=lang, ref=ref, reasons=reasons)  # fmt: skip
    if parts[0] == "recount":
        return await _recount_closed(session, int(parts[1]), tz, lang, ref)
    return None


_RECOUNT_OUTCOME = {
    CountOutcome.COUNTED: recount.RecountClosed.COUNTED,
    CountOutcome.FOUND_UNLISTED: recount.RecountClosed.COUNTED,
    CountOutcome.NOT_HERE: recount.RecountClosed.NOT_FOUND,
    CountOutcome.EMPTY: recount.RecountClosed.EMPTY,
}


async def item_at(session: AsyncSession, item: Item, loc: Location) -> ItemAt:
    """What a card about one task names: the item at the location, with its warehouse when there are several
    (the same bin codes exist in each warehouse)."""
    from bot.walk import warehouse_codes

    warehouse = (await warehouse_codes(session)).get(loc.warehouse_id)
    return ItemAt(loc.code, item.sku, item.name, item.spec, item.base_unit, warehouse)


async def _recount_closed(session: AsyncSession, task_id: int, tz: Any, lang: Lang, ref: str) -> Card | None:
    """The final recount card for a closed recount task (counted or cancelled), or None while it is open.
    Blind like the request: the last count's outcome, who recorded it and when, never a quantity."""
    task = await session.get(CountTask, task_id)
    if task is None or task.status in OPEN_STATUSES:
        return None
    item, loc = await session.get(Item, task.item_id), await session.get(Location, task.location_id)
    if item is None or loc is None:
        return None
    data = recount.RecountRequest(task.id, await item_at(session, item, loc))
    if task.status == TaskStatus.CANCELLED:
        at = task.closed_at.astimezone(tz) if task.closed_at else None
        return recount.closed(data, outcome=recount.RecountClosed.CANCELLED, at=at, lang=lang, ref=ref)
    last = (
        await session.execute(
            select(CountEntry, User)
            .join(User, User.id == CountEntry.counter_id)
            .where(
                CountEntry.task_id == task.id,
                CountEntry.superseded_by_id.is_(None) | (CountEntry.superseded_by_id != CountEntry.id),
            )  # an entry superseded by itself was undone
            .order_by(CountEntry.counted_at.desc(), CountEntry.id.desc())
            .limit(1)
        )
    ).first()
    if last is None:  # done without a count of its own: say it is recorded, nothing more
        return recount.closed(data, outcome=recount.RecountClosed.COUNTED, lang=lang, ref=ref)
    entry, counter = last
    outcome = _RECOUNT_OUTCOME.get(CountOutcome(entry.outcome), recount.RecountClosed.COUNTED)
    return recount.closed(data, outcome=outcome, by=counter.name, at=entry.counted_at.astimezone(tz), lang=lang,
                          ref=ref)  # fmt: skip


async def remember_update_token(session: AsyncSession, platform: Platform, user_id: str, card_ref: str | None,
                                token: str | None, subject: str) -> None:  # fmt: skip
    """A card callback carries a fresh update token for the card that was pressed (WeCom ``ResponseCode``,
    single use, 72 h; Feishu's delayed-update token): keep it on that copy so its in-place update can use it."""
    if not token or not card_ref:
        return
    rows = (
        await session.execute(
            select(OutboxMessage).where(
                (OutboxMessage.subject == subject) | OutboxMessage.subject.like(f"{subject}:%"),
                OutboxMessage.platform == platform.value,
                OutboxMessage.kind == "card", OutboxMessage.state == "sent",
            )
        )
    ).scalars()  # fmt: skip
    for row in rows:
        ref = dict(row.sent_ref or {})
        mine = (row.address or {}).get("user_id") == user_id
        if mine and card_ref in (ref.get("card_ref"), ref.get("message_id")):
            ref["update_token"] = token
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id == row.id).values(sent_ref=ref)
                .execution_options(synchronize_session=False)
            )  # fmt: skip
