"""Face detection: boxes, probabilities and 5 landmarks in full-resolution coordinates.

Two detectors share one protocol:

* :class:`MtcnnDetector` (default, runs offline: its weights ship inside facenet-pytorch).
  Every image is downscaled to at most ``detect_max_side`` and placed on one fixed square
  canvas, so a whole batch runs in a single MTCNN call *and* each image's result does not
  depend on which other images share its batch.
* :class:`RetinaFaceDetector` (production choice): retina-face's PyTorch ResNet50 model,
  its state dict loaded from a local file. Nothing is ever downloaded.

Example::

    detector = build_detector(settings.models)
    faces_per_image = detector.detect([clean_image])   # list[list[Detection]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
import torch

from agents.errors import ModelWeightsMissing
from agents.records import CleanImage, Detection, RGBImage
from schemas.settings import ModelSettings

__all__ = [
    "FaceDetector",
    "MtcnnDetector",
    "RetinaFaceDetector",
    "build_detector",
    "detections_from_retinaface",
]

# The canvas is filled with mid-grey: MTCNN standardizes pixels as (x - 127.5) / 128, so the
# padding is ~0 at the network input and adds no edges that could look like a face.
_PAD_VALUE = 128
#: Canvas sides are multiples of this (MTCNN's pyramid needs no particular size; the step
#: only bounds how many distinct canvas sizes, hence MTCNN calls, a batch can need).
CANVAS_STEP = 128
#: Grey margin on each side of the canvas for a second look at faces near the edge, as a
#: share of the canvas side: MTCNN squares a candidate around its box (a portrait box is
#: ~1.3x taller than wide), so a face whose box touches the edge has a square up to ~15 %
#: of its height outside, and a face cut by the frame more.
EDGE_MARGIN = 0.25
#: A face whose box is within this share of its height of an edge gets the second look.
NEAR_EDGE = 0.25

#: Candidate batches of MTCNN's refinement nets are padded up to a power of two until this
#: size, then to a multiple of it (see :class:`PaddedBatch`).
BATCH_BUCKET = 64

RETINAFACE_SETTING = "S2A_MODELS__RETINAFACE_WEIGHTS"
RETINAFACE_HOW = (
    "Download retinaface.pth from the serengil/deepface_models release "
    "(https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.pth) "
    "on a machine with internet access and copy it there."
)


def bucket_size(n: int, step: int = BATCH_BUCKET) -> int:
    """``n`` rounded up to the next power of two while at most ``step``, else to the next
    multiple of ``step`` (1 -> 1, 3 -> 4, 40 -> 64, 65 -> 128, 130 -> 192)."""
    if n <= step:
        return 1 << max(0, n - 1).bit_length()
    return -(-n // step) * step


def power_of_two_runs(n: int) -> list[int]:
    """``n`` as a sum of distinct powers of two, largest first (13 -> [8, 4, 1])."""
    return [1 << bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]


class PaddedBatch(torch.nn.Module):
    """Runs ``inner`` on its batch padded with zero rows to :func:`bucket_size`, and returns
    the real rows only (a tensor or a tuple of tensors, first axis = batch).

    Why: MTCNN's RNet and ONet see as many rows as PNet left candidates, a count that differs
    in nearly every call. Every new input shape makes oneDNN build and cache convolution
    primitives, and the allocator keeps the differently sized buffers: the chain run in
    process on 1,500 uploads in random batches of 1-16 grew by ~280 MiB per 1,000; with the
    candidate counts bucketed (a dozen shapes) and PNet's batches in power-of-two runs,
    ~25-60 (RELIABILITY.md, "Soak"). Rows are independent in these nets (no batch statistics
    in eval mode), so padding does not change the real rows' outputs beyond float rounding.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: torch.Tensor) -> Any:
        rows = batch.shape[0]
        padded = bucket_size(rows)
        if padded != rows:
            batch = torch.cat([batch, batch.new_zeros((padded - rows, *batch.shape[1:]))])
        out = self.inner(batch)
        if isinstance(out, tuple):
            return tuple(part[:rows] for part in out)
        return out[:rows]


