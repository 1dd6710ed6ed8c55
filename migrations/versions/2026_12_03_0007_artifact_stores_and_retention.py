"""artifact stores and retention: the db store's tables, the trash list, pinned checkpoints,
sample and sidecar sizes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact_file",
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("blob", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_artifact_file")),
    )
    op.create_index(op.f("ix_artifact_file_blob"), "artifact_file", ["blob"], unique=False)
    op.create_table(
        "artifact_chunk",
        sa.Column("blob", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob", "seq", name=op.f("pk_artifact_chunk")),
    )
    op.create_table(
        "artifact_trash",
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("delete_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_artifact_trash")),
    )
    op.create_index(
        op.f("ix_artifact_trash_delete_after"), "artifact_trash", ["delete_after"], unique=False
    )
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("sidecar_size", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("sample", schema=None) as batch_op:
        batch_op.add_column(sa.Column("size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample", schema=None) as batch_op:
        batch_op.drop_column("size")
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.drop_column("sidecar_size")
        batch_op.drop_column("pinned")
    op.drop_index(op.f("ix_artifact_trash_delete_after"), table_name="artifact_trash")
    op.drop_table("artifact_trash")
    op.drop_table("artifact_chunk")
    op.drop_index(op.f("ix_artifact_file_blob"), table_name="artifact_file")
    op.drop_table("artifact_file")
