"""Cards: each card built from fixed sample data and rendered for WeCom, Feishu and DingTalk, compared with the
golden files in tests/golden/cards (rewrite them with PANDIAN_UPDATE_GOLDEN=1 and read the diff)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.cards import approval, count_prompt, daily_tasks, recount, review, summary
from bot.cards.approval import ApprovalRequest
from bot.cards.count_prompt import CountPrompt
from bot.cards.daily_tasks import DailyTasks, TaskLine
from bot.cards.facts import VarianceFacts
from bot.cards.model import Button, Card, Field, Lang, Section, pick
from bot.cards.payload import PAYLOAD_TYPES, Approve, CannotFind, StartCounting, unpack
from bot.cards.recount import RecountRequest
from bot.cards.render import dingtalk, feishu, wecom
from bot.cards.render.common import CardTooLarge, Signer, fit, fit_lines, width
from bot.cards.summary import DailySummary, ImprovementNotice
from bot.cards.text import CountLine, ItemAt
from core.enums import ApprovalDecision, Role, TaskReason
from core.variance.tolerance import Severity
from tests.golden_files import assert_golden, golden_name

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cards"
KEY = b"pandian-test-key-0123456789abcdef"
SIGNER = Signer(KEY, issued_at=1717230000)
RENDERERS: dict[str, Callable[..., dict[str, Any]]] = {
    "wecom": wecom.render,
    "feishu": feishu.render,
    "dingtalk": dingtalk.render,
}

COKE = ItemAt(location="A-01-03", sku="8801-COKE", name="可口可乐", spec="330ml", unit="罐")


def _lines(n: int) -> list[TaskLine]:
    names = ["可口可乐", "雪碧", "农夫山泉", "康师傅红烧牛肉面", "旺仔牛奶", "百岁山"]
    return [
        TaskLine(
            task_id=1000 + i,
            location=f"A-{i // 6 + 1:02d}-{i % 6 + 1:02d}",
            sku=f"SKU-{i:04d}",
            name=names[i % len(names)],
            spec="330ml" if i % 2 == 0 else None,
            unit="个",
            reason=TaskReason.NEGATIVE if i == 4 else TaskReason.ROTATION,
            walk_seq=n - i,  # given out of order: the card sorts by the walk
        )
        for i in range(n)
    ]


FACTS = VarianceFacts(
    variance_id=42,
    at=COKE,
    abc_class="A",
    book=Decimal("120"),
    counts=(
        CountLine("张三", Decimal("112"), datetime(2024, 6, 1, 9, 5)),
        CountLine("李四", Decimal("112.0"), datetime(2024, 6, 1, 10, 30), recount=True),
    ),
    diff=Decimal("-8"),
    pct=Decimal("-6.67"),
    value=Decimal("-1234.5"),
    severity=Severity.MAJOR,
    photos=("img_v3_0a1b", "img_v3_0a1c"),
    suggested_reason="shipping",
    suggestion_text="计数前 3 小时有发货单 SO-881 出库 8 罐",
)
APPROVAL = ApprovalRequest(
    facts=FACTS,
    step_seq=1,
    role=Role.SUPERVISOR,
    reason_code="shipping",
    reason_note="SO-881 未扣账",
    reviewer="王五",
)


def _cards(lang: Lang = "zh") -> dict[str, Card]:
    return {
        "daily_tasks": daily_tasks.build(
            DailyTasks("张三", date(2024, 6, 1), _lines(18), done=2, total=20),
            lang=lang,
            ref="daily-7-20240601",
        ),
        "daily_tasks_done": daily_tasks.build(
            DailyTasks("张三", date(2024, 6, 1), [], done=20, total=20),
            lang=lang,
            ref="daily-7-20240601-done",
        ),
        "count_prompt": count_prompt.build(
            CountPrompt(1001, COKE, position=3, of=20), lang=lang, ref="count-1001"
        ),
        "recount": recount.build(
            RecountRequest(1077, COKE, due=date(2024, 6, 2)), lang=lang, ref="recount-1077"
        ),
        "review": review.build(FACTS, lang=lang, ref="review-42"),
        "approval": approval.build(APPROVAL, lang=lang, ref="approval-42-1"),
        "approval_decided": approval.approval_decided(
            APPROVAL,
            decision=ApprovalDecision.APPROVED,
            decided_by="赵六",
            decided_at=datetime(2024, 6, 1, 15, 20),
            comment="同意调整",
            lang=lang,
            ref="approval-42-1",
        ),
        "summary": summary.build(
            DailySummary(
                day=date(2024, 6, 1),
                scope="一号仓 WH1",
                planned=120,
                done=111,
                overdue=9,
                accuracy_pct=Decimal("96.396"),
                open_variances=4,
                top_reasons=[("receiving", 5), ("shipping", 3), ("misplaced", 2), ("other", 1)],
            ),
            lang=lang,
            ref="summary-wh1-20240601",
        ),
        "improvement_notice": summary.improvement_notice(
            ImprovementNotice(
                item_id=3,
                scope="一号仓 WH1",
                reason_code="receiving",
                occurrences=5,
                window_days=30,
                since=date(2024, 5, 3),
            ),
            lang=lang,
            ref="improvement-3",
        ),
    }


def _cases() -> Iterator[tuple[str, Lang, str]]:
    for name in _cards():
        for platform in RENDERERS:
            yield name, "zh", platform
    for name in ("daily_tasks", "count_prompt", "review", "approval", "approval_decided"):
        for platform in RENDERERS:
            yield name, "en", platform


def _render(name: str, lang: Lang, platform: str) -> dict[str, Any]:
    return RENDERERS[platform](_cards(lang)[name], lang=lang, signer=SIGNER)


@pytest.mark.parametrize(("name", "lang", "platform"), list(_cases()))
def test_golden(name: str, lang: Lang, platform: str) -> None:
    assert_golden(GOLDEN, name, lang, platform, _render(name, lang, platform))


def test_no_stale_golden_files() -> None:
    expected = {golden_name(n, lang, p) for n, lang, p in _cases()}
    assert {p.name for p in GOLDEN.glob("*.json")} == expected


# --------------------------------------------------------------------------------------------------------
# Blind cards


@pytest.mark.parametrize("name", ["daily_tasks", "count_prompt", "recount"])
@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("platform", list(RENDERERS))
def test_counting_cards_are_blind(name: str, lang: Lang, platform: str) -> None:
    text = json.dumps(_render(name, lang, platform), ensure_ascii=False)
    for word in ("账面", "初盘", "实盘", "差异", "Book", "book", "First count", "Difference"):
        assert word not in text


def test_blind_inputs_have_no_quantity_fields() -> None:
    for cls in (TaskLine, CountPrompt, RecountRequest, ItemAt):
        names = set(cls.__dataclass_fields__)
        assert not names & {"qty", "book", "book_qty", "counted_qty", "counts", "diff"}, cls


def test_daily_card_walk_order_cap_and_progress() -> None:
    card = _cards()["daily_tasks"]
    text = card.sections[1].text or ""
    lines = text.splitlines()
    assert len(lines) == daily_tasks.MAX_LINES + 1
    assert lines[-1] == "还有 3 项"
    assert lines[0].startswith("1. A-03-06")  # the lowest walk_seq comes first
    assert card.sections[0].fields[0] == Field("进度", "2/20")
    assert not _cards()["daily_tasks_done"].buttons


def test_daily_card_start_walks_every_open_task_not_only_the_lines_shown() -> None:
    """开始盘点 names no tasks: the press walks all of the counter's open tasks (the card shows 15 of 18)."""
    card = _cards()["daily_tasks"]
    start = next(b for b in card.buttons if b.label == "开始盘点")
    assert start.payload == StartCounting(())


