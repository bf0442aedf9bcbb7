"""A fake Yonyou U8+ OpenAPI (``api.yonyouup.com`` style) over ``ErpFake``.

- ``/system/token`` checks from_account, app_key and app_secret (``errcode`` "0", else "30001");
  ``/system/tradeid`` issues one-time trade ids. Calls with an unknown or expired token answer ``errcode``
  "30002" ("token 已过期").
- ``/api/{resource}/batch_get`` with ``page_index``/``rows_per_page`` (``page_count`` in the answer):
  ``inventory`` (``modifydate_begin``), ``warehouse``, ``position``, ``currentstock``, ``purchasein`` /
  ``saleout`` (``date_begin``; lines in ``entry``), ``otherin`` / ``otherout`` (``code``, ``date_begin`` /
  ``date_end``, ``warehousecode``; with their ``memory``); ``/api/otherin/get?id=`` (and otherout) reads one.
- ``/api/otherin/add`` and ``/api/otherout/add`` need an unused ``tradeid`` (a used one: "30010"), a unique
  voucher ``code`` ("单据号重复") and known inventory codes; they change stock at once. Under a numbering rule
  (``numbering``) the voucher gets U8's own code, whatever ``code`` says (``memory`` is kept). ``refuse()``
  makes the next adds fail with ``errcode`` "20001" and the message (a closed month).
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes.erp_common import ErpFake, FakeDoc, fault_middleware, ts

FLOWS = {"purchasein": "receipt", "saleout": "issue"}


class U8Fake(ErpFake):
    def __init__(self) -> None:
        super().__init__()
        self.from_account, self.to_account = "pandian", "001"
        self.app_key, self.app_secret = "u8-app-key", "u8-s3cret-99"
        self.tradeids: dict[str, bool] = {}  # id -> used

    def ledger(self, key: str) -> int:
        """How many times the document went in: a transfer is its -O and -I vouchers, each once."""
        n = self.applied.count(key)
        if n:
            return n
        out, into = self.applied.count(f"{key}-O"), self.applied.count(f"{key}-I")
        return out if out == into else -1

    def find_doc(self, key: str) -> list[FakeDoc]:
        return [d for d in self.docs.values() if {d.key, d.ref} & {key, f"{key}-O", f"{key}-I"}]

    def holds(self, key: str) -> int:
        """Vouchers for our number ``key``: a transfer's -O and -I pair counts once (-1: a half pair)."""
        refs = [d.ref for d in self.docs.values()]
        n = refs.count(key)
        if n:
            return n
        out, into = refs.count(f"{key}-O"), refs.count(f"{key}-I")
        return out if out == into else -1


def err(code: str, msg: str) -> web.Response:
    return web.json_response({"errcode": code, "errmsg": msg})


