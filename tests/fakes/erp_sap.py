"""A fake SAP S/4HANA OData v2 gateway (``/sap/opu/odata/sap/<service>/…``) over ``ErpFake``.

- Basic auth on every request (401 otherwise). ``GET <service>/`` with ``x-csrf-token: Fetch`` issues a token
  (and a session cookie); a write without a live token answers 403 with ``x-csrf-token: Required``.
  ``expire_sessions()`` drops every token.
- ``API_PRODUCT_SRV/A_Product`` (``LastChangeDateTime ge datetimeoffset'…'``, ``to_Description``,
  ``to_Valuation``), ``API_MATERIAL_STOCK_SRV/A_MatlStkInAcctMod``, ``API_MATERIAL_DOCUMENT_SRV/
  A_MaterialDocumentHeader`` (``CreationDate ge datetime'…'``, ``MaterialDocumentHeaderText eq '…'`` or
  ``MaterialDocument eq '…'``, items expanded; POST creates a 311 transfer). The material documents include the ones SAP made for our postings
  (701/702 for count differences, 311 for transfers), as the real feed would.
- ``API_PHYSICAL_INVENTORY_DOC_SRV``: create a document (deep insert; the book is frozen at creation; SAP numbers
  it, our number is only its ``PhysInventoryReferenceNumber``), read it by ``PhysInventoryReferenceNumber`` and
  ``Plant`` or by ``PhysicalInventoryDocument`` and ``FiscalYear``, read items (collection or by key, with an ``ETag``), ``PATCH`` an item's
  count (``If-Match`` must be the current ETag: 412 otherwise, 428 without), ``PostDifferences`` (every item
  counted; ``refuse()`` makes it answer 400 like a closed posting period). ``keeps_notes`` off: documents lose
  the ``PhysInventoryReferenceNumber`` we send.
- Errors in OData's shape: ``{"error": {"code", "message": {"lang", "value"}}}``. Decimals go as strings,
  dates as ``/Date(ms)/``.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from aiohttp import encode_basic_auth, web

from tests.fakes.erp_common import TZ, ErpFake, FakeDoc, fault_middleware

ODATA = "/sap/opu/odata/sap"
_ITEM_KEY = re.compile(r"A_PhysInventoryDocItem\(FiscalYear='(\w+)',PhysicalInventoryDocument='(\w+)',"
                       r"PhysicalInventoryDocumentItem='(\w+)'\)")  # fmt: skip


def ms(d: date | datetime) -> str:
    if isinstance(d, datetime):
        return f"/Date({int(d.timestamp() * 1000)}+0000)/"
    return f"/Date({int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)})/"


def sap_err(status: int, code: str, msg: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": {"lang": "en", "value": msg}}}, status=status
    )


def d(value: Any) -> web.Response:
    return web.json_response({"d": value})


class SapFake(ErpFake):
    def __init__(self) -> None:
        super().__init__()
        self.user, self.password = "PANDIAN_COMM", "sap-s3cret-11"
        self.pi: dict[str, dict[str, Any]] = {}  # document number -> header with items
        self.matdocs: list[dict[str, Any]] = []  # SAP's own documents for our postings
        self.patches = 0
        self.stale_etag_once = False  # someone else changes the next item just before our PATCH lands

    def echo(self, doc: FakeDoc) -> None:  # SAP's material documents are always in the feed (``matdocs``)
        return None

    def holds(self, key: str) -> int:
        """SAP's documents for our number: physical inventory documents referenced ``key`` (not deleted), and
        transfers (material documents) with ``key`` as header text."""
        pis = [h for h in self.pi.values() if h.get("_proposed", h["PhysInventoryReferenceNumber"]) == key
               and h["PhysInvtryDeletionStatus"] not in ("X", True)]  # fmt: skip
        return len(pis) + sum(1 for m in self.matdocs if m["MaterialDocumentHeaderText"] == key)

    def _matdoc(self, header_text: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        number = str(4900000000 + self.next_id())
        at = self.tick()
        local = at.astimezone(TZ)
        doc = {"MaterialDocumentYear": str(local.year), "MaterialDocument": number, "CreationDate": ms(local.date()),
               "CreationTime": local.strftime("PT%HH%MM%SS"), "MaterialDocumentHeaderText": header_text,
               "to_MaterialDocumentItem": {"results": [
                   {"MaterialDocumentYear": str(local.year), "MaterialDocument": number,
                    "MaterialDocumentItem": str(n), **it} for n, it in enumerate(items, start=1)]}}  # fmt: skip
        self.matdocs.append(doc)
        return doc

    def feed(self) -> list[dict[str, Any]]:
        out = []
        for m in self.movements:
            local = m.at.astimezone(TZ)
            out.append({"MaterialDocumentYear": str(local.year), "MaterialDocument": m.doc_no,
                        "CreationDate": ms(local.date()), "CreationTime": local.strftime("PT%HH%MM%SS"),
                        "MaterialDocumentHeaderText": m.reference or "",
                        "to_MaterialDocumentItem": {"results": [{
                            "MaterialDocumentYear": str(local.year), "MaterialDocument": m.doc_no,
                            "MaterialDocumentItem": str(m.line), "Material": m.sku, "Plant": m.warehouse,
                            "StorageLocation": m.location, "GoodsMovementType": "101" if m.flow == "receipt" else "201",
                            "QuantityInBaseUnit": f"{m.qty:f}", "DebitCreditCode": "S" if m.flow == "receipt" else "H"}]}})  # fmt: skip
        return out + self.matdocs


def _filter_value(flt: str, field: str) -> str | None:
    m = re.search(rf"{field} (?:eq|ge) (?:datetimeoffset|datetime)?'([^']*)'", flt)
    return m.group(1) if m else None


def build_sap_app(fake: SapFake) -> web.Application:
    want = encode_basic_auth(fake.user, fake.password)

    def page(rows: list[dict[str, Any]], q: Any) -> web.Response:
        skip, top = int(q.get("$skip", 0)), q.get("$top")
        rows = rows[skip:]
        if top is not None:
            rows = rows[: int(top)]
        return d({"results": rows})

    def item_json(header: dict[str, Any], it: dict[str, Any]) -> dict[str, Any]:
        return {"__metadata": {"etag": f'W/"{it["etag"]}"'}, "FiscalYear": header["FiscalYear"],
                "PhysicalInventoryDocument": header["PhysicalInventoryDocument"],
                **{k: v for k, v in it.items() if k != "etag"}}  # fmt: skip

    def header_json(h: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in h.items() if k != "items" and not k.startswith("_")},
                "to_PhysicalInventoryDocumentItem": {"results": [item_json(h, it) for it in h["items"].values()]}}  # fmt: skip

    async def body_of(request: web.Request) -> Any:
        try:
            return json.loads(await request.text())
        except ValueError:
            return None

    async def product(request: web.Request) -> web.Response:
        since = _filter_value(request.query.get("$filter", ""), "LastChangeDateTime")
        rows = []
        for i in sorted(fake.items.values(), key=lambda i: (i.modified, i.sku)):
            if since and i.modified.strftime("%Y-%m-%dT%H:%M:%SZ") < since:
                continue
            rows.append({"Product": i.sku, "BaseUnit": i.unit, "ProductStandardID": i.barcodes[-1] if i.barcodes else "",
                         "LastChangeDateTime": ms(i.modified),
                         "to_Description": {"results": [{"Product": i.sku, "Language": "ZH", "ProductDescription": i.name}]},
                         "to_Valuation": {"results": [{"Product": i.sku, "ValuationArea": "WH1", "InventoryValuationProcedure": "S",
                                                       "StandardPrice": f"{i.cost * 10:f}", "PriceUnitQty": "10",
                                                       "MovingAveragePrice": "0"}]}})  # fmt: skip
        return page(rows, request.query)

    async def stock(request: web.Request) -> web.Response:
        rows = [{"Material": sku, "Plant": wh, "StorageLocation": loc, "Batch": "", "InventoryStockType": "01",
                 "MatlWrhsStkQtyInMatlBaseUnit": f"{q:f}", "MaterialBaseUnit": "PC"}
                for (sku, wh, loc), q in sorted(fake.stock.items())]  # fmt: skip
        return page(rows, request.query)

    async def matdoc(request: web.Request) -> web.Response:
        if request.method == "POST":
            b = await body_of(request)
            if not b:
                return sap_err(400, "/IWBEP/CM_MGW_RT/004", "Malformed request body")
            items = b["to_MaterialDocumentItem"]["results"]
            for it in items:
                if it["Material"] not in fake.items:
                    return sap_err(400, "M7/001", f"Material {it['Material']} does not exist")
            reason = fake.take_reject()
            if reason:
                return sap_err(400, "M7/053", reason)
            lines, sap_items = [], []
            for it in items:
                q = Decimal(it["QuantityInEntryUnit"])
                lines.append({"sku": it["Material"], "location": it["StorageLocation"],
                              "to_location": it["IssuingOrReceivingStorageLoc"], "qty": q})  # fmt: skip
                base = {"Material": it["Material"], "Plant": it["Plant"], "GoodsMovementType": "311",
                        "QuantityInBaseUnit": f"{q:f}"}  # fmt: skip
                sap_items += [{**base, "StorageLocation": it["StorageLocation"], "DebitCreditCode": "H"},
                              {**base, "StorageLocation": it["IssuingOrReceivingStorageLoc"], "DebitCreditCode": "S"}]  # fmt: skip
            header = fake._matdoc(b.get("MaterialDocumentHeaderText", ""), sap_items)
            doc = FakeDoc(fake.next_id(), header["MaterialDocument"], "transfer", items[0]["Plant"], lines, "posted",
                          {"material_document": header["MaterialDocument"]},
                          ref=b.get("MaterialDocumentHeaderText", ""))  # fmt: skip
            fake.docs[doc.id] = doc
            fake.apply(doc)
            return web.json_response(
                {"d": {k: v for k, v in header.items() if k != "to_MaterialDocumentItem"}}, status=201
            )
        flt = request.query.get("$filter", "")
        rows = fake.feed()
        text_ = _filter_value(flt, "MaterialDocumentHeaderText")
        if text_ is not None:
            rows = [r for r in rows if r["MaterialDocumentHeaderText"] == text_]
        number = _filter_value(flt, "MaterialDocument")
        if number is not None:
            rows = [r for r in rows if r["MaterialDocument"] == number]
        since = _filter_value(flt, "CreationDate")
        if since:
            day = datetime.fromisoformat(since).date()
            rows = [r for r in rows if int(r["CreationDate"][6:-2].split("+")[0]) >= int(ms(day)[6:-2])]
        rows.sort(
            key=lambda r: (
                int(r["CreationDate"][6:-2].split("+")[0]),
                r["MaterialDocumentYear"],
                r["MaterialDocument"],
            )
        )
        return page(rows, request.query)

    async def pi_header(request: web.Request) -> web.Response:
        if request.method == "POST":
            b = await body_of(request)
            if not b:
                return sap_err(400, "/IWBEP/CM_MGW_RT/004", "Malformed request body")
            number = str(100000000 + fake.next_id())
            ref = b.get("PhysInventoryReferenceNumber", "")
            items = {}
            for n, it in enumerate(b["to_PhysicalInventoryDocumentItem"]["results"], start=1):
                if it["Material"] not in fake.items:
                    return sap_err(400, "M7/001", f"Material {it['Material']} does not exist")
                items[str(n)] = {"PhysicalInventoryDocumentItem": str(n), "Material": it["Material"],
                                 "Plant": b["Plant"], "StorageLocation": b["StorageLocation"],
                                 "BookQtyBfrCountInMatlBaseUnit": f"{fake.qty(it['Material'], b['Plant'], b['StorageLocation']):f}",
                                 "QuantityInUnitOfEntry": "", "UnitOfEntry": "", "CountedByUser": "",
                                 "PhysInvtryDifferenceIsPosted": False, "MaterialDocument": "", "etag": 1}  # fmt: skip
            h = {"PhysicalInventoryDocument": number, "FiscalYear": "2026", "Plant": b["Plant"],
                 "StorageLocation": b["StorageLocation"], "PhysInventoryReferenceNumber": ref if fake.keeps_notes else "", "_proposed": ref,
                 "PhysInvtryDeletionStatus": "", "items": items}  # fmt: skip
            fake.pi[number] = h
            return web.json_response({"d": header_json(h)}, status=201)
        flt = request.query.get("$filter", "")
        ref, plant = _filter_value(flt, "PhysInventoryReferenceNumber"), _filter_value(flt, "Plant")
        number, year = _filter_value(flt, "PhysicalInventoryDocument"), _filter_value(flt, "FiscalYear")
        rows = [header_json(h) for h in fake.pi.values()
                if (ref is None or h["PhysInventoryReferenceNumber"] == ref) and (plant is None or h["Plant"] == plant)
                and (number is None or h["PhysicalInventoryDocument"] == number)
                and (year is None or h["FiscalYear"] == year)]  # fmt: skip
        return page(rows, request.query)

    async def pi_items(request: web.Request) -> web.Response:
        flt = request.query.get("$filter", "")
        number, year = _filter_value(flt, "PhysicalInventoryDocument"), _filter_value(flt, "FiscalYear")
        h = fake.pi.get(number or "")
        if h is None or h["FiscalYear"] != year:
            return page([], request.query)
        return page([item_json(h, it) for it in h["items"].values()], request.query)

    async def pi_item(request: web.Request, m: re.Match[str]) -> web.Response:
        year, number, item = m.groups()
        h = fake.pi.get(number)
        it = h["items"].get(item) if h and h["FiscalYear"] == year else None
        if h is None or it is None:
            return sap_err(404, "/IWBEP/CM_MGW_RT/020", "Resource not found")
        if request.method == "GET":
            resp = d(item_json(h, it))
            resp.headers["ETag"] = f'W/"{it["etag"]}"'
            return resp
        if fake.stale_etag_once:
            fake.stale_etag_once = False
            it["etag"] += 1
        match = request.headers.get("If-Match")
        if not match:
            return sap_err(428, "/IWBEP/CM_MGW_RT/019", "Precondition required")
        if match != f'W/"{it["etag"]}"':
            return sap_err(412, "/IWBEP/CM_MGW_RT/022", "Precondition failed")
        if it["PhysInvtryDifferenceIsPosted"]:
            return sap_err(400, "M7/089", "Difference already posted")
        b = await body_of(request)
        it["QuantityInUnitOfEntry"] = b["QuantityInUnitOfEntry"]
        it["UnitOfEntry"] = b["UnitOfEntry"]
        it["CountedByUser"] = fake.user
        it["etag"] += 1
        fake.patches += 1
        return web.Response(status=204)

    async def post_differences(request: web.Request) -> web.Response:
        number = unquote(request.query.get("PhysicalInventoryDocument", "")).strip("'")
        h = fake.pi.get(number)
        if h is None:
            return sap_err(404, "M7/020", f"Physical inventory document {number} does not exist")
        todo = [it for it in h["items"].values() if not it["PhysInvtryDifferenceIsPosted"]]
        if not todo:
            return sap_err(400, "M7/089", "Differences already posted")
        for it in todo:
            if not it["CountedByUser"]:
                return sap_err(
                    400, "M7/077", f"Item {it['PhysicalInventoryDocumentItem']} has not been counted yet"
                )
        reason = fake.take_reject()
        if reason:
            return sap_err(400, "M7/053", reason)
        lines, sap_items = [], []
        for it in todo:
            diff = Decimal(it["QuantityInUnitOfEntry"]) - Decimal(it["BookQtyBfrCountInMatlBaseUnit"])
            lines.append(
                {"sku": it["Material"], "location": it["StorageLocation"], "to_location": None, "qty": diff}
            )
            sap_items.append({"Material": it["Material"], "Plant": it["Plant"], "StorageLocation": it["StorageLocation"],
                              "GoodsMovementType": "701" if diff >= 0 else "702", "QuantityInBaseUnit": f"{abs(diff):f}",
                              "DebitCreditCode": "S" if diff >= 0 else "H"})  # fmt: skip
        header = fake._matdoc("", sap_items)
        for it in todo:
            it["PhysInvtryDifferenceIsPosted"] = True
            it["MaterialDocument"] = header["MaterialDocument"]
            it["etag"] += 1
        doc = FakeDoc(fake.next_id(), h["PhysicalInventoryDocument"], "difference", h["Plant"], lines, "posted",
                      ref=h.get("_proposed") or h["PhysInventoryReferenceNumber"])  # fmt: skip
        fake.docs[doc.id] = doc
        fake.apply(doc)
        return d({k: v for k, v in h.items() if k != "items"})

    async def service(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != want:
            return web.Response(
                status=401, text="Unauthorized", headers={"WWW-Authenticate": 'Basic realm="SAP"'}
            )
        svc, rest = request.match_info["service"], request.match_info["rest"]
        if (
            request.method == "GET"
            and rest == ""
            and request.headers.get("x-csrf-token", "").lower() == "fetch"
        ):
            tok = fake.log_in()
            resp = web.json_response({"d": {"EntitySets": []}}, headers={"x-csrf-token": tok})
            resp.set_cookie("SAP_SESSIONID_S4H_100", uuid.uuid4().hex)
            return resp
        if request.method != "GET" and request.headers.get("x-csrf-token") not in fake.sessions:
            return web.Response(
                status=403, text="CSRF token validation failed", headers={"x-csrf-token": "Required"}
            )
        if svc == "API_PRODUCT_SRV" and rest == "A_Product":
            return await product(request)
        if svc == "API_MATERIAL_STOCK_SRV" and rest == "A_MatlStkInAcctMod":
            return await stock(request)
        if svc == "API_MATERIAL_DOCUMENT_SRV" and rest == "A_MaterialDocumentHeader":
            return await matdoc(request)
        if svc == "API_PHYSICAL_INVENTORY_DOC_SRV":
            if rest == "A_PhysInventoryDocHeader":
                return await pi_header(request)
            if rest == "A_PhysInventoryDocItem":
                return await pi_items(request)
            if rest == "PostDifferences" and request.method == "POST":
                return await post_differences(request)
            m = _ITEM_KEY.fullmatch(unquote(rest))
            if m and request.method in ("GET", "PATCH", "MERGE"):
                return await pi_item(request, m)
        return sap_err(404, "/IWBEP/CM_MGW_RT/021", f"Resource not found for segment '{rest}'")

    app = web.Application(middlewares=[fault_middleware(fake, lambda r: f"{r.method} {r.path}")])
    app.router.add_route("*", ODATA + "/{service}/{rest:.*}", service)
    return app
