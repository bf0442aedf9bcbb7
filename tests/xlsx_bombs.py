"""Hostile .xlsx files for the import's limits (``core.xlsx``).

``declared_bomb`` is what the tests use: a small, valid workbook whose worksheet declares a huge unpacked size
in the zip's directory (built in milliseconds; the check reads the directory, so it sees what a real bomb
shows). ``worksheet_bomb`` and ``shared_strings_bomb`` really deflate gigabytes of XML (seconds of CPU): they
are for measuring the refusal (``python -m tests.xlsx_bombs DIR`` writes both), and small versions of them
check the limits that need the content to be read (string count, row length).
"""

from __future__ import annotations

import struct
import sys
import zipfile
from pathlib import Path

_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/sharedStrings.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
        "</Types>"
    ),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Target="xl/workbook.xml" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
        "</Relationships>"
    ),
    "xl/workbook.xml": (
        f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{_NS}" xmlns:r="{_REL}">'
        '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
    ),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Target="worksheets/sheet1.xml" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>'
        '<Relationship Id="rId2" Target="sharedStrings.xml" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"/>'
        "</Relationships>"
    ),
}
_HEAD = f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{_NS}"><sheetData>'
_TAIL = "</sheetData></worksheet>"
# a header row then data rows of the items kind, all shared strings 0 and 1 (sku, name) and inline text
_HEADER_ROW = '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
_DATA_ROW = '<row><c t="inlineStr"><is><t>A1</t></is></c><c t="inlineStr"><is><t>螺丝</t></is></c></row>'
_STRINGS_HEAD = (
    f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{_NS}"><si><t>sku</t></si><si><t>name</t></si>'
)
_STRINGS_TAIL = "</sst>"


def _write(path: Path, sheet_chunks: object, strings_chunks: object) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, text in _PARTS.items():
            zf.writestr(name, text)
        for name, chunks in (
            ("xl/worksheets/sheet1.xml", sheet_chunks),
            ("xl/sharedStrings.xml", strings_chunks),
        ):
            with zf.open(name, "w", force_zip64=True) as f:
                for chunk in chunks:  # type: ignore[attr-defined]
                    f.write(chunk.encode() if isinstance(chunk, str) else chunk)
    return path


def workbook(path: Path, rows: int = 3) -> Path:
    """A small, valid items workbook (header sku/name and ``rows`` rows)."""
    return _write(path, [_HEAD, _HEADER_ROW, _DATA_ROW * rows, _TAIL], [_STRINGS_HEAD, _STRINGS_TAIL])


def declared_bomb(path: Path, declared: int = 2 << 30, member: str = "xl/worksheets/sheet1.xml") -> Path:
    """A small valid workbook whose ``member`` declares ``declared`` unpacked bytes (below 4 GiB) in both the
    central directory and its local header: what the zip's directory of a real bomb shows."""
    workbook(path)
    data = bytearray(path.read_bytes())
    name = member.encode()
    # central directory entries (PK\x01\x02): uncompressed size at +24; local headers (PK\x03\x04): at +22.
    # The members were written with zip64 sizes (force_zip64): patch the zip64 extra field too.
    for sig, size_at, name_len_at, name_at in ((b"PK\x01\x02", 24, 28, 46), (b"PK\x03\x04", 22, 26, 30)):
        i = data.find(sig)
        while i != -1:
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if bytes(data[i + name_at : i + name_at + n]) == name:
                size = struct.unpack_from("<I", data, i + size_at)[0]
                if size == 0xFFFFFFFF:  # zip64: the size is in the extra field
                    extra_len = struct.unpack_from("<H", data, i + name_len_at + 2)[0]
                    extra = i + name_at + n
                    j = extra
                    while j < extra + extra_len:
                        tag, length = struct.unpack_from("<HH", data, j)
                        if tag == 1:
                            struct.pack_into("<Q", data, j + 4, declared)
                        j += 4 + length
                else:
                    struct.pack_into("<I", data, i + size_at, declared)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    return path


def worksheet_bomb(path: Path, unpacked: int = 2 << 30) -> Path:
    """A worksheet of ``unpacked`` bytes of identical rows (deflates about 1000 to 1)."""
    block = _DATA_ROW * (1 << 20 // len(_DATA_ROW))
    n = max(unpacked // len(block.encode()), 1)
    encoded = block.encode()
    return _write(
        path, [_HEAD, _HEADER_ROW, *(encoded for _ in range(n)), _TAIL], [_STRINGS_HEAD, _STRINGS_TAIL]
    )


def shared_strings_bomb(path: Path, unpacked: int = 1 << 30, distinct: bool = False) -> Path:
    """Shared strings of ``unpacked`` bytes: ``<si><t>a</t></si>`` over and over (or, ``distinct``, numbered
    strings, which deflate far less)."""
    if distinct:

        def strings() -> object:
            done, k = 0, 0
            while done < unpacked:
                chunk = "".join(f"<si><t>s{i}</t></si>" for i in range(k, k + 10_000)).encode()
                k += 10_000
                done += len(chunk)
                yield chunk

        body = strings()
    else:
        block = ("<si><t>a</t></si>" * 65536).encode()
        body = (block for _ in range(max(unpacked // len(block), 1)))
    return _write(
        path,
        [_HEAD, _HEADER_ROW, _DATA_ROW, _TAIL],
        [_STRINGS_HEAD, *body, _STRINGS_TAIL],  # type: ignore[list-item]
    )


def long_row(path: Path, cells: int) -> Path:
    """One data row of ``cells`` cells."""
    row = "<row>" + '<c t="inlineStr"><is><t>x</t></is></c>' * cells + "</row>"
    return _write(path, [_HEAD, _HEADER_ROW, row, _TAIL], [_STRINGS_HEAD, _STRINGS_TAIL])


if __name__ == "__main__":  # python -m tests.xlsx_bombs DIR: the two bombs of issue 10, for measuring
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for p in (worksheet_bomb(out / "bomb-2gib.xlsx"), shared_strings_bomb(out / "bomb-strings.xlsx")):
        with zipfile.ZipFile(p) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
        print(f"{p}: {p.stat().st_size / 2**20:.1f} MiB packed, {unpacked / 2**20:,.0f} MiB unpacked")