def test_daily_card_tags_say_nothing_about_the_book() -> None:
    """A counter's task is tagged only with what tells nothing about the stock; recounts come first."""
    lines = [
        TaskLine(2000 + i, f"B-{i:02d}", f"S{i}", f"物料{i}", None, "个", reason, walk_seq=i)
        for i, reason in enumerate(TaskReason)
    ]
    for lang in ("zh", "en"):
        card = daily_tasks.build(
            DailyTasks("张三", date(2024, 6, 1), lines, 0, len(lines)), lang=lang, ref="d-1"
        )
        for platform in RENDERERS:
            text = json.dumps(RENDERERS[platform](card, lang=lang, signer=SIGNER), ensure_ascii=False)
            for hint in ("负库存", "零库存", "呆滞", "高周转", "近期差异", "Negative", "Zero stock", "Dormant",
                         "Fast mover", "Recent variance", "周期盘点", "Cycle count"):  # fmt: skip
                assert hint not in text, (hint, platform, lang)
        shown = (card.sections[1].text or "").splitlines()
        recount = next(t for t in lines if t.reason == TaskReason.RECOUNT)
        assert shown[0].startswith(f"1. {recount.location} ·")  # the recount first, whatever its place
        assert shown[0].endswith(pick(lang, " [复盘]", " [Recount]"))
        assert sum("[" in line for line in shown) == 3  # 复盘, 临时请求, 计划外


