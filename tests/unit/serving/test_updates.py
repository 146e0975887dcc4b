"""Following model-updates: only the served model's updates are applied, a failed apply
never stops the follower, unreadable records are skipped."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from types import SimpleNamespace

from schemas.model_updates import ModelUpdate
from schemas.settings import Settings
from serving.errors import ModelLoadError
from serving.updates import Apply, UpdateFollower, _parse, consumer_group


def _update(name: str, version: int) -> ModelUpdate:
    return ModelUpdate(
        name=name,
        version=version,
        previous_version=None,
        action="promote",
        family="pix2pix-lora",
        snapshot_id="ds-x",
        path=f"/srv/models/{name}/{version}",
        artifacts={},
        metrics={},
        reason="test",
        actor="test",
        at=datetime.now(UTC),
    )


class ListSource:
    def __init__(self, updates: list[ModelUpdate]) -> None:
        self.updates = updates
        self.done = threading.Event()

    def run(self, apply: Apply, stop: threading.Event) -> None:
        for update in self.updates:
            apply(update)
        self.done.set()


def test_only_the_served_model_is_applied_and_failures_do_not_stop_it() -> None:
    applied: list[int] = []

    def apply(update: ModelUpdate) -> None:
        applied.append(update.version)
        if update.version == 2:
            raise ModelLoadError("broken artifact")

    source = ListSource(
        [
            _update("converter", 1),
            _update("labels", 9),
            _update("converter", 2),
            _update("converter", 3),
        ]
    )
    follower = UpdateFollower(source, "converter", apply)
    follower.start()
    assert source.done.wait(10)
    follower.stop()
    assert applied == [1, 2, 3]


def test_unreadable_records_are_skipped_and_groups_are_per_server() -> None:
    good = SimpleNamespace(
        topic="t", partition=0, offset=5, value=_update("converter", 4).to_bytes()
    )
    bad = SimpleNamespace(topic="t", partition=0, offset=6, value=b"{not json")
    parsed = _parse(good)
    assert parsed is not None
    assert parsed.version == 4
    assert _parse(bad) is None
    settings = Settings(topic_prefix="prod.")
    assert consumer_group(settings, "web-1") == "prod.serve-web-1"
    assert consumer_group(settings, "web-1") != consumer_group(settings, "web-2")
