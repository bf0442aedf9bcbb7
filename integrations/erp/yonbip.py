"""Yonyou YonBIP / YonSuite open API (shared/research/cycle-counting.md §d3).

- Data centre: ``GET {openapi_url}/open-auth/dataCenter/getGatewayAddress?tenantId=`` → ``gatewayUrl`` and
  ``tokenUrl`` (success code ``"00000"``), unless both are configured.
- Token: ``GET {tokenUrl}/open-auth/selfAppAuth/base/v1/getAccessToken?appKey=&timestamp=<ms>&signature=``
  with ``signature = Base64(HmacSHA256(appSecret, "appKey" + appKey + "timestamp" + timestamp))`` (URL-encoded
  as a query value); valid for ``expire`` seconds (2 h), renewed 5 minutes early. Business calls go to
  ``{gatewayUrl}/yonbip/...?access_token=`` with JSON; ``code == "200"`` is success. An answer whose code is in
  ``token_error_codes`` (or HTTP 401) means the token is no longer valid: a new one is fetched and the call
  repeated once (the ERP did nothing).
- Reads (``pageIndex``/``pageSize``, changed-since filters as ``simpleVOs`` on ``pubts``): products
  ``/yonbip/digitalModel/product/list``, warehouses ``…/warehouse/list``, goods positions
  ``…/goodsposition/list``, stock ``/yonbip/scm/stock/QueryCurrentStocksByCondition`` (``currentqty``), and
  the stock documents of ``erp.yonbip.movement_sources`` (line level, ``isSum: false``).
- Writes: a count difference document (盘点差异单) ``/yonbip/scm/storecheckdifference/single/save`` with our
  bill number as ``code`` and ``resubmitCheckKey`` derived from it: the ERP refuses to save the same key twice,
  so a save whose answer was lost cannot be repeated; the document is then found by ``code`` through
  ``/storecheckdifference/list`` and audited (``/storecheckdifference/batchaudit``; status 0 开立 → 1 已审核).
  A mis-slot transfer is one difference document with a loss line at one goods position and a gain line at the
  other. A refused audit (closed period) is permanent.
- A movement's time is its ``pubts`` (when the ERP saved it), not its business date (``vouchdate``, often
  midnight): it has to fall after the stock snapshot that does not contain it.

Field names of list answers not fixed by the research (``product_code``, ``warehouse_code``,
``goodsposition_code``, ``currentqty``, ``qty``, ``detail_id``) follow the fake in tests/fakes/erp_yonbip.py;
check them against the tenant's API catalogue.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from core.config import ErpSettings, YonBipSettings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    ApiConnector,
    ErpBadResponse,
    ErpRejected,
    ErpSessionExpired,
    MovementRecord,
    Page,
    Posted,
    PostingDoc,
    SaveProgress,
    SourceMarks,
    configured,
    decimal,
    latest,
    local_time,
    text,
)
from integrations.erp.http import Http, Login

DIFF = "/yonbip/scm/storecheckdifference"
REPEATED_HINTS = ("重复", "resubmit", "已提交")


def signature(app_key: str, app_secret: str, timestamp: str) -> str:
    msg = f"appKey{app_key}timestamp{timestamp}"
    return base64.b64encode(hmac.new(app_secret.encode(), msg.encode(), hashlib.sha256).digest()).decode()


class YonBipConnector(ApiConnector):
    system = "yonbip"
    label = "用友 YonBIP"

    def __init__(
        self, erp: ErpSettings, tz: ZoneInfo, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__(erp, tz)
        self.cfg: YonBipSettings = configured(erp.yonbip, self.system)
        self._gateway, self._token_url = self.cfg.gateway_url, self.cfg.token_url
        self.login = Login(self._new_token, clock=clock)
        self.http = Http.of(
            self, sleep=sleep, secrets=lambda: (self.cfg.app_secret.get_secret_value(), self.login.value)
        )

    # -- token ---------------------------------------------------------------------------------------------

    async def _discover(self) -> None:
        if self._gateway and self._token_url:
            return
        resp = await self.http.send(
            "GET", f"{self.cfg.openapi_url.rstrip('/')}/open-auth/dataCenter/getGatewayAddress",
            params={"tenantId": self.cfg.tenant_id or ""},
        )  # fmt: skip
        data = self.http.parse(resp, "getGatewayAddress")
        if (
            not isinstance(data, dict)
            or data.get("code") != "00000"
            or not isinstance(data.get("data"), dict)
        ):
            raise ErpRejected(
                f"用友数据中心查询失败：{_msg(data)}", f"YonBIP data-centre lookup failed: {_msg(data)}"
            )
        self._gateway = str(data["data"].get("gatewayUrl") or "")
        self._token_url = str(data["data"].get("tokenUrl") or "")
        if not self._gateway or not self._token_url:
            raise ErpBadResponse(
                "用友数据中心没有返回网关地址", "YonBIP's data centre sent no gateway address"
            )

    async def _new_token(self) -> tuple[str, float]:
        await self._discover()
        ts = str(int(time.time() * 1000))
        sig = signature(self.cfg.app_key, self.cfg.app_secret.get_secret_value(), ts)
        resp = await self.http.send(
            "GET", f"{(self._token_url or '').rstrip('/')}/open-auth/selfAppAuth/base/v1/getAccessToken",
            params={"appKey": self.cfg.app_key, "timestamp": ts, "signature": sig},
        )  # fmt: skip
        data = self.http.parse(resp, "getAccessToken")
        if not isinstance(data, dict) or data.get("code") != "00000":
            raise ErpRejected(f"用友获取 access_token 失败：{_msg(data)}", f"YonBIP refused a token: {_msg(data)}",
                              code="login")  # fmt: skip
        body = data.get("data") or {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise ErpBadResponse("用友没有返回 access_token", "YonBIP sent no access_token")
        return str(token), float(body.get("expire") or 7200)

    async def call(self, path: str, body: Any, *, write: bool = False) -> Any:
        """A business call; ``data`` of a ``code == "200"`` answer. Expired token: renewed, repeated once."""

        async def once(token: str) -> Any:
            resp = await self.http.send("POST", f"{(self._gateway or '').rstrip('/')}{path}",
                                        params={"access_token": token}, body=body, write=write)  # fmt: skip
            data = self.http.parse(resp, path) if resp.status != 401 else {"code": "401"}
            if not isinstance(data, dict):
                raise ErpBadResponse(
                    f"用友 {path} 的回答格式不对", f"YonBIP answered {path} with a non-object"
                )
            code = str(data.get("code"))
            if code == "401" or code in self.cfg.token_error_codes:
                # renewed and repeated once; this is what the second refusal says
                raise ErpSessionExpired("用友 access_token 再次失效", "the YonBIP token expired again")
            if code != "200":
                raise ErpRejected(f"用友 {path} 失败（{code}）：{_msg(data)}", f"YonBIP {path} failed ({code}): {_msg(data)}",
                                  code=code)  # fmt: skip
            return data.get("data")

        return await self.login.renewing(once)

    async def _records(self, path: str, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        size, index = self.erp.page_size, 1
        while True:
            data = await self.call(path, {**body, "pageIndex": index, "pageSize": size})
            records = data.get("recordList") if isinstance(data, dict) else data
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ErpBadResponse(
                    f"用友 {path} 的回答里没有记录列表", f"YonBIP's answer to {path} has no record list"
                )
            yield records
            if len(records) < size:
                return
            index += 1

    async def check(self) -> list[str]:
        await self.login.get()
        await self.call("/yonbip/digitalModel/warehouse/list", {"pageIndex": 1, "pageSize": 1})
        return [
            f"access_token 获取成功（appKey {self.cfg.app_key}）/ token issued",
            "读取仓库：可以 / warehouses readable",
        ]

    # -- pull ----------------------------------------------------------------------------------------------

    @staticmethod
    def _since(cursor: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"queryOrders": [{"field": "pubts", "order": "asc"}]}
        if cursor:
            body["simpleVOs"] = [{"field": "pubts", "op": "egt", "value1": cursor}]
        return body

    async def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        last = cursor
        async for rows in self._records("/yonbip/digitalModel/product/list", self._since(cursor)):
            recs = [self._item_row(r, sku="code", sku_zh="物料编码", name="name", spec="modelDescription",
                                   unit="unitCode", cost="costPrice", barcodes="barCode") for r in rows]  # fmt: skip
            for r in rows:
                last = latest(last, str(r.get("pubts") or ""))
            yield Page(recs, last)

    async def _locations(self) -> AsyncIterator[Page]:
        async for rows in self._records("/yonbip/digitalModel/warehouse/list", {}):
            yield Page([self._warehouse_row(r, code="code", name="name") for r in rows], None)
        async for rows in self._records("/yonbip/digitalModel/goodsposition/list", {}):
            yield Page([self._location_row(r, warehouse="warehouse_code", code="code") for r in rows], None)

    async def _stock(self) -> AsyncIterator[Page]:
        async for rows in self._records(
            "/yonbip/scm/stock/QueryCurrentStocksByCondition", {"org": self.cfg.org}
        ):
            yield Page([self._stock_row(r, sku="product_code", warehouse="warehouse_code", location="goodsposition_code",
                                        qty="currentqty", lot="batchno") for r in rows], None)  # fmt: skip

    async def _movements(self, cursor: str | None) -> AsyncIterator[Page]:
        marks = SourceMarks(cursor)
        for src in self.cfg.movement_sources:
            since = marks.get(src.source)
            async for rows in self._records(src.source, {**self._since(since), "isSum": False}):
                recs = []
                for r in rows:
                    ts = str(r.get("pubts") or "")
                    recs.append(MovementRecord(
                        key=f"{src.source}:{r.get('id')}:{r.get('detail_id')}",
                        sku=text(r.get("product_code"), "product_code", self.label, max_len=64) or "",
                        warehouse=text(r.get(src.warehouse_field), src.warehouse_field, self.label, max_len=50) or "",
                        location=(text(r.get(src.location_field), src.location_field, self.label, required=False,
                                       max_len=50) if src.location_field else None) or self.erp.default_location,
                        qty=src.sign * abs(decimal(r.get(src.qty_field), src.qty_field, self.label)),
                        type=MovementType(src.type),
                        occurred_at=local_time(ts or str(r.get("vouchdate") or ""), self.tz, self.label),
                        source_doc=text(r.get("code"), "code", self.label, required=False, max_len=100),
                        reference=text(r.get("srcBillNO"), "srcBillNO", self.label, required=False, max_len=100),
                    ))  # fmt: skip
                    since = latest(since, ts)
                yield marks.page(recs, src.source, since)

    # -- write back ----------------------------------------------------------------------------------------

    def resubmit_key(self, doc: PostingDoc) -> str:
        return f"pandian-{doc.key}"[:32]

    async def _lookup(self, key: str) -> tuple[str, int] | None:
        data = await self.call(f"{DIFF}/list", {"pageIndex": 1, "pageSize": 10,
                                               "simpleVOs": [{"field": "code", "op": "eq", "value1": key}]})  # fmt: skip
        rows = [
            r
            for r in (data.get("recordList") if isinstance(data, dict) else None) or []
            if r.get("code") == key
        ]
        if not rows:
            return None
        if len({str(r.get("id")) for r in rows}) > 1:
            raise ErpRejected(f"用友里有多张编号为 {key} 的盘点差异单，请人工处理",
                              f"YonBIP holds several difference documents coded {key}; resolve by hand")  # fmt: skip
        try:
            return str(rows[0]["id"]), int(rows[0].get("status") or 0)
        except (KeyError, ValueError):
            raise ErpBadResponse(
                f"用友盘点差异单 {key} 缺少 id 或状态", f"YonBIP document {key} lacks id or status"
            ) from None

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        found = await self._lookup(doc.key)
        return Posted(doc.key, found[0], (doc.key,)) if found and found[1] == 1 else None

    async def post(self, doc: PostingDoc, progress: dict[str, Any], save: SaveProgress) -> Posted:
        found = await self._lookup(doc.key)
        if found is None:
            try:
                data = await self.call(f"{DIFF}/single/save", {"data": self._body(doc)}, write=True)
            except ErpRejected as exc:
                if not any(h in str(exc) for h in REPEATED_HINTS):
                    raise
                found = await self._lookup(doc.key)  # saved before, its answer lost
                if found is None:
                    raise ErpBadResponse(f"用友说 {doc.key} 已提交过，但查不到这张单据（稍后再查）",
                                         f"YonBIP says {doc.key} was submitted before but cannot find it yet") from None  # fmt: skip
            else:
                if not isinstance(data, dict) or data.get("id") is None:
                    raise ErpBadResponse(
                        f"用友保存 {doc.key} 后没有返回 id", f"YonBIP saved {doc.key} without an id"
                    )
                found = (str(data["id"]), int(data.get("status") or 0))
                await save({"id": found[0], "status": found[1], "resubmitCheckKey": self.resubmit_key(doc)})
        doc_id, status = found
        if status in (0, 3):
            data = await self.call(f"{DIFF}/batchaudit", {"data": [{"id": doc_id}]}, write=True)
            fails = data.get("failCount") if isinstance(data, dict) else None
            if fails:
                msgs = "；".join(str(m) for m in data.get("messages") or []) or "审核失败"
                raise ErpRejected(f"用友审核 {doc.key} 失败：{msgs}", f"YonBIP refused to audit {doc.key}: {msgs}",
                                  code="audit_failed")  # fmt: skip
            await save({"status": 1})
        return Posted(doc.key, doc_id, (doc.key,))

    def _body(self, doc: PostingDoc) -> dict[str, Any]:
        def pos(code: str | None) -> dict[str, Any]:
            return {} if not code or code == self.erp.default_location else {"goodsposition": code}

        details = []
        for ln in doc.lines:
            if doc.kind is AdjustmentKind.TRANSFER:
                details.append({"product": ln.sku, "unit": ln.unit, **pos(ln.location), "diffQty": -abs(ln.qty),
                                "_status": "Insert"})  # fmt: skip
                details.append({"product": ln.sku, "unit": ln.unit, **pos(ln.to_location), "diffQty": abs(ln.qty),
                                "_status": "Insert"})  # fmt: skip
            else:
                details.append({"product": ln.sku, "unit": ln.unit, **pos(ln.location), "diffQty": ln.qty,
                                **({"accountQty": ln.book_qty} if ln.book_qty is not None else {}),
                                **({"quantity": ln.counted_qty} if ln.counted_qty is not None else {}),
                                "_status": "Insert"})  # fmt: skip
        return {
            "resubmitCheckKey": self.resubmit_key(doc), "code": doc.key, "org": self.cfg.org,
            "warehouse": doc.warehouse, "vouchdate": doc.created_at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"),
            "memo": doc.note, "_status": "Insert", "details": details,
        }  # fmt: skip


def _msg(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("msg") or data.get("code") or "")
    return str(data)[:100]