def test_locations_show_their_warehouse_when_the_company_has_several() -> None:
    """The same bin codes exist in every warehouse: given its warehouse, each card about a task names it."""
    at = ItemAt("A-01-03", "8801-COKE", "可口可乐", "330ml", "罐", warehouse="CK02")
    assert at.where == "CK02/A-01-03" and COKE.where == "A-01-03"
    lines = [
        TaskLine(1, "A-01-03", "S1", "雪碧", None, "个", walk_seq=1, warehouse="CK02"),
        TaskLine(2, "A-01-03", "S2", "可乐", None, "个", walk_seq=2, warehouse="CK01"),
    ]
    daily = daily_tasks.build(DailyTasks("张三", date(2024, 6, 1), lines, 0, 2), ref="d-2")
    assert (daily.sections[1].text or "").splitlines() == ["1. CK01/A-01-03 · 可乐 · S2（个）",
                                                            "2. CK02/A-01-03 · 雪碧 · S1（个）"]  # fmt: skip
    prompt = count_prompt.build(CountPrompt(1, at), ref="c-2")
    assert prompt.title == "盘点 CK02/A-01-03" and "库位 CK02/A-01-03 · 可口可乐 330ml" in str(
        prompt.sections
    )
    rc = recount.build(RecountRequest(7, at), ref="r-2")
    assert (
        rc.subtitle == "CK02/A-01-03 · 可口可乐 330ml"
        and Field("库位", "CK02/A-01-03") in rc.sections[0].fields
    )
    closed = recount.closed(
        RecountRequest(7, at), outcome=recount.RecountClosed.COUNTED, by="李四", ref="r-2"
    )
    assert closed.subtitle == "CK02/A-01-03 · 可口可乐 330ml"
    facts = replace(FACTS, at=at)
    for card in (review.build(facts, ref="rv-2"), approval.build(replace(APPROVAL, facts=facts), ref="ap-2")):
        assert Field("库位", "CK02/A-01-03") in card.sections[0].fields
    # with one warehouse, the bin alone, as before
    assert Field("库位", "A-01-03") in review.build(FACTS, ref="rv-3").sections[0].fields


def test_the_count_prompt_carries_the_answer_to_the_last_count() -> None:
    """One message per count: the confirmation of the last count leads the prompt for the next one."""
    card = count_prompt.build(CountPrompt(1001, COKE, 4, 20, note="✓ 已记录（41罐）"), ref="count-1001")
    assert (card.sections[0].text or "").splitlines() == [
        "✓ 已记录（41罐）",
        "库位 A-01-03 · 可口可乐 330ml，请输入数量",
    ]
    for platform in RENDERERS:
        assert "✓ 已记录（41罐）" in json.dumps(
            RENDERERS[platform](card, lang="zh", signer=SIGNER), ensure_ascii=False
        )


