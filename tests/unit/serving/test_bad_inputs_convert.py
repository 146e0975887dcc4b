"""The bad-input corpus's images (:mod:`badinputs`) through Convert's preprocessing.

Convert decodes with the ingestion's decoder under the same pixel, side and frame
limits, so every corpus image that carries bytes must end as a prepared input or an
``InvalidRequest`` with a reason, never any other exception; the decode and limit kinds
with the reason and the setting their ingestion rejection names.
"""

from __future__ import annotations

from pathlib import Path

from badinputs import LIMITS, BadInput, corpus

from agents.stages.detect import MtcnnDetector
from serving.errors import InvalidRequest
from serving.preprocess import Options, Preprocessor

# Ingestion reason -> Convert's: the same where Convert has one. Convert has no
# ``animated`` (serving/errors.py) and answers decode_error for it; the detail still
# names S2A_LIMITS__MAX_FRAMES.
_CONVERT_REASON = {
    "decode_error": "decode_error",
    "too_large": "too_large",
    "animated": "decode_error",
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
        # over-inline: the service refuses it before preprocessing, naming
        # serving.max_image_bytes (serving/service.py); here the decoder's check fires.
        if case.group in ("decode", "limits") and case.kind != "over-inline":
            assert case.names in refused.message, case.kind


def _refusal(pre: Preprocessor, image: bytes) -> InvalidRequest | None:
    """The refusal of ``image``, or None when it was prepared; anything else propagates."""
    try:
        pre.prepare(image, Options(), resolution=32)
    except InvalidRequest as refused:
        return refused
    return None
