"""The storage layer: one SQLAlchemy Core metadata and one async engine for every table we keep.

`open_store(url)` turns the configured storage URL into a ready `Store`: the engine, with the
tables created. SQLite through aiosqlite is the default for one node; PostgreSQL through asyncpg
is the same code with another URL. Every table is defined here, in the module-level `metadata`,
so the tables added later (call records, voicemail, callbacks) are created by the same
`create_all`.

It does not know what the rows mean: the service that owns a table (the location service for
`registrations`) reads and writes it, and keeps whatever cache it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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

# Operators write the database (sqlite://, postgresql://); the async driver is ours to choose.
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


@dataclass(frozen=True)
class Store:
    """An open database: the engine to run statements on and the tables it holds."""

    engine: AsyncEngine
    metadata: MetaData

    async def close(self) -> None:
        await self.engine.dispose()


async def open_store(url: str) -> Store:
    """Open the database at `url`, creating the SQLite file's folders and any missing table."""
    parsed = _async_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
    except BaseException:
        await engine.dispose()
        raise
    return Store(engine=engine, metadata=metadata)


def _async_url(url: str) -> URL:
    parsed = make_url(url)
    return parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))


def _sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets readers (API, metrics) run beside the writers. With WAL, synchronous=NORMAL keeps
    # every commit across a crash or restart of the daemon and can lose only the last commits
    # on a power cut or OS crash, for one fsync per checkpoint instead of one per commit.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
