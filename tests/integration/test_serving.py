"""The Convert service for real: gRPC on loopback, the real client, the ingestion's MTCNN,
ONNX Runtime on versions exported by the real export code (tests/unit/serving/serving_fixture).

Covers: a real selfie end to end (client and ``s2a convert``), health transitions and
graceful shutdown, reflection, every INVALID_ARGUMENT case, RESOURCE_EXHAUSTED, auth, a swap
under continuous load with zero failed calls, a corrupt artifact refused while the old
version keeps answering, and two servers that follow the same updates and both swap.

Waits are events or :func:`infra.waiting.wait_until` with a deadline, never sleeps.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cli_runner import run_s2a
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image
from unit.serving.serving_fixture import corrupt, export_tiny

from agents.stages.detect import MtcnnDetector
from infra.cli import JsonLines
from infra.waiting import wait_until
from schemas.model_updates import ModelUpdate
from schemas.settings import Settings
from serving.client import ConvertClient, ConvertResult
from serving.engines import Engine, OnnxEngine, default_factory
from serving.engines.base import Array
from serving.errors import ConvertFailed, ServingConfigError
from serving.proto import SERVICE
from serving.server import ConvertServer, create_server
from serving.updates import Apply
from serving.version import ModelVersion

REAL = Path(__file__).parents[1] / "data" / "real"
SELFIE = REAL / "london_001_neutral.jpg"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding converter versions 1 and 2 (real exports, 32 px)."""
    root = tmp_path_factory.mktemp("serving-home")
    export_tiny(root / "models", 1, shift=0.3)
    export_tiny(root / "models", 2, shift=-0.3)
    return root


@pytest.fixture(scope="module")
def empty_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving-empty")


