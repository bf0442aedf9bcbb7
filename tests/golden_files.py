"""Golden files for rendered cards: ``<name>.<platform>.json`` (Chinese) or ``<name>_en.<platform>.json``.

``PANDIAN_UPDATE_GOLDEN=1`` rewrites them from the current renderers; otherwise a difference fails the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def golden_name(name: str, lang: str, platform: str) -> str:
    return f"{name}.{platform}.json" if lang == "zh" else f"{name}_en.{platform}.json"


def assert_golden(folder: Path, name: str, lang: str, platform: str, rendered: Any) -> None:
    got = json.dumps(rendered, ensure_ascii=False, indent=2) + "\n"
    path = folder / golden_name(name, lang, platform)
    if os.environ.get("PANDIAN_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.exists(), f"missing golden file {path.name}: run with PANDIAN_UPDATE_GOLDEN=1"
    assert got == path.read_text(encoding="utf-8")
