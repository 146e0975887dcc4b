"""Identity links: faces of two subjects that the embedder says are one person, so the
snapshot split keeps those subjects together.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 20:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_links",
        sa.Column("face_id", sa.String(length=36), sa.ForeignKey("faces.face_id"), nullable=False),
        sa.Column(
            "other_face_id", sa.String(length=36), sa.ForeignKey("faces.face_id"), nullable=False
        ),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.Column("embedder", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("face_id", "other_face_id"),
    )
    op.create_index("ix_identity_links_other_face_id", "identity_links", ["other_face_id"])


def downgrade() -> None:
    op.drop_index("ix_identity_links_other_face_id", table_name="identity_links")
    op.drop_table("identity_links")
