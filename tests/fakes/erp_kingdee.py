"""A fake Kingdee K/3 Cloud WebAPI (``POST /k3cloud/{Service}.common.kdsvc``) over ``ErpFake``.

Speaks what integrations/erp/kingdee.py relies on (shared/research/cycle-counting.md §d1):

- ``AuthService.LoginByAppSecret`` (``parameters``) and ``LoginBySign`` (sha256 of the sorted values):
  ``LoginResultType`` 1 with ``KDSVCSessionId`` and the ``kdservice-sessionid`` cookie; wrong credentials give
  ``LoginResultType`` 0 and a message. Business calls without a live session answer ``MsgCode`` 1 ("会话信息已
  丢失，请重新登录") in the call's own shape (a query's errors come as ``[[{"Result": …}]]``).
- ``ExecuteBillQuery`` on BD_MATERIAL, BD_STOCK, STK_Inventory, the movement forms and the count / transfer
  bills, with ``FilterString`` (``a op 'v'`` and ``a like '%v%'``, joined by ``and``), ``OrderString``,
  ``StartRow``/``Limit``. An unknown field key (selected or filtered on) is an error, as in Kingdee, whether or
  not rows match. Every query is recorded (``queries``).
- Several organisations: the fake's own data is organisation ``org`` (100); ``add_org("101")`` gives another
  one (an ``ErpFake`` of its own) whose materials, warehouses, stock and documents the queries return too,
  each row carrying its organisation (``FUseOrgId.FNumber`` on materials and warehouses, ``FStockOrgId.FNumber``
  on stock and documents), so only a ``FilterString`` on those keeps them apart, as in Kingdee. The same
  material number exists once per organisation, each copy with its own id and cost; ``extra_materials`` are
  more rows of organisation ``org`` (a material listed twice: one row per barcode, or a data defect).
- ``Save`` (bill number unique per form: a second one is refused "已存在"; unknown materials refused). Under a
  numbering rule (``numbering = "PYD"``, 编码规则) the bill gets Kingdee's own number, whatever ``FBillNo`` says;
  the header note (``FNoteHead``, ``FNote`` on transfers) and the custom fields in ``custom_fields`` are kept as
  sent, unless ``keeps_notes`` is off (a tenant whose plug-in clears them). ``Submit`` (A/D → B), ``Audit``
  (B → C, applies the stock change to the ledger; ``refuse()`` makes the audit fail with a message, like a
  closed period).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes.erp_common import TZ, ErpFake, FakeDoc, FakeItem, fault_middleware

AUTH = "Kingdee.BOS.WebApi.ServicesStub.AuthService."
DYN = "Kingdee.BOS.WebApi.ServicesStub.DynamicFormService."
FLEX = "FF100001"
MOVEMENT_FORMS = {"STK_InStock": ("receipt", "FRealQty", "FInStockEntry_FEntryID"),
                  "SAL_OUTSTOCK": ("issue", "FRealQty", "FEntity_FEntryID")}  # fmt: skip
BILL_FORMS = {"STK_StockCountGain": "gain", "STK_StockCountLoss": "loss", "STK_TransferDirect": "transfer"}
NOTE_FIELD = {
    "STK_StockCountGain": "FNoteHead",
    "STK_StockCountLoss": "FNoteHead",
    "STK_TransferDirect": "FNote",
}
STATUS = {"saved": "A", "submitted": "B", "audited": "C"}
LOC = f"FStockLocId.{FLEX}.FNumber"
FIELDS = {
    "BD_MATERIAL": {"FMATERIALID", "FNumber", "FName", "FSpecification", "FBaseUnitId.FNumber", "FRefCost",
                    "FBARCODE", "FModifyDate", "FDocumentStatus", "FUseOrgId.FNumber", "FCreateOrgId.FNumber"},
    "BD_STOCK": {"FStockId", "FNumber", "FName", "FIsOpenLocation", "FDocumentStatus", "FUseOrgId.FNumber",
                 "FCreateOrgId.FNumber"},
    "STK_Inventory": {"FMaterialId.FNumber", "FStockId.FNumber", LOC, "FLot.FNumber", "FBaseQty",
                      "FStockOrgId.FNumber"},
}  # fmt: skip
_COND = re.compile(
    r"^\s*([\w.]+)\s*(>=|<=|<>|=|>|<|\s[Ll][Ii][Kk][Ee]\s)\s*(?:'((?:[^']|'')*)'|(-?[\d.]+))\s*$"
)


def kd(dt: datetime) -> str:
    return dt.astimezone(TZ).replace(tzinfo=None).isoformat(timespec="seconds")


class KingdeeFake(ErpFake):
    def __init__(self) -> None:
        super().__init__()
        self.acct_id, self.username, self.app_id, self.app_secret = (
            "ACCT01",
            "pandian",
            "APP01_x",
            "kd-s3cret-42",
        )
        self.org = "100"
        self.orgs: dict[str, ErpFake] = {}  # the other organisations of the data centre
        self.custom_fields: set[str] = set()  # header fields the tenant added to the bill forms (F_PD_KEY …)
        self.extra_materials: list[
            FakeItem
        ] = []  # more BD_MATERIAL rows of organisation ``org`` (duplicates)
        self.queries: list[tuple[str, str]] = []
        self.saves = 0

    def add_org(self, org: str) -> ErpFake:
        """Another stock organisation: add its materials, warehouses, stock and documents to what this returns."""
        other = ErpFake()
        other._seq = 100_000 * (len(self.orgs) + 1)  # ids are unique across the data centre
        self.orgs[org] = other
        return other

    def books(self) -> list[tuple[str, ErpFake]]:
        return [(self.org, self), *sorted(self.orgs.items())]

    def bills(self, key: str) -> list[FakeDoc]:
        return self.find_doc(key)


def _status(ok: bool, errors: list[str] | None = None, entities: list[dict[str, Any]] | None = None,
            msgcode: int = 0) -> dict[str, Any]:  # fmt: skip
    return {"Result": {"ResponseStatus": {
        "ErrorCode": 0 if ok else 500, "IsSuccess": ok,
        "Errors": [{"FieldName": None, "Message": m, "DIndex": 0} for m in errors or []],
        "SuccessEntitys": entities or [], "SuccessMessages": [], "MsgCode": msgcode}}}  # fmt: skip


def _conditions(text: str) -> list[tuple[str, str, Any]]:
    out = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        m = _COND.match(part)
        if not m:
            raise ValueError(f"过滤条件无法解析：{part}")
        field, op, s, n = m.groups()
        out.append((field, op.strip().lower(), Decimal(n) if n is not None else s.replace("''", "'")))
    return out


def _cmp(value: Any, op: str, want: Any) -> bool:
    if op == "like":
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(want))
        return re.fullmatch(pattern, str(value if value is not None else ""), flags=re.DOTALL) is not None
    if isinstance(want, Decimal):
        v: Any = Decimal(str(value or 0))
    else:
        v, want = str(value if value is not None else "").replace("T", " "), str(want).replace("T", " ")
    return {"=": v == want, "<>": v != want, ">=": v >= want, "<=": v <= want, ">": v > want, "<": v < want}[
        op
    ]


def _sort_key(value: Any) -> tuple[int, Decimal, str]:
    """Numbers in number order (ids), the rest as text, as the database behind Kingdee sorts them."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return (0, Decimal(value), "")
    return (1, Decimal(0), str(value if value is not None else ""))


