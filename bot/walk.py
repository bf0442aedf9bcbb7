"""A counter's walk: their open tasks in the order they count them, each with where it is.

The order, everywhere a counter sees their tasks (开始 in the chat, 开始盘点 on a card, the daily task card,
/任务): **recounts first** (a variance waits on each one), **then the walking order**: warehouse, the
location's place on the walk (``Location.sequence``), its code, the SKU. Tasks planned on an earlier day and
still open are part of the walk (carry-over). The planner's priority is left out on purpose: it puts negative
stock and zero-stock checks first, so an order by priority would hint at the book (counts are blind).

Where: a location is shown with its warehouse (``CK01/A-01-02``) when the company has more than one warehouse,
because the same bin codes exist in each; with a single warehouse, the bin alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.cards.text import ItemAt, place
from core.enums import TaskReason
from core.models import CountTask, Item, Location, Warehouse
from core.variance.service import counter_tasks


async def warehouse_codes(session: AsyncSession) -> dict[int, str]:
    """Warehouse id -> code when the company has more than one warehouse; empty when it has one (a location
    then needs no warehouse to be told apart)."""
    rows = (await session.execute(select(Warehouse.id, Warehouse.code))).all()
    return {i: c for i, c in rows} if len(rows) > 1 else {}


@dataclass(frozen=True, slots=True)
class Stop:
    """One open task on the walk."""

    task: CountTask
    item: Item
    location: Location
    warehouse: str | None  # the warehouse code, only when the company has several

    @property
    def where(self) -> str:
        return place(self.location.code, self.warehouse)

    @property
    def recount(self) -> bool:
        return self.task.reason == TaskReason.RECOUNT

    def item_at(self) -> ItemAt:
        it = self.item
        return ItemAt(self.location.code, it.sku, it.name, it.spec, it.base_unit, self.warehouse)


def walk_order(stops: Iterable[Stop]) -> list[Stop]:
    """Recounts first, then the walk (see the module doc)."""
    return sorted(
        stops,
        key=lambda s: (
            not s.recount, s.warehouse or "", s.location.sequence or 0, s.location.code, s.item.sku, s.task.id,
        ),
    )  # fmt: skip


async def open_walk(session: AsyncSession, user_id: int, day: date) -> list[Stop]:
    """The counter's open tasks due by ``day`` (earlier days' included), in walking order. Never a book
    quantity: nothing here carries one."""
    codes = await warehouse_codes(session)
    rows = await counter_tasks(session, user_id, day)
    return walk_order(Stop(t, i, lo, codes.get(lo.warehouse_id)) for t, i, lo in rows)


async def where_is(session: AsyncSession, location: Location) -> str:
    """How a person reads ``location``: with its warehouse when there are several."""
    return place(location.code, (await warehouse_codes(session)).get(location.warehouse_id))


async def tasks_named(session: AsyncSession, task_ids: Sequence[int]) -> list[CountTask]:
    """The tasks a card names (whatever their state), in the card's order."""
    if not task_ids:
        return []
    rows = (await session.execute(select(CountTask).where(CountTask.id.in_(task_ids)))).scalars()
    found = {t.id: t for t in rows}
    return [found[i] for i in task_ids if i in found]
