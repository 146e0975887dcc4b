"""The root :class:`Settings`: how it is loaded (``S2A_*`` environment variables and
``.env``, nested groups with ``__``, unknown keywords refused), the top-level settings,
the checks across groups, the derived locations under ``home`` and the pseudonym key.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError
from schemas.settings.ingest import (
    LimitSettings,
    ModelSettings,
    QualitySettings,
    WorkerSettings,
)
from schemas.settings.keyfiles import create_key_file
from schemas.settings.references import PairingSettings, RefSettings
from schemas.settings.review import ReviewSettings
from schemas.settings.serving import ServingSettings
from schemas.settings.storage import StorageSettings
from schemas.settings.training import (
    DatasetSettings,
    GateSettings,
    ScheduleSettings,
    TrainSettings,
)


class Settings(BaseSettings):
    """Everything a process needs, from one place."""

    model_config = SettingsConfigDict(
        env_prefix="S2A_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    def __init__(self, **values: Any) -> None:
        """Raises :class:`~schemas.errors.ConfigError` for a keyword that is no field.

        ``extra="ignore"`` is for the environment (an ``S2A_*`` variable of another version
        must not stop a process); a keyword is a caller's typo, which would otherwise
        build the default silently (``Settings(sql_url=...)`` opening SQLite in home).
        Underscored keywords are pydantic-settings' own (``_env_file``).
        """
        fields = type(self).model_fields
        unknown = sorted(k for k in values if not k.startswith("_") and k not in fields)
        if unknown:
            raise ConfigError(f"no such setting {', '.join(unknown)}; SETTINGS.md lists them")
        super().__init__(**values)

    home: Path = Field(Path.home() / ".selfie2anime", description="all local state lives here")
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port] of a Kafka cluster; unset = embedded broker"
    )
    broker_host: str = Field("127.0.0.1", description="embedded broker listen address")
    broker_port: int = Field(9092, ge=1, le=65535, description="embedded broker port")
    topic_prefix: str = Field("s2a.", description="prefix of every topic and consumer group")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite in home")
    qdrant_url: str | None = Field(None, description="Qdrant server; unset = local store in home")
    qdrant_api_key: SecretStr | None = Field(None, description="API key of the Qdrant server")
    pseudonym_key: SecretStr | None = Field(
        None,
        description="HMAC key for subject pseudonyms (base64 or text); unset = generated once "
        "and kept in home/pseudonym.key",
    )
    uri_roots: tuple[Path, ...] = Field(
        (), description="directories a worker may read file:// upload URIs from"
    )
    log_level: str = Field("INFO", description="Python logging level of every process")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log lines of every process: text, or json (one object a line: time, "
        "level, logger, message and the record's fields, e.g. a Convert call's request_id)",
    )

    limits: LimitSettings = LimitSettings()
    quality: QualitySettings = QualitySettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    refs: RefSettings = RefSettings()
    pairing: PairingSettings = PairingSettings()
    dataset: DatasetSettings = DatasetSettings()
    review: ReviewSettings = ReviewSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    serving: ServingSettings = ServingSettings()
    storage: StorageSettings = StorageSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.limits.max_inline_bytes > self.limits.max_upload_bytes:
            raise ConfigError(
                f"limits.max_inline_bytes ({self.limits.max_inline_bytes}) exceeds "
                f"limits.max_upload_bytes ({self.limits.max_upload_bytes}); lower the first"
            )
        if self.train.model_name == "labels":
            raise ConfigError(
                "train.model_name 'labels' would share home/models/labels with the label "
                "heads; choose another name (default: converter)"
            )
        serving = self.serving
        if (serving.tls_cert is None) != (serving.tls_key is None):
            raise ConfigError(
                "serving.tls_cert and serving.tls_key go together (S2A_SERVING__TLS_CERT, "
                "S2A_SERVING__TLS_KEY): set both, or neither"
            )
        if serving.tls_client_ca is not None and not serving.tls:
            raise ConfigError(
                "serving.tls_client_ca (mutual TLS) needs serving.tls_cert and tls_key too"
            )
        if self.quality.min_brightness >= self.quality.max_brightness:
            raise ConfigError("quality.min_brightness must be below quality.max_brightness")
        return self

    # Derived locations: one data directory holds every piece of local state.
    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 's2a.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def qdrant_path(self) -> Path:
        return self.home / "qdrant"

    @property
    def ref_index_dir(self) -> Path:
        """Versions of the embedded anime-reference index (one folder per library version)."""
        return self.home / "anime_refs"

    @property
    def dataset_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def train_dir(self) -> Path:
        """Training runs: one folder per run (``s2a train``)."""
        return self.train.runs_dir or self.home / "runs"

    @property
    def models_dir(self) -> Path:
        """Registered model versions: ``models/<name>/<version>/`` (``trainer.registry``)."""
        return self.home / "models"

    @property
    def serving_model_name(self) -> str:
        """The registry name the Convert server serves."""
        return self.serving.model_name or self.train.model_name

    @property
    def label_model_dir(self) -> Path:
        return self.home / "models" / "labels"

    @property
    def faust_data_dir(self) -> Path:
        return self.home / "faust"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def rebalance_timeout_s(self) -> float:
        default = 3.0 if self.embedded_broker else 60.0
        return self.worker.rebalance_timeout_s or default

    @property
    def session_timeout_s(self) -> float:
        return self.worker.session_timeout_s or self.rebalance_timeout_s

    def topic(self, name: str) -> str:
        """The full topic name for a contract's base name (``uploads`` -> ``s2a.uploads``)."""
        return f"{self.topic_prefix}{name}"

    @property
    def pseudonym_key_path(self) -> Path:
        """Where the generated pseudonym key lives (read while ``pseudonym_key`` is unset)."""
        return self.home / "pseudonym.key"

    def resolve_pseudonym_key(self, *, create: bool = True) -> bytes:
        """The HMAC key: from settings, else from ``home/pseudonym.key``, made on first use.

        The file is made owner-only from its first byte (``O_CREAT | O_EXCL`` with mode
        0600, then an atomic link, so racing processes share one key), and only with
        ``create``: without it a missing file is a lost key, a :class:`ConfigError` saying
        how to restore it. A key file other users may read is refused, naming the ``chmod``.

        The generated key never leaves the data directory; losing it means new pseudonyms
        for returning subjects, so production sets ``S2A_PSEUDONYM_KEY`` from a secret store.
        Processes that pseudonymize raw ids take the key from
        ``agents.stores.keys.checked_pseudonym_key``, which refuses a key other than the one
        the database's subjects were pseudonymized under.
        """
        if self.pseudonym_key is not None:
            raw = self.pseudonym_key.get_secret_value()
            if len(raw) < 16:
                raise ConfigError("S2A_PSEUDONYM_KEY must hold at least 16 characters")
            return raw.encode()
        path = self.pseudonym_key_path
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"the pseudonym key {path} is missing, but subjects were pseudonymized "
                    "under it (the database holds them): restore the file from a backup; a "
                    "new key would give every returning subject a new pseudonym and hide "
                    "their data from `s2a erase`"
                )
            # Racing processes share the first key made, so one subject never gets two
            # pseudonyms.
            create_key_file(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"the pseudonym key {path} may be read by other users (mode {mode:o}); "
                f"`chmod 600 {path}`, or set S2A_PSEUDONYM_KEY"
            )
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except ValueError:  # binascii.Error, UnicodeDecodeError
            key = b""
        if len(key) < 16:
            raise ConfigError(
                f"the pseudonym key {path} is not a base64 key of at least 16 bytes; restore "
                "it from a backup, or set S2A_PSEUDONYM_KEY"
            )
        return key
