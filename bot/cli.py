"""The ``pandian`` command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from core.config import Settings, load_settings
from core.db import make_engine, make_sessionmaker

T = TypeVar("T")
console = Console()
err = Console(stderr=True)


def run(coro_fn: Callable[[Settings], Awaitable[T]]) -> T:
    settings = load_settings()
    return asyncio.run(coro_fn(settings))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pandian")
def main() -> None:
    """pandian 盘点: cycle counting in WeCom, Feishu and DingTalk.

    Configuration comes from PANDIAN_* environment variables and an optional pandian.toml
    (see README). The database defaults to pandian.db in the working directory.
    """


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema (Alembic)."""
    from core import migrate

    async def go(settings: Settings) -> Any:
        engine = make_engine(settings.database_url)
        try:
            await migrate.upgrade(engine, revision)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    rev = run(go)
    console.print(f"数据库已升级到 {rev} / schema at revision {rev}")


_ = make_sessionmaker  # used by the commands below
