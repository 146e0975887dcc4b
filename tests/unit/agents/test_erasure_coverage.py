"""Every SQL column that can hold a subject, a face or a crop is one the eraser covers.

A new table or column named like ``subject``, ``*_subject*``, ``*face_id*`` or ``crop*``,
or one with a foreign key to ``subjects`` or ``faces``, fails here until
:data:`agents.erasure.COVERED` lists it (after :class:`agents.erasure.Eraser` removes it).
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlmodel import SQLModel

import schemas.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from agents.erasure import COVERED

#: Names that say "this column points at a person, a face or a face's image".
PERSONAL = re.compile(r"subject|face_id|^crop|pseudonym")


def _personal_columns(metadata: sa.MetaData) -> set[str]:
    found = set()
    for table in metadata.sorted_tables:
        for column in table.columns:
            by_name = PERSONAL.search(column.name) is not None
            by_key = any(
                key.column.table.name in ("subjects", "faces") for key in column.foreign_keys
            )
            if by_name or by_key:
                found.add(f"{table.name}.{column.name}")
    return found


def test_every_personal_column_is_covered_by_the_eraser() -> None:
    missing = _personal_columns(SQLModel.metadata) - set(COVERED)

    assert not missing, (
        f"columns the eraser does not cover: {sorted(missing)}; remove them in "
        "agents.erasure.commit.commit and list them in agents.erasure.COVERED"
    )


def test_the_coverage_list_names_only_columns_that_exist() -> None:
    known = {
        f"{table.name}.{column.name}"
        for table in SQLModel.metadata.sorted_tables
        for column in table.columns
    }

    assert set(COVERED) <= known


def test_a_new_subject_column_is_caught() -> None:
    """Guards the first test: a table gaining a subject column must show up as missing."""
    drifted = sa.MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["anime_refs"].append_column(sa.Column("requested_subject", sa.String(64)))
    drifted.tables["labels"].append_column(
        sa.Column("other", sa.String(36), sa.ForeignKey("faces.face_id"))
    )
    sa.Table("face_notes", drifted, sa.Column("crop_hash", sa.String(64)))

    missing = _personal_columns(drifted) - set(COVERED)

    assert missing == {"anime_refs.requested_subject", "labels.other", "face_notes.crop_hash"}
