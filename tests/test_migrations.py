"""Schema migrations of the store (switch/migrations) on real SQLite files.

A database made before migrations existed is recreated here with the SQL
that ``metadata.create_all`` of commit 83d1ab8 ("Call records and call
metrics") issued, with a call in it; opening it must keep that call and
bring the tables to today's schema. The migrated schema must equal
switch/store.py's metadata, so a column added there without its migration
fails here.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from switch import migrations
from switch.cli import main
from switch.migrations import SchemaError
from switch.store import metadata, open_store

# What `metadata.create_all` made at commit 83d1ab8 on SQLite (before the transfer columns of
# call_legs, and before migrations: no alembic_version).
SCHEMA_83D1AB8 = """
CREATE TABLE calls (
    call_id VARCHAR NOT NULL, tenant VARCHAR NOT NULL, caller VARCHAR NOT NULL,
    callee VARCHAR NOT NULL, did VARCHAR, direction VARCHAR NOT NULL,
    started_at FLOAT NOT NULL, answered_at FLOAT, ended_at FLOAT,
    duration INTEGER NOT NULL, billsec INTEGER NOT NULL, disposition VARCHAR,
    hangup_by VARCHAR, hangup_cause VARCHAR, state VARCHAR NOT NULL, recording VARCHAR,
    PRIMARY KEY (call_id)
);
CREATE INDEX ix_calls_state ON calls (state);
CREATE TABLE registrations (
    tenant VARCHAR NOT NULL, user VARCHAR NOT NULL, contact VARCHAR NOT NULL,
    expires_at FLOAT NOT NULL, q FLOAT, call_id VARCHAR NOT NULL, cseq INTEGER NOT NULL,
    transport VARCHAR NOT NULL, source_host VARCHAR NOT NULL, source_port INTEGER NOT NULL,
    user_agent VARCHAR, instance VARCHAR, registered_at FLOAT NOT NULL,
    PRIMARY KEY (tenant, user, contact)
);
CREATE TABLE call_legs (
    call_id VARCHAR NOT NULL, leg INTEGER NOT NULL, role VARCHAR NOT NULL,
    sip_call_id VARCHAR NOT NULL, contact VARCHAR, address VARCHAR, local_tag VARCHAR,
    remote_tag VARCHAR, status INTEGER, answered BOOLEAN NOT NULL, codec VARCHAR,
    packets_in INTEGER NOT NULL, bytes_in INTEGER NOT NULL, packets_out INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, lost INTEGER NOT NULL, jitter_ms FLOAT NOT NULL, latched VARCHAR,
    PRIMARY KEY (call_id, leg),
    FOREIGN KEY(call_id) REFERENCES calls (call_id)
);
INSERT INTO calls VALUES ('old-call', 'acme', '101', '102', NULL, 'internal', 1700000000.0,
    1700000002.0, 1700000062.0, 62, 60, 'answered', 'caller', 'normal', 'ended', NULL);
INSERT INTO call_legs VALUES ('old-call', 0, 'caller', 'abc@phone', 'sip:101@192.0.2.1',
    'udp:192.0.2.1:5060', 'a', 'b', 200, 1, 'PCMU', 3000, 516000, 3000, 516000, 0, 0.5,
    '192.0.2.1:4000');
INSERT INTO call_legs VALUES ('old-call', 1, 'callee', 'def@switch', 'sip:102@192.0.2.2',
    'udp:192.0.2.2:5060', 'c', 'd', 200, 1, 'PCMU', 3000, 516000, 3000, 516000, 2, 0.7, NULL);
INSERT INTO registrations VALUES ('acme', '101', 'sip:101@192.0.2.1', 4102444800.0, NULL,
    'reg@phone', 7, 'udp', '192.0.2.1', 5060, 'Yealink', NULL, 1700000000.0);
"""


def old_database(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(SCHEMA_83D1AB8)
    return path


def rows(path: Path, query: str) -> list[dict[str, object]]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(query)]


def schema_differences(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_a_new_database_gets_the_schema_of_the_code(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        assert await store.transaction(schema_differences) == []
        assert await store.transaction(migrations.revision) == migrations.head()
        assert await store.transaction(migrations.upgrade) == []  # twice is nothing
    finally:
        await store.close()


async def test_a_database_made_before_migrations_is_upgraded_keeping_its_rows(
    tmp_path: Path,
) -> None:
    path = old_database(tmp_path / "old.db")
    legs_before = rows(path, "SELECT * FROM call_legs ORDER BY leg")
    calls_before = rows(path, "SELECT * FROM calls")
    registrations_before = rows(path, "SELECT * FROM registrations")
    store = await open_store(f"sqlite:///{path}")
    try:
        assert await store.transaction(schema_differences) == []
        assert await store.transaction(migrations.revision) == migrations.head()
    finally:
        await store.close()
    calls = rows(path, "SELECT * FROM calls")
    assert calls == [{**call, "recording_seconds": None} for call in calls_before]  # 0002
    assert rows(path, "SELECT * FROM registrations") == registrations_before
    legs = rows(path, "SELECT * FROM call_legs ORDER BY leg")
    new = {"referred_by": None, "answered_at": None, "ended_at": None, "kernel_packets": 0}
    assert legs == [{**leg, **new} for leg in legs_before]


def test_softswitch_migrate_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = old_database(tmp_path / "old.db")
    config = tmp_path / "softswitch.yaml"
    config.write_text(
        f"store: {{url: 'sqlite:///{path}'}}\n"
        "tenants: [{name: acme, domain: acme.example, users: [{extension: 101, password: x}]}]\n"
    )
    assert main(["migrate", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("schema at revision none (new, or made before migrations)")
    added = "added referred_by, answered_at, ended_at"
    assert f"  adopted table call_legs made before migrations: {added}" in out
    assert "  adopted table calls made before migrations" in out
    assert out[-1].endswith(f"schema now at revision {migrations.head()}")
    assert main(["migrate", "-c", str(config)]) == 0
    assert capsys.readouterr().out.endswith("the newest: nothing to do\n")


async def test_a_database_of_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = old_database(tmp_path / "newer.db")
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('9999')")
    with pytest.raises(SchemaError, match="revision '9999', which this softswitch does not know"):
        await open_store(f"sqlite:///{path}")
    assert [row["name"] for row in rows(path, "PRAGMA table_info(call_legs)")][-1] == "latched"
