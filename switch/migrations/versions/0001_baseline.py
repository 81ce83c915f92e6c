"""The schema when migrations began: registrations, calls and call legs.

A database made before migrations (by ``metadata.create_all``: no alembic_version) is adopted:
missing tables are created and missing columns added (the transfer columns of ``call_legs``
came after its first version); no row is touched. Columns an older version lacked are all
nullable, so adding them to a table with rows is safe on every database.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from switch.migrations import SchemaError, note

revision = "0001"
down_revision = None

schema = sa.MetaData()

sa.Table(
    "registrations",
    schema,
    sa.Column("tenant", sa.String, primary_key=True),
    sa.Column("user", sa.String, primary_key=True),
    sa.Column("contact", sa.String, primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("q", sa.Float, nullable=True),
    sa.Column("call_id", sa.String, nullable=False),
    sa.Column("cseq", sa.Integer, nullable=False),
    sa.Column("transport", sa.String, nullable=False),
    sa.Column("source_host", sa.String, nullable=False),
    sa.Column("source_port", sa.Integer, nullable=False),
    sa.Column("user_agent", sa.String, nullable=True),
    sa.Column("instance", sa.String, nullable=True),
    sa.Column("registered_at", sa.Float, nullable=False),
)

sa.Table(
    "calls",
    schema,
    sa.Column("call_id", sa.String, primary_key=True),
    sa.Column("tenant", sa.String, nullable=False),
    sa.Column("caller", sa.String, nullable=False),
    sa.Column("callee", sa.String, nullable=False),
    sa.Column("did", sa.String, nullable=True),
    sa.Column("direction", sa.String, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("answered_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("duration", sa.Integer, nullable=False),
    sa.Column("billsec", sa.Integer, nullable=False),
    sa.Column("disposition", sa.String, nullable=True),
    sa.Column("hangup_by", sa.String, nullable=True),
    sa.Column("hangup_cause", sa.String, nullable=True),
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("recording", sa.String, nullable=True),
)

sa.Table(
    "call_legs",
    schema,
    sa.Column("call_id", sa.String, sa.ForeignKey("calls.call_id"), primary_key=True),
    sa.Column("leg", sa.Integer, primary_key=True),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("sip_call_id", sa.String, nullable=False),
    sa.Column("contact", sa.String, nullable=True),
    sa.Column("address", sa.String, nullable=True),
    sa.Column("local_tag", sa.String, nullable=True),
    sa.Column("remote_tag", sa.String, nullable=True),
    sa.Column("status", sa.Integer, nullable=True),
    sa.Column("answered", sa.Boolean, nullable=False),
    sa.Column("codec", sa.String, nullable=True),
    sa.Column("packets_in", sa.Integer, nullable=False),
    sa.Column("bytes_in", sa.Integer, nullable=False),
    sa.Column("packets_out", sa.Integer, nullable=False),
    sa.Column("bytes_out", sa.Integer, nullable=False),
    sa.Column("lost", sa.Integer, nullable=False),
    sa.Column("jitter_ms", sa.Float, nullable=False),
    sa.Column("latched", sa.String, nullable=True),
    sa.Column("referred_by", sa.String, nullable=True),
    sa.Column("answered_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
)


def upgrade() -> None:
    bind = op.get_bind()
    config = op.get_context().config
    existing = set(sa.inspect(bind).get_table_names())
    for table in schema.sorted_tables:
        if table.name not in existing:
            table.create(bind)
            note(config, f"created table {table.name}")
            continue
        inspector = sa.inspect(bind)
        have = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in have]
        for column in missing:
            if not column.nullable:
                raise SchemaError(
                    f"table {table.name} has no column {column.name}, which cannot be added "
                    "to rows that exist (NOT NULL): is this database a softswitch store?"
                )
        if missing:
            with op.batch_alter_table(table.name) as batch:
                for column in missing:
                    batch.add_column(sa.Column(column.name, column.type, nullable=True))
            added = ", ".join(column.name for column in missing)
            note(config, f"adopted table {table.name} made before migrations: added {added}")
        else:
            note(config, f"adopted table {table.name} made before migrations")
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)
                note(config, f"created index {index.name}")
