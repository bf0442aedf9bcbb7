"""A fake Yonyou YonBIP open API over ``ErpFake``: ``/iuap-api-auth`` (token) and ``/iuap-api-gateway`` (business).

- ``getAccessToken``: checks ``appKey`` and the HmacSHA256 ``signature`` of ``"appKey"+appKey+"timestamp"+ts``
  (``code "00000"``); a wrong one answers a non-00000 code. Business calls with an unknown or expired token
  answer ``{"code": "310036", "message": "非法token"}`` (HTTP 200).
- Lists with ``pageIndex``/``pageSize``, ``simpleVOs`` (``pubts egt``, ``code eq``) and ``queryOrders``:
  ``product/list``, ``warehouse/list``, ``goodsposition/list``, ``QueryCurrentStocksByCondition``, the stock
  documents (``purinrecord/list`` receipts, ``salesout/list`` issues; line level).
- ``storecheckdifference/single/save``: ``resubmitCheckKey`` may be used once ("请勿重复提交"), ``code`` is
  unique, products must exist; under a numbering rule (``numbering``) the document gets YonBIP's own code,
  whatever ``code`` says (``memo`` is kept). ``/list`` by ``code``, ``id`` (``eq``) or ``memo`` (``like``: a
  substring); ``GET /detail?id=`` reads one document directly (not through the list); ``list_lag`` makes the next lists leave out the documents saved since (a lagging index).
  ``/batchaudit`` (0 → 1, applies the difference; ``refuse()`` makes it answer ``failCount`` 1 with the
  message).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes.erp_common import ErpFake, FakeDoc, fault_middleware, ts

DIFF = "/yonbip/scm/storecheckdifference"
FLOWS = {"/yonbip/scm/purinrecord/list": "receipt", "/yonbip/scm/salesout/list": "issue"}


class YonBipFake(ErpFake):
    def __init__(self) -> None:
        super().__init__()
        self.app_key, self.app_secret, self.org = "yb-app-key", "yb-s3cret-77", "ORG01"
        self.resubmit_keys: set[str] = set()
        self.bodies: list[tuple[str, Any]] = []
        self.list_lag = (
            0  # the next N difference-document lists do not show documents saved since (a lagging index)
        )
        self._lagging: set[int] = set()


def ok(data: Any) -> web.Response:
    return web.json_response({"code": "200", "message": "操作成功", "data": data}, dumps=_dumps)


def err(code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message})


def _page(rows: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    for vo in body.get("simpleVOs") or []:
        f, op, v = vo["field"], vo["op"], vo.get("value1")
        if op == "egt":
            rows = [r for r in rows if str(r.get(f)) >= str(v)]
        elif op == "eq":
            rows = [r for r in rows if str(r.get(f)) == str(v)]
        elif op == "like":
            rows = [r for r in rows if str(v) in str(r.get(f) or "")]
        else:
            raise ValueError(f"unsupported op {op}")
    for order in reversed(body.get("queryOrders") or []):
        rows = sorted(
            rows, key=lambda r, f=order["field"]: str(r.get(f)), reverse=order.get("order") == "desc"
        )
    index, size = int(body.get("pageIndex") or 1), int(body.get("pageSize") or 10)
    return {"pageIndex": index, "pageSize": size, "recordCount": len(rows),
            "recordList": rows[(index - 1) * size : index * size]}  # fmt: skip


def build_yonbip_app(fake: YonBipFake) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        q = request.query
        want = base64.b64encode(hmac.new(fake.app_secret.encode(), f"appKey{q.get('appKey')}timestamp{q.get('timestamp')}".encode(),
                                         hashlib.sha256).digest()).decode()  # fmt: skip
        if q.get("appKey") != fake.app_key or q.get("signature") != want:
            return err("1090003500001", "签名校验失败或应用不存在")
        tok = fake.log_in()
        return web.json_response(
            {"code": "00000", "message": "成功！", "data": {"access_token": tok, "expire": 7200}}
        )

    def rows_for(path: str, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        if path == "/yonbip/digitalModel/product/list":
            return [{"id": i.id, "code": i.sku, "name": i.name, "modelDescription": i.spec, "unitCode": i.unit,
                     "barCode": ",".join(i.barcodes), "costPrice": i.cost, "pubts": ts(i.modified)}
                    for i in fake.items.values()]  # fmt: skip
        if path == "/yonbip/digitalModel/warehouse/list":
            return [{"code": c, "name": n} for c, (n, _) in sorted(fake.warehouses.items())]
        if path == "/yonbip/digitalModel/goodsposition/list":
            return [
                {"code": loc, "name": loc, "warehouse_code": w}
                for w, locs in sorted(fake.locations.items())
                for loc in locs
            ]
        if path == "/yonbip/scm/stock/QueryCurrentStocksByCondition":
            if body.get("org") != fake.org:
                return []
            return [{"product_code": sku, "warehouse_code": wh, "goodsposition_code": loc, "currentqty": q, "batchno": None}
                    for (sku, wh, loc), q in sorted(fake.stock.items())]  # fmt: skip
        if path in FLOWS:
            return [{"id": m.doc_id, "code": m.doc_no, "detail_id": m.line, "pubts": ts(m.at), "vouchdate": ts(m.at),
                     "product_code": m.sku, "warehouse_code": m.warehouse, "goodsposition_code": m.location,
                     "qty": m.qty, "srcBillNO": m.reference}
                    for m in fake.movements if m.flow == FLOWS[path]]  # fmt: skip
        if path in ("/yonbip/scm/othinrecord/list", "/yonbip/scm/othoutrecord/list"):
            return []
        if path == f"{DIFF}/list":
            lagging: set[int] = set()
            if fake.list_lag > 0 and fake._lagging:  # a list that leaves out what was saved lately
                fake.list_lag -= 1
                lagging = set(fake._lagging)
            elif fake.list_lag <= 0:
                fake._lagging.clear()
            return [
                {"id": d.id, "code": d.key, "status": 1 if d.status == "audited" else 0, "memo": d.extra.get("memo"),
                 "org": d.extra.get("org"), "warehouse": d.warehouse}
                for d in fake.docs.values() if d.id not in lagging
            ]  # fmt: skip
        return None

    def save(data: dict[str, Any]) -> web.Response:
        rk = data.get("resubmitCheckKey")
        if not rk or len(rk) > 32:
            return err("999", "resubmitCheckKey 不能为空且不超过 32 位")
        if rk in fake.resubmit_keys:
            return err("999", "请勿重复提交（resubmitCheckKey 已使用）")
        code = fake.number(data.get("code"))
        if any(d.key == code for d in fake.docs.values()):
            return err("999", f"编码 {code} 已存在")
        lines = []
        for d in data.get("details") or []:
            if d["product"] not in fake.items:
                return err("999", f"物料 {d['product']} 不存在")
            lines.append({"sku": d["product"], "location": d.get("goodsposition", "-"), "to_location": None,
                          "qty": Decimal(str(d["diffQty"]))})  # fmt: skip
        fake.resubmit_keys.add(rk)
        doc = FakeDoc(fake.next_id(), code, "difference", data["warehouse"], lines, "open",
                      {"memo": data.get("memo") if fake.keeps_notes else "", "org": data.get("org")}, ref=data.get("code"))  # fmt: skip
        fake.docs[doc.id] = doc
        fake._lagging.add(doc.id)
        return ok({"id": doc.id, "code": doc.key, "status": 0})

    def audit(items: list[dict[str, Any]]) -> web.Response:
        fails, msgs = 0, []
        for it in items:
            doc = fake.docs.get(int(it["id"]))
            if doc is None or doc.status != "open":
                fails += 1
                msgs.append(f"单据 {it['id']} 不存在或不是开立状态")
                continue
            reason = fake.take_reject()
            if reason:
                fails += 1
                msgs.append(f"{doc.key}：{reason}")
                continue
            doc.status = "audited"
            fake.apply(doc)
        return ok(
            {"count": len(items), "sucessCount": len(items) - fails, "failCount": fails, "messages": msgs}
        )

    async def gateway(request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        if request.query.get("access_token") not in fake.sessions:
            return err("310036", "非法token或token已过期")
        if request.method == "GET":
            if path == f"{DIFF}/detail":
                doc = fake.docs.get(int(request.query.get("id") or 0))
                if doc is None:
                    return err("999", f"单据 {request.query.get('id')} 不存在")
                return ok({"id": doc.id, "code": doc.key, "status": 1 if doc.status == "audited" else 0,
                           "memo": doc.extra.get("memo"), "org": doc.extra.get("org"), "warehouse": doc.warehouse})  # fmt: skip
            return err("404", f"接口 {path} 不存在")
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            return err("999", "请求体不是 JSON")
        fake.bodies.append((path, body))
        if path == f"{DIFF}/single/save":
            return save(body["data"])
        if path == f"{DIFF}/batchaudit":
            return audit(body["data"])
        rows = rows_for(path, body)
        if rows is None:
            return err("404", f"接口 {path} 不存在")
        page = _page(rows, body)
        return ok(page["recordList"] if path.endswith("QueryCurrentStocksByCondition") else page)

    app = web.Application(middlewares=[fault_middleware(fake)])
    app.router.add_get("/iuap-api-auth/open-auth/selfAppAuth/base/v1/getAccessToken", token)
    app.router.add_post("/iuap-api-gateway/{path:.*}", gateway)
    app.router.add_get("/iuap-api-gateway/{path:.*}", gateway)
    return app


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)  # decimals as text, as YonBIP sends them
