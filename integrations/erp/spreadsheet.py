"""The built-in default connector: spreadsheets in, spreadsheets out, behind the connector interface.

- ``pull`` offers the files in ``erp.spreadsheet.inbox`` whose headers say they hold the entity asked for
  (``core.importing.guess_kind``), oldest name first, each as it is; ``sync`` imports them with
  ``core.importing.import_file`` (all or nothing per file, the import's messages). The cursor is the list of
  the files' SHA-256 digests: a file is imported once, a changed file again.
- ``write_back`` is the adjustment export of ``pandian export`` (``core.variance.export``) into
  ``erp.spreadsheet.outbox``: every pending adjustment claimed into one file, published after the commit.
- ``stock_snapshot`` (for reconciliation) reads the newest stock file of the inbox.

Every file goes through ``core.importing.Sheet``, the reader of ``pandian import``: an .xlsx is checked against
the import limits (``limits``, ``[importing]``; decompression bombs are refused before parsing) and a CSV's
encoding is checked, with the same messages. The outbox file is the adjustment export, whose text cells are
written as text (``core.cells.safe_cell``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import ImportSettings, Settings
from core.importing import _IMPORTERS, ImportFailed, Sheet, guess_kind, map_headers
from core.variance.export import export_adjustments
from integrations.erp.base import Connector, Entity, ErpRejected, FileSource, Page, StockRecord

SUFFIXES = (".xlsx", ".xlsm", ".csv")
KEEP = 2000  # digests remembered per entity


class SpreadsheetConnector(Connector):
    system = "spreadsheet"
    label = "表格 spreadsheet"
    snapshots = False
    limits: ImportSettings | None = None  # the import limits (settings.importing); None: their defaults

    @property
    def inbox(self) -> Path | None:
        return Path(self.erp.spreadsheet.inbox) if self.erp.spreadsheet.inbox else None

    @property
    def outbox(self) -> Path | None:
        return Path(self.erp.spreadsheet.outbox) if self.erp.spreadsheet.outbox else None

    async def check(self) -> list[str]:
        out = []
        for what, path in (("inbox", self.inbox), ("outbox", self.outbox)):
            if path is None:
                out.append(f"erp.spreadsheet.{what} 未设置 / not set")
                continue
            if not path.is_dir():
                raise ErpRejected(f"目录不存在：{path}", f"no such directory: {path}")
            if not os.access(path, os.W_OK if what == "outbox" else os.R_OK):
                raise ErpRejected(f"没有权限访问目录：{path}", f"no access to directory: {path}")
            out.append(
                f"{what}: {path}（{len(self._files())} 个表格 / spreadsheets）"
                if what == "inbox"
                else f"{what}: {path}"
            )
        return out

    def _files(self) -> list[Path]:
        if self.inbox is None or not self.inbox.is_dir():
            return []
        return sorted(p for p in self.inbox.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                      and not p.name.startswith((".", "~$")))  # fmt: skip

    async def pull(self, entity: Entity, cursor: str | None) -> AsyncIterator[Page]:
        seen: list[str] = json.loads(cursor) if cursor else []
        done = set(seen)
        for path in self._files():
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()  # in chunks: a file may be large
            if digest in done:
                continue
            sheet = Sheet(path, self.limits)
            kind = guess_kind(sheet.headers, file=sheet.name)
            if kind != entity.value:
                continue
            seen.append(digest)
            done.add(digest)
            yield Page([FileSource(path, kind, digest)], json.dumps(seen[-KEEP:]))

    async def stock_snapshot(self) -> list[StockRecord]:
        """The newest stock file in the inbox, parsed by the import's own rules."""
        files = [
            p for p in self._files() if guess_kind(Sheet(p, self.limits).headers, file=p.name) == "stock"
        ]
        if not files:
            raise ErpRejected(
                "收件目录里没有库存表，无法对账（把 ERP 导出的库存表放进 erp.spreadsheet.inbox）",
                "no stock spreadsheet in the inbox to reconcile against (put the ERP's stock export there)",
            )
        newest = max(files, key=lambda p: p.stat().st_mtime)
        sheet = Sheet(newest, self.limits)
        cmap, issues = map_headers("stock", sheet.headers, sheet.name)
        if issues:
            raise ImportFailed(issues)
        # the stock importer parses rows without touching the database
        importer: Any = _IMPORTERS["stock"](
            cast(AsyncSession, None), sheet, cmap, self.tz, datetime.now(self.tz)
        )
        out = [StockRecord(r.sku, r.warehouse, r.location, r.qty, r.lot) for r in importer.records()]
        importer.issues.raise_if_any()
        return out

    async def write_back(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime
    ) -> dict[str, int]:
        if self.outbox is None:
            return {"exported": 0, "adjustments": 0}
        fmt = self.erp.spreadsheet.format
        path = self.outbox / f"pandian-adjustments-{now.astimezone(self.tz):%Y%m%d-%H%M%S}.{fmt}"
        async with sessionmaker() as s:
            result = await export_adjustments(s, path, fmt, tz=self.tz, now=now)
            try:
                await s.commit()
            except BaseException:
                result.discard()
                raise
            result.publish()
        return {
            "exported": 1 if result.adjustments else 0,
            "adjustments": result.adjustments,
            "lines": result.lines,
        }
