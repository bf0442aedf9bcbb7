"""Images out: each channel's upload + image message against its fake platform, and kind "image" through the
outbox, from the /准确率 command to the picture the platform received."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Address, Channel, ChannelError
from bot.charts import ClassAccuracy, render_accuracy
from bot.conversation import MemoryStore
from bot.dispatcher import Dispatcher, Router
from bot.events import Platform, Sender, TextMessage
from bot.handlers import commands, counting
from bot.outbox import deliver_due, enqueue
from bot.photos import PhotoStore
from core.clock import FixedClock
from core.config import Settings
from core.models import OutboxMessage, User
from core.scheduling.service import plan_day
from integrations.dingtalk.client import MEDIA_UPLOAD_PATH, DingTalkChannel
from integrations.dingtalk.settings import DingTalkSettings
from integrations.feishu.client import FeishuChannel
from integrations.feishu.settings import FeishuSettings
from integrations.wecom.client import WeComChannel
from integrations.wecom.settings import WeComSettings
from tests.clock import morning
from tests.fakes.dingtalk import DingTalkFakeState, build_dingtalk_fake_app
from tests.fakes.feishu import IMAGE_TOO_BIG, RATE_LIMITED, Fault, FeishuFake, build_feishu_fake_app
from tests.fakes.wecom import WeComFakeState, build_wecom_fake_app
from tests.integration.builders import build_company

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
Server = Callable[[web.Application], Any]


def png(color: str = "red", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------------ WeCom


@pytest.fixture
async def wecom(aiohttp_server: Server) -> AsyncIterator[tuple[WeComFakeState, WeComChannel]]:
    state = WeComFakeState()
    server = await aiohttp_server(build_wecom_fake_app(state))
    settings = WeComSettings(corp_id=state.corp_id, agent_id=state.agent_id, secret=state.secret, token="tok3n",
                             encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                             api_base=str(server.make_url("")))  # fmt: skip
    ch = WeComChannel(settings, timeout_s=2.0)
    yield state, ch
    await ch.close()


async def test_wecom_uploads_then_sends_an_image_message(
    wecom: tuple[WeComFakeState, WeComChannel], tmp_path: Path
) -> None:
    state, ch = wecom
    picture = png()
    ref = await ch.send_image(Address(Platform.WECOM, "lina"), write(tmp_path / "c.png", picture),
                              idempotency_key="k1")  # fmt: skip
    (upload,) = state.uploads
    assert upload["type"] == "image" and upload["filename"] == "image.png" and upload["size"] == len(picture)
    sent = state.delivered[-1]
    assert sent["msgtype"] == "image" and sent["image"] == {"media_id": upload["media_id"]}
    assert sent["enable_duplicate_check"] == 1 and ref.message_id
    assert await ch.download_image(upload["media_id"]) == picture  # what WeCom holds is our picture
    # the same picture again (an outbox retry): no second upload, the identical message, deduplicated
    await ch.send_image(Address(Platform.WECOM, "lina"), picture, idempotency_key="k1")
    assert len(state.uploads) == 1 and len(state.delivered) == 1


async def test_wecom_refreshes_an_expired_token_for_the_upload(
    wecom: tuple[WeComFakeState, WeComChannel],
) -> None:
    state, ch = wecom
    await ch.send_text(Address(Platform.WECOM, "lina"), "hi", idempotency_key="t")
    state.expire_tokens()
    await ch.send_image(Address(Platform.WECOM, "lina"), png("blue"), idempotency_key="k2")
    assert state.token_fetches == 2 and len(state.uploads) == 1


async def test_wecom_image_errors(wecom: tuple[WeComFakeState, WeComChannel]) -> None:
    state, ch = wecom
    lina = Address(Platform.WECOM, "lina")
    with pytest.raises(ChannelError) as local:  # refused before any call: not a PNG or JPEG
        await ch.send_image(lina, b"GIF89a" + b"\0" * 20, idempotency_key="g")
    assert local.value.code == "image_type" and not local.value.retryable
    with pytest.raises(ChannelError) as group:
        await ch.send_image(Address(Platform.WECOM, chat_id="g1"), png(), idempotency_key="g")
    assert group.value.code == "to"
    assert not state.calls_to("/cgi-bin/media/upload")
    state.image_limit = 20  # the platform's limit, smaller than ours: its 45001 is permanent
    with pytest.raises(ChannelError) as big:
        await ch.send_image(lina, png(), idempotency_key="b")
    assert big.value.code == 45001 and not big.value.retryable
    state.image_limit = 2 * 1024 * 1024
    state.inject("45009", route="/cgi-bin/media/upload")
    with pytest.raises(ChannelError) as limited:
        await ch.send_image(lina, png(), idempotency_key="r")
    assert limited.value.retryable and limited.value.retry_after == 60.0
    with pytest.raises(ChannelError) as gone:
        await ch.send_image(lina, Path("/nonexistent/x.png"), idempotency_key="x")
    assert gone.value.code == "image_missing" and not gone.value.retryable


# ----------------------------------------------------------------------------------------------- Feishu


@pytest.fixture
async def feishu(aiohttp_server: Server) -> AsyncIterator[tuple[FeishuFake, FeishuChannel]]:
    fake = FeishuFake()
    server = await aiohttp_server(build_feishu_fake_app(fake))
    settings = FeishuSettings(app_id=fake.app_id, app_secret=fake.app_secret, verification_token="v",
                              encrypt_key="k", domain=str(server.make_url("")))  # fmt: skip
    ch = FeishuChannel(settings)
    yield fake, ch
    await ch.close()


async def test_feishu_uploads_then_sends_an_image_message(feishu: tuple[FeishuFake, FeishuChannel]) -> None:
    fake, ch = feishu
    picture = png("green")
    ref = await ch.send_image(Address(Platform.FEISHU, "ou_1"), picture, idempotency_key="img-1")
    ((key, stored),) = fake.images.items()
    assert stored == picture
    (msg,) = fake.sent()
    assert msg["msg_type"] == "image" and json.loads(msg["content"]) == {"image_key": key}
    assert msg["uuid"] == "img-1" and ref.message_id == msg["message_id"] and ref.card_ref is None
    # to a group chat too
    await ch.send_image(Address(Platform.FEISHU, chat_id="oc_1"), picture, idempotency_key="img-2")
    assert fake.sent()[-1]["receive_id_type"] == "chat_id"


async def test_feishu_image_upload_errors(feishu: tuple[FeishuFake, FeishuChannel]) -> None:
    fake, ch = feishu
    to = Address(Platform.FEISHU, "ou_1")
    await ch.send_text(to, "hi", idempotency_key="t")
    fake.revoke_tokens()  # 99991663 on the upload: a new token, the upload repeated
    await ch.send_image(to, png(), idempotency_key="a")
    assert len(fake.issued) == 2 and len(fake.images) == 1
    fake.fail_next("image", Fault(429, RATE_LIMITED, "too many", {"x-ogw-ratelimit-reset": "3"}))
    with pytest.raises(ChannelError) as limited:
        await ch.send_image(to, png(), idempotency_key="b")
    assert limited.value.retryable and limited.value.retry_after == 3.0
    fake.fail_next("image", Fault(400, IMAGE_TOO_BIG, "the file size exceed the max value"))
    with pytest.raises(ChannelError) as big:
        await ch.send_image(to, png(), idempotency_key="c")
    assert big.value.code == IMAGE_TOO_BIG and not big.value.retryable
    with pytest.raises(ChannelError) as empty:
        await ch.send_image(to, b"", idempotency_key="d")
    assert empty.value.code == "image_size"
    assert len(fake.images) == 1 and [m["msg_type"] for m in fake.sent()] == ["text", "image"]


async def test_feishu_fake_refuses_what_feishu_refuses(feishu: tuple[FeishuFake, FeishuChannel]) -> None:
    """The fake's upload rules, checked with raw requests (the channel never sends these)."""
    import aiohttp

    _, ch = feishu
    token = await ch._tenant_token()
    base = ch.settings.domain.rstrip("/")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def upload(image_type: str, data: bytes) -> tuple[int, dict[str, Any]]:
            form = aiohttp.FormData()
            form.add_field("image_type", image_type)
            form.add_field("image", data, filename="x.png", content_type="image/png")
            async with http.post(f"{base}/open-apis/im/v1/images", data=form) as resp:
                return resp.status, await resp.json()

        assert (await upload("message", b""))[1]["code"] == 234010
        assert (await upload("message", b"not an image at all"))[1]["code"] == 234011
        assert (await upload("sticker", png()))[1]["code"] == 234001
        body = {"receive_id": "ou_1", "msg_type": "image", "content": json.dumps({"image_key": "img_nope"})}
        async with http.post(f"{base}/open-apis/im/v1/messages?receive_id_type=open_id", json=body) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 230001


