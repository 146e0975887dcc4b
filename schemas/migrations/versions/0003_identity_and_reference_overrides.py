"""Real identity and reference overrides: the embedder's weights hash and an identity flag
on faces; who set a reference's status and when, and its landmarks with their source.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 15:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("faces") as batch:
        batch.add_column(sa.Column("embedder_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("flag", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("flag_detail", sa.String(length=512), nullable=True))
        batch.create_index("ix_faces_flag", ["flag"])
    with op.batch_alter_table("anime_refs") as batch:
        batch.add_column(sa.Column("status_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("status_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("landmarks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("landmarks_source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("anime_refs") as batch:
        batch.drop_column("landmarks_source")
        batch.drop_column("landmarks")
        batch.drop_column("status_at")
        batch.drop_column("status_by")
    with op.batch_alter_table("faces") as batch:
        batch.drop_index("ix_faces_flag")
        batch.drop_column("flag_detail")
        batch.drop_column("flag")
        batch.drop_column("embedder_sha256")
