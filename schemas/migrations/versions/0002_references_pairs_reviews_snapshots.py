"""Anime references and library versions, pairs, review decisions, dataset snapshots.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:37:15.283904
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "library_versions",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=512), nullable=True),
        sa.Column("index_location", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "snapshots",
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("manifest_path", sa.String(length=1024), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("train", sa.Integer(), nullable=False),
        sa.Column("validation", sa.Integer(), nullable=False),
        sa.Column("subjects", sa.Integer(), nullable=False),
        sa.Column("library_version", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id"),
        sa.UniqueConstraint("version"),
    )
    op.create_table(
        "anime_refs",
        sa.Column("ref_id", sa.String(length=36), nullable=False),
        sa.Column("style", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.String(length=1024), nullable=True),
        sa.Column("original", sa.String(length=64), nullable=False),
        sa.Column("training", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=8), nullable=False),
        sa.Column("box", sa.JSON(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("license", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("author", sa.String(length=512), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("outlier_score", sa.Float(), nullable=True),
        sa.Column("embedder", sa.String(length=128), nullable=False),
        sa.Column("library_version", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["library_version"],
            ["library_versions.version"],
        ),
        sa.PrimaryKeyConstraint("ref_id"),
    )
    with op.batch_alter_table("anime_refs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_anime_refs_library_version"), ["library_version"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_anime_refs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_anime_refs_style"), ["style"], unique=False)

    op.create_table(
        "ref_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ref_id"],
            ["anime_refs.ref_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref_id", "name", "source"),
    )
    with op.batch_alter_table("ref_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ref_labels_ref_id"), ["ref_id"], unique=False)

    op.create_table(
        "pairs",
        sa.Column("pair_id", sa.String(length=36), nullable=False),
        sa.Column("face_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("style", sa.String(length=64), nullable=False),
        sa.Column("ref_id", sa.String(length=36), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("library_version", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["face_id"],
            ["faces.face_id"],
        ),
        sa.ForeignKeyConstraint(
            ["library_version"],
            ["library_versions.version"],
        ),
        sa.ForeignKeyConstraint(
            ["ref_id"],
            ["anime_refs.ref_id"],
        ),
        sa.PrimaryKeyConstraint("pair_id"),
        sa.UniqueConstraint("face_id", "style"),
    )
    with op.batch_alter_table("pairs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pairs_face_id"), ["face_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pairs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_pairs_style"), ["style"], unique=False)
        batch_op.create_index(batch_op.f("ix_pairs_subject"), ["subject"], unique=False)

    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pair_id", sa.String(length=36), nullable=False),
        sa.Column("face_id", sa.String(length=36), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("ref_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pair_id"],
            ["pairs.pair_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_decisions_face_id"), ["face_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_review_decisions_pair_id"), ["pair_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("review_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_decisions_pair_id"))
        batch_op.drop_index(batch_op.f("ix_review_decisions_face_id"))

    op.drop_table("review_decisions")
    with op.batch_alter_table("pairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pairs_subject"))
        batch_op.drop_index(batch_op.f("ix_pairs_style"))
        batch_op.drop_index(batch_op.f("ix_pairs_status"))
        batch_op.drop_index(batch_op.f("ix_pairs_face_id"))

    op.drop_table("pairs")
    with op.batch_alter_table("ref_labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ref_labels_ref_id"))

    op.drop_table("ref_labels")
    with op.batch_alter_table("anime_refs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anime_refs_style"))
        batch_op.drop_index(batch_op.f("ix_anime_refs_status"))
        batch_op.drop_index(batch_op.f("ix_anime_refs_library_version"))

    op.drop_table("anime_refs")
    op.drop_table("snapshots")
    op.drop_table("library_versions")
