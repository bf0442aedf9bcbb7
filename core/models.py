"""SQLAlchemy 2.0 declarative tables: the system's memory.

Conventions:
- every timestamp is stored as UTC (``UTCDateTime``); local dates (plan dates, unavailability) are ``Date``;
- quantities are ``Numeric(18, 4)`` in the item's base unit, money ``Numeric(18, 4)`` in the company currency;
- relationships are ``lazy="raise"``: queries say what they load;
- the workflow tables of issue 3 (count entries, variances, reviews, approvals, adjustments, audit) hang off
  ``CountTask`` and ``ItemLocation``; nothing here assumes they don't exist.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.enums import (  # noqa: F401  (re-exported: models are where most code looks for them)
    CONSUMPTION_TYPES,
    OPEN_STATUSES,
    AdjustmentKind,
    ApprovalDecision,
    CountOutcome,
    EntryMethod,
    MovementType,
    Role,
    TaskReason,
    TaskStatus,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; pandian stores aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text from an INSERT ... SELECT
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


Qty = Numeric(18, 4, asdecimal=True)
Money = Numeric(18, 4, asdecimal=True)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _enum(e: type[StrEnum], name: str) -> Enum:
    # Stored as VARCHAR with a CHECK-free native_enum=False: adding a value needs no ALTER TYPE.
    return Enum(
        e,
        name=name,
        native_enum=False,
        length=32,
        values_callable=lambda x: [m.value for m in x],
        validate_strings=True,
        create_constraint=False,
    )


class Team(Base):
    __tablename__ = "team"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Warehouse(Base):
    __tablename__ = "warehouse"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(50), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    default_team_id: Mapped[int | None] = mapped_column(ForeignKey("team.id"))


class Zone(Base):
    __tablename__ = "zone"
    __table_args__ = (UniqueConstraint("warehouse_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    code: Mapped[str] = mapped_column(String(50))
    name: Mapped[str | None] = mapped_column(String(200))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("team.id"))


class Location(Base):
    __tablename__ = "location"
    __table_args__ = (UniqueConstraint("warehouse_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("zone.id"))
    code: Mapped[str] = mapped_column(String(50))
    barcode: Mapped[str | None] = mapped_column(String(100), unique=True)
    # Walking order inside the warehouse; defaults to the order of the codes.
    sequence: Mapped[int] = mapped_column(Integer, default=0)


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    employee_no: Mapped[str] = mapped_column(String(50), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("team.id"))
    capacity_minutes: Mapped[int] = mapped_column(Integer, default=240)
    wecom_userid: Mapped[str | None] = mapped_column(String(100), unique=True)
    feishu_open_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    feishu_user_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    dingtalk_userid: Mapped[str | None] = mapped_column(String(100), unique=True)
    locale: Mapped[str | None] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    team: Mapped[Team | None] = relationship(lazy="raise")


class UserZone(Base):
    __tablename__ = "user_zone"
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True)
    zone_id: Mapped[int] = mapped_column(ForeignKey("zone.id", ondelete="CASCADE"), primary_key=True)


class UserUnavailability(Base):
    __tablename__ = "user_unavailability"
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    note: Mapped[str | None] = mapped_column(String(200))


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[str | None] = mapped_column(String(200))
    base_unit: Mapped[str] = mapped_column(String(20), default="个")
    unit_cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    lot_tracked: Mapped[bool] = mapped_column(Boolean, default=False)
    abc_class: Mapped[str] = mapped_column(String(1), default="C")
    pinned_class: Mapped[str | None] = mapped_column(String(1))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ItemUnit(Base):
    """A pack unit: 1 ``unit`` = ``factor`` base units (1 箱 = 24 个)."""

    __tablename__ = "item_unit"
    __table_args__ = (UniqueConstraint("item_id", "unit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"))
    unit: Mapped[str] = mapped_column(String(20))
    factor: Mapped[Decimal] = mapped_column(Qty)


class ItemBarcode(Base):
    __tablename__ = "item_barcode"
    id: Mapped[int] = mapped_column(primary_key=True)
    barcode: Mapped[str] = mapped_column(String(100), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), index=True)
    unit: Mapped[str | None] = mapped_column(String(20))  # a case barcode scans as one 箱


class ItemWarehouseClass(Base):
    """The class computed for an item within one warehouse (classification scope 'warehouse')."""

    __tablename__ = "item_warehouse_class"
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(
        ForeignKey("warehouse.id", ondelete="CASCADE"), primary_key=True
    )
    abc_class: Mapped[str] = mapped_column(String(1))


class ClassChange(Base):
    __tablename__ = "class_change"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id", ondelete="CASCADE"), index=True)
    warehouse_id: Mapped[int | None] = mapped_column(ForeignKey("warehouse.id"))
    old_class: Mapped[str | None] = mapped_column(String(1))
    new_class: Mapped[str] = mapped_column(String(1))
    annual_value: Mapped[Decimal] = mapped_column(Money)
    basis: Mapped[str] = mapped_column(String(20))  # consumption | stock_value | pinned
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ItemLocation(Base):
    """Book stock of one item at one location: the unit that gets counted and planned.

    ``qty`` is the current book quantity; ``book_as_of`` is when the last stock snapshot was taken. The book
    at any time t is ``qty`` minus the movements after t (see ``core.stock.book_at``).
    """

    __tablename__ = "item_location"
    __table_args__ = (
        UniqueConstraint("item_id", "location_id"),
        Index("ix_item_location_rotation", "warehouse_id", "rotation_seq"),
        # The planner walks one class's rotation in this index's order (and counts ranks with it).
        Index("ix_item_location_class_rotation", "warehouse_id", "abc_class", "rotation_seq", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id"), index=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    # The item's effective class in this warehouse (pinned, per-warehouse or company class), kept here so the
    # planner can rank a rotation from one index. NULL until the planner or ``classify`` fills it in.
    abc_class: Mapped[str | None] = mapped_column(String(1))
    qty: Mapped[Decimal] = mapped_column(Qty, default=Decimal(0))
    book_as_of: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Position in the warehouse's rotation: new item-locations are appended, so they never reshuffle others.
    rotation_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_movement_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_counted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Value moved (|qty| x unit cost) since the last count; drives the turnover trigger.
    turnover_value: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # The last time a count here was out of the hit/miss tolerance (issue 3 sets it).
    last_miss_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Planner bookkeeping: the rotation cycle already planned, and the last day anything was planned.
    last_rotation_cycle: Mapped[str | None] = mapped_column(String(32))
    last_planned_on: Mapped[date | None] = mapped_column(Date)


class LotBalance(Base):
    __tablename__ = "lot_balance"
    __table_args__ = (UniqueConstraint("item_location_id", "lot"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_location_id: Mapped[int] = mapped_column(ForeignKey("item_location.id", ondelete="CASCADE"))
    lot: Mapped[str] = mapped_column(String(64))
    qty: Mapped[Decimal] = mapped_column(Qty, default=Decimal(0))
    expires_on: Mapped[date | None] = mapped_column(Date)


class Movement(Base):
    __tablename__ = "movement"
    __table_args__ = (Index("ix_movement_il_time", "item_location_id", "occurred_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id"))
    item_location_id: Mapped[int] = mapped_column(ForeignKey("item_location.id"))
    lot: Mapped[str | None] = mapped_column(String(64))
    qty: Mapped[Decimal] = mapped_column(Qty)  # signed, base units
    type: Mapped[MovementType] = mapped_column(_enum(MovementType, "movement_type"))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source_doc: Mapped[str | None] = mapped_column(String(100))
    # Natural key of the source line, so re-importing the same ledger changes nothing.
    import_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class CountPolicy(Base):
    """Per-warehouse overrides of the configured class policy (counts per year, minutes per task)."""

    __tablename__ = "count_policy"
    __table_args__ = (UniqueConstraint("warehouse_id", "abc_class"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    warehouse_id: Mapped[int | None] = mapped_column(ForeignKey("warehouse.id"))
    abc_class: Mapped[str] = mapped_column(String(1))
    counts_per_year: Mapped[int] = mapped_column(Integer)
    minutes_per_task: Mapped[float | None] = mapped_column(Numeric(8, 2, asdecimal=False))


class CalendarOverride(Base):
    """A company's own working day (e.g. a Saturday stock day) or day off, on top of the statutory calendar."""

    __tablename__ = "calendar_override"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    working: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(String(200))


