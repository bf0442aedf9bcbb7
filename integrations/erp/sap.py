"""SAP S/4HANA OData v2 (shared/research/cycle-counting.md §d4): a plant is a warehouse, a storage location a
location.

- Every request carries the communication user (basic auth) and ``sap-client`` when set. Writes carry an
  ``x-csrf-token`` fetched per service (``GET <service>/`` with ``x-csrf-token: Fetch``; the session cookies
  come with it). A write answered ``403`` with ``x-csrf-token: Required`` (the token or its session expired) is
  repeated once with a fresh token (a read carries no token: such an answer to it is ``ErpSessionExpired`` at
  once); ``401`` is wrong credentials (permanent). Errors are OData's
  ``{"error": {"code", "message": {"value"}}}``.
- Reads (``$top``/``$skip`` pages): products ``API_PRODUCT_SRV/A_Product`` changed since
  ``LastChangeDateTime`` (description in ``sap.language``, GTIN ``ProductStandardID``, cost from
  ``to_Valuation``: standard price or moving average per price unit); stock
  ``API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod`` (unrestricted, type 01, summed over batches); movements
  ``API_MATERIAL_DOCUMENT_SRV/A_MaterialDocumentHeader`` since ``CreationDate`` with their items (debit S +,
  credit H −; count postings ``skip_movement_types`` reach the book through stock snapshots instead).
- Gains and losses: ``API_PHYSICAL_INVENTORY_DOC_SRV``. SAP numbers the document; our bill number is its
  ``PhysInventoryReferenceNumber``. Created with a frozen book (``PhysInvtryDocHasQtySnapshot``), the create
  marked sent before it goes out; once it answers, SAP's number and year are stored and the document is read by
  them from then on. Each item's count is **SAP's frozen book plus our approved difference** (so the posted
  difference is exactly what was approved here), entered by ``PATCH`` with the item's ``ETag`` in ``If-Match``
  (a 412 re-reads it); then ``PostDifferences``. Each step is skipped when the document shows it done (counted
  with that quantity, difference posted), so a lost PATCH or PostDifferences answer is never repeated blindly.
  A create whose answer was lost is looked for by reference and plant: one document is that create's; several
  hold the posting; none creates again only once ``erp.settle_s`` has passed and the same lookup finds the last
  document of ours (else held). A closed period refuses ``PostDifferences``: permanent, retried by hand after
  the period opens. SAP's ``year/number`` is what pandian records.
- Mis-slot transfers: a material document with movement type 311 between the two storage locations
  (``GoodsMovementCode`` 04), our bill number as ``MaterialDocumentHeaderText``, resolved the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from core.config import ErpSettings, SapSettings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    ApiConnector,
    ErpBadResponse,
    ErpHeld,
    ErpRejected,
    ErpSessionExpired,
    ErpUnavailable,
    ItemRecord,
    Journal,
    LocationRecord,
    MovementRecord,
    Page,
    Posted,
    PostingDoc,
    StockRecord,
    configured,
    decimal,
    latest,
    several_carry,
    text,
)
from integrations.erp.http import Http, Login, Response

ODATA = "/sap/opu/odata/sap"
PI = f"{ODATA}/API_PHYSICAL_INVENTORY_DOC_SRV"
PRODUCT = f"{ODATA}/API_PRODUCT_SRV"
STOCK = f"{ODATA}/API_MATERIAL_STOCK_SRV"
MATDOC = f"{ODATA}/API_MATERIAL_DOCUMENT_SRV"
_DATE = re.compile(r"/Date\((-?\d+)([+-]\d{4})?\)/")
_DURATION = re.compile(r"PT(\d+)H(\d+)M(\d+)S")


def odata_date(d: date | datetime) -> str:
    if isinstance(d, datetime):
        ms = int(d.timestamp() * 1000)
    else:
        ms = int(datetime.combine(d, time(0), UTC).timestamp() * 1000)
    return f"/Date({ms})/"


def parse_odata_date(value: Any, label: str) -> datetime:
    m = _DATE.fullmatch(str(value or ""))
    if not m:
        raise ErpBadResponse(
            f"{label} 返回的日期无法识别：{value!r}", f"{label} sent an unreadable date: {value!r}"
        )
    return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC)


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def movement_type(code: str) -> MovementType:
    if code.startswith("1"):
        return MovementType.RECEIPT
    if code in ("261", "262"):
        return MovementType.PRODUCTION_ISSUE
    if code.startswith(("2", "6")):
        return MovementType.ISSUE
    if code.startswith("3"):
        return MovementType.TRANSFER
    return MovementType.ADJUSTMENT


class SapConnector(ApiConnector):
    system = "sap"
    label = "SAP S/4HANA"

    def __init__(
        self, erp: ErpSettings, tz: ZoneInfo, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        super().__init__(erp, tz)
        self.cfg: SapSettings = configured(erp.sap, self.system)
        self._csrf: dict[str, Login] = {}  # per OData service
        self._authorization = aiohttp.encode_basic_auth(
            self.cfg.username, self.cfg.password.get_secret_value()
        )
        self.http = Http.of(
            self,
            sleep=sleep,
            secrets=lambda: (
                self.cfg.password.get_secret_value(),
                self._authorization,
                *(login.value for login in self._csrf.values()),
            ),
        )

    # -- transport -----------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.cfg.base_url.rstrip('/')}{path}"

    def _params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        p = dict(params or {})
        if self.cfg.sap_client:
            p["sap-client"] = self.cfg.sap_client
        return p

    def _login(self, service: str) -> Login:
        """The service's CSRF token: it lives until SAP refuses it; its session cookies go with it."""
        if service not in self._csrf:
            self._csrf[service] = Login(partial(self._new_csrf, service), forget=self.http.forget_cookies)
        return self._csrf[service]

    async def _new_csrf(self, service: str) -> tuple[str, None]:
        resp = await self.http.send("GET", self._url(f"{service}/"), params=self._params(None),
                                    headers={"x-csrf-token": "Fetch", "Accept": "application/json",
                                             "Authorization": self._authorization})  # fmt: skip
        self._check_auth(resp)
        token = resp.headers.get("x-csrf-token")
        if not token or token.lower() == "required":
            raise ErpBadResponse("SAP 没有返回 CSRF token", "SAP sent no CSRF token")
        return token, None

    def _check_auth(self, resp: Response) -> None:
        if resp.status == 401:
            raise ErpRejected(f"SAP 拒绝了用户 {self.cfg.username} 的登录（用户名或密码错误）",
                              f"SAP refused user {self.cfg.username} (wrong user or password)", code="login")  # fmt: skip

    async def _send(self, method: str, service: str, path: str, *, params: dict[str, Any] | None = None,
                    body: Any = None, headers: dict[str, str] | None = None) -> Response:  # fmt: skip
        """A request; a write carries the service's CSRF token (refused: renewed and the write repeated once)."""
        write = method != "GET"

        async def once(token: str | None) -> Response:
            hdrs = {"Accept": "application/json", "Authorization": self._authorization, **(headers or {})}
            if token is not None:
                hdrs["x-csrf-token"] = token
            resp = await self.http.send(method, self._url(f"{service}{path}"), params=self._params(params), body=body,
                                        headers=hdrs, write=write)  # fmt: skip
            self._check_auth(resp)
            if resp.status == 403 and resp.headers.get("x-csrf-token", "").lower() == "required":
                # a write is renewed and repeated once; this is what the second refusal says
                raise ErpSessionExpired("SAP CSRF token 再次失效", "the SAP CSRF token was refused again")
            return resp

        return await self._login(service).renewing(once) if write else await once(None)

    def _json(self, resp: Response, what: str) -> Any:
        if resp.status >= 400:
            data: Any = None
            with contextlib.suppress(ValueError):
                data = json.loads(resp.body)
            err = data.get("error") if isinstance(data, dict) else None
            msg = ((err or {}).get("message") or {}).get("value") if isinstance(err, dict) else None
            code = (err or {}).get("code") if isinstance(err, dict) else None
            msg = msg or self.http.excerpt(resp.body)
            if resp.status in (408, 409, 429):
                raise ErpUnavailable(
                    f"SAP {what}：HTTP {resp.status} {msg}", f"SAP {what}: HTTP {resp.status} {msg}"
                )
            raise ErpRejected(f"SAP {what} 失败（{code or resp.status}）：{msg}", f"SAP {what} failed ({code or resp.status}): {msg}",
                              code=str(code or resp.status))  # fmt: skip
        if resp.status == 204 or not resp.body:
            return None
        data = self.http.parse(resp, what)
        if not isinstance(data, dict) or "d" not in data:
            raise ErpBadResponse(f"SAP {what} 的回答不是 OData", f"SAP answered {what} without an OData 'd'")
        return data["d"]

    async def _get(self, service: str, path: str, params: dict[str, Any], what: str) -> Any:
        return self._json(await self._send("GET", service, path, params={**params, "$format": "json"}), what)

    async def _collection(
        self, service: str, path: str, params: dict[str, Any], what: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        skip, size = 0, self.erp.page_size
        while True:
            d = await self._get(service, path, {**params, "$top": size, "$skip": skip}, what)
            rows = d.get("results") if isinstance(d, dict) else None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ErpBadResponse(
                    f"SAP {what} 的回答里没有 results", f"SAP's answer to {what} has no results"
                )
            yield rows
            if len(rows) < size:
                return
            skip += len(rows)

    async def check(self) -> list[str]:
        await self._login(PI).get()
        await self._get(PI, "/A_PhysInventoryDocHeader", {"$top": 1}, "A_PhysInventoryDocHeader")
        return [f"SAP 登录成功（用户 {self.cfg.username}），CSRF token 已获取 / logged in, CSRF token fetched",
                "读取盘点凭证：可以 / physical inventory documents readable"]  # fmt: skip

    # -- pull ----------------------------------------------------------------------------------------------

    async def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        params: dict[str, Any] = {
            "$orderby": "LastChangeDateTime,Product",
            "$expand": "to_Description,to_Valuation",
        }
        if cursor:
            params["$filter"] = f"LastChangeDateTime ge datetimeoffset'{cursor}'"
        last = cursor
        async for rows in self._collection(PRODUCT, "/A_Product", params, "A_Product"):
            recs = []
            for r in rows:
                sku = text(r.get("Product"), "Product", self.label, max_len=64) or ""
                names = {
                    d.get("Language"): d.get("ProductDescription")
                    for d in (r.get("to_Description") or {}).get("results", [])
                }
                name = (
                    names.get(self.cfg.language) or names.get("EN") or next(iter(names.values()), None) or sku
                )
                gtin = text(
                    r.get("ProductStandardID"), "ProductStandardID", self.label, required=False, max_len=100
                )
                recs.append(ItemRecord(sku=sku, name=str(name)[:200],
                                       unit=text(r.get("BaseUnit"), "BaseUnit", self.label, required=False, max_len=20),
                                       unit_cost=self._cost(r), barcodes=(gtin,) if gtin else ()))  # fmt: skip
                changed = parse_odata_date(r.get("LastChangeDateTime"), self.label).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
                last = latest(last, changed)
            yield Page(recs, last)

    def _cost(self, product: dict[str, Any]) -> Decimal | None:
        vals = (product.get("to_Valuation") or {}).get("results") or []
        if not vals:
            return None
        plants = set(self.cfg.plants)
        v = next((x for x in vals if x.get("ValuationArea") in plants), vals[0])
        price = (
            v.get("StandardPrice")
            if v.get("InventoryValuationProcedure") != "V"
            else v.get("MovingAveragePrice")
        )
        per = decimal(v.get("PriceUnitQty") or 1, "PriceUnitQty", self.label) or Decimal(1)
        return (decimal(price or 0, "StandardPrice", self.label) / per).quantize(Decimal("0.0001"))

    async def _locations(self) -> AsyncIterator[Page]:
        # plants are configured (the storage locations come with the stock that names them)
        yield Page(
            [
                LocationRecord(code, self.erp.default_location, name)
                for code, name in sorted(self.cfg.plants.items())
            ],
            None,
        )

    def _plant_ok(self, plant: str) -> bool:
        return not self.cfg.plants or plant in self.cfg.plants

    async def _stock(self) -> AsyncIterator[Page]:
        params = {"$filter": "InventoryStockType eq '01'", "$orderby": "Material,Plant,StorageLocation"}
        async for rows in self._collection(STOCK, "/A_MatlStkInAcctMod", params, "A_MatlStkInAcctMod"):
            total: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
            for r in rows:
                plant = text(r.get("Plant"), "Plant", self.label, max_len=50) or ""
                if not self._plant_ok(plant):
                    continue
                key = (text(r.get("Material"), "Material", self.label, max_len=64) or "", plant,
                       text(r.get("StorageLocation"), "StorageLocation", self.label, required=False, max_len=50)
                       or self.erp.default_location)  # fmt: skip
                total[key] += decimal(
                    r.get("MatlWrhsStkQtyInMatlBaseUnit"), "MatlWrhsStkQtyInMatlBaseUnit", self.label
                )
            yield Page([StockRecord(sku, plant, loc, q) for (sku, plant, loc), q in total.items()], None)

    async def _movements(self, cursor: str | None) -> AsyncIterator[Page]:
        params: dict[str, Any] = {"$orderby": "CreationDate,MaterialDocumentYear,MaterialDocument",
                                  "$expand": "to_MaterialDocumentItem"}  # fmt: skip
        if cursor:
            params["$filter"] = f"CreationDate ge datetime'{cursor}T00:00:00'"
        last = cursor
        skip = set(self.cfg.skip_movement_types)
        async for rows in self._collection(
            MATDOC, "/A_MaterialDocumentHeader", params, "A_MaterialDocumentHeader"
        ):
            recs = []
            for h in rows:
                created = parse_odata_date(h.get("CreationDate"), self.label).date()
                t = _DURATION.fullmatch(str(h.get("CreationTime") or "PT00H00M00S"))
                at = datetime.combine(created, time(0), self.tz) + (
                    timedelta(hours=int(t[1]), minutes=int(t[2]), seconds=int(t[3])) if t else timedelta()
                )
                doc_no = text(h.get("MaterialDocument"), "MaterialDocument", self.label, max_len=100) or ""
                for it in (h.get("to_MaterialDocumentItem") or {}).get("results", []):
                    mtype = str(it.get("GoodsMovementType") or "")
                    plant = str(it.get("Plant") or "")
                    if mtype in skip or not self._plant_ok(plant):
                        continue
                    q = abs(decimal(it.get("QuantityInBaseUnit"), "QuantityInBaseUnit", self.label))
                    recs.append(MovementRecord(
                        key=f"{h.get('MaterialDocumentYear')}/{doc_no}/{it.get('MaterialDocumentItem')}",
                        sku=text(it.get("Material"), "Material", self.label, max_len=64) or "", warehouse=plant,
                        location=text(it.get("StorageLocation"), "StorageLocation", self.label, required=False,
                                      max_len=50) or self.erp.default_location,
                        qty=q if it.get("DebitCreditCode") == "S" else -q, type=movement_type(mtype),
                        occurred_at=at.astimezone(UTC), source_doc=doc_no,
                        reference=text(h.get("MaterialDocumentHeaderText"), "header text", self.label, required=False,
                                       max_len=100),
                    ))  # fmt: skip
                last = latest(last, created.isoformat())
            yield Page(recs, last)

    # -- write back: physical inventory documents ----------------------------------------------------------

    async def _pi_headers(self, flt: str) -> list[dict[str, Any]]:
        d = await self._get(PI, "/A_PhysInventoryDocHeader", {"$filter": flt, "$expand": "to_PhysicalInventoryDocumentItem"},
                            "A_PhysInventoryDocHeader")  # fmt: skip
        return [
            r for r in (d or {}).get("results", []) if r.get("PhysInvtryDeletionStatus") not in ("X", True)
        ]

    async def _find_pi(self, key: str, plant: str | None = None) -> list[dict[str, Any]]:
        """The (not deleted) physical inventory documents referenced with our bill number ``key``."""
        flt = f"PhysInventoryReferenceNumber eq {lit(key)}" + (f" and Plant eq {lit(plant)}" if plant else "")
        return await self._pi_headers(flt)

    @staticmethod
    def _items_of(header: dict[str, Any]) -> list[dict[str, Any]]:
        return list((header.get("to_PhysicalInventoryDocumentItem") or {}).get("results") or [])

    def _deltas(self, doc: PostingDoc) -> tuple[str, dict[str, tuple[Decimal, str]]]:
        slocs = {ln.location for ln in doc.lines}
        if len(slocs) != 1 or self.erp.default_location in slocs:
            raise ErpRejected(f"{doc.key} 的行不在同一个库存地点（SAP 盘点凭证只属于一个库存地点）：{sorted(slocs)}",
                              f"{doc.key}: SAP needs one storage location per physical inventory document, got {sorted(slocs)}")  # fmt: skip
        out: dict[str, tuple[Decimal, str]] = {}
        for ln in doc.lines:
            q, _ = out.get(ln.sku, (Decimal(0), ln.unit))
            out[ln.sku] = (q + ln.qty, ln.unit)
        return slocs.pop(), out

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        if doc.kind is AdjustmentKind.TRANSFER:
            found = await self._find_transfer(doc.key)
            if len(found) != 1:
                return None
            number, year = found[0]
            return Posted(f"{year}/{number}", number, (doc.key, number))
        headers = await self._find_pi(doc.key, doc.warehouse)
        if len(headers) != 1:
            return None
        items = self._items_of(headers[0])
        if items and all(_true(i.get("PhysInvtryDifferenceIsPosted")) for i in items):
            return self._posted(doc, headers[0], items)
        return None

    def _posted(self, doc: PostingDoc, header: dict[str, Any], items: list[dict[str, Any]]) -> Posted:
        number, year = str(header.get("PhysicalInventoryDocument")), str(header.get("FiscalYear"))
        matdocs = sorted({str(i["MaterialDocument"]) for i in items if i.get("MaterialDocument")})
        return Posted(f"{year}/{number}", number, (doc.key, *matdocs))

    async def post(self, doc: PostingDoc, journal: Journal) -> Posted:
        if doc.kind is AdjustmentKind.TRANSFER:
            return await self._transfer(doc, journal)
        sloc, deltas = self._deltas(doc)
        header = await self._resume_pi(doc, journal)
        if header is None:
            await self._create_pi(doc, journal, sloc, deltas)
            header = await self._resume_pi(doc, journal)  # read back, by SAP's number
            assert header is not None
        number, year = str(header["PhysicalInventoryDocument"]), str(header.get("FiscalYear"))
        items = self._items_of(header)
        if not items:  # the answer may omit them
            items = await self._pi_items(number, year)
        for item in items:
            if _true(item.get("PhysInvtryDifferenceIsPosted")):
                continue
            material = str(item.get("Material"))
            if material not in deltas:
                continue
            delta, unit = deltas[material]
            await self._count(
                number, year, str(item.get("PhysicalInventoryDocumentItem")), delta, unit, doc.key
            )
        items = await self._pi_items(number, year)
        if not all(_true(i.get("PhysInvtryDifferenceIsPosted")) for i in items):
            self._json(await self._send("POST", PI, "/PostDifferences",
                                        params={"PhysicalInventoryDocument": lit(number), "FiscalYear": lit(year)}),
                       f"过账差异 PostDifferences {year}/{number}")  # fmt: skip
            items = await self._pi_items(number, year)
        await journal.save({"posted": True})
        return self._posted(doc, {"PhysicalInventoryDocument": number, "FiscalYear": year}, items)

    async def _resume_pi(self, doc: PostingDoc, journal: Journal) -> dict[str, Any] | None:
        """The physical inventory document this posting made, as SAP has it: by SAP's number once known; else
        found by our reference after a create whose answer was lost; None when a create is due."""
        number, year = journal.get("document"), journal.get("year")
        if number:
            found = await self._pi_headers(
                f"PhysicalInventoryDocument eq {lit(str(number))} and FiscalYear eq {lit(str(year))}"
            )
            if not found:
                raise ErpHeld(f"pandian 创建的 SAP 盘点凭证 {year}/{number} 已不在（被删除？），请确认后处理",
                              f"the SAP physical inventory document pandian created, {year}/{number}, is gone "
                              "(deleted?); a person has to decide")  # fmt: skip
            kept = found[0].get("PhysInventoryReferenceNumber") == doc.key
            if journal.get("key_kept") != kept:
                await journal.save({"key_kept": kept})
            return found[0]
        found = await self._find_pi(doc.key, doc.warehouse)
        if len(found) > 1:
            nos = [f"{h.get('FiscalYear')}/{h.get('PhysicalInventoryDocument')}" for h in found]
            raise several_carry("SAP ", "SAP", doc.key, nos, "参考号", "PhysInventoryReferenceNumber")
        if found:  # created before, its answer lost
            h = found[0]
            number, year = str(h["PhysicalInventoryDocument"]), str(h.get("FiscalYear"))
            await journal.answered({"document": number, "year": year, "key_kept": True}, doc_id=number,
                                   doc_no=f"{year}/{number}")  # fmt: skip
            return h
        await self._absent(
            doc, journal, "PhysInventoryReferenceNumber", self._find_pi, "创建盘点凭证", "create"
        )
        return None

    async def _absent(
        self, doc: PostingDoc, journal: Journal, field: str, lookup: Any, zh: str, en: str
    ) -> None:
        """Nothing found by our number: a first write, or (after a write whose answer was lost) proven absent
        once ``erp.settle_s`` has passed and the same lookup finds the last document of ours of this kind."""
        if journal.pending is None:
            return
        if not journal.settled():
            raise journal.in_doubt(f"SAP {zh} {doc.key} 的回答丢失，暂时查不到",
                                   f"the answer to SAP's {en} of {doc.key} was lost and it is not to be seen yet")  # fmt: skip
        w = journal.witness
        if w is not None:
            seen = await lookup(w.key)
            ids = {
                str(r[0]) if isinstance(r, tuple) else str(r.get("PhysicalInventoryDocument")) for r in seen
            }
            if w.kept is False or w.doc_id not in ids:
                raise ErpHeld(f"SAP {zh} {doc.key} 的回答丢失，按 {field} 查不到；但连已过账的 {w.key}（{w.doc_no}）也查不到，"
                              "无法确认它不在",
                              f"the answer to SAP's {en} of {doc.key} was lost and nothing carries it in {field}; "
                              f"but the posted {w.key} ({w.doc_no}) is not found that way either, so its absence "
                              "cannot be proven")  # fmt: skip
        await journal.answered()  # not there: written now, once

    async def _create_pi(self, doc: PostingDoc, journal: Journal, sloc: str, deltas: dict[str, Any]) -> None:
        day = doc.created_at.astimezone(self.tz).date()
        body = {"Plant": doc.warehouse, "StorageLocation": sloc, "DocumentDate": odata_date(day),
                "PhysInventoryPlannedCountDate": odata_date(day), "PhysInventoryReferenceNumber": doc.key,
                "PhysicalInventoryDocumentDesc": doc.note[:16], "PhysInvtryDocHasQtySnapshot": True,
                "PostingIsBlockedForPhysInvtry": False,
                "to_PhysicalInventoryDocumentItem": {"results": [{"Material": m} for m in deltas]}}  # fmt: skip
        await journal.sending("create")
        header = await self._write(journal, "POST", PI, "/A_PhysInventoryDocHeader", body,
                                   "创建盘点凭证 create A_PhysInventoryDocHeader")  # fmt: skip
        if not isinstance(header, dict) or not header.get("PhysicalInventoryDocument"):
            raise ErpBadResponse(
                "SAP 创建盘点凭证后没有返回凭证号", "SAP created a PI document without a number"
            )
        number, year = str(header["PhysicalInventoryDocument"]), str(header.get("FiscalYear"))
        await journal.answered({"document": number, "year": year}, doc_id=number, doc_no=f"{year}/{number}")

    async def _write(
        self, journal: Journal, method: str, service: str, path: str, body: Any, what: str
    ) -> Any:
        """A create whose mark was set: refused (a 4xx, an expired token twice) clears the mark; no answer keeps
        it (the outcome is unknown)."""
        try:
            resp = await self._send(method, service, path, body=body)
        except ErpSessionExpired:
            await journal.answered()
            raise
        try:
            return self._json(resp, what)
        except ErpRejected:
            await journal.answered()
            raise

    def _item_path(self, number: str, year: str, item: str) -> str:
        return (f"/A_PhysInventoryDocItem(FiscalYear={lit(year)},PhysicalInventoryDocument={lit(number)},"
                f"PhysicalInventoryDocumentItem={lit(item)})")  # fmt: skip

    async def _pi_items(self, number: str, year: str) -> list[dict[str, Any]]:
        flt = f"PhysicalInventoryDocument eq {lit(number)} and FiscalYear eq {lit(year)}"
        d = await self._get(PI, "/A_PhysInventoryDocItem", {"$filter": flt}, "A_PhysInventoryDocItem")
        return list((d or {}).get("results") or [])

    async def _count(self, number: str, year: str, item: str, delta: Decimal, unit: str, key: str) -> None:
        """Enter SAP's frozen book + ``delta`` as the count, unless that count is there already."""
        path = self._item_path(number, year, item)
        for _ in range(3):
            resp = await self._send("GET", PI, path, params={"$format": "json"})
            d = self._json(resp, f"盘点凭证行 {year}/{number}/{item}")
            book = decimal(
                d.get("BookQtyBfrCountInMatlBaseUnit") or 0, "BookQtyBfrCountInMatlBaseUnit", self.label
            )
            target = book + delta
            if target < 0:
                raise ErpRejected(f"{key}：SAP 冻结的账面数量 {book} 小于盘亏 {-delta}，无法录入盘点数",
                                  f"{key}: SAP's frozen book {book} is below the loss {-delta}")  # fmt: skip
            counted = d.get("QuantityInUnitOfEntry")
            if (
                d.get("CountedByUser")
                and counted not in (None, "")
                and decimal(counted, "QuantityInUnitOfEntry", self.label) == target
            ):
                return
            etag = resp.headers.get("ETag") or (d.get("__metadata") or {}).get("etag")
            if not etag:
                raise ErpBadResponse("SAP 盘点凭证行没有 ETag", "SAP sent a PI item without an ETag")
            patch = await self._send("PATCH", PI, path, headers={"If-Match": etag},
                                     body={"QuantityInUnitOfEntry": f"{target:f}", "UnitOfEntry": unit,
                                           "PhysicalInventoryItemIsZero": target == 0})  # fmt: skip
            if patch.status == 412:  # changed meanwhile: read the new ETag (and maybe our count) again
                continue
            self._json(patch, f"录入盘点数 {year}/{number}/{item}")
            return
        raise ErpUnavailable(
            f"SAP 盘点凭证行 {number}/{item} 一直在变（ETag 冲突）",
            f"SAP PI item {number}/{item} keeps changing (ETag)",
        )

    # -- write back: transfers -----------------------------------------------------------------------------

    async def _find_transfer(self, key: str) -> list[tuple[str, str]]:
        """The material documents (number, year) with our bill number ``key`` as header text."""
        return await self._matdocs(f"MaterialDocumentHeaderText eq {lit(key)}")

    async def _matdocs(self, flt: str) -> list[tuple[str, str]]:
        d = await self._get(MATDOC, "/A_MaterialDocumentHeader", {"$filter": flt}, "A_MaterialDocumentHeader")
        return [
            (str(r["MaterialDocument"]), str(r.get("MaterialDocumentYear")))
            for r in (d or {}).get("results") or []
        ]

    async def _transfer(self, doc: PostingDoc, journal: Journal) -> Posted:
        found = await self._resume_transfer(doc, journal)
        if found is None:
            day = odata_date(doc.created_at.astimezone(self.tz).date())
            body = {"GoodsMovementCode": "04", "PostingDate": day, "DocumentDate": day,
                    "MaterialDocumentHeaderText": doc.key,
                    "to_MaterialDocumentItem": {"results": [
                        {"Material": ln.sku, "Plant": doc.warehouse, "StorageLocation": ln.location,
                         "GoodsMovementType": "311", "IssuingOrReceivingPlant": doc.warehouse,
                         "IssuingOrReceivingStorageLoc": ln.to_location, "QuantityInEntryUnit": f"{abs(ln.qty):f}",
                         "EntryUnit": ln.unit} for ln in doc.lines]}}  # fmt: skip
            await journal.sending("transfer")
            d = await self._write(journal, "POST", MATDOC, "/A_MaterialDocumentHeader", body,
                                  "移库 create A_MaterialDocumentHeader (311)")  # fmt: skip
            if not isinstance(d, dict) or not d.get("MaterialDocument"):
                raise ErpBadResponse(
                    "SAP 移库后没有返回物料凭证号", "SAP posted the transfer without a document number"
                )
            found = (str(d["MaterialDocument"]), str(d.get("MaterialDocumentYear")))
            await journal.answered({"material_document": found[0], "year": found[1], "key_kept": True},
                                   doc_id=found[0], doc_no=f"{found[1]}/{found[0]}")  # fmt: skip
        return Posted(f"{found[1]}/{found[0]}", found[0], (doc.key, found[0]))

    async def _resume_transfer(self, doc: PostingDoc, journal: Journal) -> tuple[str, str] | None:
        number = journal.get("material_document")
        if number:
            found = await self._matdocs(f"MaterialDocument eq {lit(str(number))}")
            if not found:
                raise ErpHeld(f"pandian 过账的 SAP 物料凭证 {number} 查不到了，请确认后处理",
                              f"the SAP material document pandian posted, {number}, cannot be found; a person has "
                              "to decide")  # fmt: skip
            return found[0]
        found = await self._find_transfer(doc.key)
        if len(found) > 1:
            raise ErpHeld(f"SAP 里有 {len(found)} 张抬头文本为 {doc.key} 的物料凭证：{', '.join(n for n, _ in found)}，请人工处理",
                          f"SAP holds {len(found)} material documents with header text {doc.key}: "
                          f"{', '.join(n for n, _ in found)}; resolve by hand")  # fmt: skip
        if found:  # posted before, its answer lost
            number, year = found[0]
            await journal.answered({"material_document": number, "year": year, "key_kept": True},
                                   doc_id=number, doc_no=f"{year}/{number}")  # fmt: skip
            return found[0]
        await self._absent(
            doc, journal, "MaterialDocumentHeaderText", self._find_transfer, "移库", "transfer"
        )
        return None


def _true(v: Any) -> bool:
    return v is True or v == "X" or v == "true"
