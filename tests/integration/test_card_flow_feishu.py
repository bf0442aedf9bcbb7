"""The whole count-to-adjustment loop on Feishu, through the real server's /feishu/webhook with encrypted,
signed schema 2.0 events and card callbacks (``card.action.trigger``), asserting on what the fake Feishu API
received: messages sent with ``im/v1/messages`` and cards updated in place with ``PATCH``.

count (a platform retry counted once) -> variance -> blind recount card to another counter -> recount started
from the card -> review cards to the supervisors -> reason and note submitted in the card's form
(``form_value``) -> approval cards -> two approvers press at once (one decision) -> every copy of the card
patched -> further steps -> adjustment."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select

from bot.app import build_app
from core.config import Settings
from core.db import make_sessionmaker
from core.models import CountEntry
from tests.clock import running
from tests.fakes.feishu import FeishuFake, FeishuSimulator, build_feishu_fake_app
from tests.integration.builders import PCT_TIERS
from tests.integration.cardflow import (
    DAY,
    assert_adjusted,
    one_decision,
    server_settings,
    set_up_company,
    the_variance,
    wait_for,
)

ENCRYPT_KEY, VERIFICATION_TOKEN = "enc-key-e2e", "v-token-e2e"


def cards_to(fake: FeishuFake, open_id: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(message id, current card) of the cards sent to ``open_id`` whose send key starts with ``kind``
    (``recount:``, ``review:``, ``approval:``): the outbox's idempotency key is Feishu's ``uuid``."""
    return [
        (m["message_id"], json.loads(m["content"]))
        for m in fake.sent()
        if m["receive_id"] == open_id
        and m["msg_type"] == "interactive"
        and str(m.get("uuid") or "").startswith(kind)
    ]


