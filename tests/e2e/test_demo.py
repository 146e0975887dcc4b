"""``s2a demo`` end to end, as the README runs it: one child process on the embedded
default, then its JSON answer, its HTML report and its data directory are checked here
independently of what the demo says about itself."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_s2a
from PIL import Image

from agents.stages.anonymize import pseudonymize
from infra.demo.report import thumbnail
from infra.demo.samples import ERASED_SUBJECT, HELD_OUT, SAMPLES, samples_dir
from schemas.settings import Settings

pytestmark = pytest.mark.integration

TERMINAL = {"accepted", "rejected"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("s2a")
    done = run_s2a("demo", "--json", home=home)
    assert done.returncode == 0, done.stderr[-4000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_every_upload_ends_in_one_terminal_state_with_a_reason(demo: dict[str, Any]) -> None:
    uploads = demo["uploads"]
    # Every bundled sample plus the malformed record, each exactly once.
    assert len(uploads) == len(SAMPLES) + 1
    assert len({u["upload_id"] for u in uploads}) == len(uploads)
    assert {u["state"] for u in uploads} <= TERMINAL
    assert all(u["reason"] for u in uploads if u["state"] == "rejected")
    assert [u["sample"] for u in uploads if not u["as_expected"]] == []
    assert demo["redelivery_ignored"] is True


def test_pairs_were_made_reviewed_and_frozen(demo: dict[str, Any]) -> None:
    assert demo["pairs"].get("approved", 0) > 0
    assert demo["pair_records"] == sum(demo["pairs"].values())
    assert sum(demo["reviewed"].values()) == demo["pairs"].get("pending", 0)
    splits = demo["snapshot"]["summary"]["splits"]
    assert splits["train"]["records"] > 0
    assert splits["validation"]["records"] > 0


def test_a_base_and_an_update_were_promoted_and_served_through_a_swap(
    demo: dict[str, Any],
) -> None:
    first, second = demo["cycles"]
    assert (first["status"], first["version"], first["parent_version"]) == ("promoted", 1, None)
    assert (second["status"], second["version"], second["parent_version"]) == ("promoted", 2, 1)
    assert Path(second["version_dir"], "adapter").is_dir()
    swap = demo["swap"]
    assert swap["failed"] == 0, swap["failures"]
    # Both models answered callers: the swap happened under load.
    assert swap["answered"].get("1", 0) >= 1
    assert swap["answered"].get("2", 0) >= 1


def test_conversions_are_images_of_the_input_size_from_the_new_champion(
    demo: dict[str, Any],
) -> None:
    conversions = demo["conversions"]
    assert {c["sample"] for c in conversions} >= set(HELD_OUT)
    for conversion in conversions:
        with Image.open(samples_dir() / conversion["sample"]) as photo:
            assert (conversion["width"], conversion["height"]) == photo.size
        assert conversion["model"]["version"] == 2


def test_the_report_shows_conversions_as_images_of_the_right_size(demo: dict[str, Any]) -> None:
    html = Path(demo["report"]).read_text()
    outputs = re.findall(r'<img class="o" src="data:image/jpeg;base64,([^"]+)"', html)
    shown = [c for c in demo["conversions"] if c["subject"] != ERASED_SUBJECT]
    assert len(outputs) == len(shown) > 0
    for data in outputs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert max(image.size) == 256  # the output thumbnail's box
    for section in ("Timings", "Uploads", "Models: lineage", "Hot-swap", "Erasure"):
        assert section in html
    assert "forest_no_face.jpg" in html
    assert "no_face" in html


def test_the_erased_subject_appears_nowhere(demo: dict[str, Any]) -> None:
    home = Path(demo["home"])
    assert demo["erasure"]["outcome"] == "erased"
    assert demo["erasure"]["counts"]["faces"] >= 1
    assert demo["traces"] == {"sql_rows": 0, "qdrant_points": 0, "crops": 0, "files": 0}
    # And checked here, not taken from the demo's word: every file under the data
    # directory (SQLite, Qdrant, blobs, manifests, exports, models, logs, the report).
    settings = Settings(home=home)
    needles = [
        pseudonymize(ERASED_SUBJECT, settings.resolve_pseudonym_key()).encode(),
        ERASED_SUBJECT.encode(),
    ]
    holding = [
        path
        for path in home.rglob("*")
        if path.is_file() and any(needle in path.read_bytes() for needle in needles)
    ]
    assert holding == []
    # Nor is their photo in the report: its thumbnail, made as the report makes them.
    erased_photo = next(s.file for s in SAMPLES if s.subject == ERASED_SUBJECT)
    thumb = thumbnail((samples_dir() / erased_photo).read_bytes())
    others = next(s.file for s in SAMPLES if s.subject != ERASED_SUBJECT)
    report = Path(demo["report"]).read_text()
    assert thumbnail((samples_dir() / others).read_bytes()) in report
    assert thumb not in report
