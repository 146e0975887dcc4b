"""The engine tuning of new shards and searches: the constants measured with
``bench/matching.py`` and :class:`EdgeTuning`, which carries them. qdrant-edge builds with
it, the Qdrant server collection mirrors it, and each edge version's manifest records it."""

from __future__ import annotations

from dataclasses import dataclass

# Edge tuning, measured with `bench/matching.py --sweep` (BENCHMARKS.md, "Matching: anime
# reference search"; 100k x 512 references, 2 shared cores):
# - HNSW (m 16, ef_construct 100, the engine's defaults) took 1.5-3.5 minutes to build and
#   found 8-28% of the true top 10 on uniform vectors (58-84% filtered) at hnsw_ef 64-256.
# - Scanning int8 copies and rescoring the best 4x in float32 was 2-3x faster unfiltered,
#   recall 1.0 on clustered and uniform vectors, but ~0.01 on "collapsed" ones: the
#   seeded random-init embedder (then the offline default) puts every pair above 0.9997,
#   below int8 resolution, so the scan cannot tell candidates apart.
# - A float32 scan is exact on every kind (0.985 on collapsed vectors, whose neighbours
#   differ by float32 rounding) and builds in seconds. A filter (one style plus labels: a
#   few thousand of 100k) is answered from the keyword indexes by scoring only the
#   matching points: p50 ~3 ms, p99 4-5 ms (8-13 ms in full runs beside other jobs),
#   and k hits whenever k references match. Unfiltered it reads every vector (~20 ms).
#: HNSW edges per node; 0 builds no graph: every search scans.
EDGE_HNSW_M = 0
#: Graph candidates while building; unused while EDGE_HNSW_M is 0 (the engine wants one).
EDGE_HNSW_EF_CONSTRUCT = 100
#: KB of vectors below which a search skips the graph; only matters with a graph.
EDGE_FULL_SCAN_KB = 32_000
#: No int8 copies (see above: blind on collapsed embeddings).
EDGE_QUANTIZED = False
#: Quantized candidates rescored in float32 per hit wanted, when quantized.
EDGE_OVERSAMPLING = 4.0
#: Mark the style index as the tenant key: optimised segments store each style's points
#: together, which cut the filtered p50 at 100k from ~5 ms to ~3 ms (same sweep).
EDGE_STYLE_TENANT = True
#: Search a float32 copy of the shard in the calling thread rather than with the engine.
#: The engine hands each query to its search thread pool; on two shared cores a woken
#: pool thread queues for a core (behind other processes, or OpenBLAS threads still
#: spinning after a numpy matmul in this process), which made the tail: filtered p50 ~1 ms
#: but p99 up to 13-55 ms at 100k references. The copy answers with the same float32
#: cosines; at 100k 128-d references (BENCHMARKS.md, "Matching", same runs) filtered
#: p50 0.3 ms, p99 0.4-0.5 ms (engine 1.0, 1.3-5.3) and unfiltered 1.7-1.9, 1.8-3.0 ms
#: (engine 2.9-3.2, 3.9-8.1). It costs a read of the shard on the first search (~2.5-4 s
#: for 100k) and n x dim x 4 bytes of memory plus the payloads.
EDGE_IN_MEMORY = True


@dataclass(frozen=True, slots=True)
class EdgeTuning:
    """The qdrant-edge parameters of a new shard and of its searches (defaults: the
    constants above; the benchmark's sweep builds others)."""

    m: int = EDGE_HNSW_M
    ef_construct: int = EDGE_HNSW_EF_CONSTRUCT
    full_scan_kb: int = EDGE_FULL_SCAN_KB
    quantized: bool = EDGE_QUANTIZED
    oversampling: float = EDGE_OVERSAMPLING
    style_tenant: bool = EDGE_STYLE_TENANT
    #: graph candidates per search (None: the engine's default, ef_construct)
    search_ef: int | None = None
    #: extra graph links per payload value of the keyword indexes (0: none)
    payload_m: int = 0
    #: search a float32 copy of the shard in the calling thread (False: the engine's own
    #: search, through its thread pool; see EDGE_IN_MEMORY)
    in_memory: bool = EDGE_IN_MEMORY


EDGE_TUNING = EdgeTuning()
