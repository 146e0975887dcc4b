"""A corpus of bad uploads, generated in code: every kind the ingest chain must survive.

Each :class:`BadInput` is one raw ``uploads`` record and what must become of it: exactly
one terminal state, the reason code, and a piece of the detail that names the limit or
setting involved (so an operator reading the dead letter knows which knob to turn).
Valid-but-unusual images (CMYK, 16-bit, palette, float) are here too: they must be
*accepted* after conversion, because a phone or an editor produces them from real selfies.

Example::

    for case in corpus(uri_root, outside):
        outcome = pipeline.run([Incoming(case.raw)])[0]

The corpus is sized for :data:`LIMITS` (small byte limits, so the size refusals need no
megabytes of test data); a settings object for it needs ``uri_roots=(uri_root,)``.
"""

from __future__ import annotations

import io
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import agents.stages.imageio  # noqa: F401  (registers the HEIF opener and saver)
from schemas.settings import LimitSettings
from schemas.uploads import Consent, ImagePayload, UploadEvent

REAL = Path(__file__).parent / "data" / "real"

LIMITS = LimitSettings(max_inline_bytes=400_000, max_upload_bytes=600_000)
"""The limits the corpus is built against (as in the stream test)."""

ACCEPTED = "accepted"
SKIPPED = "skipped"
"""A second record with an ``upload_id`` already seen: no new state; the first stands."""


@dataclass(frozen=True, slots=True)
class BadInput:
    """One record of the corpus and its one right ending."""

    kind: str
    group: str
    upload_id: str
    """the id its terminal state is recorded under (a fallback id for unreadable records)"""
    raw: bytes
    expect: str
    """``accepted``, ``skipped`` or the reason code of the rejection"""
    names: str
    """a substring the rejection's detail must contain: the setting or field involved"""
    why: str
    """why this is the right ending (RELIABILITY.md repeats it)"""
    key: bytes
    """the record key to publish it under: the subject id, as producers do (so the two
    copies of one ``upload_id`` share a partition and arrive in order), else the id"""
    image: bytes | None = None
    """the inline image bytes, when the record carries some (Convert is sent these)"""


def _portrait(name: str = "london_001_neutral.jpg") -> Image.Image:
    with Image.open(REAL / name) as image:
        return image.convert("RGB")


