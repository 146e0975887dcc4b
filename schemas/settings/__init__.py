"""The one settings object of a selfie2anime process.

Built once at the entry point (``Settings()`` reads ``S2A_*`` environment variables and a
``.env`` file) and passed down; nothing else reads the environment. Nested groups use a
double underscore: ``S2A_QUALITY__MIN_FACE_PX=96``.

Example::

    settings = Settings(home=tmp_path, kafka_bootstrap="kafka-1:9092")
    settings.database_url       # 'sqlite:///<tmp_path>/s2a.db' unless set

Every name is importable from here (``from schemas.settings import Settings``); the
modules hold them by concern:

- ``root``: :class:`Settings`, its loading, cross-group checks, derived locations
- ``base``: the frozen group base model and ``MiB``
- ``ingest``: ``limits``, ``quality``, ``models``, ``worker``
- ``references``: ``refs``, ``pairing``
- ``training``: ``dataset``, ``train``, ``gate``, ``schedule``
- ``review``: ``review``
- ``serving``: ``serving``
- ``storage``: ``storage``
"""

from __future__ import annotations

from schemas.settings.base import MiB
from schemas.settings.ingest import LimitSettings, ModelSettings, QualitySettings, WorkerSettings
from schemas.settings.references import PairingSettings, RefSettings
from schemas.settings.review import ReviewSettings
from schemas.settings.root import Settings
from schemas.settings.serving import ServingSettings
from schemas.settings.storage import StorageSettings
from schemas.settings.training import (
    DatasetSettings,
    GateSettings,
    ScheduleSettings,
    TrainSettings,
)

__all__ = [
    "DatasetSettings",
    "GateSettings",
    "LimitSettings",
    "MiB",
    "ModelSettings",
    "PairingSettings",
    "QualitySettings",
    "RefSettings",
    "ReviewSettings",
    "ScheduleSettings",
    "ServingSettings",
    "Settings",
    "StorageSettings",
    "TrainSettings",
    "WorkerSettings",
]