def build_u8_app(fake: U8Fake) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        q = request.query
        if (q.get("from_account"), q.get("app_key"), q.get("app_secret")) != (fake.from_account, fake.app_key,
                                                                               fake.app_secret):  # fmt: skip
            return err("30001", "应用认证失败")
        tok = fake.log_in()
        return web.json_response({"errcode": "0", "errmsg": "", "token": {"id": tok, "expiresIn": 7200}})

    async def tradeid(request: web.Request) -> web.Response:
        if request.query.get("token") not in fake.sessions:
            return err("30002", "token 已过期")
        t = uuid.uuid4().hex
        fake.tradeids[t] = False
        return web.json_response({"errcode": "0", "errmsg": "", "trade": {"id": t}})

    def rows_for(resource: str, q: Any) -> list[dict[str, Any]] | None:
        if resource == "inventory":
            rows = [{"code": i.sku, "name": i.name, "specs": i.spec, "main_measure": i.unit, "iinvrcost": str(i.cost),
                     "barcode": ",".join(i.barcodes), "modifydate": ts(i.modified)} for i in fake.items.values()]  # fmt: skip
            since = q.get("modifydate_begin")
            rows = [r for r in rows if not since or r["modifydate"] >= since]
            return sorted(rows, key=lambda r: (r["modifydate"], r["code"]))
        if resource == "warehouse":
            return [{"code": c, "name": n} for c, (n, _) in sorted(fake.warehouses.items())]
        if resource == "position":
            return [
                {"code": loc, "name": loc, "warehousecode": w}
                for w, locs in sorted(fake.locations.items())
                for loc in locs
            ]
        if resource == "currentstock":
            return [{"invcode": sku, "whcode": wh, "position": loc, "qty": str(q_), "batch": ""}
                    for (sku, wh, loc), q_ in sorted(fake.stock.items())]  # fmt: skip
        if resource in FLOWS:
            since = q.get("date_begin")
            return [{"id": m.doc_id, "code": m.doc_no, "date": ts(m.at)[:10], "maketime": ts(m.entered or m.at),
                     "warehousecode": m.warehouse,
                     "entry": [{"rowno": m.line, "inventorycode": m.sku, "quantity": str(m.qty), "position": m.location}]}
                    for m in fake.movements if m.flow == FLOWS[resource] and (not since or ts(m.at)[:10] >= since)]  # fmt: skip
        if resource in ("otherin", "otherout"):
            code, wh = q.get("code"), q.get("warehousecode")
            begin, end = q.get("date_begin"), q.get("date_end")
            return [{"id": str(d.id), "code": d.key, "warehousecode": d.warehouse, "date": d.extra.get("date"),
                     "memory": d.extra.get("memory")} for d in fake.docs.values()
                    if d.extra.get("resource") == resource and (not code or d.key == code)
                    and (not wh or d.warehouse == wh) and (not begin or str(d.extra.get("date")) >= begin)
                    and (not end or str(d.extra.get("date")) <= end)]  # fmt: skip
        if resource in ("materialout", "productin"):
            return []
        return None

    async def api(request: web.Request) -> web.Response:
        resource, op = request.match_info["resource"], request.match_info["op"]
        q = request.query
        if q.get("token") not in fake.sessions:
            return err("30002", "token 已过期，请重新获取")
        if (q.get("from_account"), q.get("to_account"), q.get("app_key")) != (fake.from_account, fake.to_account,
                                                                               fake.app_key):  # fmt: skip
            return err("30003", "账套或应用不匹配")
        if op == "batch_get":
            rows = rows_for(resource, q)
            if rows is None:
                return err("10002", f"不支持的资源 {resource}")
            index, size = int(q.get("page_index", 1)), int(q.get("rows_per_page", 20))
            pages = max(1, -(-len(rows) // size))
            return web.json_response({"errcode": "0", "errmsg": "", "page_index": str(index), "rows_per_page": str(size),
                                      "row_count": str(len(rows)), "page_count": str(pages),
                                      resource: rows[(index - 1) * size : index * size]})  # fmt: skip
        if op == "get" and resource in ("otherin", "otherout"):
            doc = fake.docs.get(int(q.get("id") or 0))
            if doc is None or doc.extra.get("resource") != resource:
                return web.json_response({"errcode": "0", "errmsg": "", resource: None})
            return web.json_response({"errcode": "0", "errmsg": "", resource: {
                "id": str(doc.id), "code": doc.key, "warehousecode": doc.warehouse, "date": doc.extra.get("date"),
                "memory": doc.extra.get("memory")}})  # fmt: skip
        if op == "add" and resource in ("otherin", "otherout"):
            t = q.get("tradeid")
            if t not in fake.tradeids:
                return err("30011", "tradeid 无效")
            if fake.tradeids[t]:
                return err("30010", "tradeid 已使用")
            fake.tradeids[t] = True
            try:
                v = json.loads(await request.text())[resource]
            except (ValueError, KeyError):
                return err("20001", "单据新增失败：数据格式错误")
            code = fake.number(v["code"])
            if any(d.key == code for d in fake.docs.values()):
                return err("20001", f"单据新增失败：单据号重复 {code}")
            lines = []
            for e in v.get("entry") or []:
                if e["inventorycode"] not in fake.items:
                    return err("20001", f"单据新增失败：存货编码 {e['inventorycode']} 不存在")
                q_ = Decimal(str(e["quantity"]))
                lines.append({"sku": e["inventorycode"], "location": e.get("position", "-"), "to_location": None,
                              "qty": q_ if resource == "otherin" else -q_})  # fmt: skip
            reason = fake.take_reject()
            if reason:
                return err("20001", f"单据新增失败：{reason}")
            doc = FakeDoc(fake.next_id(), code, "difference", v["warehousecode"], lines, "added",
                          {"resource": resource, "receivecode": v.get("receivecode"), "date": v.get("date"),
                           "memory": v.get("memory") if fake.keeps_notes else ""}, ref=v["code"])  # fmt: skip
            fake.docs[doc.id] = doc
            fake.apply(doc)
            return web.json_response({"errcode": "0", "errmsg": "", "id": str(doc.id), "tradeid": t})
        return err("10002", f"不支持的操作 {resource}/{op}")

    app = web.Application(middlewares=[fault_middleware(fake)])
    app.router.add_get("/system/token", token)
    app.router.add_get("/system/tradeid", tradeid)
    app.router.add_route("*", "/api/{resource}/{op}", api)
    return app
