"""``s2a erase`` as an operator runs it: in its own process with the stores free, refused
with ``--direct`` while a worker holds them, and through a real worker's ``erase`` agent on
``erasure-requests`` (real broker) when one runs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_s2a

from agents.erasure import find_audit
from agents.pipeline import Incoming, IngestPipeline
from agents.stages.anonymize import pseudonymize
from agents.stages.detect import MtcnnDetector
from agents.stages.embed import InceptionEmbedder
from agents.stores.db import create_engine_for
from agents.stores.repository import Repository
from infra.broker import free_port
from infra.kafka import UploadPublisher
from infra.runtime import Stack, settings_env
from infra.waiting import wait_until
from schemas.reasons import UploadState
from schemas.settings import Settings
from schemas.uploads import Consent, ImagePayload, UploadEvent

REAL = Path(__file__).parents[1] / "data" / "real"


def _event(photo: str, subject: str) -> UploadEvent:
    now = datetime.now(UTC)
    return UploadEvent(
        upload_id=f"u-{uuid.uuid4().hex[:12]}",
        subject_id=subject,
        consent=Consent(version="1", scopes=["training"], granted_at=now - timedelta(days=1)),
        image=ImagePayload(data=(REAL / photo).read_bytes()),
        submitted_at=now,
    )


def test_erase_in_process_then_again(
    tmp_path: Path, detector: MtcnnDetector, embedder: InceptionEmbedder
) -> None:
    settings = Settings(home=tmp_path / "home")
    env = settings_env(settings)
    pipeline = IngestPipeline.build(settings, detector=detector, embedder=embedder)
    try:
        outcomes = pipeline.run(
            [
                Incoming(_event("london_001_neutral.jpg", "cli-erase@example.com").to_bytes()),
                Incoming(_event("london_004_neutral.jpg", "cli-keep@example.com").to_bytes()),
            ]
        )
        assert [o.state for o in outcomes] == [UploadState.ACCEPTED] * 2
        # The pipeline holds the Qdrant local store, as a running worker does.
        held = run_s2a("erase", "cli-erase@example.com", "--direct", env=env)
        assert held.returncode == 1
        assert "in use by a running worker" in held.stderr
        assert "leave out --direct" in held.stderr
    finally:
        pipeline.close()

    first = run_s2a("erase", "cli-erase@example.com", "--json", "--by", "alice", env=env)
    # The raw id from stdin, kept out of the process list.
    again = subprocess.run(
        [sys.executable, "-m", "infra.cli", "--log-level", "DEBUG", "erase", "-", "--json"],
        env=env,
        input="cli-erase@example.com\n",
        capture_output=True,
        text=True,
        check=True,
    )
    human = run_s2a("erase", "cli-never@example.com", env=env)

    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert (answer["outcome"], answer["via"], answer["requested_by"]) == (
        "erased",
        "direct",
        "alice",
    )
    assert answer["counts"]["faces"] == 1
    assert answer["counts"]["points"] == 1
    assert answer["counts"]["crops"] == 2
    assert json.loads(again.stdout)["outcome"] == "nothing_found"
    assert human.returncode == 0
    assert human.stdout.startswith("nothing found:")
    pseudonym = pseudonymize("cli-erase@example.com", settings.resolve_pseudonym_key())
    for run in (first, again, human):
        assert "cli-erase@example.com" not in run.stderr
        assert pseudonym not in run.stderr
    repository = Repository(create_engine_for(settings.sql_url))
    assert repository.counts() == {"accepted": 1, "rejected": 0, "erased": 1}


@pytest.mark.integration
def test_erase_through_the_worker(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        broker_port=free_port(),
        topic_prefix=f"er{uuid.uuid4().hex[:6]}.",
    )
    env = settings_env(settings)
    repository = Repository(create_engine_for(settings.sql_url))
    event = _event("london_001_neutral.jpg", "worker-erase@example.com")
    with Stack(settings) as stack, UploadPublisher(settings) as publisher:
        publisher.publish(event)
        wait_until(
            lambda: event.upload_id in repository.finished([event.upload_id]),
            deadline_s=300,
            what="the upload's terminal state",
            alive=stack.check_worker,
        )

        erased = run_s2a("erase", "worker-erase@example.com", "--json", "--by", "app", env=env)

        assert erased.returncode == 0, erased.stderr
        answer = json.loads(erased.stdout)
        assert (answer["outcome"], answer["via"], answer["already"]) == ("erased", "worker", False)
        assert answer["counts"]["faces"] == 1
        assert find_audit(create_engine_for(settings.sql_url), answer["request_id"]) is not None
    assert repository.counts()["erased"] == 1
    log = (settings.run_dir / "worker.log").read_text()
    assert f"erasure {answer['request_id']}" in log
    pseudonym = pseudonymize("worker-erase@example.com", settings.resolve_pseudonym_key())
    assert "worker-erase@example.com" not in log
    assert pseudonym not in log
