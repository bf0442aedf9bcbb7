"""Engine, session factory and one unit of work.

Helpers take an ``AsyncSession`` and never commit; the caller that owns the unit of work commits once.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Column, Date, DateTime, Index, MetaData, Numeric, Table, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util import await_only

from core.config_check import mask_url
from core.models import UTCDateTime


class DatabaseURLError(ValueError):
    pass


def normalise_url(url: str) -> str:
    """Accept the plain URLs people write and pick the async driver for them."""
    try:
        u = make_url(url)
    except Exception:  # sqlalchemy raises ArgumentError with a terse message
        raise DatabaseURLError(f"数据库地址无法解析 / cannot parse database URL {mask_url(url)!r}") from None
    backend = u.get_backend_name()
    if backend == "sqlite" and u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql" and u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    elif backend not in ("sqlite", "postgresql"):
        raise DatabaseURLError(
            f"只支持 SQLite 和 PostgreSQL / only SQLite and PostgreSQL are supported: {mask_url(url)!r}"
        )
    return u.render_as_string(hide_password=False)


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the file behind a SQLite URL (relative paths are relative to the working
    directory); None for PostgreSQL and in-memory SQLite."""
    try:
        u = make_url(url)
    except Exception:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    if u.database.startswith("file:") or u.query.get("mode") == "memory":
        return None  # SQLite URI form: leave it to SQLite
    return Path(u.database).expanduser().absolute()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The sqlite3 module's legacy mode starts a transaction only at the first write, so a read-then-write
    # unit of work (claim an outbox row, record a count) reads outside any transaction and two connections can
    # both act on the same row. Turn that off and begin every transaction ourselves (``_sqlite_begin``).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, *, gate: WriteGate | None = None, urgent: bool = False, **kw: Any) -> AsyncEngine:
    """``gate``: on SQLite, every transaction of this engine waits its turn at the gate (``urgent``: in its
    fast lane; see ``WriteGate``); ignored on PostgreSQL, whose row locks let transactions run side by side."""
    url = normalise_url(url)
    engine = create_async_engine(url, **kw)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if gate is None:
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        else:
            gate.attach(engine, urgent=urgent)
    return engine


