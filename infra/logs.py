"""Log lines of every ``s2a`` process: text, or JSON lines (``S2A_LOG_FORMAT=json``)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_RECORD_ATTRIBUTES = frozenset({"message", "asctime", "taskName"}).union(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
)


class JsonLines(logging.Formatter):
    """``S2A_LOG_FORMAT=json``: one JSON object a line with ``time`` (ISO 8601, UTC),
    ``level``, ``logger``, ``message``, every field given with ``extra=`` (a Convert call's
    ``request_id``, ``status``, ``latency_ms``, ``model_version``...), and ``exc_info``.

    The standard library's Formatter rather than python-json-logger: the whole job is these
    lines, with no dependency, and the field names are fixed here, where operators read."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def log_handler(fmt: str = "text") -> logging.Handler:
    """A stderr handler writing ``fmt`` lines (``S2A_LOG_FORMAT``: text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    return handler


def setup_logging(level: str, fmt: str = "text") -> None:
    """This process's logging: ``level`` and ``fmt`` from the settings, on stderr."""
    handler = log_handler(fmt)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # kafka-python and alembic are chatty at INFO about every connection and plugin.
    for chatty in ("kafka", "alembic"):
        logging.getLogger(chatty).setLevel(
            max(logging.ERROR if chatty == "kafka" else logging.WARNING, logging.getLogger().level)
        )


def logging_config(level: str, fmt: str = "text") -> dict[str, object]:
    """:func:`setup_logging` as a ``logging.config.dictConfig`` dict, for the Faust worker:
    ``mode`` replaces the root handlers with its own coloured one unless it is handed a
    config, so without this ``S2A_LOG_FORMAT=json`` would not reach ``s2a worker``."""
    formatter: dict[str, str] = (
        {"()": f"{__name__}.JsonLines"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"s2a": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "s2a",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