# --------------------------------------------------------------------------------------------- DingTalk


@pytest.fixture
async def dingtalk(
    aiohttp_server: Server,
) -> AsyncIterator[tuple[DingTalkFakeState, DingTalkChannel, list[float]]]:
    state = DingTalkFakeState()
    server = await aiohttp_server(build_dingtalk_fake_app(state))
    base = str(server.make_url("")).rstrip("/")
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = DingTalkSettings(app_key=state.app_key, app_secret=state.app_secret, robot_code=state.robot_code,
                                card_template_id="t.schema", api_base=base, oapi_base=base)  # fmt: skip
    ch = DingTalkChannel(settings, sleep=sleep, jitter=lambda: 0.5)
    yield state, ch, sleeps
    await ch.close()


async def test_dingtalk_uploads_then_sends_sample_image_msg(
    dingtalk: tuple[DingTalkFakeState, DingTalkChannel, list[float]],
) -> None:
    state, ch, _ = dingtalk
    picture = png("purple")
    ref = await ch.send_image(Address(Platform.DINGTALK, "staff1"), picture, idempotency_key="k")
    ((media_id, stored),) = state.media.items()
    assert media_id.startswith("@") and stored == picture
    (upload,) = state.calls(MEDIA_UPLOAD_PATH)
    assert upload.body is None  # multipart: not JSON
    sent = state.sent[-1]
    assert sent["msgKey"] == "sampleImageMsg" and json.loads(sent["msgParam"]) == {"photoURL": media_id}
    assert sent["userIds"] == ["staff1"] and ref.message_id
    await ch.send_image(Address(Platform.DINGTALK, chat_id="cid1"), picture, idempotency_key="g")
    assert state.sent[-1]["openConversationId"] == "cid1" and len(state.media) == 2


