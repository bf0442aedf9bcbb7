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
- Every read is kept to the stock organisation ``org`` in its ``FilterString``, as Kingdee filters: materials
  by ``FUseOrgId`` (a material exists once per organisation that uses it, with its own cost), warehouses by
  ``FUseOrgId`` (``BD_STOCK`` has no stock-organisation field), book stock by ``FStockOrgId``, documents by their
  source's ``org_field`` (``FStockOrgId``). A material that still comes twice is one record when the copies
  agree (their barcodes together) and is left out with a warning naming what differs when they do not.
- Writes: gains ``STK_StockCountGain`` (盘盈单, ``FGainQty``), losses ``STK_StockCountLoss`` (盘亏单,
  ``FLossQty``), mis-slot pairs ``STK_TransferDirect`` (直接调拨单): ``Save`` → ``Submit`` → ``Audit``. Our bill
  number goes as ``FBillNo``, but a numbering rule (编码规则) may replace it, so it also goes where Kingdee keeps
  it: the header note (``FNoteHead``; ``FNote`` on transfers), starting with it, or the custom field
  ``key_field``. Once a ``Save`` answers, Kingdee's ``FID`` and number are stored before anything else; every
  later step works on that ``FID`` and reads the bill's state (``FDocumentStatus``: A created, B submitted, C
  audited, D re-audit) by it, so a lost Submit or Audit answer is carried on from where the bill stands. A Save
  whose answer was lost is looked for by our number in the key field: one bill is that Save's; several, or a
  bill we saved that is gone, hold the posting for a person; none saves again only once ``erp.settle_s`` has
  passed and the same lookup finds an earlier bill of ours (else held). A Save refused because our
  ``FBillNo`` exists (no numbering rule) carries on with that bill. The ERP's number is what pandian records. A
  failed audit (closed period, negative stock…) is permanent: the bill stays submitted in Kingdee, the
  adjustment is marked failed with Kingdee's messages, and a retry after the fix audits that same bill.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from core.config import ErpSettings, KingdeeSettings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    ApiConnector,
    ErpBadResponse,
    ErpHeld,
    ErpRejected,
    ErpSessionExpired,
    ItemRecord,
    Journal,
    LocationRecord,
    MovementRecord,
    Page,
    Posted,
    PostingDoc,
    SourceMarks,
    StockRecord,
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

