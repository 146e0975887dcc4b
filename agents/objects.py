"""The object store: named bytes in a local folder or an S3-compatible bucket.

Blobs (:class:`agents.stores.blobs.BlobStore`) and model version directories
(:class:`trainer.registry.Registry`, :func:`serving.version.fetch_version`) are kept
through this one seam, so ``S2A_STORAGE__BACKEND`` moves both off one disk at once. A key
is a relative POSIX path (``ab/cd/<sha256>.png``, ``converter/7/model.onnx``); no part may
be empty, ``..`` or start with a dot (names starting with a dot are temporary files).

Two stores keep the same contract, checked by the same tests against a folder and a real S3
API (``tests/integration/test_object_stores.py``):

- :class:`LocalObjects`: files under a folder, each written to a hidden temporary file and
  renamed into place, so a reader never sees half an object;
- :class:`S3Objects`: objects under a key prefix of a bucket, through boto3 (an S3 PUT is
  atomic too: an object appears whole or not at all).

Failures raise :class:`~agents.errors.StorageError` naming the key and the folder or
bucket; a key with nothing under it raises :class:`~agents.errors.ObjectMissing`, a
``FileNotFoundError``, as a missing file did. Serving reads model artifacts through this
module, and may: it is outside ``agents.stores``, which serving never imports.

Example::

    objects = open_objects(settings, "models")   # LocalObjects(home/models) or S3Objects
    objects.put("converter/7/config.json", b"{}")
    objects.list_keys("converter/7/")            # ['converter/7/config.json']
    objects.get("converter/7/config.json")       # b'{}'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from agents.errors import ObjectMissing, StorageError
from schemas.errors import ConfigError
from schemas.settings import Settings, StorageSettings

Area = Literal["blobs", "models"]
"""What an object store holds: aligned crops and images, or model version directories."""

#: S3 error codes that mean "nothing under this key" (GET says NoSuchKey, HEAD only 404).
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


@runtime_checkable
class ObjectStore(Protocol):
    """Named bytes (see the module docstring); ``where`` names the folder or bucket in
    messages."""

    @property
    def where(self) -> str: ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing what was there."""

    def put_file(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key`` (streamed: model files may be large)."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectMissing` when there are none."""

    def get_file(self, key: str, target: Path) -> None:
        """Write the object under ``key`` to the file ``target`` (atomically, parents made)."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; False when nothing was there (deleting twice is fine)."""

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""


def check_key(key: str) -> str:
    """``key`` when it is a valid relative key; :class:`StorageError` names it otherwise."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p[0] == "." for p in parts):
        raise StorageError(
            f"object key {key!r} is not a relative path of plain names (no empty part, "
            "'..' or leading dot)"
        )
    return key


class LocalObjects:
    """Objects as files under ``root`` (the embedded default: no copy, no service).

    Example::

        objects = LocalObjects(settings.home / "blobs")
        objects.put("ab/cd/abcd.png", data)      # root/ab/cd/abcd.png
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def where(self) -> str:
        return f"folder {self.root}"

    def path(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        try:
            with _atomic(target) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot write {key} under {self.root}: {exc}") from exc

    def put_file(self, key: str, source: Path) -> None:
        target = self.path(key)
        try:
            if target.exists() and target.samefile(source):
                return  # the version directory is the store's own folder: nothing to copy
            with _atomic(target) as tmp:
                shutil.copyfile(source, tmp)
        except OSError as exc:
            raise StorageError(f"cannot copy {source} to {key} under {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(key, self.where) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} under {self.root}: {exc}") from exc

    def get_file(self, key: str, target: Path) -> None:
        source = self.path(key)
        try:
            with _atomic(target) as tmp:
                shutil.copyfile(source, tmp)
        except FileNotFoundError:
            if not source.is_file():
                raise ObjectMissing(key, self.where) from None
            raise StorageError(f"cannot copy {key} under {self.root} to {target}") from None
        except OSError as exc:
            raise StorageError(f"cannot copy {key} under {self.root} to {target}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot delete {key} under {self.root}: {exc}") from exc
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        # Walk only the folder the prefix names (``ab/cd/`` of a blob, ``name/7/`` of a
        # version), not the whole store.
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        try:
            found = [
                path.relative_to(self.root).as_posix()
                for path in folder.rglob("*")
                if path.is_file()
                and not any(part.startswith(".") for part in path.relative_to(self.root).parts)
            ]
        except OSError as exc:
            raise StorageError(f"cannot list {prefix!r} under {self.root}: {exc}") from exc
        return sorted(key for key in found if key.startswith(prefix))


class S3Objects:
    """Objects under ``prefix`` of ``bucket`` in an S3-compatible store, through a boto3
    S3 ``client`` (thread-safe; :func:`s3_client` builds one from the settings).

    Example::

        objects = S3Objects(s3_client(settings.storage), "s2a-prod", "eu/blobs/")
        objects.put("ab/cd/abcd.png", data)      # s3://s2a-prod/eu/blobs/ab/cd/abcd.png
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = _folder(prefix)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, source: Path) -> None:
        # upload_file streams in parts above 8 MiB; the object appears once all are in.
        with self._errors("upload", key):
            self.client.upload_file(str(source), self.bucket, self._key(key))

    def get(self, key: str) -> bytes:
        with self._errors("read", key):
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = answer["Body"].read()
            return data

    def get_file(self, key: str, target: Path) -> None:
        with self._errors("download", key), _atomic(target) as tmp:
            self.client.download_file(self.bucket, self._key(key), str(tmp))

    def exists(self, key: str) -> bool:
        try:
            with self._errors("look up", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str) -> bool:
        # S3 deletes without saying whether anything was there: ask first.
        existed = self.exists(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return existed

    def list_keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        with self._errors("list", prefix or "(all)"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", ())]
        return sorted(found)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """boto3's errors as ours: ObjectMissing for a missing key, else StorageError with
        the key, the bucket and what to check."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ObjectMissing(key, self.where) from None
            hint = (
                f"create bucket {self.bucket!r} or fix S2A_STORAGE__S3_BUCKET"
                if code == "NoSuchBucket"
                else "check the credentials and S2A_STORAGE__S3_* settings"
            )
            raise StorageError(f"cannot {action} {key} in {self.where}: {exc}; {hint}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(
                f"cannot {action} {key} in {self.where}: {exc}; is the S3 endpoint reachable "
                "and are credentials set (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)?"
            ) from exc
        except OSError as exc:  # the local side of an upload or download
            raise StorageError(f"cannot {action} {key} in {self.where}: {exc}") from exc


def s3_client(storage: StorageSettings) -> Any:
    """A boto3 S3 client for ``storage``: its endpoint and region; credentials from
    boto3's standard chain. Path-style addressing with an endpoint (MinIO and test servers
    have no per-bucket host names); retries in boto3's standard mode."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if storage.s3_endpoint else {},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=storage.s3_endpoint, region_name=storage.s3_region, config=config
    )


def open_objects(settings: Settings, area: Area, *, client: Any = None) -> ObjectStore:
    """The store of ``area`` as the settings choose: ``home/<area>`` with the local
    backend; ``<s3_prefix>/<area>/`` of the bucket with s3 (``client``: an S3 client to
    share, default a new one from the settings)."""
    storage = settings.storage
    if storage.backend == "local":
        return LocalObjects(settings.blob_dir if area == "blobs" else settings.models_dir)
    if not storage.s3_bucket:  # the settings refuse this; a hand-built group may not
        raise ConfigError("storage.backend is s3 but no bucket is set: S2A_STORAGE__S3_BUCKET")
    return S3Objects(
        client if client is not None else s3_client(storage),
        storage.s3_bucket,
        _folder(storage.s3_prefix) + area,
    )


def artifact_store(settings: Settings) -> ObjectStore | None:
    """Where model version directories are copied to and fetched from: None with the
    local backend (``home/models`` is the only copy, as always), the bucket with s3."""
    return None if settings.storage.backend == "local" else open_objects(settings, "models")


def cache_dir(settings: Settings, area: Area) -> Path:
    """This machine's copies of remote objects of ``area``: ``home/cache/<area>``."""
    return settings.home / "cache" / area


def _folder(prefix: str) -> str:
    """``prefix`` as a key folder: no leading slash, one trailing slash (or empty)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A hidden temporary file beside ``target``, renamed onto it when the block ends
    without error (and removed when it fails): a crash leaves at worst a stray ``.*.tmp``,
    never half a file under the real name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
