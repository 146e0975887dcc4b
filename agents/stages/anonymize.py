"""Stage ``anonymize``: drop the subject's identity and every metadata block of the image.

Three steps, each a plain function:

* :func:`strip_identity` swaps the raw ``subject_id`` for a keyed-HMAC pseudonym
  (:func:`pseudonymize`); from here on the raw id exists nowhere.
* :func:`read_image` fetches the encoded bytes, inline or from a ``file://`` URI under one
  of the configured roots, never reading more than the size limit allows.
* :func:`~agents.stages.imageio.decode_image` (re-exported here) decodes them into bare
  pixels: every metadata block is gone by construction.

Example::

    upload = strip_identity(event, settings.resolve_pseudonym_key())
    data = read_image(upload, settings.limits, settings.uri_roots)
    image = decode_image(data, settings.limits)       # CleanImage, pixels H x W x 3 uint8
    blob = encode_png(image.pixels)

Every :class:`~agents.errors.Rejected` raised here carries :attr:`Stage.ANONYMIZE`. Raw
upload bytes are only ever held in memory; nothing here writes them to disk.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agents.errors import Rejected
from agents.records import ValidUpload
from agents.stages.imageio import check_size, read_bounded
from schemas.reasons import ReasonCode, Stage
from schemas.settings import LimitSettings
from schemas.uploads import UploadEvent


def pseudonymize(subject_id: str, key: bytes) -> str:
    """The subject's pseudonym: HMAC-SHA256 of the UTF-8 id under ``key``, 64 hex chars.

    Stable for one key, so a returning subject maps to the same pseudonym; without the key
    the raw id cannot be recovered by hashing candidate ids.
    """
    if not key:
        raise ValueError("key is empty; pass Settings.resolve_pseudonym_key()")
    return hmac.new(key, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()


def strip_identity(event: UploadEvent, key: bytes) -> ValidUpload:
    """The event with ``subject_id`` replaced by its pseudonym; the raw id is not kept."""
    consent = event.consent
    return ValidUpload(
        upload_id=event.upload_id,
        subject=pseudonymize(event.subject_id, key),
        consent_version=consent.version,
        consent_scopes=tuple(consent.scopes),
        consent_granted_at=consent.granted_at,
        consent_expires_at=consent.expires_at,
        source=event.source,
        license=event.license,
        attribution=event.attribution,
        attributes=event.attributes,
        submitted_at=event.submitted_at,
        image_data=event.image.data,
        image_uri=event.image.uri,
    )


def read_image(upload: ValidUpload, limits: LimitSettings, uri_roots: Sequence[Path]) -> bytes:
    """The encoded image: the inline bytes, or the file a ``file://`` URI names.

    A URI must resolve (symlinks and ``..`` followed) to a regular file inside one of
    ``uri_roots``, else ``bad_uri``; a missing file is ``bad_uri`` too. At most
    ``max_upload_bytes + 1`` bytes are ever read; more is ``too_large``.
    """
    if upload.image_data is not None:
        # Inline images have their own, smaller limit (every producer is sized from it);
        # a record that slipped past a misconfigured producer is refused, not decoded.
        if len(upload.image_data) > limits.max_inline_bytes:
            raise Rejected(
                ReasonCode.TOO_LARGE,
                Stage.ANONYMIZE,
                f"inline image is {len(upload.image_data)} bytes; limits.max_inline_bytes is "
                f"{limits.max_inline_bytes} (S2A_LIMITS__MAX_INLINE_BYTES): send larger "
                "images by file:// URI under a worker root (S2A_URI_ROOTS)",
            )
        check_size(len(upload.image_data), limits)
        return upload.image_data
    if upload.image_uri is None:
        # The contract guarantees one of the two; a hand-built ValidUpload may not.
        raise Rejected(ReasonCode.BAD_SCHEMA, Stage.ANONYMIZE, "upload has neither data nor uri")
    path = _path_under_roots(upload.image_uri, uri_roots, limits)
    return read_bounded(path, limits)


def _path_under_roots(uri: str, uri_roots: Sequence[Path], limits: LimitSettings) -> Path:
    """The resolved local path a ``file://`` URI names, when it lies under a root."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        scheme = parts.scheme or "(none)"
        raise Rejected(
            ReasonCode.BAD_URI,
            Stage.ANONYMIZE,
            f"uri scheme {scheme[:16]!r} is not readable; only file:// under a worker root "
            "(S2A_URI_ROOTS)",
        )
    if parts.netloc not in ("", "localhost"):
        raise Rejected(ReasonCode.BAD_URI, Stage.ANONYMIZE, "file uri names a remote host")
    if parts.query or parts.fragment:
        raise Rejected(ReasonCode.BAD_URI, Stage.ANONYMIZE, "file uri has a query or fragment")
    local = unquote(parts.path)
    if not local.startswith("/") or "\x00" in local:
        raise Rejected(ReasonCode.BAD_URI, Stage.ANONYMIZE, "file uri path is not absolute")
    if not uri_roots:
        # Typically a photo over the inline limit, which producers send by URI: say both
        # ways out, since the operator may not know why this one came by URI.
        raise Rejected(
            ReasonCode.BAD_URI,
            Stage.ANONYMIZE,
            "image comes by file:// URI, but no uri_roots are configured (S2A_URI_ROOTS is "
            "empty): set it to the folders producers write uploads to, or send images of at "
            f"most limits.max_inline_bytes = {limits.max_inline_bytes} bytes inline "
            "(S2A_LIMITS__MAX_INLINE_BYTES)",
        )
    try:
        # Resolve first, compare second: '..' and symlinks are followed before the check,
        # so neither can lead outside a root. Containment is checked before existence so
        # a rejection says nothing about files outside the roots.
        resolved = Path(local).resolve()
        roots = [Path(root).resolve() for root in uri_roots]
    except (OSError, RuntimeError) as exc:
        raise Rejected(
            ReasonCode.BAD_URI, Stage.ANONYMIZE, f"uri path does not resolve: {exc}"
        ) from None
    if not any(resolved.is_relative_to(root) for root in roots):
        # The roots are the operator's own configuration, not the uploader's: naming how
        # many there are helps without echoing paths into the dead-letter topic.
        raise Rejected(
            ReasonCode.BAD_URI,
            Stage.ANONYMIZE,
            f"uri resolves outside every worker root (S2A_URI_ROOTS, {len(roots)} "
            "configured); move the file under one",
        )
    return resolved
