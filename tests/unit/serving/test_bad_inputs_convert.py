"""The bad-input corpus's images (:mod:`badinputs`) through Convert's preprocessing.

Convert decodes with the ingestion's decoder under the same pixel, side and frame
limits, so every corpus image that carries bytes must end as a prepared input or an
``InvalidRequest`` with a reason, never any other exception; the decode and limit kinds
with the reason and the setting their ingestion rejection names (animated images: their
own reason, ``animated``). Its own byte limit is checked from the length first and names
the setting that sets it. (Past the gRPC transport limit, twice the image limit, gRPC
answers RESOURCE_EXHAUSTED before the handler: tests/integration/test_serving.py.)
"""

from __future__ import annotations

from pathlib import Path

from badinputs import LIMITS, BadInput, corpus

from agents.stages.detect import MtcnnDetector
from schemas.settings import ServingSettings
from serving.errors import InvalidRequest
from serving.preprocess import Options, Preprocessor, image_limit_setting

# Ingestion reason -> Convert's: the same (Convert's quality gates are ingestion's alone).
_CONVERT_REASON = {
    "decode_error": "decode_error",
    "too_large": "too_large",
    "animated": "animated",
    "no_face": "no_face",
    "multiple_faces": "multiple_faces",
}


def _images(tmp: Path) -> list[BadInput]:
    root, outside = tmp / "root", tmp / "outside"
    root.mkdir()
    outside.mkdir()
    return [case for case in corpus(root, outside) if case.image is not None]


def test_every_corpus_image_is_prepared_or_refused_with_a_reason(
    tmp_path: Path, detector: MtcnnDetector
) -> None:
    # Convert's own byte limit stands in for the upload limit: the inline one here.
    pre = Preprocessor(detector, LIMITS, image_limit=LIMITS.max_inline_bytes)
    cases = _images(tmp_path)
    assert len(cases) >= 25
    for case in cases:
        assert case.image is not None
        refused = _refusal(pre, case.image)
        if refused is None:
            # Prepared: a face Convert can use (quality gates are ingestion's alone).
            assert case.expect not in _CONVERT_REASON, case.kind
            continue
        if case.expect in _CONVERT_REASON:
            assert refused.reason == _CONVERT_REASON[case.expect], case.kind
        if case.kind == "over-inline":
            # Convert's own byte limit refuses it, naming the setting that sets that limit.
            assert "S2A_SERVING__MAX_IMAGE_BYTES" in refused.message, refused.message
        elif case.group in ("decode", "limits"):
            assert case.names in refused.message, case.kind


def test_animated_images_have_their_own_reason(tmp_path: Path, detector: MtcnnDetector) -> None:
    pre = Preprocessor(detector, LIMITS, image_limit=LIMITS.max_upload_bytes)
    animated = [c for c in _images(tmp_path) if c.expect == "animated"]
    assert {c.kind for c in animated} == {"animated-gif", "animated-webp", "apng"}
    for case in animated:
        assert case.image is not None
        refused = _refusal(pre, case.image)
        assert refused is not None, case.kind
        assert refused.reason == "animated", case.kind
        assert "S2A_LIMITS__MAX_FRAMES" in refused.message, refused.message


def test_an_image_over_the_limit_is_refused_by_its_length_naming_the_setting(
    detector: MtcnnDetector,
) -> None:
    # Over the limit by one byte, and no image at all: refused before anything decodes it.
    over = b"\xff\xd8" + bytes(999)
    for serving, setting in (
        (ServingSettings(max_image_bytes=1000), "S2A_SERVING__MAX_IMAGE_BYTES"),
        (ServingSettings(), "S2A_LIMITS__MAX_UPLOAD_BYTES"),
    ):
        pre = Preprocessor(
            detector, LIMITS, image_limit=1000, image_limit_setting=image_limit_setting(serving)
        )
        refused = _refusal(pre, over)
        assert refused is not None
        assert refused.reason == "too_large"
        assert "1001 bytes" in refused.message
        assert f"at most 1000 ({setting})" in refused.message
    # Empty: decode_error, said as such.
    refused = _refusal(pre, b"")
    assert refused is not None
    assert (refused.reason, "empty (0 bytes)" in refused.message) == ("decode_error", True)


def _refusal(pre: Preprocessor, image: bytes) -> InvalidRequest | None:
    """The refusal of ``image``, or None when it was prepared; anything else propagates."""
    try:
        pre.prepare(image, Options(), resolution=32)
    except InvalidRequest as refused:
        return refused
    return None
