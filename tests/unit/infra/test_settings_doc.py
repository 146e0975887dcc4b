"""SETTINGS.md lists every setting the code reads, with a meaning, and stays in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings_doc import markdown, setting_rows
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_settings_md_is_what_the_settings_model_renders() -> None:
    assert (ROOT / "SETTINGS.md").read_text() == markdown(), (
        "SETTINGS.md is stale: run `s2a settings --markdown > SETTINGS.md`"
    )


def test_every_setting_has_a_meaning() -> None:
    assert [row.variable for row in setting_rows() if not row.meaning] == []


def test_a_listed_variable_really_sets_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {row.variable: row for row in setting_rows()}
    monkeypatch.setenv("S2A_SERVING__MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("S2A_TOPIC_PREFIX", "x.")
    assert {"S2A_SERVING__MAX_BATCH_SIZE", "S2A_TOPIC_PREFIX"} <= set(rows)
    settings = Settings()
    assert settings.serving.max_batch_size == 5
    assert settings.topic_prefix == "x."
    # Every row names a real path through the model, group by group.
    for variable in rows:
        node: object = Settings.model_fields
        for part in variable.removeprefix("S2A_").lower().split("__"):
            assert isinstance(node, dict)
            assert part in node, variable
            annotation = node[part].annotation
            node = getattr(annotation, "model_fields", None)
