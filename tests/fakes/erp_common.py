"""What the four fake ERPs share: one small ERP (items, warehouses, stock, movements, posted documents, the
sessions or tokens it has issued), the fault injector, and helpers that let one test run against any of them.

Each ``tests/fakes/erp_<name>.py`` speaks its ERP's protocol (authentication, sessions or tokens that expire,
its query and write endpoints, its error formats) over this state. The state keeps a **ledger** of every
document that changed stock (``applied``): the exactly-once tests assert on it.

Faults (``faults.inject(kind, times, route)`` for the next matching requests, or ``faults.rate`` for a
seeded random share of all requests):

- ``500`` / ``502`` / ``503``: that status, nothing done;
- ``timeout``: no answer until after the client gave up, nothing done;
- ``lost``: the request is carried out, then the connection is dropped (the answer never arrives);
- ``expire``: every session/token is invalidated before the request is handled (it then fails the ERP's way);
- ``malformed``: HTTP 200 with a body that is not JSON, nothing done;
- ``late`` (never drawn at random): no answer until after the client gave up, and the request is carried out
  later, when the test calls ``finish_late()`` (an ERP still busy with a request its client abandoned).

Numbering: ``numbering = "PYD"`` makes the ERP number documents itself (its 编码规则 overwrites the number we
send). ``FakeDoc.key`` is then the ERP's number and ``FakeDoc.ref`` the number we proposed (bookkeeping for the
tests only: the ERP's API does not show it); ``holds(key)`` counts the documents the ERP holds for one of our
numbers, whatever their state.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

RANDOM_KINDS = ("500", "timeout", "lost", "expire", "503", "malformed")
TZ = ZoneInfo("Asia/Shanghai")  # the fake ERPs' local time


def ts(dt: datetime) -> str:
    """A local time as the Yonyou ERPs write it (``2026-11-30 10:15:00``)."""
    return dt.astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Fault:
    kind: str
    times: int
    route: str | None  # a substring of the path (or of the Kingdee service name); None: any request


class FaultPlan:
    def __init__(self, seed: int = 7) -> None:
        self.reseed(seed)
        self.rate = 0.0
        self.kinds: tuple[str, ...] = RANDOM_KINDS
        self.queue: list[Fault] = []
        self.slow_s = 0.5
        self.seen: Counter[str] = Counter()

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def inject(self, kind: str, *, times: int = 1, route: str | None = None) -> None:
        self.queue.append(Fault(kind, times, route))

    def pick(self, route: str) -> str | None:
        for f in self.queue:
            if f.times > 0 and (f.route is None or f.route in route):
                f.times -= 1
                self.seen[f.kind] += 1
                return f.kind
        if self.rate and self.rng.random() < self.rate:
            kind = self.rng.choice(self.kinds)
            self.seen[kind] += 1
            return kind
        return None


def fault_middleware(fake: ErpFake, route_of: Any = None) -> Any:
    """The fake's planned faults, on the requests whose route (the path, or ``route_of(request)``) they name."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        route = route_of(request) if route_of else request.path
        kind = fake.faults.pick(route)
        if kind in ("500", "502", "503"):
            return web.Response(
                status=int(kind), text="<html>Service Unavailable</html>", content_type="text/html"
            )
        if kind == "timeout":
            await asyncio.sleep(fake.faults.slow_s)
            return web.Response(status=504, text="gateway timeout")
        if kind == "late":
            await request.read()  # kept for the handling that comes later
            fake.late.append(lambda: handler(request))
            await asyncio.sleep(fake.faults.slow_s)
            return web.Response(status=504, text="gateway timeout")
        if kind == "malformed":
            return web.Response(
                status=200, text='{"Result": {"ResponseStatus": ', content_type="application/json"
            )
        if kind == "expire":
            fake.expire_sessions()
        resp = await handler(request)
        if kind == "lost":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        return resp

    return mw


# ------------------------------------------------------------------------------------------------ the ERP


@dataclass
class FakeItem:
    id: int
    sku: str
    name: str
    unit: str
    cost: Decimal
    barcodes: list[str]
    modified: datetime
    spec: str = ""


