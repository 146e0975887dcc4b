"""Pipeline records with plain defaults, for tests that care about a few of their fields.

Example::

    upload = valid_upload("u-7", subject="a" * 64, consent_granted_at=GRANTED)
    face = face_row(upload, crop_256="c" * 64)
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from agents.records import ValidUpload
from schemas.tables import Face
from schemas.uploads import DeclaredAttributes, Source

#: When the default upload's consent was granted and it was submitted.
GRANTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def valid_upload(upload_id: str = "u-1", subject: str = "0" * 64, **changes: Any) -> ValidUpload:
    """A validated selfie upload with training consent granted at :data:`GRANTED`, no
    declared attributes and no image; ``changes`` replace any field."""
    upload = ValidUpload(
        upload_id=upload_id,
        subject=subject,
        consent_version="1",
        consent_scopes=("training",),
        consent_granted_at=GRANTED,
        consent_expires_at=None,
        source=Source.SELFIE,
        license=None,
        attribution=None,
        attributes=DeclaredAttributes(),
        submitted_at=GRANTED,
        image_data=None,
        image_uri=None,
    )
    return dataclasses.replace(upload, **changes)


def face_row(upload: ValidUpload, **changes: Any) -> Face:
    """The ``faces`` row of ``upload``'s one face (a 100 x 120 px box in a 640 x 480 photo,
    random-init embedder); ``changes`` replace any column."""
    values: dict[str, Any] = {
        "face_id": f"face-{upload.upload_id}",
        "upload_id": upload.upload_id,
        "subject": upload.subject,
        "source": upload.source.value,
        "detector": "mtcnn",
        "detection_prob": 0.999,
        "box": [10.0, 20.0, 110.0, 140.0],
        "landmarks": [[40.0, 60.0], [80.0, 60.0], [60.0, 85.0], [45.0, 110.0], [75.0, 110.0]],
        "quality": {"sharpness": 120.5, "brightness": 128.0},
        "crop_256": "1" * 64,
        "crop_512": "2" * 64,
        "align": {"256": [[1.0, 0.0, -5.0], [0.0, 1.0, -7.0]]},
        "embedder": "inception-resnet-v1",
        "embedder_random_init": True,
        "image_width": 640,
        "image_height": 480,
        "created_at": GRANTED,
    }
    values.update(changes)
    return Face(**values)