async def test_dingtalk_upload_token_refresh_throttling_and_errors(
    dingtalk: tuple[DingTalkFakeState, DingTalkChannel, list[float]],
) -> None:
    state, ch, sleeps = dingtalk
    to = Address(Platform.DINGTALK, "staff1")
    await ch.send_text(to, "hi", idempotency_key="t")
    state.expire_tokens()  # errcode 40014 on the upload (HTTP 200): a new token, once
    await ch.send_image(to, png(), idempotency_key="a")
    assert state.token_requests == 2 and len(state.media) == 1
    state.inject(MEDIA_UPLOAD_PATH, 200, {"errcode": 90018, "errmsg": "调用频率超过限制"})
    await ch.send_image(to, png(), idempotency_key="b")  # retried here after a back-off
    assert sleeps == [0.5] and len(state.media) == 2
    state.inject(MEDIA_UPLOAD_PATH, 200, {"errcode": 90018, "errmsg": "调用频率超过限制"}, times=3)
    with pytest.raises(ChannelError) as throttled:
        await ch.send_image(to, png(), idempotency_key="c")
    assert throttled.value.retryable and throttled.value.retry_after is not None
    state.image_limit = 10
    with pytest.raises(ChannelError) as big:
        await ch.send_image(to, png(), idempotency_key="d")
    assert big.value.code == "40006" and not big.value.retryable
    assert [json.loads(s["msgParam"]).get("photoURL", "")[:1] for s in state.sent] == ["", "@", "@"]


# ----------------------------------------------------------------------------------------------- outbox


