"""Turning image files into upload events, as the app backend (or a dataset import) would.

Files up to ``limits.max_inline_bytes`` travel inline; larger ones by ``file://`` URI,
which a worker reads only under one of its ``uri_roots``. Nothing is copied or written.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agents.stages.imageio import image_files
from infra.errors import UsageError
from schemas.settings import Settings
from schemas.uploads import Consent, DeclaredAttributes, ImagePayload, Source, UploadEvent


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """What the person asked to publish, before it is turned into events."""

    subject: str | None
    consent_version: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    source: Source
    license: str | None
    attribution: str | None
    attributes: DeclaredAttributes = field(default_factory=DeclaredAttributes)

    def check(self) -> None:
        if self.source is Source.PUBLIC_DATASET and not self.license:
            raise UsageError("--source public-dataset needs --license (e.g. CC-BY-4.0)")
        if self.source is Source.SELFIE and not self.subject:
            raise UsageError("selfies need --subject ID (the app's user id)")


def subject_for(path: Path, root: Path, request: UploadRequest) -> str:
    """The subject id: the one given, else (public datasets) one per image file."""
    if request.subject:
        return request.subject
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return f"dataset:{root.name}/{relative.with_suffix('').as_posix()}"


def build_event(
    path: Path,
    request: UploadRequest,
    settings: Settings,
    *,
    subject: str,
    now: datetime | None = None,
    upload_id: str | None = None,
) -> tuple[UploadEvent, str]:
    """The upload event for one file, and how its image travels (``inline`` or ``uri``)."""
    now = now or datetime.now(UTC)
    size = path.stat().st_size
    if size <= settings.limits.max_inline_bytes:
        image, how = ImagePayload(data=path.read_bytes()), "inline"
    else:
        image, how = ImagePayload(uri=path.resolve().as_uri()), "uri"
    event = UploadEvent(
        upload_id=upload_id or f"up-{uuid.uuid4().hex}",
        subject_id=subject,
        consent=Consent(
            version=request.consent_version,
            scopes=list(request.scopes),
            granted_at=now,
            expires_at=request.expires_at,
        ),
        image=image,
        source=request.source,
        license=request.license,
        attribution=request.attribution,
        attributes=request.attributes,
        submitted_at=now,
    )
    return event, how


def plan(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, the argument it came from) for every file to publish."""
    out: list[tuple[Path, Path]] = []
    for arg in paths:
        if not (arg.is_dir() or arg.is_file()):
            raise UsageError(f"{arg} is neither a file nor a folder")
        root = arg if arg.is_dir() else arg.parent
        out.extend((file, root) for file in image_files([arg]))
    return out
