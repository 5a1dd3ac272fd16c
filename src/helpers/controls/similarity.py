"""Each pretraining sample's maximum cosine similarity to any downstream test image, with bounded memory.

Two search paths behind one function, ``max_similarity``:

``exact``
    chunked matmul (NumPy/BLAS): ``chunk_rows x n_test`` float32 scores at a time, so memory is
    ``chunk_rows * n_test * 4`` bytes whatever the corpus size. Used when ``n_test <= exact_max_test``.
``faiss``
    an inverted-file (IVF) search: the test embeddings are split into ``nlist`` cells by spherical k-means
    (``faiss.Kmeans``, default ``nlist = sqrt(n_test)``), each query picks its ``nprobe`` nearest cells
    (default 4) and is scored *exactly* against their test rows, one BLAS matmul per cell and chunk. The
    approximation can only *under*-estimate a maximum (it scans a subset of the test images); a
    near-duplicate (cosine >= ~0.9) lies in its query's nearest cells almost surely, so the control's high
    thresholds are found (``benchmarks/bench_similarity.py`` reports the recall of planted duplicates).
    Why faiss, and why not its own ``IndexIVFFlat.search``: faiss gives a well-tested, seeded k-means and has
    a GPU build with the same API for cluster runs; on this 2-core CPU its per-query IVF scan measured
    slower than BLAS-batched scoring of the same cells (and usearch, HNSW-only, gives no exact-within-cell
    guarantee), so the scan is batched matmuls here.

Corpus run (``similarity_run``): one Parquet per shard of the embedding run, ``shards/NNNNNN.similarity.parquet``
with ``sample_id int64, max_sim float32, argmax_test_id int64`` (test ids index the stacked test matrix of
``embed.downstream_embeddings``), resumable and fingerprinted by the embedding run, the test embeddings and the
search settings (``helpers.shards.run_shards``).

GPU / cluster path: the embedding is the expensive part; ``embed.make_embedder(config, device="cuda")`` runs
the open_clip encoder on a GPU, and ``embed.embed_corpus(executor="ray")`` spreads shards over a Ray cluster
(shards are independent; the output folder must be on shared storage). The search needs only the small test
matrix beside each shard, so ``similarity_run`` can run on any node that sees the embedding folder. Not
measured here (no GPU in the development session); the CPU figures are in ``benchmarks/bench_similarity.py``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helpers.params.controls import Search
from helpers.params.errors import validate
from helpers.shards import (
    SHARD_DIR,
    RunResult,
    Shard,
    ShardChunk,
    check_complete,
    iter_shard_tables,
    read_run,
    run_shards,
)

EMBED_TABLE = "embeddings"  # the corpus embedding run's per-shard table (helpers.controls.embed)
SIM_TABLE = "similarity"
SIM_SCHEMA = pa.schema([("sample_id", pa.int64()), ("max_sim", pa.float32()), ("argmax_test_id", pa.int64())])
METHODS = ("auto", "exact", "faiss")
DEFAULT_EXACT_MAX_TEST = 2048
DEFAULT_MEMORY_BYTES = 256 << 20  # one block of query x test scores (exact) or query x probed-cell scores (IVF)


@dataclass(frozen=True)
class SearchSettings:
    """How ``max_similarity`` searches: method (auto/exact/faiss), the exact path's test-set size limit, the
    IVF cell count (``nlist``, default ``sqrt(n_test)``) and cells scanned per query (``nprobe``, default 4),
    the memory budget of one score block, and the k-means seed."""

    method: str = "auto"
    exact_max_test: int = DEFAULT_EXACT_MAX_TEST
    nlist: int | None = None
    nprobe: int = 4
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    seed: int = 0

    def __post_init__(self) -> None:  # one check: the typed params layer's (errors name the params key)
        validate(Search, dict(self.__dict__), "controls.similarity.search")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Search | None) -> SearchSettings:
        """From a ``controls.similarity.search`` entry (``helpers.params.controls.Search``)."""
        return cls(**validate(Search, config, "controls.similarity.search").model_dump())

    def resolved(self, n_test: int) -> str:
        if self.method != "auto":
            return self.method
        return "exact" if n_test <= self.exact_max_test else "faiss"


def _check_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected a (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: holds NaN or infinite values")
    return x


class MaxSimilarity:
    """A reusable searcher over fixed test embeddings ``(M, D)`` unit vectors; call with queries ``(N, D)``.

    Returns ``(max_sim float32 (N,), argmax int64 (N,))``; cosine similarity assuming unit vectors (the
    embedders return them). Queries are processed in chunks, so memory stays within ``memory_bytes`` beside
    the inputs (plus the faiss index: ``M * D * 4`` bytes).
    """

    def __init__(self, test: np.ndarray, settings: SearchSettings | None = None) -> None:
        self.test = _check_matrix(test, "test embeddings")
        self.settings = settings or SearchSettings()
        self.method = self.settings.resolved(len(self.test))
        self.index = None
        if self.method == "faiss":
            self.index = self._build_faiss()

    def _build_faiss(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """k-means cells of the test set (faiss.Kmeans): centroids, test rows sorted by cell, offsets, ids."""
        import faiss

        m, d = self.test.shape
        nlist = min(self.settings.nlist or max(1, int(np.sqrt(m))), m)
        kmeans = faiss.Kmeans(d, nlist, niter=20, seed=self.settings.seed, spherical=True, min_points_per_centroid=1)
        kmeans.train(self.test)
        centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        cell = (self.test @ centroids.T).argmax(axis=1)
        order = np.argsort(cell, kind="stable")
        offsets = np.searchsorted(cell[order], np.arange(nlist + 1))
        return centroids, np.ascontiguousarray(self.test[order]), offsets, order.astype(np.int64)

    def _search_cells(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IVF search with BLAS: each query scores the test rows of its ``nprobe`` nearest cells exactly."""
        centroids, test, offsets, ids = self.index
        nprobe = min(self.settings.nprobe, len(centroids))
        coarse = q @ centroids.T
        probes = np.argpartition(-coarse, nprobe - 1, axis=1)[:, :nprobe] if nprobe < len(centroids) else (
            np.broadcast_to(np.arange(len(centroids)), coarse.shape))  # fmt: skip
        flat = probes.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(len(centroids) + 1))
        best = np.full(len(q), -np.inf, np.float32)
        arg = np.full(len(q), -1, np.int64)
        for c in range(len(centroids)):
            lo, hi = offsets[c], offsets[c + 1]
            rows = order[bounds[c] : bounds[c + 1]] // nprobe
            if hi == lo or len(rows) == 0:
                continue
            scores = q[rows] @ test[lo:hi].T
            a = scores.argmax(axis=1)
            s = scores[np.arange(len(rows)), a]
            better = s > best[rows]
            best[rows[better]] = s[better]
            arg[rows[better]] = ids[lo + a[better]]
        return best, arg

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _check_matrix(queries, "query embeddings")
        if q.shape[1] != self.test.shape[1]:
            raise ValueError(f"query dim {q.shape[1]} != test dim {self.test.shape[1]}")
        n = len(q)
        best = np.empty(n, np.float32)
        arg = np.empty(n, np.int64)
        if self.method == "exact":
            rows = max(1, self.settings.memory_bytes // (4 * len(self.test)))
            for start in range(0, n, rows):
                scores = q[start : start + rows] @ self.test.T
                a = scores.argmax(axis=1)
                arg[start : start + rows] = a
                best[start : start + rows] = scores[np.arange(len(a)), a]
        else:
            # a query's probed rows: about nprobe / nlist of the test set (x 4 bytes per score)
            per_query = 4 * (len(self.index[0]) + self.settings.nprobe * len(self.test) / len(self.index[0]))
            rows = max(1, int(self.settings.memory_bytes // per_query))
            for start in range(0, n, rows):
                best[start : start + rows], arg[start : start + rows] = self._search_cells(q[start : start + rows])
            missing = arg < 0  # every probed cell empty (k-means can leave a cell empty): exact maximum instead
            if missing.any():
                sub = q[missing] @ self.test.T
                arg[missing], best[missing] = sub.argmax(axis=1), sub.max(axis=1)
        return best, arg


def max_similarity(
    queries: np.ndarray, test: np.ndarray, settings: SearchSettings | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Max cosine similarity of each query row to any test row, and its argmax (see ``MaxSimilarity``)."""
    return MaxSimilarity(test, settings)(queries)


# ============================================================================================ corpus run


def shard_embeddings(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids int64 (N,), embeddings float32 (N, D)) of one shard's ``embeddings`` table."""
    column = table["embedding"].combine_chunks()
    dim = column.type.list_size
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table["sample_id"].to_numpy(), values.reshape(-1, dim)


_SEARCHERS: dict[str, MaxSimilarity] = {}  # per process: one index per test matrix file and settings


def _searcher(test_path: str, settings: SearchSettings) -> MaxSimilarity:
    key = f"{test_path}:{settings}"
    if key not in _SEARCHERS:
        _SEARCHERS.clear()
        _SEARCHERS[key] = MaxSimilarity(np.load(test_path, allow_pickle=False), settings)
    return _SEARCHERS[key]


def similarity_shard(
    shard: Shard, *, embed_dir: str, test_path: str, settings: SearchSettings
) -> Generator[ShardChunk, None, dict]:
    """Shard function: read one shard's corpus embeddings, yield its max-similarity rows, return stats."""
    yield ShardChunk(np.zeros(0, np.int64), np.zeros(0, np.int32))
    searcher = _searcher(test_path, settings)
    n = 0
    table = pq.read_table(shard.path) if os.path.exists(shard.path) else None
    if table is not None and table.num_rows:
        ids, emb = shard_embeddings(table)
        best, arg = searcher(emb)
        n = len(ids)
        out = pa.table({"sample_id": ids, "max_sim": best, "argmax_test_id": arg}, schema=SIM_SCHEMA)
        yield ShardChunk(np.zeros(0, np.int64), np.zeros(0, np.int32), {SIM_TABLE: out})
    return {"shard": shard.index, "samples": n, "method": searcher.method}


def similarity_run(
    embed_dir: str | os.PathLike,
    test_embeddings: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    settings: SearchSettings | None = None,
    allow_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Max similarity of every embedded corpus sample to the test set, one Parquet per shard (resumable).

    The test matrix is saved as ``out_dir/test_embeddings.npy`` (its sha256 is part of the fingerprint).
    Runs serially: the search itself is multi-threaded (BLAS or faiss). The embedding run must be complete
    (``IncompleteRunError`` otherwise, unless ``allow_failed``).
    """
    settings = settings or SearchSettings()
    test = _check_matrix(test_embeddings, "test embeddings")
    embed_dir, out_dir = Path(embed_dir), Path(out_dir)
    embed_run, records = check_complete(embed_dir, allow_failed)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_path = out_dir / "test_embeddings.npy"
    np.save(test_path, test, allow_pickle=False)
    shards = []
    for record in records:
        info = record["files"].get(EMBED_TABLE)
        path = embed_dir / SHARD_DIR / info["file"] if info else embed_dir / SHARD_DIR / f"{record['shard']:06d}.none"
        shards.append(Shard(record["shard"], str(path)))
    fingerprint = {
        "kind": "similarity",
        "embeddings": embed_run.get("fingerprint_sha256"),
        "test_sha256": hashlib.sha256(test.tobytes()).hexdigest(),
        "test_shape": list(test.shape),
        "settings": {**settings.__dict__, "method": settings.resolved(len(test))},
    }
    fn = functools.partial(similarity_shard, embed_dir=str(embed_dir), test_path=str(test_path), settings=settings)
    return run_shards(
        shards, fn, out_dir, fingerprint=fingerprint, executor="serial", overwrite=overwrite, progress=progress
    )


def read_similarity(out_dir: str | os.PathLike, *, allow_failed: bool = False) -> pa.Table:
    """All shards' rows (sample_id, max_sim, argmax_test_id) of a similarity run, concatenated."""
    if read_run(out_dir).get("fingerprint", {}).get("kind") != "similarity":
        raise ValueError(f"{out_dir}: not a similarity run")
    tables = [t for _, t in iter_shard_tables(out_dir, SIM_TABLE, allow_failed=allow_failed)]
    return pa.concat_tables(tables).cast(SIM_SCHEMA) if tables else SIM_SCHEMA.empty_table()


def shard_similarity(out_dir: str | os.PathLike, record: dict) -> pa.Table:
    """One shard's similarity rows, given its completion record (empty when the shard had no images)."""
    info = record.get("files", {}).get(SIM_TABLE)
    if info is None:
        return SIM_SCHEMA.empty_table()
    return pq.read_table(Path(out_dir) / SHARD_DIR / info["file"])


__all__ = [
    "METHODS", "SIM_SCHEMA", "SIM_TABLE", "MaxSimilarity", "SearchSettings", "max_similarity",
    "read_similarity", "shard_similarity", "similarity_run", "similarity_shard",
]  # fmt: skip