def prompt_cards(fake: FeishuFake, open_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The count prompt cards sent to ``open_id`` (title 盘点 <location>, a quantity box and 提交)."""
    return [
        (m["message_id"], card)
        for m in fake.sent()
        if m["receive_id"] == open_id and m["msg_type"] == "interactive"
        and (card := json.loads(m["content"]))["header"]["title"]["content"].startswith("盘点 ")
    ]  # fmt: skip


def texts_to(fake: FeishuFake, open_id: str) -> list[str]:
    return [
        json.loads(m["content"])["text"]
        for m in fake.sent()
        if m["receive_id"] == open_id and m["msg_type"] == "text"
    ]


def _elements(card: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = list(card["body"]["elements"])
    while stack:
        el = stack.pop(0)
        yield el
        stack.extend(el.get("elements", []))
        for col in el.get("columns", []):
            stack.extend(col.get("elements", []))


def button(card: dict[str, Any], label: str) -> dict[str, Any]:
    return next(e for e in _elements(card) if e["tag"] == "button" and e["text"]["content"] == label)


def options(card: dict[str, Any], name: str) -> dict[str, str]:
    """label -> value of a drop-down in the card's form."""
    sel = next(e for e in _elements(card) if e["tag"] == "select_static" and e["name"] == name)
    return {o["text"]["content"]: o["value"] for o in sel["options"]}


def card_text(card: dict[str, Any]) -> str:
    return json.dumps(card, ensure_ascii=False)


async def test_count_to_adjustment_through_feishu_cards(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    fake = FeishuFake()
    api = await aiohttp_server(build_feishu_fake_app(fake))
    settings = Settings(
        database_url=database_url,
        tolerance=PCT_TIERS,
        feishu={"app_id": fake.app_id, "app_secret": fake.app_secret, "verification_token": VERIFICATION_TOKEN,
                "encrypt_key": ENCRYPT_KEY, "domain": str(api.make_url("")).rstrip("/")},
        server=server_settings(tmp_path),
    )  # fmt: skip
    sm = make_sessionmaker(engine)
    task_id = await set_up_company(sm, settings, "feishu_open_id", prefix="ou_")

    clock = running(DAY)  # the company's day (cardflow.DAY), at the wall clock's pace
    client = await aiohttp_client(build_app(settings, clock=clock))
    sim = FeishuSimulator(
        encrypt_key=ENCRYPT_KEY,
        verification_token=VERIFICATION_TOKEN,
        app_id=fake.app_id,
        clock=lambda: clock.now().timestamp(),
    )
    tokens = itertools.count(1)

    async def post(doc: dict[str, Any]) -> dict[str, Any]:
        headers, body = sim.wire(doc)
        async with client.post("/feishu/webhook", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def say(open_id: str, text: str) -> None:
        assert await post(sim.text(open_id, text)) == {}

    async def press(
        open_id: str, message_id: str, card: dict[str, Any], label: str, form: dict[str, Any] | None = None
    ) -> None:
        b = button(card, label)
        doc = sim.card_action(open_id, b["behaviors"][0]["value"]["p"], form=form, open_message_id=message_id,
                              token=f"c-{next(tokens)}", name=b.get("name"))  # fmt: skip
        answer = await post(doc)
        assert "card" not in answer  # the card is patched after the answer, never replaced in it

    # 1. lina counts 60 where the book says 10; Feishu pushes the event again (same message_id): counted once
    first = sim.text("ou_lina", f"/盘点 {task_id} 60")
    await post(first)
    first["header"]["event_id"] = "ev_retry_1"  # a re-push has its own envelope, the same message
    await post(first)
    await wait_for(lambda: cards_to(fake, "ou_wang", "recount:"))
    async with sm() as s:
        assert await s.scalar(select(func.count()).select_from(CountEntry)) == 1
    rc_id, recount_card = cards_to(fake, "ou_wang", "recount:")[0]
    assert recount_card["schema"] == "2.0" and recount_card["header"]["title"]["content"] == "复盘请求"
    shown = [e["text"]["content"] for e in _elements(recount_card) if e["tag"] == "div"]
    assert shown and not any("10" in t or "60" in t for t in shown)  # blind: no book, no first count
    assert not cards_to(fake, "ou_lina", "recount:")  # never to the first counter

    # lina presses wang's card (forwarded to her): not her task, nothing happens
    await press("ou_lina", rc_id, recount_card, "开始复盘")
    await wait_for(lambda: any("没有分配给您" in t for t in texts_to(fake, "ou_lina")))

    # 2. wang starts from the card and counts 60 too: the count stands; review cards go to the supervisors
    await press("ou_wang", rc_id, recount_card, "开始复盘")
    # on Feishu the count prompt is a card with the quantity box in it (blind: no book, no first count)
    await wait_for(lambda: prompt_cards(fake, "ou_wang"))
    prompt_id, prompt_card = prompt_cards(fake, "ou_wang")[-1]
    assert "请输入数量" in card_text(prompt_card) and "账面" not in card_text(prompt_card)
    await press("ou_wang", prompt_id, prompt_card, "提交", form={"qty": "６０"})
    sups = ("ou_sup1", "ou_sup2", "ou_sup3")
    await wait_for(lambda: all(cards_to(fake, u, "review:") for u in sups))
    assert not cards_to(fake, "ou_lina", "review:") and not cards_to(fake, "ou_wang", "review:")

    # 3. sup1 submits the card's form: a reason that needs a note, and the note, both in form_value
    rv_id, review_card = cards_to(fake, "ou_sup1", "review:")[0]
    form = next(e for e in _elements(review_card) if e["tag"] == "form")
    assert {e["tag"] for e in form["elements"]} >= {"select_static", "input", "button"}
    reasons = options(review_card, "reason")
    await press(
        "ou_sup1", rv_id, review_card, "提交原因", {"reason": reasons["其他"], "note": "托盘被叉车挪动"}
    )
    review_ids = [cards_to(fake, u, "review:")[0][0] for u in sups]
    await wait_for(lambda: all(fake.messages[m]["updates"] == 1 for m in review_ids))
    for m in review_ids:  # every copy now says who reviewed, with which reason and note, and has no form
        patched = json.loads(fake.messages[m]["content"])
        assert "已复核" in card_text(patched) and "托盘被叉车挪动" in card_text(patched)
        assert not any(e["tag"] in ("form", "button") for e in _elements(patched))
    await wait_for(lambda: cards_to(fake, "ou_sup2", "approval:") and cards_to(fake, "ou_sup3", "approval:"))
    assert not cards_to(fake, "ou_sup1", "approval:")  # the reviewer does not approve their own review
    v = await the_variance(sm)
    assert (v.reason_code, v.reason_note) == ("other", "托盘被叉车挪动")

    # 4. sup2 and sup3 press 通过 on their copies at the same moment: one decision; both copies patched
    (id2, c2), (id3, c3) = (
        cards_to(fake, "ou_sup2", "approval:")[0],
        cards_to(fake, "ou_sup3", "approval:")[0],
    )
    await asyncio.gather(press("ou_sup2", id2, c2, "通过"), press("ou_sup3", id3, c3, "通过"))
    await wait_for(lambda: fake.messages[id2]["updates"] == 1 and fake.messages[id3]["updates"] == 1)
    await wait_for(lambda: len([t for u in ("ou_sup2", "ou_sup3") for t in texts_to(fake, u)]) >= 2)
    winner_name = one_decision({u: texts_to(fake, u) for u in ("ou_sup2", "ou_sup3")})
    for m in (id2, id3):
        patched = card_text(json.loads(fake.messages[m]["content"]))
        assert "差异已通过" in patched and winner_name in patched
        assert not any(e["tag"] == "button" for e in _elements(json.loads(fake.messages[m]["content"])))

    # 5. the remaining steps (by severity) go to their role holders; each approves from the card
    for user in ("ou_fin", "ou_mgr"):
        if (await the_variance(sm)).state != "pending_approval":
            break
        await wait_for(lambda u=user: cards_to(fake, u, "approval:"))
        mid, card = cards_to(fake, user, "approval:")[0]
        await press(user, mid, card, "通过")
        await wait_for(lambda u=user: any("已通过" in t for t in texts_to(fake, u)))
        await wait_for(lambda m=mid: fake.messages[m]["updates"] == 1)

    await assert_adjusted(sm)
    # every card was patched at most once, and every send used its own uuid (nothing sent twice)
    assert all(m["updates"] <= 1 for m in fake.sent())
    uuids = [m["uuid"] for m in fake.sent()]
    assert len(uuids) == len(set(uuids))
    if os.environ.get("PANDIAN_SHOW_TRANSCRIPT"):
        for msg in fake.sent():
            c = json.loads(msg["content"])
            print(msg["receive_id"], "<-", c.get("text") or c["header"]["title"]["content"], msg["updates"])
