"""Image in, model inputs out; model output in, image out: the same steps as training data.

:meth:`Preprocessor.prepare` decodes untrusted bytes with the ingestion's hardened decoder
(:func:`agents.stages.imageio.decode_image`: format allow-list, byte/pixel/side/frame
limits checked before pixels are allocated, so decompression bombs never decode), finds
the face with the ingestion detector, refuses no face and several faces by the quality
stage's own rule (a second face at least ``second_face_ratio`` of the main one's size),
aligns it with the loose training template into the crop size training reads (256 px for a
model of up to 256 px, else 512), and makes the generator's ``(selfie, base)`` pair with
the family's own :func:`~trainer.families.pix2pix_lora.model.prepare`.

:meth:`Preprocessor.finish` turns the model's output back into an image: the aligned crop
alone, or pasted back into the photo by inverting the stored transform under a feathered
mask (:func:`agents.stages.align.paste_back`), resized and encoded without metadata.

Nothing here logs or keeps pixels; every refusal is an :class:`InvalidRequest` whose reason
says which (decode_error, too_large, no_face, multiple_faces, bad_pose, bad_options).

Example::

    pre = Preprocessor(detector, settings.limits, image_limit=12 << 20)
    prepared = pre.prepare(jpeg_bytes, Options(), resolution=256)
    prepared.selfie.shape                    # (3, 256, 256) float32 in [-1, 1]
    encoded = pre.finish(prepared, output)   # output: (3, 256, 256) float32 in (-1, 1)
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from agents.errors import Rejected
from agents.records import CleanImage, Detection, RGBImage
from agents.stages.align import align, paste_back
from agents.stages.detect import FaceDetector
from agents.stages.imageio import decode_image, encode_png
from schemas.reasons import ReasonCode
from schemas.settings import LimitSettings
from serving.errors import (
    BAD_OPTIONS,
    BAD_POSE,
    DECODE_ERROR,
    MULTIPLE_FACES,
    NO_FACE,
    TOO_LARGE,
    InvalidRequest,
)
from trainer.families.pix2pix_lora.model import prepare as model_inputs

Array = npt.NDArray[np.float32]
Format = Literal["png", "jpeg", "webp"]
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_REASONS = {
    ReasonCode.TOO_LARGE: TOO_LARGE,
    ReasonCode.DECODE_ERROR: DECODE_ERROR,
    ReasonCode.BAD_POSE: BAD_POSE,
}


@dataclass(frozen=True, slots=True)
class Options:
    """How to convert one image (the proto's ConvertOptions, checked).

    ``paste_back``: the converted face in the photo (True) or the aligned crop alone;
    ``size``: longest side of the answer in px, 0 = natural; ``quality``: JPEG/WebP 1..100.
    """

    style: str = ""
    skip_align: bool = False
    paste_back: bool = True
    format: Format = "png"
    size: int = 0
    quality: int = 90


@dataclass(frozen=True, slots=True)
class Prepared:
    """One image ready for the model, and what :meth:`Preprocessor.finish` needs after.

    ``selfie``/``base``: float32 (3, R, R) in [-1, 1]; ``photo``: the decoded upright
    pixels (kept in memory for paste-back only); ``transform``: the 2 x 3 photo -> crop
    matrix of a ``crop_size`` crop (None with ``skip_align``).
    """

    selfie: Array
    base: Array
    options: Options
    photo: RGBImage | None
    transform: list[list[float]] | None
    crop_size: int
    face: Detection | None


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    mime_type: str
    width: int
    height: int


def crop_size_for(resolution: int) -> int:
    """The stored training crop a model of ``resolution`` px reads (trainer.torchdata)."""
    return 256 if resolution <= 256 else 512


class Preprocessor:
    """Decode, detect, align and prepare; and the way back (see the module docstring).

    ``detector`` is any :class:`~agents.stages.detect.FaceDetector` (MTCNN by default;
    tests hand in the session's). Detection runs one image at a time under a lock: the
    MTCNN module is shared by every handler thread.
    """

    def __init__(
        self,
        detector: FaceDetector,
        limits: LimitSettings,
        *,
        image_limit: int,
        second_face_ratio: float = 0.35,
        max_output_side: int = 4096,
    ) -> None:
        self.detector = detector
        # The request's own image limit replaces the upload limit; the pixel, side and
        # frame limits stay the ingestion's.
        self.limits = limits.model_copy(update={"max_upload_bytes": image_limit})
        self.second_face_ratio = second_face_ratio
        self.max_output_side = max_output_side
        self._detect_lock = threading.Lock()

    def check_options(self, options: Options, styles: tuple[str, ...]) -> None:
        """Raise ``InvalidRequest(bad_options)`` for a style the model does not serve or a
        size or quality out of range."""
        if options.style and options.style not in styles:
            served = ", ".join(styles) if styles else "one unnamed style (leave style empty)"
            raise InvalidRequest(
                BAD_OPTIONS,
                f"style {options.style!r} is not served by this model; it serves {served}",
            )
        if not 0 <= options.size <= self.max_output_side:
            raise InvalidRequest(
                BAD_OPTIONS,
                f"size {options.size} is out of range; use 0 (natural) to {self.max_output_side}",
            )
        if not 1 <= options.quality <= 100:
            raise InvalidRequest(BAD_OPTIONS, f"quality {options.quality} must be 1..100")

    def prepare(self, data: bytes, options: Options, resolution: int) -> Prepared:
        """Untrusted image bytes -> the model's inputs at ``resolution`` px."""
        try:
            image = decode_image(data, self.limits)
        except Rejected as exc:
            raise InvalidRequest(_REASONS.get(exc.reason, DECODE_ERROR), exc.detail) from None
        if options.skip_align:
            crop = _centre_square(image.pixels)
            selfie, base = model_inputs(crop, resolution)
            return Prepared(
                selfie[0].numpy(), base[0].numpy(), options, None, None, crop.shape[0], None
            )
        face = self._one_face(image)
        size = crop_size_for(resolution)
        try:
            aligned = align(image, face.landmarks, sizes=(size,))
        except Rejected as exc:
            raise InvalidRequest(BAD_POSE, f"{exc.detail}; send a frontal photo") from None
        selfie, base = model_inputs(aligned.crops[size], resolution)
        return Prepared(
            selfie[0].numpy(),
            base[0].numpy(),
            options,
            image.pixels,
            aligned.transforms[size],
            size,
            face,
        )

    def _one_face(self, image: CleanImage) -> Detection:
        with self._detect_lock:
            faces = self.detector.detect([image])[0]
        if not faces:
            raise InvalidRequest(
                NO_FACE,
                "no face found in the image; send a photo with one face, front-facing and "
                "not cut by the frame (or set skip_align for an aligned crop)",
            )
        ordered = sorted(faces, key=lambda f: f.size, reverse=True)
        main = ordered[0]
        others = [
            f for f in ordered[1:] if main.size > 0 and f.size / main.size >= self.second_face_ratio
        ]
        if others:
            raise InvalidRequest(
                MULTIPLE_FACES,
                f"{1 + len(others)} faces found (faces at least {self.second_face_ratio:.0%} "
                "of the largest one's size count); send a photo of one person, or crop it",
            )
        return main

    def finish(self, prepared: Prepared, output: Array) -> Encoded:
        """The model's (3, R, R) output in (-1, 1) -> encoded image bytes."""
        crop = np.clip(np.rint((output.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        options = prepared.options
        if options.paste_back and prepared.photo is not None and prepared.transform is not None:
            pixels = paste_back(
                prepared.photo, crop, prepared.transform, transform_size=prepared.crop_size
            )
        else:
            pixels = crop
        if options.size:
            pixels = _resize_longest(pixels, options.size)
        return _encode(pixels, options.format, options.quality)


def _centre_square(pixels: RGBImage) -> RGBImage:
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(pixels[top : top + side, left : left + side])


def _resize_longest(pixels: RGBImage, side: int) -> RGBImage:
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(pixels, size, interpolation=interpolation), dtype=np.uint8)


def _encode(pixels: RGBImage, fmt: Format, quality: int) -> Encoded:
    height, width = pixels.shape[:2]
    if fmt == "png":
        data = encode_png(pixels)  # IHDR, IDAT, IEND only: no metadata at all
    else:
        buffer = io.BytesIO()
        # Pillow writes no EXIF or ICC unless given them.
        Image.fromarray(pixels).save(buffer, format=fmt.upper(), quality=quality)
        data = buffer.getvalue()
    return Encoded(data, MIME[fmt], width, height)
