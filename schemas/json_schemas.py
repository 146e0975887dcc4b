"""JSON Schemas of the topic records and the dataset manifest, for producers and
consumers in other languages.

The files in ``schemas/jsonschema/`` are generated from the models here
(``python -m schemas.json_schemas``) and a test fails when they drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.erasure import ErasureRequest
from schemas.manifest import DatasetManifest
from schemas.model_updates import ModelUpdate
from schemas.pairs import FaceAccepted, PairRecord
from schemas.rejections import Rejection
from schemas.uploads import UploadEvent

FOLDER = Path(__file__).with_name("jsonschema")
RECORDS: dict[str, type[BaseModel]] = {
    "upload_event": UploadEvent,
    "rejection": Rejection,
    "face_accepted": FaceAccepted,
    "pair": PairRecord,
    "dataset_manifest": DatasetManifest,
    "model_update": ModelUpdate,
    "erasure_request": ErasureRequest,
}


def schema_of(name: str) -> dict[str, Any]:
    model = RECORDS[name]
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://selfie2anime.invalid/schemas/{name}.v{_version(model)}.json"
    return schema


def _version(model: type[BaseModel]) -> object:
    """A topic record's ``schema_version``; the dataset manifest's ``format_version``."""
    field = model.model_fields.get("schema_version") or model.model_fields["format_version"]
    return field.default


def render(name: str) -> str:
    return json.dumps(schema_of(name), indent=2, sort_keys=True) + "\n"


def write_all(folder: Path = FOLDER) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RECORDS:
        path = folder / f"{name}.json"
        path.write_text(render(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        sys.stderr.write(f"wrote {path}\n")
