"""ERP connectors: book stock in, approved adjustments out.

``make_connector(settings, clock=…)`` builds the configured one (``erp.connector``: spreadsheet (default), kingdee,
yonbip, u8, sap). For the scheduler: ``scheduled_sync`` and ``drain_postings`` (each builds and closes its own
connector and returns counts). These are the ERP side's composition root: the time comes in as ``clock`` (a
callable answering an aware datetime); without one they use ``core.clock.SystemClock``, the one wall clock. See ``sync.py`` for the pull, ``posting.py`` for the write-back queue and
``reconcile.py`` for the comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from integrations.erp.base import ApiConnector, Connector

log = logging.getLogger("pandian.erp")
Clock = Callable[[], datetime]


def _clock(clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    from core.clock import SystemClock

    return SystemClock().now


def make_connector(settings: Settings, *, clock: Clock | None = None) -> Connector:
    name = settings.erp.connector
    stamp = _clock(clock)  # the time of day the ERPs' signed logins carry
    if name == "kingdee":
        from integrations.erp.kingdee import KingdeeConnector

        return KingdeeConnector(settings.erp, settings.tz, stamp=stamp)
    if name == "yonbip":
        from integrations.erp.yonbip import YonBipConnector

        return YonBipConnector(settings.erp, settings.tz, stamp=stamp)
    if name == "u8":
        from integrations.erp.u8 import U8Connector

        return U8Connector(settings.erp, settings.tz)
    if name == "sap":
        from integrations.erp.sap import SapConnector

        return SapConnector(settings.erp, settings.tz)
    from integrations.erp.spreadsheet import SpreadsheetConnector

    return SpreadsheetConnector(settings.erp, settings.tz)


async def scheduled_sync(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, clock: Clock | None = None
) -> dict[str, int]:
    """One incremental sync of everything (what is due). Counts per entity and ``errors`` (the run and its
    error are also in ``erp_sync_run``)."""
    from integrations.erp.sync import sync

    clock = _clock(clock)
    connector = make_connector(settings, clock=clock)
    try:
        report = await sync(sessionmaker, settings, connector, clock=clock)
    finally:
        await connector.close()
    return report.counts()


async def drain_postings(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, clock: Clock | None = None
) -> dict[str, int]:
    """One pass of the write-back: queue what is due, post a batch (or export, for the spreadsheet)."""
    clock = _clock(clock)
    connector = make_connector(settings, clock=clock)
    try:
        if isinstance(connector, ApiConnector):
            from integrations.erp.posting import drain_backlog

            return await drain_backlog(sessionmaker, settings, connector, now=clock(), clock=clock)
        return await connector.write_back(sessionmaker, settings, now=clock())
    finally:
        await connector.close()


__all__ = ["ApiConnector", "Connector", "drain_postings", "make_connector", "scheduled_sync"]