def _save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _frames(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def _corrupt_png() -> bytes:
    data = bytearray(_save(_portrait().resize((128, 128)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 20 : start + 60] = b"\xff" * 40  # inside the zlib stream
    return bytes(data)


def _corrupt_jpeg() -> bytes:
    # Zero the Huffman tables: the header still parses, the scan cannot be decoded.
    data = bytearray(_save(_portrait(), "JPEG", quality=90))
    at = data.index(b"\xff\xc4")
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    data[at + 4 : at + 2 + length] = b"\x00" * (length - 2)
    return bytes(data)


def _float_tiff() -> bytes:
    # 300 x 300 x 4 bytes: under the corpus's inline limit, the face still over 80 px.
    grey = np.asarray(_portrait().convert("L").resize((300, 300)), dtype=np.float32)
    return _save(Image.fromarray(grey), "TIFF")  # float32 -> mode F


def _sixteen_bit_png() -> bytes:
    grey = np.asarray(_portrait().convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(grey)  # uint16 -> mode I;16
    assert image.mode == "I;16", image.mode
    return _save(image, "PNG")


def _rotated(degrees: float) -> bytes:
    # MTCNN's landmarks of strongly turned heads are unreliable; this face at 70 degrees
    # reads as a roll of ~61 (limit 45) with detection probability 0.997, a clear margin.
    image = _portrait("london_004_neutral.jpg")
    return _save(image.rotate(degrees, expand=True, fillcolor=(128, 128, 128)), "JPEG")


def _cut_by_frame() -> bytes:
    image = _portrait("london_007_neutral.jpg")
    # MTCNN boxes her face at x 168..342: from x 225 a third of it is outside the photo
    # (half a face is no face at all to the detector).
    return _save(image.crop((225, 0, image.width, image.height)), "JPEG", quality=95)


def _tiny_face() -> bytes:
    image = _portrait("london_008_neutral.jpg").resize((200, 200))
    canvas = Image.new("RGB", (640, 640), (120, 120, 120))
    canvas.paste(image, (220, 220))
    return _save(canvas, "JPEG", quality=95)


def _dark() -> bytes:
    pixels = np.asarray(_portrait("london_009_neutral.jpg"), dtype=np.float32) * 0.12
    return _save(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=95)


def _two_faces() -> bytes:
    pair = Image.new("RGB", (1024, 512))
    pair.paste(_portrait("london_011_neutral.jpg"), (0, 0))
    pair.paste(_portrait("london_012_neutral.jpg"), (512, 0))
    return _save(pair, "JPEG")


def _bomb(width: int, height: int) -> bytes:
    # A 1-bit all-black canvas: a few kB of PNG that declares a huge image.
    return _save(Image.new("1", (width, height)), "PNG", optimize=True)


class _Builder:
    def __init__(self, uri_root: Path, outside: Path) -> None:
        self.now = datetime.now(UTC)
        self.uri_root = uri_root
        self.outside = outside
        self.cases: list[BadInput] = []
        self.tag = uuid.uuid4().hex[:8]

    def event(
        self,
        kind: str,
        *,
        data: bytes | None = None,
        uri: str | None = None,
        scopes: tuple[str, ...] = ("training",),
        expires_at: datetime | None = None,
        subject: str | None = None,
    ) -> UploadEvent:
        return UploadEvent(
            upload_id=f"bad-{kind}-{self.tag}",
            subject_id=subject or f"bad-input-{kind}@example.com",
            consent=Consent(
                version="bad-1",
                scopes=list(scopes),
                granted_at=self.now - timedelta(days=1),
                expires_at=expires_at,
            ),
            image=ImagePayload(data=data, uri=uri),
            submitted_at=self.now,
        )

    def add(self, group: str, kind: str, expect: str, names: str, why: str, **fields: Any) -> None:
        event = self.event(kind, **fields)
        self.cases.append(
            BadInput(
                kind,
                group,
                event.upload_id,
                event.to_bytes(),
                expect,
                names,
                why,
                event.partition_key(),
                event.image.data,
            )
        )

    def add_raw(
        self,
        group: str,
        kind: str,
        expect: str,
        names: str,
        why: str,
        edit: Callable[[dict[str, Any]], object] | None = None,
        raw: bytes | None = None,
    ) -> None:
        """A record that is no valid event: a JSON document edited by ``edit``, or ``raw``."""
        event = self.event(kind, data=b"\x00")
        if raw is None:
            doc = json.loads(event.to_bytes())
            if edit is not None:
                edit(doc)  # edits in place; what it returns is ignored
            raw = json.dumps(doc).encode()
        from agents.stages.validate import upload_id_of

        upload_id = upload_id_of(raw)
        self.cases.append(
            BadInput(kind, group, upload_id, raw, expect, names, why, upload_id.encode())
        )

    def file(self, folder: Path, name: str, data: bytes) -> str:
        path = folder / f"{self.tag}-{name}"
        path.write_bytes(data)
        return path.as_uri()


def corpus(uri_root: Path, outside: Path) -> list[BadInput]:
    """Every bad-input kind, as records; URI cases write their files under ``uri_root``
    (the worker's root) or ``outside`` (a folder that is not one). Fresh upload ids on
    every call."""
    b = _Builder(uri_root, outside)
    jpeg = (REAL / "london_001_neutral.jpg").read_bytes()
    png = _save(_portrait().resize((256, 256)), "PNG")
    webp = _save(_portrait(), "WEBP", quality=80)
    heic = _save(_portrait().resize((256, 256)), "HEIF", quality=60)
    dec, lim = "decode", "limits"

    # -- bytes that are no complete image: decode_error, naming the format seen ----------
    why_dec = "not a complete image: nothing to train on, and no limit to raise"
    b.add(dec, "jpeg-truncated", "decode_error", "truncated JPEG", why_dec, data=jpeg[:9000])
    b.add(dec, "jpeg-corrupt", "decode_error", "JPEG", why_dec, data=_corrupt_jpeg())
    b.add(dec, "png-truncated", "decode_error", "PNG", why_dec, data=png[: len(png) // 2])
    b.add(dec, "png-corrupt", "decode_error", "PNG", why_dec, data=_corrupt_png())
    b.add(dec, "webp-truncated", "decode_error", "WEBP", why_dec, data=webp[: len(webp) // 2])
    b.add(dec, "heic-truncated", "decode_error", "HEIF", why_dec, data=heic[: len(heic) // 2])
    b.add(
        dec,
        "heic-garbage",
        "decode_error",
        "HEIF",
        why_dec,
        data=b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8,
    )
    b.add(dec, "pdf", "decode_error", "looks like PDF", why_dec, data=b"%PDF-1.7\n" + b"x" * 500)
    b.add(dec, "noise", "decode_error", "accepted: JPEG", why_dec, data=bytes(range(256)) * 40)
    b.add(dec, "empty-image", "decode_error", "empty (0 bytes)", why_dec, data=b"")

    # -- over a limit: too_large / animated, naming the S2A_LIMITS__ setting -------------
    why_lim = "over a configured decode limit: refused from the header, nothing allocated"
    b.add(
        lim,
        "bomb-png",
        "too_large",
        "S2A_LIMITS__MAX_PIXELS",
        why_lim,
        data=_bomb(10_000, 10_000),
    )
    b.add(
        lim,
        "bomb-past-pillow",
        "too_large",
        "S2A_LIMITS__MAX_PIXELS",
        "past Pillow's own bomb guard (twice PIL.Image.MAX_IMAGE_PIXELS): refused at open",
        data=_bomb(11_900, 16_000),
    )
    b.add(
        lim,
        "huge-side",
        "too_large",
        "S2A_LIMITS__MAX_SIDE_PX",
        "a valid image, but longer than the side limit",
        data=_save(Image.new("RGB", (12_500, 40), "white"), "PNG"),
    )
    b.add(
        lim,
        "over-inline",
        "too_large",
        "S2A_LIMITS__MAX_INLINE_BYTES",
        "inline bytes over the inline limit: producers must send such images by URI",
        data=b"\xff\xd8" + bytes(420_000),
    )
    b.add(
        lim,
        "over-upload-bytes",
        "too_large",
        "S2A_LIMITS__MAX_UPLOAD_BYTES",
        "a file by URI over the byte limit: at most limit + 1 bytes are read",
        uri=b.file(uri_root, "big.jpg", b"\xff\xd8" + bytes(700_000)),
    )
    why_anim = "which frame is the selfie is not ours to guess: send one still photo"
    b.add(lim, "animated-gif", "animated", "S2A_LIMITS__MAX_FRAMES", why_anim, data=_frames("GIF"))
    b.add(
        lim, "animated-webp", "animated", "S2A_LIMITS__MAX_FRAMES", why_anim, data=_frames("WEBP")
    )
    b.add(lim, "apng", "animated", "S2A_LIMITS__MAX_FRAMES", why_anim, data=_frames("PNG"))

    # -- unusual but valid photos: converted to 8-bit sRGB and accepted -----------------
    odd = "convert"
    why_ok = "a real portrait in a legitimate encoding: converted to 8-bit sRGB and kept"
    b.add(
        odd,
        "cmyk-jpeg",
        ACCEPTED,
        "",
        why_ok,
        data=_save(_portrait("london_013_neutral.jpg").convert("CMYK"), "JPEG", quality=92),
    )
    b.add(odd, "grey-16bit-png", ACCEPTED, "", why_ok, data=_sixteen_bit_png())
    b.add(
        odd,
        "palette-png",
        ACCEPTED,
        "",
        why_ok,
        data=_save(_portrait("london_014_neutral.jpg").quantize(256), "PNG"),
    )
    b.add(odd, "float-tiff", ACCEPTED, "", why_ok, data=_float_tiff())
    b.add(
        odd,
        "heic-portrait",
        ACCEPTED,
        "",
        why_ok,
        data=_save(_portrait("london_016_neutral.jpg"), "HEIF"),
    )
    b.add(
        odd,
        "one-pixel",
        "no_face",
        "no face",
        "decodes fine; a 1x1 image holds no face",
        data=_save(Image.new("RGB", (1, 1), "white"), "PNG"),
    )

    # -- where the image lives: bad_uri, naming S2A_URI_ROOTS --------------------------
    uri = "uri"
    why_uri = "the worker reads files under its configured roots only"
    b.add(
        uri,
        "uri-outside-roots",
        "bad_uri",
        "S2A_URI_ROOTS",
        why_uri,
        uri=b.file(outside, "x.jpg", jpeg),
    )
    b.add(
        uri,
        "uri-dotdot",
        "bad_uri",
        "S2A_URI_ROOTS",
        "'..' is resolved before the root check",
        uri=f"{uri_root.as_uri()}/../{outside.name}/{b.tag}-x.jpg",
    )
    b.add(uri, "uri-http", "bad_uri", "S2A_URI_ROOTS", why_uri, uri="https://example.com/x.jpg")
    b.add(
        uri,
        "uri-missing-file",
        "bad_uri",
        "no such file",
        "under a root, but no file is there",
        uri=(uri_root / f"{b.tag}-gone.jpg").as_uri(),
    )

    # -- consent -------------------------------------------------------------------------
    con = "consent"
    b.add_raw(
        con,
        "consent-missing",
        "no_consent",
        "consent is missing",
        "no consent object: never processed",
        edit=lambda d: d.pop("consent"),
    )
    b.add(
        con,
        "consent-expired",
        "consent_expired",
        "expired at",
        "consent ran out before processing",
        data=jpeg,
        expires_at=b.now - timedelta(minutes=5),
    )
    b.add(
        con,
        "consent-wrong-scope",
        "no_consent",
        "'training'",
        "consent for something else is no consent to train",
        data=jpeg,
        scopes=("analytics",),
    )

    # -- the record itself: bad_schema, naming the field ---------------------------------
    rec = "record"
    why_rec = "not an UploadEvent: recorded under its id (or a stable fallback id)"
    b.add_raw(
        rec,
        "malformed-json",
        "bad_schema",
        "invalid UploadEvent",
        why_rec,
        raw=b'{"upload_id": "x", ' + b.tag.encode(),
    )
    b.add_raw(rec, "empty-record", "bad_schema", "invalid UploadEvent", why_rec, raw=b"")
    b.add_raw(
        rec, "json-array", "bad_schema", "invalid UploadEvent", why_rec, raw=f'["{b.tag}"]'.encode()
    )
    b.add_raw(
        rec,
        "schema-version-9",
        "bad_schema",
        "schema_version",
        "a version this worker does not know: refused, not guessed",
        edit=lambda d: d.update(schema_version=9),
    )
    b.add_raw(
        rec,
        "oversized-field",
        "bad_schema",
        "subject_id",
        "a field over its contract length",
        edit=lambda d: d.update(subject_id="x" * 5000),
    )
    b.add_raw(
        rec,
        "data-and-uri",
        "bad_schema",
        "exactly one",
        "an image must be inline or by URI, not both",
        edit=lambda d: d["image"].update(uri="file:///x.jpg"),
    )
    # The same upload_id twice: the first record decides, the second changes nothing.
    first = b.event("dup-id", data=b"not an image", subject="dup-id-subject")
    b.cases.append(
        BadInput(
            "duplicate-upload-id-first",
            rec,
            first.upload_id,
            first.to_bytes(),
            "decode_error",
            "accepted: JPEG",
            "the first record with an id decides its state",
            first.partition_key(),
        )
    )
    second = first.model_copy(update={"image": ImagePayload(data=jpeg)})
    b.cases.append(
        BadInput(
            "duplicate-upload-id-second",
            rec,
            first.upload_id,
            second.to_bytes(),
            SKIPPED,
            "",
            "upload_id is the idempotency key: a second record is a re-delivery",
            second.partition_key(),
        )
    )

    # -- the face: quality rejections, naming the S2A_QUALITY__ setting ------------------
    face = "face"
    b.add(
        face,
        "no-face",
        "no_face",
        "no face",
        "nothing to train on",
        data=_save(Image.new("RGB", (400, 400), (90, 140, 200)), "PNG"),
    )
    b.add(
        face,
        "several-faces",
        "multiple_faces",
        "S2A_QUALITY__SECOND_FACE_RATIO",
        "whose face it is is unclear",
        data=_two_faces(),
    )
    b.add(
        face,
        "face-cut-by-frame",
        "face_cut_off",
        "S2A_QUALITY__MAX_OUTSIDE_SHARE",
        "alignment would mirror the edge into the face",
        data=_cut_by_frame(),
    )
    b.add(
        face,
        "tiny-face",
        "face_too_small",
        "S2A_QUALITY__MIN_FACE_PX",
        "too few pixels for a 256 px crop",
        data=_tiny_face(),
    )
    b.add(
        face,
        "extreme-pose",
        "bad_pose",
        "S2A_QUALITY__MAX_ROLL_DEG",
        "a strongly tilted head",
        data=_rotated(70),
    )
    b.add(
        face,
        "very-dark",
        "bad_exposure",
        "S2A_QUALITY__MIN_BRIGHTNESS",
        "the face is too dark to learn from",
        data=_dark(),
    )
    return b.cases


def kinds() -> list[str]:
    """The corpus's kinds in order, for test ids (builds it once in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = Path(tmp, "root"), Path(tmp, "outside")
        root.mkdir()
        outside.mkdir()
        return [case.kind for case in corpus(root, outside)]
