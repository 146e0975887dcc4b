"""A Python client of the Convert service: deadlines on every call, retries on UNAVAILABLE.

UNAVAILABLE means the server had no model yet, was shutting down or could not be reached:
the same call is retried (exponential backoff with jitter, at most ``retries`` times, never
past the call's deadline). Every other failure raises :class:`~serving.errors.ConvertFailed`
at once with the status, the server's reason code and its message.

Example::

    with ConvertClient("127.0.0.1:8480", token="s3cret") as client:
        result = client.convert(Path("selfie.jpg").read_bytes(), timeout_s=10)
        Path("anime.png").write_bytes(result.image)
        result.model                  # ('converter', 7, 'onnxruntime-cpu')
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.errors import ConvertFailed
from serving.proto import SERVICE
from serving.proto import convert_pb2 as pb
from serving.proto import convert_pb2_grpc as pb_grpc

T = TypeVar("T")
REASON_KEY = "s2a-reason"
_FORMATS = {"png": pb.PNG, "jpeg": pb.JPEG, "webp": pb.WEBP}


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """One converted image: encoded bytes, their type and size in px, and the model."""

    image: bytes
    mime_type: str
    width: int
    height: int
    model: tuple[str, int, str]
    request_id: str

    def as_dict(self) -> dict[str, Any]:
        name, version, engine = self.model
        return {
            "mime_type": self.mime_type,
            "width": self.width,
            "height": self.height,
            "model": {"name": name, "version": version, "engine": engine},
            "request_id": self.request_id,
        }


def _result(response: pb.ConvertResponse) -> ConvertResult:
    return ConvertResult(
        image=response.image,
        mime_type=response.mime_type,
        width=response.width,
        height=response.height,
        model=(response.model.name, response.model.version, response.model.engine),
        request_id=response.request_id,
    )


def request(
    image: bytes,
    *,
    output: Literal["paste", "crop"] = "paste",
    format: Literal["png", "jpeg", "webp"] = "png",
    size: int = 0,
    skip_align: bool = False,
    style: str = "",
    quality: int = 0,
    request_id: str = "",
) -> pb.ConvertRequest:
    """A ConvertRequest with the given options (see ``schemas/convert.proto``)."""
    return pb.ConvertRequest(
        image=image,
        request_id=request_id,
        options=pb.ConvertOptions(
            style=style,
            skip_align=skip_align,
            output=pb.ALIGNED_CROP if output == "crop" else pb.PASTE_BACK,
            format=_FORMATS[format],
            size=size,
            quality=quality,
        ),
    )


class ConvertClient:
    """A channel to one server (see the module docstring).

    ``token``: the bearer token; ``tls_ca`` (PEM path) switches to TLS, with
    ``client_cert``/``client_key`` for mutual TLS. ``max_message_bytes`` must be at least
    the server's answers (a pasted-back PNG of a large photo is a few MB).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        retries: int = 4,
        backoff_s: float = 0.1,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.address = address
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
            )
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.stub = pb_grpc.ConverterStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def convert(
        self, image: bytes, *, timeout_s: float | None = None, **options: Any
    ) -> ConvertResult:
        """Convert one image (options as :func:`request`); raises :class:`ConvertFailed`."""
        message = request(image, **options)
        return _result(self._call(self.stub.Convert, message, timeout_s))

    def convert_many(
        self, images: Iterable[bytes], *, timeout_s: float | None = None, **options: Any
    ) -> Iterator[ConvertResult | ConvertFailed]:
        """Convert over one ConvertStream; yields a result or the error of each image, in
        order. Not retried (a stream may have half-succeeded); ``timeout_s`` bounds it all."""
        requests = (request(image, request_id=str(i), **options) for i, image in enumerate(images))
        try:
            for answer in self.stub.ConvertStream(
                requests, timeout=timeout_s or self.timeout_s, metadata=self.metadata
            ):
                if answer.HasField("error"):
                    error = answer.error
                    yield ConvertFailed(
                        grpc.StatusCode(_code(error.code)), error.reason, error.message
                    )
                else:
                    yield _result(answer.result)
        except grpc.RpcError as exc:
            raise _failed(exc, self.address) from None

    def model_info(self, *, timeout_s: float | None = None) -> pb.ModelInfoResponse:
        return self._call(self.stub.ModelInfo, pb.ModelInfoRequest(), timeout_s)

    def reload(
        self,
        path: Path | str,
        *,
        version: int = 0,
        name: str = "",
        artifacts: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> pb.ReloadResponse:
        message = pb.ReloadRequest(
            path=str(path), name=name, version=version, artifacts=artifacts or {}
        )
        return self._call(self.stub.Reload, message, timeout_s)

    def health(self, service: str = SERVICE, *, timeout_s: float = 5.0) -> str:
        """``SERVING``, ``NOT_SERVING`` or ``SERVICE_UNKNOWN`` (no retry)."""
        try:
            answer = self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise _failed(exc, self.address) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def _call(self, method: Callable[..., T], message: Any, timeout_s: float | None) -> T:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                return method(message, timeout=max(left, 0.001), metadata=self.metadata)
            except grpc.RpcError as exc:
                failed = _failed(exc, self.address)
                pause = self.backoff_s * 2**attempt * (0.5 + random.random())
                if (
                    failed.code != grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.retries
                    or time.monotonic() + pause >= deadline
                ):
                    raise failed from None
                attempt += 1
                time.sleep(pause)  # backoff between retries, not synchronisation

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ConvertClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


def _failed(exc: grpc.RpcError, address: str) -> ConvertFailed:
    """The call's failure with the server's reason code; an UNAVAILABLE without one did
    not come from the Convert service (it always sends its reason), so the message says
    which address did not answer and what to do (reason ``unreachable``)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = str((exc.details() if hasattr(exc, "details") else str(exc)) or code.name)
    reason = ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = str(value)
    if not reason and code == grpc.StatusCode.UNAVAILABLE:
        return ConvertFailed(
            code,
            "unreachable",
            f"no Convert server answered at {address} ({details}): is `s2a serve` (or "
            "`s2a up`) running there? `s2a convert --server HOST:PORT` names another",
        )
    return ConvertFailed(code, reason or code.name.lower(), details)
