"""Kingdee K/3 Cloud (金蝶云星空) WebAPI (shared/research/cycle-counting.md §d1).

Transport: ``POST {server_url}/{Service}.common.kdsvc`` with a JSON body.

- Login: ``AuthService.LoginByAppSecret`` (``parameters: [acctID, username, appId, appSecret, lcid]``) or
  ``AuthService.LoginBySign`` (``sign = sha256(sorted([acctID, username, appId, appSecret, timestamp]))``);
  ``LoginResultType == 1`` is success, the session id comes back as ``KDSVCSessionId`` (and the
  ``kdservice-sessionid`` cookie) and goes with every call. An answer with ``MsgCode == 1`` (context lost) is
  an expired session: log in again and repeat the call (the ERP did nothing). The SDK's stateless signed
  headers (``X-Kd-Signature``) are not implemented: they need the SDK's secret-decoding routine.
- Reads: ``DynamicFormService.ExecuteBillQuery`` ``{"data": {FormId, FieldKeys, FilterString, OrderString,
  StartRow, Limit}}`` → rows as arrays in FieldKeys order; an error comes as ``[[{"Result": {ResponseStatus}}]]``.
  Items: ``BD_MATERIAL`` changed since ``FModifyDate``; warehouses: ``BD_STOCK``; book stock: ``STK_Inventory``
  of the stock organisation (the location is the warehouse's flex field ``FStockLocId.<location_flex>``);
  movements: the audited documents of ``erp.kingdee.movement_sources`` since ``FApproveDate``.
- Writes: gains ``STK_StockCountGain`` (盘盈单, ``FGainQty``), losses ``STK_StockCountLoss`` (盘亏单,
  ``FLossQty``), mis-slot pairs ``STK_TransferDirect`` (直接调拨单), each with our bill number as ``FBillNo``:
  ``Save`` → ``Submit`` → ``Audit``. Before saving, the bill number is looked up (``FDocumentStatus``: A
  created, B submitted, C audited, D re-audit): a document whose answer was lost is found and carried on from
  where it stands, never saved twice; a ``Save`` refused because the number exists is looked up again. A
  failed audit (closed period, negative stock…) is permanent: the bill stays submitted in Kingdee, the
  adjustment is marked failed with Kingdee's messages, and a retry after the fix audits that same bill.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from core.config import ErpSettings, KingdeeSettings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    ApiConnector,
    ErpBadResponse,
    ErpRejected,
    ErpSessionExpired,
    ItemRecord,
    LocationRecord,
    MovementRecord,
    Page,
    Posted,
    PostingDoc,
    SaveProgress,
    SourceMarks,
    StockRecord,
    configured,
    decimal,
    latest,
    local_time,
    text,
)
from integrations.erp.http import Http, Login

DYN = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService"
AUTH = "Kingdee.BOS.WebApi.ServicesStub.AuthService"
FORMS = {
    AdjustmentKind.GAIN: "STK_StockCountGain",
    AdjustmentKind.LOSS: "STK_StockCountLoss",
    AdjustmentKind.TRANSFER: "STK_TransferDirect",
}
CONTEXT_LOST = 1  # ResponseStatus.MsgCode: the session (context) is gone
DUPLICATE_HINTS = ("已存在", "已经存在", "重复", "already exist")


def q(value: str) -> str:
    """A value inside a FilterString literal."""
    return value.replace("'", "''")


def kd_time(value: Any) -> str:
    """Kingdee datetimes (``2026-11-30T10:15:00.123``) as the cursor text ``2026-11-30 10:15:00``."""
    return str(value).replace("T", " ")[:19]


class KingdeeConnector(ApiConnector):
    system = "kingdee"
    label = "金蝶云星空"

    def __init__(
        self, erp: ErpSettings, tz: ZoneInfo, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        super().__init__(erp, tz)
        self.cfg: KingdeeSettings = configured(erp.kingdee, self.system)
        self.http = Http.of(
            self, sleep=sleep, secrets=lambda: (self.cfg.app_secret.get_secret_value(), self.login.value)
        )
        # a session lives until Kingdee says it is lost; its cookies go with it
        self.login = Login(self._new_session, forget=self.http.forget_cookies)

    def _url(self, service: str) -> str:
        return f"{self.cfg.server_url.rstrip('/')}/{service}.common.kdsvc"

    # -- session -----------------------------------------------------------------------------------------

    async def _new_session(self) -> tuple[str, None]:
        c = self.cfg
        secret = c.app_secret.get_secret_value()
        if c.login == "sign":
            ts = str(int(time.time()))
            sign = hashlib.sha256(
                "".join(sorted([c.acct_id, c.username, c.app_id, secret, ts])).encode()
            ).hexdigest()
            service = f"{AUTH}.LoginBySign"
            body: Any = {"acctID": c.acct_id, "username": c.username, "appId": c.app_id, "timestamp": ts,
                         "sign": sign, "lcid": c.lcid}  # fmt: skip
        else:
            service = f"{AUTH}.LoginByAppSecret"
            body = {"parameters": [c.acct_id, c.username, c.app_id, secret, c.lcid]}
        resp = await self.http.send("POST", self._url(service), body=body)
        data = self.http.parse(resp, "登录 login")
        if not isinstance(data, dict) or data.get("LoginResultType") != 1:
            msg = data.get("Message") if isinstance(data, dict) else None
            raise ErpRejected(
                f"金蝶登录失败（账套 {c.acct_id}，用户 {c.username}）：{msg or '未知原因'}",
                f"Kingdee login failed (data centre {c.acct_id}, user {c.username}): {msg or 'no reason given'}",
                code="login",
            )
        sid = data.get("KDSVCSessionId") or (data.get("Context") or {}).get("SessionId")
        if not sid:
            raise ErpBadResponse(
                "金蝶登录成功但没有返回会话号", "Kingdee login answered without a session id"
            )
        return str(sid), None

    async def _call(self, op: str, body: Any, *, write: bool) -> Any:
        """One business call; an expired session is renewed and the call repeated once."""

        async def once(sid: str) -> Any:
            resp = await self.http.send("POST", self._url(f"{DYN}.{op}"), body=body, write=write,
                                        headers={"kdservice-sessionid": sid})  # fmt: skip
            data = self.http.parse(resp, op)
            status = _response_status(data)
            if status is not None and status.get("MsgCode") == CONTEXT_LOST:
                # renewed and repeated once; this is what the second refusal says
                raise ErpSessionExpired(
                    "金蝶会话再次失效", "the Kingdee session expired again after a new login"
                )
            return data

        return await self.login.renewing(once)

    async def query(
        self,
        form: str,
        fields: Sequence[str],
        filter_: str = "",
        order: str = "",
        start: int = 0,
        limit: int = 0,
    ) -> list[list[Any]]:
        body = {"data": {"FormId": form, "FieldKeys": ",".join(fields), "FilterString": filter_,
                         "OrderString": order, "TopRowCount": 0, "StartRow": start, "Limit": limit}}  # fmt: skip
        data = await self._call("ExecuteBillQuery", body, write=False)
        status = _response_status(data)
        if status is not None:
            raise ErpRejected(
                f"金蝶查询 {form} 失败：{_errors(status)}",
                f"Kingdee query of {form} failed: {_errors(status)}",
            )
        if not isinstance(data, list) or any(not isinstance(r, list) or len(r) != len(fields) for r in data):
            raise ErpBadResponse(
                f"金蝶查询 {form} 的结果格式不对（应为 {len(fields)} 列的行）",
                f"Kingdee's answer to the {form} query is not rows of {len(fields)} columns",
            )
        return data

    async def _pages(
        self, form: str, fields: Sequence[str], filter_: str, order: str
    ) -> AsyncIterator[list[list[Any]]]:
        start, size = 0, self.erp.page_size
        while True:
            rows = await self.query(form, fields, filter_, order, start, size)
            yield rows
            if len(rows) < size:
                return
            start += len(rows)

    async def check(self) -> list[str]:
        await self.login.get()
        stocks = await self.query("BD_STOCK", ["FNumber"], "FDocumentStatus='C'", limit=1)
        return [
            f"登录成功：账套 {self.cfg.acct_id}，用户 {self.cfg.username}（{self.cfg.login}）/ logged in",
            f"读取仓库 BD_STOCK：{'可以' if stocks is not None else '失败'} / warehouses readable",
        ]

    # -- pull ----------------------------------------------------------------------------------------------

    async def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        c = self.cfg
        fields = ["FMATERIALID", "FNumber", "FName", "FSpecification", "FBaseUnitId.FNumber", c.cost_field,
                  c.barcode_field, "FModifyDate"]  # fmt: skip
        flt = "FDocumentStatus='C'" + (f" and FModifyDate>='{q(cursor)}'" if cursor else "")
        last = cursor
        async for rows in self._pages("BD_MATERIAL", fields, flt, "FModifyDate ASC,FMATERIALID ASC"):
            recs = []
            for _, number, name, spec, unit, cost, barcode, modified in rows:
                sku = text(number, "物料编码 FNumber", self.label, max_len=64)
                assert sku is not None
                recs.append(ItemRecord(
                    sku=sku, name=text(name, "物料名称 FName", self.label) or sku,
                    spec=text(spec, "FSpecification", self.label, required=False),
                    unit=text(unit, "FBaseUnitId", self.label, required=False, max_len=20),
                    unit_cost=decimal(cost, c.cost_field, self.label) if cost not in (None, "") else None,
                    barcodes=tuple(b for b in str(barcode or "").replace("，", ",").split(",") if b.strip()),
                ))  # fmt: skip
                last = latest(last, kd_time(modified))
            yield Page(recs, last)

    async def _locations(self) -> AsyncIterator[Page]:
        fields = ["FNumber", "FName", "FIsOpenLocation"]
        async for rows in self._pages("BD_STOCK", fields, "FDocumentStatus='C'", "FNumber ASC"):
            recs = []
            for number, name, _open_loc in rows:
                wh = text(number, "仓库编码 FNumber", self.label, max_len=50)
                assert wh is not None
                # the warehouse, with the default location where stock without a location dimension sits;
                # the flex locations of the others are created from the stock that names them
                recs.append(
                    LocationRecord(
                        wh, self.erp.default_location, text(name, "FName", self.label, required=False)
                    )
                )
            yield Page(recs, None)

    async def _stock(self) -> AsyncIterator[Page]:
        flex = self.cfg.location_flex
        fields = [
            "FMaterialId.FNumber",
            "FStockId.FNumber",
            f"FStockLocId.{flex}.FNumber",
            "FLot.FNumber",
            "FBaseQty",
        ]
        flt = f"FStockOrgId.FNumber='{q(self.cfg.org)}'"
        async for rows in self._pages(
            "STK_Inventory", fields, flt, "FMaterialId.FNumber ASC,FStockId.FNumber ASC"
        ):
            recs = []
            for sku, wh, loc, lot, qty in rows:
                recs.append(StockRecord(
                    sku=text(sku, "物料 FMaterialId", self.label, max_len=64) or "",
                    warehouse=text(wh, "仓库 FStockId", self.label, max_len=50) or "",
                    location=text(loc, "仓位 FStockLocId", self.label, required=False, max_len=50) or self.erp.default_location,
                    qty=decimal(qty, "FBaseQty", self.label),
                    lot=text(lot, "FLot", self.label, required=False, max_len=64),
                ))  # fmt: skip
            yield Page(recs, None)

    async def _movements(self, cursor: str | None) -> AsyncIterator[Page]:
        marks = SourceMarks(cursor)
        flex = self.cfg.location_flex
        for src in self.cfg.movement_sources:
            fields = ["FID", "FBillNo", src.line_field, "FMaterialId.FNumber", f"{src.warehouse_field}.FNumber",
                      f"{src.location_field}.{flex}.FNumber" if src.location_field else "FID", src.qty_field,
                      "FApproveDate"]  # fmt: skip
            since = marks.get(src.source)
            flt = "FDocumentStatus='C'" + (f" and FApproveDate>='{q(since)}'" if since else "")
            async for rows in self._pages(src.source, fields, flt, "FApproveDate ASC,FID ASC"):
                recs = []
                for fid, bill_no, line, sku, wh, loc, qty, approved in rows:
                    when = kd_time(approved)
                    recs.append(MovementRecord(
                        key=f"{src.source}:{fid}:{line}",
                        sku=text(sku, "物料 FMaterialId", self.label, max_len=64) or "",
                        warehouse=text(wh, f"仓库 {src.warehouse_field}", self.label, max_len=50) or "",
                        location=(text(loc, "仓位", self.label, required=False, max_len=50) if src.location_field else None)
                        or self.erp.default_location,
                        qty=src.sign * abs(decimal(qty, src.qty_field, self.label)),
                        type=MovementType(src.type), occurred_at=local_time(when, self.tz, self.label),
                        source_doc=text(bill_no, "FBillNo", self.label, required=False, max_len=100),
                    ))  # fmt: skip
                    since = latest(since, when)
                yield marks.page(recs, src.source, since)

    # -- write back ----------------------------------------------------------------------------------------

    async def _lookup(self, form: str, key: str) -> tuple[str, str] | None:
        rows = await self.query(form, ["FID", "FBillNo", "FDocumentStatus"], f"FBillNo='{q(key)}'")
        ids = {str(r[0]) for r in rows}
        if not ids:
            return None
        if len(ids) > 1:
            raise ErpRejected(f"金蝶里有 {len(ids)} 张单据编号为 {key} 的 {form}，请人工处理",
                              f"Kingdee holds {len(ids)} {form} bills numbered {key}; resolve by hand")  # fmt: skip
        return str(rows[0][0]), str(rows[0][2])

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        found = await self._lookup(FORMS[doc.kind], doc.key)
        if found is not None and found[1] == "C":
            return Posted(doc.key, found[0], (doc.key,))
        return None

    async def post(self, doc: PostingDoc, progress: dict[str, Any], save: SaveProgress) -> Posted:
        form = FORMS[doc.kind]
        found = await self._lookup(form, doc.key)
        if found is None:
            result = await self._call("Save", {"formid": form, "data": {"IsAutoSubmitAndAudit": False,
                                                                       "Model": self._model(doc)}}, write=True)  # fmt: skip
            status = _response_status(result) or {}
            if not status.get("IsSuccess"):
                if any(h in _errors(status) for h in DUPLICATE_HINTS):
                    found = await self._lookup(
                        form, doc.key
                    )  # saved meanwhile (by a drainer that lost its lease)
                if found is None:
                    raise ErpRejected(f"金蝶保存 {doc.key} 失败：{_errors(status)}",
                                      f"Kingdee refused to save {doc.key}: {_errors(status)}")  # fmt: skip
            else:
                entities = status.get("SuccessEntitys") or []
                fid = entities[0].get("Id") if entities and isinstance(entities[0], dict) else None
                if fid is None:
                    raise ErpBadResponse(f"金蝶保存 {doc.key} 成功但没有返回单据内码",
                                         f"Kingdee saved {doc.key} without returning its id")  # fmt: skip
                found = (str(fid), "A")
                await save({"form": form, "id": found[0], "status": "A"})
        fid, state = found
        if state in ("A", "D"):
            await self._operate("Submit", form, fid, doc.key)
            state = "B"
            await save({"form": form, "id": fid, "status": state})
        if state == "B":
            await self._operate("Audit", form, fid, doc.key)
            state = "C"
            await save({"form": form, "id": fid, "status": state})
        if state != "C":
            raise ErpRejected(
                f"金蝶单据 {doc.key} 状态为 {state}，无法继续", f"Kingdee bill {doc.key} is in state {state}"
            )
        return Posted(doc.key, fid, (doc.key,))

    async def _operate(self, op: str, form: str, fid: str, key: str) -> None:
        result = await self._call(op, {"formid": form, "data": {"Ids": fid}}, write=True)
        status = _response_status(result) or {}
        if not status.get("IsSuccess"):
            zh = {"Submit": "提交", "Audit": "审核"}[op]
            raise ErpRejected(f"金蝶{zh} {key} 失败：{_errors(status)}", f"Kingdee {op.lower()} of {key} failed: {_errors(status)}",
                              code=f"{op.lower()}_failed")  # fmt: skip

    def _loc(self, field: str, code: str | None) -> dict[str, Any]:
        if not code or code == self.erp.default_location:
            return {}
        return {field: {f"{field.upper()}__{self.cfg.location_flex}": {"FNumber": code}}}

    def _model(self, doc: PostingDoc) -> dict[str, Any]:
        c = self.cfg
        org = {"FNumber": c.org}
        date = doc.created_at.astimezone(self.tz).date().isoformat()
        if doc.kind is AdjustmentKind.TRANSFER:
            return {
                "FBillNo": doc.key, "FBillTypeID": {"FNUMBER": c.transfer_bill_type}, "FStockOutOrgId": org,
                "FStockOrgId": org, "FDate": date, "FNote": doc.note,
                "FBillEntry": [
                    {"FMaterialId": {"FNumber": ln.sku}, "FUnitID": {"FNumber": ln.unit}, "FQty": abs(ln.qty),
                     "FSrcStockId": {"FNumber": doc.warehouse}, "FDestStockId": {"FNumber": doc.warehouse},
                     **self._loc("FSrcStockLocId", ln.location), **self._loc("FDestStockLocId", ln.to_location)}
                    for ln in doc.lines
                ],
            }  # fmt: skip
        gain = doc.kind is AdjustmentKind.GAIN
        qty_key = "FGainQty" if gain else "FLossQty"
        return {
            "FBillNo": doc.key, "FBillTypeID": {"FNUMBER": c.gain_bill_type if gain else c.loss_bill_type},
            "FStockOrgId": org, "FOwnerTypeIdHead": "BD_OwnerOrg", "FOwnerIdHead": org, "FDate": date,
            "FNoteHead": doc.note,
            "FBillEntry": [
                {"FMaterialId": {"FNumber": ln.sku}, "FUnitID": {"FNumber": ln.unit},
                 "FStockId": {"FNumber": doc.warehouse}, **self._loc("FStockLocId", ln.location),
                 "FStockStatusId": {"FNumber": c.stock_status}, "FOwnerTypeId": "BD_OwnerOrg", "FOwnerid": org,
                 "FKeeperTypeId": "BD_KeeperOrg", "FKeeperId": org,
                 **({"FAcctQty": ln.book_qty} if ln.book_qty is not None else {}),
                 **({"FCountQty": ln.counted_qty} if ln.counted_qty is not None else {}),
                 qty_key: abs(ln.qty)}
                for ln in doc.lines
            ],
        }  # fmt: skip


def _response_status(data: Any) -> dict[str, Any] | None:
    """``Result.ResponseStatus`` of an answer (also inside a query's ``[[{...}]]`` error form), or None."""
    if (
        isinstance(data, list)
        and data
        and isinstance(data[0], list)
        and len(data[0]) == 1
        and isinstance(data[0][0], dict)
    ):
        data = data[0][0]
    if isinstance(data, dict):
        result = data.get("Result")
        if isinstance(result, dict) and isinstance(result.get("ResponseStatus"), dict):
            status: dict[str, Any] = result["ResponseStatus"]
            return status
    return None


def _errors(status: dict[str, Any]) -> str:
    errs = status.get("Errors") or []
    msgs = [str(e.get("Message") or "").strip() for e in errs if isinstance(e, dict)]
    return "；".join(m for m in msgs if m) or f"ErrorCode {status.get('ErrorCode')}"
