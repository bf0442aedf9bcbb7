from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.enums import TaskStatus
from core.variance.workflow import (
    ADJUSTMENT,
    COUNT_TASK,
    VARIANCE,
    AdjustmentEvent,
    AdjustmentState,
    IllegalTransition,
    StateTable,
    TaskEvent,
    VarianceEvent,
    VarianceState,
    allowed,
    initial_state,
    to_mermaid,
    transition,
)

V, E = VarianceState, VarianceEvent
MMD = Path(__file__).resolve().parents[2] / "core" / "variance" / "workflow.mmd"
TABLES: list[StateTable[Any, Any]] = [VARIANCE, COUNT_TASK, ADJUSTMENT]
ENUMS = {
    "variance": (VarianceState, VarianceEvent),
    "count task": (TaskStatus, TaskEvent),
    "adjustment": (AdjustmentState, AdjustmentEvent),
}


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ([E.ADJUSTMENT_RECORDED], V.ADJUSTED),  # from auto_accepted
        (
            [
                E.RECOUNT_ASSIGNED,
                E.RECOUNT_CONFIRMED_COUNT,
                E.REVIEW_STARTED,
                E.REVIEW_SUBMITTED,
                E.APPROVED,
                E.ADJUSTMENT_RECORDED,
            ],
            V.ADJUSTED,
        ),
        ([E.RECOUNT_ASSIGNED, E.RECOUNT_MATCHED_BOOK], V.CLOSED_COUNT_ERROR),
        ([E.RECOUNT_ASSIGNED, E.RECOUNT_DISAGREED, E.RECOUNT_ASSIGNED], V.RECOUNT_PENDING),  # third count
        ([E.RECOUNT_ASSIGNED, E.RECOUNT_DISAGREED, E.SUPERVISOR_CONFIRMED_COUNT], V.CONFIRMED),
        ([E.RECOUNT_ASSIGNED, E.RECOUNT_DISAGREED, E.SUPERVISOR_CONFIRMED_BOOK], V.CLOSED_COUNT_ERROR),
        ([E.RECOUNT_WAIVED, E.REVIEW_SUBMITTED, E.REJECTED], V.REJECTED),
        ([E.RECOUNT_WAIVED, E.REVIEW_SUBMITTED, E.SENT_BACK, E.RECOUNT_ASSIGNED], V.RECOUNT_PENDING),
    ],
)
def test_paths(path: list[VarianceEvent], end: VarianceState) -> None:
    state = initial_state(within_tolerance=path == [E.ADJUSTMENT_RECORDED])
    for event in path:
        state = transition(state, event)
    assert state is end


def test_initial_state() -> None:
    assert initial_state(True) is V.AUTO_ACCEPTED and initial_state(False) is V.OPEN


def test_illegal_transition_names_state_event_and_allowed() -> None:
    with pytest.raises(IllegalTransition) as e:
        transition(V.RECOUNT_PENDING, E.APPROVED)
    err = e.value
    assert err.state is V.RECOUNT_PENDING and err.event is E.APPROVED
    assert err.allowed == [
        E.RECOUNT_CONFIRMED_COUNT,
        E.RECOUNT_MATCHED_BOOK,
        E.RECOUNT_DISAGREED,
        E.NO_DIFFERENCE,
    ]
    assert err.zh == (
        "差异处于「复盘中」(recount_pending)，不能执行「审批通过」(approved)；"
        "可执行：「复盘与初盘一致」、「复盘与账面一致」、「复盘与初盘、账面均不一致」、「核实无差异」"
    )
    assert err.en == (
        "variance: event 'approved' is not allowed in state 'recount_pending'; "
        "allowed: recount_confirmed_count, recount_matched_book, recount_disagreed, no_difference"
    )


def test_final_state_says_so() -> None:
    with pytest.raises(IllegalTransition) as e:
        transition(V.ADJUSTED, E.APPROVED)
    assert e.value.allowed == [] and "已是终态" in e.value.zh and "none (final state)" in e.value.en


@pytest.mark.parametrize(
    ("state", "events"),
    [
        (V.OPEN, {E.RECOUNT_ASSIGNED, E.RECOUNT_WAIVED}),
        (V.PENDING_APPROVAL, {E.APPROVED, E.REJECTED, E.SENT_BACK, E.NO_DIFFERENCE}),
        (V.APPROVED, {E.ADJUSTMENT_RECORDED, E.NO_DIFFERENCE}),
        (V.DISPUTED, {E.RECOUNT_ASSIGNED, E.SUPERVISOR_CONFIRMED_COUNT, E.SUPERVISOR_CONFIRMED_BOOK}),
        (V.ADJUSTED, set()),
        (V.REJECTED, set()),
        (V.CLOSED_COUNT_ERROR, set()),
        (V.CLOSED_NO_DIFFERENCE, set()),
    ],
)
def test_allowed(state: VarianceState, events: set[VarianceEvent]) -> None:
    assert allowed(state) == events


