"""The whole count-to-adjustment loop on WeCom, through the real server and signed, encrypted callbacks:
count -> variance -> blind recount card to another counter -> recount by button -> review card -> reason
picked on the card -> approval cards -> approve by button -> every copy of the card updated in place ->
adjustment. Cards a person may not act on are refused with a reason, and nothing changes."""

from __future__ import annotations

import os
from typing import Any

from bot.app import build_app
from core.config import Settings
from core.db import make_sessionmaker
from tests.clock import running
from tests.fakes.wecom import WeComFakeState, WeComSimulator, build_wecom_fake_app
from tests.integration.builders import PCT_TIERS
from tests.integration.cardflow import (
    DAY,
    assert_adjusted,
    server_settings,
    set_up_company,
    the_variance,
    wait_for,
)

TOKEN, AES_KEY = "tok3n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def cards_to(state: WeComFakeState, user: str, prefix: str) -> list[dict[str, Any]]:
    return [
        m["template_card"]
        for m in state.delivered
        if m.get("touser") == user
        and m.get("msgtype") == "template_card"
        and str(m["template_card"].get("task_id", "")).startswith(prefix)
    ]


def texts_to(state: WeComFakeState, user: str) -> list[str]:
    return [
        m["text"]["content"]
        for m in state.delivered
        if m.get("touser") == user and m.get("msgtype") == "text"
    ]


def button(card: dict[str, Any], label: str) -> str:
    return next(b["key"] for b in card["button_list"] if b["text"] == label)


async def test_count_to_adjustment_through_cards(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    state = WeComFakeState()
    fake = await aiohttp_server(build_wecom_fake_app(state))
    settings = Settings(
        database_url=database_url,
        tolerance=PCT_TIERS,
        wecom={"corp_id": state.corp_id, "agent_id": state.agent_id, "secret": state.secret, "token": TOKEN,
               "encoding_aes_key": AES_KEY, "api_base": str(fake.make_url("")).rstrip("/")},
        server=server_settings(tmp_path),
    )  # fmt: skip
    sm = make_sessionmaker(engine)
    task_id = await set_up_company(sm, settings, "wecom_userid")

    clock = running(DAY)  # the company's day (cardflow.DAY), at the wall clock's pace
    client = await aiohttp_client(build_app(settings, clock=clock))
    sim = WeComSimulator(TOKEN, AES_KEY, state.corp_id, state.agent_id)
    msg_ids = iter(range(1000, 2000))

    async def post(req: Any) -> int:
        async with client.request(req.method, "/wecom/callback", params=req.query, data=req.body) as resp:
            return resp.status

    async def say(user: str, text: str) -> None:
        assert (
            await post(sim.text(user, text, msg_id=next(msg_ids), timestamp=int(clock.now().timestamp())))
            == 200
        )

    async def press(
        user: str, card: dict[str, Any], key: str, selected: dict[str, list[str]] | None = None
    ) -> str:
        code = state.issue_response_code(user, card["task_id"])
        req = sim.card_event(user, event_key=key, task_id=card["task_id"], response_code=code,
                             timestamp=int(clock.now().timestamp()) + next(msg_ids) % 60, selected=selected)  # fmt: skip
        assert await post(req) == 200
        return code

    # 1. lina counts 60 where the book says 10: out of tolerance, a blind recount goes to wang
    await say("lina", f"/盘点 {task_id} 60")
    await wait_for(lambda: cards_to(state, "wang", "rc-"))
    recount_card = cards_to(state, "wang", "rc-")[0]
    assert "10" not in str(recount_card.get("horizontal_content_list"))  # blind: no book, no first count
    assert not cards_to(state, "lina", "rc-")  # never to the first counter

    # lina presses wang's card (forwarded): it is not her task, nothing happens
    await press("lina", recount_card, button(recount_card, "开始复盘"))
    await wait_for(lambda: any("没有分配给您" in t for t in texts_to(state, "lina")))

    # 2. wang starts from the card and counts 60 too: the count stands, review cards go to the supervisors
    await press("wang", recount_card, button(recount_card, "开始复盘"))
    await wait_for(lambda: any("请输入数量" in t for t in texts_to(state, "wang")))
    await say("wang", "60")
    await wait_for(lambda: len([u for u in ("sup1", "sup2", "sup3") if cards_to(state, u, "rv-")]) == 3)
    assert not cards_to(state, "lina", "rv-") and not cards_to(state, "wang", "rv-")

    # 3. sup1 picks a reason on the card and submits
    review_card = cards_to(state, "sup1", "rv-")[0]
    options = review_card["button_selection"]["option_list"]
    found = next(o["id"] for o in options if o["text"].startswith("收货") or "收" in o["text"])
    await press("sup1", review_card, button(review_card, "提交原因"), {"reason": [found]})

    def review_updates() -> list[dict[str, Any]]:
        return [u for u in state.updates if str(u["template_card"].get("task_id", "")).startswith("rv-")]

    await wait_for(lambda: len(review_updates()) >= 3)  # all three review cards now say who reviewed
    assert all("已复核" in str(u["template_card"]) for u in review_updates()[:3])
    recount_updates = [
        u for u in state.updates if str(u["template_card"].get("task_id", "")).startswith("rc-")
    ]
    assert recount_updates and all(
        "已复盘" in str(u["template_card"]) for u in recount_updates
    )  # wang's card
    await wait_for(lambda: cards_to(state, "sup2", "ap-") and cards_to(state, "sup3", "ap-"))
    assert not cards_to(state, "sup1", "ap-")  # the reviewer does not approve their own review

    # 4. sup2 and sup3 both press 通过 on their copies: exactly one decision; both copies updated
    c2, c3 = cards_to(state, "sup2", "ap-")[0], cards_to(state, "sup3", "ap-")[0]
    updates_before = len(state.updates)
    await press("sup2", c2, button(c2, "通过"))
    await wait_for(lambda: len(state.updates) >= updates_before + 2)
    await press("sup3", c3, button(c3, "通过"))
    await wait_for(lambda: any("已先一步处理" in t or "主管二" in t for t in texts_to(state, "sup3")))
    decided = [u["template_card"] for u in state.updates[updates_before:]]
    assert all("主管二" in str(c) and "通过" in str(c) for c in decided)

    # 5. the remaining steps (by severity) go to their role holders; each approves from the card
    for user in ("fin", "mgr"):
        if (await the_variance(sm)).state != "pending_approval":
            break
        await wait_for(lambda u=user: cards_to(state, u, "ap-"))
        card = cards_to(state, user, "ap-")[0]
        await press(user, card, button(card, "通过"))
        await wait_for(lambda u=user: any("已通过" in t for t in texts_to(state, u)))

    await assert_adjusted(sm)
    if os.environ.get("PANDIAN_SHOW_TRANSCRIPT"):
        for m in state.delivered:
            body = m.get("text", {}).get("content") or m.get("template_card", {}).get("main_title")
            print(m["touser"], "<-", body)
