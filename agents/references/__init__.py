"""The anime reference library: licensed reference images per art style.

* :mod:`agents.references.library`: :class:`RefLibrary` (``add``, ``list``, ``styles``,
  ``current_version``), the per-file :class:`RefOutcome`, license normalisation and the
  ``--sources`` CSV.
* :mod:`agents.references.style`: style statistics, outlier judging, palettes and the
  512 px training version of a reference (pure functions).
* :mod:`agents.references.errors`: the exception tree and :class:`RefReason`.

The library's names load on first use, so the pure style functions can be imported without
the embedder (torch) and the vector index behind :class:`RefLibrary`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.references.errors import (
    ImageRefused,
    InvalidRequest,
    LicenseRefused,
    ReferenceLibraryError,
    RefReason,
    RefRefused,
    SourcesFileError,
    VersionConflict,
)

if TYPE_CHECKING:
    from agents.references.library import (
        Attribution,
        Box,
        Outcome,
        RefInput,
        RefLibrary,
        RefOutcome,
        normalise_license,
        read_sources,
        ref_id_for,
    )

_LIBRARY = frozenset(
    {
        "Attribution",
        "Box",
        "Outcome",
        "RefInput",
        "RefLibrary",
        "RefOutcome",
        "normalise_license",
        "read_sources",
        "ref_id_for",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        return getattr(importlib.import_module("agents.references.library"), name)
    raise AttributeError(f"module 'agents.references' has no attribute {name!r}")


__all__ = [
    "Attribution",
    "Box",
    "ImageRefused",
    "InvalidRequest",
    "LicenseRefused",
    "Outcome",
    "RefInput",
    "RefLibrary",
    "RefOutcome",
    "RefReason",
    "RefRefused",
    "ReferenceLibraryError",
    "SourcesFileError",
    "VersionConflict",
    "normalise_license",
    "read_sources",
    "ref_id_for",
]
