"""sweeps and priorities: the sweep table, a job's trial columns, its gpus, status pruned

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OLD_STATUSES = ("queued", "running", "cancelling", "cancelled", "succeeded", "failed")
NEW_STATUSES = (*OLD_STATUSES, "pruned")


def _in(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    op.create_table(
        "sweep",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("objective", sa.JSON(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("pruner", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("study_name", sa.String(length=100), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("controller_owner", sa.String(length=200), nullable=True),
        sa.Column("controller_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'cancelled', 'finished')", name=op.f("ck_sweep_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep")),
        sa.UniqueConstraint("study_name", name=op.f("uq_sweep_study_name")),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpus", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("sweep_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("trial_params", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("pruned_at", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("prune_rule", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_sweep_id"), ["sweep_id"], unique=False)
        batch_op.create_index(
            "ix_job_status_gpus_priority", ["status", "gpus", "priority"], unique=False
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_job_sweep_id"), ["sweep_id", "trial_number"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_job_sweep_id_sweep"), "sweep", ["sweep_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.drop_constraint(batch_op.f("ck_job_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_job_status"), _in(NEW_STATUSES))
    _fill_gpus()


def _fill_gpus() -> None:
    """Each existing job's gpus from its stored spec (what its queue was computed from)."""
    from trainer.spec import TrainSpec

    job = sa.table(
        "job", sa.column("id", sa.String), sa.column("spec", sa.JSON), sa.column("gpus", sa.Integer)
    )
    conn = op.get_bind()
    for job_id, spec in conn.execute(sa.select(job.c.id, job.c.spec)).all():
        try:
            gpus = TrainSpec.model_validate(spec).gpus
        except ValueError:
            continue  # a spec a newer field made invalid: its queue was cpu's, gpus 0
        if gpus:
            conn.execute(sa.update(job).where(job.c.id == job_id).values(gpus=gpus))


def downgrade() -> None:
    op.execute("UPDATE job SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_job_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_job_status"), _in(OLD_STATUSES))
        batch_op.drop_constraint(batch_op.f("fk_job_sweep_id_sweep"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_job_sweep_id"), type_="unique")
        batch_op.drop_index("ix_job_status_gpus_priority")
        batch_op.drop_index(batch_op.f("ix_job_sweep_id"))
        batch_op.drop_column("prune_rule")
        batch_op.drop_column("pruned_at")
        batch_op.drop_column("trial_params")
        batch_op.drop_column("trial_number")
        batch_op.drop_column("sweep_id")
        batch_op.drop_column("gpus")
    op.drop_table("sweep")
