"""The anime reference index: nearest references to a face embedding, filtered by payload.

The package's public surface; the code lives in its modules:

- :mod:`.contract`: the constants, types (RefPoint, RefHit, RefFilter), the
  :class:`RefIndex` protocol, the input error and the argument checks both engines share
- :mod:`.tuning`: the measured engine tuning (:class:`EdgeTuning`)
- :mod:`.edge`: the qdrant-edge engine (:class:`EdgeRefIndex`, the embedded default)
- :mod:`.qdrant`: the qdrant-client engine (:class:`QdrantRefIndex`: local store or server)
- :mod:`.versions`: immutable versioned folders (:func:`publish_version`,
  :func:`open_ref_index`, :func:`prune_versions`)

Errors (all under :class:`agents.errors.PipelineError`)::

    StorageError (RuntimeError)                   an engine or the file system failed
     └── RefVersionMissing (FileNotFoundError)    no complete folder for that version
    RefInputError (ValueError)                    a bad vector, point, filter or argument
    EmbedderMismatch (ValueError)                 the version was built by another embedder
"""

from agents.stores.refindex.contract import (
    LABEL_FIELDS,
    REF_COLLECTION,
    STYLE_FIELD,
    RefFilter,
    RefHit,
    RefIndex,
    RefInputError,
    RefPoint,
    ref_collection,
)
from agents.stores.refindex.edge import EdgeRefIndex
from agents.stores.refindex.qdrant import QdrantRefIndex
from agents.stores.refindex.tuning import (
    EDGE_FULL_SCAN_KB,
    EDGE_HNSW_EF_CONSTRUCT,
    EDGE_HNSW_M,
    EDGE_OVERSAMPLING,
    EDGE_QUANTIZED,
    EDGE_STYLE_TENANT,
    EDGE_TUNING,
    EdgeTuning,
)
from agents.stores.refindex.versions import (
    MANIFEST,
    Backend,
    RefVersionMissing,
    copy_sparse,
    discard_version,
    latest_local_version,
    open_ref_index,
    prune_versions,
    publish_version,
    server_location,
    version_dir,
)

__all__ = [
    "EDGE_FULL_SCAN_KB",
    "EDGE_HNSW_EF_CONSTRUCT",
    "EDGE_HNSW_M",
    "EDGE_OVERSAMPLING",
    "EDGE_QUANTIZED",
    "EDGE_STYLE_TENANT",
    "EDGE_TUNING",
    "LABEL_FIELDS",
    "MANIFEST",
    "REF_COLLECTION",
    "STYLE_FIELD",
    "Backend",
    "EdgeRefIndex",
    "EdgeTuning",
    "QdrantRefIndex",
    "RefFilter",
    "RefHit",
    "RefIndex",
    "RefInputError",
    "RefPoint",
    "RefVersionMissing",
    "copy_sparse",
    "discard_version",
    "latest_local_version",
    "open_ref_index",
    "prune_versions",
    "publish_version",
    "ref_collection",
    "server_location",
    "version_dir",
]
