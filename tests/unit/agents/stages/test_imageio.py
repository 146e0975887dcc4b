"""Unit tests for :mod:`agents.stages.imageio`: safe decoding of untrusted bytes (limits,
formats, metadata gone by construction) and metadata-free PNG.

Every image is generated here with Pillow (or hand-built bytes for what Pillow refuses to
write); the one real photo lives in ``tests/data/real``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from agents.errors import Rejected
from agents.records import CleanImage
from agents.stages.imageio import (
    ALLOWED_FORMATS,
    AVIF_DECODER,
    HEIF_DECODER,
    decode_image,
    encode_png,
)
from schemas.reasons import ReasonCode, Stage
from schemas.settings import LimitSettings

LIMITS = LimitSettings()
REAL_PHOTO = Path(__file__).resolve().parents[3] / "data" / "real" / "london_001_neutral.jpg"

# Markers planted in metadata blocks; none may survive into a stored PNG.
GPS_MARKER = "GPSDATUM-MARKER-51N"
USER_COMMENT_MARKER = "USERCOMMENT-MARKER"
COMMENT_MARKER = "JPEGCOMMENT-MARKER"
XMP_MARKER = "XMP-MARKER"
IPTC_MARKER = "IPTC-CAPTION-MARKER"
PNG_TEXT_MARKERS = ("PNG-TEXT-MARKER", "PNG-ZTXT-MARKER", "PNG-ITXT-MARKER")


# --- helpers -----------------------------------------------------------------------------


def rejection(call: Callable[..., object], *args: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args)
    assert info.value.stage is Stage.ANONYMIZE
    return info.value


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def gradient(width: int = 64, height: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4 % 256, y * 8 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG built by hand, for headers Pillow would never write (bombs, 48-bit)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def with_app13(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP13 (Photoshop IPTC) segment after SOI; Pillow cannot write one."""
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def iptc_block(caption: str) -> bytes:
    record = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption.encode()
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(record))
    return b"Photoshop 3.0\x00" + resource + record + (b"\x00" if len(record) % 2 else b"")


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def phone_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "PhoneCam"
    exif[ExifTags.Base.Model] = "PC-1"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (51.0, 30.0, 26.0)
    gps[ExifTags.GPS.GPSMapDatum] = GPS_MARKER
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00" + USER_COMMENT_MARKER.encode()
    return exif


