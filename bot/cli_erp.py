"""`pandian erp ...` commands (filled in by the erp work)."""

from __future__ import annotations

import click


@click.group()
def erp() -> None:
    """erp"""
