"""Run in another folder, pandian used to create an empty pandian.db there and show empty results. Now the
commands that read refuse, saying where they looked and what to do; the ones that put data in create the
database and say where."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from core.db import sqlite_file
from tests.clock import local
from tests.integration.pinned_cli import PinnedCli

AT = local(date(2026, 11, 30), 9, 0)


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder with no database, and no PANDIAN_* setting pointing anywhere."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("PANDIAN_") and not k.startswith("PANDIAN_TEST_"):
            monkeypatch.delenv(k)
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [["tasks", "--as", "1001"], ["variances"], ["plan"], ["report", "progress"], ["jobs", "list"],
     ["audit", "1"], ["erp", "check"]],
)  # fmt: skip
def test_a_reading_command_refuses_a_missing_database(elsewhere: Path, args: list[str]) -> None:
    r = PinnedCli(AT).run(*args)
    assert r.exit_code == 1, r.output
    assert (
        f"找不到数据库 {elsewhere / 'pandian.db'}" in r.output
        and f"No database at {elsewhere / 'pandian.db'}" in r.output
    )
    assert "PANDIAN_DATABASE_URL" in r.output and "pandian db upgrade" in r.output
    assert "Traceback" not in r.output
    assert not (elsewhere / "pandian.db").exists()  # nothing was created


def test_a_relative_url_is_resolved_in_the_message(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDIAN_DATABASE_URL", "sqlite:///data/pandian.db")
    r = PinnedCli(AT).run("variances")
    assert r.exit_code == 1 and str(elsewhere / "data" / "pandian.db") in r.output


def test_db_upgrade_creates_it_and_says_where(elsewhere: Path) -> None:
    cli = PinnedCli(AT)
    r = cli.run("db", "upgrade")
    assert r.exit_code == 0, r.output
    assert (
        f"新建数据库 {elsewhere / 'pandian.db'} / creating a new database at {elsewhere / 'pandian.db'}"
        in r.stderr
    )
    assert (elsewhere / "pandian.db").is_file()
    again = cli.run("variances")  # now it exists: the command runs
    assert again.exit_code == 0, again.output
    assert "新建数据库" not in again.output


def test_an_import_may_create_the_database(elsewhere: Path) -> None:
    locs = elsewhere / "locations.csv"
    locs.write_text("仓库,库位\nSH01,A-01-01\n", encoding="utf-8")
    r = PinnedCli(AT).run("import", str(locs))
    assert r.exit_code == 0, r.output
    assert "新建数据库" in r.stderr and (elsewhere / "pandian.db").is_file()


def test_sqlite_file() -> None:
    assert sqlite_file("sqlite+aiosqlite:////srv/pandian/pandian.db") == Path("/srv/pandian/pandian.db")
    assert sqlite_file("sqlite:///rel.db") == Path.cwd() / "rel.db"
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://u@h/db") is None


def test_an_unreachable_postgresql_is_one_line_without_its_password(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PANDIAN_DATABASE_URL", "postgresql://pandian:pg-SECRET-1@127.0.0.1:1/pandian")
    r = PinnedCli(AT).run("variances")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("Error: 无法连接数据库 postgresql://pandian:******@127.0.0.1:1/pandian")
    assert "Cannot connect to the database" in r.output and "PANDIAN_DATABASE_URL" in r.output
    assert "pg-SECRET-1" not in r.output
