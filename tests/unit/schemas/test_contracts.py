"""Contracts: the published JSON Schemas match the models, and a record written by hand
from the documentation (as a producer in another language would) is accepted."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest

from schemas import json_schemas
from schemas.settings import LimitSettings, Settings
from schemas.uploads import UploadEvent

REAL = Path(__file__).parents[2] / "data" / "real"


@pytest.mark.parametrize("name", sorted(json_schemas.RECORDS))
def test_committed_json_schema_is_current(name: str) -> None:
    committed = (json_schemas.FOLDER / f"{name}.json").read_text()
    assert committed == json_schemas.render(name), (
        f"schemas/jsonschema/{name}.json is stale: run python -m schemas.json_schemas"
    )


def _hand_written() -> dict[str, object]:
    photo = (REAL / "london_001_neutral.jpg").read_bytes()
    return {
        "schema_version": 1,
        "upload_id": "up-8f2c1e",
        "subject_id": "app-user-42",
        "consent": {
            "version": "2026-01",
            "scopes": ["training"],
            "granted_at": "2026-11-24T10:00:00Z",
        },
        "image": {"data": base64.b64encode(photo).decode()},
        "source": "selfie",
        "attributes": {"age": 34, "gender": "female"},
        "submitted_at": "2026-11-24T10:00:01+01:00",
    }


def test_hand_written_record_passes_schema_and_model() -> None:
    record = _hand_written()
    schema = json.loads((json_schemas.FOLDER / "upload_event.json").read_text())
    jsonschema.validate(record, schema)
    event = UploadEvent.from_bytes(json.dumps(record).encode())
    assert event.image.data == (REAL / "london_001_neutral.jpg").read_bytes()


def test_version_2_declares_an_expression_and_version_1_stays_valid() -> None:
    schema = json.loads((json_schemas.FOLDER / "upload_event.json").read_text())
    record = _hand_written()
    record["schema_version"] = 2
    record["attributes"] = {"age": 34, "expression": "smiling"}
    jsonschema.validate(record, schema)
    assert UploadEvent.from_bytes(json.dumps(record).encode()).attributes.expression == "smiling"
    # A version 1 event (no expression) is read as before; one with an expression is not
    # what a version 1 producer can mean.
    assert UploadEvent.from_bytes(json.dumps(_hand_written()).encode()).schema_version == 1
    record["schema_version"] = 1
    with pytest.raises(ValueError, match=r"attributes\.expression needs schema_version 2"):
        UploadEvent.from_bytes(json.dumps(record).encode())
    record["schema_version"] = 2
    record["attributes"] = {"expression": "grinning"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, schema)
    with pytest.raises(ValueError, match="expression"):
        UploadEvent.from_bytes(json.dumps(record).encode())


def test_schema_and_model_refuse_unknown_fields() -> None:
    record = _hand_written() | {"subjectId": "typo"}
    schema = json.loads((json_schemas.FOLDER / "upload_event.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(record, schema)
    with pytest.raises(ValueError, match="subjectId"):
        UploadEvent.from_bytes(json.dumps(record).encode())


def test_record_limit_covers_base64_of_the_inline_limit() -> None:
    limits = LimitSettings(max_inline_bytes=3_000_000)
    encoded = len(base64.b64encode(b"x" * limits.max_inline_bytes))
    assert encoded < limits.max_record_bytes <= encoded + 64 * 1024 + 4


def test_inline_limit_above_upload_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_inline_bytes"):
        Settings(limits=LimitSettings(max_inline_bytes=10, max_upload_bytes=5))


def test_generated_pseudonym_key_is_stable_and_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key = settings.resolve_pseudonym_key()
    assert len(key) == 32
    assert Settings(home=tmp_path).resolve_pseudonym_key() == key
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
