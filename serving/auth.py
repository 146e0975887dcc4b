"""Who may call: a bearer token in the call's metadata, or mutual TLS; and the rule that a
server reachable from other machines has one of them.

Clients send ``authorization: Bearer <token>``. The health service answers without it
(load balancers and Kubernetes probes carry no token); every other method, reflection
included, needs it. ``Reload`` needs the admin token when one is set. Tokens are compared
in constant time and never logged.

Example::

    check_exposure(settings.serving)                 # ServingConfigError off loopback, no auth
    interceptor = TokenAuth(token="s3cret", admin_token=None)
    grpc.server(pool, interceptors=[interceptor])
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from schemas.settings import ServingSettings
from serving.errors import ServingConfigError

HEALTH_PREFIX = "/grpc.health.v1.Health/"
RELOAD_METHOD = "/s2a.convert.v1.Converter/Reload"
METADATA_KEY = "authorization"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or 0.0.0.0 / [::] spelled otherwise: assume exposed


def check_exposure(settings: ServingSettings) -> None:
    """Raise :class:`ServingConfigError` when the server would listen beyond loopback with
    neither a token nor mutual TLS, or when a TLS file is missing."""
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            raise ServingConfigError(
                f"serving.{name} = {path} is not a file (S2A_SERVING__{name.upper()})"
            )
    if is_loopback(settings.host) or settings.token is not None or settings.mutual_tls:
        return
    raise ServingConfigError(
        f"refusing to listen on {settings.host} without authentication: set a bearer token "
        "(S2A_SERVING__TOKEN) or mutual TLS (S2A_SERVING__TLS_CERT, __TLS_KEY and "
        "__TLS_CLIENT_CA), or listen on 127.0.0.1"
    )


def server_credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """TLS credentials (mutual when ``tls_client_ca`` is set), or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _matches(sent: str | None, token: str) -> bool:
    expected = f"Bearer {token}"
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without the bearer token (UNAUTHENTICATED); when an admin token is
    set, Reload needs it instead (PERMISSION_DENIED otherwise). ``token`` None: any caller
    passes (loopback or mutual TLS); the admin check still applies."""

    def __init__(self, token: str | None, admin_token: str | None = None) -> None:
        self.token = token
        self.admin_token = admin_token

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        sent = metadata.get(METADATA_KEY)
        sent = sent if isinstance(sent, str) else None
        if method == RELOAD_METHOD and self.admin_token is not None:
            # Reload is judged by the admin token alone: the client token is not enough.
            if not _matches(sent, self.admin_token):
                return _refusal(
                    continuation(handler_call_details),
                    grpc.StatusCode.PERMISSION_DENIED,
                    "Reload needs the admin token (S2A_SERVING__ADMIN_TOKEN) as the bearer token",
                )
        elif self.token is not None and not _matches(sent, self.token):
            return _refusal(
                continuation(handler_call_details),
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
            )
        return continuation(handler_call_details)


def _refusal(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as ``handler`` that aborts with ``code``."""
    if handler is None:
        return None

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    kind: Callable[..., grpc.RpcMethodHandler]
    if handler.request_streaming and handler.response_streaming:
        kind = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        kind = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        kind = grpc.unary_stream_rpc_method_handler
    else:
        kind = grpc.unary_unary_rpc_method_handler
    return kind(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
