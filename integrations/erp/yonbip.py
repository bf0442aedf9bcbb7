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
  bill number as ``code`` (a coding rule may replace it) and at the start of the memo (or in ``key_field``), and
  ``resubmitCheckKey`` derived from it: YonBIP refuses to save the same key twice. Once the save answers, its
  ``id`` and code are stored; from then on the document is read by id (``/storecheckdifference/detail?id=``,
  not the list, which may lag) and audited (``/storecheckdifference/batchaudit``; status 0 开立 → 1 已审核). A save
  whose answer was lost is looked for by our number in the key field (``/list``, ``like``): one document is
  that save's; several hold the posting; none sends the same save again, same key: it is saved now, or YonBIP
  says it was (then it is looked for again until ``erp.settle_s`` has passed, and held if it still does not
  show). The code YonBIP gave is what pandian records. A mis-slot transfer is one difference document with a
  loss line at one goods position and a gain line at the other. A refused audit (closed period) is permanent.
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
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from core.config import ErpSettings, YonBipSettings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    ApiConnector,
    ErpBadResponse,
    ErpHeld,
    ErpRejected,
    ErpSessionExpired,
    Journal,
    MovementRecord,
    Page,
    Posted,
    PostingDoc,
    SourceMarks,
    carries,
    configured,
    decimal,
    keyed_note,
    latest,
    local_time,
    several_carry,
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
        self, erp: ErpSettings, tz: ZoneInfo, *, stamp: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        """``stamp``: the time of day, for the token request YonBIP checks; ``clock``: a duration clock, for the
        token's lifetime."""
        super().__init__(erp, tz)
        self.stamp = stamp
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
        ts = str(int(self.stamp().timestamp() * 1000))
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

    async def call(
        self, path: str, body: Any = None, *, write: bool = False, params: dict[str, Any] | None = None
    ) -> Any:
        """A business call (POST with ``body``; GET with ``params`` when there is none); ``data`` of a
        ``code == "200"`` answer. Expired token: renewed, repeated once."""

        async def once(token: str) -> Any:
            resp = await self.http.send("POST" if body is not None else "GET",
                                        f"{(self._gateway or '').rstrip('/')}{path}",
                                        params={**(params or {}), "access_token": token}, body=body, write=write)  # fmt: skip
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

    def resubmit_key(self, doc: PostingDoc, generation: int = 0) -> str:
        """The idempotency key of the save: YonBIP saves a key once (a fresh generation after a person said the
        document is not there)."""
        return (f"pandian-{doc.key}" + (f"-{generation}" if generation else ""))[:32]

    async def _detail(self, doc_id: str) -> Record | None:
        """The difference document with YonBIP's id ``doc_id``, read directly (the list may lag)."""
        data = await self.call(f"{DIFF}/detail", params={"id": doc_id})
        if not isinstance(data, dict) or data.get("id") is None:
            return None
        return _record(data, self.label, self.cfg.key_field)

    async def _by_key(self, key: str) -> list[Record]:
        """The difference documents whose key field holds our bill number ``key``."""
        field = self.cfg.key_field
        data = await self.call(f"{DIFF}/list", {"pageIndex": 1, "pageSize": 10,
                                               "simpleVOs": [{"field": field, "op": "like", "value1": key}]})  # fmt: skip
        rows = (data.get("recordList") if isinstance(data, dict) else None) or []
        return [
            _record(r, self.label, field) for r in rows if isinstance(r, dict) and carries(r.get(field), key)
        ]

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        found = await self._by_key(doc.key)
        if len(found) == 1 and found[0].status == 1:
            return Posted(found[0].code, found[0].id, (doc.key, found[0].code))
        return None

    async def post(self, doc: PostingDoc, journal: Journal) -> Posted:
        rec = await self._resume(doc, journal)
        if rec is None:
            await self._save(doc, journal)
            rec = await self._resume(doc, journal)  # read back: its code, its status, our number kept
            assert rec is not None
        if rec.status in (0, 3):
            data = await self.call(f"{DIFF}/batchaudit", {"data": [{"id": rec.id}]}, write=True)
            fails = data.get("failCount") if isinstance(data, dict) else None
            if fails:
                msgs = "；".join(str(m) for m in data.get("messages") or []) or "审核失败"
                raise ErpRejected(f"用友审核 {rec.code}（我方单号 {doc.key}）失败：{msgs}",
                                  f"YonBIP refused to audit {rec.code} (our {doc.key}): {msgs}", code="audit_failed")  # fmt: skip
            await journal.save({"status": 1})
        return Posted(rec.code, rec.id, (doc.key, rec.code))

    async def _resume(self, doc: PostingDoc, journal: Journal) -> Record | None:
        """The document this posting made, as YonBIP has it now: by its id once one is known; else found by our
        number in the key field after a save whose answer was lost; None when a save is due (a first one, or
        the same save again: YonBIP refuses a repeated ``resubmitCheckKey``)."""
        doc_id = journal.get("id")
        if doc_id:
            try:
                rec = await self._detail(str(doc_id))
            except ErpRejected as exc:
                rec, why = None, str(exc)
            else:
                why = "查不到 / not found"
            if rec is None:
                raise ErpHeld(f"pandian 保存过的用友盘点差异单 {journal.get('number')}（id {doc_id}）读不到了（{why}），请确认后处理",
                              f"the YonBIP difference document pandian saved, {journal.get('number')} (id {doc_id}), "
                              f"cannot be read any more ({why}); a person has to decide")  # fmt: skip
            facts = {"id": rec.id, "number": rec.code, "status": rec.status,
                     "key_kept": carries(rec.kept, doc.key)}  # fmt: skip
            if any(journal.get(k) != v for k, v in facts.items()):
                await journal.save(facts, doc_id=rec.id, doc_no=rec.code)
            return rec
        found = await self._by_key(doc.key)
        if len(found) > 1:
            raise several_carry("用友", "YonBIP", doc.key, [r.code for r in found], self.cfg.key_field,
                                self.cfg.key_field)  # fmt: skip
        if found:  # saved before, its answer lost
            r = found[0]
            await journal.answered({"id": r.id, "number": r.code, "status": r.status, "key_kept": True},
                                   doc_id=r.id, doc_no=r.code)  # fmt: skip
            return r
        return None

    async def _save(self, doc: PostingDoc, journal: Journal) -> None:
        pending = journal.pending
        if pending is not None:  # the same save again, with the same key: YonBIP keeps it single
            key = str(pending.get("resubmitCheckKey") or self.resubmit_key(doc))
        else:
            key = self.resubmit_key(doc, int(journal.get("generation") or 0))
            await journal.sending("save", resubmitCheckKey=key)
        try:
            data = await self.call(f"{DIFF}/single/save", {"data": self._body(doc, key)}, write=True)
        except ErpSessionExpired:
            if pending is None:
                await journal.answered()  # refused for its token, twice: YonBIP did nothing
            raise
        except ErpRejected as exc:
            if any(h in str(exc) for h in REPEATED_HINTS):  # YonBIP has that save, but does not show it
                if journal.settled():
                    raise ErpHeld(f"用友说 {doc.key} 已保存过（resubmitCheckKey {key}），但按{self.cfg.key_field}查不到这张单据",
                                  f"YonBIP says {doc.key} was saved before (resubmitCheckKey {key}) but no document "
                                  f"carries it in {self.cfg.key_field}") from None  # fmt: skip
                raise journal.in_doubt(f"用友说 {doc.key} 已保存过，但还查不到",
                                       f"YonBIP says {doc.key} was saved before but does not show it yet") from None  # fmt: skip
            await journal.answered()  # refused: saved neither now nor before (a repeat is told apart first)
            raise
        if not isinstance(data, dict) or data.get("id") is None:
            raise ErpBadResponse(f"用友保存 {doc.key} 后没有返回 id", f"YonBIP saved {doc.key} without an id")
        code = str(data.get("code") or "") or None
        await journal.answered({"id": str(data["id"]), "number": code, "status": int(data.get("status") or 0)},
                               doc_id=str(data["id"]), doc_no=code)  # fmt: skip

    def _keyed(self, doc: PostingDoc) -> dict[str, Any]:
        """The memo, and our bill number where YonBIP keeps it (the start of the memo, or the key field)."""
        if self.cfg.key_field == "memo":
            return {"memo": keyed_note(doc.key, doc.note)}
        return {"memo": doc.note, self.cfg.key_field: doc.key}

    def _body(self, doc: PostingDoc, resubmit_key: str) -> dict[str, Any]:
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
            "resubmitCheckKey": resubmit_key, "code": doc.key, "org": self.cfg.org,
            "warehouse": doc.warehouse, "vouchdate": doc.created_at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"),
            **self._keyed(doc), "_status": "Insert", "details": details,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Record:
    """A difference document as YonBIP reports it."""

    id: str
    code: str  # YonBIP's number (ours only when no coding rule replaced it)
    status: int  # 0 开立, 1 已审核, 3 审核中
    kept: Any  # what the key field holds


def _record(row: dict[str, Any], label: str, key_field: str) -> Record:
    try:
        return Record(
            str(row["id"]), str(row.get("code") or ""), int(row.get("status") or 0), row.get(key_field)
        )
    except (KeyError, ValueError):
        raise ErpBadResponse(
            f"{label} 盘点差异单缺少 id 或状态：{row!r:.80}",
            f"{label} sent a difference document without id or status",
        ) from None


def _msg(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("msg") or data.get("code") or "")
    return str(data)[:100]
