"""The anime reference library: licensed reference images per art style.

* :mod:`agents.references.library`: :class:`RefLibrary` (``add``, ``list``, ``styles``,
  ``current_version``), tying admission, blobs, embeddings, catalog and vector index.
* :mod:`agents.references.admission`: the decision about each file (license policy,
  decoding, face region, style verdict) and the per-file :class:`RefOutcome`.
* :mod:`agents.references.catalog`: the SQL rows of references, labels and versions.
* :mod:`agents.references.inputs`: what ``add`` is given: :class:`Attribution`,
  :class:`Box`, :class:`RefInput`, license normalisation and the ``--sources`` CSV.
* :mod:`agents.references.style`: style statistics and outlier judging (pure functions).
* :mod:`agents.references.palette`: a style's palette and the 512 px training version of
  a reference (pure functions).
* Its errors (``ReferenceLibraryError`` and below, re-exported here) are drawn in
  :mod:`agents.errors`; why a file was refused is a :class:`~schemas.reasons.RefReason`.

The library's names load on first use, so the pure style functions can be imported without
the embedder (torch) and the vector index behind :class:`RefLibrary`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.errors import (
    ImageRefused,
    InvalidRequest,
    LicenseRefused,
    ReferenceLibraryError,
    RefRefused,
    SourcesFileError,
    VersionConflict,
)
from schemas.reasons import RefReason

if TYPE_CHECKING:
    from agents.references.admission import Outcome, RefOutcome, ref_id_for
    from agents.references.inputs import (
        Attribution,
        Box,
        RefInput,
        normalise_license,
        read_sources,
    )
    from agents.references.library import RefLibrary

#: Where each lazily loaded name lives.
_LAZY = {
    "Attribution": "agents.references.inputs",
    "Box": "agents.references.inputs",
    "Outcome": "agents.references.admission",
    "RefInput": "agents.references.inputs",
    "RefLibrary": "agents.references.library",
    "RefOutcome": "agents.references.admission",
    "normalise_license": "agents.references.inputs",
    "read_sources": "agents.references.inputs",
    "ref_id_for": "agents.references.admission",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
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
