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
says which (decode_error, too_large, animated, no_face, multiple_faces, bad_pose,
bad_options). A too_large image is refused from its length before anything reads it, and
the message names the setting that sets the limit.

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
from schemas.settings import LimitSettings, ServingSettings
from serving.errors import (
    ANIMATED,
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

#: The setting that sets Convert's image limit, named in a too_large answer; when it is
#: unset the ingestion's upload limit applies (:func:`image_limit_setting`).
IMAGE_LIMIT_SETTING = "S2A_SERVING__MAX_IMAGE_BYTES"

_REASONS = {
    ReasonCode.ANIMATED: ANIMATED,
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


def image_limit_setting(serving: ServingSettings) -> str:
    """The environment variable that sets the image limit in force (for messages)."""
    return IMAGE_LIMIT_SETTING if serving.max_image_bytes else "S2A_LIMITS__MAX_UPLOAD_BYTES"


def crop_size_for(resolution: int) -> int:
    """The stored training crop a model of ``resolution`` px reads (trainer.torchdata)."""
    return 256 if resolution <= 256 else 512


#: Most images one detector call takes from concurrent calls (MTCNN: 1 -> 8 images a call
#: took CPU per image from ~37 to ~28 ms on one thread of this project's 2-core machine).
DETECT_BATCH = 8


@dataclass(eq=False, slots=True)
class _Detecting:
    """One image waiting for the detector, and its faces (or the error) once found."""

    image: CleanImage
    faces: list[Detection] | None = None
    error: BaseException | None = None


class Preprocessor:
    """Decode, detect, align and prepare; and the way back (see the module docstring).

    ``detector`` is any :class:`~agents.stages.detect.FaceDetector` (MTCNN by default;
    tests hand in the session's). It is shared by every handler thread and runs one call
    at a time; images that arrive while it runs are detected together in its next call (up
    to :data:`DETECT_BATCH`), by whichever waiting thread gets it first: no thread of its
    own and no added wait. The detector's results do not depend on batch mates.
    """

    def __init__(
        self,
        detector: FaceDetector,
        limits: LimitSettings,
        *,
        image_limit: int,
        image_limit_setting: str = IMAGE_LIMIT_SETTING,
        second_face_ratio: float = 0.35,
        max_output_side: int = 4096,
    ) -> None:
        self.detector = detector
        # The request's own image limit replaces the upload limit; the pixel, side and
        # frame limits stay the ingestion's.
        self.limits = limits.model_copy(update={"max_upload_bytes": image_limit})
        self.image_limit = image_limit
        self.image_limit_setting = image_limit_setting
        self.second_face_ratio = second_face_ratio
        self.max_output_side = max_output_side
        self._detect_lock = threading.Lock()  # held while the detector runs
        self._waiting: list[_Detecting] = []  # images waiting for it, oldest first
        self._waiting_lock = threading.Lock()

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

    def check_size(self, data: bytes) -> None:
        """Raise ``InvalidRequest`` for an empty image (decode_error) or one over the image
        limit (too_large, naming the setting that sets it), before anything reads it."""
        if not data:
            raise InvalidRequest(
                DECODE_ERROR, "image is empty (0 bytes): send JPEG, PNG or WebP bytes"
            )
        if len(data) > self.image_limit:
            raise InvalidRequest(
                TOO_LARGE,
                f"image is {len(data)} bytes; this server takes at most {self.image_limit} "
                f"({self.image_limit_setting}): send a smaller image (a JPEG of the photo is "
                "usually far smaller)",
            )

    def prepare(self, data: bytes, options: Options, resolution: int) -> Prepared:
        """Untrusted image bytes -> the model's inputs at ``resolution`` px."""
        self.check_size(data)
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

    @property
    def detect_waiting(self) -> int:
        """Images waiting for the detector now."""
        return len(self._waiting)

    def detect(self, image: CleanImage) -> list[Detection]:
        """The faces in ``image``, detected together with images other threads are
        waiting on (see the class docstring)."""
        mine = _Detecting(image)
        with self._waiting_lock:
            self._waiting.append(mine)
        while True:
            with self._detect_lock:
                if mine.faces is None and mine.error is None:
                    with self._waiting_lock:
                        batch = self._waiting[:DETECT_BATCH]
                        del self._waiting[:DETECT_BATCH]
                    try:
                        self._detect_batch(batch)
                    finally:  # whatever escaped, no waiting thread is left without an answer
                        for waiting in batch:
                            if waiting.faces is None and waiting.error is None:
                                waiting.error = RuntimeError("face detection did not finish")
                # Done here or by another thread; else it was past the batch limit: again.
                if mine.error is not None:
                    raise mine.error
                if mine.faces is not None:
                    return mine.faces

    def _detect_batch(self, batch: list[_Detecting]) -> None:
        """Answer every waiting image; a failure is retried image by image, so one image
        that breaks the detector never fails its batch mates."""
        try:
            found = self.detector.detect([w.image for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for waiting in batch:
                    self._detect_batch([waiting])
            return
        for waiting, faces in zip(batch, found, strict=True):
            waiting.faces = faces

    def _one_face(self, image: CleanImage) -> Detection:
        faces = self.detect(image)
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