def assert_clean_png(data: bytes, markers: tuple[str, ...]) -> Image.Image:
    """``data`` is a bare PNG: only critical chunks, no metadata, none of ``markers``."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert set(png_chunk_types(data)) == {b"IHDR", b"IDAT", b"IEND"}
    for marker in markers:
        assert marker.encode() not in data
    reopened = Image.open(io.BytesIO(data))
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile", "dpi"):
        assert key not in reopened.info
    assert isinstance(reopened, PngImagePlugin.PngImageFile)
    assert reopened.text == {}
    assert len(reopened.getexif()) == 0
    return reopened


# --- identity ----------------------------------------------------------------------------


# --- decoding: metadata and orientation --------------------------------------------------


def test_phone_jpeg_is_rotated_and_stripped_of_every_metadata_block() -> None:
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # a red block at the stored top-left
    jpeg = encoded(
        stored,
        "JPEG",
        quality=95,
        exif=phone_exif(orientation=6),
        comment=COMMENT_MARKER.encode(),
        xmp=f"<x:xmpmeta><dc:description>{XMP_MARKER}</dc:description></x:xmpmeta>".encode(),
        icc_profile=srgb_icc(),
    )
    jpeg = with_app13(jpeg, iptc_block(IPTC_MARKER))
    markers = (GPS_MARKER, USER_COMMENT_MARKER, COMMENT_MARKER, XMP_MARKER, IPTC_MARKER)
    # The input really carries every block (else the test below proves nothing).
    for marker in markers:
        assert marker.encode() in jpeg
    original = Image.open(io.BytesIO(jpeg))
    assert original.getexif()[ExifTags.Base.Orientation] == 6
    assert {"exif", "xmp", "comment", "icc_profile"} <= set(original.info)

    clean = decode_image(jpeg, LIMITS)
    assert isinstance(clean, CleanImage)
    assert clean.format == "JPEG"
    # Orientation 6 is "rotate 90 degrees clockwise to display": 64x32 stored is 32x64.
    assert clean.pixels.shape == (64, 32, 3)
    assert (clean.width, clean.height) == (32, 64)
    assert clean.pixels.dtype == np.uint8
    assert clean.pixels.flags.c_contiguous
    # Stored top-left ends up at the displayed top-right.
    top_right = clean.pixels[2:14, 18:30].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200
    assert top_right[2] < 60
    top_left = clean.pixels[2:14, 2:14].reshape(-1, 3).mean(axis=0)
    assert top_left[2] > 200
    assert top_left[0] < 60

    stored_png = encode_png(clean.pixels)
    reopened = assert_clean_png(stored_png, markers)
    assert reopened.size == (32, 64)
    np.testing.assert_array_equal(np.asarray(reopened), clean.pixels)


def test_png_text_chunks_and_exif_do_not_survive() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PNG_TEXT_MARKERS[0])
    info.add_text("Description", PNG_TEXT_MARKERS[1], zip=True)
    info.add_itxt("XML:com.adobe.xmp", PNG_TEXT_MARKERS[2], lang="en", tkey="xmp")
    pixels = gradient()
    png = encoded(Image.fromarray(pixels), "PNG", pnginfo=info, exif=phone_exif(1))
    assert {b"tEXt", b"zTXt", b"iTXt", b"eXIf"} <= set(png_chunk_types(png))

    clean = decode_image(png, LIMITS)
    np.testing.assert_array_equal(clean.pixels, pixels)  # lossless, orientation 1
    assert_clean_png(encode_png(clean.pixels), (*PNG_TEXT_MARKERS, GPS_MARKER))


def test_real_photo_decodes_and_loses_its_comment() -> None:
    data = REAL_PHOTO.read_bytes()
    assert "comment" in Image.open(io.BytesIO(data)).info
    clean = decode_image(data, LIMITS)
    assert clean.format == "JPEG"
    assert clean.pixels.shape == (512, 512, 3)
    assert 20 < clean.pixels.mean() < 235  # a photo, not a blank frame
    assert_clean_png(encode_png(clean.pixels), ())


def test_phone_mpo_decodes_its_first_frame() -> None:
    primary = Image.new("RGB", (64, 48), (10, 200, 10))
    preview = Image.new("RGB", (32, 24), (200, 10, 10))
    mpo = encoded(primary, "MPO", save_all=True, append_images=[preview], exif=phone_exif(6))
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    clean = decode_image(mpo, LIMITS)  # two frames, yet max_frames=1: MPO is no animation
    assert clean.format == "MPO"
    assert clean.pixels.shape == (64, 48, 3)
    assert clean.pixels[..., 1].mean() > 150


def test_encode_png_is_deterministic_and_lossless() -> None:
    pixels = gradient(40, 30)
    first = encode_png(pixels)
    assert first == encode_png(pixels.copy())
    flipped = pixels[:, ::-1]  # a non-contiguous view
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(flipped)))), flipped)
    np.testing.assert_array_equal(decode_image(first, LIMITS).pixels, pixels)


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)],
)
def test_encode_png_refuses_other_arrays(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(pixels)


# --- decoding: modes ---------------------------------------------------------------------


def decoded(data: bytes) -> np.ndarray:
    pixels = decode_image(data, LIMITS).pixels
    assert pixels.dtype == np.uint8
    assert pixels.ndim == 3
    assert pixels.shape[2] == 3
    assert pixels.flags.c_contiguous
    return pixels


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    pixels = decoded(encoded(Image.fromarray(rgba), "PNG"))
    assert pixels.shape == (2, 3, 3)
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 2 for v in pixels[0, 2])


def test_palette_with_and_without_transparency() -> None:
    palette_image = Image.new("P", (4, 2), 1)
    palette_image.putpalette([0, 0, 0, 0, 128, 0, 255, 255, 0] + [0] * 759)
    palette_image.putpixel((0, 0), 2)
    pixels = decoded(encoded(palette_image, "PNG"))
    assert tuple(pixels[1, 1]) == (0, 128, 0)
    assert tuple(pixels[0, 0]) == (255, 255, 0)
    # A GIF whose index 1 is transparent: those pixels become white.
    gif = decoded(encoded(palette_image, "GIF", transparency=1))
    assert tuple(gif[1, 1]) == (255, 255, 255)
    assert tuple(gif[0, 0]) == (255, 255, 0)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [("L", 100, 100), ("LA", (100, 200), 133), ("1", 1, 255)],  # LA: 200/255 over white
)
def test_grayscale_modes(mode: str, colour: int | tuple[int, int], expected: int) -> None:
    pixels = decoded(encoded(Image.new(mode, (5, 3), colour), "PNG"))
    assert pixels.shape == (3, 5, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt: str) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    pixels = decoded(encoded(cmyk, fmt))
    assert pixels.shape == (8, 8, 3)
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    assert red > 200
    assert green < 60
    assert blue < 60


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    wide = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    source = Image.fromarray(wide)
    assert source.mode.startswith("I;16")
    pixels = decoded(encoded(source, "PNG"))
    assert [int(v) for v in pixels[0, :, 0]] == [0, 128, 255]


def test_16_bit_rgb_png() -> None:
    # Pillow cannot write 48-bit PNGs, so this one is built by hand: one row, two pixels.
    row = b"\x00" + struct.pack(">6H", 65535, 0, 0, 0, 32896, 65535)
    pixels = decoded(raw_png(2, 1, 16, 2, row))
    assert [tuple(int(v) for v in p) for p in pixels[0]] == [(255, 0, 0), (0, 128, 255)]


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "TIFF", "GIF"])
def test_other_allowed_formats(fmt: str) -> None:
    image = Image.new("RGB", (12, 10), (30, 60, 90))
    params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    clean = decode_image(encoded(image, fmt, **params), LIMITS)
    assert clean.format == fmt
    assert clean.pixels.shape == (10, 12, 3)


def test_embedded_profiles_good_broken_or_mismatched_all_decode() -> None:
    pixels = gradient(16, 16)
    with_srgb = decoded(encoded(Image.fromarray(pixels), "PNG", icc_profile=srgb_icc()))
    assert np.abs(with_srgb.astype(int) - pixels.astype(int)).max() <= 2
    broken = encoded(Image.fromarray(pixels), "PNG", icc_profile=b"definitely not a profile")
    np.testing.assert_array_equal(decoded(broken), pixels)
    gray = Image.new("L", (4, 4), 77)
    mismatched = decoded(encoded(gray, "PNG", icc_profile=srgb_icc()))
    assert np.abs(mismatched.astype(int) - 77).max() <= 2


# --- decoding: limits and hostile input --------------------------------------------------


def test_decompression_bomb_is_refused_from_the_header() -> None:
    tiny = raw_png(30_000, 30_000, 8, 2, b"\x00" * 16)
    assert len(tiny) < 200
    error = rejection(decode_image, tiny, LIMITS)
    assert error.reason is ReasonCode.TOO_LARGE


def test_pixel_and_side_limits_come_before_decoding() -> None:
    # Both fit Pillow's own limit, and their pixel data is garbage: only a header check
    # can call them too large rather than corrupt.
    many_pixels = raw_png(7_000, 7_000, 8, 2, b"\x00" * 16)
    error = rejection(decode_image, many_pixels, LIMITS)
    assert error.reason is ReasonCode.TOO_LARGE
    assert "max_pixels" in error.detail
    long_side = raw_png(12_001, 10, 8, 2, b"\x00" * 16)
    error = rejection(decode_image, long_side, LIMITS)
    assert error.reason is ReasonCode.TOO_LARGE
    assert "max_side_px" in error.detail
    small_limits = LimitSettings(max_pixels=100)
    image = encoded(Image.new("RGB", (11, 10)), "PNG")
    assert rejection(decode_image, image, small_limits).reason is ReasonCode.TOO_LARGE


def test_pillow_bomb_warning_is_too_large_even_under_looser_limits() -> None:
    loose = LimitSettings(max_pixels=500_000_000, max_side_px=50_000)
    bomb = raw_png(10_000, 10_000, 8, 2, b"\x00" * 16)
    with pytest.warns(Image.DecompressionBombWarning):
        error = rejection(decode_image, bomb, loose)
    assert error.reason is ReasonCode.TOO_LARGE
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert rejection(decode_image, bomb, loose).reason is ReasonCode.TOO_LARGE


def test_oversized_bytes_are_too_large_before_parsing() -> None:
    limits = LimitSettings(max_upload_bytes=1024, max_inline_bytes=1024)
    error = rejection(decode_image, b"\x89PNG" + b"\x00" * 2000, limits)
    assert error.reason is ReasonCode.TOO_LARGE


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_decode_error(fmt: str) -> None:
    noise = Image.effect_noise((128, 128), 64).convert("RGB")
    data = encoded(noise, fmt)
    assert decode_image(data, LIMITS).pixels.shape == (128, 128, 3)
    error = rejection(decode_image, data[: len(data) // 2], LIMITS)
    assert error.reason is ReasonCode.DECODE_ERROR


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "empty"),
        (os.urandom(0) + bytes(range(256)) * 4, "unrecognised"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "SVG"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    ],
    ids=["empty", "noise", "svg", "html", "pdf"],
)
def test_non_images_are_decode_error(data: bytes, named: str) -> None:
    error = rejection(decode_image, data, LIMITS)
    assert error.reason is ReasonCode.DECODE_ERROR
    assert named in error.detail


def test_formats_outside_the_allow_list_are_refused() -> None:
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    for fmt in ("PPM", "TGA", "ICO", "PCX"):
        error = rejection(decode_image, encoded(image, fmt), LIMITS)
        assert error.reason is ReasonCode.DECODE_ERROR, fmt
        assert ", ".join(ALLOWED_FORMATS) in error.detail


def test_animated_gif_is_animated_beyond_max_frames() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(gif)), "n_frames", 1) == 3
    error = rejection(decode_image, gif, LIMITS)
    assert error.reason is ReasonCode.ANIMATED
    assert "3 frames" in error.detail
    assert "S2A_LIMITS__MAX_FRAMES" in error.detail
    first = decode_image(gif, LimitSettings(max_frames=3)).pixels
    assert tuple(first[0, 0]) == (255, 0, 0)


# --- property: nothing but Rejected ------------------------------------------------------

FUZZ_LIMITS = LimitSettings(max_pixels=1_000_000, max_side_px=4_000)


def _seeds() -> list[bytes]:
    small = Image.fromarray(gradient(24, 16))
    frames = [small, small.rotate(90)]
    return [
        encoded(small, "PNG"),
        encoded(small, "JPEG", exif=phone_exif(6)),
        encoded(small, "GIF", save_all=True, append_images=frames[1:]),
        encoded(small, "BMP"),
        encoded(small, "WEBP"),
        encoded(small, "TIFF"),
        encoded(small, "MPO", save_all=True, append_images=frames[1:]),
    ]


SEEDS = _seeds()


def _only_rejected(data: bytes) -> None:
    outcome: CleanImage | Rejected
    try:
        outcome = decode_image(data, FUZZ_LIMITS)
    except Rejected as exc:  # any other exception fails the property
        outcome = exc
    if isinstance(outcome, Rejected):
        assert outcome.stage is Stage.ANONYMIZE
        assert outcome.reason in (
            ReasonCode.DECODE_ERROR,
            ReasonCode.TOO_LARGE,
            ReasonCode.ANIMATED,
        )
    else:
        assert outcome.pixels.dtype == np.uint8
        assert outcome.pixels.shape[2] == 3


# Pillow warns about the corrupt files these tests are made of; the point is that it never
# raises anything but a rejection, so the warnings are expected noise.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_reject(data: bytes) -> None:
    _only_rejected(data)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.0, 1.0),
)
def test_mutated_images_only_ever_reject(
    seed: bytes, edits: list[tuple[int, int]], keep: float
) -> None:
    data = bytearray(seed[: max(1, int(len(seed) * keep))] if keep < 0.98 else seed)
    for position, value in edits:
        data[position % len(data)] = value
    _only_rejected(bytes(data))
    # Pillow reports some damage as warnings; escalated to errors they must still reject.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _only_rejected(bytes(data))


# --- phone formats: HEIF/HEIC and AVIF ---------------------------------------------------------

needs_avif = pytest.mark.skipif(not AVIF_DECODER, reason="this Pillow has no AVIF decoder")


def sideways_london() -> Image.Image:
    """The London photo as a phone sensor stores a portrait shot: turned 90 degrees
    counter-clockwise, to be shown upright by orientation 6 ("turn clockwise")."""
    with Image.open(REAL_PHOTO) as photo:
        return photo.convert("RGB").transpose(Image.Transpose.ROTATE_90)


def phone_heic(image: Image.Image, exif: Image.Exif) -> bytes:
    """A HEIC written by pillow-heif as phones write them: the orientation becomes an
    ``irot`` box, the EXIF block (GPS included) and an XMP packet ride along."""
    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(
        out,
        format="HEIF",
        quality=90,
        exif=exif.tobytes(),
        xmp=f"<x:xmpmeta><dc:description>{XMP_MARKER}</dc:description></x:xmpmeta>".encode(),
    )
    return out.getvalue()


def upright_london() -> np.ndarray:
    with Image.open(REAL_PHOTO) as photo:
        return np.asarray(photo.convert("RGB"), dtype=np.int16)


def test_heic_selfie_with_gps_is_upright_and_keeps_no_metadata() -> None:
    heic = phone_heic(sideways_london(), phone_exif(orientation=6))
    assert heic[4:12] == b"ftypheic"
    # The input really carries GPS, a user comment and XMP (else this proves nothing).
    for marker in (GPS_MARKER, USER_COMMENT_MARKER, XMP_MARKER):
        assert marker.encode() in heic
    opened = Image.open(io.BytesIO(heic))
    assert opened.getexif().get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSMapDatum] == GPS_MARKER

    clean = decode_image(heic, LIMITS)
    assert clean.format == "HEIF"
    assert clean.pixels.shape == (512, 512, 3)
    assert clean.pixels.dtype == np.uint8
    assert clean.pixels.flags.c_contiguous
    # Upright: the decoded photo is the original London photo (lossy HEVC aside); left
    # sideways or turned twice it would differ by far more.
    difference = np.abs(clean.pixels.astype(np.int16) - upright_london()).mean()
    assert difference < 6.0
    turned = np.rot90(clean.pixels).astype(np.int16)
    assert np.abs(turned - upright_london()).mean() > 4 * difference
    # Only pixels survive: the record has no field to hold metadata, and the stored PNG
    # has no chunk for it.
    assert {f.name for f in dataclasses.fields(CleanImage)} == {"pixels", "format"}
    reopened = assert_clean_png(
        encode_png(clean.pixels), (GPS_MARKER, USER_COMMENT_MARKER, XMP_MARKER)
    )
    np.testing.assert_array_equal(np.asarray(reopened), clean.pixels)


@needs_avif
def test_avif_selfie_with_gps_is_upright_and_keeps_no_metadata() -> None:
    out = io.BytesIO()
    sideways_london().save(
        out,
        format="AVIF",
        quality=90,
        exif=phone_exif(orientation=6).tobytes(),
        xmp=f"<x:xmpmeta><dc:description>{XMP_MARKER}</dc:description></x:xmpmeta>".encode(),
    )
    avif = out.getvalue()
    assert avif[4:12] == b"ftypavif"
    for marker in (GPS_MARKER, USER_COMMENT_MARKER, XMP_MARKER):
        assert marker.encode() in avif

    clean = decode_image(avif, LIMITS)
    assert clean.format == "AVIF"
    assert clean.pixels.shape == (512, 512, 3)
    difference = np.abs(clean.pixels.astype(np.int16) - upright_london()).mean()
    assert difference < 6.0
    assert np.abs(np.rot90(clean.pixels).astype(np.int16) - upright_london()).mean() > (
        4 * difference
    )
    assert_clean_png(encode_png(clean.pixels), (GPS_MARKER, USER_COMMENT_MARKER, XMP_MARKER))


@needs_avif
def test_generic_mif1_brand_goes_to_the_decoder_of_its_codec() -> None:
    # Both openers claim the generic 'mif1' brand; each file must still reach the decoder
    # that can read it (this libheif decodes HEVC only, libavif AV1 only).
    avif = encoded(Image.new("RGB", (16, 8), (200, 30, 30)), "AVIF")
    heic = encoded(Image.new("RGB", (16, 8), (30, 30, 200)), "HEIF")
    for data, fmt in ((avif, "AVIF"), (heic, "HEIF")):
        generic = data[:8] + b"mif1" + data[12:]
        clean = decode_image(generic, LIMITS)
        assert clean.format == fmt
        assert clean.pixels.shape == (8, 16, 3)


def test_heic_limits_come_from_the_header() -> None:
    small = Image.new("RGB", (64, 48), (40, 90, 160))
    heic = phone_heic(small, Image.Exif())
    # The coded picture zeroed: what is left is a header over garbage, so only a check
    # made before decoding can call it too large rather than broken.
    start = heic.index(b"mdat") + 4
    garbage = heic[:start] + bytes(len(heic) - start)
    assert rejection(decode_image, garbage, LIMITS).reason is ReasonCode.DECODE_ERROR
    error = rejection(decode_image, garbage, LimitSettings(max_pixels=64 * 48 - 1))
    assert error.reason is ReasonCode.TOO_LARGE
    assert "64x48" in error.detail
    assert "max_pixels" in error.detail
    error = rejection(decode_image, garbage, LimitSettings(max_side_px=63))
    assert (error.reason, "max_side_px" in error.detail) == (ReasonCode.TOO_LARGE, True)


def test_heic_with_two_pictures_is_over_max_frames() -> None:
    first, second = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    out = io.BytesIO()
    first.save(out, format="HEIF", save_all=True, append_images=[second])
    error = rejection(decode_image, out.getvalue(), LIMITS)
    assert error.reason is ReasonCode.ANIMATED
    assert "2 frames" in error.detail


@pytest.mark.parametrize("fmt", ["HEIF", pytest.param("AVIF", marks=needs_avif)])
def test_truncated_phone_image_is_a_named_decode_error(fmt: str) -> None:
    data = encoded(Image.effect_noise((64, 64), 64).convert("RGB"), fmt)
    error = rejection(decode_image, data[: len(data) // 2], LIMITS)
    assert error.reason is ReasonCode.DECODE_ERROR
    # Cut in its header or in its picture, the detail says which format it was.
    assert fmt in error.detail


def test_without_their_decoders_heif_and_avif_are_refused_by_name(tmp_path: Path) -> None:
    # A fresh interpreter in which pillow-heif and Pillow's libavif binding cannot be
    # imported (None in sys.modules makes an import fail), as on a machine without them.
    heic = tmp_path / "selfie.heic"
    heic.write_bytes(encoded(Image.new("RGB", (8, 8), "red"), "HEIF"))
    files = [str(heic)]
    if AVIF_DECODER:
        avif = tmp_path / "selfie.avif"
        avif.write_bytes(encoded(Image.new("RGB", (8, 8), "red"), "AVIF"))
        files.append(str(avif))
    script = (
        "import sys\n"
        "sys.modules['pillow_heif'] = None\n"
        "sys.modules['PIL._avif'] = None\n"
        "from pathlib import Path\n"
        "from agents.errors import Rejected\n"
        "from agents.stages import imageio\n"
        "from schemas.settings import LimitSettings\n"
        "print(imageio.HEIF_DECODER, imageio.AVIF_DECODER, ','.join(imageio.ALLOWED_FORMATS))\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        imageio.decode_image(Path(name).read_bytes(), LimitSettings())\n"
        "    except Rejected as exc:\n"
        "        print(exc.reason.value, exc.detail)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *files],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[4],
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "False False JPEG,MPO,PNG,WEBP,GIF,BMP,TIFF"
    assert lines[1].startswith("decode_error ")
    assert (
        "looks like HEIF/HEIC, and no HEIF decoder is installed (pip install pillow-heif)"
        in lines[1]
    )
    if AVIF_DECODER:
        assert lines[2].startswith("decode_error ")
        assert "looks like AVIF, and this Pillow has no AVIF decoder" in lines[2]


def test_allowed_formats_name_the_phone_formats_decodable_here() -> None:
    assert ("HEIF" in ALLOWED_FORMATS) == HEIF_DECODER
    assert HEIF_DECODER  # pillow-heif is a dependency of the project
    assert ("AVIF" in ALLOWED_FORMATS) == AVIF_DECODER
