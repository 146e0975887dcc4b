"""Preprocessing on real photos with the ingestion detector: one face is aligned as
training crops are, every bad input is refused with its reason, and the converted crop
goes back where the face was."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from agents.records import CleanImage
from agents.stages.detect import MtcnnDetector
from schemas.settings import LimitSettings
from serving.errors import InvalidRequest
from serving.preprocess import Options, Preprocessor

REAL_PHOTO = "london_001_neutral.jpg"


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def pre(detector: MtcnnDetector) -> Preprocessor:
    return Preprocessor(detector, LimitSettings(), image_limit=4 << 20)


def _reason(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        call()
    return caught.value.reason, caught.value.message


def test_one_face_is_aligned_and_pasted_back(
    pre: Preprocessor, photo: Callable[[str], CleanImage]
) -> None:
    image = photo(REAL_PHOTO)
    prepared = pre.prepare(_png(image.pixels), Options(), resolution=32)
    assert prepared.selfie.shape == (3, 32, 32)
    assert prepared.selfie.dtype == np.float32
    assert prepared.selfie.min() >= -1.0
    assert prepared.selfie.max() <= 1.0
    assert prepared.crop_size == 256
    assert prepared.face is not None
    white = np.ones((3, 32, 32), np.float32)
    pasted = pre.finish(prepared, white)
    assert (pasted.width, pasted.height) == (image.width, image.height)
    with Image.open(io.BytesIO(pasted.data)) as out:
        pixels = np.asarray(out.convert("RGB"))
    # White where the face was, the photo untouched in the corners.
    x1, y1, x2, y2 = (int(v) for v in prepared.face.box)
    centre = pixels[(y1 + y2) // 2, (x1 + x2) // 2]
    assert centre.min() >= 250
    assert np.array_equal(pixels[:8, :8], image.pixels[:8, :8])
    as_crop = dataclasses.replace(
        prepared, options=Options(paste_back=False, format="jpeg", size=64)
    )
    crop = pre.finish(as_crop, white)
    assert (crop.width, crop.height, crop.mime_type) == (64, 64, "image/jpeg")


def test_every_bad_input_is_refused_with_its_reason(
    pre: Preprocessor, photo: Callable[[str], CleanImage]
) -> None:
    portrait = photo(REAL_PHOTO).pixels
    grey = np.full((256, 256, 3), 128, np.uint8)
    assert _reason(lambda: pre.prepare(_png(grey), Options(), 32))[0] == "no_face"
    pair = np.hstack([portrait, photo("london_004_neutral.jpg").pixels])
    reason, message = _reason(lambda: pre.prepare(_png(pair), Options(), 32))
    assert reason == "multiple_faces"
    assert "2 faces" in message
    reason, message = _reason(lambda: pre.prepare(b"GIF89a broken", Options(), 32))
    assert reason == "decode_error"
    reason, message = _reason(lambda: pre.prepare(_png(portrait)[:2000], Options(), 32))
    assert reason == "decode_error"
    assert "truncated" in message
    # A decompression bomb: a 1-bit PNG of 9000 x 9000 px is a few kB on the wire.
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    reason, message = _reason(lambda: pre.prepare(bomb.getvalue(), Options(), 32))
    assert reason == "too_large"
    assert "pixels" in message
    small = Preprocessor(pre.detector, LimitSettings(), image_limit=1000)
    reason, message = _reason(lambda: small.prepare(_png(portrait), Options(), 32))
    assert reason == "too_large"
    assert "1000" in message


def test_options_are_checked_against_the_model(pre: Preprocessor) -> None:
    pre.check_options(Options(style="cel"), ("cel",))
    reason, message = _reason(lambda: pre.check_options(Options(style="ghibli"), ("cel",)))
    assert reason == "bad_options"
    assert "cel" in message
    assert _reason(lambda: pre.check_options(Options(size=99_999), ()))[0] == "bad_options"


def test_an_aligned_crop_skips_detection(pre: Preprocessor) -> None:
    crop = np.random.default_rng(0).integers(0, 255, (100, 80, 3), dtype=np.uint8)
    prepared = pre.prepare(_png(crop), Options(skip_align=True), resolution=32)
    assert prepared.selfie.shape == (3, 32, 32)
    assert prepared.face is None
    assert pre.finish(prepared, np.zeros((3, 32, 32), np.float32)).width == 32
