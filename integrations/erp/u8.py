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
  the other (``<bill>-O``, ``<bill>-I``). Our bill number is the voucher ``code`` (a coding rule may replace
  it) and starts the ``memory`` (or goes in ``key_field``). Each add spends a trade id, noted before it is sent;
  once it answers, the voucher's id is stored and its U8 code read back (``/api/{resource}/get?id=``): that code
  is what pandian records. An add whose answer was lost is looked for by our number among the vouchers of its
  date and warehouse: one is that add's; several hold the posting; none sends the same add again with the same
  trade id, which U8 spends once: it is added now, or U8 says the trade id was spent (``30010``: then it is
  looked for again until ``erp.settle_s`` has passed, and held if it still does not show).

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

DUPLICATE_HINTS = ("重复", "已存在", "duplicate")
TRADE_SPENT = "30010"  # errcode: this trade id was used before (U8 carried out that write)


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
                    tradeid: str | None = None) -> dict[str, Any]:  # fmt: skip
        """A call; expired token: renewed and repeated once. ``tradeid``: a write, spending that trade id."""

        async def once(token: str) -> dict[str, Any]:
            extra = {**(params or {}), **({"tradeid": tradeid} if tradeid else {})}
            resp = await self.http.send(method, self._url(path), params=self._params(token, **extra), body=body,
                                        write=tradeid is not None)  # fmt: skip
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

    async def _voucher_by_id(self, resource: str, voucher_id: str) -> dict[str, Any] | None:
        data = await self._call("GET", f"/api/{resource}/get", params={"id": voucher_id})
        v = data.get(resource)
        return v if isinstance(v, dict) and v.get("id") is not None else None

    async def _by_key(self, resource: str, doc: PostingDoc, part: str) -> list[dict[str, Any]]:
        """The vouchers of that date and warehouse whose key field holds our number ``part``."""
        day = doc.created_at.astimezone(self.tz).date().isoformat()
        out = []
        async for rows in self._batches(resource, date_begin=day, date_end=day, warehousecode=doc.warehouse):
            out += [r for r in rows if carries(r.get(self.cfg.key_field), part)]
        return out

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        found = []
        for resource, part, _ in self._parts(doc):
            rows = await self._by_key(resource, doc, part)
            if len(rows) != 1:
                return None
            found.append(rows[0])
        codes = tuple(str(r.get("code")) for r in found)
        return Posted(",".join(codes), ",".join(str(r.get("id")) for r in found), (doc.key, *codes))

    async def post(self, doc: PostingDoc, journal: Journal) -> Posted:
        ids, codes = [], []
        for resource, part, lines in self._parts(doc):
            known = await self._resume(resource, part, doc, journal)
            if known is None:
                await self._add(resource, part, lines, doc, journal)
                known = await self._resume(resource, part, doc, journal)  # read back: U8's code for it
                assert known is not None
            ids.append(known["id"])
            codes.append(known["code"])
        return Posted(",".join(codes), ",".join(ids), (doc.key, *codes))

    async def _resume(
        self, resource: str, part: str, doc: PostingDoc, journal: Journal
    ) -> dict[str, str] | None:
        """The voucher this posting added for ``part`` (``{"id", "code"}``), as U8 has it: by its id once known;
        else found by our number after an add whose answer was lost; None when an add is due."""
        parts: dict[str, Any] = dict(journal.get("parts") or {})
        known = parts.get(part)
        if known and known.get("id"):
            v = await self._voucher_by_id(resource, str(known["id"]))
            if v is None:
                raise ErpHeld(f"pandian 新增过的 U8 单据 {known.get('code')}（id {known['id']}）已不在 U8 里（被删除？），请确认后处理",
                              f"the U8 voucher pandian added, {known.get('code')} (id {known['id']}), is no longer "
                              "there (deleted?); a person has to decide")  # fmt: skip
            now = {"id": str(v["id"]), "code": str(v.get("code") or known.get("code") or "")}
            if now != {k: known.get(k) for k in now}:
                parts[part] = {**known, **now}
                await journal.save({"parts": parts}, **self._columns(parts))
            return now
        found = await self._by_key(resource, doc, part)
        if len(found) > 1:
            raise several_carry("U8 ", "U8", part, [f"{resource} {r.get('code')}" for r in found],
                                self.cfg.key_field, self.cfg.key_field)  # fmt: skip
        if found:  # added before, its answer lost
            parts[part] = {"id": str(found[0]["id"]), "code": str(found[0].get("code") or "")}
            pending = journal.pending
            facts: dict[str, Any] = {"parts": parts}
            if pending is not None and pending.get("part") == part:
                facts["pending"] = None
            await journal.save(facts, **self._columns(parts))
            return parts[part]
        return None

    async def _add(self, resource: str, part: str, lines: list[tuple[str, str, Any]], doc: PostingDoc,
                   journal: Journal) -> None:  # fmt: skip
        pending = journal.pending
        if pending is not None and pending.get("part") == part and pending.get("tradeid"):
            tradeid = str(pending["tradeid"])  # the same add again, same trade id: U8 spends a trade id once
            again = True
        else:
            tradeid, again = await self.login.renewing(self._tradeid), False
            await journal.sending("add", part=part, resource=resource, tradeid=tradeid)
        body = {resource: self._voucher(doc, resource, part, lines)}
        try:
            data = await self._call("POST", f"/api/{resource}/add", body=body, tradeid=tradeid)
        except ErpSessionExpired:
            if not again:
                await journal.answered()  # refused for its token, twice: U8 did nothing
            raise
        except ErpRejected as exc:
            if exc.code == TRADE_SPENT:  # U8 carried out the add of that trade id, but does not show it
                if journal.settled():
                    raise ErpHeld(f"U8 说 {part} 的交易号 {tradeid} 已用过（单据已新增），但按{self.cfg.key_field}查不到这张单据",
                                  f"U8 says the trade id {tradeid} of {part} was spent (the voucher was added) but no "
                                  f"voucher carries {part} in {self.cfg.key_field}") from None  # fmt: skip
                raise journal.in_doubt(f"U8 说 {part} 已新增过，但还查不到",
                                       f"U8 says {part} was added but does not show it yet") from None  # fmt: skip
            if any(h in str(exc) for h in DUPLICATE_HINTS):  # our code is there (no numbering rule): ours
                rows = [r for r in await self._by_code(resource, part)]
                if len(rows) == 1:
                    parts = {
                        **dict(journal.get("parts") or {}),
                        part: {"id": str(rows[0]["id"]), "code": part},
                    }
                    await journal.answered({"parts": parts}, **self._columns(parts))
                    return
            await journal.answered()  # refused (an unknown trade id included): nothing was added
            raise
        voucher_id = str(data.get("id") or "")
        if not voucher_id:
            raise ErpBadResponse(f"U8 新增 {part} 后没有返回 id", f"U8 added {part} without an id")
        parts = {**dict(journal.get("parts") or {}), part: {"id": voucher_id, "tradeid": tradeid}}
        await journal.answered({"parts": parts}, **self._columns(parts))

    async def _by_code(self, resource: str, code: str) -> list[dict[str, Any]]:
        data = await self._call("GET", f"/api/{resource}/batch_get", params={"code": code, "page_index": 1,
                                                                               "rows_per_page": 10})  # fmt: skip
        return [r for r in data.get(resource) or [] if isinstance(r, dict) and r.get("code") == code]

    @staticmethod
    def _columns(parts: dict[str, Any]) -> dict[str, str | None]:
        """The vouchers' ids and U8 codes so far, for the posting row."""
        ids = [str(p["id"]) for p in parts.values() if p.get("id")]
        codes = [str(p["code"]) for p in parts.values() if p.get("code")]
        return {"doc_id": ",".join(ids) or None, "doc_no": ",".join(codes) or None}

    def _voucher(
        self, doc: PostingDoc, resource: str, code: str, lines: list[tuple[str, str, Any]]
    ) -> dict[str, Any]:
        rd = self.cfg.gain_rd_code if resource == "otherin" else self.cfg.loss_rd_code
        field = self.cfg.key_field
        keyed = (
            {"memory": keyed_note(code, doc.note)} if field == "memory" else {"memory": doc.note, field: code}
        )
        return {
            "code": code, "date": doc.created_at.astimezone(self.tz).date().isoformat(),
            "warehousecode": doc.warehouse, "receivecode": rd, **keyed,
            "entry": [{"inventorycode": sku, "quantity": qty,
                       **({"position": pos} if pos and pos != self.erp.default_location else {})}
                      for sku, pos, qty in lines],
        }  # fmt: skip
