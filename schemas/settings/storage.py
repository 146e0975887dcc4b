"""Settings of where blobs and model version directories live (``storage``): a local
folder under home, or an S3-compatible bucket.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.errors import ConfigError
from schemas.settings.base import Group


class StorageSettings(Group):
    """Where blobs (aligned crops, reference images) and model version directories live.

    ``local`` (the embedded default) keeps them under ``home`` (``blobs/``, ``models/``).
    ``s3`` keeps them in an S3-compatible bucket (AWS S3, MinIO, ...) under
    ``<s3_prefix>/blobs/`` and ``<s3_prefix>/models/<name>/<version>/``; the trainer still
    builds each version in ``home/models`` and the registry copies it up, and Convert
    servers fetch a version into ``home/cache/models`` before loading it. Credentials
    come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, an instance role), never from these settings.
    """

    backend: Literal["local", "s3"] = Field("local", description="local folder or S3 bucket")
    s3_endpoint: str | None = Field(
        None, description="S3 API URL (MinIO, a test server); unset = AWS's own endpoint"
    )
    s3_bucket: str | None = Field(None, description="bucket; required with backend s3")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. 'prod/s2a'")
    s3_region: str | None = Field(None, description="region; unset = boto3's default")

    @model_validator(mode="after")
    def _check_s3(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ConfigError(
                "storage.backend is s3 but no bucket is set: set S2A_STORAGE__S3_BUCKET "
                "(or S2A_STORAGE__BACKEND=local)"
            )
        endpoint = self.s3_endpoint
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"S2A_STORAGE__S3_ENDPOINT {endpoint!r} is not a URL; give "
                "http(s)://host:port (or leave it unset for AWS)"
            )
        return self
