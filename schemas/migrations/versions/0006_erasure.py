"""Erasure: which subjects each snapshot holds, which model versions lost training subjects
to an erasure, and the erasure audit log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "snapshot_subjects",
        sa.Column(
            "snapshot_id",
            sa.String(length=64),
            sa.ForeignKey("snapshots.snapshot_id"),
            nullable=False,
        ),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", "subject"),
    )
    op.create_index("ix_snapshot_subjects_subject", "snapshot_subjects", ["subject"])
    # Snapshots recorded before this revision have no rows here; the eraser reads those
    # snapshots' manifests instead (agents.erasure), so none is missed.
    op.create_table(
        "version_erasures",
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("erased_subjects", sa.Integer(), nullable=False),
        sa.Column("last_erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version_id"),
    )
    op.create_table(
        "erasure_audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("snapshots", sa.JSON(), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.UniqueConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("erasure_audit")
    op.drop_table("version_erasures")
    op.drop_index("ix_snapshot_subjects_subject", table_name="snapshot_subjects")
    op.drop_table("snapshot_subjects")
