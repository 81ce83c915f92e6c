"""Call legs say how many of their packets the kernel forwarded: ``call_legs.kernel_packets``.

With ``media.kernel`` the relay's latched streams are forwarded by an eBPF program; the leg's
``packets_in`` counts them as before, and this column says how many of them never reached the
relay process (support reads it when a call's audio is questioned). Rows from before have 0.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from switch.migrations import note

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("call_legs") as batch:
        batch.add_column(
            sa.Column("kernel_packets", sa.Integer, nullable=False, server_default="0")
        )
    note(op.get_context().config, "added call_legs.kernel_packets")
