"""Domain enums (pure: no SQLAlchemy), shared by the models and the pure planners."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    COUNTER = "counter"
    SUPERVISOR = "supervisor"
    FINANCE = "finance"
    MANAGER = "manager"
    ADMIN = "admin"


ROLE_LABEL_ZH: dict[Role, str] = {
    Role.COUNTER: "盘点员",
    Role.SUPERVISOR: "主管",
    Role.FINANCE: "财务",
    Role.MANAGER: "经理",
    Role.ADMIN: "管理员",
}


class MovementType(StrEnum):
    RECEIPT = "receipt"
    ISSUE = "issue"
    TRANSFER = "transfer"
    PRODUCTION_ISSUE = "production_issue"
    ADJUSTMENT = "adjustment"


# Movement types whose outflow counts as consumption for ABC classification.
CONSUMPTION_TYPES = (MovementType.ISSUE, MovementType.PRODUCTION_ISSUE)


class TaskReason(StrEnum):
    ROTATION = "rotation"
    NEGATIVE = "negative"
    ZERO = "zero"
    DORMANT = "dormant"
    TURNOVER = "turnover"
    INACCURATE = "inaccurate"
    ADHOC = "adhoc"
    RECOUNT = "recount"  # issue 3
    UNSCHEDULED = "unscheduled"  # issue 3: "found an item that was not on my list"


# Lower is more urgent. Negative stock is counted first.
REASON_PRIORITY: dict[TaskReason, int] = {
    TaskReason.NEGATIVE: 0,
    TaskReason.ADHOC: 1,
    TaskReason.ZERO: 1,
    TaskReason.RECOUNT: 1,
    TaskReason.INACCURATE: 2,
    TaskReason.TURNOVER: 3,
    TaskReason.DORMANT: 4,
    TaskReason.UNSCHEDULED: 4,
    TaskReason.ROTATION: 5,
}

REASON_LABEL_ZH: dict[TaskReason, str] = {
    TaskReason.ROTATION: "周期盘点",
    TaskReason.NEGATIVE: "负库存",
    TaskReason.ZERO: "零库存确认",
    TaskReason.DORMANT: "呆滞",
    TaskReason.TURNOVER: "高周转",
    TaskReason.INACCURATE: "近期差异",
    TaskReason.ADHOC: "临时请求",
    TaskReason.RECOUNT: "复盘",
    TaskReason.UNSCHEDULED: "计划外",
}


class TaskStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


OPEN_STATUSES = (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)


class CountOutcome(StrEnum):
    COUNTED = "counted"
    EMPTY = "empty"  # "location empty"
    NOT_HERE = "not_here"  # "item not here"
    FOUND_UNLISTED = "found_unlisted"  # "found an item that was not on my list"


class EntryMethod(StrEnum):
    SCAN = "scan"
    TYPED = "typed"
    CLI = "cli"


class ApprovalDecision(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    RECOUNT = "recount"
    ESCALATED = "escalated"
    CANCELLED = "cancelled"


class AdjustmentKind(StrEnum):
    GAIN = "gain"
    LOSS = "loss"
    TRANSFER = "transfer"
