"""Topic ``erasure-requests``: a person withdrew consent; remove them everywhere.

Published by the app backend or by ``s2a erase``; the worker's ``erase`` agent consumes it,
turns ``subject_id`` into the subject's pseudonym at once (the same keyed HMAC as uploads)
and runs :class:`agents.erasure.Eraser`. The raw ``subject_id`` exists only on the wire: no
table, log line or file ever holds it, and the audit row the erasure writes
(``erasure_audit``) holds no subject reference at all, only ``request_id``, who asked, when,
and counts. A producer that needs to prove later that a given user was erased keeps its own
``user -> request_id`` record; this system keeps nothing that ties the audit to a person.

Keyed by ``request_id``: a re-delivered request finds its audit row and changes nothing.
Keep the topic's retention short (hours): its records are the one place the raw id is.

Example::

    request = ErasureRequest(subject_id="app-user-42", requested_by="privacy-office",
                             requested_at=datetime.now(UTC))
    producer.send(settings.topic(TOPIC), key=request.key(), value=request.to_bytes())
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.uploads import OpaqueId

TOPIC = "erasure-requests"
SCHEMA_VERSION: Final = 1


def new_request_id() -> str:
    """A fresh request id (``er-`` and 32 hex digits)."""
    return f"er-{uuid.uuid4().hex}"


class ErasureRequest(BaseModel):
    """Erase one subject: every face, crop, embedding, label, pair, review reference and
    snapshot that holds them, and mark the model versions trained on them.

    ``request_id`` is the idempotency key: the same request twice erases once and answers
    twice with the first erasure's counts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: OpaqueId = Field(
        default_factory=new_request_id,
        description="idempotency key; the audit row is found by it",
    )
    subject_id: str = Field(
        min_length=1,
        max_length=256,
        description="the app's user id, as in UploadEvent.subject_id; pseudonymized with the "
        "keyed HMAC on entry, never stored or logged",
        repr=False,  # so that no log line shows it through the request's repr
    )
    requested_by: str = Field(
        min_length=1, max_length=128, description="who asked: a person, a service or 'app'"
    )
    requested_at: AwareDatetime

    def key(self) -> bytes:
        return self.request_id.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ErasureRequest:
        return cls.model_validate_json(raw)
