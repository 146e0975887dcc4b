"""The Converter service: ``Convert``, ``ConvertStream``, ``ModelInfo`` and ``Reload``.

:class:`Conversion` is the work of one image without gRPC (prepare, batch, finish), so the
benchmark can call it in process; :class:`ConvertServicer` maps it onto the RPCs: errors
become status codes (:func:`serving.errors.status_of`) with the reason in the trailing
metadata key ``s2a-reason``; a stream answers each item with a result or an Error and
stays open. Every call is logged in one line (:func:`log_call`) of ids, its status and
numbers, never pixels, image bytes or the error's text.

Example::

    conversion = Conversion(preprocessor, batcher, holder)
    result = conversion.run(jpeg_bytes, Options(), deadline=time.monotonic() + 5)
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from serving.batching import MicroBatcher
from serving.errors import (
    BAD_OPTIONS,
    DeadlineExpired,
    InvalidRequest,
    ServingError,
    status_of,
)
from serving.metrics import ServingMetrics
from serving.preprocess import Encoded, Options, Preprocessor
from serving.proto import convert_pb2 as pb
from serving.proto import convert_pb2_grpc as pb_grpc
from serving.swap import LoadedModel, ModelHolder, Swapper

log = logging.getLogger(__name__)

REASON_KEY = "s2a-reason"
_FORMATS = {pb.IMAGE_FORMAT_UNSPECIFIED: "png", pb.PNG: "png", pb.JPEG: "jpeg", pb.WEBP: "webp"}


@dataclass(frozen=True, slots=True)
class Converted:
    """One answer: the encoded image and the model that made it."""

    image: Encoded
    model: LoadedModel
    face: tuple[tuple[float, float, float, float], float] | None


class Conversion:
    """Prepare one image, run it in a micro-batch, finish it (the RPC-free core)."""

    def __init__(self, preprocessor: Preprocessor, batcher: MicroBatcher, holder: ModelHolder):
        self.preprocessor = preprocessor
        self.batcher = batcher
        self.holder = holder

    def run(self, data: bytes, options: Options, deadline: float) -> Converted:
        """Raises a :class:`ServingError` for anything but success."""
        self.preprocessor.check_size(data)  # before anything else: no retry will help it
        model = self.holder.current
        if model is None:
            raise self.holder.not_ready()
        self.preprocessor.check_options(options, model.version.styles)
        with self.batcher.coming():
            prepared = self.preprocessor.prepare(data, options, model.version.resolution)
            future = self.batcher.submit(prepared.selfie, prepared.base, deadline)
        output, ran = _wait(future, deadline)
        face = None
        if prepared.face is not None:
            face = (prepared.face.box, prepared.face.prob)
        return Converted(self.preprocessor.finish(prepared, output), ran, face)


def _wait(future: Future[Any], deadline: float) -> Any:
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        raise DeadlineExpired("the call's deadline passed before the model answered") from None


def options_from(message: pb.ConvertOptions) -> Options:
    """The proto's options, checked; ``InvalidRequest(bad_options)`` for unknown enums."""
    if message.format not in _FORMATS:
        raise InvalidRequest(BAD_OPTIONS, f"format {message.format} is not PNG, JPEG or WEBP")
    if message.output not in (pb.OUTPUT_MODE_UNSPECIFIED, pb.PASTE_BACK, pb.ALIGNED_CROP):
        raise InvalidRequest(
            BAD_OPTIONS, f"output {message.output} is not PASTE_BACK or ALIGNED_CROP"
        )
    return Options(
        style=message.style,
        skip_align=message.skip_align,
        paste_back=message.output != pb.ALIGNED_CROP,
        format=_FORMATS[message.format],  # type: ignore[arg-type]
        size=int(message.size),
        quality=int(message.quality) or 90,
    )


def model_ref(model: LoadedModel) -> pb.ModelRef:
    return pb.ModelRef(
        name=model.version.name, version=model.version.version, engine=model.engine.name
    )


