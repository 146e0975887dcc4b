"""Detection shared by concurrent calls: images that wait while the detector runs go
through its next call together, and an image that breaks the detector fails alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agents.records import CleanImage, Detection
from infra.waiting import wait_until
from schemas.settings import LimitSettings
from serving.preprocess import DETECT_BATCH, Preprocessor

BROKEN = 13  # an image this wide breaks the fake detector


class GateDetector:
    """Finds one face whose box is the image's width (so answers are recognisable); records
    each call's batch size; while ``hold`` is set a call waits for ``release``."""

    name = "gate"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def detect(self, images: Sequence[CleanImage]) -> list[list[Detection]]:
        self.calls.append(len(images))
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        if any(image.width == BROKEN for image in images):
            raise RuntimeError("the detector broke on this image")
        return [
            [Detection((0.0, 0.0, float(i.width), 1.0), 0.99, np.zeros((5, 2), np.float32))]
            for i in images
        ]


def _image(width: int) -> CleanImage:
    return CleanImage(np.zeros((4, width, 3), np.uint8), "PNG")


def _width(faces: list[Detection]) -> float:
    return faces[0].box[2]


def test_images_waiting_for_the_detector_share_its_next_call() -> None:
    detector = GateDetector()
    pre = Preprocessor(detector, LimitSettings(), image_limit=1 << 20)
    detector.hold.set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(pre.detect, _image(10))
        assert detector.entered.wait(10)
        detector.hold.clear()
        others = [pool.submit(pre.detect, _image(20 + i)) for i in range(3)]
        wait_until(lambda: pre.detect_waiting == 3, deadline_s=10, what="three images waiting")
        detector.release.set()
        assert _width(first.result(10)) == 10
        assert [_width(f.result(10)) for f in others] == [20, 21, 22]
    assert detector.calls == [1, 3]


def test_an_image_that_breaks_the_detector_fails_alone() -> None:
    detector = GateDetector()
    pre = Preprocessor(detector, LimitSettings(), image_limit=1 << 20)
    detector.hold.set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(pre.detect, _image(10))
        assert detector.entered.wait(10)
        detector.hold.clear()
        good = pool.submit(pre.detect, _image(30))
        bad = pool.submit(pre.detect, _image(BROKEN))
        wait_until(lambda: pre.detect_waiting == 2, deadline_s=10, what="two images waiting")
        detector.release.set()
        first.result(10)
        assert _width(good.result(10)) == 30
        with pytest.raises(RuntimeError, match="broke"):
            bad.result(10)
    # The shared call failed, then each image ran alone.
    assert detector.calls == [1, 2, 1, 1]


def test_more_waiting_images_than_a_batch_take_several_calls() -> None:
    detector = GateDetector()
    pre = Preprocessor(detector, LimitSettings(), image_limit=1 << 20)
    detector.hold.set()
    extra = DETECT_BATCH + 2
    with ThreadPoolExecutor(max_workers=extra + 1) as pool:
        first = pool.submit(pre.detect, _image(10))
        assert detector.entered.wait(10)
        detector.hold.clear()
        others = [pool.submit(pre.detect, _image(40 + i)) for i in range(extra)]
        wait_until(lambda: pre.detect_waiting == extra, deadline_s=10, what="images waiting")
        detector.release.set()
        first.result(10)
        assert [_width(f.result(10)) for f in others] == [40 + i for i in range(extra)]
    assert detector.calls == [1, DETECT_BATCH, 2]
