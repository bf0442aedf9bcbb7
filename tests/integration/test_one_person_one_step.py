"""Segregation of duties does not shrink: someone who holds two roles decides at most one step of a variance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.enums import ApprovalDecision
from core.models import ApprovalStep, Variance
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
