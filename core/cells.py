"""Cells written to spreadsheets that finance and the ERP open: text is always text, never a formula.

A name imported from a CSV can be ``=HYPERLINK("http://…")`` or ``=cmd|' /C calc'!A0`` (DDE). Written as is,
Excel and WPS run it when the file is opened. ``safe_cell`` is the one place every export (the adjustments
export in .xlsx and .csv, the ERP spreadsheet outbox, ``pandian report --format csv``) passes its text cells
through:

- CSV has no cell types: text that begins with ``=`` ``+`` ``-`` ``@``, a tab or a carriage return gets a
  leading apostrophe (the OWASP "CSV injection" rule), which Excel shows as the text itself.
- In .xlsx a cell has a type: such text is written as a string cell (openpyxl would otherwise write text that
  begins with ``=`` as a formula and ``#N/A`` as an error) with Excel's quote prefix, so it stays text even when
  someone edits the cell. Its content is unchanged. Control characters that .xlsx cannot hold are dropped.

Numbers, dates and other non-text values pass unchanged.
"""

from __future__ import annotations

import re
from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_ILLEGAL_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # characters an .xlsx cannot store
_XLSX_ERRORS = frozenset(("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A"))


def is_formula_like(text: str) -> bool:
    """Would a spreadsheet program read this text as a formula (or a DDE command)?"""
    return text.startswith(TRIGGERS)


def safe_cell(value: Any, sheet: Any = None) -> Any:
    """``value`` as written to a CSV (``sheet`` None) or to an openpyxl write-only ``sheet``: text that a
    spreadsheet would run is made inert (see the module docstring); anything else is returned unchanged."""
    if not isinstance(value, str):
        return value
    if sheet is None:
        return "'" + value if is_formula_like(value) else value
    text = _ILLEGAL_XML.sub("", value)
    if not (is_formula_like(text) or text in _XLSX_ERRORS):
        return text
    from openpyxl.cell import WriteOnlyCell

    cell = WriteOnlyCell(sheet, value=text)
    cell.data_type = "s"  # openpyxl infers "f" for "=…" and "e" for "#N/A"
    cell.quotePrefix = True
    return cell


def safe_row(values: list[Any], sheet: Any = None) -> list[Any]:
    return [safe_cell(v, sheet) for v in values]
