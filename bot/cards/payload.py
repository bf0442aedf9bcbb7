"""Typed, signed button payloads (after aiogram's ``CallbackData``).

A payload is a small frozen dataclass with a two-letter prefix. :meth:`Payload.pack` writes it as::

    <prefix>:<field>:...:<issued_at>:<tag>        e.g.  ap:42:1:1717230000:q2mI3tT0FO6aKw

- fields are ``int`` (non-negative, canonical decimal), ``str`` (``[A-Za-z0-9_-]+``) or ``tuple[int, ...]``
  (comma-separated), in the order the dataclass declares them;
- ``issued_at`` is Unix seconds, so a handler can refuse an old card (``unpack(..., now=, max_age=)``);
- ``tag`` is HMAC-SHA256 over everything before it, keyed with the app's secret, truncated to 10 bytes and
  written as unpadded base64url (14 characters). The tag is compared as text, in constant time, so no two
  spellings of one tag are accepted.

The packed text is plain ASCII, so it fits every place a platform gives us: a WeCom button ``key``
(≤ 1024 bytes) or drop-down option ``id`` (≤ 128 bytes), a Feishu callback ``value``, a DingTalk card
parameter (strings only). ``pack(max_bytes=...)`` enforces the limit of the place it goes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

TAG_BYTES = 10
MIN_KEY_BYTES = 16
SEP = ":"

_INT = re.compile(r"0|[1-9][0-9]*")
_STR = re.compile(r"[A-Za-z0-9_-]+")
_INTS = re.compile(r"(?:(?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*)?")
_PREFIX = re.compile(r"[a-z]{2}")


class BadPayload(ValueError):
    """A payload that was tampered with, is unknown, malformed, or too old. Never trust it."""


class ExpiredPayload(BadPayload):
    pass


class PayloadTooLong(ValueError):
    """Packing would exceed the platform's limit for the place the payload goes."""


_REGISTRY: dict[str, type[Payload]] = {}


