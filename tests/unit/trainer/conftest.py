"""Fixtures of the trainer tests: a small real-image snapshot, built once per session."""

from __future__ import annotations

import pytest
from snapshot_fixture import FixtureSnapshot, make_snapshot


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> FixtureSnapshot:
    """6 train pairs (weights 1, 1, 1, 1, 2, 4) and 2 validation pairs under a fresh home."""
    return make_snapshot(
        tmp_path_factory.mktemp("home"), n_train=6, n_validation=2, weights=[1, 1, 1, 1, 2, 4]
    )
