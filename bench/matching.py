"""Anime reference search: latency and recall@10 of the reference index backends.

Vectors are ``--dim``-d, 128 by default: what the default embedder (dlib's ResNet
descriptor) gives; 512 is InceptionResnetV1's. For each vector kind (clustered, like real
embeddings: a few hundred Gaussian clusters on the sphere; uniform random, the hard case
for graph indexes; with ``--kinds collapsed``, what the seeded random-init embedder gives:
every pair above 0.9997), each library size and each backend, the index is built the way
`s2a refs add` builds it (``publish_version``) and opened the way the worker opens it
(``open_ref_index``). Then top-10 queries run without a filter and with one (one style of
8, plus ``labels.glasses`` equal to "yes" or "no", which 25% and 75% of the references
carry), and recall@10 is scored against numpy brute force with the same filter, computed
after the timed queries: that matmul runs on OpenBLAS's thread pool, whose threads keep
spinning for a while after it and take the cores from the query that follows.
``--busy-blas`` computes it between the timed queries instead (as this benchmark did
before): a neighbour the worker may have too (an embedder's or a label head's matmul just
before a search).

Backend ``edge`` searches the in-memory copy of the shard (the default,
``EdgeTuning.in_memory``); ``edge-engine`` searches the same published shard with the
engine's own search, the baseline it replaced. For ``edge`` the build table's *first
search* includes reading the shard into memory.

qdrant-client's local mode scans in Python (~1 s a filtered query at 100k), so it runs
``--local-queries`` queries at sizes of 20k and more; its on-disk store commits every
point to SQLite (~3 ms each), so above ``--local-path-max`` it is built in memory (the
search code is the same) and the table says so.

``--sweep`` instead compares qdrant-edge tunings at ``--sweep-size`` (HNSW builds take
minutes there): the evidence for the constants in ``agents/stores/refindex/tuning.py``.

Usage:  python bench/matching.py [--sizes 1000,10000,100000] [--queries 200] [--dim 128]
            [--kinds clustered,uniform] [--backends edge,edge-engine,qdrant-local]
            [--busy-blas] [--json OUT] [--local-queries 25] [--local-path-max 10000]
        python bench/matching.py --sweep [--sweep-size 100000] [--queries 200] [--dim 128]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdrant_client import QdrantClient  # noqa: E402

from agents.records import EmbeddingSpace  # noqa: E402
from agents.stores.refindex import (  # noqa: E402
    EDGE_TUNING,
    EdgeRefIndex,
    EdgeTuning,
    QdrantRefIndex,
    RefFilter,
    RefIndex,
    RefPoint,
    open_ref_index,
    publish_version,
    version_dir,
)
from schemas.settings import Settings  # noqa: E402

#: The default embedder's (dlib's ResNet descriptor) vector length.
DIM = 128
K = 10
STYLES = tuple(f"style{i}" for i in range(8))
GLASSES_YES = 0.25
CLUSTERS = 300
#: Noise around a cluster centre: cosine to the centre ~0.8, like one identity's photos.
SPREAD = 0.75
#: Noise of the "collapsed" kind: pairwise cosine ~0.9998.
COLLAPSED = 0.014
WARMUP = 5
LOCAL_SCAN_SIZE = 20_000

Vectors = npt.NDArray[np.float32]


@dataclass
class Library:
    """References and queries of one vector kind, with their payload columns."""

    kind: str
    vectors: Vectors
    styles: npt.NDArray[np.int64]
    glasses: npt.NDArray[np.bool_]
    queries: Vectors
    query_styles: npt.NDArray[np.int64]
    query_glasses: npt.NDArray[np.bool_]
    _truths: dict[tuple[int, int, bool], tuple[set[int], int]] = dataclasses.field(
        default_factory=dict
    )

    def points(self, n: int) -> list[RefPoint]:
        return [
            RefPoint(
                ref_id=ref_id(i),
                vector=self.vectors[i],
                payload={
                    "style": STYLES[self.styles[i]],
                    "tags": [],
                    "labels": {"glasses": "yes" if self.glasses[i] else "no"},
                    "license": "CC0-1.0",
                    "source": "bench",
                    "author": "bench",
                    "library_version": 1,
                },
            )
            for i in range(n)
        ]

    def where(self, j: int) -> RefFilter:
        return RefFilter(
            style=STYLES[self.query_styles[j]],
            labels={"glasses": "yes" if self.query_glasses[j] else "no"},
        )

    def truth(self, n: int, j: int, filtered: bool) -> tuple[set[int], int]:
        """The exact top-k ids (numpy brute force) and how many references match."""
        key = (n, j, filtered)
        if key not in self._truths:
            self._truths[key] = self.brute_force(n, j, filtered)
        return self._truths[key]

    def brute_force(self, n: int, j: int, filtered: bool) -> tuple[set[int], int]:
        """:meth:`truth`, computed again: a (n, dim) x (dim,) OpenBLAS matmul."""
        scores = self.vectors[:n] @ self.queries[j]
        if filtered:
            mask = (self.styles[:n] == self.query_styles[j]) & (
                self.glasses[:n] == self.query_glasses[j]
            )
            scores = np.where(mask, scores, -np.inf)
            matching = int(mask.sum())
        else:
            matching = n
        top = np.argpartition(-scores, K)[:K]
        return {int(i) for i in top if np.isfinite(scores[i])}, matching


def ref_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def index_of(ref: str) -> int:
    return uuid.UUID(ref).int - 1


def unit(x: Vectors) -> Vectors:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def space(dim: int) -> EmbeddingSpace:
    """The index records the embedder of its vectors; these are synthetic."""
    return EmbeddingSpace(f"bench/synthetic-{dim}", dim)


def make_library(kind: str, n: int, queries: int, dim: int = DIM, seed: int = 0) -> Library:
    rng = np.random.default_rng(seed)
    total = n + queries
    if kind == "clustered":
        centres = unit(rng.standard_normal((CLUSTERS, dim)).astype(np.float32))
        noise = rng.standard_normal((total, dim)).astype(np.float32) * (SPREAD / np.sqrt(dim))
        vectors = unit(centres[rng.integers(0, CLUSTERS, total)] + noise)
    elif kind == "uniform":
        vectors = unit(rng.standard_normal((total, dim)).astype(np.float32))
    elif kind == "collapsed":
        # What the seeded random-init embedder produces: every pair above 0.9997 cosine.
        centre = unit(rng.standard_normal((1, dim)).astype(np.float32))
        noise = rng.standard_normal((total, dim)).astype(np.float32) * (COLLAPSED / np.sqrt(dim))
        vectors = unit(centre + noise)
    else:
        raise SystemExit(f"--kinds: unknown vector kind {kind!r} (clustered, uniform, collapsed)")
    return Library(
        kind=kind,
        vectors=vectors[:n],
        styles=rng.integers(0, len(STYLES), n),
        glasses=rng.random(n) < GLASSES_YES,
        queries=vectors[n:],
        query_styles=rng.integers(0, len(STYLES), queries),
        query_glasses=rng.random(queries) < 0.5,
    )


def measure(
    index: RefIndex, lib: Library, n: int, queries: int, filtered: bool, busy_blas: bool = False
) -> dict[str, Any]:
    """Per-query wall time of ``queries`` top-k searches after a warm-up, and their
    answers (for :func:`score`, once every timed pass is done). With ``busy_blas`` the
    exact answer of each query is computed right after it, before the next one."""
    for j in range(min(WARMUP, queries)):
        index.search(lib.queries[j], K, lib.where(j) if filtered else None)
    times, answers = [], []
    for j in range(queries):
        where = lib.where(j) if filtered else None
        start = time.perf_counter()
        hits = index.search(lib.queries[j], K, where)
        times.append(time.perf_counter() - start)
        answers.append({index_of(h.ref_id) for h in hits})
        if busy_blas:
            lib.brute_force(n, j, filtered)
    ms = np.array(times) * 1000
    return {
        "filter": "style+glasses" if filtered else "none",
        "queries": queries,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "busy_blas": busy_blas,
        "answers": answers,
    }


def score(row: dict[str, Any], lib: Library, n: int) -> dict[str, Any]:
    """``row`` (from :func:`measure`) with recall@10 and short answers (fewer than k hits
    while at least k references match) in place of its answers."""
    filtered = row["filter"] != "none"
    recalls, short = [], 0
    for j, got in enumerate(row.pop("answers")):
        truth, matching = lib.truth(n, j, filtered)
        recalls.append(len(truth & got) / len(truth) if truth else 1.0)
        short += len(got) < min(K, matching)
    row.update(recall=float(statistics.fmean(recalls)), min_recall=float(min(recalls)), short=short)
    return row


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_backend(
    backend: str, lib: Library, n: int, args: argparse.Namespace, work: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build, open, search, then publish the next version (10 refs in, 10 out) while the
    first is still open, as `s2a refs add` does beside a running worker."""
    points = lib.points(n)
    dim = lib.vectors.shape[1]
    home = work / f"{lib.kind}-{n}-{backend}"
    engine = "edge" if backend == "edge-engine" else backend
    settings = Settings(home=home, refs={"index_backend": engine})
    build = {"kind": lib.kind, "size": n, "backend": backend, "how": "publish"}
    index: RefIndex

    def open_version() -> RefIndex:
        if backend == "edge-engine":
            return EdgeRefIndex.load(
                version_dir(settings, 1) / "edge",
                version=1,
                dim=dim,
                tuning=dataclasses.replace(EDGE_TUNING, in_memory=False),
            )
        return open_ref_index(settings, 1, space(dim))

    if backend == "qdrant-local" and n > args.local_path_max:
        build["how"] = "in memory"

        def build_in_memory() -> QdrantRefIndex:
            out = QdrantRefIndex(QdrantClient(":memory:"), version=1, dim=dim)
            out.upsert(points)
            return out

        index, build["build_s"] = timed(build_in_memory)
    else:
        _, build["build_s"] = timed(
            lambda: publish_version(settings, 1, None, points, space=space(dim))
        )
        index, build["open_s"] = timed(open_version)
    queries = args.queries
    if backend == "qdrant-local" and n >= LOCAL_SCAN_SIZE:
        queries = min(queries, args.local_queries)
    rows = []
    try:
        # The edge backend reads its shard into memory here.
        _, build["first_s"] = timed(lambda: index.search(lib.queries[0], K))
        # Both passes before any recall: its brute force would leave OpenBLAS threads
        # spinning into the next pass.
        timed_rows = [
            measure(index, lib, n, queries, filtered, args.busy_blas) for filtered in (False, True)
        ]
        for row in timed_rows:
            score(row, lib, n).update(kind=lib.kind, size=n, backend=backend)
            rows.append(row)
            log(
                f"{lib.kind:9s} {n:>7d} {backend:12s} {row['filter']:13s} "
                f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
                f"recall {row['recall']:.4f}  build {build['build_s']:.1f} s"
            )
        if build["how"] == "publish":
            added = [
                dataclasses.replace(p, ref_id=ref_id(n + i), vector=lib.queries[i])
                for i, p in enumerate(points[:10])
            ]
            removed = [p.ref_id for p in points[10:20]]
            _, build["next_s"] = timed(
                lambda: publish_version(settings, 2, 1, added, removed, space=space(dim))
            )
    finally:
        index.close()
        shutil.rmtree(home, ignore_errors=True)
    return build, rows