@dataclass(frozen=True)
class Payload:
    """Base class. Subclass with ``@dataclass(frozen=True) class Approve(Payload, prefix="ap")``.

    No ``slots=True``: that makes a second class, and the registry must hold the one that is used.
    """

    prefix: ClassVar[str] = ""

    def __init_subclass__(cls, prefix: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not prefix:
            raise TypeError(f"{cls.__name__}: give the payload a prefix, e.g. class X(Payload, prefix='xx')")
        if not _PREFIX.fullmatch(prefix):
            raise TypeError(f"payload prefix must be two lowercase letters: {prefix!r}")
        if prefix in _REGISTRY:
            raise TypeError(f"payload prefix {prefix!r} already used by {_REGISTRY[prefix].__name__}")
        cls.prefix = prefix
        _REGISTRY[prefix] = cls

    def pack(self, key: bytes, *, issued_at: int, max_bytes: int | None = None) -> str:
        if not self.prefix:
            raise TypeError("pack a concrete payload, not the base class")
        if issued_at < 0:
            raise ValueError("issued_at must be Unix seconds")
        parts = [self.prefix]
        for f, kind in _fields(type(self)):
            parts.append(_encode(kind, getattr(self, f), f))
        parts.append(str(issued_at))
        body = SEP.join(parts)
        text = f"{body}{SEP}{_tag(key, body)}"
        if max_bytes is not None and len(text.encode()) > max_bytes:
            raise PayloadTooLong(f"{type(self).__name__} packs to {len(text)} bytes, limit {max_bytes}")
        return text


def unpack(text: str, key: bytes, *, now: int | None = None, max_age: int | None = None) -> Payload:
    """Verify and decode a packed payload, or raise :class:`BadPayload`.

    With ``now`` and ``max_age`` (seconds), a payload issued more than ``max_age`` ago raises
    :class:`ExpiredPayload`; so does one issued more than ``max_age`` in the future.
    """
    if not isinstance(text, str) or not text.isascii():
        raise BadPayload("payload is not ASCII text")
    body, sep, tag = text.rpartition(SEP)
    if not sep or not hmac.compare_digest(tag, _tag(key, body)):
        raise BadPayload("payload signature does not match")
    parts = body.split(SEP)
    cls = _REGISTRY.get(parts[0])
    if cls is None:
        raise BadPayload(f"unknown payload prefix {parts[0]!r}")
    if len(parts) < 2:
        raise BadPayload(f"{cls.__name__} has no issue time")
    values, issued = parts[1:-1], parts[-1]
    fields = _fields(cls)
    if len(values) != len(fields) or not _INT.fullmatch(issued):
        raise BadPayload(f"{cls.__name__} expects {len(fields)} fields and a time")
    kwargs = {f: _decode(kind, v, f) for (f, kind), v in zip(fields, values, strict=True)}
    if now is not None and max_age is not None and abs(now - int(issued)) > max_age:
        raise ExpiredPayload(f"{cls.__name__} issued at {issued}, more than {max_age}s from {now}")
    return cls(**kwargs)


def issued_at(text: str) -> int:
    """The issue time written in a packed payload (unverified: call :func:`unpack` first)."""
    body = text.rpartition(SEP)[0]
    try:
        return int(body.rsplit(SEP, 1)[1])
    except (IndexError, ValueError) as e:
        raise BadPayload("payload has no issue time") from e


def _tag(key: bytes, body: str) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"payload key must be at least {MIN_KEY_BYTES} bytes")
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()[:TAG_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


_FIELD_CACHE: dict[type, tuple[tuple[str, str], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, str], ...]:
    """(name, kind) per field, kind one of 'int', 'str', 'ints'."""
    cached = _FIELD_CACHE.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if t is int:
            out.append((f.name, "int"))
        elif t is str:
            out.append((f.name, "str"))
        elif typing.get_origin(t) is tuple and typing.get_args(t) == (int, ...):
            out.append((f.name, "ints"))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: payload fields are int, str or tuple[int, ...]")
    _FIELD_CACHE[cls] = result = tuple(out)
    return result


def _encode(kind: str, value: object, name: str) -> str:
    if kind == "int":
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        return str(value)
    if kind == "str":
        if not isinstance(value, str) or not _STR.fullmatch(value):
            raise ValueError(f"{name} must match [A-Za-z0-9_-]+, got {value!r}")
        return value
    if not isinstance(value, tuple) or any(type(v) is not int or v < 0 for v in value):
        raise ValueError(f"{name} must be a tuple of non-negative ints, got {value!r}")
    return ",".join(str(v) for v in value)


def _decode(kind: str, text: str, name: str) -> object:
    if kind == "int" and _INT.fullmatch(text):
        return int(text)
    if kind == "str" and _STR.fullmatch(text):
        return text
    if kind == "ints" and _INTS.fullmatch(text):
        return tuple(int(v) for v in text.split(",")) if text else ()
    raise BadPayload(f"field {name} is not a valid {kind}: {text!r}")


# --------------------------------------------------------------------------------------------------------
# The payloads pandian's cards send back


@dataclass(frozen=True)
class StartCounting(Payload, prefix="sc"):
    """开始盘点 / 开始复盘: walk all of the presser's open tasks (``bot.walk``). The daily task card sends ``()``;
    a card about one task (a recount) names it, and the walk begins with it. Older daily cards named their
    lines: they walk everything too. A card naming only someone else's tasks (forwarded) starts nothing."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class CannotFind(Payload, prefix="cf"):
    """无法找到: the item (or the location) of this task cannot be found."""

    task_id: int


@dataclass(frozen=True)
class SubmitQuantity(Payload, prefix="sq"):
    """提交 on a count prompt; the quantity comes in the form (Feishu) or as a chat reply."""

    task_id: int


@dataclass(frozen=True)
class PickReason(Payload, prefix="pr"):
    """One option of the reason drop-down on a review card."""

    variance_id: int
    code: str


@dataclass(frozen=True)
class SubmitReason(Payload, prefix="sr"):
    """提交原因 on a review card: sends the chosen reason (and the note, where the card has a note box)."""

    variance_id: int


@dataclass(frozen=True)
class Approve(Payload, prefix="ap"):
    variance_id: int
    step_seq: int


@dataclass(frozen=True)
class Reject(Payload, prefix="rj"):
    variance_id: int
    step_seq: int


@dataclass(frozen=True)
class SendBack(Payload, prefix="sb"):
    """复盘: send the variance back for a blind recount."""

    variance_id: int
    step_seq: int


PAYLOAD_TYPES: tuple[type[Payload], ...] = tuple(_REGISTRY.values())
