"""gpu devices: worker registrations, device leases, the job's worker and devices

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 15:24:22.702739
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_device",
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", "device", name=op.f("pk_worker_device")),
    )
    with op.batch_alter_table("worker_device", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_device_host"), ["host"], unique=False)

    op.create_table(
        "device_lease",
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_device_lease_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host", "device", name=op.f("pk_device_lease")),
    )
    with op.batch_alter_table("device_lease", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_lease_job_id"), ["job_id"], unique=False)

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("devices", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("devices")
        batch_op.drop_column("worker")

    with op.batch_alter_table("device_lease", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_lease_job_id"))

    op.drop_table("device_lease")
    with op.batch_alter_table("worker_device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worker_device_host"))

    op.drop_table("worker_device")
