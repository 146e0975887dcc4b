"""Properties of the upload decoder (:func:`agents.stages.imageio.decode_image`) on bytes
an uploader controls: any bytes, the real photos of ``tests/data/real`` and small images of
every accepted format carrying every metadata block, each flipped, overwritten,
truncated, cut or padded.

Whatever the bytes, the decoder either

* returns a clean image: bare H x W x 3 uint8 pixels (no EXIF, ICC, XMP or text can ride
  along: there is nowhere to keep them), a format of the allow-list, and a size within
  ``max_pixels`` and ``max_side_px``; or
* raises :class:`Rejected` at ``anonymize`` with ``decode_error``, ``too_large`` or
  ``animated`` and a one-line detail (a limit's names its setting),

and never any other exception, with Pillow's warnings ignored or escalated to errors.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import Final

import numpy as np
import pillow_heif
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from agents.errors import Rejected
from agents.records import CleanImage
from agents.stages.imageio import ALLOWED_FORMATS, AVIF_DECODER, decode_image, encode_png
from schemas.reasons import ReasonCode, Stage
from schemas.settings import LimitSettings

REAL = Path(__file__).resolve().parents[2] / "data" / "real"
DECODE_REASONS: Final = {ReasonCode.DECODE_ERROR, ReasonCode.TOO_LARGE, ReasonCode.ANIMATED}
#: Planted in every metadata block of the carriers; none may reach a stored PNG.
MARKERS: Final = (b"FUZZ-EXIF-GPS", b"FUZZ-XMP", b"FUZZ-COMMENT", b"FUZZ-PNG-TEXT")

#: Limits as deployed (roomy) and tight ones the real photos (512 px and more) break.
LIMITS: Final = (
    LimitSettings(max_pixels=1_000_000, max_side_px=4_000),
    LimitSettings(max_pixels=200_000, max_side_px=500, max_upload_bytes=60_000),
    LimitSettings(max_pixels=3_000, max_side_px=64, max_frames=2),
)

# Pillow warns about the damaged files these tests are made of; the point is that it never
# raises anything but a rejection, so the warnings are expected noise here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


# --- the corpus --------------------------------------------------------------------------


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "FuzzCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSMapDatum] = MARKERS[0].decode()
    return exif


def _xmp() -> bytes:
    return b"<x:xmpmeta><dc:description>" + MARKERS[1] + b"</dc:description></x:xmpmeta>"


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _carriers() -> dict[str, bytes]:
    """A small real face in every accepted format, with every metadata block it can hold."""
    with Image.open(REAL / "london_001_neutral.jpg") as photo:
        small = photo.convert("RGB").resize((40, 48))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif, xmp = _exif(), _xmp()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", MARKERS[3].decode())
    text.add_itxt("XML:com.adobe.xmp", xmp.decode(), lang="en", tkey="xmp")
    flipped = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    heif = io.BytesIO()
    pillow_heif.from_pillow(small).save(
        heif, format="HEIF", quality=50, exif=exif.tobytes(), xmp=xmp
    )
    carriers = {
        "jpeg": _save(small, "JPEG", exif=exif, icc_profile=icc, xmp=xmp, comment=MARKERS[2]),
        "png": _save(small, "PNG", pnginfo=text, exif=exif, icc_profile=icc),
        "png-16bit-grey": _save(small.convert("I;16"), "PNG"),
        "png-palette-transparent": _save(small.convert("P"), "PNG", transparency=0),
        "apng": _save(small, "PNG", save_all=True, append_images=[flipped], pnginfo=text),
        "webp": _save(small, "WEBP", exif=exif, icc_profile=icc, xmp=xmp),
        "webp-animated": _save(small, "WEBP", save_all=True, append_images=[flipped]),
        "tiff": _save(small, "TIFF", exif=exif, icc_profile=icc),
        "tiff-cmyk": _save(small.convert("CMYK"), "TIFF"),
        "gif": _save(small, "GIF", save_all=True, append_images=[flipped], comment=MARKERS[2]),
        "bmp": _save(small, "BMP"),
        "mpo": _save(small, "MPO", save_all=True, append_images=[flipped], exif=exif),
        "jpeg-cmyk": _save(small.convert("CMYK"), "JPEG", icc_profile=icc),
        "heif": heif.getvalue(),
    }
    if AVIF_DECODER:
        carriers["avif"] = _save(small, "AVIF", exif=exif, xmp=xmp, quality=50)
    return carriers


CARRIERS: Final = _carriers()
REAL_PHOTOS: Final = {path.name: path.read_bytes() for path in sorted(REAL.glob("*.jpg"))}
SEEDS: Final = {**CARRIERS, **REAL_PHOTOS}


# --- mutations ---------------------------------------------------------------------------

# Positions: mostly in the first bytes, where the headers (and the limits) are.
positions = st.one_of(st.integers(0, 255), st.integers(0, 1 << 20))
edits = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("set"), positions, st.integers(0, 255)),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("repeat"), positions, st.integers(1, 256)),
    st.tuples(st.just("truncate"), positions, st.none()),
)


def mutate(seed: bytes, changes: list[tuple[str, int, object]]) -> bytes:
    data = bytearray(seed)
    for kind, position, arg in changes:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << int(arg)  # type: ignore[call-overload]
        elif kind == "set" and data:
            data[at % len(data)] = int(arg)  # type: ignore[call-overload]
        elif kind == "insert":
            data[at:at] = bytes(arg)  # type: ignore[call-overload]
        elif kind == "delete":
            del data[at : at + int(arg)]  # type: ignore[call-overload]
        elif kind == "repeat":
            data[at:at] = data[at : at + int(arg)]  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


# --- the property ------------------------------------------------------------------------


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def decoded_or_rejected(data: bytes, limits: LimitSettings) -> CleanImage | Rejected:
    """The decoder's outcome, asserting every invariant of the module docstring."""
    outcome: CleanImage | Rejected
    try:
        outcome = decode_image(data, limits)
    except Rejected as exc:  # any other exception fails the property
        outcome = exc
    if isinstance(outcome, Rejected):
        assert outcome.stage is Stage.ANONYMIZE
        assert outcome.reason in DECODE_REASONS
        assert outcome.detail
        assert "\n" not in outcome.detail
        if outcome.reason is ReasonCode.TOO_LARGE:
            assert "S2A_LIMITS__" in outcome.detail
        if outcome.reason is ReasonCode.ANIMATED:
            assert "S2A_LIMITS__MAX_FRAMES" in outcome.detail
        return outcome
    clean = outcome
    pixels = clean.pixels
    assert type(pixels) is np.ndarray
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3
    assert pixels.shape[2] == 3
    assert pixels.flags.c_contiguous
    height, width = pixels.shape[:2]
    assert 0 < max(height, width) <= limits.max_side_px
    assert 0 < height * width <= limits.max_pixels
    assert clean.format in ALLOWED_FORMATS
    stored = encode_png(pixels)
    assert png_chunk_types(stored) == [b"IHDR", b"IDAT", b"IEND"]
    assert not any(marker in stored for marker in MARKERS)
    return clean


