"""Segregation of duties does not shrink: someone who holds two roles decides at most one step of a variance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.enums import ApprovalDecision
from core.models import ApprovalStep, CountTask, User, Variance
from core.variance import service as wf
from tests.integration.test_card_actions import SETTINGS, T0, variance_in_review


async def test_a_supervisor_who_is_also_finance_decides_one_step_not_two(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, users = await variance_in_review(sessionmaker)
    s02, f01 = users["S02"], users["F01"]
    at = T0 + timedelta(hours=1)
    async with sessionmaker() as s, s.begin():
        (await s.get(type(s02), s02.id)).roles = ["supervisor", "finance"]  # type: ignore[union-attr]
        await wf.review_variance(s, SETTINGS, variance_id=vid, reviewer_id=users["WH1-S01"].id,
                                 reason_code="receiving", note="收货少录", now=at)  # fmt: skip
    async with sessionmaker() as s:
        roles = [r for r, in (await s.execute(select(ApprovalStep.role).where(ApprovalStep.variance_id == vid)
                                               .order_by(ApprovalStep.seq)))]  # fmt: skip
    assert roles[:2] == ["supervisor", "finance"], roles
    async with sessionmaker() as s, s.begin():
        await wf.decide(
            s, SETTINGS, variance_id=vid, actor_id=s02.id, decision=ApprovalDecision.APPROVED, now=at
        )
    with pytest.raises(wf.WorkflowError) as refused:
        async with sessionmaker() as s, s.begin():
            await wf.decide(s, SETTINGS, variance_id=vid, actor_id=s02.id, decision=ApprovalDecision.APPROVED,
                            now=at + timedelta(minutes=1))  # fmt: skip
    assert (
        "同一人不能审批两级" in refused.value.zh and "one person cannot decide two steps" in refused.value.en
    )
    async with sessionmaker() as s, s.begin():
        await wf.decide(s, SETTINGS, variance_id=vid, actor_id=f01.id, decision=ApprovalDecision.APPROVED,
                        now=at + timedelta(minutes=2))  # fmt: skip
    async with sessionmaker() as s:
        v = await s.get(Variance, vid)
        deciders = [d for d, in (await s.execute(select(ApprovalStep.decided_by_id).where(
            ApprovalStep.variance_id == vid, ApprovalStep.decision == "approved")))]  # fmt: skip
    assert v is not None and v.state == "adjusted"
    assert sorted(deciders) == sorted([s02.id, f01.id])  # two people for two steps


async def test_a_variance_sent_back_and_reviewed_again_starts_a_new_round_of_steps(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    vid, users = await variance_in_review(sessionmaker)
    s01, s02, f01 = users["WH1-S01"], users["S02"], users["F01"]
    at = T0 + timedelta(hours=1)
    async with sessionmaker() as s, s.begin():
        await wf.review_variance(
            s, SETTINGS, variance_id=vid, reviewer_id=s01.id, reason_code="receiving", now=at
        )
    # both counters of WH1 counted the line: nobody is left to recount it, so sending it back is refused
    with pytest.raises(wf.WorkflowError) as nobody:
        async with sessionmaker() as s, s.begin():
            await wf.decide(s, SETTINGS, variance_id=vid, actor_id=s02.id, decision=ApprovalDecision.RECOUNT,
                            comment="再数一次", now=at + timedelta(minutes=1))  # fmt: skip
    assert "没有还没数过这一行的盘点员" in nobody.value.zh and "approve or reject" in nobody.value.en
    async with sessionmaker() as s, s.begin():
        s.add(User(employee_no="WH1-E03", name="盘点员3", roles=["counter"], team_id=s01.team_id))
    async with sessionmaker() as s, s.begin():
        back = await wf.decide(s, SETTINGS, variance_id=vid, actor_id=s02.id, decision=ApprovalDecision.RECOUNT,
                               comment="再数一次", now=at + timedelta(minutes=1))  # fmt: skip
    assert back.outcome == "recount"
    async with sessionmaker() as s, s.begin():
        v = await s.get(Variance, vid)
        assert v is not None
        assert v.state == "recount_pending"
        task = (await s.execute(select(CountTask).where(CountTask.parent_task_id == v.task_id,
                                                        CountTask.status == "open"))).scalar_one()  # fmt: skip
        assert task.assignee_id is not None
        await wf.record_count(s, SETTINGS, task_id=task.id, counter_id=task.assignee_id, text="7",
                              counted_at=at + timedelta(minutes=2), now=at + timedelta(minutes=2))  # fmt: skip
    async with sessionmaker() as s, s.begin():
        v = await s.get(Variance, vid)
        assert v is not None and v.state == "in_review", v.state
        await wf.review_variance(s, SETTINGS, variance_id=vid, reviewer_id=s01.id, reason_code="receiving",
                                 now=at + timedelta(minutes=3))  # fmt: skip
    async with sessionmaker() as s:
        steps = list((await s.execute(select(ApprovalStep).where(ApprovalStep.variance_id == vid)
                                       .order_by(ApprovalStep.seq))).scalars())  # fmt: skip
    # round 1: supervisor (sent back), finance (never opened, cancelled or pending); round 2 follows it
    assert [(st.seq, st.role) for st in steps] == [
        (1, "supervisor"),
        (2, "finance"),
        (3, "supervisor"),
        (4, "finance"),
    ]
    assert [st.decision for st in steps] == ["recount", "cancelled", "pending", "pending"]
    assert steps[2].opened_at is not None and steps[3].opened_at is None
    fresh = steps[2:]
    async with sessionmaker() as s:
        assert await wf.step_level(s, fresh[0]) == 1
    # S02 sent the first round back; in the new round S02 may decide step 1 again, and the chain completes
    async with sessionmaker() as s, s.begin():
        await wf.decide(s, SETTINGS, variance_id=vid, actor_id=s02.id, decision=ApprovalDecision.APPROVED,
                        now=at + timedelta(minutes=4))  # fmt: skip
    async with sessionmaker() as s, s.begin():
        done = await wf.decide(s, SETTINGS, variance_id=vid, actor_id=f01.id, decision=ApprovalDecision.APPROVED,
                               now=at + timedelta(minutes=5))  # fmt: skip
    assert done.final and done.variance.state == "adjusted"
