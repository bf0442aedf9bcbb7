"""The whole count-to-adjustment loop on DingTalk, through the real server's HTTP-mode routes: signed robot
messages on /dingtalk/robot and signed card callbacks on /dingtalk/card (``cardPrivateData.params`` with
string-only values), asserting on what the fake DingTalk API received: robot messages (``batchSend``), card
instances delivered (``createAndDeliver``) and updated in place by ``outTrackId`` (``PUT /v1.0/card/instances``).

count (a platform retry counted once) -> variance -> blind recount card to another counter -> recount started
from the card -> review cards to the supervisors -> reason picked on the card, the note it needs replied in
the chat -> approval cards -> two approvers press at once (one decision) -> every copy of the card updated ->
further steps -> adjustment."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from sqlalchemy import func, select

from bot.app import build_app
from core.config import Settings
from core.db import make_sessionmaker
from core.models import CountEntry
from tests.clock import running
from tests.fakes.dingtalk import DingTalkFakeState, DingTalkSimulator, build_dingtalk_fake_app
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

TEMPLATE = "pandian-card.schema"


def cards_to(state: DingTalkFakeState, user: str, kind: str) -> list[str]:
    """outTrackIds of the card instances delivered into ``user``'s robot chat whose send key starts with
    ``kind`` (``recount``, ``review``, ``approval``): the outTrackId is derived from the outbox's key."""
    return [
        d["outTrackId"]
        for d in state.deliveries
        if d["openSpaceId"] == f"dtv1.card//IM_ROBOT.{user}" and d["outTrackId"].startswith(f"{kind}-")
    ]


def texts_to(state: DingTalkFakeState, user: str) -> list[str]:
    return [
        json.loads(m["msgParam"])["content"]
        for m in state.sent
        if m.get("userIds") == [user] and m["msgKey"] == "sampleText"
    ]


def button(params: dict[str, str], label: str) -> str:
    """The packed payload of a button, as the template sends it back (``buttons`` is a JSON string)."""
    return next(b["value"] for b in json.loads(params["buttons"]) if b["label"] == label)


def options(params: dict[str, str], name: str) -> dict[str, str]:
    sel = next(s for s in json.loads(params["selects"]) if s["name"] == name)
    return {o["label"]: o["value"] for o in sel["options"]}


