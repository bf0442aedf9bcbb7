"""Workflow state tables (pure): variances, count tasks and adjustments.

Each workflow is an explicit table ``(state, event) -> new state``; nothing else decides a transition. The
database keeps states as plain strings (``core.models``), so these tables are the only place a state is
defined. ``core/variance/workflow.mmd`` is the variance table drawn by :func:`to_mermaid` (a test keeps it up
to date).

The variance life cycle::

    counted within tolerance -> auto_accepted -> adjusted
    counted out of tolerance -> open -> recount_pending (blind recount)
        recount agrees with the first count -> confirmed -> in_review -> pending_approval
        recount agrees with the book        -> closed_count_error (the first count was wrong)
        recount agrees with neither         -> disputed -> third count, or a supervisor decides
        pending_approval -> approved -> adjusted | rejected | recount_requested (sent back) -> recount_pending
    no difference left (the count matched the book as of counting and a recount agreed, or a late movement
    explains the whole difference) -> closed_no_difference, from any step before the adjustment: nothing to
    review, approve or adjust
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from core.enums import TaskStatus


class VarianceState(StrEnum):
    AUTO_ACCEPTED = "auto_accepted"
    OPEN = "open"
    RECOUNT_PENDING = "recount_pending"
    CONFIRMED = "confirmed"
    CLOSED_COUNT_ERROR = "closed_count_error"
    DISPUTED = "disputed"
    IN_REVIEW = "in_review"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    RECOUNT_REQUESTED = "recount_requested"
    ADJUSTED = "adjusted"
    CLOSED_NO_DIFFERENCE = "closed_no_difference"


class VarianceEvent(StrEnum):
    RECOUNT_ASSIGNED = "recount_assigned"
    RECOUNT_WAIVED = "recount_waived"  # a supervisor sends an open variance straight to review
    RECOUNT_CONFIRMED_COUNT = "recount_confirmed_count"
    RECOUNT_MATCHED_BOOK = "recount_matched_book"
    RECOUNT_DISAGREED = "recount_disagreed"
    SUPERVISOR_CONFIRMED_COUNT = "supervisor_confirmed_count"
    SUPERVISOR_CONFIRMED_BOOK = "supervisor_confirmed_book"
    REVIEW_STARTED = "review_started"
    REVIEW_SUBMITTED = "review_submitted"
    APPROVED = "approved"  # the last approval step approved
    REJECTED = "rejected"
    SENT_BACK = "sent_back"
    ADJUSTMENT_RECORDED = "adjustment_recorded"
    NO_DIFFERENCE = "no_difference"  # the quantity to adjust is zero: closed with nothing to adjust


class TaskEvent(StrEnum):
    STARTED = "started"
    RELEASED = "released"  # the counter hands the task back
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class AdjustmentState(StrEnum):
    PENDING_WRITE_BACK = "pending_write_back"
    EXPORTED = "exported"
    POSTED = "posted"
    FAILED = "failed"


class AdjustmentEvent(StrEnum):
    EXPORTED = "exported"  # written to the spreadsheet export
    POSTED = "posted"  # the ERP confirmed the document
    FAILED = "failed"
    RETRIED = "retried"


S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class IllegalTransition(ValueError):
    """An event that the state table does not allow in the current state."""

    def __init__(
        self, workflow: str, state: StrEnum, event: StrEnum, allowed: list[StrEnum], zh: str
    ) -> None:
        names = ", ".join(a.value for a in allowed) or "none (final state)"
        en = f"{workflow}: event '{event.value}' is not allowed in state '{state.value}'; allowed: {names}"
        super().__init__(f"{zh} / {en}")
        self.state = state
        self.event = event
        self.allowed = allowed
        self.zh = zh
        self.en = en


@dataclass(frozen=True)
class StateTable(Generic[S, E]):
    name: str  # English, for messages and the diagram
    name_zh: str
    table: Mapping[tuple[S, E], S]
    initial: tuple[S, ...]
    state_zh: Mapping[S, str]
    event_zh: Mapping[E, str]

    @property
    def states(self) -> set[S]:
        return set(self.initial) | {s for s, _ in self.table} | set(self.table.values())

    def finals(self) -> set[S]:
        return {s for s in self.states if not self.allowed(s)}

    def allowed(self, state: S) -> set[E]:
        return {e for (s, e) in self.table if s == state}

    def transition(self, state: S, event: E) -> S:
        try:
            return self.table[state, event]
        except KeyError:
            allowed = sorted(self.allowed(state), key=list(type(event)).index)
            names_zh = "、".join(f"「{self.event_zh[a]}」" for a in allowed) or "无（已是终态）"
            zh = (
                f"{self.name_zh}处于「{self.state_zh[state]}」({state.value})，"
                f"不能执行「{self.event_zh[event]}」({event.value})；可执行：{names_zh}"
            )
            raise IllegalTransition(self.name, state, event, list(allowed), zh) from None

    def to_mermaid(self) -> str:
        """A Mermaid state diagram; order follows the table, so the output is stable."""
        lines = ["---", f"title: {self.name} ({self.name_zh})", "---", "stateDiagram-v2"]
        order = list(dict.fromkeys([*self.initial, *(s for s, _ in self.table), *self.table.values()]))
        lines += [f'    state "{self.state_zh[s]}<br/>{s.value}" as {s.value}' for s in order]
        lines += [f"    [*] --> {s.value}" for s in self.initial]
        lines += [
            f"    {s.value} --> {t.value}: {e.value} {self.event_zh[e]}" for (s, e), t in self.table.items()
        ]
        lines += [f"    {s.value} --> [*]" for s in order if s in self.finals()]
        return "\n".join(lines) + "\n"


V, VE = VarianceState, VarianceEvent

VARIANCE = StateTable[VarianceState, VarianceEvent](
    name="variance",
    name_zh="差异",
    initial=(V.AUTO_ACCEPTED, V.OPEN),
    table={
        (V.AUTO_ACCEPTED, VE.ADJUSTMENT_RECORDED): V.ADJUSTED,
        (V.OPEN, VE.RECOUNT_ASSIGNED): V.RECOUNT_PENDING,
        (V.OPEN, VE.RECOUNT_WAIVED): V.IN_REVIEW,
        (V.RECOUNT_PENDING, VE.RECOUNT_CONFIRMED_COUNT): V.CONFIRMED,
        (V.RECOUNT_PENDING, VE.RECOUNT_MATCHED_BOOK): V.CLOSED_COUNT_ERROR,
        (V.RECOUNT_PENDING, VE.RECOUNT_DISAGREED): V.DISPUTED,
        (V.DISPUTED, VE.RECOUNT_ASSIGNED): V.RECOUNT_PENDING,
        (V.DISPUTED, VE.SUPERVISOR_CONFIRMED_COUNT): V.CONFIRMED,
        (V.DISPUTED, VE.SUPERVISOR_CONFIRMED_BOOK): V.CLOSED_COUNT_ERROR,
        (V.CONFIRMED, VE.REVIEW_STARTED): V.IN_REVIEW,
        (V.IN_REVIEW, VE.REVIEW_SUBMITTED): V.PENDING_APPROVAL,
        (V.PENDING_APPROVAL, VE.APPROVED): V.APPROVED,
        (V.PENDING_APPROVAL, VE.REJECTED): V.REJECTED,
        (V.PENDING_APPROVAL, VE.SENT_BACK): V.RECOUNT_REQUESTED,
        (V.RECOUNT_REQUESTED, VE.RECOUNT_ASSIGNED): V.RECOUNT_PENDING,
        (V.APPROVED, VE.ADJUSTMENT_RECORDED): V.ADJUSTED,
        (V.RECOUNT_PENDING, VE.NO_DIFFERENCE): V.CLOSED_NO_DIFFERENCE,
        (V.CONFIRMED, VE.NO_DIFFERENCE): V.CLOSED_NO_DIFFERENCE,
        (V.IN_REVIEW, VE.NO_DIFFERENCE): V.CLOSED_NO_DIFFERENCE,
        (V.PENDING_APPROVAL, VE.NO_DIFFERENCE): V.CLOSED_NO_DIFFERENCE,
        (V.APPROVED, VE.NO_DIFFERENCE): V.CLOSED_NO_DIFFERENCE,
    },
    state_zh={
        V.AUTO_ACCEPTED: "容差内自动接受",
        V.OPEN: "待复盘",
        V.RECOUNT_PENDING: "复盘中",
        V.CONFIRMED: "复盘确认",
        V.CLOSED_COUNT_ERROR: "初盘错误已关闭",
        V.DISPUTED: "复盘不一致",
        V.IN_REVIEW: "原因审核中",
        V.PENDING_APPROVAL: "待审批",
        V.APPROVED: "已批准",
        V.REJECTED: "已驳回",
        V.RECOUNT_REQUESTED: "退回重盘",
        V.ADJUSTED: "已调整库存",
        V.CLOSED_NO_DIFFERENCE: "无差异已关闭",
    },
    event_zh={
        VE.RECOUNT_ASSIGNED: "派发复盘",
        VE.RECOUNT_WAIVED: "免复盘",
        VE.RECOUNT_CONFIRMED_COUNT: "复盘与初盘一致",
        VE.RECOUNT_MATCHED_BOOK: "复盘与账面一致",
        VE.RECOUNT_DISAGREED: "复盘与初盘、账面均不一致",
        VE.SUPERVISOR_CONFIRMED_COUNT: "主管确认盘点数",
        VE.SUPERVISOR_CONFIRMED_BOOK: "主管确认账面数",
        VE.REVIEW_STARTED: "开始审核",
        VE.REVIEW_SUBMITTED: "提交审核",
        VE.APPROVED: "审批通过",
        VE.REJECTED: "审批驳回",
        VE.SENT_BACK: "退回重盘",
        VE.ADJUSTMENT_RECORDED: "生成库存调整",
        VE.NO_DIFFERENCE: "核实无差异",
    },
)

T, TE = TaskStatus, TaskEvent

COUNT_TASK = StateTable[TaskStatus, TaskEvent](
    name="count task",
    name_zh="盘点任务",
    initial=(T.OPEN,),
    table={
        (T.OPEN, TE.STARTED): T.IN_PROGRESS,
        (T.OPEN, TE.COMPLETED): T.DONE,  # a quantity sent without pressing "start" first
        (T.OPEN, TE.CANCELLED): T.CANCELLED,
        (T.IN_PROGRESS, TE.RELEASED): T.OPEN,
        (T.IN_PROGRESS, TE.COMPLETED): T.DONE,
        (T.IN_PROGRESS, TE.CANCELLED): T.CANCELLED,
    },
    state_zh={T.OPEN: "待盘点", T.IN_PROGRESS: "盘点中", T.DONE: "已完成", T.CANCELLED: "已取消"},
    event_zh={
        TE.STARTED: "开始盘点",
        TE.RELEASED: "退回任务",
        TE.COMPLETED: "完成盘点",
        TE.CANCELLED: "取消",
    },
)

A, AE = AdjustmentState, AdjustmentEvent

ADJUSTMENT = StateTable[AdjustmentState, AdjustmentEvent](
    name="adjustment",
    name_zh="库存调整单",
    initial=(A.PENDING_WRITE_BACK,),
    table={
        (A.PENDING_WRITE_BACK, AE.EXPORTED): A.EXPORTED,
        (A.PENDING_WRITE_BACK, AE.POSTED): A.POSTED,
        (A.PENDING_WRITE_BACK, AE.FAILED): A.FAILED,
        (A.EXPORTED, AE.POSTED): A.POSTED,  # reconciliation found the exported document posted in the ERP
        (A.FAILED, AE.RETRIED): A.PENDING_WRITE_BACK,
    },
    state_zh={
        A.PENDING_WRITE_BACK: "待回写",
        A.EXPORTED: "已导出",
        A.POSTED: "已过账",
        A.FAILED: "回写失败",
    },
    event_zh={AE.EXPORTED: "导出", AE.POSTED: "过账", AE.FAILED: "回写失败", AE.RETRIED: "重试"},
)


def initial_state(within_tolerance: bool) -> VarianceState:
    """Where a new variance starts: auto-accepted within tolerance, else open (a blind recount follows)."""
    return VarianceState.AUTO_ACCEPTED if within_tolerance else VarianceState.OPEN


def transition(state: VarianceState, event: VarianceEvent) -> VarianceState:
    return VARIANCE.transition(state, event)


def allowed(state: VarianceState) -> set[VarianceEvent]:
    return VARIANCE.allowed(state)


def to_mermaid() -> str:
    return VARIANCE.to_mermaid()
