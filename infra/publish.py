"""Turning image files into upload events, as the app backend (or a dataset import) would.

Files up to ``limits.max_inline_bytes`` travel inline; larger ones by ``file://`` URI,
which a worker reads only under one of its ``uri_roots``. Nothing is copied or written.

No file is dropped in silence: :func:`plan` lists what it skipped under each folder and
why, and :func:`publish_each` turns a file that cannot become an event into one more
:class:`~agents.stages.imageio.Skipped` instead of stopping half-way.

Example::

    batch = plan([Path("selfies/")])
    for result in publish_each(batch.files, request, settings, publisher):
        ...  # Published or Skipped, one per file, in order
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from agents.stages.imageio import Skipped, scan_images
from infra.attributes import AttributeTable
from infra.errors import UsageError
from schemas.settings import Settings
from schemas.uploads import DeclaredAttributes, ImagePayload, Source, UploadEvent

#: The command-line option behind each field of an UploadEvent that ``publish`` fills in.
OPTION_OF_FIELD: dict[tuple[str, ...], str] = {
    ("subject_id",): "--subject",
    ("consent", "version"): "--consent-version",
    ("consent", "scopes"): "--consent-scope",
    ("consent", "expires_at"): "--expires",
    ("license",): "--license",
    ("attribution",): "--attribution",
}


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
        """Raise :class:`UsageError` naming the option when the request cannot make a
        valid upload event: a missing ``--subject`` or ``--license``, or a value over the
        UploadEvent contract's limits (e.g. a ``--subject`` over 256 characters)."""
        if self.source is Source.PUBLIC_DATASET and not self.license:
            raise UsageError("--source public-dataset needs --license (e.g. CC-BY-4.0)")
        if self.source is Source.SELFIE and not self.subject:
            raise UsageError("selfies need --subject ID (the app's user id)")
        # The contract itself judges every value taken from an option, before any file is
        # read: one event with a stand-in image and subject holds all of them.
        now = datetime.now(UTC)
        try:
            _event(self, ImagePayload(data=b"-"), self.subject or "dataset:check", now, "up-check")
        except ValidationError as exc:
            raise UsageError(option_problems(exc)) from None


def option_problems(exc: ValidationError) -> str:
    """A contract violation in the words of the command line: which option, what limit."""
    problems = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        field_name = ".".join(loc)
        option = OPTION_OF_FIELD.get(loc, field_name)
        given = error.get("input")
        size = f", given {len(given)}" if isinstance(given, str) else ""
        problems.append(
            f"{option}: {error['msg'].lower()}{size} ({field_name} of the UploadEvent contract)"
        )
    return "; ".join(problems)


def _event(
    request: UploadRequest,
    image: ImagePayload,
    subject: str,
    now: datetime,
    upload_id: str,
    attributes: DeclaredAttributes | None = None,
) -> UploadEvent:
    # One validation of the whole record, so that an error's location is the full path
    # of the field (``consent.version``), which names the option.
    return UploadEvent.model_validate(
        {
            "upload_id": upload_id,
            "subject_id": subject,
            "consent": {
                "version": request.consent_version,
                "scopes": list(request.scopes),
                "granted_at": now,
                "expires_at": request.expires_at,
            },
            "image": image,
            "source": request.source,
            "license": request.license,
            "attribution": request.attribution,
            "attributes": request.attributes if attributes is None else attributes,
            "submitted_at": now,
        }
    )


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
    attributes: DeclaredAttributes | None = None,
) -> tuple[UploadEvent, str]:
    """The upload event for one file, and how its image travels (``inline`` or ``uri``).

    ``attributes`` replaces the request's declared attributes for this file. Raises
    ``OSError`` when the file cannot be read and pydantic's ``ValidationError`` when the
    event breaks the contract (e.g. a subject derived from a very long path).
    """
    now = now or datetime.now(UTC)
    size = path.stat().st_size
    if size <= settings.limits.max_inline_bytes:
        image, how = ImagePayload(data=path.read_bytes()), "inline"
    else:
        image, how = ImagePayload(uri=path.resolve().as_uri()), "uri"
    event = _event(request, image, subject, now, upload_id or f"up-{uuid.uuid4().hex}", attributes)
    return event, how


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``publish`` will try: each file with the argument it came from, and what it
    skipped under folders (with why). ``total`` counts both: the ``M`` of "N of M"."""

    files: list[tuple[Path, Path]]
    skipped: list[Skipped]

    @property
    def total(self) -> int:
        return len(self.files) + len(self.skipped)


def plan(paths: Sequence[Path]) -> Plan:
    """Files to publish from files and folders (see
    :func:`~agents.stages.imageio.scan_images`); raises :class:`UsageError` for an
    argument that is neither a file nor a folder."""
    files: list[tuple[Path, Path]] = []
    skipped: list[Skipped] = []
    for arg in paths:
        if not (arg.is_dir() or arg.is_file()):
            raise UsageError(f"{arg} is neither a file nor a folder")
        root = arg if arg.is_dir() else arg.parent
        found, left = scan_images([arg])
        files.extend((file, root) for file in found)
        skipped.extend(left)
    return Plan(files=files, skipped=skipped)


class EventPublisher(Protocol):
    """Where events go: :class:`infra.kafka.UploadPublisher`, or a test's list."""

    def publish(self, event: UploadEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class Published:
    """One file sent: its event and how the image travelled (``inline`` or ``uri``)."""

    path: Path
    event: UploadEvent
    how: str


def publish_each(
    files: Sequence[tuple[Path, Path]],
    request: UploadRequest,
    settings: Settings,
    publisher: EventPublisher,
    attributes: AttributeTable | None = None,
) -> Iterator[Published | Skipped]:
    """Publish each planned file, yielding one result per file as it is done.

    A file that cannot be read (gone, unreadable, turned into a folder since it was
    planned) or cannot make a valid event is yielded as :class:`Skipped` with the reason,
    and the next file follows. Errors of the publisher itself (``BrokerError``: no broker,
    a refused send) propagate: every later file would fail the same way.
    """
    for path, root in files:
        declared = None  # without an attributes file, the request's own
        if attributes is not None:
            # With one, a file without a row declares nothing.
            declared = attributes.for_file(path, root) or DeclaredAttributes()
        try:
            event, how = build_event(
                path,
                request,
                settings,
                subject=subject_for(path, root, request),
                attributes=declared,
            )
        except OSError as exc:
            yield Skipped(path, f"cannot be read: {exc.strerror or exc}")
            continue
        except ValidationError as exc:
            yield Skipped(path, f"makes no valid upload event: {option_problems(exc)}")
            continue
        publisher.publish(event)
        yield Published(path, event, how)
