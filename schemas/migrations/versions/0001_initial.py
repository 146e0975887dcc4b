"""Initial tables: subjects, uploads, faces, labels.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Terminal states as their lower-case values in a plain VARCHAR (no native enum type).
upload_state = sa.Enum(
    "accepted", "rejected", "erased", name="uploadstate", native_enum=False, length=16
)


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consent_version", sa.String(length=64), nullable=False),
        sa.Column("consent_scopes", sa.JSON(), nullable=False),
        sa.Column("consent_granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consent_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pseudonym"),
    )
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("state", upload_state, nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.String(length=1024), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=True),
        sa.Column("license", sa.String(length=128), nullable=True),
        sa.Column("consent_version", sa.String(length=64), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin_topic", sa.String(length=255), nullable=True),
        sa.Column("origin_partition", sa.Integer(), nullable=True),
        sa.Column("origin_offset", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["subject"], ["subjects.pseudonym"]),
        sa.PrimaryKeyConstraint("upload_id"),
    )
    op.create_index("ix_uploads_subject", "uploads", ["subject"])
    op.create_index("ix_uploads_state", "uploads", ["state"])
    op.create_index("ix_uploads_reason", "uploads", ["reason"])
    op.create_table(
        "faces",
        sa.Column("face_id", sa.String(length=36), nullable=False),
        sa.Column("upload_id", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("license", sa.String(length=128), nullable=True),
        sa.Column("attribution", sa.String(length=512), nullable=True),
        sa.Column("detector", sa.String(length=64), nullable=False),
        sa.Column("detection_prob", sa.Float(), nullable=False),
        sa.Column("box", sa.JSON(), nullable=False),
        sa.Column("landmarks", sa.JSON(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=False),
        sa.Column("crop_256", sa.String(length=64), nullable=False),
        sa.Column("crop_512", sa.String(length=64), nullable=False),
        sa.Column("align", sa.JSON(), nullable=False),
        sa.Column("embedder", sa.String(length=128), nullable=False),
        sa.Column("embedder_random_init", sa.Boolean(), nullable=False),
        sa.Column("image_width", sa.Integer(), nullable=False),
        sa.Column("image_height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["subject"], ["subjects.pseudonym"]),
        sa.ForeignKeyConstraint(["upload_id"], ["uploads.upload_id"]),
        sa.PrimaryKeyConstraint("face_id"),
        sa.UniqueConstraint("upload_id"),
    )
    op.create_index("ix_faces_subject", "faces", ["subject"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("face_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["face_id"], ["faces.face_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("face_id", "name", "source"),
    )
    op.create_index("ix_labels_face_id", "labels", ["face_id"])


def downgrade() -> None:
    op.drop_index("ix_labels_face_id", table_name="labels")
    op.drop_table("labels")
    op.drop_index("ix_faces_subject", table_name="faces")
    op.drop_table("faces")
    op.drop_index("ix_uploads_reason", table_name="uploads")
    op.drop_index("ix_uploads_state", table_name="uploads")
    op.drop_index("ix_uploads_subject", table_name="uploads")
    op.drop_table("uploads")
    op.drop_table("subjects")