class HeldOnnx(OnnxEngine):
    """The real ONNX engine, which a test can hold inside a batch: while ``hold`` is set,
    a batch signals ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.held = 0  # batches waiting for release now
        self._lock = threading.Lock()

    def _run(self, selfie: Array, base: Array) -> Array:
        if self.hold.is_set():
            with self._lock:
                self.held += 1
            self.entered.set()
            self.release.wait(60)
            with self._lock:
                self.held -= 1
        return super()._run(selfie, base)


class HeldFactory:
    """Engine factory handing out :class:`HeldOnnx` engines (the latest in ``engines``)."""

    def __init__(self) -> None:
        self.engines: list[HeldOnnx] = []

    def __call__(self, kind: str) -> Engine:
        if kind != "onnxruntime":
            return default_factory()(kind)
        engine = HeldOnnx()
        self.engines.append(engine)
        return engine


ServerFactory = Callable[..., tuple[ConvertServer, int]]


@pytest.fixture
def make_server(detector: MtcnnDetector) -> Iterator[ServerFactory]:
    """``make_server(home, engine_factory=..., updates=..., **serving)``: a started server
    on a free loopback port (``model_path`` None: the newest version under ``home``);
    every one is stopped at the end."""
    started: list[ConvertServer] = []

    def make(
        home: Path,
        *,
        engine_factory: Any = None,
        updates: Any = None,
        wait: bool = True,
        **serving: Any,
    ) -> tuple[ConvertServer, int]:
        options: dict[str, Any] = {
            "port": 0,
            "follow_updates": False,
            "intra_op_threads": 1,
            "warmup_runs": 1,
            "engine": "onnxruntime",
        }
        top = {k: serving.pop(k) for k in ("broker_port", "topic_prefix") if k in serving}
        options.update(serving)
        settings = Settings(home=home, serving=options, **top)
        server, port = create_server(
            settings, detector=detector, updates=updates, engine_factory=engine_factory
        )
        started.append(server)
        server.start()
        if wait:
            assert server.wait_until_serving(60), "the server did not load its model"
        return server, port

    yield make
    for server in started:
        server.stop(grace_s=5)


def client_for(port: int, **options: Any) -> ConvertClient:
    options.setdefault("timeout_s", 30)
    return ConvertClient(f"127.0.0.1:{port}", **options)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def failure(call: Callable[[], object]) -> ConvertFailed:
    with pytest.raises(ConvertFailed) as caught:
        call()
    return caught.value


# -- end to end ----------------------------------------------------------------------------


def test_a_real_selfie_converts_end_to_end(make_server: ServerFactory, home: Path) -> None:
    server, port = make_server(home, metrics_port=0)
    selfie = SELFIE.read_bytes()
    with client_for(port) as client:
        assert client.health() == "SERVING"
        info = client.model_info()
        assert (info.name, info.version, info.engine) == ("converter", 2, "onnxruntime-cpu")
        assert info.resolution == 32
        assert list(info.styles) == ["cel"]
        assert "onnxruntime-cpu" in info.engines_available

        pasted = client.convert(selfie)
        photo = decode(selfie)
        assert (pasted.height, pasted.width) == photo.shape[:2]
        assert pasted.mime_type == "image/png"
        assert pasted.model == (
            "converter",
            2,
            "onnxruntime-cpu",
        )
        out = decode(pasted.image)
        assert np.array_equal(out[:8, :8], photo[:8, :8])  # background untouched
        assert not np.array_equal(out, photo)  # the face changed

        crop = client.convert(selfie, output="crop", format="webp", size=96)
        assert (crop.width, crop.height, crop.mime_type) == (96, 96, "image/webp")
        assert decode(crop.image).shape == (96, 96, 3)

        streamed = list(client.convert_many([selfie, b"not an image", selfie], output="crop"))
        assert [type(r).__name__ for r in streamed] == [
            "ConvertResult",
            "ConvertFailed",
            "ConvertResult",
        ]
        bad = streamed[1]
        assert isinstance(bad, ConvertFailed)
        assert bad.code == INVALID
        assert bad.reason == "decode_error"

    assert server.metrics_port is not None
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10
    ) as page:
        text = page.read().decode()
    assert 's2a_serving_requests_total{code="OK",method="Convert"} 2.0' in text
    assert 's2a_serving_model_version{name="converter"} 2.0' in text
    assert "s2a_serving_batch_size_bucket" in text
    assert "s2a_serving_queue_depth" in text


def test_each_call_logs_one_line_of_ids_and_numbers(
    make_server: ServerFactory, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _server, port = make_server(home)
    selfie = SELFIE.read_bytes()
    wall = png(np.full((200, 200, 3), 128, np.uint8))
    caplog.set_level(logging.INFO, logger="serving.service")
    with client_for(port, retries=0) as client:
        client.convert(selfie, request_id="call-ok")
        failure(lambda: client.convert(wall, request_id="call-no-face"))
        failure(lambda: client.convert(wall, request_id="user@example.com\nforged line"))
    calls = [r for r in caplog.records if hasattr(r, "latency_ms")]
    assert [r.__dict__["request_id"] for r in calls] == [
        "call-ok",
        "call-no-face",
        "user_example.com_forged_line",
    ]
    id_like = re.compile(r"^[A-Za-z0-9._:-]+$")
    allowed = {"method", "request_id", "status", "reason", "latency_ms", "image_bytes"}
    allowed |= {"output_bytes", "model", "model_version", "engine"}
    for record in calls:
        line = JsonLines().format(record)
        doc = json.loads(line)
        fields = {k: v for k, v in doc.items() if k not in ("time", "level", "logger", "message")}
        assert set(fields) <= allowed, fields
        for key, value in fields.items():
            assert isinstance(value, int | float) or id_like.match(value), (key, value)
        assert re.fullmatch(
            r"Convert \S+ (OK|INVALID_ARGUMENT \w+) in [\d.]+ ms( \(\S+ v\d+, \S+\))?",
            doc["message"],
        ), doc["message"]
        # No image bytes in any form: the line is short, and no run of the image is in it.
        assert len(line) < 500
        for image in (selfie, wall):
            assert image[100:116].hex() not in line
            assert base64.b64encode(image[100:124]).decode() not in line
    ok, no_face, _ = (r.__dict__ for r in calls)
    assert (ok["status"], ok["model"], ok["model_version"]) == ("OK", "converter", 2)
    assert ok["image_bytes"] == len(selfie)
    assert (no_face["status"], no_face["reason"]) == ("INVALID_ARGUMENT", "no_face")


def test_s2a_convert_writes_files_and_reports_json(
    make_server: ServerFactory, home: Path, tmp_path: Path
) -> None:
    _server, port = make_server(home)
    grey = tmp_path / "wall.png"
    grey.write_bytes(png(np.full((200, 200, 3), 128, np.uint8)))
    out = tmp_path / "out"
    done = run_s2a(
        "convert", str(SELFIE), str(grey), "-o", str(out), "--server", f"127.0.0.1:{port}",
        "--crop", "--json",
        home=tmp_path / "cli-home",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["ok"] for row in rows] == [True, False]
    assert rows[0]["model"]["version"] == 2
    assert decode((out / "london_001_neutral.anime.png").read_bytes()).shape == (32, 32, 3)
    assert (rows[1]["code"], rows[1]["reason"]) == ("INVALID_ARGUMENT", "no_face")
    assert "1 of 2 images failed" in done.stderr


def test_s2a_convert_without_a_server_says_which_address_and_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_s2a(
        "convert", str(SELFIE), "-o", str(out), "--server", "127.0.0.1:1", "--timeout", "5",
        "--json",
        home=tmp_path / "cli-home",
        env={"S2A_SERVING__CLIENT_RETRIES": "0"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["ok"], row["code"], row["reason"]) == (False, "UNAVAILABLE", "unreachable")
    assert row["error"].startswith("no Convert server answered at 127.0.0.1:1 (")
    assert "`s2a serve`" in row["error"]
    assert not out.exists()  # nothing converted, nothing made


# -- health, reflection, shutdown ----------------------------------------------------------


def test_health_goes_serving_with_a_model_and_not_serving_on_shutdown(
    make_server: ServerFactory, empty_home: Path, home: Path
) -> None:
    factory = HeldFactory()
    server, port = make_server(empty_home, engine_factory=factory, wait=False)
    with client_for(port, retries=0) as client:
        assert client.health() == "NOT_SERVING"
        assert client.health("") == "NOT_SERVING"
        refused = failure(lambda: client.convert(SELFIE.read_bytes()))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "unavailable")
        # An empty home: the caller is told a model must be trained first, not to retry.
        assert "no version of converter has been trained and promoted yet" in refused.message
        assert "`s2a models retrain`" in refused.message
        assert failure(client.model_info).message == refused.message

        reloaded = client.reload(home / "models" / "converter" / "1")
        assert reloaded.changed
        assert reloaded.model.version == 1
        assert client.health() == "SERVING"

        # One call in flight, held inside the engine, when shutdown begins.
        engine = factory.engines[-1]
        engine.hold.set()
        answers: queue.Queue[ConvertResult | ConvertFailed] = queue.Queue()

        def in_flight() -> None:
            try:
                answers.put(client.convert(SELFIE.read_bytes(), output="crop"))
            except ConvertFailed as exc:
                answers.put(exc)

        caller = threading.Thread(target=in_flight)
        caller.start()
        assert engine.entered.wait(30)
        server.begin_shutdown()
        assert client.health() == "NOT_SERVING"
        stopping = threading.Thread(target=server.stop, kwargs={"grace_s": 30})
        stopping.start()
        engine.release.set()
        caller.join(30)
        stopping.join(30)
        answer = answers.get(timeout=5)
        assert isinstance(answer, ConvertResult), answer  # drained, not cut off
        assert failure(client.model_info).code == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_the_services(make_server: ServerFactory, home: Path) -> None:
    _server, port = make_server(home)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        found = database.FindFileContainingSymbol(SERVICE)
        assert found.package == "s2a.convert.v1"
        assert {m.name for m in found.service[0].method} == {
            "Convert",
            "ConvertStream",
            "ModelInfo",
            "Reload",
        }


# -- bad input, overload, auth -------------------------------------------------------------


def test_every_bad_input_is_invalid_argument_with_its_reason(
    make_server: ServerFactory, home: Path
) -> None:
    _server, port = make_server(home, max_image_bytes=300_000)
    photo = decode(SELFIE.read_bytes())
    pair = np.hstack([photo, decode((REAL / "london_004_neutral.jpg").read_bytes())])
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 Mpx in a few kB
    noise = np.random.default_rng(0).integers(0, 255, (330, 330, 3), dtype=np.uint8)
    over_limit = png(noise)  # ~330 kB: over the 300 kB image limit, under the message limit
    assert 300_000 < len(over_limit) < 600_000
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    cases = {
        "no_face": (png(np.full((256, 256, 3), 128, np.uint8)), {}, "no face"),
        "animated": (gif.getvalue(), {}, "S2A_LIMITS__MAX_FRAMES"),
        "multiple_faces": (jpeg(pair), {}, "2 faces"),
        "decode_error": (SELFIE.read_bytes()[:3000], {}, "truncated JPEG"),
        "too_large": (bomb.getvalue(), {}, "pixels"),
        "bad_options": (SELFIE.read_bytes(), {"style": "ghibli"}, "serves cel"),
    }
    with client_for(port, retries=0) as client:
        for reason, (data, options, words) in cases.items():
            failed = failure(lambda d=data, o=options: client.convert(d, **o))  # type: ignore[misc]
            assert (failed.code, failed.reason) == (INVALID, reason), failed
            assert words in failed.message, failed.message
        failed = failure(lambda: client.convert(over_limit))
        assert (failed.code, failed.reason) == (INVALID, "too_large")
        assert "at most 300000 (S2A_SERVING__MAX_IMAGE_BYTES)" in failed.message
        failed = failure(lambda: client.convert(b""))
        assert (failed.code, failed.reason) == (INVALID, "decode_error")
        # Past the transport limit (twice the image limit) gRPC itself refuses the message
        # before the handler reads it, with its own words (RELIABILITY.md quotes them).
        huge = b"\0" * 700_000
        failed = failure(lambda: client.convert(huge))
        assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in failed.message, failed.message


def test_a_full_queue_answers_resource_exhausted(make_server: ServerFactory, home: Path) -> None:
    factory = HeldFactory()
    server, port = make_server(home, engine_factory=factory, max_batch_size=1, max_queue=1)
    engine = factory.engines[-1]
    engine.hold.set()
    answers: queue.Queue[object] = queue.Queue()
    with client_for(port, retries=0) as client:

        def call() -> None:
            try:
                answers.put(client.convert(SELFIE.read_bytes(), output="crop"))
            except ConvertFailed as exc:
                answers.put(exc)

        # One call per batch worker in the engine, then one more queued: the queue is full.
        workers = server.batcher.workers
        callers = [threading.Thread(target=call) for _ in range(workers + 1)]
        for caller in callers[:workers]:
            caller.start()
        wait_until(lambda: engine.held == workers, deadline_s=30, what="every worker in a batch")
        callers[-1].start()
        wait_until(lambda: server.batcher.depth == 1, deadline_s=30, what="one image queued")
        failed = failure(lambda: client.convert(SELFIE.read_bytes()))
        assert (failed.code, failed.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        engine.release.set()
        for caller in callers:
            caller.join(30)
    results = [answers.get(timeout=5) for _ in callers]
    assert all(isinstance(r, ConvertResult) for r in results), results


def test_auth_is_enforced(make_server: ServerFactory, home: Path) -> None:
    _server, port = make_server(home, token="s3cret", admin_token="adm1n")
    version_1 = home / "models" / "converter" / "1"
    crop = png(np.full((64, 64, 3), 90, np.uint8))
    for token in (None, "wrong"):
        with client_for(port, retries=0, token=token) as client:
            failed = failure(lambda c=client: c.convert(crop, skip_align=True))  # type: ignore[misc]
            assert failed.code == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in failed.message
            assert client.health() == "SERVING"  # probes need no token
    with client_for(port, retries=0, token="s3cret") as client:
        assert client.convert(crop, skip_align=True).model[1] == 2
        assert failure(lambda: client.reload(version_1)).code == grpc.StatusCode.PERMISSION_DENIED
    with client_for(port, retries=0, token="adm1n") as admin:
        assert admin.reload(version_1).model.version == 1


def test_refuses_to_start_beyond_loopback_without_auth(home: Path, detector: MtcnnDetector) -> None:
    settings = Settings(home=home, serving={"host": "0.0.0.0", "port": 0})
    with pytest.raises(ServingConfigError, match="without authentication"):
        create_server(settings, detector=detector, updates=None)


# -- hot-swap ------------------------------------------------------------------------------


class Callers:
    """``count`` threads converting continuously; each records the versions it saw, in
    order, and every failure. ``seen(v)`` is set once every thread has seen version v."""

    def __init__(self, port: int, count: int = 4) -> None:
        self.port = port
        self.versions: list[list[int]] = [[] for _ in range(count)]
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]
        rng = np.random.default_rng(1)
        self.crops = [png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]

    def _run(self, index: int) -> None:
        with client_for(self.port, retries=0) as client:
            while not self.stop.is_set():
                try:
                    result = client.convert(self.crops[index % 4], skip_align=True)
                except ConvertFailed as exc:
                    self.failures.append(f"{exc.code.name}: {exc.message}")
                    continue
                with self.changed:
                    self.versions[index].append(result.model[1])
                    self.changed.notify_all()

    def wait_all_saw(self, version: int, times: int = 3) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: all(seen.count(version) >= times for seen in self.versions), timeout=60
            )
        assert ok, f"not every caller saw version {version} {times} times: {self.versions}"

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_a_swap_under_load_fails_no_call(make_server: ServerFactory, home: Path) -> None:
    server, port = make_server(home, model_path=home / "models" / "converter" / "1")
    with Callers(port) as callers:
        callers.wait_all_saw(1)
        with client_for(port) as admin:
            swapped = admin.reload(home / "models" / "converter" / "2")
        assert swapped.changed
        assert swapped.model.version == 2
        callers.wait_all_saw(2)
    assert callers.failures == []
    for seen in callers.versions:
        assert seen == sorted(seen), "a caller went back to the old version"
        assert {1, 2} <= set(seen)
    assert server.swapper.failed_swaps == 0


def test_a_corrupt_artifact_never_replaces_the_working_model(
    make_server: ServerFactory, home: Path, tmp_path: Path
) -> None:
    server, port = make_server(home)
    broken = tmp_path / "models" / "converter" / "3"
    shutil.copytree(home / "models" / "converter" / "2", broken)
    corrupt(broken)
    with Callers(port, count=2) as callers, client_for(port, retries=0) as admin:
        callers.wait_all_saw(2, times=2)
        failed = failure(lambda: admin.reload(broken))
        assert failed.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "model.onnx" in failed.message
        assert "SHA-256" in failed.message
        wrong_hash = {"generator.json": "0" * 64}
        failed = failure(
            lambda: admin.reload(home / "models" / "converter" / "1", artifacts=wrong_hash)
        )
        assert "generator.json" in failed.message
        info = admin.model_info()
        assert (info.version, info.failed_swaps) == (2, 2)
        callers.wait_all_saw(2, times=4)  # still answering, on the old version
    assert callers.failures == []
    assert {v for seen in callers.versions for v in seen} == {2}
    assert server.metrics.value("s2a_serving_swaps_total", outcome="failed") == 2


class FanOut:
    """The ``model-updates`` topic in memory: every subscribed server gets every update
    (as each server's own consumer group does on the broker)."""

    def __init__(self) -> None:
        self.queues: list[queue.Queue[ModelUpdate]] = []

    def source(self) -> FanOutSource:
        inbox: queue.Queue[ModelUpdate] = queue.Queue()
        self.queues.append(inbox)
        return FanOutSource(inbox)

    def publish(self, update: ModelUpdate) -> None:
        for inbox in self.queues:
            inbox.put(update)


class FanOutSource:
    def __init__(self, inbox: queue.Queue[ModelUpdate]) -> None:
        self.inbox = inbox

    def run(self, apply: Apply, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                update = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            apply(update)


def _update(version_dir: Path, version: int, action: str = "promote") -> ModelUpdate:
    from serving.version import read_version, sha256_file

    info: ModelVersion = read_version(version_dir, version=version)
    artifacts = {name: sha256_file(version_dir / name) for name in info.files}
    return ModelUpdate(
        name="converter",
        version=version,
        previous_version=None,
        action=action,  # type: ignore[arg-type]
        family="pix2pix-lora",
        snapshot_id="ds-test",
        path=str(version_dir),
        artifacts=artifacts,
        metrics={},
        reason="test",
        actor="test",
        at=datetime.now(UTC),
    )


def test_two_servers_follow_the_updates_and_both_swap(
    make_server: ServerFactory, home: Path, tmp_path: Path
) -> None:
    topic = FanOut()
    first = home / "models" / "converter" / "1"
    servers = [make_server(home, model_path=first, updates=topic.source())[0] for _ in range(2)]

    def versions() -> list[int | None]:
        return [s.holder.current.version.version if s.holder.current else None for s in servers]

    assert versions() == [1, 1]
    topic.publish(_update(home / "models" / "converter" / "2", 2))
    wait_until(lambda: versions() == [2, 2], deadline_s=60, what="both servers on version 2")
    # A broken version is refused by both; a rollback brings both back.
    broken = tmp_path / "models" / "converter" / "3"
    shutil.copytree(home / "models" / "converter" / "2", broken)
    update = _update(broken, 3)
    corrupt(broken)
    topic.publish(update)
    topic.publish(_update(first, 1, action="rollback"))
    wait_until(lambda: versions() == [1, 1], deadline_s=60, what="both servers rolled back to 1")
    assert [s.swapper.failed_swaps for s in servers] == [1, 1]
    for server in servers:
        with client_for(server.port) as client:
            crop = png(np.full((40, 40, 3), 70, np.uint8))
            assert client.convert(crop, skip_align=True).model[1] == 1


@pytest.mark.integration
def test_servers_follow_model_updates_on_the_broker(
    make_server: ServerFactory, home: Path, tmp_path: Path
) -> None:
    """The real topic: two servers, each its own consumer group, both load what the
    registry announces on ``model-updates`` (through the embedded Tansu broker)."""
    import uuid

    from infra.broker import EmbeddedBroker, free_port
    from infra.kafka import RecordPublisher, ensure_topics
    from schemas.model_updates import MODEL_UPDATES_TOPIC

    settings = Settings(
        home=home, broker_port=free_port(), topic_prefix=f"it{uuid.uuid4().hex[:6]}."
    )
    first = home / "models" / "converter" / "1"
    with EmbeddedBroker(settings.broker_host, settings.broker_port, tmp_path / "broker.log"):
        ensure_topics(settings, [MODEL_UPDATES_TOPIC])
        servers = [
            make_server(
                home,
                model_path=first,
                updates=True,
                follow_updates=True,
                server_id=f"replica-{i}",
                broker_port=settings.broker_port,
                topic_prefix=settings.topic_prefix,
            )[0]
            for i in range(2)
        ]
        with RecordPublisher(settings, MODEL_UPDATES_TOPIC) as publisher:
            update = _update(home / "models" / "converter" / "2", 2)
            publisher.publish_raw(update.key(), update.to_bytes())
            publisher.publish_raw(b"converter", b"{not a record")  # skipped, logged
        wait_until(
            lambda: all(
                s.holder.current is not None and s.holder.current.version.version == 2
                for s in servers
            ),
            deadline_s=90,
            what="both servers on version 2 from model-updates",
        )
        for server in servers:
            server.stop(grace_s=5)
