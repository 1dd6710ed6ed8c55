"""metric point index by job and step (the live event stream reads a job's points after a step)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:43:04.982806
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metric_point", schema=None) as batch_op:
        batch_op.create_index("ix_metric_point_job_id_step", ["job_id", "step"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metric_point", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_point_job_id_step")
