"""What every settings group shares: the frozen, strict base model and ``MiB``.

A group (``LimitSettings``, ``ServingSettings``, ...) is a frozen pydantic model that
refuses unknown fields; the root :class:`~schemas.settings.root.Settings` nests one of
each.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MiB = 1024 * 1024


class Group(BaseModel):
    """Base of every settings group: frozen, and an unknown field is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
