"""The server under hostile traffic (issue 10 §6) and what it says about itself (§5): bodies bounded per route
and in flight, slow connections closed, signatures kept out of the access log, /healthz degraded when replies
cannot go out, and the start-up report.

Raw sockets where the HTTP client would hide what matters (an answer before the body was sent, a connection
the server closed). Time-outs are shortened through the module's constants; the bounds the tests wait for are
generous, so a loaded machine makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

import bot.app
from bot.app import APP_KEY, build_app, startup_report
from bot.flows import payload_key
from bot.photos import PhotoStore, signed_url
from core.clock import FixedClock
from core.config import Settings
from core.models import OutboxMessage
from tests.fakes.wecom import WeComFakeState, WeComSimulator, build_wecom_fake_app

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
TOKEN, AES_KEY = "tok3n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
PATH = "/wecom/callback?msg_signature=0&timestamp=0&nonce=0"
WAIT_S = 10.0  # the longest any step waits: far beyond the shortened timeouts


def settings_for(
    database_url: str, tmp_path: Any, *, secret: str = "fake-secret", api_base: str = ""
) -> Settings:
    wecom = {"corp_id": "ww_fake_corp", "agent_id": 1000002, "secret": secret, "token": TOKEN,
             "encoding_aes_key": AES_KEY, **({"api_base": api_base} if api_base else {})}  # fmt: skip
    return Settings(
        database_url=database_url,
        wecom=wecom,
        schedule={"enabled": False},
        server={"payload_secret": "p" * 20, "photos_dir": str(tmp_path / "photos")},
    )


async def until(cond: Any) -> None:
    """Until ``cond()`` holds (at most WAIT_S): what the server does after it answered takes a moment."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if cond():
                return
            await asyncio.sleep(0.01)


async def connect(client: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(client.server.host, client.server.port)


def head(length: int | None) -> bytes:
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"POST {PATH} HTTP/1.1\r\nHost: pandian\r\nContent-Type: text/xml\r\n{size}\r\n\r\n".encode()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of the server's answer."""
    async with asyncio.timeout(WAIT_S):
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds`` (whatever it answered first)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_a_body_declared_too_large_is_refused_before_it_is_sent(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    """24 MiB declared: 413 at once, not one byte of the body read (it used to be buffered, up to 25 MiB)."""
    client = await aiohttp_client(build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW)))
    reader, writer = await connect(client)
    writer.write(head(24 * 1024 * 1024))
    assert (await answer(reader))[0] == 413
    assert await closed_within(reader, WAIT_S)  # no keep-alive after a refused body
    writer.close()
    metrics = await (await client.get("/metrics")).text()
    assert 'pandian_body_refused_total{platform="wecom",status="413"} 1' in metrics


async def test_a_chunked_body_is_cut_off_at_the_limit(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    """No length declared: read only up to the route's limit (256 KiB for WeCom), then 413."""
    client = await aiohttp_client(build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW)))
    reader, writer = await connect(client)
    writer.write(head(None))
    chunk = b"<" * 65536
    try:
        for _ in range(16):  # 1 MiB
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    except ConnectionError:
        pass  # the server may stop listening once it has answered
    assert (await answer(reader))[0] == 413
    writer.close()


async def test_a_genuine_callback_still_gets_through(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    settings = settings_for(database_url, tmp_path)
    client = await aiohttp_client(build_app(settings, clock=FixedClock(NOW)))
    sim = WeComSimulator(TOKEN, AES_KEY, "ww_fake_corp", 1000002)
    req = sim.text("nobody", "/帮助" * 500, msg_id=1, timestamp=int(NOW.timestamp()))
    async with client.request(req.method, "/wecom/callback", params=req.query, data=req.body) as resp:
        assert resp.status == 200
    assert client.app[APP_KEY]["bodies"].used == 0
    check = sim.verify_url("5927782489442352469", timestamp=int(NOW.timestamp()))  # a GET without a body
    async with client.request(check.method, "/wecom/callback", params=check.query) as resp:
        assert (resp.status, await resp.text()) == (200, "5927782489442352469")


async def test_bodies_in_flight_are_bounded_and_the_rest_told_to_retry(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    app = build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW))
    client = await aiohttp_client(app)
    budget = app[APP_KEY]["bodies"]
    budget.cap = 1000
    slow_reader, slow_writer = await connect(client)
    slow_writer.write(head(800))  # the headers only: its 800 bytes are reserved while the body is awaited
    await until(lambda: budget.used == 800)
    reader, writer = await connect(client)
    writer.write(head(800) + b"<" * 800)
    status, headers = await answer(reader)
    assert (status, headers.get("retry-after")) == (503, "1")  # WeCom and Feishu retry a non-200
    writer.close()
    slow_writer.write(b"<" * 800)  # the first body arrives and is read (then refused as not XML)
    assert (await answer(slow_reader))[0] == 400
    await until(lambda: budget.used == 0)
    slow_writer.close()


async def test_a_slow_body_is_cut_off(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.app, "BODY_READ_TIMEOUT_S", 0.3)
    app = build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW))
    client = await aiohttp_client(app)
    reader, writer = await connect(client)
    writer.write(head(100) + b"<" * 10)  # and then nothing more
    assert (await answer(reader))[0] == 408
    assert await closed_within(reader, WAIT_S)
    assert app[APP_KEY]["bodies"].used == 0
    writer.close()


