"""Alembic's entry point: migrations run on the connection ``switch.migrations`` hands over.

No URL and no logging setup here: the caller owns the connection and its transaction.
Batch mode lets SQLite do what its ALTER TABLE cannot, by rebuilding the table.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from switch.migrations import note

config = context.config


def _applied(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    doc = getattr(step.up_revision, "doc", "")  # a Script (the revision's file) has one
    note(config, f"upgraded to revision {step.up_revision_id}: {doc}")


context.configure(
    connection=config.attributes["connection"],
    render_as_batch=True,
    on_version_apply=_applied,
)
with context.begin_transaction():
    context.run_migrations()