def _sqlite_begin(conn: Any) -> None:
    """``BEGIN IMMEDIATE``: take the write lock when the transaction starts, so transactions are serialisable.

    A deferred transaction that reads and then writes fails at once (SQLITE_BUSY) when another connection
    committed in between; taking the lock up front makes it wait (``busy_timeout``) instead. SQLite has one
    writer at a time anyway; several processes are what PostgreSQL is for. A connection asked for AUTOCOMMIT
    (``PRAGMA wal_checkpoint``, ``VACUUM``: statements that cannot run inside a transaction) gets none.
    """
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class WriteGate:
    """SQLite's one write lock, queued in the event loop instead of in SQLite's busy handler, with a fast lane.

    Every transaction of an engine attached to the gate waits here before ``BEGIN IMMEDIATE``, so this
    process's transactions take the lock one at a time, in order. Transactions of an engine attached with
    ``urgent=True`` (the webhook's batched dedup insert, which the platform is waiting for) go first: they
    wait only for the transaction that holds the lock now. Without the gate, those transactions poll the
    lock from their driver threads (SQLite's busy handler sleeps 1 … 100 ms between tries, in no order), and
    an acknowledgement can lose to background work again and again. Other processes (the CLI) still meet
    this one at ``busy_timeout``.

    A transaction that waits longer than ``wait_s`` (a deadlock: one task opening a second transaction
    inside its first) fails with ``OperationalError`` instead of hanging.
    """

    def __init__(self, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self._holder: object | None = None  # the DBAPI connection whose transaction holds the gate
        self._urgent: deque[tuple[object, asyncio.Future[None]]] = deque()
        self._normal: deque[tuple[object, asyncio.Future[None]]] = deque()
        self.waits = {"urgent": 0, "normal": 0}  # transactions that had to queue (for /metrics)

    def attach(self, engine: AsyncEngine, *, urgent: bool = False) -> None:
        sync = engine.sync_engine
        event.listen(sync, "begin", lambda conn: self._begin(conn, urgent))
        event.listen(sync, "commit", self._end)
        event.listen(sync, "rollback", self._end)
        # pool event: a connection returned with its transaction still open
        event.listen(sync.pool, "checkin", lambda dbapi, _rec: self._release(dbapi))

    def _begin(self, conn: Any, urgent: bool) -> None:  # sync, inside SQLAlchemy's greenlet: await_only waits
        dbapi = conn.connection.dbapi_connection
        if self._holder is None:
            self._holder = dbapi
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            (self._urgent if urgent else self._normal).append((dbapi, fut))
            self.waits["urgent" if urgent else "normal"] += 1
            try:
                await_only(asyncio.wait_for(asyncio.shield(fut), self.wait_s))
            except BaseException as exc:  # timed out, or the waiting task was cancelled (shutdown)
                fut.cancel()  # no longer waiting: never hand it the gate
                self._release(dbapi)  # in case it was handed the gate just as the wait ended
                if isinstance(exc, TimeoutError):
                    raise OperationalError("BEGIN IMMEDIATE", None, TimeoutError(
                        f"waited {self.wait_s:.0f} s for SQLite's write lock: is a transaction open inside another?"
                    )) from exc  # fmt: skip
                raise
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._release(dbapi)
            raise

    def _end(self, conn: Any) -> None:
        self._release(conn.connection.dbapi_connection)

    def _release(self, dbapi: object) -> None:
        if self._holder is not dbapi:
            return
        self._holder = None
        for queue in (self._urgent, self._normal):
            while queue:
                nxt, fut = queue.popleft()
                if fut.cancelled():
                    continue
                self._holder = nxt
                fut.set_result(None)
                return


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def unit_of_work(sm: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commits on success, rolls back on any exception."""
    async with sm() as session, session.begin():
        yield session


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """``INSERT`` with the dialect's ``ON CONFLICT`` support (PostgreSQL and SQLite share the syntax)."""
    from sqlalchemy.dialects import postgresql, sqlite

    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


@functools.cache
def _insert_ignoring(dialect: str, table: Table, keys: tuple[str, ...]) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=list(keys))


def insert_ignoring(session: AsyncSession, model: Any, *, on: tuple[str, ...]) -> Any:
    """``INSERT INTO <model's table> … ON CONFLICT (on) DO NOTHING``, built once per dialect and table: run it
    with the row as parameters, ``session.execute(stmt, row)``. For inserts made on every chat event: an ORM
    ``insert(Model).values(...)`` built each time spent about 150 µs on the statement alone."""
    return _insert_ignoring(session.get_bind().dialect.name, model.__table__, on)


class BulkWriter:
    """Bulk rows (tuples in column order) into one table, the fastest way the backend offers.

    PostgreSQL: ``COPY`` through asyncpg. SQLite: the driver's ``executemany`` with values in the formats
    SQLAlchemy itself stores (``YYYY-MM-DD HH:MM:SS.ffffff`` for timestamps). Both run on the session's own
    connection, inside its transaction. Datetimes come in naive UTC (what ``UTCDateTime`` stores).
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.dialect = ""
        self.driver: Any = None
        self.cache_size: int | None = None

    async def start(self) -> None:
        conn = await self.session.connection()
        self.dialect = conn.dialect.name
        if self.dialect not in ("postgresql", "sqlite"):
            raise NotImplementedError(f"only SQLite and PostgreSQL are supported, not {self.dialect}")
        self.driver = (await conn.get_raw_connection()).driver_connection
        if self.dialect == "sqlite":  # a bigger page cache while the indexes grow; restored by finish()
            async with self.driver.execute("PRAGMA cache_size") as cur:
                self.cache_size = (await cur.fetchone())[0]
            await self.driver.execute("PRAGMA cache_size=-262144")

    async def finish(self) -> None:
        if self.dialect == "sqlite" and self.cache_size is not None:
            await self.driver.execute(f"PRAGMA cache_size={int(self.cache_size)}")

    async def write(self, model: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """``model``: a mapped class or a ``Table``."""
        if not rows:
            return
        table = getattr(model, "__table__", model)
        if self.dialect == "postgresql":
            await self.driver.copy_records_to_table(table.name, records=rows, columns=columns)
        elif self.dialect == "sqlite":
            convert = [_sqlite_converter(table.c[c].type) for c in columns]
            pos = [i for i, f in enumerate(convert) if f is not None]
            if pos:
                out = []
                for r in rows:
                    lst = list(r)
                    for i in pos:
                        v = lst[i]
                        if v is not None:
                            lst[i] = convert[i](v)  # type: ignore[misc]
                    out.append(lst)
                rows = out  # type: ignore[assignment]
            sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for i in range(0, len(rows), 20000):
                await self.driver.executemany(sql, rows[i : i + 20000])
        else:
            raise NotImplementedError(f"bulk writes on {self.dialect}")


def _sqlite_converter(type_: Any) -> Callable[[Any], Any] | None:
    if isinstance(type_, UTCDateTime | DateTime):
        return lambda v: v.isoformat(" ", "microseconds")
    if isinstance(type_, Numeric):
        return float
    if isinstance(type_, Date):
        return lambda v: v.isoformat()
    if isinstance(type_, Boolean):
        return int
    return None


STAGING_METADATA = MetaData()  # temporary tables; never part of the schema or the migrations


def staging_table(name: str, *columns: Column[Any] | Index) -> Table:
    """A temporary table for bulk work (PostgreSQL also drops it at commit), with any indexes it needs."""
    return Table(name, STAGING_METADATA, *columns, prefixes=["TEMPORARY"], postgresql_on_commit="DROP")


@asynccontextmanager
async def staged(
    session: AsyncSession,
    table: Table,
    rows: Iterable[tuple[Any, ...]],
    *,
    columns: Sequence[str] | None = None,
    batch: int = 50_000,
) -> AsyncIterator[Table]:
    """Create ``table`` (a ``staging_table``), bulk-load ``rows`` into it (COPY on PostgreSQL), and drop it
    after the block. Set-based statements joining it replace thousands of per-row or IN-list statements.
    On an error the caller's rollback removes the table.

    ``columns``: the columns ``rows`` fill, in order (default: all of them; the others start NULL).
    ``rows`` is consumed lazily, ``batch`` rows at a time, so a generator keeps memory bounded.
    """
    await create_staging(session, table)
    writer = BulkWriter(session)
    await writer.start()
    names = tuple(columns) if columns is not None else tuple(c.name for c in table.columns)
    buf: list[tuple[Any, ...]] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= batch:
            await writer.write(table, names, buf)
            buf = []
    await writer.write(table, names, buf)
    await writer.finish()
    await analyze(session, table)
    yield table
    await drop_staging(session, table)


async def create_staging(session: AsyncSession, table: Table) -> None:
    """Create ``table`` (a ``staging_table``) afresh, empty.

    One left behind on this connection is dropped first: a SQLite temporary table outlives the transaction
    (its connection is pooled), so a unit of work that failed half-way and was committed anyway would
    otherwise break the next one. Only the temporary schema is touched, never a real table.
    """
    conn = await session.connection()
    temp = "pg_temp" if conn.dialect.name == "postgresql" else "temp"
    await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.{table.name}")
    await conn.run_sync(lambda c: table.create(c, checkfirst=False))


async def drop_staging(session: AsyncSession, *tables: Table) -> None:
    conn = await session.connection()
    temp = "pg_temp" if conn.dialect.name == "postgresql" else "temp"
    for table in tables:
        await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.{table.name}")


async def analyze(session: AsyncSession, *tables: Table) -> None:
    """Give PostgreSQL's planner statistics for freshly filled temporary tables (autovacuum never analyses
    them, and without statistics it guesses joins against them badly). Nothing to do on SQLite."""
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        for table in tables:
            await conn.exec_driver_sql(f"ANALYZE {table.name}")


_WRITTEN = "pandian.written"  # Session.info key: the set track_writes fills in


def _note_execute(state: ORMExecuteState) -> None:
    written = state.session.info.get(_WRITTEN)
    if written is not None and (state.is_insert or state.is_update or state.is_delete):
        table = getattr(state.statement, "table", None)
        if table is not None:
            written.add(table.name)


def _note_flush(sess: Session, _ctx: Any, _objects: Any) -> None:
    written = sess.info.get(_WRITTEN)
    if written is not None:
        for obj in (*sess.new, *sess.dirty, *sess.deleted):
            table = getattr(obj, "__table__", None)
            if table is not None:
                written.add(table.name)


# registered once for every session (a dict lookup per statement when nobody tracks): listeners added per
# session cost about 60 µs each time, on every chat event
event.listen(Session, "do_orm_execute", _note_execute)
event.listen(Session, "before_flush", _note_flush)


def track_writes(session: AsyncSession) -> set[str]:
    """The names of the tables this session writes to from now on (ORM flushes and DML statements through
    ``session.execute``), filled in as it goes: a caller can then skip work no write called for."""
    written: set[str] = set()
    session.sync_session.info[_WRITTEN] = written
    return written
