"""Reading an .xlsx that may be hostile: check the zip before parsing, then stream the first worksheet.

An .xlsx is a zip of XML parts. A few megabytes can unpack to gigabytes (a "decompression bomb"), and openpyxl
reads some parts whole (styles, the workbook) and keeps every shared string in memory. ``check`` looks at the
zip's directory first (the unpacked size of each member, their total, the compression ratio), then streams
the shared strings and the worksheets once, counting strings and measuring the longest row, all against
``ImportSettings``, and raises ``Refused`` (Chinese and English, saying what to do) before anything is parsed.
Python's zipfile never returns more bytes than a member declares (a member that lies fails its CRC check),
so the declared sizes can be trusted.

``rows`` streams the first worksheet's values with openpyxl's cell parser. A formula that was never calculated
(the file was written by a program, not saved by Excel) has no value; it comes out as a ``Formula`` (the
formula text), so the import can say "paste as values" instead of "empty". Row elements are dropped as soon as
they are read, and nothing outside the rows (hyperlinks, formatting) is kept.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any
from zlib import error as zlib_error

from core.config import ImportSettings

MIB = 1 << 20
MAX_MEMBERS = 10_000
RATIO_FROM = 16 * MIB  # members smaller than this may have any ratio (tiny XML parts compress very well)


class Formula(str):
    """A formula cell without a calculated value; the string is the formula, ``=`` included."""


class Refused(Exception):
    def __init__(self, zh: str, en: str) -> None:
        super().__init__(en)
        self.zh, self.en = zh, en


class Damaged(Exception):
    """Not a readable .xlsx (not a zip, a member fails its CRC, a part is not XML)."""


_SAVE_AS_CSV_ZH = "请在 Excel/WPS 中只保留要导入的工作表和列，另存为新的 .xlsx 或 CSV（UTF-8）后再导入"
_SAVE_AS_CSV_EN = "keep only the sheet and columns to import and save it again as .xlsx or CSV (UTF-8)"


def _mb(n: int | float) -> str:
    return f"{n / MIB:,.0f}"


def check(path: Path, limits: ImportSettings | None = None) -> None:
    """Refuse an .xlsx that would take too much memory or time to parse (see the module docstring)."""
    lim = limits or ImportSettings()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Damaged(str(exc)) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise Refused(
                f"文件里有 {len(infos):,} 个部件，正常的 Excel 表格不会这么多（最多 {MAX_MEMBERS:,}）；{_SAVE_AS_CSV_ZH}",
                f"the file holds {len(infos):,} parts, far more than an Excel workbook has (at most "
                f"{MAX_MEMBERS:,}); {_SAVE_AS_CSV_EN}",
            )
        total = sum(i.file_size for i in infos)
        if total > lim.xlsx_max_uncompressed_mb * MIB:
            raise Refused(
                f"文件解压后有 {_mb(total)} MB，超过上限 {lim.xlsx_max_uncompressed_mb:,} MB"
                f"（importing.xlsx_max_uncompressed_mb），可能是“压缩炸弹”或过大的文件；{_SAVE_AS_CSV_ZH}",
                f"unpacked, the file is {_mb(total)} MB, over the {lim.xlsx_max_uncompressed_mb:,} MB limit "
                f"(importing.xlsx_max_uncompressed_mb): a decompression bomb or a very large file; {_SAVE_AS_CSV_EN}",
            )
        for i in infos:
            if i.file_size >= RATIO_FROM and i.file_size > lim.xlsx_max_ratio * max(i.compress_size, 1):
                ratio = i.file_size / max(i.compress_size, 1)
                raise Refused(
                    f"文件中的“{i.filename}”压缩了 {ratio:,.0f} 倍（上限 {lim.xlsx_max_ratio:,.0f} 倍，"
                    f"importing.xlsx_max_ratio），正常的 Excel 表格只有 5 到 30 倍，这可能是“压缩炸弹”；{_SAVE_AS_CSV_ZH}",
                    f'part "{i.filename}" is compressed {ratio:,.0f} times (the limit is '
                    f"{lim.xlsx_max_ratio:,.0f}, importing.xlsx_max_ratio; Excel files are 5-30 times): this looks "
                    f"like a decompression bomb; {_SAVE_AS_CSV_EN}",
                )
        for i in infos:
            name = i.filename.lower()
            if _is_sheet(name):
                _scan(zf, i, _ROW, lim.xlsx_max_row_kb * 1024, None, "row")
            elif name.endswith("sharedstrings.xml"):
                if i.file_size > lim.xlsx_max_shared_strings_mb * MIB:
                    raise Refused(
                        f"文件中的文本表（共享字符串）解压后有 {_mb(i.file_size)} MB，超过上限 "
                        f"{lim.xlsx_max_shared_strings_mb:,} MB（importing.xlsx_max_shared_strings_mb）；请另存为 CSV（UTF-8）后再导入",
                        f"the shared strings part is {_mb(i.file_size)} MB unpacked, over the "
                        f"{lim.xlsx_max_shared_strings_mb:,} MB limit (importing.xlsx_max_shared_strings_mb); save "
                        "the sheet as CSV (UTF-8) and import that",
                    )
                _scan(zf, i, _SI, lim.xlsx_max_row_kb * 1024, lim.xlsx_max_shared_strings, "string")
            elif name.endswith((".xml", ".rels")) and i.file_size > lim.xlsx_max_part_mb * MIB:
                raise Refused(
                    f"文件中的“{i.filename}”解压后有 {_mb(i.file_size)} MB，超过上限 {lim.xlsx_max_part_mb:,} MB"
                    f"（importing.xlsx_max_part_mb），正常的 Excel 表格不会这么大；{_SAVE_AS_CSV_ZH}",
                    f'part "{i.filename}" is {_mb(i.file_size)} MB unpacked, over the {lim.xlsx_max_part_mb:,} MB '
                    f"limit (importing.xlsx_max_part_mb); {_SAVE_AS_CSV_EN}",
                )


def _is_sheet(name: str) -> bool:
    return name.startswith("xl/worksheets/") and name.endswith(".xml") and name.count("/") == 2


# an element's start or end tag, with or without a namespace prefix (``<row``, ``<x:row``, ``</row>``)
_ROW = re.compile(rb"<(/?)(?:[A-Za-z_][\w.-]{0,30}:)?row(?=[\s/>])")
_SI = re.compile(rb"<(/?)(?:[A-Za-z_][\w.-]{0,30}:)?si(?=[\s/>])")
_CARRY = 64  # longer than any tag the patterns match


def _scan(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, tag: re.Pattern[bytes], max_len: int, max_count: int | None,
    what: str,
) -> None:  # fmt: skip
    """Stream one member: count the ``tag`` elements and measure each, refusing past the limits."""
    count = 0
    start: int | None = None  # offset of the open element
    pos = 0  # offset of the end of the data read so far
    carry = b""
    try:
        with zf.open(info) as f:
            while chunk := f.read(4 * MIB):
                buf = carry + chunk
                base = pos - len(carry)
                for m in tag.finditer(buf):
                    if m.end() <= len(carry):
                        continue  # seen with the previous chunk
                    at = base + m.start()
                    if start is not None and at - start > max_len:
                        _too_long(info, what, count, max_len)
                    if m.group(1):  # a closing tag
                        start = None
                    else:
                        count += 1
                        start = at
                        if max_count is not None and count > max_count:
                            raise Refused(
                                f"文件中的不同文本（共享字符串）超过 {max_count:,} 个（importing.xlsx_max_shared_strings），"
                                "可能是“压缩炸弹”或过大的文件；请另存为 CSV（UTF-8）后再导入",
                                f"the file holds more than {max_count:,} distinct texts (shared strings, "
                                "importing.xlsx_max_shared_strings): a decompression bomb or a very large file; save "
                                "the sheet as CSV (UTF-8) and import that",
                            )
                pos += len(chunk)
                if start is not None and pos - start > max_len:
                    _too_long(info, what, count, max_len)
                carry = buf[-_CARRY:]
    except (zipfile.BadZipFile, zlib_error, OSError, EOFError) as exc:
        raise Damaged(str(exc)) from None


def _too_long(info: zipfile.ZipInfo, what: str, count: int, max_len: int) -> None:
    if what == "row":
        raise Refused(
            f"工作表“{info.filename}”的第 {count:,} 行超过 {max_len // 1024:,} KB（importing.xlsx_max_row_kb），"
            f"正常的表格行不会这么长，可能是“压缩炸弹”；{_SAVE_AS_CSV_ZH}",
            f'row {count:,} of worksheet "{info.filename}" is longer than {max_len // 1024:,} KB '
            f"(importing.xlsx_max_row_kb), which no real row is: this looks like a decompression bomb; "
            f"{_SAVE_AS_CSV_EN}",
        )
    raise Refused(
        f"文件中的第 {count:,} 个共享文本超过 {max_len // 1024:,} KB（importing.xlsx_max_row_kb），"
        f"Excel 的一格最多 32767 个字符，可能是“压缩炸弹”；{_SAVE_AS_CSV_ZH}",
        f"shared string {count:,} is longer than {max_len // 1024:,} KB (importing.xlsx_max_row_kb), while an "
        f"Excel cell holds at most 32,767 characters: this looks like a decompression bomb; {_SAVE_AS_CSV_EN}",
    )


# --------------------------------------------------------------------------------------------------- reading


def rows(path: Path) -> Generator[tuple[int, list[Any]], None, None]:
    """``(row number, values)`` of the first worksheet, every row the file stores (blank ones included).
    Raises ``Damaged`` for a file openpyxl cannot read. Call ``check`` first."""
    # openpyxl's reader, step by step as ``load_workbook`` takes them, without its worksheet objects: a
    # read-only worksheet parses its whole XML just to learn its size when the file gives none
    from openpyxl.reader.excel import ExcelReader  # imported lazily: slow to import, only needed here
    from openpyxl.styles.stylesheet import apply_stylesheet

    try:
        reader = ExcelReader(str(path), read_only=True, data_only=True)
    except Exception as exc:
        raise Damaged(str(exc)) from None
    try:
        try:
            reader.read_manifest()
            reader.read_strings()
            reader.read_workbook()
            apply_stylesheet(reader.archive, reader.wb)
            target = next(
                (rel.target for _sheet, rel in reader.parser.find_sheets()
                 if rel.target in reader.valid_files and "chartsheet" not in rel.Type),
                None,
            )  # fmt: skip
        except Exception as exc:
            raise Damaged(str(exc)) from None
        if target is None:
            raise Damaged("no worksheet")
        wb = reader.wb
        parser = _parser(
            reader.archive.open(target),
            reader.shared_strings,
            wb.epoch,
            wb._date_formats,
            wb._timedelta_formats,
        )
        try:
            yield from parser.values()
        except Damaged:
            raise
        except Exception as exc:  # a malformed part: XML errors, bad numbers, bad references
            raise Damaged(str(exc)) from None
        finally:
            parser.source.close()
    finally:
        reader.archive.close()


def _parser(src: IO[bytes], shared: list[str], epoch: Any, date_formats: Any, td_formats: Any) -> Any:
    from openpyxl.worksheet._reader import WorkSheetParser
    from openpyxl.xml.constants import SHEET_MAIN_NS
    from openpyxl.xml.functions import iterparse

    row_tag, data_tag = f"{{{SHEET_MAIN_NS}}}row", f"{{{SHEET_MAIN_NS}}}sheetData"
    formula_tag = f"{{{SHEET_MAIN_NS}}}f"
    keep = {f"{{{SHEET_MAIN_NS}}}{t}" for t in ("c", "v", "f", "is", "t", "r", "rPr")} | {row_tag}
    keep |= {f"{{{SHEET_MAIN_NS}}}{t}" for t in ("rFont", "b", "i", "sz", "color", "u", "vertAlign", "family",
                                                  "charset", "scheme", "strike", "outline", "shadow", "condense",
                                                  "extend", "rPh", "phoneticPr")}  # fmt: skip

    class Parser(WorkSheetParser):
        def parse_cell(self, element: Any) -> dict[str, Any]:
            cell: dict[str, Any] = super().parse_cell(element)
            if cell["value"] is None:
                f = element.find(formula_tag)
                if f is not None:
                    cell["value"] = Formula("=" + (f.text or "…"))
            return cell

        def parse_row(self, row: Any) -> tuple[int, list[dict[str, Any]]]:
            # as openpyxl's, without keeping each row's attributes (1 M formatted rows would keep 1 M dicts)
            r = row.get("r")
            n: int = int(float(r)) if r else int(self.__dict__.get("row_counter", 0)) + 1
            self.row_counter = n
            self.col_counter = 0
            return n, [self.parse_cell(el) for el in row]

        def values(self) -> Generator[tuple[int, list[Any]], None, None]:
            data = None
            for event, el in iterparse(self.source, events=("start", "end")):
                if event == "start":
                    if el.tag == data_tag:
                        data = el
                    continue
                if el.tag == row_tag:
                    n, cells = self.parse_row(el)
                    if data is not None:
                        data.clear()  # drop the rows read so far
                    else:
                        el.clear()
                    width = max((c["column"] for c in cells), default=0)
                    values: list[Any] = [None] * width
                    for c in cells:
                        values[c["column"] - 1] = c["value"]
                    yield n, values
                elif el.tag not in keep:
                    el.clear()  # formatting, hyperlinks, merged cells...: not needed, not kept

    return Parser(src, shared, data_only=True, epoch=epoch, date_formats=date_formats,
                  timedelta_formats=td_formats)  # fmt: skip
