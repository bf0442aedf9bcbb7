"""The one connector interface, the records it speaks and the errors it raises.

A connector is the ERP seen from pandian: it can

- ``check`` its connection and credentials;
- ``pull`` one entity (items, locations, book stock, movements) from a stored cursor, page by page, each page
  carrying the cursor to store once the page is written (``integrations.erp.sync`` writes pages through the
  existing import and movement code: ``core.importing`` and ``core.stock``);
- ``write_back`` approved adjustments. The spreadsheet connector exports them to a file (``core.variance.export``);
  the ERP connectors (``ApiConnector``) post them one by one through the durable queue of
  ``integrations.erp.posting``, and implement ``post`` and ``find_posted``.

Exactly once, whatever the ERP does to our bill number (a numbering rule may replace it): ``post`` works on the
ERP's own document id once it has one. The ``Journal`` it is given is the posting's memory across attempts
(``erp_posting.progress``): before a write whose answer may be lost, the connector marks it sent
(``Journal.sending``); when the answer comes, it stores the ERP's id and number (``Journal.answered``, in the same
transaction as the mark is cleared, before the next step). A write whose outcome stayed unknown (timeout, lost
answer, 5xx, an unreadable answer) is resolved on the ERP's side: by a lookup on our bill number in a field the
ERP keeps (a header note, a reference, a custom field) and, where the ERP has one, by its idempotency key
(YonBIP ``resubmitCheckKey``, U8 ``tradeid``). Not finding it proves absence only once the ERP has finished
whatever it may still be doing (``erp.settle_s`` after the write was sent: ``ErpInDoubt`` until then) and only
when the same lookup finds a document we posted before (``Journal.witness``): a field the ERP does not keep finds
nothing either way (the first document of a kind has no witness: the configured field is trusted; one seen
not to keep our number proves the field useless). When absence cannot be proven, or several documents carry our
number, ``ErpHeld``: a person looks. Nothing is written again on a guess.

Errors say whether trying again later can help: ``ErpUnavailable`` (timeouts, 5xx, dropped connections: for a
write, the ERP may or may not have done it, so the next attempt looks it up first), ``ErpInDoubt`` (a write's
outcome is still unknown: look again later), ``ErpSessionExpired`` (log in again, then repeat: the ERP did
nothing), ``ErpBadResponse`` (an answer we cannot read), ``ErpRejected`` (the ERP said no: a validation error, a
closed period, wrong credentials; trying again changes nothing until a person acts) and ``ErpHeld`` (whether the
ERP holds the document cannot be proven: a person has to look before anything is written).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import ErpSettings, Settings
from core.enums import AdjustmentKind, MovementType

if TYPE_CHECKING:
    from integrations.erp.http import Http


class Entity(StrEnum):
    ITEMS = "items"
    LOCATIONS = "locations"
    STOCK = "stock"
    MOVEMENTS = "movements"


# pull order: movements and stock refer to items and locations
ENTITIES = (Entity.ITEMS, Entity.LOCATIONS, Entity.STOCK, Entity.MOVEMENTS)
ENTITY_ZH = {
    Entity.ITEMS: "物料",
    Entity.LOCATIONS: "仓库库位",
    Entity.STOCK: "账面库存",
    Entity.MOVEMENTS: "出入库流水",
}


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class ItemRecord:
    sku: str
    name: str
    spec: str | None = None
    unit: str | None = None
    unit_cost: Decimal | None = None
    barcodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LocationRecord:
    warehouse: str
    location: str
    warehouse_name: str | None = None
    barcode: str | None = None


@dataclass(frozen=True, slots=True)
class StockRecord:
    sku: str
    warehouse: str
    location: str
    qty: Decimal  # base units
    lot: str | None = None


@dataclass(frozen=True, slots=True)
class MovementRecord:
    key: str  # the ERP's own id of the line: unique and stable (becomes the ledger's import key)
    sku: str
    warehouse: str
    location: str
    qty: Decimal  # signed, base units
    type: MovementType
    occurred_at: datetime  # aware
    source_doc: str | None = None  # the ERP document number
    reference: str | None = None  # an external reference the ERP keeps (our bill number on documents we post)


@dataclass(frozen=True, slots=True)
class FileSource:
    """A spreadsheet to import as it is (the spreadsheet connector's pages)."""

    path: Path
    kind: str
    digest: str


Record = ItemRecord | LocationRecord | StockRecord | MovementRecord | FileSource


@dataclass(slots=True)
class Page:
    records: Sequence[Record]
    cursor: str | None  # store this once the records are written; None keeps the stored cursor
    warnings: list[str] = field(default_factory=list)  # what the connector left out, and why (for people)
    skipped: int = 0  # records the connector left out


# ------------------------------------------------------------------------------------------------ posting


@dataclass(frozen=True, slots=True)
class DocLine:
    sku: str
    unit: str
    location: str
    qty: Decimal  # signed for gains and losses; positive for a transfer
    unit_cost: Decimal
    to_location: str | None = None  # transfers
    book_qty: Decimal | None = None
    counted_qty: Decimal | None = None
    variance_id: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "unit": self.unit,
            "location": self.location,
            "to_location": self.to_location,
            "qty": str(self.qty),
            "unit_cost": str(self.unit_cost),
            "book_qty": None if self.book_qty is None else str(self.book_qty),
            "counted_qty": None if self.counted_qty is None else str(self.counted_qty),
            "variance_id": self.variance_id,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DocLine:
        def dec(v: Any) -> Decimal | None:
            return None if v is None else Decimal(str(v))

        return cls(
            sku=d["sku"],
            unit=d["unit"],
            location=d["location"],
            to_location=d.get("to_location"),
            qty=Decimal(str(d["qty"])),
            unit_cost=Decimal(str(d["unit_cost"])),
            book_qty=dec(d.get("book_qty")),
            counted_qty=dec(d.get("counted_qty")),
            variance_id=d.get("variance_id"),
            reason=d.get("reason"),
        )


@dataclass(frozen=True, slots=True)
class PostingDoc:
    """An approved adjustment as an ERP document: our bill number, its kind, its warehouse and lines."""

    key: str  # our bill number (``PD00000012``): the ERP keeps it, so a lost answer is found again
    adjustment_id: int
    kind: AdjustmentKind
    warehouse: str
    created_at: datetime
    lines: tuple[DocLine, ...]
    note: str = ""

    @property
    def value(self) -> Decimal:
        return sum((ln.qty * ln.unit_cost for ln in self.lines), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "adjustment_id": self.adjustment_id,
            "kind": self.kind.value,
            "warehouse": self.warehouse,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
            "lines": [ln.to_json() for ln in self.lines],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PostingDoc:
        return cls(
            key=d["key"],
            adjustment_id=int(d["adjustment_id"]),
            kind=AdjustmentKind(d["kind"]),
            warehouse=d["warehouse"],
            created_at=datetime.fromisoformat(d["created_at"]),
            lines=tuple(DocLine.from_json(x) for x in d["lines"]),
            note=d.get("note", ""),
        )


@dataclass(frozen=True, slots=True)
class Posted:
    """The ERP's document: its number (and internal id), and every document the posting produced."""

    doc_no: str
    doc_id: str | None = None
    refs: tuple[str, ...] = field(default=())


class SaveProgress(Protocol):
    async def __call__(
        self, facts: dict[str, Any], *, doc_id: str | None = None, doc_no: str | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Witness:
    """A document we posted before, of the same kind: a lookup that cannot find it cannot prove anything."""

    key: str  # our bill number
    doc_id: str  # the ERP's id of it
    doc_no: str | None = None
    kept: bool | None = None  # whether its document was seen to keep our bill number (None: not checked)


class Journal:
    """One posting's memory across attempts (``erp_posting.progress``) and the way to make it durable.

    ``progress`` is what earlier attempts learnt (the ERP's ``id`` and ``number``, its state, a write sent whose
    answer did not come: ``pending``). ``save`` writes changes before the next step (a key set to None is
    dropped); ``doc_id``/``doc_no`` also go on the posting row, in the same transaction, for people to see."""

    def __init__(
        self, progress: dict[str, Any], save: SaveProgress, clock: Callable[[], datetime], settle: timedelta,
        witness: Witness | None = None,
    ) -> None:  # fmt: skip
        self.progress, self._save, self.clock, self.settle, self.witness = (
            progress, save, clock, settle, witness,
        )  # fmt: skip

    def get(self, key: str, default: Any = None) -> Any:
        return self.progress.get(key, default)

    async def save(
        self, update: dict[str, Any], *, doc_id: str | None = None, doc_no: str | None = None
    ) -> None:
        await self._save(update, doc_id=doc_id, doc_no=doc_no)

    @property
    def pending(self) -> dict[str, Any] | None:
        """The write sent whose answer did not come (``step``, ``sent_at`` and what the connector noted)."""
        p = self.progress.get("pending")
        return p if isinstance(p, dict) else None

    async def sending(self, step: str, **facts: Any) -> None:
        """Before a write whose answer may be lost: durably, what is sent, and when."""
        await self.save({"pending": {"step": step, "sent_at": self.clock().isoformat(), **facts}})

    async def answered(
        self, facts: dict[str, Any] | None = None, *, doc_id: str | None = None, doc_no: str | None = None
    ) -> None:
        """The write's answer came (done, or refused): what was learnt, and the mark cleared, at once."""
        await self.save({**(facts or {}), "pending": None}, doc_id=doc_id, doc_no=doc_no)

    def settles_at(self) -> datetime | None:
        p = self.pending
        if p is None:
            return None
        return datetime.fromisoformat(str(p["sent_at"])) + self.settle

    def settled(self) -> bool:
        """The pending write was sent long enough ago that the ERP has finished with it, whatever it did."""
        at = self.settles_at()
        return at is None or self.clock() >= at

    def in_doubt(self, zh: str, en: str) -> ErpInDoubt:
        at = self.settles_at() or self.clock()
        local = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return ErpInDoubt(f"{zh}；{local} 之后再查", f"{en}; looking again after {local}", retry_at=at)


# ------------------------------------------------------------------------------------------------ errors


class ErpError(Exception):
    retryable: ClassVar[bool] = False

    def __init__(self, zh: str, en: str, *, code: str | None = None) -> None:
        super().__init__(f"{zh} / {en}")
        self.zh, self.en, self.code = zh, en, code

    def text(self, lang: str = "zh") -> str:
        return self.en if lang == "en" else self.zh


class ErpUnavailable(ErpError):
    """No usable answer: timeout, 5xx, connection dropped. For a write, the outcome is unknown."""

    retryable = True


class ErpSessionExpired(ErpError):
    """The session or token is no longer valid; the ERP did nothing. Log in again and repeat."""

    retryable = True


class ErpBadResponse(ErpError):
    """An answer that is not what the protocol promises (malformed JSON, missing fields)."""

    retryable = True


class ErpRejected(ErpError):
    """The ERP refused: validation error, closed period, wrong credentials. A person has to act."""

    retryable = False


class ErpInDoubt(ErpUnavailable):
    """A write was sent, its answer did not come, and the ERP does not show its document (yet). Until
    ``retry_at`` (``erp.settle_s`` after it was sent) not finding it proves nothing: look again then."""

    def __init__(self, zh: str, en: str, *, retry_at: datetime, code: str | None = "in_doubt") -> None:
        super().__init__(zh, en, code=code)
        self.retry_at = retry_at


class ErpHeld(ErpError):
    """Whether the ERP holds the document cannot be proven, or several documents carry our number: held for a
    person, never written again on a guess. ``pandian erp post --retry`` looks again once they have looked."""

    retryable = False


# ------------------------------------------------------------------------------------------------ interface


class Connector(ABC):
    """One ERP (or the spreadsheet default) behind one interface; see the module docstring."""

    system: ClassVar[str]
    label: ClassVar[str]  # for people: "金蝶云星空 Kingdee K/3 Cloud"
    # book stock comes as a full snapshot read on a schedule (ERPs), not as files imported when new
    snapshots: ClassVar[bool] = True

    def __init__(self, erp: ErpSettings, tz: ZoneInfo) -> None:
        self.erp, self.tz = erp, tz

    @abstractmethod
    async def check(self) -> list[str]:
        """Log in and read a little; lines saying what works. Raises ``ErpError`` saying what does not."""

    @abstractmethod
    def pull(self, entity: Entity, cursor: str | None) -> AsyncIterator[Page]:
        """Pages of ``entity`` changed since ``cursor`` (everything when None). Book stock is a full snapshot."""

    async def stock_snapshot(self) -> list[StockRecord]:
        """The ERP's book stock now (for reconciliation)."""
        out: list[StockRecord] = []
        async for page in self.pull(Entity.STOCK, None):
            out.extend(r for r in page.records if isinstance(r, StockRecord))
        return out

    @abstractmethod
    async def write_back(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime
    ) -> dict[str, int]:
        """Hand approved adjustments to the ERP; counts of what happened."""

    async def close(self) -> None:
        return None


class ApiConnector(Connector):
    """An ERP with an API, spoken through ``http``: each entity is pulled by its own method (``_items``,
    ``_locations``, ``_stock``, ``_movements``), and adjustments go through the durable posting queue, one
    document at a time."""

    http: Http

    async def pull(self, entity: Entity, cursor: str | None) -> AsyncIterator[Page]:
        if entity is Entity.ITEMS:
            pages = self._items(cursor)
        elif entity is Entity.LOCATIONS:
            pages = self._locations()
        elif entity is Entity.STOCK:
            pages = self._stock()
        else:
            pages = self._movements(cursor)
        async for page in pages:
            yield page

    @abstractmethod
    def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        """Items changed since ``cursor``."""

    @abstractmethod
    def _locations(self) -> AsyncIterator[Page]:
        """Warehouses (with the default location) and the locations the ERP lists."""

    @abstractmethod
    def _stock(self) -> AsyncIterator[Page]:
        """Book stock: a full snapshot."""

    @abstractmethod
    def _movements(self, cursor: str | None) -> AsyncIterator[Page]:
        """Movements since ``cursor``."""

    async def close(self) -> None:
        await self.http.close()

    # records from the JSON objects of an ERP's lists, the ERP's field names given

    def _item_row(
        self, row: Mapping[str, Any], *, sku: str, sku_zh: str, name: str, spec: str, unit: str, cost: str,
        barcodes: str,
    ) -> ItemRecord:  # fmt: skip
        """An item: its code (required), name (else the code), spec, unit, cost and comma-separated barcodes."""
        code = text(row.get(sku), f"{sku_zh} {sku}", self.label, max_len=64) or ""
        price = row.get(cost)
        return ItemRecord(
            sku=code, name=text(row.get(name), name, self.label) or code,
            spec=text(row.get(spec), spec, self.label, required=False),
            unit=text(row.get(unit), unit, self.label, required=False, max_len=20),
            unit_cost=decimal(price, cost, self.label) if price not in (None, "") else None,
            barcodes=tuple(b.strip() for b in str(row.get(barcodes) or "").split(",") if b.strip()),
        )  # fmt: skip

    def _warehouse_row(self, row: Mapping[str, Any], *, code: str, name: str) -> LocationRecord:
        """A warehouse, at its default location."""
        return LocationRecord(text(row.get(code), f"仓库 {code}", self.label, max_len=50) or "",
                              self.erp.default_location, text(row.get(name), name, self.label, required=False))  # fmt: skip

    def _location_row(self, row: Mapping[str, Any], *, warehouse: str, code: str) -> LocationRecord:
        """A location (货位, goods position) in a warehouse."""
        return LocationRecord(text(row.get(warehouse), warehouse, self.label, max_len=50) or "",
                              text(row.get(code), f"货位 {code}", self.label, max_len=50) or "")  # fmt: skip

    def _stock_row(
        self, row: Mapping[str, Any], *, sku: str, warehouse: str, location: str, qty: str, lot: str
    ) -> StockRecord:
        """Book stock of an item at a location (none given: the default location), maybe of a lot."""
        return StockRecord(
            sku=text(row.get(sku), sku, self.label, max_len=64) or "",
            warehouse=text(row.get(warehouse), warehouse, self.label, max_len=50) or "",
            location=text(row.get(location), location, self.label, required=False, max_len=50)
            or self.erp.default_location,
            qty=decimal(row.get(qty), qty, self.label),
            lot=text(row.get(lot), lot, self.label, required=False, max_len=64),
        )

    @abstractmethod
    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        """The document the ERP holds for our bill number ``doc.key`` (found where the ERP keeps it) when it is
        complete, else None."""

    @abstractmethod
    async def post(self, doc: PostingDoc, journal: Journal) -> Posted:
        """Post ``doc`` exactly once (see the module docstring): resume from what ``journal`` knows (the ERP's
        id) and where the ERP stands, resolve a write whose answer was lost on the ERP's side, and mark every
        write before sending it. Returns the ERP's document (its own number) when it is complete; raises
        ``ErpHeld`` when whether the ERP holds it cannot be proven."""

    async def write_back(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime
    ) -> dict[str, int]:
        from integrations.erp.posting import drain_backlog

        return await drain_backlog(sessionmaker, settings, self, now=now)


S = TypeVar("S")


def configured(section: S | None, system: str) -> S:
    """A connector's ``[erp.<system>]`` settings, or ``ErpRejected`` saying they are missing."""
    if section is None:
        raise ErpRejected(f"缺少 [erp.{system}] 配置", f"the [erp.{system}] section is missing")
    return section


class SourceMarks:
    """The movements cursor of an ERP that reads several document sources: per source, the latest mark (a date
    or a time, as text) seen, stored as a JSON object."""

    def __init__(self, cursor: str | None) -> None:
        self._marks: dict[str, str] = json.loads(cursor) if cursor else {}

    def get(self, source: str) -> str | None:
        return self._marks.get(source)

    def page(self, records: Sequence[Record], source: str, mark: str | None) -> Page:
        """``records`` of ``source``, read up to ``mark``, with the cursor to store once they are written."""
        if mark:
            self._marks[source] = mark
        return Page(records, json.dumps(self._marks, sort_keys=True))


def latest(mark: str | None, seen: str) -> str | None:
    """A cursor mark moved on to ``seen`` when that is later (marks are ISO texts: they compare as text); an
    empty ``seen`` leaves it."""
    return seen if seen and (mark is None or seen > mark) else mark


def several_carry(erp_zh: str, erp_en: str, key: str, numbers: Sequence[str], where_zh: str = "",
                  where_en: str = "") -> ErpHeld:  # fmt: skip
    """Several ERP documents carry our bill number ``key``: which one is ours cannot be told, so the posting is
    held (one wording for every connector; ``where`` names the field the number was found in)."""
    return ErpHeld(
        f"{erp_zh}里有 {len(numbers)} 张{where_zh}带我方单号 {key} 的单据：{'、'.join(numbers)}，请删除多余的后重试",
        f"{erp_en} holds {len(numbers)} documents carrying our {key}{f' in {where_en}' if where_en else ''}: "
        f"{', '.join(numbers)}; delete the extra ones, then retry",
    )


def carries(value: Any, key: str) -> bool:
    """Whether a field the ERP kept holds our bill number ``key`` as a word of its own (``PD00000012`` is not in
    ``PD000000123``, nor in ``PD00000012-O``)."""
    return key in re.findall(r"[A-Za-z0-9_-]+", str(value or ""))


def keyed_note(key: str, note: str, limit: int = 255) -> str:
    """A header note that starts with our bill number (the word ``carries`` finds), then what the note says."""
    return f"{key} {note}".strip()[:limit]


def decimal(value: Any, what: str, label: str) -> Decimal:
    """A number from an ERP answer, or ``ErpBadResponse`` naming the field."""
    if isinstance(value, bool) or value is None or value == "":
        raise ErpBadResponse(
            f"{label} 返回的 {what} 不是数字：{value!r}", f"{label} sent a non-number {what}: {value!r}"
        )
    try:
        d = Decimal(str(value).strip().replace(",", ""))
    except ArithmeticError:
        raise ErpBadResponse(
            f"{label} 返回的 {what} 不是数字：{value!r}", f"{label} sent a non-number {what}: {value!r}"
        ) from None
    if not d.is_finite() or abs(d) >= Decimal("1e14"):
        raise ErpBadResponse(
            f"{label} 返回的 {what} 无效：{value!r}", f"{label} sent an invalid {what}: {value!r}"
        )
    return d


def text(value: Any, what: str, label: str, *, required: bool = True, max_len: int = 200) -> str | None:
    """A text field from an ERP answer (stripped), or ``ErpBadResponse`` when it is required and missing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ErpBadResponse(f"{label} 返回的数据缺少 {what}", f"{label} sent a record without {what}")
        return None
    if isinstance(value, dict | list):
        raise ErpBadResponse(
            f"{label} 返回的 {what} 格式不对：{value!r:.80}", f"{label} sent a malformed {what}"
        )
    s = str(value).strip()
    if len(s) > max_len:
        raise ErpBadResponse(
            f"{label} 返回的 {what} 太长（{len(s)} 个字符）", f"{label} sent a {what} of {len(s)} characters"
        )
    return s


def local_time(value: str, tz: ZoneInfo, label: str) -> datetime:
    """A date-time from an ERP answer, in the ERP's time zone ``tz`` (it sends no offset), as UTC; or
    ``ErpBadResponse``."""
    try:
        return datetime.fromisoformat(value).replace(tzinfo=tz).astimezone(UTC)
    except ValueError:
        raise ErpBadResponse(
            f"{label} 返回的时间无法识别：{value!r}", f"{label} sent an unreadable time: {value!r}"
        ) from None
