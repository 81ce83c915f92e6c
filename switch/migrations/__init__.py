"""Schema migrations of the store (Alembic), shipped in the package and run at every start.

``upgrade(connection)`` brings a database to the newest revision in ``versions/`` and returns
what it did, one line per step; ``revision(connection)`` says where a database is. The daemon
runs ``upgrade`` before it touches a table, and ``softswitch migrate -c FILE`` runs it alone and
prints the lines. An operator upgrades in place and loses no row.

The first revision is the whole schema as it was when migrations began. It also adopts a
database made before them (tables made by ``metadata.create_all`` of an older version, no
``alembic_version``): it creates the tables that are missing and adds the columns an older
version did not have, so such a database is upgraded, never recreated.

Adding a column: a new file in ``versions/`` (revision = the next number, down_revision = the
last one) whose operations run in batch mode (``op.batch_alter_table``: SQLite rebuilds a table
for what its ALTER cannot do) and use nothing only one database understands, so PostgreSQL runs
the same file; then the column in switch/store.py. tests/test_migrations.py fails when the two
disagree. A revision is history: it describes its tables itself, never through store.py, whose
tables keep moving.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

HERE = Path(__file__).parent


class SchemaError(Exception):
    """The database's schema is not one this version can bring up to date."""


def _config(connection: Connection, notes: list[str]) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    config.attributes["notes"] = notes
    return config


def head() -> str:
    """The newest revision this version knows."""
    script = ScriptDirectory(str(HERE))
    current = script.get_current_head()
    assert current is not None
    return current


def revision(connection: Connection) -> str | None:
    """The revision the database is at; None before any (new, or made before migrations)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> list[str]:
    """Migrate the database on ``connection`` to the newest revision; what was done."""
    at = revision(connection)
    newest = head()
    if at == newest:
        return []
    notes: list[str] = []
    try:
        command.upgrade(_config(connection, notes), "head")
    except CommandError as exc:
        raise SchemaError(
            f"the database is at schema revision {at!r}, which this softswitch does not know "
            f"(its newest is {newest!r}): was it written by a newer version? ({exc})"
        ) from exc
    return notes


def note(config: Config | None, text: str) -> None:
    """Record one thing a revision did, for the daemon's log and ``softswitch migrate``."""
    if config is not None:
        config.attributes.setdefault("notes", []).append(text)