DYN = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService"
AUTH = "Kingdee.BOS.WebApi.ServicesStub.AuthService"
FORMS = {
    AdjustmentKind.GAIN: "STK_StockCountGain",
    AdjustmentKind.LOSS: "STK_StockCountLoss",
    AdjustmentKind.TRANSFER: "STK_TransferDirect",
}
NOTE_FIELD = {
    "STK_StockCountGain": "FNoteHead",
    "STK_StockCountLoss": "FNoteHead",
    "STK_TransferDirect": "FNote",
}
CONTEXT_LOST = 1  # ResponseStatus.MsgCode: the session (context) is gone
DUPLICATE_HINTS = ("已存在", "已经存在", "重复", "already exist")
log = logging.getLogger("pandian.erp.kingdee")


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
        self, erp: ErpSettings, tz: ZoneInfo, *, stamp: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:  # fmt: skip
        """``stamp``: the time of day, for the signed login Kingdee checks."""
        super().__init__(erp, tz)
        self.stamp = stamp
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
            ts = str(int(self.stamp().timestamp()))
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
        stocks = await self.query("BD_STOCK", ["FNumber"], _and("FDocumentStatus='C'", self._org("FUseOrgId")),
                                  limit=1)  # fmt: skip
        return [
            f"登录成功：账套 {self.cfg.acct_id}，用户 {self.cfg.username}（{self.cfg.login}）/ logged in",
            f"读取组织 {self.cfg.org} 的仓库 BD_STOCK：{'可以' if stocks is not None else '失败'} / warehouses readable",
        ]

    # -- pull ----------------------------------------------------------------------------------------------

    def _org(self, field: str | None) -> str:
        """The FilterString condition that keeps a read to the configured organisation."""
        return f"{field}.FNumber='{q(self.cfg.org)}'" if field else ""

    async def _items(self, cursor: str | None) -> AsyncIterator[Page]:
        c = self.cfg
        fields = ["FMATERIALID", "FNumber", "FName", "FSpecification", "FBaseUnitId.FNumber", c.cost_field,
                  c.barcode_field, "FModifyDate"]  # fmt: skip
        # a material is kept once per organisation that uses it (its own id, cost, unit): ours only
        flt = _and(
            "FDocumentStatus='C'", self._org("FUseOrgId"), f"FModifyDate>='{q(cursor)}'" if cursor else ""
        )
        last = cursor
        seen: dict[str, ItemRecord] = {}  # this pull's materials, by number
        conflicting: set[str] = set()
        async for rows in self._pages("BD_MATERIAL", fields, flt, "FModifyDate ASC,FMATERIALID ASC"):
            recs: dict[str, ItemRecord] = {}
            warnings: list[str] = []
            skipped = 0
            for fid, number, name, spec, unit, cost, barcode, modified in rows:
                sku = text(number, "物料编码 FNumber", self.label, max_len=64)
                assert sku is not None
                rec = ItemRecord(
                    sku=sku, name=text(name, "物料名称 FName", self.label) or sku,
                    spec=text(spec, "FSpecification", self.label, required=False),
                    unit=text(unit, "FBaseUnitId", self.label, required=False, max_len=20),
                    unit_cost=decimal(cost, c.cost_field, self.label) if cost not in (None, "") else None,
                    barcodes=tuple(b for b in str(barcode or "").replace("，", ",").split(",") if b.strip()),
                )  # fmt: skip
                last = latest(last, kd_time(modified))
                if sku in conflicting:
                    skipped += 1
                    continue
                prev = recs.get(sku) or seen.get(sku)
                if prev is None:
                    recs[sku] = rec
                    continue
                differ = _differences(prev, rec)
                if differ:  # reported, not folded: which copy is right is for a person to say
                    conflicting.add(sku)
                    skipped += 1 + (recs.pop(sku, None) is not None)
                    written = (
                        ""
                        if sku not in seen
                        else "（前一页的那条已写入 / the copy on an earlier page was written）"
                    )
                    warnings.append(
                        f"物料 {sku} 在组织 {c.org} 中出现多次且{'、'.join(zh for zh, _ in differ)}不同"
                        f"（{'；'.join(en for _, en in differ)}，FMATERIALID {fid}），未同步{written}，请在金蝶里处理 / "
                        f"material {sku} appears more than once in organisation {c.org} with different "
                        f"{', '.join(en.split(' ')[0] for _, en in differ)} ({'; '.join(en for _, en in differ)}): "
                        "not synced, resolve it in Kingdee"
                    )
                    continue
                # the same material again (one row per barcode): one record, its barcodes together
                recs[sku] = replace(prev, barcodes=tuple(dict.fromkeys(prev.barcodes + rec.barcodes)))
            seen.update(recs)
            yield Page(list(recs.values()), last, warnings, skipped)

    async def _locations(self) -> AsyncIterator[Page]:
        fields = ["FNumber", "FName", "FIsOpenLocation"]
        flt = _and("FDocumentStatus='C'", self._org("FUseOrgId"))
        async for rows in self._pages("BD_STOCK", fields, flt, "FNumber ASC"):
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
        async for rows in self._pages(
            "STK_Inventory", fields, self._org("FStockOrgId"), "FMaterialId.FNumber ASC,FStockId.FNumber ASC"
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
            flt = _and("FDocumentStatus='C'", self._org(src.org_field),
                       f"FApproveDate>='{q(since)}'" if since else "")  # fmt: skip
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

    def key_field(self, form: str) -> str:
        """Where our bill number lives on a bill: Kingdee keeps it there whatever its numbering rule does."""
        return self.cfg.key_field or NOTE_FIELD[form]

    async def _bills(self, form: str, flt: str) -> list[Bill]:
        rows = await self.query(form, ["FID", "FBillNo", "FDocumentStatus", self.key_field(form)],
                                _and(flt, self._org("FStockOrgId")))  # fmt: skip
        return [Bill(str(fid), str(no or ""), str(st or ""), kept) for fid, no, st, kept in rows]

    async def _bill(self, form: str, fid: str) -> Bill | None:
        """The bill with Kingdee's id ``fid`` (its number, its state, what its key field holds)."""
        found = await self._bills(form, f"FID={fid}" if fid.isdigit() else f"FID='{q(fid)}'")
        return found[0] if found else None

    async def _by_key(self, form: str, key: str) -> list[Bill]:
        """The bills whose key field holds our bill number ``key``."""
        field = self.key_field(form)
        flt = f"{field}='{q(key)}'" if self.cfg.key_field else f"{field} like '%{q(key)}%'"
        return [b for b in await self._bills(form, flt) if carries(b.kept, key)]

    async def find_posted(self, doc: PostingDoc) -> Posted | None:
        form = FORMS[doc.kind]
        found = await self._by_key(form, doc.key)
        if len(found) == 1 and found[0].status == "C":
            return Posted(found[0].number, found[0].fid, (doc.key, found[0].number))
        return None

    async def post(self, doc: PostingDoc, journal: Journal) -> Posted:
        form = FORMS[doc.kind]
        bill = await self._resume(form, doc, journal)
        if bill is None:
            await self._save(form, doc, journal)
            bill = await self._resume(form, doc, journal)  # read back: its number, state, our key kept
            assert bill is not None
        if bill.status in ("A", "D"):
            await self._operate("Submit", form, bill, doc.key)
            bill = replace(bill, status="B")
            await journal.save({"status": bill.status})
        if bill.status == "B":
            await self._operate("Audit", form, bill, doc.key)
            bill = replace(bill, status="C")
            await journal.save({"status": bill.status})
        if bill.status != "C":
            raise ErpRejected(f"金蝶单据 {bill.number}（我方单号 {doc.key}）状态为 {bill.status}，无法继续",
                              f"Kingdee bill {bill.number} (our {doc.key}) is in state {bill.status}")  # fmt: skip
        return Posted(bill.number, bill.fid, (doc.key, bill.number))

    async def _resume(self, form: str, doc: PostingDoc, journal: Journal) -> Bill | None:
        """The bill this posting made, as Kingdee has it now: by its id once one is known; else found by our
        key, after a Save whose answer was lost; None when Kingdee provably does not hold it (a Save is due)."""
        fid = journal.get("id")
        if fid:
            bill = await self._bill(form, str(fid))
            if bill is None:
                raise ErpHeld(
                    f"pandian 保存过的金蝶单据 {journal.get('number')}（内码 {fid}）已不在金蝶里（被删除？），请确认后处理",
                    f"the Kingdee bill pandian saved, {journal.get('number')} (id {fid}), is no longer there "
                    "(deleted?); a person has to decide",
                )  # fmt: skip
            await self._learnt(bill, doc, journal)
            return bill
        found = await self._by_key(form, doc.key)
        if len(found) > 1:
            raise several_carry("金蝶", "Kingdee", doc.key, [f"{b.number}（{b.status}）" for b in found],
                                self.key_field(form), self.key_field(form))  # fmt: skip
        if found:  # saved before, its answer lost: carried on from here, never saved again
            await self._learnt(found[0], doc, journal, adopted=True)
            return found[0]
        if journal.pending is None:
            return None  # nothing was ever sent
        if not journal.settled():
            raise journal.in_doubt(f"金蝶保存 {doc.key} 的回答丢失，暂时查不到这张单据",
                                   f"the answer to Kingdee's Save of {doc.key} was lost and the bill is not to be seen yet")  # fmt: skip
        await self._prove_absent(form, doc, journal)
        await journal.answered()  # not saved: it is saved now, once
        return None

    async def _learnt(self, bill: Bill, doc: PostingDoc, journal: Journal, *, adopted: bool = False) -> None:
        kept = carries(bill.kept, doc.key)
        if not kept and journal.get("key_kept") is None:
            log.warning("Kingdee bill %s (id %s) does not keep our %s in %s: a lost answer could not be resolved",
                        bill.number, bill.fid, doc.key, self.key_field(FORMS[doc.kind]))  # fmt: skip
        facts = {"id": bill.fid, "number": bill.number, "status": bill.status, "key_kept": kept}
        if adopted:  # the Save whose answer was lost is resolved: this is its bill
            await journal.answered(facts, doc_id=bill.fid, doc_no=bill.number)
        elif any(journal.get(k) != v for k, v in facts.items()):
            await journal.save(facts, doc_id=bill.fid, doc_no=bill.number)

    async def _prove_absent(self, form: str, doc: PostingDoc, journal: Journal) -> None:
        """Not finding our key proves absence only if the same lookup finds the last bill of ours of this kind
        (none yet: the configured key field is trusted)."""
        field, w = self.key_field(form), journal.witness
        if w is None:
            log.info(
                "no earlier %s bill to check the %s lookup against; trusting it for %s", form, field, doc.key
            )
            return
        if w.kept is False or not any(b.fid == w.doc_id for b in await self._by_key(form, w.key)):
            raise ErpHeld(
                f"金蝶保存 {doc.key} 的回答丢失，按{field}查不到；但按{field}连已过账的 {w.key}（{w.doc_no}）也查不到，"
                "金蝶没有保留我方单号，无法确认它不在",
                f"the answer to Kingdee's Save of {doc.key} was lost and no bill carries it in {field}; but that lookup "
                f"does not find the posted {w.key} ({w.doc_no}) either: Kingdee does not keep our number there, so "
                "absence cannot be proven",
            )  # fmt: skip

    async def _save(self, form: str, doc: PostingDoc, journal: Journal) -> None:
        body = {"formid": form, "data": {"IsAutoSubmitAndAudit": False, "Model": self._model(doc)}}
        await journal.sending("save", form=form)
        try:
            result = await self._call("Save", body, write=True)
        except ErpSessionExpired:
            await journal.answered()  # refused for its session, twice: Kingdee did nothing
            raise
        status = _response_status(result)
        if status is None:  # not an answer Kingdee gives: the outcome is unknown
            raise ErpBadResponse(f"金蝶对保存 {doc.key} 的回答里没有 ResponseStatus",
                                 f"Kingdee answered the Save of {doc.key} without a ResponseStatus")  # fmt: skip
        if not status.get("IsSuccess"):
            if any(h in _errors(status) for h in DUPLICATE_HINTS):
                # our FBillNo is there (no numbering rule replaced it): that bill is ours, carried on
                mine = await self._bills(form, f"FBillNo='{q(doc.key)}'")
                if len(mine) == 1:
                    await journal.answered({"id": mine[0].fid, "number": mine[0].number},
                                           doc_id=mine[0].fid, doc_no=mine[0].number)  # fmt: skip
                    return
            await journal.answered()
            raise ErpRejected(f"金蝶保存 {doc.key} 失败：{_errors(status)}",
                              f"Kingdee refused to save {doc.key}: {_errors(status)}")  # fmt: skip
        entities = status.get("SuccessEntitys") or []
        first = entities[0] if entities and isinstance(entities[0], dict) else {}
        fid = first.get("Id") if first else None
        if fid is None:  # saved, but which bill? the next try finds it by our key
            raise ErpBadResponse(f"金蝶保存 {doc.key} 成功但没有返回单据内码",
                                 f"Kingdee saved {doc.key} without returning its id")  # fmt: skip
        number = str(first.get("Number") or (result.get("Number") if isinstance(result, dict) else "") or "")
        await journal.answered({"id": str(fid), "number": number or None, "status": "A"}, doc_id=str(fid),
                               doc_no=number or None)  # fmt: skip

    async def _operate(self, op: str, form: str, bill: Bill, key: str) -> None:
        result = await self._call(op, {"formid": form, "data": {"Ids": bill.fid}}, write=True)
        status = _response_status(result)
        if status is None:
            raise ErpBadResponse(f"金蝶对 {op} {bill.number} 的回答里没有 ResponseStatus",
                                 f"Kingdee answered {op} of {bill.number} without a ResponseStatus")  # fmt: skip
        if not status.get("IsSuccess"):
            zh = {"Submit": "提交", "Audit": "审核"}[op]
            raise ErpRejected(f"金蝶{zh} {bill.number}（我方单号 {key}）失败：{_errors(status)}",
                              f"Kingdee {op.lower()} of {bill.number} (our {key}) failed: {_errors(status)}",
                              code=f"{op.lower()}_failed")  # fmt: skip

    def _loc(self, field: str, code: str | None) -> dict[str, Any]:
        if not code or code == self.erp.default_location:
            return {}
        return {field: {f"{field.upper()}__{self.cfg.location_flex}": {"FNumber": code}}}

    def _keyed(self, doc: PostingDoc, note_field: str) -> dict[str, Any]:
        """The header note, and our bill number where Kingdee keeps it: in the note, or in the custom field."""
        if self.cfg.key_field:
            return {note_field: doc.note, self.cfg.key_field: doc.key}
        return {note_field: keyed_note(doc.key, doc.note)}

    def _model(self, doc: PostingDoc) -> dict[str, Any]:
        c = self.cfg
        org = {"FNumber": c.org}
        date = doc.created_at.astimezone(self.tz).date().isoformat()
        if doc.kind is AdjustmentKind.TRANSFER:
            return {
                "FBillNo": doc.key, "FBillTypeID": {"FNUMBER": c.transfer_bill_type}, "FStockOutOrgId": org,
                "FStockOrgId": org, "FDate": date, **self._keyed(doc, "FNote"),
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
            **self._keyed(doc, "FNoteHead"),
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


@dataclass(frozen=True, slots=True)
class Bill:
    """A count or transfer bill as Kingdee reports it."""

    fid: str  # FID, Kingdee's id
    number: str  # FBillNo: Kingdee's number (ours only when no numbering rule replaced it)
    status: str  # FDocumentStatus: A created, B submitted, C audited, D re-audit
    kept: Any  # what the key field holds


def _and(*conditions: str) -> str:
    return " and ".join(c for c in conditions if c)


def _differences(a: ItemRecord, b: ItemRecord) -> list[tuple[str, str]]:
    """What two copies of one material disagree on (barcodes add up; the rest must agree)."""
    out = []
    for attr, zh in (("unit_cost", "成本"), ("unit", "单位"), ("name", "名称"), ("spec", "规格")):
        x, y = getattr(a, attr), getattr(b, attr)
        if x != y:
            out.append((zh, f"{attr} {x} / {y}"))
    return out


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