# --------------------------------------------------------------------------------------------------------
# Payloads and platform shapes


def _packed_payloads(platform: str, out: dict[str, Any]) -> list[str]:
    if platform == "wecom":
        keys = [b["key"] for b in out["button_list"]]
        keys += [o["id"] for o in out.get("button_selection", {}).get("option_list", [])]
        return keys
    if platform == "dingtalk":
        keys = [b["value"] for b in json.loads(out["buttons"])]
        keys += [o["value"] for s in json.loads(out["selects"]) for o in s["options"]]
        return keys
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("tag") == "button":
                found.append(node["behaviors"][0]["value"]["p"])
            if node.get("tag") == "select_static":
                found.extend(o["value"] for o in node["options"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(out)
    return found


@pytest.mark.parametrize(("name", "lang", "platform"), list(_cases()))
def test_every_payload_unpacks_with_the_key(name: str, lang: Lang, platform: str) -> None:
    card = _cards(lang)[name]
    packed = _packed_payloads(platform, _render(name, lang, platform))
    unpacked = [unpack(p, KEY, now=SIGNER.issued_at, max_age=3600) for p in packed]
    assert set(unpacked) <= set(card.payloads())
    # Everything the card can send is drawn, except a submit button with nothing to submit.
    if platform == "feishu" or not card.inputs:
        assert set(unpacked) == set(card.payloads())


@pytest.mark.parametrize(("name", "lang"), [(n, "zh") for n in _cards()] + [("review", "en")])
def test_dingtalk_values_are_all_strings(name: str, lang: Lang) -> None:
    out = _render(name, lang, "dingtalk")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())
    for key in ("buttons", "selects", "images", "sections", "config"):
        json.loads(out[key])


def test_inputs_only_in_feishu_elsewhere_reply_in_chat() -> None:
    fs = json.dumps(_render("count_prompt", "zh", "feishu"), ensure_ascii=False)
    assert '"tag": "form"' in fs and '"name": "qty"' in fs and "form_action_type" in fs
    wc = _render("count_prompt", "zh", "wecom")
    assert "请直接回复数量" in wc["sub_title_text"]
    assert [b["text"] for b in wc["button_list"]] == ["无法找到"]  # no submit button with nothing to submit
    dt = _render("count_prompt", "zh", "dingtalk")
    assert "请直接回复数量" in dt["hint"]


def test_review_select_carries_the_eight_reasons() -> None:
    wc = _render("review", "zh", "wecom")
    options = wc["button_selection"]["option_list"]
    assert len(options) == 8
    assert [unpack(o["id"], KEY).code for o in options][-1] == "other"  # type: ignore[attr-defined]
    assert unpack(wc["button_selection"]["selected_id"], KEY).code == "shipping"  # type: ignore[attr-defined]
    assert "照片 2 张" in wc["sub_title_text"]  # WeCom cards show no images
    fs = json.dumps(_render("review", "zh", "feishu"), ensure_ascii=False)
    assert fs.count('"tag": "img"') == 2 and "select_static" in fs and "multiline_text" in fs


def test_english_rendering() -> None:
    out = _render("approval", "en", "wecom")
    assert out["main_title"]["title"] == "Variance to approve"
    assert out["source"]["desc"] == "Pandian"
    assert [b["text"] for b in out["button_list"]] == ["Approve", "Recount", "Reject"]
    assert "Suggested reason: Shipping error" in out["sub_title_text"]
    fs = _render("daily_tasks", "en", "feishu")
    assert fs["header"]["title"]["content"] == "Today's counts"
    assert "and 3 more" in json.dumps(fs)


def test_decided_card_has_no_buttons_and_says_who() -> None:
    for platform in RENDERERS:
        out = _render("approval_decided", "zh", platform)
        text = json.dumps(out, ensure_ascii=False)
        assert "赵六 于 2024-06-01 15:20 通过" in text
    assert _render("approval_decided", "zh", "wecom")["button_list"] == []
    assert _render("approval_decided", "zh", "dingtalk")["has_buttons"] == "false"
    assert "button" not in json.dumps(_render("approval_decided", "zh", "feishu"))


# --------------------------------------------------------------------------------------------------------
# Limits


def test_fit_and_width() -> None:
    assert width("库位A") == 5
    assert fit("短", 10) == "短"
    assert fit("一二三四五六", 10) == "一二三四…"
    assert width(fit("一二三四五六", 10)) <= 10
    assert fit_lines(["aaaa", "bbbb", "cccc"], 9) == ["aaaa", "…"]
    assert fit_lines(["a" * 20], 9) == ["aaaaaaaa…"]


def _long_card(buttons: int = 3) -> Card:
    return Card(
        ref="long-1",
        title="标题" * 40,
        subtitle="副标题" * 40,
        sections=(
            Section(
                "很长的一行文字" * 20 + "\n" + "第二行" * 50,
                tuple(Field("很长的字段名称", "值" * 60) for _ in range(8)),
            ),
        ),
        buttons=tuple(Button("一个非常非常长的按钮文字", CannotFind(i)) for i in range(buttons)),
    )


def test_wecom_truncates_to_its_limits() -> None:
    out = wecom.render(_long_card(), lang="zh", signer=SIGNER)
    assert width(out["main_title"]["title"]) <= wecom.TITLE_W and out["main_title"]["title"].endswith("…")
    assert width(out["main_title"]["desc"]) <= wecom.DESC_W
    assert width(out["sub_title_text"]) <= wecom.SUB_TITLE_W and out["sub_title_text"].endswith("…")
    assert len(out["horizontal_content_list"]) == wecom.MAX_FIELDS
    for item in out["horizontal_content_list"]:
        assert width(item["keyname"]) <= wecom.KEYNAME_W and width(item["value"]) <= wecom.VALUE_W
    for b in out["button_list"]:
        assert width(b["text"]) <= wecom.BUTTON_W and b["text"].endswith("…")
        assert len(b["key"].encode()) <= 1024


def test_wecom_keeps_the_reply_hint_when_cutting_the_body() -> None:
    card = count_prompt.build(CountPrompt(1, ItemAt("A-01", "S", "名" * 300, None, "个")), ref="c-1")
    out = wecom.render(card, lang="zh", signer=SIGNER)
    assert out["sub_title_text"].endswith("请直接回复数量（个），例如 12 或 3箱5个")
    assert width(out["sub_title_text"]) <= wecom.SUB_TITLE_W


def test_too_many_buttons_is_refused() -> None:
    with pytest.raises(CardTooLarge):
        wecom.render(_long_card(buttons=7), lang="zh", signer=SIGNER)
    dingtalk.render(_long_card(buttons=6), lang="zh", signer=SIGNER)
    feishu.render(_long_card(buttons=7), lang="zh", signer=SIGNER)


def test_bad_ref_is_refused() -> None:
    card = Card(ref="有空格 的", title="x")
    with pytest.raises(CardTooLarge):
        wecom.render(card, lang="zh", signer=SIGNER)
    with pytest.raises(CardTooLarge):
        wecom.render(Card(ref="a" * 129, title="x"), lang="zh", signer=SIGNER)


def test_feishu_card_size_limit() -> None:
    big = Card(ref="big", title="x", sections=tuple(Section("长" * 1000) for _ in range(12)))
    with pytest.raises(CardTooLarge):
        feishu.render(big, lang="zh", signer=SIGNER)


def test_renderers_pack_with_the_signers_time() -> None:
    card = Card(ref="t-1", title="x", buttons=(Button("ok", Approve(1, 2)),))
    key = wecom.render(card, lang="zh", signer=Signer(KEY, issued_at=100))["button_list"][0]["key"]
    assert unpack(key, KEY) == Approve(1, 2)
    assert key.split(":")[-2] == "100"


def test_payload_classes_are_distinct() -> None:
    assert len({cls.prefix for cls in PAYLOAD_TYPES}) == len(PAYLOAD_TYPES) == 8