# -- the tuning sweep ------------------------------------------------------------------------


#: The engine's searches (in_memory=False) with each shard config, then the chosen shard
#: searched in memory.
_ENGINE = dataclasses.replace(EDGE_TUNING, in_memory=False)
SWEEP: tuple[tuple[str, EdgeTuning, tuple[int | None, ...]], ...] = (
    (
        "HNSW m 16, ef_construct 100, per-value payload graphs (engine defaults)",
        EdgeTuning(
            m=16,
            ef_construct=100,
            full_scan_kb=10_000,
            quantized=False,
            style_tenant=False,
            payload_m=16,
            in_memory=False,
        ),
        (64, 128, 256),
    ),
    (
        "no graph, int8 scan, rescored without oversampling",
        dataclasses.replace(_ENGINE, quantized=True, oversampling=1.0),
        (None,),
    ),
    (
        "no graph, int8 scan, rescore x4",
        dataclasses.replace(_ENGINE, quantized=True, oversampling=4.0),
        (None,),
    ),
    (
        "no graph, float32 scan, style not a tenant",
        dataclasses.replace(_ENGINE, style_tenant=False),
        (None,),
    ),
    ("no graph, float32 scan, style tenant, engine search", _ENGINE, (None,)),
    ("**chosen**: no graph, style tenant, float32 copy searched in memory", EDGE_TUNING, (None,)),
)


