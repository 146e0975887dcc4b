"""Every error :mod:`serving` raises, drawn once, with the gRPC status each is answered with.

    ServingError
     ├── InvalidRequest (ValueError)             INVALID_ARGUMENT: the image or options
     │                                           are unusable; ``reason`` says which
     │                                           (decode_error, too_large, animated,
     │                                           no_face, multiple_faces, bad_pose,
     │                                           bad_options)
     ├── Overloaded (RuntimeError) [retry]       RESOURCE_EXHAUSTED: the batching queue is
     │                                           full; retry with backoff
     ├── NotReady (RuntimeError) [retry]         UNAVAILABLE: no model loaded yet, or the
     │                                           server is shutting down
     ├── DeadlineExpired (TimeoutError)          DEADLINE_EXCEEDED: the call's deadline
     │                                           passed before its batch ran
     ├── InferenceFailed (RuntimeError)          INTERNAL: the engine failed on this image
     ├── ModelLoadError (RuntimeError)           a version directory cannot be served: a
     │    │                                      missing or unreadable file, a failed load
     │    │                                      or warm-up; the old model keeps serving
     │    ├── ArtifactMismatch (ValueError)      a file's SHA-256 differs from the one the
     │    │                                      update or export.json gives
     │    └── EngineUnavailable                  the engine asked for cannot run here
     │                                           (no tensorrt module, no GPU, no file)
     ├── ServingConfigError (ValueError)         settings the server refuses to start with
     │                                           (no token or mTLS off loopback, a missing
     │                                           certificate file)
     └── ConvertFailed                           the client's view of a failed call: the
                                                 gRPC ``code``, ``reason`` and message

``[retry]`` errors also subclass :class:`~schemas.errors.Transient`: the same call may
succeed later, unchanged. :func:`status_of` maps an error to the status answered.
"""

from __future__ import annotations

from typing import Final

import grpc

from schemas.errors import Transient

# Reason codes of INVALID_ARGUMENT answers (Error.reason on a stream, the details' prefix).
DECODE_ERROR: Final = "decode_error"
TOO_LARGE: Final = "too_large"
ANIMATED: Final = "animated"  # more frames than S2A_LIMITS__MAX_FRAMES: send one still photo
NO_FACE: Final = "no_face"
MULTIPLE_FACES: Final = "multiple_faces"
BAD_POSE: Final = "bad_pose"
BAD_OPTIONS: Final = "bad_options"


class ServingError(Exception):
    """Base class for every error raised by :mod:`serving`."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"


class InvalidRequest(ServingError, ValueError):
    """The request cannot be converted; ``reason`` is one of the reason codes above.

    Example::

        raise InvalidRequest(NO_FACE, "no face found in the image; send a photo with one face")
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Overloaded(ServingError, Transient, RuntimeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "overloaded"


class NotReady(ServingError, Transient, RuntimeError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class DeadlineExpired(ServingError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline"


class InferenceFailed(ServingError, RuntimeError):
    code = grpc.StatusCode.INTERNAL
    reason = "internal"


class ModelLoadError(ServingError, RuntimeError):
    """A version cannot be loaded or warmed up; the message names the directory and file."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "load_failed"


class ArtifactMismatch(ModelLoadError, ValueError):
    """A file of a version directory does not hash to what was announced."""


class EngineUnavailable(ModelLoadError):
    """The engine asked for cannot run on this machine; the message says what is missing."""


class ServingConfigError(ServingError, ValueError):
    """Settings the server will not start with; the message names the setting to change."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "config"


class ConvertFailed(ServingError):
    """A call the client gave up on: the server's (or the transport's) status.

    Example::

        except ConvertFailed as exc:
            exc.code            # grpc.StatusCode.INVALID_ARGUMENT
            exc.reason          # 'no_face'
    """

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """``(status code, reason, message)`` to answer ``error`` with.

    The message of an error the server did not foresee is not the exception's text (it may
    hold paths or internals): it says to look up the request id in the server's log.
    """
    if isinstance(error, InvalidRequest):
        return error.code, error.reason, error.message
    if isinstance(error, ServingError):
        return error.code, error.reason, str(error)
    return grpc.StatusCode.INTERNAL, "internal", "internal error; the server log has details"