class FaceDetector(Protocol):
    """Finds faces in a batch of images; one list of detections per image, in order."""

    name: str

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]: ...


def _fit_scale(width: int, height: int, max_side: int) -> float:
    """Factor that brings the longest side down to ``max_side`` (never upscales)."""
    return min(1.0, max_side / max(width, height))


def _downscale(pixels: RGBImage, max_side: int) -> tuple[RGBImage, float, float]:
    """Downscaled pixels and the exact x and y factors used (rounding makes them differ)."""
    h, w = pixels.shape[:2]
    scale = _fit_scale(w, h, max_side)
    if scale >= 1.0:
        return pixels, 1.0, 1.0
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return np.asarray(small, dtype=np.uint8), new_w / w, new_h / h


class MtcnnDetector:
    """facenet-pytorch MTCNN over batches of any image sizes.

    Images are downscaled (``cv2.INTER_AREA``) so the longest side is at most ``max_side``
    and pasted at the top-left of a square canvas whose side depends on the image's own
    size only (:meth:`canvas_side`); MTCNN only batches equal-size images, so a batch runs
    as one call per canvas size. A canvas chosen by the image (rather than by the batch's
    largest image) keeps each image's landmarks identical whichever batch it arrives in:
    padding to the batch maximum moved landmarks by up to 4 px on the London set.

    A face near the photo's edge is detected again on a canvas with a grey margin around the
    image (:data:`EDGE_MARGIN` of the side). facenet-pytorch crops each candidate square
    for its RNet and ONet stages and, where the square leaves the image, crops only the part
    inside and stretches it to the network's input: the face is squashed, and its box and
    landmarks came out 15-38 px off on London portraits whose face box merely touched the
    edge (60-85 px with a fifth of the face cut). With the margin the square holds grey
    instead, as the network expects; only images with a face near an edge pay for it.

    ``min_face_size`` is in canvas pixels; by default 1/16 of ``max_side`` (40 px at 640),
    never under MTCNN's own 20. Looking for smaller faces makes the image pyramid and the
    candidate count grow steeply (20 px ran about 2x slower on 512 px portraits); a face
    that small in a downscaled selfie is background, not the subject.

    Speed on 2 CPU cores, 16 London portraits (512 px): 18-22 images/s batched, about the
    same as one call per image: facenet's RNet/ONet stages crop candidates one at a time
    in Python and its resampling (adaptive average pooling) is 40% of the time, so on a CPU
    the batch mostly saves per-call overhead.

    Example::

        detector = MtcnnDetector(max_side=640)
        [[face]] = detector.detect([image])
        face.landmarks      # 5 x 2, full-resolution pixels
    """

    name = "mtcnn"

    def __init__(self, max_side: int = 640, min_face_size: int | None = None) -> None:
        from facenet_pytorch import MTCNN

        if max_side < 48:
            raise ValueError(f"max_side={max_side} is too small for MTCNN; use at least 48")
        self.max_side = max_side
        self.min_face_size = (
            max(20, max_side // 16) if min_face_size is None else int(min_face_size)
        )
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            device=torch.device("cpu"),
        ).eval()
        # channels_last weights: ~20% faster convolutions on CPU (44 -> 37 ms an image on
        # 16 London portraits), same detections to float tolerance.
        for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        # PNet's batch is the images sharing a canvas (at most a worker batch); the
        # refinement nets' is a candidate count, unbounded in variety: bucket it.
        self._mtcnn.rnet = PaddedBatch(self._mtcnn.rnet)
        self._mtcnn.onet = PaddedBatch(self._mtcnn.onet)

    def canvas_side(self, width: int, height: int) -> int:
        """The square canvas an image of this size is detected on: its downscaled longest
        side rounded up to a multiple of ``CANVAS_STEP``, at most ``max_side``.

        It depends on the image alone, so its landmarks do not depend on its batch mates;
        and a 512 px photo is searched on 512 x 512, not on 640 x 640 (a third fewer pyramid
        pixels than one canvas for every size).
        """
        longest = round(max(width, height) * _fit_scale(width, height, self.max_side))
        return min(self.max_side, -(-longest // CANVAS_STEP) * CANVAS_STEP)

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]:
        results: list[list[Detection]] = [[] for _ in images]
        groups: dict[int, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.canvas_side(image.width, image.height), []).append(i)
        for side, members in groups.items():
            found_all = self._detect_on(side, [images[i] for i in members])
            near = [
                k
                for k, (i, found) in enumerate(zip(members, found_all, strict=True))
                if any(_near_edge(face, images[i]) for face in found)
            ]
            if near:
                margin = round(side * EDGE_MARGIN)
                again = self._detect_on(side, [images[members[k]] for k in near], margin)
                for k, found in zip(near, again, strict=True):
                    found_all[k] = found
            for i, found in zip(members, found_all, strict=True):
                results[i] = found
        return results

    def _detect_on(
        self, side: int, images: Sequence[CleanImage], margin: int = 0
    ) -> list[list[Detection]]:
        """MTCNN on images sharing a canvas size (MTCNN batches equal sizes only), each
        pasted ``margin`` canvas pixels in from the top-left corner: one call per
        power-of-two run of them (13 images: 8, 4, 1), so PNet sees a handful of batch
        shapes without computing padding rows (see :class:`PaddedBatch` for why shapes
        matter)."""
        found: list[list[Detection]] = []
        start = 0
        for size in power_of_two_runs(len(images)):
            found += self._detect_run(side, images[start : start + size], margin)
            start += size
        return found

    def _detect_run(
        self, side: int, images: Sequence[CleanImage], margin: int
    ) -> list[list[Detection]]:
        full = side + 2 * margin
        canvas = np.full((len(images), full, full, 3), _PAD_VALUE, np.uint8)
        factors: list[tuple[float, float]] = []
        for i, image in enumerate(images):
            small, fx, fy = _downscale(image.pixels, self.max_side)
            canvas[i, margin : margin + small.shape[0], margin : margin + small.shape[1]] = small
            factors.append((fx, fy))
        # PNet runs on the stacked pyramid, RNet/ONet on the candidates of every image.
        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(canvas, landmarks=True)
        return [
            _mtcnn_detections(img_boxes, img_probs, img_points, fx, fy, margin)
            for (fx, fy), img_boxes, img_probs, img_points in zip(
                factors, boxes, probs, points, strict=True
            )
        ]


def _near_edge(face: Detection, image: CleanImage) -> bool:
    """Whether ``face``'s box comes within :data:`NEAR_EDGE` of its height of an edge."""
    x1, y1, x2, y2 = face.box
    reach = NEAR_EDGE * (y2 - y1)
    return x1 < reach or y1 < reach or x2 > image.width - reach or y2 > image.height - reach


def _mtcnn_detections(
    boxes: npt.NDArray[Any] | None,
    probs: npt.NDArray[Any] | Sequence[Any],
    points: npt.NDArray[Any] | None,
    fx: float,
    fy: float,
    margin: int = 0,
) -> list[Detection]:
    """One image's MTCNN output mapped back to full resolution (MTCNN says None for none);
    ``margin`` is where the image sat on the canvas, in canvas pixels from the top-left."""
    if boxes is None or points is None:
        return []
    scale_box = np.array([fx, fy, fx, fy], dtype=np.float64)
    scale_pt = np.array([fx, fy], dtype=np.float64)
    found = []
    for box, prob, pts in zip(boxes, probs, points, strict=True):
        x1, y1, x2, y2 = ((np.asarray(box, dtype=np.float64) - margin) / scale_box).tolist()
        landmarks = ((np.asarray(pts, dtype=np.float64) - margin) / scale_pt).astype(np.float32)
        found.append(Detection(box=(x1, y1, x2, y2), prob=float(prob), landmarks=landmarks))
    return found


class RetinaFaceDetector:
    """retina-face's PyTorch RetinaFace (ResNet50) with weights from a local file.

    The module is built here and its state dict loaded from ``weights_path``; the package's
    own loader (which downloads) is never called. Images are downscaled to ``max_side`` the
    same way as for MTCNN and not upscaled, so a 12 MP photo costs what a 640 px one does.

    Example::

        detector = RetinaFaceDetector(Path("/models/retinaface.pth"), threshold=0.9)
        [[face]] = detector.detect([image])
    """

    name = "retinaface"

    def __init__(
        self, weights_path: Path | None, threshold: float = 0.9, max_side: int = 640
    ) -> None:
        if weights_path is None or not Path(weights_path).is_file():
            raise ModelWeightsMissing(
                "RetinaFace",
                None if weights_path is None else Path(weights_path),
                RETINAFACE_SETTING,
                RETINAFACE_HOW,
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold={threshold} must be between 0 and 1 (exclusive)")
        self.weights_path = Path(weights_path)
        self.threshold = threshold
        self.max_side = max_side
        self._detect_faces, module_cls = _import_retinaface()
        self._model = module_cls()
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        try:
            self._model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"{self.weights_path} is not a retina-face RetinaFace state dict "
                f"({RETINAFACE_SETTING}): {err}"
            ) from err
        self._model.eval()

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]:
        # retina-face takes one image per call (its anchors depend on the image size).
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: CleanImage) -> list[Detection]:
        small, fx, fy = _downscale(image.pixels, self.max_side)
        # detect_faces expects OpenCV's BGR order and converts to RGB itself.
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        with torch.inference_mode():
            found = self._detect_faces(
                bgr, threshold=self.threshold, model=self._model, allow_upscaling=False
            )
        return detections_from_retinaface(found, fx, fy)


