"""Yonyou U8+ OpenAPI (open platform ``api.yonyouup.com``; shared/research/cycle-counting.md §d2).

- Token: ``GET /system/token?from_account=&app_key=&app_secret=`` → ``token.id`` (cached ``expiresIn``, renewed
  5 minutes early). An answer whose ``errcode`` is in ``token_error_codes`` means the token is no longer
  valid: a new one is fetched and the call repeated once (the ERP did nothing), the trade id request of a
  write included.
- Every write needs a one-time trade id: ``GET /system/tradeid?from_account=&app_key=&token=`` → ``trade.id``,
  fetched fresh for each write.
- Reads: ``GET /api/{resource}/batch_get?from_account=&to_account=&app_key=&token=[&ds_sequence=]&page_index=
  &rows_per_page=`` → ``{"errcode": "0", "page_count": …, "<resource>": [...]}``: ``inventory`` (changed since
  ``modifydate_begin``), ``warehouse``, ``position`` (货位), ``currentstock`` (现存量), and the vouchers of
  ``erp.u8.movement_sources`` (from ``date_begin`` = the last voucher date seen minus
  ``movement_lookback_days``, since vouchers entered late carry an earlier date; lines in ``entry``; the time of
  a line is the voucher's ``maketime``, else its date).
- Writes: U8's public OpenAPI has no 盘点单 endpoint (research §d2), so gains are 其他入库单
  ``/api/otherin/add`` with the 收发类别 ``gain_rd_code`` (盘盈入库), losses 其他出库单 ``/api/otherout/add``
  with ``loss_rd_code`` (盘亏出库), and a mis-slot transfer an other-out from one position plus an other-in to
  the other (``<bill>-O``, ``<bill>-I``). Our bill number is the voucher ``code``; U8 keeps voucher codes
  unique, and before every add the code is looked up (``batch_get?code=``), so a voucher whose answer was lost
  is found and never added twice, whatever became of its trade id.

Field names beyond the research (``iinvrcost``, ``barcode``, ``modifydate``, ``invcode``/``whcode``/
``position``/``qty`` of current stock, ``maketime``, ``receivecode``) follow the fake in tests/fakes/erp_u8.py:
check them against the customer's OpenAPI catalogue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.config import ErpSettings, U8Settings
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

DUPLICATE_HINTS = ("重复", "已存在", "duplicate")


class U8Connector(ApiConnector):
    system = "u8"
    label = "用友 U8"

    def __init__(
        self, erp: ErpSettings, tz: ZoneInfo, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__(erp, tz)
        self.cfg: U8Settings = configured(erp.u8, self.system)
        self.login = Login(self._new_token, clock=clock)
        self.http = Http.of(
            self, sleep=sleep, secrets=lambda: (self.cfg.app_secret.get_secret_value(), self.login.value)
        )

    def _url(self, path: str) -> str:
        return f"{self.cfg.base_url.rstrip('/')}{path}"

    # -- token ---------------------------------------------------------------------------------------------

    async def _new_token(self) -> tuple[str, float]:
        resp = await self.http.send("GET", self._url("/system/token"), params={
            "from_account": self.cfg.from_account, "app_key": self.cfg.app_key,
            "app_secret": self.cfg.app_secret.get_secret_value()})  # fmt: skip
        data = self._ok(self.http.parse(resp, "token"), "token", login=True)
        tok = data.get("token") if isinstance(data.get("token"), dict) else None
        if not tok or not tok.get("id"):
            raise ErpBadResponse("U8 没有返回 token", "U8 sent no token")
        return str(tok["id"]), float(tok.get("expiresIn") or 7200)

    def _ok(self, data: Any, what: str, *, login: bool = False) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ErpBadResponse(f"U8 对 {what} 的回答格式不对", f"U8 answered {what} with a non-object")
        code = str(data.get("errcode"))
        if code == "0":
            return data
        msg = str(data.get("errmsg") or "")
        if not login and code in self.cfg.token_error_codes:
            raise ErpSessionExpired(f"U8 token 失效：{msg}", f"U8 token no longer valid: {msg}", code=code)
        raise ErpRejected(f"U8 {what} 失败（{code}）：{msg}", f"U8 {what} failed ({code}): {msg}",
                          code="login" if login else code)  # fmt: skip

    def _params(self, token: str, **extra: Any) -> dict[str, Any]:
        p: dict[str, Any] = {"from_account": self.cfg.from_account, "to_account": self.cfg.to_account,
                             "app_key": self.cfg.app_key, "token": token}  # fmt: skip
        if self.cfg.ds_sequence is not None:
            p["ds_sequence"] = self.cfg.ds_sequence
        p.update({k: v for k, v in extra.items() if v is not None})
        return p

    async def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                    trade: bool = False) -> dict[str, Any]:  # fmt: skip
        """A call; expired token: renewed and repeated once. ``trade``: a write with a fresh trade id."""

        async def once(token: str) -> dict[str, Any]:
            extra = dict(params or {})
            if trade:
                extra["tradeid"] = await self._tradeid(token)
            resp = await self.http.send(method, self._url(path), params=self._params(token, **extra), body=body,
                                        write=trade)  # fmt: skip
            return self._ok(self.http.parse(resp, path), path)

        return await self.login.renewing(once)

    async def _tradeid(self, token: str) -> str:
        resp = await self.http.send("GET", self._url("/system/tradeid"), params={
            "from_account": self.cfg.from_account, "app_key": self.cfg.app_key, "token": token})  # fmt: skip
        data = self._ok(self.http.parse(resp, "tradeid"), "tradeid")
        trade = data.get("trade")
        if not isinstance(trade, dict) or not trade.get("id"):
            raise ErpBadResponse("U8 没有返回 tradeid", "U8 sent no trade id")
        return str(trade["id"])

    async def _batches(self, resource: str, **params: Any) -> AsyncIterator[list[dict[str, Any]]]:
        index, size = 1, self.erp.page_size
        while True:
            data = await self._call("GET", f"/api/{resource}/batch_get",
                                    params={**params, "page_index": index, "rows_per_page": size})  # fmt: skip
            rows = data.get(resource, [])
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ErpBadResponse(
                    f"U8 {resource} 的回答里没有记录列表", f"U8's answer for {resource} has no list"
                )
            yield rows
            try:
                pages = int(data.get("page_count") or 1)
            except ValueError:
                raise ErpBadResponse(
                    f"U8 {resource} 的 page_count 不是数字", f"U8 sent a bad page_count for {resource}"
                ) from None
            if index >= pages or not rows:
                return
            index += 1

    async def check(self) -> list[str]:
        await self.login.get()
        async for _ in self._batches("warehouse"):
            break
        return [f"token 获取成功（{self.cfg.from_account} → 账套 {self.cfg.to_account}）/ token issued",
                "读取仓库：可以 / warehouses readable"]  # fmt: skip

    # -- pull ----------------------------------------------------------------------------------------------

    async def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        last = cursor
        async for rows in self._batches("inventory", modifydate_begin=cursor):
            recs = [self._item_row(r, sku="code", sku_zh="存货编码", name="name", spec="specs", unit="main_measure",
                                   cost="iinvrcost", barcodes="barcode") for r in rows]  # fmt: skip
            for r in rows:
                last = latest(last, str(r.get("modifydate") or ""))
            yield Page(recs, last)

    async def _locations(self) -> AsyncIterator[Page]:
        async for rows in self._batches("warehouse"):
            yield Page([self._warehouse_row(r, code="code", name="name") for r in rows], None)
        async for rows in self._batches("position"):
            yield Page([self._location_row(r, warehouse="warehousecode", code="code") for r in rows], None)

    async def _stock(self) -> AsyncIterator[Page]:
        async for rows in self._batches("currentstock"):
            yield Page([self._stock_row(r, sku="invcode", warehouse="whcode", location="position", qty="qty",
                                        lot="batch") for r in rows], None)  # fmt: skip

    async def _movements(self, cursor: str | None) -> AsyncIterator[Page]:
        marks = SourceMarks(cursor)
        for src in self.cfg.movement_sources:
            since = marks.get(src.source)
            # vouchers are filtered by their (business) date, which may be back-dated when entered late: look
            # back a few days; lines seen before are recognised by their key
            begin = since
            if since:
                begin = (
                    date.fromisoformat(since) - timedelta(days=self.cfg.movement_lookback_days)
                ).isoformat()
            async for rows in self._batches(src.source, date_begin=begin):
                recs = []
                for r in rows:
                    day = str(r.get("date") or "")[:10]
                    entries = r.get("entry") or []
                    if not isinstance(entries, list):
                        raise ErpBadResponse(
                            f"U8 {src.source} 的 entry 不是列表", f"U8 {src.source} entry is not a list"
                        )
                    for n, e in enumerate(entries, start=1):
                        recs.append(MovementRecord(
                            key=f"{src.source}:{r.get('id')}:{e.get('rowno') or n}",
                            sku=text(e.get("inventorycode"), "inventorycode", self.label, max_len=64) or "",
                            warehouse=text(r.get(src.warehouse_field), src.warehouse_field, self.label, max_len=50) or "",
                            location=(text(e.get(src.location_field), src.location_field, self.label, required=False,
                                           max_len=50) if src.location_field else None) or self.erp.default_location,
                            qty=src.sign * abs(decimal(e.get(src.qty_field), src.qty_field, self.label)),
                            type=MovementType(src.type),
                            occurred_at=local_time(str(r.get("maketime") or day), self.tz, self.label),
                            source_doc=text(r.get("code"), "code", self.label, required=False, max_len=100),
                        ))  # fmt: skip
                    since = latest(since, day)
                yield marks.page(recs, src.source, since)

    # -- write back ----------------------------------------------------------------------------------------

    def _parts(self, doc: PostingDoc) -> list[tuple[str, str, list[tuple[str, str, Any]]]]:
        """``(resource, voucher code, [(sku, position, qty)])`` for each voucher the document becomes."""
        if doc.kind is AdjustmentKind.TRANSFER:
            return [
                ("otherout", f"{doc.key}-O", [(ln.sku, ln.location, abs(ln.qty)) for ln in doc.lines]),
                (
                    "otherin",
                    f"{doc.key}-I",
                    [(ln.sku, ln.to_location or "", abs(ln.qty)) for ln in doc.lines],
                ),
            ]
        resource = "otherin" if doc.kind is AdjustmentKind.GAIN else "otherout"
        return [(resource, doc.key, [(ln.sku, ln.location, abs(ln.qty)) for ln in doc.lines])]

    async def _lookup(self, resource: str, code: str) -> str | None:
        data = await self._call("GET", f"/api/{resource}/batch_get", params={"code": code, "page_index": 1,
                                                                               "rows_per_page": 10})  # fmt: skip
        rows = [r for r in data.get(resource) or [] if isinstance(r, dict) and r.get("code") == code]
        if len(rows) > 1:
            raise ErpRejected(f"U8 里有多张单号为 {code} 的 {resource}，请人工处理",
                              f"U8 holds several {resource} vouchers coded {code}; resolve by hand")  # fmt: skip
        return str(rows[0].get("id")) if rows else None

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        ids = [await self._lookup(res, code) for res, code, _ in self._parts(doc)]
        if all(ids):
            return Posted(
                doc.key, ",".join(i for i in ids if i), tuple(code for _, code, _ in self._parts(doc))
            )
        return None

    async def post(self, doc: PostingDoc, progress: dict[str, Any], save: SaveProgress) -> Posted:
        ids = []
        for resource, code, lines in self._parts(doc):
            found = await self._lookup(resource, code)
            if found is None:
                body = {resource: self._voucher(doc, resource, code, lines)}
                try:
                    data = await self._call("POST", f"/api/{resource}/add", body=body, trade=True)
                except ErpRejected as exc:
                    if not any(h in str(exc) for h in DUPLICATE_HINTS):
                        raise
                    found = await self._lookup(resource, code)  # added meanwhile
                    if found is None:
                        raise
                else:
                    found = str(data.get("id") or "")
                    if not found:
                        raise ErpBadResponse(
                            f"U8 新增 {code} 后没有返回 id", f"U8 added {code} without an id"
                        )
                    await save({code: {"id": found, "tradeid": data.get("tradeid")}})
            ids.append(found)
        return Posted(doc.key, ",".join(ids), tuple(code for _, code, _ in self._parts(doc)))

    def _voucher(
        self, doc: PostingDoc, resource: str, code: str, lines: list[tuple[str, str, Any]]
    ) -> dict[str, Any]:
        rd = self.cfg.gain_rd_code if resource == "otherin" else self.cfg.loss_rd_code
        return {
            "code": code, "date": doc.created_at.astimezone(self.tz).date().isoformat(),
            "warehousecode": doc.warehouse, "receivecode": rd, "memory": doc.note,
            "entry": [{"inventorycode": sku, "quantity": qty,
                       **({"position": pos} if pos and pos != self.erp.default_location else {})}
                      for sku, pos, qty in lines],
        }  # fmt: skip
