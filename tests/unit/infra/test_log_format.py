"""``S2A_LOG_FORMAT``: text by default; json writes one object a line with the record's
time, level, logger, message and its ``extra`` fields."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from infra.cli import JsonLines
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "serving.service", logging.INFO, __file__, 1, "call %s", ("r1",), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_line_has_the_record_and_its_fields() -> None:
    line = JsonLines().format(_record(request_id="r1", latency_ms=12.5, model_version=3))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "INFO"
    assert doc["logger"] == "serving.service"
    assert doc["message"] == "call r1"
    assert doc["time"].endswith("+00:00")
    assert (doc["request_id"], doc["latency_ms"], doc["model_version"]) == ("r1", 12.5, 3)
    # Nothing of LogRecord's own machinery leaks into the line.
    assert not {"msg", "args", "levelno", "pathname", "thread", "created"} & set(doc)


def test_a_traceback_stays_inside_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    line = JsonLines().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc_info"]


def test_the_setting_defaults_to_text_and_a_process_logs_json_when_asked() -> None:
    assert Settings().log_format == "text"
    script = (
        "import logging; from infra.logs import setup_logging; setup_logging('INFO', 'json'); "
        "logging.getLogger('s2a.test').info('hello %d', 1, extra={'request_id': 'abc'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(d["logger"], d["message"], d["request_id"]) for d in lines] == [
        ("s2a.test", "hello 1", "abc")
    ]
