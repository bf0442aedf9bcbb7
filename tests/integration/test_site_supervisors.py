"""One supervisor per site, the same bin codes in each: recounts stay in the variance's warehouse, its own
supervisor reviews and approves it (never another site's), a step nobody may decide moves up its escalation
chain when it opens, whoever opened it, and a chain that cannot be completed by distinct people is said so to the
managers and admins instead of shrinking."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.flows import sync_cards
from core.enums import ApprovalDecision
from core.models import ApprovalStep, AuditEvent, CountTask, Item, OutboxMessage, User, Variance
from core.scheduling.service import plan_day
from core.variance import service as wf
from tests.clock import morning
from tests.integration.builders import build_company
from tests.integration.test_card_actions import MONDAY, SETTINGS, T0

APPROVE = ApprovalDecision.APPROVED


async def _two_sites(sm: async_sessionmaker[AsyncSession]) -> dict[str, User]:
    """WH1 with one counter, WH2 with two; a supervisor of each (by team); one manager, one finance."""
    async with sm() as s, s.begin():
        await build_company(s, items=4, counters=1, code="WH1")
        await build_company(s, items=4, counters=2, code="WH2")
        s.add_all([User(employee_no="M01", name="经理", roles=["manager"]),
                   User(employee_no="F01", name="财务", roles=["finance"])])  # fmt: skip
        await s.flush()
        for u in (await s.execute(select(User))).scalars():
            u.wecom_userid = u.employee_no.lower()
        # expensive stock: a count of 7 against 10 is -15,000 元, a critical variance (supervisor, finance, manager)
        for item in (await s.execute(select(Item))).scalars():
            item.unit_cost = Decimal(5000)
        await plan_day(s, SETTINGS, MONDAY, now=morning(MONDAY))
        return {u.employee_no: u for u in (await s.execute(select(User))).scalars()}


async def _count_in_wh1(sm: async_sessionmaker[AsyncSession], users: dict[str, User]) -> Variance:
    async with sm() as s, s.begin():
        c1 = users["WH1-E01"]
        task = (await wf.counter_tasks(s, c1.id, MONDAY))[0][0]
        r = await wf.record_count(
            s, SETTINGS, task_id=task.id, counter_id=c1.id, text="7", counted_at=T0, now=T0
        )
        assert r.variance is not None
        return r.variance


async def _steps(sm: async_sessionmaker[AsyncSession], vid: int) -> list[ApprovalStep]:
    async with sm() as s:
        q = select(ApprovalStep).where(ApprovalStep.variance_id == vid).order_by(ApprovalStep.seq)
        return list((await s.execute(q)).scalars())


async def _decide(sm: async_sessionmaker[AsyncSession], vid: int, who: User, minutes: int) -> wf.Decision:
    async with sm() as s, s.begin():
        return await wf.decide(s, SETTINGS, variance_id=vid, actor_id=who.id, decision=APPROVE,
                               now=T0 + timedelta(minutes=minutes))  # fmt: skip


async def test_a_recount_never_goes_to_a_counter_of_another_site(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    users = await _two_sites(sessionmaker)
    v = await _count_in_wh1(sessionmaker, users)
    async with sessionmaker() as s:
        recounts = list(
            (await s.execute(select(CountTask).where(CountTask.parent_task_id == v.task_id))).scalars()
        )
        v2 = await s.get(Variance, v.id)
        waived = (
            await s.execute(select(AuditEvent).where(AuditEvent.entity == "variance", AuditEvent.entity_id == v.id,
                                                     AuditEvent.action == "recount_waived"))
        ).scalar_one()  # fmt: skip
    # WH1's only counter made the count; WH2's counters know its bins' codes but not its shelves
    assert recounts == [] and v2 is not None and v2.state == "in_review"
    assert waived.data["why"] == "no other counter available" and waived.data["elsewhere"] == 2


async def test_the_sites_supervisor_reviews_and_the_chain_moves_up_when_nobody_else_may_decide(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    users = await _two_sites(sessionmaker)
    v = await _count_in_wh1(sessionmaker, users)
    other_site, own = users["WH2-S01"], users["WH1-S01"]
    with pytest.raises(wf.WorkflowError) as refused:
        async with sessionmaker() as s, s.begin():
            await wf.review_variance(s, SETTINGS, variance_id=v.id, reviewer_id=other_site.id,
                                     reason_code="receiving", now=T0)  # fmt: skip
    assert "属于仓库 WH1" in refused.value.zh and "warehouse WH1" in refused.value.en
    async with sessionmaker() as s, s.begin():
        await wf.review_variance(
            s, SETTINGS, variance_id=v.id, reviewer_id=own.id, reason_code="receiving", now=T0
        )
    # step 1 is a supervisor's: WH1's only one reviewed it, WH2's may not, so it went to the manager at once,
    # recorded with its reason (the CLI, a card and a job all open steps through the same code)
    steps = await _steps(sessionmaker, v.id)
    assert [st.role for st in steps] == ["manager", "finance", "manager"]
    async with sessionmaker() as s:
        moved = (
            await s.execute(select(AuditEvent).where(AuditEvent.entity == "approval", AuditEvent.entity_id == steps[0].id,
                                                     AuditEvent.action == "escalated"))
        ).scalar_one()  # fmt: skip
    assert moved.data == {"from_role": "supervisor", "to_role": "manager", "why": "no_eligible_approver"}
    with pytest.raises(wf.WorkflowError) as wrong_role:
        await _decide(sessionmaker, v.id, other_site, 1)
    assert "经理" in wrong_role.value.zh
    await _decide(sessionmaker, v.id, users["M01"], 2)
    await _decide(sessionmaker, v.id, users["F01"], 3)
    # step 3 is the manager's, who decided step 1; the admin is next in the chain, and there is none
    steps = await _steps(sessionmaker, v.id)
    assert steps[2].opened_at is not None and steps[2].role == "admin"
    async with sessionmaker() as s:
        unstaffed = (
            await s.execute(select(AuditEvent).where(AuditEvent.entity == "approval", AuditEvent.entity_id == steps[2].id,
                                                     AuditEvent.action == "unstaffed"))
        ).scalar_one()  # fmt: skip
    assert unstaffed.data["role"] == "admin"
    with pytest.raises(wf.WorkflowError) as twice:
        await _decide(sessionmaker, v.id, users["M01"], 4)
    assert "同一人不能审批两级" in twice.value.zh
    # the managers are told, once, in words that say what to do
    for _ in range(2):
        async with sessionmaker() as s, s.begin():
            await sync_cards(s, SETTINGS, T0 + timedelta(minutes=5))
    async with sessionmaker() as s:
        told = [
            (m.address["user_id"], m.body["text"])
            for m in (await s.execute(select(OutboxMessage).where(OutboxMessage.kind == "text"))).scalars()
        ]
        approval_cards = [
            m.address["user_id"]
            for m in (await s.execute(select(OutboxMessage).where(OutboxMessage.kind == "card"))).scalars()
            if (m.subject or "").startswith("approval:")
        ]
    assert len(told) == 1 and told[0][0] == "m01"
    assert (
        "找不到可以审批的人" in told[0][1]
        and "同一人不能审批两级" in told[0][1]
        and "WH1/A-000" in told[0][1]
    )
    assert "wh2-s01" not in approval_cards  # never a card to another site's supervisor
    # an admin appears: the card goes out by itself, the chain completes with three different people
    async with sessionmaker() as s, s.begin():
        admin = User(employee_no="A01", name="管理员", roles=["admin"], wecom_userid="a01")
        s.add(admin)
    async with sessionmaker() as s, s.begin():
        assert (await sync_cards(s, SETTINGS, T0 + timedelta(minutes=6))).approval == 1
    async with sessionmaker() as s:
        card = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.subject.like("approval:%"),
                                                        OutboxMessage.address["user_id"].as_string() == "a01"))
        ).scalar_one()  # fmt: skip
    # the card says why the variance sits at its tier, and which step of its round this is
    body = json.dumps(card.body, ensure_ascii=False)
    assert (
        "级别：金额 15,000.00 元达到重大差异上限 10,000.00 元，属严重差异" in body
        and "第 3 级 · 管理员" in body
    )
    done = await _decide(sessionmaker, v.id, admin, 7)
    assert done.final and done.variance.state == "adjusted"
    deciders = [st.decided_by_id for st in await _steps(sessionmaker, v.id)]
    assert len(set(deciders)) == 3


async def test_another_sites_supervisor_cannot_approve_or_settle_a_dispute(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    users = await _two_sites(sessionmaker)
    async with sessionmaker() as s, s.begin():
        s.add(
            User(employee_no="WH1-S02", name="主管二", roles=["supervisor"], team_id=users["WH1-S01"].team_id)
        )
    v = await _count_in_wh1(sessionmaker, users)
    async with sessionmaker() as s, s.begin():
        await wf.review_variance(s, SETTINGS, variance_id=v.id, reviewer_id=users["WH1-S01"].id,
                                 reason_code="receiving", now=T0)  # fmt: skip
    assert (await _steps(sessionmaker, v.id))[0].role == "supervisor"  # WH1's second supervisor may decide it
    with pytest.raises(wf.WorkflowError) as refused:
        await _decide(sessionmaker, v.id, users["WH2-S01"], 1)
    assert "属于仓库 WH1" in refused.value.zh
    async with sessionmaker() as s:
        s02 = (await s.execute(select(User).where(User.employee_no == "WH1-S02"))).scalar_one()
    assert not (await _decide(sessionmaker, v.id, s02, 2)).final


async def test_a_supervisor_who_counts_is_not_picked_to_recount_and_a_review_nobody_may_do_is_told(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """WH2 has two counters, and its supervisor counts too: the recount goes to the other counter, so the
    supervisor can still review. When the supervisor recounts anyway (the only one left), the review has nobody,
    and the managers are told once."""
    users = await _two_sites(sessionmaker)
    async with sessionmaker() as s, s.begin():
        sup = await s.get(User, users["WH2-S01"].id)
        assert sup is not None
        sup.roles = ["supervisor", "counter"]
        c1 = users["WH2-E01"]
        task = (await wf.counter_tasks(s, c1.id, MONDAY))[0][0]
        r = await wf.record_count(
            s, SETTINGS, task_id=task.id, counter_id=c1.id, text="7", counted_at=T0, now=T0
        )
        assert r.recount_task is not None
        assert r.recount_task.assignee_id == users["WH2-E02"].id  # not the supervisor, who has fewer tasks
        # the recount card names the warehouse: every site has a bin A-000
        await sync_cards(s, SETTINGS, T0 + timedelta(minutes=1))
        card = (
            await s.execute(select(OutboxMessage).where(OutboxMessage.subject.like("recount:%")))
        ).scalar_one()
        assert card.address["user_id"] == "wh2-e02" and "WH2/A-000" in json.dumps(
            card.body, ensure_ascii=False
        )
        # the supervisor takes the recount over (say the counter went home) and agrees with the first count
        r.recount_task.assignee_id = sup.id
        r2 = await wf.record_count(s, SETTINGS, task_id=r.recount_task.id, counter_id=sup.id, text="7",
                                   counted_at=T0 + timedelta(minutes=5), now=T0 + timedelta(minutes=5))  # fmt: skip
        assert r2.variance is not None and r2.variance.state == "in_review"
    for _ in range(2):
        async with sessionmaker() as s, s.begin():
            await sync_cards(s, SETTINGS, T0 + timedelta(minutes=6))
    async with sessionmaker() as s:
        texts = [(m.address["user_id"], m.body["text"]) for m in (await s.execute(
            select(OutboxMessage).where(OutboxMessage.kind == "text"))).scalars()]  # fmt: skip
        reviews = [
            m
            for m in (await s.execute(select(OutboxMessage))).scalars()
            if (m.subject or "").startswith("review:")
        ]
    assert reviews == []  # never WH1's supervisor
    assert len(texts) == 1 and texts[0][0] == "m01"
    assert (
        "找不到可以审核的主管" in texts[0][1]
        and "WH2/" in texts[0][1]
        and "审核卡片随后会自动发出" in texts[0][1]
    )