class ConvertServicer(pb_grpc.ConverterServicer):
    """The RPCs (see the module docstring). ``reload`` is the server's swap entry point;
    ``info`` extra fields for ModelInfo (engines available, swap counts)."""

    def __init__(
        self,
        conversion: Conversion,
        swapper: Swapper,
        *,
        metrics: ServingMetrics,
        default_deadline_s: float,
        stream_window: int,
        engines_available: list[str],
        reload: Callable[..., tuple[LoadedModel, bool]] | None = None,
    ) -> None:
        self.conversion = conversion
        self.swapper = swapper
        self.metrics = metrics
        self.default_deadline_s = default_deadline_s
        self.stream_window = stream_window
        self.engines_available = engines_available
        self.reloader = reload or swapper.load

    # -- Convert ---------------------------------------------------------------------------

    def Convert(
        self, request: pb.ConvertRequest, context: grpc.ServicerContext
    ) -> pb.ConvertResponse:
        began = time.perf_counter()
        request_id = request.request_id or uuid.uuid4().hex[:16]
        try:
            response = self._convert(request, request_id, self._deadline(context))
        except Exception as exc:
            code, reason, message = self._failed("Convert", request_id, exc, began, request)
            context.set_trailing_metadata(((REASON_KEY, reason),))
            context.abort(code, message)
        self._answered("Convert", grpc.StatusCode.OK, began)
        log_call("Convert", request_id, grpc.StatusCode.OK, "", began, request, response)
        return response

    def _convert(
        self, request: pb.ConvertRequest, request_id: str, deadline: float
    ) -> pb.ConvertResponse:
        converted = self.conversion.run(request.image, options_from(request.options), deadline)
        face = None
        if converted.face is not None:
            box, prob = converted.face
            face = pb.Face(box=list(box), probability=prob)
        return pb.ConvertResponse(
            image=converted.image.data,
            mime_type=converted.image.mime_type,
            width=converted.image.width,
            height=converted.image.height,
            model=model_ref(converted.model),
            request_id=request_id,
            face=face,
        )

    # -- ConvertStream ---------------------------------------------------------------------

    def ConvertStream(
        self, request_iterator: Iterable[pb.ConvertRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ConvertStreamResponse]:
        """Answers in request order. A reader thread takes requests as they come and
        converts up to ``stream_window`` at once, so a client that sends everything first
        and one that waits for each answer are both served."""
        deadline = self._deadline(context)
        pending: queue.Queue[Future[pb.ConvertStreamResponse] | None] = queue.Queue()
        window = threading.Semaphore(self.stream_window)
        stopped = threading.Event()

        def one(request: pb.ConvertRequest, future: Future[pb.ConvertStreamResponse]) -> None:
            began = time.perf_counter()
            request_id = request.request_id or uuid.uuid4().hex[:16]
            try:
                result = self._convert(request, request_id, deadline)
                self._answered("ConvertStream", grpc.StatusCode.OK, began)
                log_call(
                    "ConvertStream", request_id, grpc.StatusCode.OK, "", began, request, result
                )
                future.set_result(pb.ConvertStreamResponse(request_id=request_id, result=result))
            except Exception as exc:
                code, reason, message = self._failed(
                    "ConvertStream", request_id, exc, began, request
                )
                error = pb.Error(code=code.value[0], reason=reason, message=message)
                future.set_result(pb.ConvertStreamResponse(request_id=request_id, error=error))

        def read() -> None:
            try:
                for request in request_iterator:
                    window.acquire()
                    if stopped.is_set():
                        return
                    future: Future[pb.ConvertStreamResponse] = Future()
                    pending.put(future)
                    threading.Thread(target=one, args=(request, future), daemon=True).start()
            except Exception as exc:  # the client cancelled or broke the stream
                log.debug("ConvertStream reader ended: %s", exc)
            finally:
                pending.put(None)

        threading.Thread(target=read, name="s2a-stream-reader", daemon=True).start()
        try:
            while (future := pending.get()) is not None:
                response = future.result()
                window.release()
                yield response
        finally:
            stopped.set()
            window.release()

    # -- ModelInfo and Reload --------------------------------------------------------------

    def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfoResponse:
        model = self.swapper.holder.current
        if model is None:
            context.set_trailing_metadata(((REASON_KEY, "unavailable"),))
            context.abort(grpc.StatusCode.UNAVAILABLE, self.swapper.holder.waiting)
            raise AssertionError("context.abort raises")  # for the type checker
        return self.info(model)

    def info(self, model: LoadedModel) -> pb.ModelInfoResponse:
        loaded = Timestamp()
        loaded.FromDatetime(model.loaded_at)
        return pb.ModelInfoResponse(
            name=model.version.name,
            version=model.version.version,
            engine=model.engine.name,
            family=model.version.family,
            resolution=model.version.resolution,
            loaded_at=loaded,
            path=str(model.version.path),
            styles=list(model.version.styles),
            engines_available=self.engines_available,
            swaps=self.swapper.swaps,
            failed_swaps=self.swapper.failed_swaps,
        )

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:
        began = time.perf_counter()
        if not request.path:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "path is empty: give a version directory"
            )
        try:
            model, changed = self.reloader(
                Path(request.path),
                name=request.name or None,
                version=request.version or None,
                artifacts=dict(request.artifacts) or None,
            )
        except ServingError as exc:
            code, reason, message = self._failed("Reload", "-", exc, began)
            log.warning("Reload of %s refused: %s", request.path, message)
            context.set_trailing_metadata(((REASON_KEY, reason),))
            context.abort(code, message)
        self._answered("Reload", grpc.StatusCode.OK, began)
        log_call("Reload", "-", grpc.StatusCode.OK, "", began)
        return pb.ReloadResponse(model=self.info(model), changed=changed)

    # -- shared ----------------------------------------------------------------------------

    def _deadline(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > self.default_deadline_s:
            remaining = self.default_deadline_s
        return time.monotonic() + remaining

    def _answered(self, method: str, code: grpc.StatusCode, began: float) -> None:
        self.metrics.requests.labels(method=method, code=code.name).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - began)

    def _failed(
        self,
        method: str,
        request_id: str,
        exc: BaseException,
        began: float,
        request: pb.ConvertRequest | None = None,
    ) -> tuple[grpc.StatusCode, str, str]:
        code, reason, message = status_of(exc)
        self._answered(method, code, began)
        if not isinstance(exc, ServingError):  # a bug: its traceback, under the request id
            log.error("%s %s failed", method, _loggable(request_id), exc_info=exc)
        log_call(method, request_id, code, reason, began, request)
        return code, reason, message