def reachable(table: StateTable[Any, Any], starts: Iterable[Any]) -> set[Any]:
    seen = set(starts)
    todo = deque(seen)
    while todo:
        s = todo.popleft()
        for e in table.allowed(s):
            t = table.transition(s, e)
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_state_reachable_and_labelled(table: StateTable[Any, Any]) -> None:
    states_enum, events_enum = ENUMS[table.name]
    assert reachable(table, table.initial) == set(states_enum)
    assert set(table.state_zh) == set(states_enum) and set(table.event_zh) == set(events_enum)
    assert {e for _, e in table.table} == set(events_enum)  # no event is dead
    assert all(len(s.value) <= 32 for s in states_enum)  # fits the state columns


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_state_can_finish(table: StateTable[Any, Any]) -> None:
    finals = table.finals()
    for s in table.states:
        assert reachable(table, [s]) & finals, f"{s} cannot reach a final state"


@given(st.sampled_from(list(VarianceState)), st.sampled_from(list(VarianceEvent)))
def test_transition_agrees_with_allowed(state: VarianceState, event: VarianceEvent) -> None:
    if event in allowed(state):
        assert transition(state, event) in set(VarianceState)
    else:
        with pytest.raises(IllegalTransition) as e:
            transition(state, event)
        assert set(e.value.allowed) == allowed(state)
        assert state.value in e.value.en and event.value in e.value.en
        assert VARIANCE.state_zh[state] in e.value.zh and VARIANCE.event_zh[event] in e.value.zh


@pytest.mark.parametrize(
    ("state", "event", "new"),
    [
        (TaskStatus.OPEN, TaskEvent.STARTED, TaskStatus.IN_PROGRESS),
        (TaskStatus.OPEN, TaskEvent.COMPLETED, TaskStatus.DONE),
        (TaskStatus.IN_PROGRESS, TaskEvent.COMPLETED, TaskStatus.DONE),
        (TaskStatus.IN_PROGRESS, TaskEvent.RELEASED, TaskStatus.OPEN),
        (TaskStatus.IN_PROGRESS, TaskEvent.CANCELLED, TaskStatus.CANCELLED),
    ],
)
def test_count_task_table(state: TaskStatus, event: TaskEvent, new: TaskStatus) -> None:
    assert COUNT_TASK.transition(state, event) is new


def test_count_task_done_is_final() -> None:
    with pytest.raises(IllegalTransition, match="盘点任务处于「已完成」"):
        COUNT_TASK.transition(TaskStatus.DONE, TaskEvent.CANCELLED)


@pytest.mark.parametrize(
    ("state", "event", "new"),
    [
        (AdjustmentState.PENDING_WRITE_BACK, AdjustmentEvent.EXPORTED, AdjustmentState.EXPORTED),
        (AdjustmentState.PENDING_WRITE_BACK, AdjustmentEvent.POSTED, AdjustmentState.POSTED),
        (AdjustmentState.PENDING_WRITE_BACK, AdjustmentEvent.FAILED, AdjustmentState.FAILED),
        (AdjustmentState.FAILED, AdjustmentEvent.RETRIED, AdjustmentState.PENDING_WRITE_BACK),
        (AdjustmentState.EXPORTED, AdjustmentEvent.POSTED, AdjustmentState.POSTED),
    ],
)
def test_adjustment_table(state: AdjustmentState, event: AdjustmentEvent, new: AdjustmentState) -> None:
    assert ADJUSTMENT.transition(state, event) is new


def test_adjustment_posted_is_final() -> None:
    with pytest.raises(IllegalTransition) as e:
        ADJUSTMENT.transition(AdjustmentState.POSTED, AdjustmentEvent.RETRIED)
    assert e.value.allowed == []
    assert ADJUSTMENT.allowed(AdjustmentState.FAILED) == {AdjustmentEvent.RETRIED}


def test_mermaid_file_is_up_to_date() -> None:
    assert MMD.read_text(encoding="utf-8") == to_mermaid(), (
        "regenerate: python -c 'from core.variance.workflow import to_mermaid; "
        'open("core/variance/workflow.mmd", "w").write(to_mermaid())\''
    )


def test_mermaid_draws_every_transition() -> None:
    text = to_mermaid()
    assert text.startswith("---\ntitle: variance (差异)\n---\nstateDiagram-v2\n")
    for (s, e), t in VARIANCE.table.items():
        assert f"    {s.value} --> {t.value}: {e.value} " in text
    for s in VARIANCE.initial:
        assert f"[*] --> {s.value}" in text
    for s in VARIANCE.finals():
        assert f"{s.value} --> [*]" in text
