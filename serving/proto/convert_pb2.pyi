import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_MODE_UNSPECIFIED: _ClassVar[OutputMode]
    PASTE_BACK: _ClassVar[OutputMode]
    ALIGNED_CROP: _ClassVar[OutputMode]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    PNG: _ClassVar[ImageFormat]
    JPEG: _ClassVar[ImageFormat]
    WEBP: _ClassVar[ImageFormat]
OUTPUT_MODE_UNSPECIFIED: OutputMode
PASTE_BACK: OutputMode
ALIGNED_CROP: OutputMode
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
PNG: ImageFormat
JPEG: ImageFormat
WEBP: ImageFormat

class ConvertOptions(_message.Message):
    __slots__ = ("style", "skip_align", "output", "format", "size", "quality")
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SKIP_ALIGN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    style: str
    skip_align: bool
    output: OutputMode
    format: ImageFormat
    size: int
    quality: int
    def __init__(self, style: _Optional[str] = ..., skip_align: _Optional[bool] = ..., output: _Optional[_Union[OutputMode, str]] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., size: _Optional[int] = ..., quality: _Optional[int] = ...) -> None: ...

class ConvertRequest(_message.Message):
    __slots__ = ("image", "options", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: ConvertOptions
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[ConvertOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "engine")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    engine: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., engine: _Optional[str] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "probability")
    BOX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    box: _containers.RepeatedScalarFieldContainer[float]
    probability: float
    def __init__(self, box: _Optional[_Iterable[float]] = ..., probability: _Optional[float] = ...) -> None: ...

class ConvertResponse(_message.Message):
    __slots__ = ("image", "mime_type", "width", "height", "model", "request_id", "face")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    mime_type: str
    width: int
    height: int
    model: ModelRef
    request_id: str
    face: Face
    def __init__(self, image: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., request_id: _Optional[str] = ..., face: _Optional[_Union[Face, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ConvertStreamResponse(_message.Message):
    __slots__ = ("request_id", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    result: ConvertResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., result: _Optional[_Union[ConvertResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("name", "version", "engine", "family", "resolution", "loaded_at", "path", "styles", "engines_available", "swaps", "failed_swaps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    FAILED_SWAPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    engine: str
    family: str
    resolution: int
    loaded_at: _timestamp_pb2.Timestamp
    path: str
    styles: _containers.RepeatedScalarFieldContainer[str]
    engines_available: _containers.RepeatedScalarFieldContainer[str]
    swaps: int
    failed_swaps: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., engine: _Optional[str] = ..., family: _Optional[str] = ..., resolution: _Optional[int] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., path: _Optional[str] = ..., styles: _Optional[_Iterable[str]] = ..., engines_available: _Optional[_Iterable[str]] = ..., swaps: _Optional[int] = ..., failed_swaps: _Optional[int] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("path", "name", "version", "artifacts")
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    version: int
    artifacts: _containers.ScalarMap[str, str]
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., artifacts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("model", "changed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfoResponse
    changed: bool
    def __init__(self, model: _Optional[_Union[ModelInfoResponse, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...