async def test_slow_headers_are_closed(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that never completes its request is closed (aiohttp's own test server waits an hour)."""
    monkeypatch.setattr(bot.app, "IDLE_TIMEOUT_S", 0.3)
    client = await aiohttp_client(build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW)))
    reader, writer = await connect(client)
    writer.write(b"POST /wecom/callback HTTP/1.1\r\nHost: pandian\r\n")
    assert await closed_within(reader, WAIT_S)
    writer.close()


async def test_the_access_log_leaves_the_photo_signature_out(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(database_url, tmp_path)
    ref = PhotoStore(tmp_path / "photos").save(b"\xff\xd8\xff jpeg bytes")
    client = await aiohttp_client(build_app(settings, clock=FixedClock(NOW)))
    url = signed_url("https://pandian.example.com", ref, payload_key(settings), int(NOW.timestamp()) + 60)
    path = url.removeprefix("https://pandian.example.com")
    signature = path.rpartition("s=")[2]
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    resp = await client.get(path, headers={"Referer": f"https://pandian.example.com{path}"})
    assert resp.status == 200

    def lines() -> list[str]:  # the access log is written just after the answer
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "aiohttp.access" and "/photos/" in r.getMessage()
        ]

    await until(lines)
    (line,) = lines()
    assert signature not in line  # neither in the request line nor in the Referer
    assert f'"GET /photos/{ref}?e={int(NOW.timestamp()) + 60}&s=- HTTP/1.1" 200' in line


async def test_health_is_degraded_by_an_outbox_that_does_not_move(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    """Messages undelivered for more than 5 minutes on the server's clock; younger or sent ones are fine."""
    clock = FixedClock(NOW)
    client = await aiohttp_client(build_app(Settings(database_url=database_url), clock=clock))
    rows = [  # backing off (next attempt in an hour): the outbox loop leaves them where they are
        {"idempotency_key": f"k{i}", "platform": "wecom", "kind": "text", "address": {"user_id": "u"},
         "body": {"text": "hi"}, "state": state, "attempts": 3, "next_attempt_at": NOW + timedelta(hours=1),
         "created_at": NOW - age}
        for i, (state, age) in enumerate([("pending", timedelta(minutes=4)), ("sent", timedelta(hours=2))])
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(insert(OutboxMessage), rows)
    r = await client.get("/healthz")
    assert (r.status, await r.json()) == (
        200,
        {"ok": True, "status": "ok", "database": "ok", "outbox": "ok", "platforms": {}},
    )
    clock.advance(minutes=2)  # the pending one is now 6 minutes old
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 200 and body["ok"] is True and body["status"] == "degraded"
    assert body["outbox"] == "stale: 1 messages undelivered for more than 300 s (oldest 360 s: wecom 1)"


async def test_health_says_when_a_platform_token_cannot_be_fetched(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any
) -> None:
    state = WeComFakeState()
    fake = await aiohttp_server(build_wecom_fake_app(state))
    base = str(fake.make_url("")).rstrip("/")
    wrong = settings_for(database_url, tmp_path, secret="wrong-secret-1234", api_base=base)
    client = await aiohttp_client(build_app(wrong, clock=FixedClock(NOW)))
    r = await client.get("/healthz")
    text = await r.text()
    body = await r.json()
    assert r.status == 200 and body["status"] == "degraded"
    why = "error: token not fetched: /cgi-bin/gettoken: errcode 40001 invalid credential"
    assert body["platforms"] == {"wecom": why}
    assert "wrong-secret-1234" not in text
    state.secret = "wrong-secret-1234"  # fixed on WeCom's side: not asked again for a while all the same
    assert (await (await client.get("/healthz")).json())["platforms"]["wecom"].startswith("error")
    assert state.token_fetches == 0

    right = settings_for(database_url, tmp_path, secret="wrong-secret-1234", api_base=base)
    good = await aiohttp_client(build_app(right, clock=FixedClock(NOW)))
    body = await (await good.get("/healthz")).json()
    assert (body["status"], body["platforms"]) == ("ok", {"wecom": "ok"})
    assert state.token_fetches == 1
    await (await good.get("/healthz")).json()
    assert state.token_fetches == 1  # the token is held: a probe costs WeCom nothing


async def test_the_server_says_what_it_is_at_start(
    aiohttp_client: Any, database_url: str, engine: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pandian.app")
    await aiohttp_client(build_app(settings_for(database_url, tmp_path), clock=FixedClock(NOW)))
    said = [r.getMessage() for r in caplog.records if r.name == "pandian.app"]
    assert "platforms: wecom (webhook)" in said
    routes = next(line for line in said if line.startswith("routes: "))
    assert "GET /wecom/callback" in routes and "POST /wecom/callback" in routes and "GET /healthz" in routes
    assert any(line.startswith("database: ") for line in said)
    assert "public URL: not set (no links to count photos on cards)" in said


def test_the_start_report_masks_passwords(tmp_path: Any) -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://pandian:hunter2@db.internal:5432/pandian",
        redis_url="redis://:r3dis-pass@cache:6379/0",
        server={"public_url": "https://pandian.example.com", "photos_dir": str(tmp_path)},
    )
    app = build_app(settings, clock=FixedClock(NOW))
    lines = startup_report(settings, app, [], [])
    assert "hunter2" not in "\n".join(lines) and "r3dis-pass" not in "\n".join(lines)
    assert "database: postgresql+asyncpg://pandian:***@db.internal:5432/pandian" in lines
    assert "redis: redis://:***@cache:6379/0" in lines
    assert "public URL: https://pandian.example.com" in lines and "platforms: none" in lines
