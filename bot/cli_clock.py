"""The command line's clock: the one the CLI's composition root (``bot.cli.main``) hands its verbs."""

from __future__ import annotations

from datetime import datetime

import click

from core.clock import Clock, SystemClock


class CliRoot:
    """What the command line's composition root hands every verb: the one clock. Tests pin it with
    ``CliRunner().invoke(main, args, obj=CliRoot(FixedClock(...)))``; otherwise it is the wall clock."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()


def clock() -> Clock:
    """The clock of the running command (the wall clock outside a click context)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_object(CliRoot) if ctx is not None else None
    return root.clock if root is not None else SystemClock()


def now() -> datetime:
    return clock().now()
