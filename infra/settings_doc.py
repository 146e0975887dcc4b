"""Every setting as an operator sets it: the environment variable, its default and its
meaning, read from the one settings model (``schemas/settings/``) so the list cannot
drift from the code. ``s2a settings`` prints it; ``SETTINGS.md`` is its Markdown form (a
test keeps the file equal to what this module renders).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from schemas.settings import Settings

PREFIX = "S2A_"
NESTING = "__"


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One environment variable: its name, its default as text, and what it means."""

    variable: str
    default: str
    meaning: str
    group: str

    def as_dict(self) -> dict[str, str]:
        return {"variable": self.variable, "default": self.default, "meaning": self.meaning}


def _text(value: Any) -> str:
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        home = str(Path.home())
        return str(value).replace(home, "~", 1) if str(value).startswith(home) else str(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_text(v) for v in value) + "]" if value else "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) or "{}"
    return str(value)


def setting_rows(model: type[BaseModel] = Settings, prefix: str = PREFIX) -> list[SettingRow]:
    """Every leaf setting of ``model`` (groups expanded with ``__``), in declaration order."""
    rows: list[SettingRow] = []
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += setting_rows(annotation, variable + NESTING)
            continue
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        group = prefix.removeprefix(PREFIX).removesuffix(NESTING).lower() or "general"
        rows.append(SettingRow(variable, _text(default), field.description or "", group))
    return rows


def markdown() -> str:
    """``SETTINGS.md``: one table per group of settings."""
    lines = [
        "# Settings",
        "",
        "Every `S2A_*` environment variable (also read from `.env`), with its default and",
        "meaning; groups nest with `__`. Generated from `schemas/settings/` by",
        "`s2a settings --markdown > SETTINGS.md` (a test keeps this file in step).",
    ]
    current = None
    for row in setting_rows():
        if row.group != current:
            current = row.group
            lines += ["", f"## {current}", "", "| variable | default | meaning |", "|---|---|---|"]
        cells = (row.variable, row.default, row.meaning)
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"
