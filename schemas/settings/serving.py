"""Settings of the Convert gRPC server and its client (``serving``): address, tokens
and TLS, the engine, batching and queue limits, shutdown and model updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from schemas.settings.base import Group
from schemas.settings.ingest import LimitSettings


class ServingSettings(Group):
    """The Convert gRPC server (``s2a serve``) and its client (``s2a convert``).

    Security: on any address other than loopback the server refuses to start without a
    bearer ``token`` or mutual TLS (``tls_cert`` + ``tls_key`` + ``tls_client_ca``).
    Throughput: requests wait at most ``max_queue_delay_ms`` to share a batch of up to
    ``max_batch_size``; past ``max_queue`` waiting images the server answers
    RESOURCE_EXHAUSTED instead of queueing without bound.
    """

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8480, ge=0, le=65535, description="listen port; 0 = any free port")
    token: SecretStr | None = Field(
        None, description="bearer token clients send as 'authorization: Bearer <token>'"
    )
    admin_token: SecretStr | None = Field(
        None, description="token the Reload call needs; unset = the client token (or none)"
    )
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) client certificates must chain to: mutual TLS"
    )
    model_name: str | None = Field(
        None, description="registry name served; unset = train.model_name"
    )
    model_path: Path | None = Field(
        None,
        description="version directory loaded at start; unset = the highest-numbered "
        "complete version (with export.json) under home/models/<model_name>/",
    )
    engine: Literal["auto", "tensorrt", "onnxruntime", "torch"] = Field(
        "auto", description="auto = the best available: TensorRT, ONNX Runtime, PyTorch"
    )
    int8: bool = Field(
        False, description="run model.int8.onnx where the version has one (ONNX Runtime)"
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="engine threads per inference worker; unset = the thread plan "
        "(min(cores, 4) workers side by side, cores // workers threads each); 2 on 2 cores "
        "gives one worker of two threads (lowest latency for a lone caller)",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="images run together")
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="longest wait for a batch to fill"
    )
    max_queue: int = Field(
        64, ge=1, description="images waiting for a batch; more = RESOURCE_EXHAUSTED"
    )
    max_concurrent_rpcs: int = Field(
        128, ge=1, description="calls in progress; gRPC answers RESOURCE_EXHAUSTED past it"
    )
    handler_threads: int = Field(16, ge=1, description="threads decoding and detecting")
    max_image_bytes: int | None = Field(
        None, gt=0, description="largest image in a request; unset = limits.max_upload_bytes"
    )
    max_output_side: int = Field(4096, ge=16, le=16384, description="largest size option")
    default_deadline_s: float = Field(30.0, gt=0, description="deadline of a call that sets none")
    grace_s: float = Field(10.0, ge=0, description="how long shutdown lets in-flight calls finish")
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="seconds between health NOT_SERVING and closing the port on shutdown, "
        "for load balancers to stop sending (Kubernetes: about the probe period)",
    )
    stream_window: int = Field(
        16, ge=1, description="images of one ConvertStream in the server at once"
    )
    warmup_runs: int = Field(2, ge=1, description="inferences a new model runs before a swap")
    follow_updates: bool = Field(
        True, description="load each model-updates record for model_name as it arrives"
    )
    server_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="names this server's own model-updates consumer group "
        "(<prefix>serve-<server_id>); unset = hostname and port",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = not served"
    )
    server_address: str = Field(
        "127.0.0.1:8480", description="where `s2a convert` sends requests (host:port)"
    )
    client_retries: int = Field(4, ge=0, description="client retries on UNAVAILABLE")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls and self.tls_client_ca is not None

    def image_limit(self, limits: LimitSettings) -> int:
        """The largest image, in bytes, a request may carry."""
        return self.max_image_bytes or limits.max_upload_bytes

    def message_limit(self, limits: LimitSettings) -> int:
        """gRPC's max message size: twice the image limit plus room for the options, so
        that an image a little over the limit still arrives and is answered
        INVALID_ARGUMENT naming its size; only far larger messages are cut by gRPC."""
        return 2 * self.image_limit(limits) + 64 * 1024
