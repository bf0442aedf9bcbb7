"""Configuration mistakes, said plainly: unknown keys with the nearest real one, and one bilingual line per
bad value, never the value itself (it may be a secret).

``core.config`` uses these on ``pandian.toml`` and on the ``PANDIAN_*`` environment. The rules for the
environment: a variable whose first part is a setting (``PANDIAN_PLANNING__DORMANT_DAY``) is checked key by
key like the file; a top-level name that is no setting is left alone (tests and tools share the prefix:
``PANDIAN_CONFIG``, ``PANDIAN_TEST_*``), unless it is a near miss of one (``PANDIAN_DATABSE_URL``): that is
an error, since the setting it meant would silently keep its default.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from typing import Any, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr, ValidationError

ENV_PREFIX = "PANDIAN_"
# PANDIAN_* names that are not settings: the config file's location, the tests' and tools' own variables
RESERVED_ENV = ("CONFIG", "MIGRATE_URL", "TEST_", "UPDATE_GOLDEN", "SHOW_TRANSCRIPT", "BENCH_")
NEAR_MISS = 0.85  # difflib ratio from which an unknown top-level PANDIAN_* name counts as a typo

# names of values that are secrets wherever they appear (besides SecretStr fields and fields with repr=False)
SECRET_NAMES = frozenset({"secret", "token", "password", "encoding_aes_key", "encrypt_key", "app_secret",
                          "verification_token", "payload_secret", "corpsecret"})  # fmt: skip
MASK = "******"


class ConfigError(Exception):
    """A configuration that cannot be used: one bilingual line per problem, no values in it."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ------------------------------------------------------------------------------------------- unknown keys


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def model_of(annotation: Any) -> type[BaseModel] | None:
    a = _unwrap(annotation)
    return a if isinstance(a, type) and issubclass(a, BaseModel) else None


def items_model_of(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """``dict[str, Model]`` -> ("dict", Model); ``list[Model]`` -> ("list", Model)."""
    a = _unwrap(annotation)
    origin, args = get_origin(a), get_args(a)
    if origin is dict and len(args) == 2 and model_of(args[1]):
        return "dict", model_of(args[1])  # type: ignore[return-value]
    if origin is list and len(args) == 1 and model_of(args[0]):
        return "list", model_of(args[0])  # type: ignore[return-value]
    return None


def nearest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _unknown(
    path: tuple[Any, ...],
    key: str,
    fields: Iterable[str],
    where: str,
    rest: tuple[Any, ...] = (),
    env: bool = False,
) -> str:
    """One line for an unknown key ``key`` at ``path`` (``rest``: what followed it in an env var's name)."""
    spell = _env_name if env else _dotted
    fields = sorted(fields)
    name = spell((*path, key, *rest))
    where_zh, where_en = ("环境变量", "environment variable") if env else (where, where)
    guess = nearest(key, fields)
    if guess is not None:
        right = spell((*path, guess, *rest))
        return (f"{where_zh}：未知配置项 {name}，是否想写 {right}？ / {where_en}: unknown setting {name}; "
                f"did you mean {right}?")  # fmt: skip
    known = ", ".join(fields) if len(fields) <= 12 else f"{', '.join(fields[:12])}, …"
    return f"{where_zh}：未知配置项 {name}（可用：{known}） / {where_en}: unknown setting {name} (known: {known})"


def unknown_keys(
    data: Mapping[str, Any],
    model: type[BaseModel],
    where: str,
    sections: Mapping[str, type[BaseModel]] | None = None,
    path: tuple[Any, ...] = (),
) -> list[str]:
    """Keys of ``data`` (a parsed pandian.toml) that ``model`` does not know, recursively. ``sections`` gives
    the models of the free-form top-level sections (the chat platforms, validated outside core)."""
    problems: list[str] = []
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            problems.append(_unknown(path, key, fields, where))
            continue
        annotation = fields[key].annotation
        sub = (sections or {}).get(key) if not path else None
        sub = sub or model_of(annotation)
        if sub is not None and isinstance(value, Mapping):
            problems += unknown_keys(value, sub, where, None, (*path, key))
            continue
        items = items_model_of(annotation)
        if items is not None:
            kind, m = items
            if kind == "dict" and isinstance(value, Mapping):
                for k, v in value.items():
                    if isinstance(v, Mapping):
                        problems += unknown_keys(v, m, where, None, (*path, key, k))
            elif kind == "list" and isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, Mapping):
                        problems += unknown_keys(v, m, where, None, (*path, key, i))
    return problems