def run_sweep(lib: Library, n: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    points = lib.points(n)
    dim = lib.vectors.shape[1]
    rows = []
    for name, tuning, efs in SWEEP:
        path = work / f"sweep-{lib.kind}"
        shutil.rmtree(path, ignore_errors=True)

        def build(tuning: EdgeTuning = tuning, path: Path = path) -> None:
            index = EdgeRefIndex.create(path, dim=dim, tuning=tuning)
            index.upsert(points)
            index.finish()
            index.close()

        _, build_s = timed(build)
        for ef in efs:
            searched = dataclasses.replace(tuning, search_ef=ef)
            index = EdgeRefIndex.load(path, dim=dim, tuning=searched)
            try:
                timed_rows = [
                    measure(index, lib, n, args.queries, filtered, args.busy_blas)
                    for filtered in (False, True)
                ]
                for row in timed_rows:
                    label = name if ef is None else f"{name}, hnsw_ef {ef}"
                    score(row, lib, n).update(kind=lib.kind, size=n, tuning=label, build_s=build_s)
                    rows.append(row)
                    log(
                        f"{lib.kind:9s} {label[:60]:60s} {row['filter']:13s} "
                        f"p50 {row['p50_ms']:7.2f} p99 {row['p99_ms']:7.2f} "
                        f"recall {row['recall']:.4f} build {build_s:.1f} s"
                    )
            finally:
                index.close()
        shutil.rmtree(path, ignore_errors=True)
    return rows


# -- output ------------------------------------------------------------------------------------


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def build_table(builds: Sequence[dict[str, Any]]) -> str:
    def secs(b: dict[str, Any], key: str) -> str:
        return f"{b[key]:.2f}" if key in b else "-"

    lines = [
        "| vectors | refs | backend | build s | open s | first search s | next version s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for b in builds:
        how = "" if b["how"] == "publish" else f" ({b['how']})"
        lines.append(
            f"| {b['kind']} | {b['size']:,} | {b['backend']} | {secs(b, 'build_s')}{how} | "
            f"{secs(b, 'open_s')} | {secs(b, 'first_s')} | {secs(b, 'next_s')} |"
        )
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]], sweep: bool) -> str:
    first = "tuning" if sweep else "backend"
    lines = [
        f"| vectors | refs | {first} |{' build s |' if sweep else ''} filter | p50 ms | p99 ms "
        "| max ms | recall@10 | short | queries |",
        f"|---|---:|---|{'---:|' if sweep else ''}---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["tuning"] if sweep else r["backend"]
        build = f" {r['build_s']:.1f} |" if sweep else ""
        lines.append(
            f"| {r['kind']} | {r['size']:,} | {name} |{build} {r['filter']} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | {r['recall']:.4f} | "
            f"{r['short']} | "
            f"{r['queries']} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--local-queries", type=int, default=25, help="qdrant-local queries at 20k+ refs"
    )
    parser.add_argument(
        "--local-path-max",
        type=int,
        default=10_000,
        help="largest size built through qdrant-local's on-disk store (slower above)",
    )
    parser.add_argument(
        "--kinds",
        help="clustered, uniform, collapsed (default: the first two; all three with --sweep)",
    )
    parser.add_argument("--dim", type=int, default=DIM, help="vector length (dlib: 128)")
    parser.add_argument(
        "--busy-blas",
        action="store_true",
        help="compute each exact answer right after its query (OpenBLAS threads spinning)",
    )
    parser.add_argument("--backends", default="edge,qdrant-local")
    parser.add_argument("--sweep", action="store_true", help="compare edge tunings instead")
    parser.add_argument("--sweep-size", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",") if s]
    kinds = args.kinds or ("clustered,uniform,collapsed" if args.sweep else "clustered,uniform")
    args.kind_list = [k for k in kinds.split(",") if k]
    args.backend_list = [b for b in args.backends.split(",") if b]
    unknown = set(args.backend_list) - {"edge", "edge-engine", "qdrant-local"}
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)} (edge, edge-engine, qdrant-local)")
    if args.queries < 1 or args.local_queries < 1:
        parser.error("--queries and --local-queries must be at least 1")
    if args.dim < 2:
        parser.error(f"--dim must be at least 2, got {args.dim}")
    return args


def main(args: argparse.Namespace) -> None:
    # Known and measured here: qdrant-client's local mode is slow past 20,000 points.
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s2a-bench-matching-") as tmp:
        work = Path(tmp)
        for kind in args.kind_list:
            if args.sweep:
                lib = make_library(kind, args.sweep_size, args.queries, args.dim)
                rows += run_sweep(lib, args.sweep_size, args, work)
                continue
            lib = make_library(kind, max(args.size_list), args.queries, args.dim)
            for n in args.size_list:
                for backend in args.backend_list:
                    build, searched = run_backend(backend, lib, n, args, work)
                    builds.append(build)
                    rows += searched
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    if builds:
        sys.stdout.write(build_table(builds) + "\n\n")
    sys.stdout.write(table(rows, args.sweep) + "\n\n")
    sys.stdout.write(
        f"{args.dim}-d vectors{', --busy-blas' if args.busy_blas else ''}; "
        f"{elapsed:.0f} s in all on {os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after\n"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "elapsed_s": elapsed,
                    "load": [load_before, load_after],
                    "builds": builds,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main(parse_args())
