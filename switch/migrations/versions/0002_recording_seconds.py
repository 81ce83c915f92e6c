"""Call records say how long their recording is: ``calls.recording_seconds``.

``calls.recording`` (the file's path) was in the baseline, unused until the media engine
recorded calls; the length comes with it. Nullable: a call without a recording has neither.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from switch.migrations import note

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("recording_seconds", sa.Float, nullable=True))
    note(op.get_context().config, "added calls.recording_seconds")
