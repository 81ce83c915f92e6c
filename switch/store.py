"""The storage layer: one SQLAlchemy Core metadata and one engine for every table we keep.

`open_store(url)` turns the configured storage URL into a ready `Store`: the engine, with the
schema migrated to this version's (switch/migrations: Alembic revisions, which also adopt a
database made before them). SQLite is the default for one node; PostgreSQL (psycopg) is the same
code with another URL.

Database work runs on one dedicated thread, a whole unit of work per hop
(`Store.transaction(work)`): the event loop never blocks on disk, and a batch
of binding changes costs one thread round-trip rather than the several per
statement an async driver makes (measured in bench/register_rate.py: the
aiosqlite path cost about half the daemon's CPU at 250 REGISTER/s). One
thread also serializes writers, which is what SQLite wants. `GroupCommit`
puts many small independent writes (call records) into shared transactions.

Every table the code reads and writes is defined here, in the module-level `metadata`; a
table or column added here needs its migration in switch/migrations/versions (a test compares
the migrated schema with this metadata).

It does not know what the rows mean: the service that owns a table (the location service for
`registrations`) reads and writes it, and keeps whatever cache it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url

from switch import migrations

_T = TypeVar("_T")
log = structlog.get_logger()

metadata = MetaData()

# One row per binding of an address-of-record (RFC 3261 §10), owned by switch.location.
registrations = Table(
    "registrations",
    metadata,
    Column("tenant", String, primary_key=True),
    Column("user", String, primary_key=True),
    Column("contact", String, primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("q", Float, nullable=True),
    Column("call_id", String, nullable=False),
    Column("cseq", Integer, nullable=False),
    Column("transport", String, nullable=False),
    Column("source_host", String, nullable=False),
    Column("source_port", Integer, nullable=False),
    Column("user_agent", String, nullable=True),
    Column("instance", String, nullable=True),
    Column("registered_at", Float, nullable=False),
)

# One row per call, owned by switch.cdr. Inserted with state 'active' when the call starts and
# rewritten whole when it ends, so a daemon that dies mid-call leaves a row to mark 'crashed'.
calls = Table(
    "calls",
    metadata,
    Column("call_id", String, primary_key=True),
    Column("tenant", String, nullable=False),
    Column("caller", String, nullable=False),
    Column("callee", String, nullable=False),
    Column("did", String, nullable=True),
    Column("direction", String, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("answered_at", Float, nullable=True),
    # While the call is active: when the switch last saw it alive (the end a crash leaves).
    Column("ended_at", Float, nullable=True),
    Column("duration", Integer, nullable=False, default=0),
    Column("billsec", Integer, nullable=False, default=0),
    Column("disposition", String, nullable=True),
    Column("hangup_by", String, nullable=True),
    Column("hangup_cause", String, nullable=True),
    Column("state", String, nullable=False, index=True),
    Column("recording", String, nullable=True),
    Column("recording_seconds", Float, nullable=True),
)

# One row per leg of a call (the caller's, then one per fork towards the callee, then those of
# transfer targets), owned by switch.cdr and written with the call's final row. "in" is from
# that leg's phone.
call_legs = Table(
    "call_legs",
    metadata,
    Column("call_id", String, ForeignKey("calls.call_id"), primary_key=True),
    Column("leg", Integer, primary_key=True),
    Column("role", String, nullable=False),
    Column("sip_call_id", String, nullable=False),
    Column("contact", String, nullable=True),
    Column("address", String, nullable=True),
    Column("local_tag", String, nullable=True),
    Column("remote_tag", String, nullable=True),
    Column("status", Integer, nullable=True),
    Column("answered", Boolean, nullable=False),
    Column("codec", String, nullable=True),
    Column("packets_in", Integer, nullable=False),
    Column("bytes_in", Integer, nullable=False),
    Column("packets_out", Integer, nullable=False),
    Column("bytes_out", Integer, nullable=False),
    Column("lost", Integer, nullable=False),
    Column("jitter_ms", Float, nullable=False),
    Column("latched", String, nullable=True),
    # Transfers (switch.b2bua.transfer): who put this leg's party in the call, and when the
    # party was in it (a transferred call's legs take turns; billing splits the call by these).
    Column("referred_by", String, nullable=True),
    Column("answered_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    # Of packets_in, those the kernel forwarded (media.kernel); 0 for calls before it.
    Column("kernel_packets", Integer, nullable=False, server_default="0"),
)

# Operators write the database (sqlite://, postgresql://); the driver is ours to choose.
_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}


@dataclass(frozen=True)
class Store:
    """An open database: the engine, its tables, and the thread that runs all its work."""

    engine: Engine
    metadata: MetaData
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="store")
    )

    async def transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work(conn)`` in one database transaction on the store's thread."""

        def run() -> _T:
            with self.engine.begin() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown()


_Unit = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]


class GroupCommit:
    """Units of work that share transactions: `submit(work)` queues ``work(conn)`` and returns
    a future of its result, set once the transaction holding it is committed.

    One writer task runs the queue in order, a batch per transaction: a batch is whatever was
    submitted while the previous commit was on its way, so under load many calls' records
    share one thread hop and one commit, and with no load each unit commits at once. Units of
    one batch run in the order they were submitted, batches one after another, so a caller's
    writes reach the database in its order. When a batch fails, each of its units is run
    again in a transaction of its own: one bad unit fails alone (its future gets the error)
    and loses no other unit's data.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[_Unit] = []
        self._writer: asyncio.Task[None] | None = None

    def submit(self, work: Callable[[Connection], _T]) -> asyncio.Future[_T]:
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return future

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._commit(batch)
        finally:
            self._writer = None

    async def _commit(self, batch: list[_Unit]) -> None:
        works = [work for work, _ in batch]
        try:
            results = await self.store.transaction(lambda conn: [work(conn) for work in works])
        except Exception as exc:
            if len(batch) > 1:
                for unit in batch:
                    await self._commit([unit])  # one bad unit fails alone
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


async def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the database at `url`, creating the SQLite file's folders, and migrate its schema.

    Each migration step is logged. ``migrate=False`` leaves the schema alone (for
    ``softswitch migrate``, which runs and reports the steps itself).
    """
    parsed = driver_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    store = Store(engine=engine, metadata=metadata)
    try:
        if migrate:
            for step in await store.transaction(migrations.upgrade):
                log.info("schema migrated", step=step)
    except BaseException:
        await store.close()
        raise
    return store


def driver_url(url: str) -> URL:
    """The SQLAlchemy URL of an operator's storage URL: the driver we use for its database."""
    parsed = make_url(url)
    return parsed.set(drivername=_DRIVERS.get(parsed.drivername, parsed.drivername))


def _sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets readers (API, metrics) run beside the writers. With WAL, synchronous=NORMAL keeps
    # every commit across a crash or restart of the daemon and can lose only the last commits
    # on a power cut or OS crash, for one fsync per checkpoint instead of one per commit.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
