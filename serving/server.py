"""The Convert server: built by :func:`create_server`, run by :func:`serve`.

``create_server(settings)`` returns a :class:`ConvertServer` and its bound port (``port=0``
in the settings binds any free one: tests), nothing started. :meth:`ConvertServer.start`
starts the gRPC server, the batcher, the metrics endpoint, loads the initial model in the
background and follows ``model-updates``. The standard health service
(``grpc.health.v1.Health``) answers NOT_SERVING until a model is loaded and again from the
moment shutdown begins; server reflection lists the Converter, health and reflection.

:meth:`ConvertServer.stop` is graceful: health goes NOT_SERVING, no new call is accepted,
calls in flight get ``grace_s`` to finish (the batcher keeps running for them), then the
batcher stops and the model is unloaded.

With S3 storage (``S2A_STORAGE__BACKEND=s3``) versions come from the artifact store: the
initial model is the newest complete version stored there, and every ``model-updates``
record (and a Reload whose path is not a directory here) is fetched into
``home/cache/models/<name>/<version>/`` and checked against its hashes before it loads
(:func:`serving.version.fetch_version`).

Limits: ``max_receive_message_length`` is twice the image limit plus 64 KiB, the hard cap
on what is read: an image over the limit but under that is answered INVALID_ARGUMENT
(``too_large``) naming its size and the setting (``S2A_SERVING__MAX_IMAGE_BYTES``, else
``S2A_LIMITS__MAX_UPLOAD_BYTES``); a larger message is refused by gRPC itself, before the
handler, with RESOURCE_EXHAUSTED ("Received message larger than max"). Unlimited reading
to answer it in our own words is what the cap is there to prevent.
``maximum_concurrent_rpcs`` caps calls in progress, the batcher's queue caps images
waiting.

Threads (:func:`serving.engines.thread_plan`): with ``S2A_SERVING__INTRA_OP_THREADS``
unset, a server on C cores runs ``min(C, 4)`` batch workers side by side, each on
``C // workers`` intra-op threads, rather than one batch at a time over every core (2
cores: two single-threaded workers, ~25 % less CPU per image). :func:`serve` also sets
PyTorch's threads (the detector's) to that share.

Example::

    server, port = create_server(settings, detector=detector)
    server.start()
    server.wait_until_serving(timeout_s=30)
    ...
    server.stop()
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from functools import partial
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agents.objects import ObjectStore, artifact_store, cache_dir
from agents.stages.detect import FaceDetector, build_detector
from schemas.model_updates import ModelUpdate
from schemas.settings import Settings
from serving.auth import TokenAuth, check_exposure, server_credentials
from serving.batching import MicroBatcher
from serving.engines import (
    Engine,
    EngineFactory,
    available_engines,
    default_factory,
    load_engine,
    thread_plan,
)
from serving.errors import ModelLoadError, ServingConfigError
from serving.metrics import ServingMetrics
from serving.preprocess import Preprocessor, image_limit_setting
from serving.proto import SERVICE
from serving.proto import convert_pb2 as pb
from serving.proto import convert_pb2_grpc as pb_grpc
from serving.service import Conversion, ConvertServicer
from serving.swap import LoadedModel, ModelHolder, Swapper
from serving.updates import KafkaUpdates, UpdateFollower, UpdateSource, consumer_group
from serving.version import (
    ModelVersion,
    fetch_version,
    latest_stored_version,
    latest_version,
)

log = logging.getLogger(__name__)


class ConvertServer:
    """A built Convert server (see the module docstring); ``port`` is the bound one."""

    def __init__(
        self,
        settings: Settings,
        grpc_server: grpc.Server,
        port: int,
        *,
        holder: ModelHolder,
        swapper: Swapper,
        batcher: MicroBatcher,
        health_servicer: health.HealthServicer,
        metrics: ServingMetrics,
        updates: UpdateSource | None,
        conversion: Conversion,
        artifacts: ObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.conversion = conversion  # the RPC-free core, for in-process callers (bench)
        self.artifacts = artifacts
        self.grpc_server = grpc_server
        self.port = port
        self.holder = holder
        self.swapper = swapper
        self.batcher = batcher
        self.health = health_servicer
        self.metrics = metrics
        self.metrics_port: int | None = None
        self.follower = (
            UpdateFollower(updates, settings.serving_model_name, self.apply_update)
            if updates is not None
            else None
        )
        self._serving = threading.Event()
        self._stopped = threading.Event()  # shutting down: health NOT_SERVING, no swaps
        self._closed = threading.Event()  # stop() ran
        self._startup: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.serving.host}:{self.port}"

    def start(self, *, initial_model: Path | None = None) -> None:
        """Start answering; the initial model (``initial_model``, else
        ``serving.model_path``, else the newest complete version of the served model, in
        ``models_dir`` or the artifact store) loads in the background while health says
        NOT_SERVING."""
        serving = self.settings.serving
        self.batcher.start()
        self.grpc_server.start()
        if serving.metrics_port is not None:
            self.metrics_port = self.metrics.serve(serving.metrics_port, serving.host)
        path = initial_model or serving.model_path
        if path is None and self.artifacts is None:
            path = latest_version(self.settings.models_dir, self.settings.serving_model_name)
        if path is None and self.artifacts is None:
            self._none_promoted(str(self.settings.models_dir))
        self._startup = threading.Thread(
            target=self._start_model, args=(path,), name="s2a-startup", daemon=True
        )
        self._startup.start()
        log.info("Convert server listening on %s", self.address)

    def _none_promoted(self, where: str) -> None:
        name = self.settings.serving_model_name
        log.warning(
            "no version of %s in %s yet: NOT_SERVING until one is announced or reloaded",
            name,
            where,
        )
        self.holder.waiting = (
            f"no version of {name} has been trained and promoted yet: run `s2a models "
            "retrain` (or let `s2a up`'s scheduler do it); this server loads the champion "
            "as soon as it is announced"
        )

    def _start_model(self, path: Path | None) -> None:
        """Load the initial model, then follow model-updates: in this order, so that an
        update (a rollback, say) is never overtaken by the initial load."""
        stored = False
        if path is None and self.artifacts is not None:
            path, stored = self._latest_stored(self.artifacts), True
        if path is not None:
            self.holder.waiting = f"the model at {path} is loading; retry shortly"
            try:
                self.reload(path, stored=stored)
            except ModelLoadError as exc:
                # Logged and counted by the swapper; the server waits for an update.
                self.holder.waiting = (
                    f"the model at {path} failed to load ({exc}); this server loads the "
                    "next version announced (`s2a models promote`, or a retrain)"
                )
        if self.follower is not None and not self._stopped.is_set():
            self.follower.start()

    def reload(
        self,
        path: Path,
        *,
        name: str | None = None,
        version: int | None = None,
        artifacts: dict[str, str] | None = None,
        stored: bool = False,
    ) -> tuple[LoadedModel, bool]:
        """Swap to the version at ``path`` (see :class:`~serving.swap.Swapper`).

        With an artifact store, the version is fetched from it first when ``stored`` is
        set or ``path`` is not a directory here; ``name`` and ``version`` default to the
        path's last two parts (``.../<name>/<version>``)."""
        if self._stopped.is_set():
            raise ModelLoadError("the server is shutting down; nothing is loaded any more")
        fetch = None
        if self.artifacts is not None and (stored or not path.is_dir()):
            fetch = partial(self._fetch, self.artifacts, path, name, version, artifacts)
        return self.swapper.load(path, name=name, version=version, artifacts=artifacts, fetch=fetch)

    def apply_update(self, update: ModelUpdate) -> None:
        """A ``model-updates`` record: swap to its version, checking its artifacts (its
        ``path`` is the trainer's: with an artifact store the version is fetched)."""
        self.reload(
            Path(update.path),
            name=update.name,
            version=update.version,
            artifacts=update.artifacts,
            stored=True,
        )

    def _fetch(
        self,
        objects: ObjectStore,
        path: Path,
        name: str | None,
        version: int | None,
        artifacts: Mapping[str, str] | None,
    ) -> Path:
        name = name or path.parent.name
        if version is None:
            if not path.name.isdigit():
                raise ModelLoadError(
                    f"cannot tell the version number of {path}: its name is not a number; "
                    "pass the version explicitly (Reload's version field)"
                )
            version = int(path.name)
        return fetch_version(objects, name, version, cache_dir(self.settings, "models"), artifacts)

    def _latest_stored(self, objects: ObjectStore) -> Path | None:
        """Where the newest complete version in the artifact store goes (None: none)."""
        name = self.settings.serving_model_name
        try:
            version = latest_stored_version(objects, name)
        except ModelLoadError as exc:
            log.error("cannot find a version of %s to start with: %s", name, exc)
            return None
        if version is None:
            self._none_promoted(objects.where)
            return None
        return cache_dir(self.settings, "models") / name / str(version)

    def _on_change(self, model: LoadedModel) -> None:
        if not self._stopped.is_set():
            self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            self.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
            self._serving.set()

    def wait_until_serving(self, timeout_s: float | None = None) -> bool:
        """Block until a model serves (True) or ``timeout_s`` passes (False)."""
        return self._serving.wait(timeout_s)

    def begin_shutdown(self) -> None:
        """Health NOT_SERVING (for good) and no more model updates; calls are still
        answered until :meth:`stop`."""
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self.follower is not None:
            self.follower.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (see the module docstring); safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        grace = self.settings.serving.grace_s if grace_s is None else grace_s
        if not self._stopped.is_set():
            self.begin_shutdown()
            # Load balancers see NOT_SERVING at their next probe; keep answering until then.
            if self.settings.serving.shutdown_delay_s:
                time.sleep(self.settings.serving.shutdown_delay_s)
        self.grpc_server.stop(grace).wait()
        self.batcher.close()
        self.swapper.unload()
        self.metrics.close()
        log.info("Convert server on %s stopped", self.address)

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def create_server(
    settings: Settings,
    *,
    detector: FaceDetector | None = None,
    updates: UpdateSource | bool | None = True,
    engine_factory: EngineFactory | None = None,
    metrics: ServingMetrics | None = None,
) -> tuple[ConvertServer, int]:
    """Build the server from ``settings`` and bind its port; nothing runs until ``start``.

    ``detector``: the face detector (default: ``settings.models``' one, loaded now);
    ``updates``: where model updates come from (True: ``model-updates`` on the configured
    broker when ``serving.follow_updates``; None or False: none; or a source: tests);
    ``engine_factory``: builds engines by kind (default: the real ones).

    Raises :class:`ServingConfigError` when the settings expose the server without
    authentication or the port cannot be bound.
    """
    serving = settings.serving
    check_exposure(serving)
    metrics = metrics or ServingMetrics()
    holder = ModelHolder()
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    threads = thread_plan(serving.intra_op_threads)
    factory = engine_factory or default_factory(int8=serving.int8, threads=threads.threads)

    def loader(version: ModelVersion, *, previous: Engine | None = None) -> Engine:
        return load_engine(
            version,
            serving.engine,
            warmup_runs=serving.warmup_runs,
            factory=factory,
            previous=previous,
        )

    swapper = Swapper(holder, loader, metrics=metrics)
    batcher = MicroBatcher(
        holder,
        max_batch=serving.max_batch_size,
        max_delay_s=serving.max_queue_delay_ms / 1000.0,
        max_queue=serving.max_queue,
        metrics=metrics,
        workers=threads.workers,
    )
    log.info(
        "%d batch workers of %d intra-op threads each on %d cores",
        threads.workers,
        threads.threads,
        threads.cores,
    )
    image_limit = serving.image_limit(settings.limits)
    preprocessor = Preprocessor(
        detector or build_detector(settings.models),
        settings.limits,
        image_limit=image_limit,
        image_limit_setting=image_limit_setting(serving),
        second_face_ratio=settings.quality.second_face_ratio,
        max_output_side=serving.max_output_side,
    )
    conversion = Conversion(preprocessor, batcher, holder)
    servicer = ConvertServicer(
        conversion,
        swapper,
        metrics=metrics,
        default_deadline_s=serving.default_deadline_s,
        stream_window=serving.stream_window,
        engines_available=available_engines(),
    )
    message_limit = serving.message_limit(settings.limits)
    interceptors = []
    token = serving.token.get_secret_value() if serving.token else None
    admin = serving.admin_token.get_secret_value() if serving.admin_token else None
    if token is not None or admin is not None:
        interceptors.append(TokenAuth(token, admin))
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=serving.handler_threads, thread_name_prefix="s2a-rpc"
        ),
        interceptors=interceptors,
        maximum_concurrent_rpcs=serving.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.so_reuseport", 0),  # two servers must never share a port by accident
        ],
    )
    pb_grpc.add_ConverterServicer_to_server(servicer, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["Converter"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        grpc_server,
    )
    address = f"{serving.host}:{serving.port}"
    credentials = server_credentials(serving)
    try:
        if credentials is not None:
            port = grpc_server.add_secure_port(address, credentials)
        else:
            port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServingConfigError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise ServingConfigError(f"cannot listen on {address}: the port is taken or invalid")

    source: UpdateSource | None
    if updates is True:
        server_id = serving.server_id or f"{socket.gethostname()}-{port}"
        source = (
            KafkaUpdates(settings, consumer_group(settings, server_id))
            if serving.follow_updates
            else None
        )
    else:
        source = updates or None
    server = ConvertServer(
        settings,
        grpc_server,
        port,
        holder=holder,
        swapper=swapper,
        batcher=batcher,
        health_servicer=health_servicer,
        metrics=metrics,
        updates=source,
        conversion=conversion,
        artifacts=artifact_store(settings),
    )
    swapper.on_change = server._on_change
    servicer.reloader = server.reload
    return server, port


def serve(
    settings: Settings,
    *,
    initial_model: Path | None = None,
    ready: Callable[[ConvertServer], None] | None = None,
) -> None:
    """Run a server until SIGTERM or Ctrl-C, then stop it gracefully.

    This is the process's entry, so it also sets PyTorch's intra-op threads (one setting
    per process: the detector's, and the torch engine's) to the server's thread plan;
    :func:`create_server` leaves them alone for the processes that embed a server (tests,
    the benchmark)."""
    torch.set_num_threads(thread_plan(settings.serving.intra_op_threads).threads)
    server, _port = create_server(settings)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start(initial_model=initial_model)
        if ready is not None:
            ready(server)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
