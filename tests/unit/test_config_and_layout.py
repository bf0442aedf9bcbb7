from __future__ import annotations

import ast
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in list(__import__("os").environ):
        if k.startswith("PANDIAN_"):
            monkeypatch.delenv(k)
    s = Settings()
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'pandian.db'}"
    assert s.timezone == "Asia/Shanghai" and s.redis_url is None
    assert s.planning.policies["A"].counts_per_year == 52
    assert (s.planning.policies["B"].counts_per_year, s.planning.policies["C"].counts_per_year) == (12, 4)


def test_toml_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pandian.toml").write_text(
        'timezone = "Asia/Urumqi"\n[planning]\ndormant_days = 60\n[planning.policies.A]\ncounts_per_year = 26\n'
        "[calendar]\nextra_working_days = [2026-12-26]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PANDIAN_PLANNING__DORMANT_DAYS", "45")
    s = Settings()
    assert s.timezone == "Asia/Urumqi"
    assert s.planning.dormant_days == 45  # the environment wins
    assert s.planning.policies["A"].counts_per_year == 26 and s.planning.policies["C"].counts_per_year == 4
    assert s.calendar.extra_working_days == [date(2026, 12, 26)]


def test_bad_values_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDIAN_CLASSIFICATION__A_CUTOFF", "0.97")
    with pytest.raises(ValidationError, match="a_cutoff"):
        Settings()
    monkeypatch.delenv("PANDIAN_CLASSIFICATION__A_CUTOFF")
    with pytest.raises(ValidationError):
        Settings(timezone="Nowhere/Land")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_dependency_direction() -> None:
    pure = {"classification.py", "calendar.py", "enums.py", "quantity.py"}
    for path in (ROOT / "core").rglob("*.py"):
        mods = _imports(path)
        assert not any(m.split(".")[0] in ("bot", "integrations") for m in mods), (
            f"{path} imports bot/integrations"
        )
        rel = path.relative_to(ROOT / "core").as_posix()
        if path.name in pure or rel in (
            "scheduling/planner.py",
            "scheduling/policy.py",
            "scheduling/assignment.py",
            "variance/tolerance.py",
            "variance/rules.py",
            "variance/workflow.py",
        ):
            assert not any(m.startswith("sqlalchemy") for m in mods), f"{rel} is pure but imports SQLAlchemy"
