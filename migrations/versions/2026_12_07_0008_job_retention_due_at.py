"""job retention_due_at: a checkpoint no retention pass has finished with (the reconciler
retries a finished job's failed pass)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs from before keep NULL: their passes ran (or failed) before anything tracked them.
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("retention_due_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("retention_due_at")