def _loggable(request_id: str) -> str:
    """The client's request id as logged: at most 64 characters of ``[A-Za-z0-9._:-]``
    (anything else becomes ``_``), so a log line stays one line."""
    return _UNSAFE_ID.sub("_", request_id[:64]) or "-"


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


def log_call(
    method: str,
    request_id: str,
    code: grpc.StatusCode,
    reason: str,
    began: float,
    request: pb.ConvertRequest | None = None,
    response: pb.ConvertResponse | None = None,
) -> None:
    """The one log line of a call: ids, the status and numbers only (never pixels, image
    bytes or the error's text, which may quote the input: the caller has it).

    Its fields (the JSON log format writes each; text shows them in the message):
    ``method``, ``request_id``, ``status``, ``reason`` (failures), ``latency_ms``,
    ``image_bytes`` and, on success, ``output_bytes``, ``model``, ``model_version``,
    ``engine``."""
    fields: dict[str, Any] = {
        "method": method,
        "request_id": _loggable(request_id),
        "status": code.name,
        "latency_ms": round((time.perf_counter() - began) * 1000, 1),
    }
    if reason:
        fields["reason"] = reason
    if request is not None:
        fields["image_bytes"] = len(request.image)
    if response is not None:
        fields |= {
            "output_bytes": len(response.image),
            "model": response.model.name,
            "model_version": response.model.version,
            "engine": response.model.engine,
        }
    model = (
        f" ({fields['model']} v{fields['model_version']}, {fields['engine']})"
        if response is not None
        else ""
    )
    log.info(
        "%s %s %s%s in %.1f ms%s",
        method,
        fields["request_id"],
        code.name,
        f" {reason}" if reason else "",
        fields["latency_ms"],
        model,
        extra=fields,
    )