def build_kingdee_app(fake: KingdeeFake) -> web.Application:
    def fields_of(form: str) -> set[str]:
        if form in FIELDS:
            return FIELDS[form]
        if form in MOVEMENT_FORMS:
            _, qty_field, line_field = MOVEMENT_FORMS[form]
            return {"FID", "FBillNo", line_field, "FMaterialId.FNumber", "FStockId.FNumber", LOC, qty_field,
                    "FApproveDate", "FDocumentStatus", "FStockOrgId.FNumber"}  # fmt: skip
        if form in BILL_FORMS:
            return {"FID", "FBillNo", "FDocumentStatus", "FStockOrgId.FNumber", "FDate", NOTE_FIELD[form],
                    *fake.custom_fields}  # fmt: skip
        return set()  # the other movement sources the connector is configured with: none in this fake

    def rows_of(form: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for org, book in fake.books():
            if form == "BD_MATERIAL":
                extra = fake.extra_materials if book is fake else []
                out += [{"FMATERIALID": i.id, "FNumber": i.sku, "FName": i.name, "FSpecification": i.spec,
                         "FBaseUnitId.FNumber": i.unit, "FRefCost": i.cost, "FBARCODE": ",".join(i.barcodes),
                         "FModifyDate": kd(i.modified), "FDocumentStatus": "C", "FUseOrgId.FNumber": org,
                         "FCreateOrgId.FNumber": fake.org} for i in [*book.items.values(), *extra]]  # fmt: skip
            elif form == "BD_STOCK":
                out += [{"FStockId": n, "FNumber": code, "FName": name, "FIsOpenLocation": has, "FDocumentStatus": "C",
                         "FUseOrgId.FNumber": org, "FCreateOrgId.FNumber": org}
                        for n, (code, (name, has)) in enumerate(sorted(book.warehouses.items()), start=1)]  # fmt: skip
            elif form == "STK_Inventory":
                out += [{"FMaterialId.FNumber": sku, "FStockId.FNumber": wh,
                         LOC: loc if book.warehouses[wh][1] else None,
                         "FLot.FNumber": None, "FBaseQty": qty, "FStockOrgId.FNumber": org}
                        for (sku, wh, loc), qty in sorted(book.stock.items())]  # fmt: skip
            elif form in MOVEMENT_FORMS:
                flow, qty_field, line_field = MOVEMENT_FORMS[form]
                out += [{"FID": m.doc_id, "FBillNo": m.doc_no, line_field: m.line, "FMaterialId.FNumber": m.sku,
                         "FStockId.FNumber": m.warehouse, LOC: m.location if book.warehouses[m.warehouse][1] else None,
                         qty_field: m.qty, "FApproveDate": kd(m.at), "FDocumentStatus": "C", "FStockOrgId.FNumber": org}
                        for m in book.movements if m.flow == flow]  # fmt: skip
        if form in BILL_FORMS:
            out = [{"FID": d.id, "FBillNo": d.key, "FDocumentStatus": STATUS[d.status], "FDate": d.extra.get("date"),
                    "FStockOrgId.FNumber": d.extra.get("org"), NOTE_FIELD[form]: d.extra.get("note"),
                    **{f: d.extra.get("custom", {}).get(f) for f in fake.custom_fields}}
                   for d in fake.docs.values() if d.kind == BILL_FORMS[form]]  # fmt: skip
        return out

    def query(data: dict[str, Any]) -> Any:
        form = data["FormId"]
        fields = [f.strip() for f in data["FieldKeys"].split(",")]
        fake.queries.append((form, data.get("FilterString", "")))
        try:
            conds = _conditions(data.get("FilterString") or "")
        except ValueError as exc:
            return [[_status(False, [str(exc)])]]
        known = fields_of(form)
        for f in fields + [c[0] for c in conds]:
            if known and f not in known:
                return [[_status(False, [f"表单 {form} 中不存在字段 {f}"])]]
        rows = [r for r in rows_of(form) if all(_cmp(r.get(f), op, v) for f, op, v in conds)]
        for part in reversed([p.strip() for p in (data.get("OrderString") or "").split(",") if p.strip()]):
            key, *direction = part.split()
            rows.sort(key=lambda r, k=key: _sort_key(r.get(k)),
                      reverse=bool(direction) and direction[0].upper() == "DESC")  # fmt: skip
        start, limit = int(data.get("StartRow") or 0), int(data.get("Limit") or 0)
        rows = rows[start : start + limit] if limit else rows[start:]
        return [[r.get(f) for f in fields] for r in rows]

    def save(body: dict[str, Any]) -> Any:
        form = body["formid"]
        model = body["data"]["Model"]
        proposed = model.get("FBillNo")
        number = fake.number(proposed)
        if any(d.key == number and d.kind == BILL_FORMS[form] for d in fake.docs.values()):
            return _status(False, [f"单据编号{number}已存在，请修改"])
        lines = []
        for e in model.get("FBillEntry", []):
            sku = e["FMaterialId"]["FNumber"]
            if sku not in fake.items:
                return _status(False, [f"物料编码“{sku}”不存在或未审核"])
            if form == "STK_TransferDirect":
                src = next(iter(e.get("FSrcStockLocId", {}).values()), {}).get("FNumber", "-")
                dst = next(iter(e.get("FDestStockLocId", {}).values()), {}).get("FNumber", "-")
                lines.append(
                    {"sku": sku, "location": src, "to_location": dst, "qty": Decimal(str(e["FQty"]))}
                )
                wh = e["FSrcStockId"]["FNumber"]
            else:
                loc = next(iter(e.get("FStockLocId", {}).values()), {}).get("FNumber", "-")
                qty = Decimal(str(e.get("FGainQty") or e.get("FLossQty")))
                lines.append({"sku": sku, "location": loc, "to_location": None,
                              "qty": qty if form == "STK_StockCountGain" else -qty})  # fmt: skip
                wh = e["FStockId"]["FNumber"]
        kept = fake.keeps_notes
        extra = {"model": model, "org": (model.get("FStockOrgId") or {}).get("FNumber"), "date": model.get("FDate"),
                 "note": model.get(NOTE_FIELD[form]) if kept else "",
                 "custom": {f: model.get(f) for f in fake.custom_fields if kept}}  # fmt: skip
        doc = FakeDoc(fake.next_id(), number, BILL_FORMS[form], wh, lines, "saved", extra, ref=proposed)
        fake.docs[doc.id] = doc
        fake.saves += 1
        return {
            **_status(True, entities=[{"Id": doc.id, "Number": number, "DIndex": 0}]),
            "Id": doc.id,
            "Number": number,
        }

    def operate(op: str, body: dict[str, Any]) -> Any:
        ids = [int(x) for x in str(body["data"]["Ids"]).split(",") if x]
        for i in ids:
            doc = fake.docs.get(i)
            if doc is None:
                return _status(False, [f"单据内码 {i} 不存在"])
            if op == "Submit":
                if doc.status != "saved":
                    return _status(False, [f"单据 {doc.key} 不是创建状态，不能提交"])
                doc.status = "submitted"
            elif op == "Audit":
                if doc.status != "submitted":
                    return _status(False, [f"单据 {doc.key} 不是审核中状态，不能审核"])
                reason = fake.take_reject()
                if reason:
                    return _status(False, [f"{doc.key} 审核失败：{reason}"])
                doc.status = "audited"
                fake.apply(doc)
        return _status(True, entities=[{"Id": i, "Number": fake.docs[i].key} for i in ids])

    async def handler(request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.json_response(_status(False, ["请求格式错误"]))
        if service == AUTH + "LoginByAppSecret":
            acct, user, app_id, secret, _lcid = body["parameters"]
            ok = (acct, user, app_id, secret) == (fake.acct_id, fake.username, fake.app_id, fake.app_secret)
            return login(ok)
        if service == AUTH + "LoginBySign":
            want = hashlib.sha256("".join(sorted([fake.acct_id, fake.username, fake.app_id, fake.app_secret,
                                                   str(body["timestamp"])])).encode()).hexdigest()  # fmt: skip
            return login(body["sign"] == want and body["acctID"] == fake.acct_id)
        if not service.startswith(DYN):
            return web.Response(status=404, text="no such service")
        op = service[len(DYN) :]
        sid = request.headers.get("kdservice-sessionid") or request.cookies.get("kdservice-sessionid")
        if sid not in fake.sessions:
            lost = _status(False, ["会话信息已丢失，请重新登录"], msgcode=1)
            return web.json_response([[lost]] if op == "ExecuteBillQuery" else lost)
        if op == "ExecuteBillQuery":
            return web.json_response(query(body["data"]), dumps=_dumps)
        if op == "Save":
            return web.json_response(save(body), dumps=_dumps)
        if op in ("Submit", "Audit"):
            return web.json_response(operate(op, body), dumps=_dumps)
        return web.json_response(_status(False, [f"不支持的操作 {op}"]))

    def login(ok: bool) -> web.Response:
        if not ok:
            return web.json_response(
                {"LoginResultType": 0, "Message": "用户名或密码错误", "KDSVCSessionId": None}
            )
        sid = fake.log_in()
        resp = web.json_response({"LoginResultType": 1, "Message": "", "KDSVCSessionId": sid,
                                  "Context": {"UserName": fake.username, "DBid": fake.acct_id}})  # fmt: skip
        resp.set_cookie("kdservice-sessionid", sid)
        return resp

    app = web.Application(middlewares=[fault_middleware(fake, lambda r: r.match_info.get("service", r.path))])
    app.router.add_post("/k3cloud/{service}.common.kdsvc", handler)
    return app


def _dumps(obj: Any) -> str:
    return json.dumps(
        obj, ensure_ascii=False, default=lambda v: float(v) if isinstance(v, Decimal) else str(v)
    )