@dataclass
class FakeMovement:
    doc_id: int
    doc_no: str
    line: int
    flow: str  # receipt | issue
    sku: str
    warehouse: str
    location: str
    qty: Decimal  # positive; the flow says which way
    at: datetime  # the business date and time
    reference: str | None = None
    entered: datetime | None = None  # when it was keyed in, if later than ``at`` (a back-dated voucher)


@dataclass
class FakeDoc:
    id: int
    key: str  # our bill number (or the ERP's own number when the ERP numbers it)
    kind: str  # gain | loss | transfer
    warehouse: str
    lines: list[dict[str, Any]]  # {sku, location, to_location, qty (signed for gain/loss)}
    status: str = (
        "saved"  # saved | submitted | audited (Kingdee), open | audited (YonBIP), counted/posted (SAP)
    )
    extra: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None  # the number we proposed (``key`` when the ERP kept it); tests' bookkeeping only


class ErpFake:
    """The ERP's data. ``now`` is the ERP's clock (aware); ``tick`` moves it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
        self.items: dict[str, FakeItem] = {}
        self.warehouses: dict[str, tuple[str, bool]] = {}  # code -> (name, has locations)
        self.locations: dict[str, list[str]] = {}
        self.stock: dict[tuple[str, str, str], Decimal] = {}
        self.movements: list[FakeMovement] = []
        self.docs: dict[int, FakeDoc] = {}
        self.applied: list[str] = []  # keys of documents that changed stock, in order
        self.faults = FaultPlan()
        self.echo_postings = False  # posted documents also show up among the ERP's movements
        self.reject: str | None = None  # the next write (Kingdee: audit) is refused with this message
        self.reject_times = 0
        self.sessions: set[str] = set()  # live session ids, access tokens or CSRF tokens
        self.logins = 0
        self.numbering: str | None = None  # the ERP numbers documents itself with this prefix
        self.keeps_notes = True  # off: the notes and references we send are not kept (a plug-in clears them)
        self.late: list[Callable[[], Awaitable[Any]]] = []  # requests carried out after their client gave up
        self._seq = 1000

    def next_id(self) -> int:
        self._seq += 1
        return self._seq

    def number(self, proposed: str) -> str:
        """The number a new document gets: ours, or the ERP's own under a numbering rule."""
        return f"{self.numbering}{self.next_id():06d}" if self.numbering else proposed

    async def finish_late(self) -> int:
        """Carry out the requests whose clients gave up (``late`` faults); how many there were."""
        calls, self.late = self.late, []
        for call in calls:
            await call()
        return len(calls)

    def tick(self, seconds: float = 60) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    # -- catalogue ---------------------------------------------------------------------------------------

    def add_item(
        self, sku: str, name: str, cost: str = "10", barcodes: tuple[str, ...] = (), unit: str = "Pcs"
    ) -> FakeItem:
        item = FakeItem(
            self.next_id(), sku, name, unit, Decimal(cost), list(barcodes), self.tick(), spec=f"{name}规格"
        )
        self.items[sku] = item
        return item

    def change_item(
        self, sku: str, *, cost: str | None = None, barcode: str | None = None, name: str | None = None
    ) -> None:
        item = self.items[sku]
        if cost is not None:
            item.cost = Decimal(cost)
        if barcode is not None:
            item.barcodes.append(barcode)
        if name is not None:
            item.name = name
        item.modified = self.tick()

    def add_warehouse(self, code: str, name: str, locations: list[str] | None = None) -> None:
        self.warehouses[code] = (name, bool(locations))
        self.locations[code] = list(locations or [])

    def set_stock(self, sku: str, warehouse: str, location: str, qty: str | Decimal) -> None:
        self.stock[(sku, warehouse, location)] = Decimal(qty)

    def qty(self, sku: str, warehouse: str, location: str) -> Decimal:
        return self.stock.get((sku, warehouse, location), Decimal(0))

    def add_movement(self, flow: str, sku: str, warehouse: str, location: str, qty: str, *, doc_no: str | None = None,
                     reference: str | None = None, at: datetime | None = None,
                     entered: datetime | None = None) -> FakeMovement:  # fmt: skip
        """A document that moved stock (the fake applies it to its stock, as the ERP did)."""
        doc_id = self.next_id()
        m = FakeMovement(doc_id, doc_no or f"DOC{doc_id}", 1, flow, sku, warehouse, location, Decimal(qty),
                         at or self.tick(), reference, entered)  # fmt: skip
        self.movements.append(m)
        sign = 1 if flow == "receipt" else -1
        key = (sku, warehouse, location)
        self.stock[key] = self.stock.get(key, Decimal(0)) + sign * m.qty
        return m

    # -- postings ----------------------------------------------------------------------------------------

    def find_doc(self, key: str) -> list[FakeDoc]:
        """The documents made for one of our numbers (or numbered ``key`` by the ERP)."""
        return [d for d in self.docs.values() if key in (d.key, d.ref)]

    def holds(self, key: str) -> int:
        """How many documents the ERP holds for our number ``key``, whatever their state."""
        return len(self.find_doc(key))

    def apply(self, doc: FakeDoc) -> None:
        """The document changes stock (audit / post): exactly what the ledger checks."""
        for ln in doc.lines:
            q = Decimal(str(ln["qty"]))
            if doc.kind == "transfer":
                src, dst = (
                    (ln["sku"], doc.warehouse, ln["location"]),
                    (ln["sku"], doc.warehouse, ln["to_location"]),
                )
                self.stock[src] = self.stock.get(src, Decimal(0)) - abs(q)
                self.stock[dst] = self.stock.get(dst, Decimal(0)) + abs(q)
            else:
                key = (ln["sku"], doc.warehouse, ln["location"])
                self.stock[key] = self.stock.get(key, Decimal(0)) + q
        self.applied.append(doc.ref or doc.key)
        if self.echo_postings:
            self.echo(doc)

    def echo(self, doc: FakeDoc) -> None:
        """The posted document as the ERP's movement feed shows it: under its number, with ours as reference."""
        for n, ln in enumerate(doc.lines, start=1):
            q = Decimal(str(ln["qty"]))
            moves = (
                [("issue", ln["location"]), ("receipt", ln["to_location"])]
                if doc.kind == "transfer"
                else [("receipt" if q > 0 else "issue", ln["location"])]
            )
            for flow, loc in moves:
                self.movements.append(FakeMovement(self.next_id(), doc.key, n, flow, ln["sku"], doc.warehouse, loc,
                                                   abs(q), self.tick(), doc.ref or doc.key))  # fmt: skip

    def ledger(self, key: str) -> int:
        """How many times the document of our number ``key`` changed stock."""
        return self.applied.count(key)

    def take_reject(self) -> str | None:
        if self.reject and self.reject_times != 0:
            self.reject_times -= 1
            return self.reject
        return None

    def refuse(self, message: str, times: int = -1) -> None:
        """Refuse the next ``times`` writes (forever: -1) with ``message`` (a closed period, a validation error)."""
        self.reject, self.reject_times = message, times

    def stop_refusing(self) -> None:
        self.reject, self.reject_times = None, 0

    # -- sessions ----------------------------------------------------------------------------------------

    def log_in(self) -> str:
        """A new live session id (or token)."""
        sid = uuid.uuid4().hex
        self.sessions.add(sid)
        self.logins += 1
        return sid

    def expire_sessions(self) -> None:
        """Every session and token dies at once (they timed out, or the ERP restarted)."""
        self.sessions.clear()


def seed_catalogue(fake: ErpFake, *, items: int = 6) -> None:
    """Two warehouses: WH1 with locations A-01, A-02 (``-`` for ERPs without locations) and WH2; items with
    barcodes and costs; stock; a receipt and an issue."""
    fake.add_warehouse("WH1", "一号仓", ["A-01", "A-02"])
    fake.add_warehouse("WH2", "二号仓", ["B-01"])
    for i in range(items):
        fake.add_item(f"M{i:03d}", f"物料{i}", cost=f"{10 + i}.5", barcodes=(f"69000000{i:05d}",))
    for i in range(items):
        fake.set_stock(f"M{i:03d}", "WH1", "A-01" if i % 2 == 0 else "A-02", str(100 + i))
    fake.set_stock("M000", "WH2", "B-01", "7")
    fake.add_movement("receipt", "M000", "WH1", "A-01", "5")
    fake.add_movement("issue", "M001", "WH1", "A-02", "3")
