"""The tombstone's two pure parts: its digest (keyed, domain-separated, never the
pseudonym) and the rule that refuses an upload consented before the erasure; and the
eraser refusing to run without the key it needs for the tombstone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from sqlalchemy import select
from sqlmodel import SQLModel

from agents.erasure import Eraser
from agents.errors import Rejected
from agents.stages.anonymize import pseudonymize
from agents.stages.validate import check_not_erased
from agents.stores.blobs import BlobStore
from agents.stores.db import create_engine_for
from agents.stores.tombstones import tombstone_digest
from schemas.errors import ConfigError
from schemas.migrate import upgrade
from schemas.reasons import ReasonCode, Stage
from schemas.tables import Tombstone

KEY = b"k" * 32
ERASED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_digest_is_keyed_and_is_not_the_pseudonym() -> None:
    pseudonym = pseudonymize("app-user-42", KEY)

    digest = tombstone_digest(pseudonym, KEY)

    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest != pseudonym
    assert pseudonym not in digest
    # Stable for one key, another for another key: without the key it leads nowhere.
    assert digest == tombstone_digest(pseudonym, KEY)
    assert digest != tombstone_digest(pseudonym, b"j" * 32)
    # Domain-separated: not the pseudonym of any raw id that happens to equal a pseudonym.
    assert digest != pseudonymize(pseudonym, KEY)
    with pytest.raises(ValueError, match="key is empty"):
        tombstone_digest(pseudonym, b"")


def test_a_consent_granted_before_the_erasure_is_refused() -> None:
    for granted in (ERASED_AT - timedelta(days=3), ERASED_AT):
        with pytest.raises(Rejected) as caught:
            check_not_erased(granted, ERASED_AT)
        assert (caught.value.reason, caught.value.stage) == (
            ReasonCode.SUBJECT_ERASED,
            Stage.VALIDATE,
        )
        assert ERASED_AT.isoformat() in caught.value.detail
    with pytest.raises(Rejected) as at_store:
        check_not_erased(ERASED_AT, ERASED_AT, Stage.STORE)
    assert at_store.value.stage is Stage.STORE


def test_a_consent_granted_after_the_erasure_or_no_erasure_passes() -> None:
    check_not_erased(ERASED_AT + timedelta(seconds=1), ERASED_AT)
    check_not_erased(ERASED_AT - timedelta(days=3), None)


def test_an_eraser_without_the_key_refuses_before_removing_anything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's2a.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    eraser = Eraser(engine, QdrantClient(":memory:"), BlobStore(tmp_path / "blobs"), tmp_path)

    with pytest.raises(ConfigError, match="no pseudonym key"):
        eraser.erase("a" * 64, request_id="er-1", requested_by="t", requested_at=ERASED_AT)

    result = eraser.erase(
        "a" * 64, request_id="er-1", requested_by="t", requested_at=ERASED_AT, key=KEY
    )
    assert result.outcome == "nothing_found"
    table = SQLModel.metadata.tables[Tombstone.__tablename__]
    with engine.connect() as connection:
        rows = list(connection.execute(select(table)))
    # A subject never seen still gets its tombstone: its first upload may be queued.
    assert [row.subject_digest for row in rows] == [tombstone_digest("a" * 64, KEY)]
    engine.dispose()
