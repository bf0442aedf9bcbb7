"""`pandian jobs ...` commands (filled in by the jobs work)."""

from __future__ import annotations

import click


@click.group()
def jobs() -> None:
    """jobs"""
