"""Count photos on review and approval cards: signed, expiring links served by pandian."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.app import build_app
from bot.flows import payload_key, sync_cards
from bot.photos import PhotoStore, signed_url
from core.clock import FixedClock
from core.config import Settings
from core.models import CountEntry, OutboxMessage
from tests.integration.test_card_actions import variance_in_review

BASE = "https://pandian.example.com"
NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def settings_for(database_url: str, tmp_path: Any) -> Settings:
    return Settings(
        database_url=database_url,
        wecom={"corp_id": "c"},
        server={"payload_secret": "p" * 20, "public_url": BASE, "photos_dir": str(tmp_path / "photos")},
    )


async def test_photo_links_are_signed_and_expire(
    engine: Any, aiohttp_client: Any, database_url: str, tmp_path: Any
) -> None:
    settings = Settings(database_url=database_url,
                        server={"payload_secret": "p" * 20, "photos_dir": str(tmp_path / "photos")})  # fmt: skip
    ref = PhotoStore(tmp_path / "photos").save(b"\xff\xd8\xff jpeg bytes")
    key = payload_key(settings)
    clock = FixedClock(NOW)
    client = await aiohttp_client(build_app(settings, clock=clock))

    def path(url: str) -> str:
        return url.removeprefix(BASE)

    good = signed_url(BASE, ref, key, int(NOW.timestamp()) + 60)
    resp = await client.get(path(good))
    assert resp.status == 200 and await resp.read() == b"\xff\xd8\xff jpeg bytes"
    assert (await client.get(path(good).replace("s=", "s=x"))).status == 403  # tampered
    assert (
        await client.get(path(signed_url(BASE, ref, key, int(NOW.timestamp()) - 1)))
    ).status == 403  # expired
    assert (
        await client.get(path(signed_url(BASE, ref, b"another key" * 2, int(NOW.timestamp()) + 60)))
    ).status == 403
    assert (await client.get(f"/photos/{ref}")).status == 403  # unsigned
    assert (await client.get("/photos/..%2Fsecret")).status in (403, 404)
    gone = "0" * 64 + ".jpg"
    assert (await client.get(path(signed_url(BASE, gone, key, int(NOW.timestamp()) + 60)))).status == 404


async def test_review_cards_link_the_count_photos(sessionmaker: async_sessionmaker[AsyncSession], database_url: str,
                                                  tmp_path: Any) -> None:  # fmt: skip
    vid, _ = await variance_in_review(sessionmaker)
    settings = settings_for(database_url, tmp_path)
    async with sessionmaker() as s, s.begin():
        await s.execute(update(CountEntry).values(photos=["a" * 64 + ".jpg"]))
        await sync_cards(s, settings, NOW)
    async with sessionmaker() as s:
        rows = (
            (await s.execute(select(OutboxMessage).where(OutboxMessage.subject == f"review:{vid}")))
            .scalars()
            .all()
        )
    assert rows
    for row in rows:
        links = row.body["card"]["jump_list"]
        assert len(links) == 1 and links[0]["url"].startswith(f"{BASE}/photos/{'a' * 64}.jpg?e=")
