"""Structured logs with a trace id that follows one inbound event to every send it causes.

The webhook route starts a trace when it accepts an event; the dispatcher processes the event under it and
stores it on every outbox row the event queues; the outbox worker logs each send under the row's trace. So
``grep <trace id>`` over the logs of all server processes shows one event's whole story: the callback, the
handler, the cards it caused, the platform's answers.

``setup_logging("json")`` writes one JSON object per line (python-json-logger) for log shippers;
``"text"`` is for people at a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from urllib.parse import unquote_plus

trace_id_var: ContextVar[str | None] = ContextVar("pandian_trace_id", default=None)


def new_trace_id() -> str:
    return uuid.uuid4().hex[:16]


@contextlib.contextmanager
def tracing(trace_id: str | None) -> Iterator[str | None]:
    token = trace_id_var.set(trace_id)
    try:
        yield trace_id
    finally:
        trace_id_var.reset(token)


_installed = False


def install_record_factory() -> None:
    """Every log record gets ``trace_id`` when it is made, whatever handler (or test) reads it. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.trace_id = trace_id_var.get() or "-"
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class TraceFilter(logging.Filter):
    """Puts the current trace id on every record (``-`` outside a trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", None):
            record.trace_id = trace_id_var.get() or "-"
        return True


def setup_logging(fmt: str = "text", level: int | str = logging.INFO) -> None:
    install_record_factory()
    handler = logging.StreamHandler()
    handler.addFilter(TraceFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# Query parameters whose values are signatures or credentials: the access log shows that they were there, never
# what they were. ``s`` signs a photo link (``/photos/<ref>?e=<expiry>&s=<signature>``): the link whole, from a
# log, would open the photo for anyone who reads the log until it expires.
REDACTED_QUERY_KEYS = frozenset({"s", "sig", "sign", "signature", "msg_signature", "token", "access_token"})
REDACTED = "-"


def redact_query(path_qs: str) -> str:
    """``path_qs`` with the value of every parameter in :data:`REDACTED_QUERY_KEYS` replaced by ``-``
    (``/photos/cp-1?e=1790000000&s=-``); the rest as it came."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path_qs
    pairs = []
    for pair in query.split("&"):
        key, eq, _ = pair.partition("=")
        pairs.append(f"{key}={REDACTED}" if eq and unquote_plus(key).lower() in REDACTED_QUERY_KEYS else pair)
    return f"{path}?{'&'.join(pairs)}"
