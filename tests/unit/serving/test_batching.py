"""Micro-batching with a fake engine held at its seam: batches fill up to the limit, a full
queue answers Overloaded at once, expired deadlines never run, no model is NotReady."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fakes import loaded

from infra.waiting import wait_until
from serving.batching import MicroBatcher
from serving.errors import DeadlineExpired, NotReady, Overloaded
from serving.swap import ModelHolder


def _image(value: float, side: int = 32) -> np.ndarray:
    return np.full((3, side, side), value, dtype=np.float32)


def _later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


def test_waiting_images_run_together_up_to_the_batch_limit() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    batcher = MicroBatcher(holder, max_batch=4, max_delay_s=0.05, max_queue=32)
    batcher.start()
    try:
        # Hold the first batch in the engine so the next ten images queue up behind it.
        engine.hold.set()
        first = batcher.submit(_image(0.0), _image(0.0), _later())
        assert engine.entered.wait(10)
        engine.hold.clear()
        futures = [batcher.submit(_image(i / 10), _image(i / 10), _later()) for i in range(10)]
        engine.release.set()
        outputs = [f.result(10) for f in futures]
        first.result(10)
    finally:
        batcher.close()
    # Each image got its own output back, from the model that ran it.
    for i, (output, ran) in enumerate(outputs):
        assert output[0, 0, 0] == pytest.approx(i / 10)
        assert ran is model
    assert engine.batches[0] == 1
    assert engine.batches[1:] == [4, 4, 2]


def test_a_full_queue_answers_overloaded_at_once() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    batcher = MicroBatcher(holder, max_batch=1, max_delay_s=0.0, max_queue=2)
    batcher.start()
    try:
        engine.hold.set()
        running = batcher.submit(_image(0), _image(0), _later())
        assert engine.entered.wait(10)
        queued = [batcher.submit(_image(0), _image(0), _later()) for _ in range(2)]
        with pytest.raises(Overloaded, match="queue holds 2"):
            batcher.submit(_image(0), _image(0), _later())
        engine.release.set()
        for future in (running, *queued):
            future.result(10)
    finally:
        batcher.close()


def test_an_image_past_its_deadline_never_reaches_the_engine() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    batcher = MicroBatcher(holder, max_batch=1, max_delay_s=0.0, max_queue=4)
    batcher.start()
    try:
        engine.hold.set()
        running = batcher.submit(_image(0), _image(0), _later())
        assert engine.entered.wait(10)
        expired = batcher.submit(_image(0), _image(0), time.monotonic() - 1)
        engine.release.set()
        running.result(10)
        with pytest.raises(DeadlineExpired):
            expired.result(10)
    finally:
        batcher.close()
    assert engine.batches == [1]


def test_without_a_model_the_answer_is_not_ready_and_closing_refuses() -> None:
    batcher = MicroBatcher(ModelHolder(), max_batch=2, max_delay_s=0.0, max_queue=4)
    batcher.start()
    future = batcher.submit(_image(0), _image(0), _later())
    with pytest.raises(NotReady, match="no model"):
        future.result(10)
    batcher.close()
    with pytest.raises(NotReady, match="shutting down"):
        batcher.submit(_image(0), _image(0), _later())


def test_queue_depth_is_visible_while_images_wait() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    batcher = MicroBatcher(holder, max_batch=1, max_delay_s=0.0, max_queue=8)
    batcher.start()
    try:
        engine.hold.set()
        futures = [batcher.submit(_image(0), _image(0), _later()) for _ in range(3)]
        assert engine.entered.wait(10)
        wait_until(lambda: batcher.depth == 2, deadline_s=10, what="two images queued")
        engine.hold.clear()
        engine.release.set()
        for future in futures:
            future.result(10)
    finally:
        batcher.close()


def test_a_lone_image_never_waits_and_announced_ones_are_waited_for() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    # A delay far beyond the test's deadlines: only images on their way are waited for.
    batcher = MicroBatcher(holder, max_batch=4, max_delay_s=600, max_queue=8)
    batcher.start()
    try:
        batcher.submit(_image(0), _image(0), _later()).result(10)
        assert engine.batches == [1]
        with batcher.coming(), batcher.coming():
            first = batcher.submit(_image(0.1), _image(0.1), _later())
            second = batcher.submit(_image(0.2), _image(0.2), _later())
        assert first.result(10)[0][0, 0, 0] == pytest.approx(0.1)
        assert second.result(10)[0][0, 0, 0] == pytest.approx(0.2)
        assert engine.batches == [1, 2]
    finally:
        batcher.close()


def test_several_workers_run_batches_side_by_side() -> None:
    holder = ModelHolder()
    model, engine = loaded()
    holder.flip(model)
    batcher = MicroBatcher(holder, max_batch=4, max_delay_s=0.0, max_queue=8, workers=2)
    batcher.start()
    try:
        # The first batch is held in the engine; the second still runs, on the other worker.
        engine.hold.set()
        first = batcher.submit(_image(0.1), _image(0.1), _later())
        assert engine.entered.wait(10)
        second = batcher.submit(_image(0.2), _image(0.2), _later())
        wait_until(lambda: len(engine.batches) == 2, deadline_s=10, what="a second batch")
        assert not first.done()
        engine.release.set()
        assert first.result(10)[0][0, 0, 0] == pytest.approx(0.1)
        assert second.result(10)[0][0, 0, 0] == pytest.approx(0.2)
    finally:
        batcher.close()
    assert batcher.workers == 2
    assert engine.batches == [1, 1]