def env_setting_names(environ: Mapping[str, str], fields: Iterable[str]) -> dict[tuple[str, ...], str]:
    """The ``PANDIAN_*`` variables that address settings: path (lower case, split at ``__``) -> variable."""
    known = set(fields)
    out: dict[tuple[str, ...], str] = {}
    for var in environ:
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(p for p in var[len(ENV_PREFIX) :].lower().split("__"))
        if parts and parts[0] in known and all(parts):
            out[parts] = var
    return out


def _env_name(path: Iterable[Any]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)


def unknown_env(
    environ: Mapping[str, str], model: type[BaseModel], sections: Mapping[str, type[BaseModel]] | None = None
) -> list[str]:
    """``PANDIAN_*`` variables that look like settings but name none (see the module's docstring)."""
    problems: list[str] = []
    fields = model.model_fields
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :]
        parts = rest.lower().split("__")
        if parts[0] not in fields:
            if rest.upper().startswith(RESERVED_ENV):
                continue
            if nearest(parts[0], fields, cutoff=NEAR_MISS) is not None:
                problems.append(_unknown((), parts[0], fields, "", tuple(parts[1:]), env=True))
            continue
        m: type[BaseModel] | None = (sections or {}).get(parts[0]) or model_of(fields[parts[0]].annotation)
        container = items_model_of(fields[parts[0]].annotation)
        i = 1
        while i < len(parts) and (m is not None or container is not None):
            if m is None:  # dict[str, Model]: this part is a free key (an ABC class, a plant), then the model
                assert container is not None
                if container[0] != "dict":
                    break
                m, container, i = container[1], None, i + 1
                continue
            if parts[i] not in m.model_fields:
                problems.append(
                    _unknown(tuple(parts[:i]), parts[i], m.model_fields, "", tuple(parts[i + 1 :]), env=True)
                )
                break
            annotation = m.model_fields[parts[i]].annotation
            m, container, i = model_of(annotation), items_model_of(annotation), i + 1
    return problems


# -------------------------------------------------------------------------------------------- bad values

_ZH = {
    "missing": "缺少必填项",
    "string_too_short": "至少 {min_length} 个字符",
    "string_too_long": "最多 {max_length} 个字符",
    "string_type": "应为文本",
    "string_pattern_mismatch": "格式不对（{pattern}）",
    "int_parsing": "应为整数",
    "int_type": "应为整数",
    "int_from_float": "应为整数",
    "float_parsing": "应为数字",
    "float_type": "应为数字",
    "decimal_parsing": "应为数字",
    "decimal_type": "应为数字",
    "bool_parsing": "应为 true 或 false",
    "bool_type": "应为 true 或 false",
    "greater_than": "应大于 {gt}",
    "greater_than_equal": "应不小于 {ge}",
    "less_than": "应小于 {lt}",
    "less_than_equal": "应不大于 {le}",
    "literal_error": "只能是 {expected}",
    "date_parsing": "应为日期 YYYY-MM-DD",
    "date_from_datetime_parsing": "应为日期 YYYY-MM-DD",
    "date_type": "应为日期 YYYY-MM-DD",
    "time_parsing": "应为时间 HH:MM",
    "time_type": "应为时间 HH:MM",
    "dict_type": "应为一个配置段（表）",
    "model_type": "应为一个配置段（表）",
    "model_attributes_type": "应为一个配置段（表）",
    "list_type": "应为列表",
    "extra_forbidden": "未知配置项",
    "value_error": "取值无效",
    "assertion_error": "取值无效",
}


def bad_values(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One line per error: where, what is wrong in Chinese and English. Never the input (``errors()`` carries
    it; the message never does), so a secret typed into the wrong field stays out of the terminal and logs."""
    lines = []
    for e in exc.errors(include_input=False, include_url=False):
        name = _dotted((*prefix, *e["loc"])) or "(配置 settings)"
        en = str(e["msg"])
        en = en.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        template = _ZH.get(e["type"], "取值无效")
        try:
            zh = template.format(**(e.get("ctx") or {}))
        except (KeyError, IndexError):
            zh = "取值无效"
        lines.append(f"{name}：{zh} / {name}: {en}")
    return lines


# ---------------------------------------------------------------------------------------------- secrets


def mask_url(url: str) -> str:
    """A URL with its password replaced (``postgresql://pandian:******@db/pandian``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def secret_fields(model: type[BaseModel]) -> set[str]:
    """The fields of ``model`` that hold secrets: SecretStr, ``repr=False``, or a secret's name."""
    out = set()
    for name, f in model.model_fields.items():
        if _unwrap(f.annotation) is SecretStr or f.repr is False or name in SECRET_NAMES:
            out.add(name)
    return out