async def test_outbox_sends_an_image_row_by_reference(
    sessionmaker: async_sessionmaker[AsyncSession], wecom: tuple[WeComFakeState, WeComChannel], tmp_path: Path
) -> None:
    state, ch = wecom
    store = PhotoStore(tmp_path)
    picture = png("orange")
    ref = store.save(picture, suffix=".png")
    to = Address(Platform.WECOM, "lina")
    async with sessionmaker() as s, s.begin():
        with pytest.raises(ValueError, match="reference"):
            await enqueue(
                s, idempotency_key="bad", to=to, kind="image", body={"image": picture.hex()}, now=NOW
            )
        await enqueue(s, idempotency_key="img", to=to, kind="image", now=NOW,
                      body={"image": ref, "path": str(store.path(ref))})  # fmt: skip
        await enqueue(s, idempotency_key="gone", to=to, kind="image", now=NOW,
                      body={"image": "0" * 64 + ".png", "path": str(tmp_path / "00" / ("0" * 64 + ".png"))})  # fmt: skip
    channels: dict[str, Channel] = {"wecom": ch}
    counts = await deliver_due(sessionmaker, channels, now=NOW)
    assert counts == {"sent": 1, "retry": 0, "failed": 1, "deferred": 0}
    async with sessionmaker() as s:
        rows = {r.idempotency_key: r for r in (await s.execute(select(OutboxMessage))).scalars()}
    assert rows["img"].state == "sent" and rows["img"].sent_ref["message_id"]
    assert rows["gone"].state == "failed" and "image_missing" in (rows["gone"].last_error or "")
    media_id = state.delivered[-1]["image"]["media_id"]
    assert state.media[media_id][0] == picture


async def test_accuracy_chart_travels_from_the_command_to_feishu(
    sessionmaker: async_sessionmaker[AsyncSession], feishu: tuple[FeishuFake, FeishuChannel], tmp_path: Path
) -> None:
    fake, ch = feishu
    settings = Settings(database_url="sqlite://")
    async with sessionmaker() as s:
        company = await build_company(s, items=10, counters=1)
        counter = next(u for u in company.users if "counter" in u.roles)
        counter.feishu_open_id = "ou_counter"
        s.add(User(employee_no="M01", name="经理", roles=["manager"], feishu_open_id="ou_mgr"))
        s.add(User(employee_no="M02", name="Manager", roles=["manager"], feishu_open_id="ou_en", locale="en"))
        await plan_day(s, settings, date(2026, 11, 30), now=morning(date(2026, 11, 30)))
        await s.commit()
    store = PhotoStore(tmp_path / "photos")
    d = Dispatcher(sessionmaker, settings, MemoryStore(),
                   Router().include(commands.router, counting.router, commands.fallback_router),
                   services={"photos": store}, clock=FixedClock(NOW))  # fmt: skip
    said_ = [("ou_counter", "开始"), ("ou_counter", "10"), ("ou_mgr", "/准确率"), ("ou_en", "/accuracy")]
    for n, (who, said) in enumerate(said_):
        assert await d.submit(TextMessage(Platform.FEISHU, f"feishu:msg:{n}", Sender(Platform.FEISHU, who),
                                          NOW + timedelta(seconds=n), text=said))  # fmt: skip
        await d.drain()
    assert d.stats["errors"] == 0
    await deliver_due(sessionmaker, {"feishu": ch}, now=NOW + timedelta(minutes=1))
    to_mgr = [m for m in fake.sent() if m["receive_id"] == "ou_mgr"]
    assert [m["msg_type"] for m in to_mgr] == ["text", "image"]
    assert "A 类：100.0%（1/1 次在容差内）" in json.loads(to_mgr[0]["content"])["text"]
    key = json.loads(to_mgr[1]["content"])["image_key"]
    async with sessionmaker() as s:
        images = (await s.execute(select(OutboxMessage).where(OutboxMessage.kind == "image"))).scalars()
        (row,) = [r for r in images if r.address["user_id"] == "ou_mgr"]
    assert fake.images[key] == store.path(row.body["image"]).read_bytes()
    with Image.open(io.BytesIO(fake.images[key])) as img:
        assert img.format == "PNG"
    # each reader's chart is drawn in their language: the pictures are the ones render_accuracy draws
    to_en = [m for m in fake.sent() if m["receive_id"] == "ou_en"]
    assert [m["msg_type"] for m in to_en] == ["text", "image"]
    assert "Class A: 100.0% (1/1 within tolerance)" in json.loads(to_en[0]["content"])["text"]
    one = ClassAccuracy("A", 1, 1, 1.0, 1.0, 1.0)
    rows = [one, ClassAccuracy("B", 0, 0, None, None, None), ClassAccuracy("C", 0, 0, None, None, None),
            ClassAccuracy("total", 1, 1, 1.0, 1.0, 1.0)]  # fmt: skip
    english = fake.images[json.loads(to_en[1]["content"])["image_key"]]
    assert english == render_accuracy(rows, days=30, lang="en").png
    assert fake.images[key] == render_accuracy(rows, days=30, lang="zh").png != english