def test_a_clean_image_has_nowhere_to_keep_metadata() -> None:
    assert [f.name for f in dataclasses.fields(CleanImage)] == ["pixels", "format"]


@pytest.mark.parametrize("name", sorted(CARRIERS))
def test_every_carrier_holds_its_metadata_and_decodes_clean(name: str) -> None:
    data = CARRIERS[name]
    if name in ("jpeg", "png", "webp", "heif", "avif", "mpo"):
        # The input really carries the blocks (else the properties prove nothing).
        assert MARKERS[0] in data or MARKERS[1] in data or b"Exif" in data
    outcome = decoded_or_rejected(data, LimitSettings(max_frames=2))
    assert isinstance(outcome, CleanImage), outcome


@settings(max_examples=settings.default.max_examples * 2)
@given(data=st.binary(max_size=1024), limits=st.sampled_from(LIMITS))
def test_any_bytes_decode_clean_or_are_rejected(data: bytes, limits: LimitSettings) -> None:
    decoded_or_rejected(data, limits)


_MAGICS = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"BM",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x1cftypavif",
)


@settings(max_examples=settings.default.max_examples * 2)
@given(
    magic=st.sampled_from(_MAGICS),
    rest=st.binary(max_size=512),
    limits=st.sampled_from(LIMITS),
)
def test_bytes_behind_a_real_signature_decode_clean_or_are_rejected(
    magic: bytes, rest: bytes, limits: LimitSettings
) -> None:
    decoded_or_rejected(magic + rest, limits)


@settings(max_examples=settings.default.max_examples * 10)
@given(
    name=st.sampled_from(sorted(SEEDS)),
    changes=st.lists(edits, min_size=1, max_size=4),
    limits=st.sampled_from(LIMITS),
    strict=st.booleans(),
)
def test_mutated_images_decode_clean_or_are_rejected(
    name: str, changes: list[tuple[str, int, object]], limits: LimitSettings, strict: bool
) -> None:
    data = mutate(SEEDS[name], changes)
    if strict:
        # Pillow reports some damage as warnings; escalated to errors they still reject.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            decoded_or_rejected(data, limits)
    else:
        decoded_or_rejected(data, limits)


def _png_header(width: int, height: int, depth: int, colour: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@settings(max_examples=settings.default.max_examples * 2)
@given(
    width=st.integers(1, 2**31 - 1) | st.integers(1, 5_000),
    height=st.integers(1, 2**31 - 1) | st.integers(1, 5_000),
    kind=st.sampled_from([(8, 2), (8, 0), (16, 2), (8, 6), (1, 0), (8, 3)]),
    limits=st.sampled_from(LIMITS),
)
@example(width=1_000_000, height=1_000_000, kind=(8, 2), limits=LIMITS[0])
@example(width=2**31 - 1, height=1, kind=(8, 0), limits=LIMITS[0])
def test_a_declared_size_over_the_limits_is_too_large_before_decoding(
    width: int, height: int, kind: tuple[int, int], limits: LimitSettings
) -> None:
    outcome = decoded_or_rejected(_png_header(width, height, *kind), limits)
    if max(width, height) > limits.max_side_px or width * height > limits.max_pixels:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is ReasonCode.TOO_LARGE
