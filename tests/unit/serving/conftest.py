"""Fixtures of the serving unit tests: two tiny exported versions, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_fixture import export_tiny


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/converter/1`` and ``/2`` (outputs pushed by different biases)."""
    root = tmp_path_factory.mktemp("serving-home") / "models"
    export_tiny(root, 1, shift=0.2)
    export_tiny(root, 2, shift=-0.2)
    return root
