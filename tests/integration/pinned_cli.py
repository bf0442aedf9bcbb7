"""The command line under test, at a time the test chose: every ``invoke`` runs with ``CliRoot(FixedClock)``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from click.testing import CliRunner, Result

from bot.cli import main
from bot.cli_clock import CliRoot
from core.db import make_engine, make_sessionmaker
from tests.clock import FixedClock


def recount_of(url: str, task_id: int) -> int:
    """The open blind recount of ``task_id`` (the counter who counted it is never told: counts are blind)."""
    from sqlalchemy import select

    from core.models import CountTask

    ((rid,),) = query(
        url, select(CountTask.id).where(CountTask.parent_task_id == task_id, CountTask.status == "open")
    )
    return int(rid)


def query(url: str, stmt: Any) -> Any:
    """The rows of ``stmt`` on the database at ``url``, read from the test (the CLI runs its own event loop)."""

    async def go() -> Any:
        eng = make_engine(url)
        async with make_sessionmaker(eng)() as s:
            out = (await s.execute(stmt)).all()
        await eng.dispose()
        return out

    return asyncio.run(go())


class PinnedCli(CliRunner):
    """A CliRunner whose commands read ``clock`` (move it with ``clock.set`` / ``clock.advance``)."""

    def __init__(self, at: datetime, **kw: Any) -> None:
        super().__init__(**kw)
        self.clock = FixedClock(at)

    def invoke(self, cli: Any, args: str | Sequence[str] | None = None, **kw: Any) -> Result:  # type: ignore[override]
        kw.setdefault("obj", CliRoot(self.clock))
        return super().invoke(cli, args, **kw)

    def run(self, *args: str) -> Result:
        """``pandian ARGS``."""
        return self.invoke(main, list(args))

    def ok(self, *args: str) -> str:
        """``pandian ARGS``, which must succeed; its output."""
        r = self.run(*args)
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r.output
