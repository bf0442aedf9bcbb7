"""The ERP connectors' pure pieces: settings, documents as JSON, recognising our own documents, field parsing
with clear messages, secrets masked, back-off, the failure message finance reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.config import ErpSettings, Settings
from core.enums import AdjustmentKind, MovementType
from integrations.erp.base import (
    DocLine,
    ErpBadResponse,
    ErpSessionExpired,
    MovementRecord,
    PostingDoc,
    SourceMarks,
    decimal,
    latest,
    text,
)
from integrations.erp.http import REFRESH_MARGIN_S, Http, Login, dumps
from integrations.erp.kingdee import _errors, _response_status, kd_time, q
from integrations.erp.posting import backoff, doc_key, failure_text
from integrations.erp.sap import lit, movement_type, odata_date, parse_odata_date
from integrations.erp.sync import is_ours
from integrations.erp.yonbip import signature

KINGDEE = {"server_url": "http://erp/k3cloud/", "acct_id": "A", "username": "u", "app_id": "i", "app_secret": "s3cr3t!",
           "org": "100"}  # fmt: skip


def test_spreadsheet_is_the_default_and_an_erp_needs_its_section() -> None:
    assert ErpSettings().connector == "spreadsheet"
    with pytest.raises(ValidationError, match=r"\[erp.kingdee\] section is missing"):
        ErpSettings(connector="kingdee")
    s = ErpSettings(connector="kingdee", kingdee=KINGDEE)
    assert s.kingdee is not None and "s3cr3t" not in repr(s)  # secrets never show in a repr or a log line
    with pytest.raises(ValidationError, match="gateway_url and token_url, or tenant_id"):
        ErpSettings(connector="yonbip", yonbip={"app_key": "k", "app_secret": "x", "org": "o"})
    with pytest.raises(ValidationError):
        ErpSettings(bill_prefix="pd-")  # letters and digits, upper case: it becomes an ERP bill number
    with pytest.raises(ValidationError):
        ErpSettings(connector="oracle")  # type: ignore[arg-type]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDIAN_ERP__CONNECTOR", "u8")
    for k, v in {"FROM_ACCOUNT": "f", "TO_ACCOUNT": "001", "APP_KEY": "k", "APP_SECRET": "x", "GAIN_RD_CODE": "14",
                 "LOSS_RD_CODE": "24"}.items():  # fmt: skip
        monkeypatch.setenv(f"PANDIAN_ERP__U8__{k}", v)
    monkeypatch.setenv("PANDIAN_ERP__MAX_ATTEMPTS", "5")
    s = Settings()
    assert s.erp.connector == "u8" and s.erp.u8 is not None and s.erp.u8.gain_rd_code == "14"
    assert s.erp.max_attempts == 5 and s.erp.u8.app_secret.get_secret_value() == "x"


decimals = st.decimals(min_value=-(10**9), max_value=10**9, places=4, allow_nan=False, allow_infinity=False)


@given(qty=decimals, cost=decimals, book=st.none() | decimals)
def test_a_posting_document_survives_json(qty: Decimal, cost: Decimal, book: Decimal | None) -> None:
    doc = PostingDoc("PD00000012", 12, AdjustmentKind.TRANSFER, "WH1", datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC),
                     (DocLine("M1", "Pcs", "A-01", qty, cost, to_location="A-02", book_qty=book, counted_qty=None,
                              variance_id=7, reason="misslot"),), note="pandian")  # fmt: skip
    import json

    assert PostingDoc.from_json(json.loads(json.dumps(doc.to_json()))) == doc


def _move(source_doc: str | None, reference: str | None = None) -> MovementRecord:
    return MovementRecord("k", "M1", "WH1", "-", Decimal(1), MovementType.RECEIPT, datetime(2026, 1, 1, tzinfo=UTC),
                          source_doc, reference)  # fmt: skip


def test_our_own_documents_are_recognised() -> None:
    ours = {"PD00000012", "4900001234"}
    assert is_ours(_move("PD00000012"), ours, "PD")
    assert is_ours(_move("DOC9", "PD00000012"), ours, "PD")  # the ERP kept our number as a reference
    assert is_ours(_move("PD00000012-O"), ours, "PD") and is_ours(
        _move("PD00000012-I"), ours, "PD"
    )  # U8 pairs
    assert is_ours(_move("4900001234"), ours, "PD")  # a document a posting produced (SAP material document)
    assert not is_ours(_move("PD00000013"), ours, "PD")
    assert not is_ours(_move("XX00000012-O"), ours, "PD")
    assert not is_ours(_move(None), ours, "PD")


def test_erp_fields_are_parsed_with_messages_that_name_the_field() -> None:
    assert decimal("1,234.50", "FBaseQty", "金蝶") == Decimal("1234.50")
    assert decimal(Decimal("-3"), "qty", "U8") == Decimal(-3)
    for bad in ("abc", None, "", True, "NaN", "1e20"):
        with pytest.raises(ErpBadResponse, match="FBaseQty"):
            decimal(bad, "FBaseQty", "金蝶")
    assert text("  M1 ", "code", "U8") == "M1"
    assert text(None, "code", "U8", required=False) is None
    with pytest.raises(ErpBadResponse, match="缺少 物料编码"):
        text("", "物料编码", "U8")
    with pytest.raises(ErpBadResponse, match="格式不对"):
        text({"a": 1}, "code", "U8")
    with pytest.raises(ErpBadResponse, match="太长"):
        text("x" * 65, "code", "U8", max_len=64)


def test_secrets_are_masked_in_anything_that_leaves_the_http_layer() -> None:
    http = Http(
        "u8",
        "用友 U8",
        timeout_s=1,
        read_retries=0,
        retry_backoff_s=0,
        secrets=lambda: ("sekrit-99", None, "ab"),
    )
    assert (
        http.mask("token=sekrit-99&x=ab") == "token=***&x=ab"
    )  # too short to be a secret worth masking: "ab"
    assert http.excerpt(b"<html>sekrit-99\noops</html>") == "<html>*** oops</html>"


async def test_a_login_is_fetched_once_renewed_early_and_a_refused_call_repeated_once() -> None:
    now, issued = [0.0], []

    async def fetch() -> tuple[str, float]:
        issued.append(f"t{len(issued) + 1}")
        return issued[-1], 3600

    login = Login(fetch, clock=lambda: now[0])
    assert [await login.get(), await login.get()] == ["t1", "t1"]
    now[0] = 3600 - REFRESH_MARGIN_S  # renewed before it expires
    assert await login.get() == "t2"
    used: list[str] = []

    async def refused_once(token: str) -> str:
        used.append(token)
        if len(used) == 1:
            raise ErpSessionExpired("失效", "expired")
        return "ok"

    assert await login.renewing(refused_once) == "ok" and used == ["t2", "t3"]
    await login.drop("t2")  # a value another call replaced already stays
    assert login.value == "t3"

    async def always_refused(token: str) -> str:
        raise ErpSessionExpired("失效", "expired")

    with pytest.raises(ErpSessionExpired):
        await login.renewing(always_refused)
    assert login.count == 4 and login.value is None  # t3 refused, t4 too: no third try


def test_movement_cursors_keep_the_latest_mark_per_source() -> None:
    marks = SourceMarks('{"purchasein": "2026-11-01"}')
    since = latest(latest(marks.get("purchasein"), "2026-11-03"), "")
    assert marks.page([], "purchasein", since).cursor == '{"purchasein": "2026-11-03"}'
    assert marks.page([], "saleout", None).cursor == '{"purchasein": "2026-11-03"}'  # nothing seen yet
    assert latest(None, "2026-11-02") == "2026-11-02" and latest("2026-11-05", "2026-11-02") == "2026-11-05"


def test_decimals_go_to_erps_as_json_numbers() -> None:
    assert dumps({"q": Decimal("5"), "c": Decimal("1.25")}) == '{"q": 5, "c": 1.25}'


def test_back_off_doubles_and_is_capped() -> None:
    s = Settings(erp={"backoff_base_s": 30, "backoff_max_s": 300})
    assert [backoff(s, n).total_seconds() for n in (1, 2, 3, 4, 5, 9)] == [30, 60, 120, 240, 300, 300]
    assert doc_key(s, 12) == "PD00000012"


def test_the_failure_message_says_what_and_how_to_retry() -> None:
    doc = PostingDoc("PD00000003", 3, AdjustmentKind.LOSS, "WH1", datetime(2026, 11, 30, tzinfo=UTC),
                     (DocLine("M1", "Pcs", "A-01", Decimal(-2), Decimal("10.5")),))  # fmt: skip
    zh = failure_text("金蝶云星空", doc, "会计期间已关账", "zh")
    assert "PD00000003" in zh and "盘亏" in zh and "-21.00" in zh and "会计期间已关账" in zh
    assert "pandian erp post --retry 3" in zh
    en = failure_text("Kingdee", doc, "period closed", "en")
    assert en.startswith("⚠️ Adjustment PD00000003 (loss") and "--retry 3" in en


def test_kingdee_answers_and_filters() -> None:
    lost = {
        "Result": {
            "ResponseStatus": {"IsSuccess": False, "MsgCode": 1, "Errors": [{"Message": "会话信息已丢失"}]}
        }
    }
    assert _response_status([[lost]]) == lost["Result"]["ResponseStatus"]  # a query's error shape
    assert _response_status([[1, "M1"], [2, "M2"]]) is None  # rows
    assert _errors(lost["Result"]["ResponseStatus"]) == "会话信息已丢失"
    assert _errors({"ErrorCode": 500, "Errors": []}) == "ErrorCode 500"
    assert q("O'Brien") == "O''Brien"
    assert kd_time("2026-11-30T10:15:00.123") == "2026-11-30 10:15:00"


def test_yonbip_signature_is_hmac_sha256_of_the_sorted_parameters() -> None:
    import base64
    import hashlib
    import hmac

    want = base64.b64encode(
        hmac.new(b"secret", b"appKeyAK1timestamp1700000000000", hashlib.sha256).digest()
    ).decode()
    assert signature("AK1", "secret", "1700000000000") == want
    assert signature("AK1", "secret", "1700000000001") != want


def test_sap_dates_literals_and_movement_types() -> None:
    when = datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
    assert parse_odata_date(odata_date(when), "SAP") == when
    assert parse_odata_date("/Date(1764460800000+0000)/", "SAP") == datetime(2025, 11, 30, tzinfo=UTC)
    with pytest.raises(ErpBadResponse, match="日期"):
        parse_odata_date("2026-11-30", "SAP")
    assert lit("O'B") == "'O''B'"
    kinds: dict[str, Any] = {c: movement_type(c) for c in ("101", "201", "261", "311", "601", "701")}
    assert kinds == {"101": MovementType.RECEIPT, "201": MovementType.ISSUE, "261": MovementType.PRODUCTION_ISSUE,
                     "311": MovementType.TRANSFER, "601": MovementType.ISSUE, "701": MovementType.ADJUSTMENT}  # fmt: skip
