"""`pandian config`: the settings in effect, secrets masked, and where each one came from.

Importing this module also registers the chat platforms' settings models with ``core.config``, so that
``load_settings`` checks a ``[wecom]``, ``[feishu]`` or ``[dingtalk]`` section (unknown keys, bad values)
before anything starts. ``bot.cli`` registers the command at its end."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from core.config import PLATFORM_SECTIONS, Settings, config_path, load_settings, register_platform
from core.config_check import (
    MASK,
    SECRET_NAMES,
    ConfigError,
    env_setting_names,
    items_model_of,
    mask_url,
    model_of,
    secret_fields,
)
from core.db import sqlite_file


def register_platforms() -> None:
    from integrations.dingtalk.settings import DingTalkSettings
    from integrations.feishu.settings import FeishuSettings
    from integrations.wecom.settings import WeComSettings

    register_platform("wecom", WeComSettings)
    register_platform("feishu", FeishuSettings)
    register_platform("dingtalk", DingTalkSettings)


register_platforms()


# Commands that may create a missing SQLite file: they put data in. Every other command refuses to start on a
# database that is not there (run in the wrong folder, it would silently create an empty one and show nothing).
CREATES_DATABASE = {("db", "upgrade"), ("import",), ("demo-data",), ("erp", "sync")}


def _command_path() -> tuple[str, ...] | None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return tuple(reversed(names))


def database_present(settings: Settings) -> None:
    """Refuse to open a SQLite file that does not exist, saying where it looked and what to do; the commands
    that put data in (``CREATES_DATABASE``) create it and say where. ``bot.cli.run`` calls this."""
    path = sqlite_file(settings.database_url)
    if path is None or path.exists():
        return
    command = _command_path()
    if command is None or command in CREATES_DATABASE:
        click.echo(f"新建数据库 {path} / creating a new database at {path}", err=True)
        return
    raise click.ClickException(
        f"找不到数据库 {path}（当前目录 {Path.cwd()}）。请在数据所在的目录运行，或设置 PANDIAN_DATABASE_URL "
        f"指向它（如 sqlite:////srv/pandian/pandian.db）；新建数据库请运行 pandian db upgrade。"
        f" / No database at {path} (working directory {Path.cwd()}). Run pandian where its data is, or set "
        f"PANDIAN_DATABASE_URL to it (e.g. sqlite:////srv/pandian/pandian.db); to create a new one, run "
        f"pandian db upgrade."
    )


def database_unreachable(settings: Settings, exc: BaseException) -> str | None:
    """When a command failed with ``exc`` and the database cannot be reached, the bilingual line that says
    so (the URL's password masked); None otherwise (the failure is the command's own). ``bot.cli.run`` asks
    only after a failure, so a working command pays nothing for it."""
    import asyncio

    from sqlalchemy.exc import DBAPIError

    from core.db import make_engine

    if sqlite_file(settings.database_url) is not None or not isinstance(exc, OSError | DBAPIError):
        return None

    async def probe() -> BaseException | None:
        engine = make_engine(settings.database_url)
        try:
            async with asyncio.timeout(15), engine.connect():
                return None
        except Exception as failure:  # what the connection says is the point
            return failure
        finally:
            await engine.dispose()

    failure = asyncio.run(probe())
    if failure is None:
        return None
    reason = str(getattr(failure, "orig", None) or failure).strip().splitlines()
    said = reason[0] if reason else type(failure).__name__
    url = mask_url(settings.database_url)
    return (
        f"无法连接数据库 {url}：{said}。请检查 PANDIAN_DATABASE_URL（或 database_url）和数据库服务器。"
        f" / Cannot connect to the database {url}: {said}. Check PANDIAN_DATABASE_URL (or database_url) and the "
        f"database server."
    )


def _is_secret(name: str, model: type[BaseModel] | None) -> bool:
    return (
        (model is not None and name in secret_fields(model))
        or name in SECRET_NAMES
        or name.endswith(("_secret", "password"))
    )


def _flatten(value: Any, model: type[BaseModel] | None, path: tuple[str, ...], out: list[tuple[tuple[str, ...], Any]]) -> None:  # fmt: skip
    """Leaves of a ``model_dump(mode="json")``, secrets masked (the model, where known, says which)."""
    if not isinstance(value, Mapping) or not value:
        out.append((path, value))
        return
    for key, sub in value.items():
        key = str(key)
        field = model.model_fields.get(key) if model is not None else None
        if _is_secret(key, model):
            out.append(((*path, key), MASK if sub not in (None, "") else sub))
            continue
        if isinstance(sub, str) and key.endswith("_url"):
            out.append(((*path, key), mask_url(sub)))
            continue
        sub_model = model_of(field.annotation) if field is not None else None
        if (
            sub_model is None
            and field is not None
            and (items := items_model_of(field.annotation)) is not None
        ):
            kind, m = items
            if kind == "dict" and isinstance(sub, Mapping):
                for k, v in sub.items():
                    _flatten(v, m, (*path, key, str(k)), out)
                continue
        _flatten(sub, sub_model, (*path, key), out)


def _present(data: Any, path: tuple[str, ...]) -> bool:
    """Whether ``data`` (parsed TOML) gives ``path`` (or a value holding it, such as a list or an inline
    table)."""
    for i, part in enumerate(path):
        if not isinstance(data, Mapping):
            return i > 0
        if part not in data:
            return False
        data = data[part]
    return True


def effective(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``pandian config --format json`` prints (a documented interface)."""
    environ = os.environ if environ is None else environ
    toml_path = config_path()
    toml_data: dict[str, Any] = {}
    if toml_path.is_file():
        with toml_path.open("rb") as f:
            toml_data = tomllib.load(f)
    named = env_setting_names(environ, Settings.model_fields)
    env = {tuple(p.lower() for p in path): var for path, var in named.items()}
    dumped = settings.model_dump(mode="json")
    platforms = []
    for name, platform in PLATFORM_SECTIONS.items():  # a section in effect shows its defaults too
        section = getattr(settings, name, None)
        if section is not None:
            platforms.append(name)
            dumped[name] = platform.model_validate(section).model_dump(mode="json")
    leaves: list[tuple[tuple[str, ...], Any]] = []
    for key, value in dumped.items():
        model: type[BaseModel] | None = PLATFORM_SECTIONS.get(key) or model_of(
            Settings.model_fields[key].annotation
        )
        if value is None or model is None or not isinstance(value, Mapping):
            _flatten({key: value}, Settings, (), leaves)
        else:
            _flatten(value, model, (key,), leaves)
    rows = []
    for path, value in leaves:
        low = tuple(p.lower() for p in path)
        var = next((env[low[:n]] for n in range(len(low), 0, -1) if low[:n] in env), None)
        if var is not None:
            source, origin = "env", var
        elif _present(toml_data, path):
            source, origin = "file", str(toml_path)
        else:
            source, origin = "default", None
        rows.append({"name": ".".join(path), "value": value, "source": source, "origin": origin})
    db_file = sqlite_file(settings.database_url)
    return {
        "config_file": {"path": str(toml_path), "exists": toml_path.is_file()},
        "database": {
            "url": mask_url(settings.database_url),
            "sqlite_file": str(db_file) if db_file is not None else None,
            "exists": db_file.is_file() if db_file is not None else None,
        },
        "platforms": platforms,
        "settings": rows,
    }


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@click.command("config")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--changed", is_flag=True, help="Only settings that are not at their default.")
def config(fmt: str, changed: bool) -> None:
    """The settings in effect (secrets masked) and where each came from: default, pandian.toml or an
    environment variable. A configuration with mistakes is refused here as everywhere, one line per mistake."""
    from bot.cli import console

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"配置错误 / configuration error:\n{exc}") from None
    shown = effective(settings)
    if changed:
        shown["settings"] = [r for r in shown["settings"] if r["source"] != "default"]
    if fmt == "json":
        click.echo(json.dumps(shown, ensure_ascii=False, indent=1))
        return
    cf, dbi = shown["config_file"], shown["database"]
    console.print(f"配置文件 config file: {cf['path']}" + ("" if cf["exists"] else "（不存在，未使用 / not found, not used）"),
                  markup=False, highlight=False)  # fmt: skip
    where = dbi["sqlite_file"] or dbi["url"]
    exists = (
        ""
        if dbi["exists"] is not False
        else "（不存在 / does not exist: pandian db upgrade 新建 creates it）"
    )
    console.print(f"数据库 database: {where}{exists}", markup=False, highlight=False)
    console.print(
        f"聊天平台 platforms: {', '.join(shown['platforms']) or '无 none'}", markup=False, highlight=False
    )
    rows = shown["settings"]
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:  # one line each, so grep finds a setting: name = value  (source)
        origin = r["origin"] or "默认 default"
        console.print(
            f"{r['name']:<{width}} = {_shown(r['value'])}  （{origin}）", markup=False, highlight=False
        )