class PlanRun(Base):
    __tablename__ = "plan_run"
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_date: Mapped[date] = mapped_column(Date, index=True)
    warehouse_id: Mapped[int | None] = mapped_column(ForeignKey("warehouse.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_tasks: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CountTask(Base):
    __tablename__ = "count_task"
    __table_args__ = (
        # One task per item-location and cycle (rotation: "A:2026-W48"; triggers: "negative:2026-11-28"):
        # re-running a plan inserts nothing twice.
        UniqueConstraint("item_location_id", "cycle_key"),
        # At most one open task per item-location, whatever its reason.
        Index(
            "uq_count_task_open",
            "item_location_id",
            unique=True,
            sqlite_where=text("status IN ('open', 'in_progress') AND reason NOT IN ('recount')"),
            postgresql_where=text("status IN ('open', 'in_progress') AND reason NOT IN ('recount')"),
        ),
        Index("ix_count_task_day", "plan_date", "warehouse_id"),
        Index("ix_count_task_assignee", "assignee_id", "status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_date: Mapped[date] = mapped_column(Date)
    due_date: Mapped[date] = mapped_column(Date)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id"))
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    item_location_id: Mapped[int] = mapped_column(ForeignKey("item_location.id"))
    abc_class: Mapped[str] = mapped_column(String(1))
    reason: Mapped[TaskReason] = mapped_column(_enum(TaskReason, "task_reason"))
    priority: Mapped[int] = mapped_column(Integer, default=5)  # 0 is most urgent
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus, "task_status"), default=TaskStatus.OPEN)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    est_minutes: Mapped[float] = mapped_column(Numeric(8, 2, asdecimal=False), default=3.0)
    cycle_key: Mapped[str] = mapped_column(String(40))
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("count_request.id"))
    # A recount (or an unscheduled find) points at the task it follows up.
    parent_task_id: Mapped[int | None] = mapped_column(ForeignKey("count_task.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CountRequest(Base):
    """An ad-hoc count request ("picker says it's not there"); the next plan turns it into a task."""

    __tablename__ = "count_request"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_location_id: Mapped[int] = mapped_column(ForeignKey("item_location.id"))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    note: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    planned_on: Mapped[date | None] = mapped_column(Date)


# --------------------------------------------------------------------------------------------------------
# The count-to-adjustment workflow (issue 3). Workflow states are plain strings validated by the transition
# tables in core.variance.workflow, so a new state needs no schema change.


class CountEntry(Base):
    """One count by one counter. A second full count by the same person supersedes the first (kept)."""

    __tablename__ = "count_entry"
    __table_args__ = (Index("ix_count_entry_task", "task_id", "counter_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("count_task.id"))
    counter_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"))
    outcome: Mapped[CountOutcome] = mapped_column(_enum(CountOutcome, "count_outcome"))
    qty: Mapped[Decimal | None] = mapped_column(Qty)  # base units; None when the item was not there
    lot: Mapped[str | None] = mapped_column(String(64))
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    counted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    method: Mapped[EntryMethod] = mapped_column(_enum(EntryMethod, "entry_method"))
    raw_text: Mapped[str | None] = mapped_column(String(200))  # what the counter typed ("3箱5个")
    photos: Mapped[list[str]] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(Text)
    recount: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("count_entry.id"))
    # Set when a blind recount overturned this count (the counter's quality record).
    overturned: Mapped[bool] = mapped_column(Boolean, default=False)
    # The inbound event's id (platform message id, CLI invocation): recording the same event twice is a no-op.
    dedup_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class Variance(Base):
    """The difference between a task's count and the book as of the moment of counting."""

    __tablename__ = "variance"
    __table_args__ = (
        Index("ix_variance_state", "warehouse_id", "state"),
        Index("ix_variance_il", "item_location_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("count_task.id"), unique=True)
    item_location_id: Mapped[int] = mapped_column(ForeignKey("item_location.id"))
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id"))
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    abc_class: Mapped[str] = mapped_column(String(1))
    state: Mapped[str] = mapped_column(String(32))
    count_time: Mapped[datetime] = mapped_column(UTCDateTime)
    book_qty: Mapped[Decimal] = mapped_column(Qty)
    counted_qty: Mapped[Decimal] = mapped_column(Qty)
    qty: Mapped[Decimal] = mapped_column(Qty)  # counted - book
    pct: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))  # None when the book is 0
    unit_cost: Mapped[Decimal] = mapped_column(Money)
    value: Mapped[Decimal] = mapped_column(Money)
    severity: Mapped[str] = mapped_column(String(16))
    within_tolerance: Mapped[bool] = mapped_column(Boolean)
    hit: Mapped[bool] = mapped_column(Boolean)
    moved_during_count: Mapped[bool] = mapped_column(Boolean, default=False)
    recounts: Mapped[int] = mapped_column(Integer, default=0)
    suggested_reason: Mapped[str | None] = mapped_column(String(40))
    suggestion_text: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(40))
    reason_note: Mapped[str | None] = mapped_column(Text)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Optimistic lock: every state change bumps it, and an UPDATE that finds another version changes nothing.
    version: Mapped[int] = mapped_column(Integer, default=1)


class ApprovalStep(Base):
    __tablename__ = "approval_step"
    __table_args__ = (UniqueConstraint("variance_id", "seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    variance_id: Mapped[int] = mapped_column(ForeignKey("variance.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    decision: Mapped[ApprovalDecision] = mapped_column(
        _enum(ApprovalDecision, "approval_decision"), default=ApprovalDecision.PENDING
    )
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    comment: Mapped[str | None] = mapped_column(Text)


class Adjustment(Base):
    """An inventory adjustment document: gain and loss lines, or a transfer for a mis-slot pair."""

    __tablename__ = "adjustment"
    id: Mapped[int] = mapped_column(primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    kind: Mapped[AdjustmentKind] = mapped_column(_enum(AdjustmentKind, "adjustment_kind"))
    state: Mapped[str] = mapped_column(String(32))  # pending_write_back | exported | posted | failed
    value: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    export_batch: Mapped[str | None] = mapped_column(String(64))
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erp_doc_no: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)


class AdjustmentLine(Base):
    __tablename__ = "adjustment_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    adjustment_id: Mapped[int] = mapped_column(ForeignKey("adjustment.id", ondelete="CASCADE"), index=True)
    variance_id: Mapped[int | None] = mapped_column(ForeignKey("variance.id"))
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    location_id: Mapped[int] = mapped_column(ForeignKey("location.id"))
    to_location_id: Mapped[int | None] = mapped_column(ForeignKey("location.id"))  # transfers
    qty: Mapped[Decimal] = mapped_column(Qty)  # signed for gain/loss; positive for a transfer
    unit_cost: Mapped[Decimal] = mapped_column(Money)
    value: Mapped[Decimal] = mapped_column(Money)


class AuditEvent(Base):
    """Append-only trail of every state change, with actor and time."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entity: Mapped[str] = mapped_column(String(20))  # task | count | variance | approval | adjustment
    entity_id: Mapped[int] = mapped_column(Integer)
    variance_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ImprovementItem(Base):
    """A recurring reason (K times in W days in a warehouse): a process improvement for the manager."""

    __tablename__ = "improvement_item"
    __table_args__ = (UniqueConstraint("warehouse_id", "reason_code", "window_start"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    warehouse_id: Mapped[int] = mapped_column(ForeignKey("warehouse.id"))
    reason_code: Mapped[str] = mapped_column(String(40))
    window_start: Mapped[date] = mapped_column(Date)
    variance_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(20), default="open")


# The audit trail is append-only in the database itself, not only by convention.
AUDIT_APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER IF NOT EXISTS audit_event_append_only BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
)
AUDIT_APPEND_ONLY_PG = [
    "CREATE OR REPLACE FUNCTION pandian_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_event is append-only'; END $$",
    "CREATE TRIGGER audit_event_append_only BEFORE UPDATE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION pandian_audit_append_only()",
]


def _audit_trigger(target: Any, connection: Any, **kw: Any) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(AUDIT_APPEND_ONLY_SQLITE)
    elif connection.dialect.name == "postgresql":
        for stmt in AUDIT_APPEND_ONLY_PG:
            connection.exec_driver_sql(stmt)


event.listen(AuditEvent.__table__, "after_create", _audit_trigger)


# --------------------------------------------------------------------------------------------------------
# The bot's durable plumbing (issue 4): inbound dedup and the outbound outbox.


class InboundSeen(Base):
    """Inbound events already accepted, by their platform dedup key: a platform retry is dropped."""

    __tablename__ = "inbound_seen"
    dedup_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # the acknowledged event itself, until it has been processed: a process that dies after the ack but
    # before the work is done leaves it here, and the next start replays it (``processed_at`` stays NULL)
    event: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class OutboxMessage(Base):
    """One outbound send (text, card or card update), written in the same transaction as the change that
    causes it, delivered by the outbox workers: a crash never loses it, a retry never sends it twice."""

    __tablename__ = "outbox_message"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    platform: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))  # text | card | update
    address: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_ref: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trace_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # what the card is about ("approval:12", "tasks:7:2026-11-28"): every copy sent about one subject is
    # found again to update them all in place after a decision
    subject: Mapped[str | None] = mapped_column(String(120), index=True)


# --------------------------------------------------------------------------------------------------------
# ERP connectors (issue 6): sync cursors and runs, and the durable write-back queue with its attempts.


class ErpSyncCursor(Base):
    """Where the next incremental pull of one entity from one ERP starts (the ERP's own cursor text)."""

    __tablename__ = "erp_sync_cursor"
    system: Mapped[str] = mapped_column(String(20), primary_key=True)
    entity: Mapped[str] = mapped_column(String(20), primary_key=True)  # items | locations | stock | movements
    cursor: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ErpSyncRun(Base):
    """One sync, finished or failed, with what it pulled and changed (``stats``) and the error it stopped on."""

    __tablename__ = "erp_sync_run"
    __table_args__ = (Index("ix_erp_sync_run_system", "system", "started_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    system: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class ErpPosting(Base):
    """One adjustment on its way into the ERP: claimed by one drainer at a time (compare-and-set on ``state``
    and ``claim_token``), resumed from ``progress`` after a crash, posted once under ``doc_key`` (our bill
    number, which the ERP keeps, so a lost answer is found again instead of posted twice)."""

    __tablename__ = "erp_posting"
    __table_args__ = (Index("ix_erp_posting_due", "state", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    adjustment_id: Mapped[int] = mapped_column(ForeignKey("adjustment.id"), unique=True)
    system: Mapped[str] = mapped_column(String(20))
    doc_key: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | posting | posted | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the document as sent
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the ERP's ids, step by step
    erp_doc_no: Mapped[str | None] = mapped_column(String(100))
    erp_doc_id: Mapped[str | None] = mapped_column(String(100))
    erp_refs: Mapped[list[str]] = mapped_column(JSON, default=list)  # every ERP document it produced
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ErpPostingAttempt(Base):
    """Every attempt at a posting, with its outcome: the history a failed posting is explained by."""

    __tablename__ = "erp_posting_attempt"
    id: Mapped[int] = mapped_column(primary_key=True)
    posting_id: Mapped[int] = mapped_column(ForeignKey("erp_posting.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # posted | retry | failed | lost_lease
    erp_doc_no: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
