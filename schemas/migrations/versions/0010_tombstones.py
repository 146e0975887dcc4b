"""Tombstones of erased subjects, so that their uploads still queued are refused.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Empty after the upgrade: erasures carried out before it left no tombstone (the
    # audit rows hold no subject reference to make one from).
    op.create_table(
        "tombstones",
        sa.Column("subject_digest", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject_digest"),
    )


def downgrade() -> None:
    op.drop_table("tombstones")