async def test_count_to_adjustment_through_dingtalk_cards(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    state = DingTalkFakeState()
    api = await aiohttp_server(build_dingtalk_fake_app(state))
    base = str(api.make_url("")).rstrip("/")
    settings = Settings(
        database_url=database_url,
        tolerance=PCT_TIERS,
        dingtalk={"app_key": state.app_key, "app_secret": state.app_secret, "robot_code": state.robot_code,
                  "card_template_id": TEMPLATE, "api_base": base, "oapi_base": base,
                  "card_callback_route_key": "pandian-cards"},
        server=server_settings(tmp_path),
    )  # fmt: skip
    sm = make_sessionmaker(engine)
    task_id = await set_up_company(sm, settings, "dingtalk_userid")

    clock = running(DAY)  # the company's day (cardflow.DAY), at the wall clock's pace
    client = await aiohttp_client(build_app(settings, clock=clock))
    sim = DingTalkSimulator(
        state.app_secret,
        robot_code=state.robot_code,
        session_base=base,
        clock=lambda: clock.now().timestamp(),
    )

    async def post(path: str, payload: dict[str, Any]) -> bytes:
        headers, body = sim.signed(payload)
        async with client.post(path, data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()

    async def say(user: str, text: str) -> None:
        await post("/dingtalk/robot", sim.text(text, user))

    async def press(user: str, track_id: str, label: str, params: dict[str, str] | None = None) -> None:
        card = state.cards[track_id]
        cb = sim.card_callback(
            track_id, user, action_ids=["action"], payload=button(card, label), params=params
        )
        assert await post("/dingtalk/card", cb) == b"{}"  # the card is updated later, by outTrackId

    # 1. lina counts 60 where the book says 10; DingTalk delivers the message again (same msgId): counted once
    first = sim.text(f"/盘点 {task_id} 60", "lina")
    await post("/dingtalk/robot", first)
    await post("/dingtalk/robot", first)
    await wait_for(lambda: cards_to(state, "wang", "recount"))
    async with sm() as s:
        assert await s.scalar(select(func.count()).select_from(CountEntry)) == 1
    rc = cards_to(state, "wang", "recount")[0]
    delivered = next(d for d in state.deliveries if d["outTrackId"] == rc)
    assert delivered["cardTemplateId"] == TEMPLATE and delivered["callbackRouteKey"] == "pandian-cards"
    assert all(isinstance(v, str) for v in state.cards[rc].values())  # string-only cardParamMap
    assert state.cards[rc]["title"] == "复盘请求"
    shown = state.cards[rc]["text"] + state.cards[rc]["sections"]
    assert "10" not in shown and "60" not in shown  # blind: no book, no first count
    assert not cards_to(state, "lina", "recount")  # never to the first counter

    # lina presses wang's card: not her task, nothing happens
    await press("lina", rc, "开始复盘")
    await wait_for(lambda: any("没有分配给您" in t for t in texts_to(state, "lina")))

    # 2. wang starts from the card and counts 60 too: the count stands; review cards go to the supervisors
    await press("wang", rc, "开始复盘")
    await wait_for(lambda: any("请输入数量" in t for t in texts_to(state, "wang")))
    await say("wang", "60")
    sups = ("sup1", "sup2", "sup3")
    await wait_for(lambda: all(cards_to(state, u, "review") for u in sups))
    assert not cards_to(state, "lina", "review") and not cards_to(state, "wang", "review")

    # 3. sup1 picks 其他 on the card (it needs a note, which a DingTalk card does not take): the bot asks for
    #    it in the chat, and the reply completes the review
    rv = cards_to(state, "sup1", "review")[0]
    assert state.cards[rv]["has_selects"] == "true" and "回复文字" in state.cards[rv]["hint"]
    reasons = options(state.cards[rv], "reason")
    await press("sup1", rv, "提交原因", {"reason": reasons["其他"]})
    await wait_for(lambda: any("需要说明" in t for t in texts_to(state, "sup1")))
    await say("sup1", "托盘被叉车挪动")
    review_ids = [cards_to(state, u, "review")[0] for u in sups]
    await wait_for(lambda: all(state.card_versions[t] == 2 for t in review_ids))
    for t in review_ids:  # every copy now says who reviewed, with which reason and note, and has no buttons
        params = state.cards[t]
        assert params["title"] == "差异已复核" and "托盘被叉车挪动" in params["text"]
        assert params["has_buttons"] == params["has_selects"] == "false"
    await wait_for(lambda: cards_to(state, "sup2", "approval") and cards_to(state, "sup3", "approval"))
    assert not cards_to(state, "sup1", "approval")  # the reviewer does not approve their own review
    v = await the_variance(sm)
    assert (v.reason_code, v.reason_note) == ("other", "托盘被叉车挪动")

    # 4. sup2 and sup3 press 通过 on their copies at the same moment: one decision; both copies updated
    ap2, ap3 = cards_to(state, "sup2", "approval")[0], cards_to(state, "sup3", "approval")[0]
    await asyncio.gather(press("sup2", ap2, "通过"), press("sup3", ap3, "通过"))
    await wait_for(lambda: state.card_versions[ap2] == 2 and state.card_versions[ap3] == 2)
    await wait_for(lambda: len(texts_to(state, "sup2") + texts_to(state, "sup3")) >= 2)
    winner_name = one_decision({u: texts_to(state, u) for u in ("sup2", "sup3")})
    for t in (ap2, ap3):
        params = state.cards[t]
        assert params["title"] == "差异已通过" and winner_name in params["text"]
        assert params["has_buttons"] == "false"

    # 5. the remaining steps (by severity) go to their role holders; each approves from the card
    for user in ("fin", "mgr"):
        if (await the_variance(sm)).state != "pending_approval":
            break
        await wait_for(lambda u=user: cards_to(state, u, "approval"))
        track = cards_to(state, user, "approval")[0]
        await press(user, track, "通过")
        await wait_for(lambda u=user: any("已通过" in t for t in texts_to(state, u)))
        await wait_for(lambda t=track: state.card_versions[t] == 2)

    await assert_adjusted(sm)
    # each card instance delivered once and updated at most once
    tracks = [d["outTrackId"] for d in state.deliveries]
    assert len(tracks) == len(set(tracks)) and all(n <= 2 for n in state.card_versions.values())
    if os.environ.get("PANDIAN_SHOW_TRANSCRIPT"):
        for m in state.sent:
            print(m["userIds"], "<-", json.loads(m["msgParam"]).get("content"))
        for d in state.deliveries:
            print(d["openSpaceId"], "<- card", state.cards[d["outTrackId"]]["title"])