def detections_from_retinaface(found: Any, fx: float = 1.0, fy: float = 1.0) -> list[Detection]:
    """retina-face's ``{"face_1": {"score", "facial_area", "landmarks"}}`` as Detections.

    ``fx``/``fy`` are the factors the image was downscaled by; coordinates are divided by
    them. retina-face names the eyes and mouth corners from the subject's point of view:
    its ``right_eye`` is the one on the image's left (its own docstring example has
    right_eye x=257 and left_eye x=374), while ``LANDMARK_NAMES`` go by image side.
    """
    if not found:
        return []
    scale_pt = np.array([fx, fy], dtype=np.float64)
    detections = []
    for face in found.values():
        x1, y1, x2, y2 = (float(v) for v in face["facial_area"])
        marks = face["landmarks"]
        ordered = np.array(
            [
                marks["right_eye"],
                marks["left_eye"],
                marks["nose"],
                marks["mouth_right"],
                marks["mouth_left"],
            ],
            dtype=np.float64,
        )
        detections.append(
            Detection(
                box=(x1 / fx, y1 / fy, x2 / fx, y2 / fy),
                prob=float(face["score"]),
                landmarks=(ordered / scale_pt).astype(np.float32),
            )
        )
    return detections


def _import_retinaface() -> tuple[Any, type[torch.nn.Module]]:
    """retina-face's ``detect_faces`` and module class, its PyTorch backend enforced.

    The package picks its backend once, at import, from ``DEEPFACE_BACKEND_ENGINE``
    (TensorFlow first when installed); set it before the first import.
    """
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
    from retinaface import RetinaFace as retinaface_api
    from retinaface.commons import backend_utils
    from retinaface.model.retinaface_pth_model import RetinaFace as RetinaFaceModule

    engine = backend_utils.get_backend_engine()
    if engine != "pytorch":
        raise RuntimeError(
            f"retina-face already chose the {engine!r} backend in this process; set "
            "DEEPFACE_BACKEND_ENGINE=pytorch before anything imports retinaface"
        )
    return retinaface_api.detect_faces, RetinaFaceModule


def build_detector(settings: ModelSettings) -> FaceDetector:
    """The detector the settings name, ready to run."""
    if settings.detector == "retinaface":
        return RetinaFaceDetector(settings.retinaface_weights, max_side=settings.detect_max_side)
    return MtcnnDetector(max_side=settings.detect_max_side)
