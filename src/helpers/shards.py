"""Sharded, resumable execution of a per-shard function, and the merge of its hits into counts.

Generic on purpose: the caption search (``helpers.text.search``) and the image side both map a *shard
function* over the shards of a corpus and count, per concept, the distinct samples it was found in.

Shard function
    ``fn(shard) -> generator`` yielding ``ShardChunk`` objects (hits of a few thousand samples each, plus
    optional extra tables) and *returning* a JSON-serialisable stats dict (``return stats`` at the end of
    the generator); or a plain function returning one ``ShardResult``. It must be deterministic and may
    not depend on other shards; to run in a process pool or on Ray it must be picklable (a module-level
    function or a ``functools.partial`` of one). A stats dict with a non-empty ``"error"`` marks the
    shard as failed *after* keeping what was read (a truncated tar keeps its complete samples). An
    exception marks it failed and keeps nothing. A ``ConfigError`` aborts the whole run (fail fast).

Output folder layout (``out_dir``)::

    run.json                          fingerprint, shard list, n_concepts
    shards/000042.hits.parquet        sample_id int64, concept_id int32 (one row per distinct pair)
    shards/000042.<name>.parquet      extra tables of the shard function, if any
    shards/000042.stats.json          the shard function's stats
    shards/000042.done.json           completion record: status, error, row counts (written last)

Every file is written to a temporary name and renamed into place, and the completion record is written
last, so a shard either has a completion record and all its files, or counts as not done. A rerun skips
shards whose completion record has status ``ok`` (and reruns failed ones unless ``retry_failed=False``),
which gives results identical to a single uninterrupted run. A rerun with a different fingerprint (other
concepts, semantics, or shard list) is refused rather than mixed, unless ``overwrite=True``. One run at a
time per output folder.

Memory: a worker holds one chunk of one shard at a time, the driver only completion records, and the merge
one shard's hits at a time, so peak memory does not grow with the corpus.

Sample ids: ``sample_id = (shard_index << 32) | position``, where ``shard_index`` is the shard's position in
the sorted shard list of the corpus and ``position`` counts every record of the shard in order, bad ones
included; see ``helpers.text.captions``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers.params.errors import ConfigError  # the one error type for bad params

SAMPLE_ID_SHIFT = 32
MAX_SHARDS = 1 << 31  # keeps sample ids non-negative int64
MAX_RECORDS_PER_SHARD = 1 << SAMPLE_ID_SHIFT
HITS_SCHEMA = pa.schema([("sample_id", pa.int64()), ("concept_id", pa.int32())])
EXECUTORS = ("process", "ray", "serial")
RUN_FILE = "run.json"
SHARD_DIR = "shards"
LAYOUT_VERSION = 1


class IncompleteRunError(RuntimeError):
    """A merge was asked for while shards are missing or failed."""


@dataclass(frozen=True, order=True)
class Shard:
    """One shard of a corpus: its index in the sorted shard list, and its path."""

    index: int
    path: str


@dataclass
class ShardChunk:
    """Hits of part of a shard: parallel arrays, plus optional extra tables (name -> table)."""

    sample_ids: np.ndarray
    concept_ids: np.ndarray
    extra: dict[str, pa.Table] = field(default_factory=dict)


@dataclass
class ShardResult:
    """The whole output of a non-streaming shard function."""

    sample_ids: np.ndarray
    concept_ids: np.ndarray
    stats: dict = field(default_factory=dict)
    extra: dict[str, pa.Table] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run did: shards processed now, skipped (already done), and failed (index -> error)."""

    out_dir: Path
    processed: list[int]
    skipped: list[int]
    failed: dict[int, str]
    records: list[dict]

    @property
    def ok(self) -> bool:
        return not self.failed


def make_sample_ids(shard_index: int, positions: np.ndarray | int) -> np.ndarray:
    """``(shard_index << 32) | position`` as int64."""
    if not 0 <= shard_index < MAX_SHARDS:
        raise ValueError(f"shard index {shard_index} out of range [0, 2**31)")
    return (np.int64(shard_index) << np.int64(SAMPLE_ID_SHIFT)) | np.asarray(positions, dtype=np.int64)


def split_sample_ids(sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``make_sample_ids``: (shard_index, position)."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    return ids >> SAMPLE_ID_SHIFT, ids & np.int64(MAX_RECORDS_PER_SHARD - 1)


# ------------------------------------------------------------------------------------------ writing


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def fingerprint_sha256(fingerprint: Mapping) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=_json_default).encode()).hexdigest()


def _shard_file(out_dir: Path, index: int, name: str) -> Path:
    return out_dir / SHARD_DIR / f"{index:06d}.{name}"


class _TableWriter:
    """Streams record batches of one table into a temporary Parquet file, renamed on ``commit``."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        self.schema = schema
        self.writer = pq.ParquetWriter(self.tmp, schema)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if table.num_rows:
            self.writer.write_table(table)
            self.rows += table.num_rows

    def commit(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def distinct_pairs(sample_ids: np.ndarray, concept_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (sample, concept) pairs, sorted (cheap when they already are)."""
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    concept_ids = np.asarray(concept_ids, dtype=np.int32)
    if len(sample_ids) != len(concept_ids):
        raise ValueError("sample_ids and concept_ids differ in length")
    if len(sample_ids) > 1:
        ds, dc = np.diff(sample_ids), np.diff(concept_ids)
        if not np.all((ds > 0) | ((ds == 0) & (dc > 0))):
            order = np.lexsort((concept_ids, sample_ids))
            sample_ids, concept_ids = sample_ids[order], concept_ids[order]
            keep = np.concatenate(([True], (np.diff(sample_ids) != 0) | (np.diff(concept_ids) != 0)))
            sample_ids, concept_ids = sample_ids[keep], concept_ids[keep]
    return sample_ids, concept_ids


def _hits_table(sample_ids: np.ndarray, concept_ids: np.ndarray) -> pa.Table:
    """One row per distinct (sample, concept), sorted, so files do not depend on how hits were found."""
    sample_ids, concept_ids = distinct_pairs(sample_ids, concept_ids)
    return pa.table({"sample_id": sample_ids, "concept_id": concept_ids}, schema=HITS_SCHEMA)


def process_shard(shard_fn: Callable[[Shard], Any], shard: Shard, out_dir: str | os.PathLike, fp_sha: str) -> dict:
    """Run ``shard_fn`` on one shard and write its outputs atomically; returns the completion record.

    This is what every executor runs, in the worker. Only the small completion record travels back.
    """
    out_dir = Path(out_dir)
    shard_dir = out_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(f".{shard.index:06d}.*.tmp-*"):  # left by a killed earlier attempt
        stale.unlink(missing_ok=True)
    _shard_file(out_dir, shard.index, "done.json").unlink(missing_ok=True)
    writers: dict[str, _TableWriter] = {
        "hits": _TableWriter(_shard_file(out_dir, shard.index, "hits.parquet"), HITS_SCHEMA)
    }
    started = time.time()

    def write_chunk(sample_ids, concept_ids, extra: Mapping[str, pa.Table]) -> None:
        writers["hits"].write(_hits_table(sample_ids, concept_ids))
        for name, table in extra.items():
            if name == "hits" or not name.isidentifier():
                raise ValueError(f"extra table name {name!r} is reserved or not an identifier")
            if name not in writers:
                writers[name] = _TableWriter(_shard_file(out_dir, shard.index, f"{name}.parquet"), table.schema)
            writers[name].write(table)

    error: str | None = None
    try:
        result = shard_fn(shard)
        if isinstance(result, ShardResult):
            write_chunk(result.sample_ids, result.concept_ids, result.extra)
            stats = dict(result.stats)
        elif isinstance(result, Generator):
            while True:
                try:
                    chunk = next(result)
                except StopIteration as stop:
                    stats = dict(stop.value or {})
                    break
                write_chunk(chunk.sample_ids, chunk.concept_ids, chunk.extra)
        else:
            raise TypeError(f"shard function returned {type(result).__name__}, not a generator or ShardResult")
        error = stats.get("error") or None
    except ConfigError:
        for w in writers.values():
            w.abort()
        raise
    except Exception as err:  # a bug or an unreadable shard: recorded, reported, nothing kept
        for w in writers.values():
            w.abort()
        error = f"{type(err).__name__}: {err}"
        stats = {"error": error, "traceback": traceback.format_exc(limit=8)}
        writers = {"hits": _TableWriter(_shard_file(out_dir, shard.index, "hits.parquet"), HITS_SCHEMA)}
    files = {}
    for name, w in writers.items():
        w.commit()
        files[name] = {"file": w.path.name, "rows": w.rows}
    _atomic_write_text(
        _shard_file(out_dir, shard.index, "stats.json"), json.dumps(stats, indent=1, default=_json_default)
    )
    record = {
        "shard": shard.index,
        "path": shard.path,
        "status": "error" if error else "ok",
        "error": error,
        "fingerprint_sha256": fp_sha,
        "files": files,
        "seconds": round(time.time() - started, 3),
    }
    _atomic_write_text(_shard_file(out_dir, shard.index, "done.json"), json.dumps(record, indent=1))
    return record


# ----------------------------------------------------------------------------------------- running


def _load_record(out_dir: Path, index: int) -> dict | None:
    path = _shard_file(out_dir, index, "done.json")
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not all((out_dir / SHARD_DIR / f["file"]).exists() for f in record.get("files", {}).values()):
        return None
    return record


def read_run(out_dir: str | os.PathLike) -> dict:
    """The run description (fingerprint, shard list, n_concepts) of an output folder."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out_dir}: no {RUN_FILE}; not a sharded run folder")
    return json.loads(path.read_text())


def _prepare_run(
    out_dir: Path, shards: Sequence[Shard], fingerprint: Mapping, n_concepts: int | None, overwrite: bool
) -> str:
    run = {
        "layout_version": LAYOUT_VERSION,
        "fingerprint": dict(fingerprint),
        "n_concepts": n_concepts,
        "shards": [{"index": s.index, "path": s.path} for s in shards],
    }
    fp_sha = fingerprint_sha256({k: run[k] for k in ("layout_version", "fingerprint", "n_concepts", "shards")})
    run["fingerprint_sha256"] = fp_sha
    path = out_dir / RUN_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint_sha256") != fp_sha:
            if not overwrite:
                changed = sorted(
                    k
                    for k in set(old.get("fingerprint", {})) | set(fingerprint)
                    if old.get("fingerprint", {}).get(k) != fingerprint.get(k)
                )
                if old.get("shards") != run["shards"]:
                    changed.append("shard list")
                raise ConfigError(
                    f"out_dir: {out_dir} holds a run with a different configuration (changed: "
                    f"{', '.join(map(str, changed)) or 'n_concepts/layout'}); use a new folder or overwrite=True"
                )
            for f in (out_dir / SHARD_DIR).glob("*"):
                f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARD_DIR).mkdir(exist_ok=True)
    _atomic_write_text(path, json.dumps(run, indent=1, default=_json_default))
    return fp_sha


def run_shards(
    shards: Sequence[Shard],
    shard_fn: Callable[[Shard], Any],
    out_dir: str | os.PathLike,
    *,
    fingerprint: Mapping,
    n_concepts: int | None = None,
    executor: str = "process",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Map ``shard_fn`` over ``shards``, writing each shard's outputs to ``out_dir`` (resumable).

    ``executor``: ``"process"`` (a local process pool, ``workers`` processes, default all cores),
    ``"ray"`` (Ray remote tasks; connects to ``ray_address`` or ``RAY_ADDRESS``, else starts a local Ray;
    an already initialised Ray is used as is; ``out_dir`` must be on storage every node sees) or
    ``"serial"`` (in this process). ``fingerprint`` describes everything the outputs depend on.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: unknown executor {executor!r} (expected one of {', '.join(EXECUTORS)})")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: expected a positive number of processes, got {workers!r}")
    indices = [s.index for s in shards]
    if len(set(indices)) != len(indices):
        raise ValueError("shard indices are not unique")
    out_dir = Path(out_dir)
    fp_sha = _prepare_run(out_dir, shards, fingerprint, n_concepts, overwrite)
    todo, skipped, records = [], [], {}
    for shard in shards:
        record = _load_record(out_dir, shard.index)
        if record and record.get("fingerprint_sha256") == fp_sha and (record["status"] == "ok" or not retry_failed):
            skipped.append(shard.index)
            records[shard.index] = record
        else:
            todo.append(shard)
    bar = tqdm(total=len(shards), initial=len(skipped), desc="shards", unit="shard", disable=not progress)
    try:
        if executor == "serial" or (executor == "process" and (workers == 1 or len(todo) <= 1)):
            for shard in todo:
                records[shard.index] = process_shard(shard_fn, shard, out_dir, fp_sha)
                bar.update()
        elif executor == "process":
            _run_pool(todo, shard_fn, out_dir, fp_sha, workers, records, bar)
        else:
            _run_ray(todo, shard_fn, out_dir, fp_sha, ray_address, records, bar)
    finally:
        bar.close()
    ordered = [records[i] for i in sorted(records)]
    return RunResult(
        out_dir=out_dir,
        processed=sorted(s.index for s in todo),
        skipped=sorted(skipped),
        failed={r["shard"]: r["error"] for r in ordered if r["status"] != "ok"},
        records=ordered,
    )


def _run_pool(todo, shard_fn, out_dir, fp_sha, workers, records, bar) -> None:
    workers = min(workers or os.cpu_count() or 1, len(todo))
    queue = iter(todo)
    # spawn, not fork: the parent may hold threads (pyarrow, tqdm) that fork would copy mid-state
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set = set()
        try:
            while True:
                # a bounded number of shards in flight: the driver's memory does not grow with the corpus
                for shard in itertools.islice(queue, 2 * workers - len(pending)):
                    pending.add(pool.submit(process_shard, shard_fn, shard, str(out_dir), fp_sha))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    record = future.result()  # a ConfigError from a worker stops the run here
                    records[record["shard"]] = record
                    bar.update()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _run_ray(todo, shard_fn, out_dir, fp_sha, ray_address, records, bar) -> None:
    import ray

    started_here = False
    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(process_shard)
        fn_ref = ray.put(shard_fn)  # shipped to the object store once, not with every task
        in_flight = max(2 * int(ray.cluster_resources().get("CPU", 1)), 2)
        queue = iter(todo)
        pending: list = []
        while True:
            for shard in itertools.islice(queue, in_flight - len(pending)):
                pending.append(task.remote(fn_ref, shard, str(out_dir), fp_sha))
            if not pending:
                break
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, ConfigError):
                        raise ConfigError(str(cause)) from None
                    raise
                records[record["shard"]] = record
                bar.update()
    finally:
        if started_here:
            ray.shutdown()


# ----------------------------------------------------------------------------------------- merging


def shard_records(out_dir: str | os.PathLike) -> tuple[dict, list[dict], list[int]]:
    """(run description, completion records of the done shards, indices of shards not done)."""
    out_dir = Path(out_dir)
    run = read_run(out_dir)
    records, missing = [], []
    for entry in run["shards"]:
        record = _load_record(out_dir, entry["index"])
        if record is None or record.get("fingerprint_sha256") != run["fingerprint_sha256"]:
            missing.append(entry["index"])
        else:
            records.append(record)
    return run, records, missing


def read_shard_stats(out_dir: str | os.PathLike, index: int) -> dict:
    return json.loads(_shard_file(Path(out_dir), index, "stats.json").read_text())


def run_report(out_dir: str | os.PathLike) -> dict:
    """Totals of the numeric shard stats, and every failed or missing shard with its reason."""
    out_dir = Path(out_dir)
    run, records, missing = shard_records(out_dir)
    totals: dict[str, int] = {}
    for record in records:
        for key, value in read_shard_stats(out_dir, record["shard"]).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("shard",):
                totals[key] = totals.get(key, 0) + value
    paths = {e["index"]: e["path"] for e in run["shards"]}
    return {
        "shards": len(run["shards"]),
        "done": len(records),
        "ok": sum(r["status"] == "ok" for r in records),
        "failed": [
            {"shard": r["shard"], "path": r["path"], "error": r["error"]} for r in records if r["status"] != "ok"
        ],
        "missing": [{"shard": i, "path": paths[i]} for i in missing],
        "totals": totals,
    }


def check_complete(out_dir: str | os.PathLike, allow_failed: bool) -> tuple[dict, list[dict]]:
    """The run and its completion records; raises IncompleteRunError if a shard is not done, or failed
    (unless ``allow_failed``), naming them."""
    run, records, missing = shard_records(out_dir)
    if missing:
        raise IncompleteRunError(f"{out_dir}: {len(missing)} shard(s) not done (first: {missing[:5]}); rerun to resume")
    failed = [r for r in records if r["status"] != "ok"]
    if failed and not allow_failed:
        details = "; ".join(f"#{r['shard']} {r['path']}: {r['error']}" for r in failed[:5])
        raise IncompleteRunError(
            f"{out_dir}: {len(failed)} shard(s) failed ({details}); pass allow_failed=True to use what they kept"
        )
    return run, records


def iter_shard_tables(
    out_dir: str | os.PathLike, table: str = "hits", *, allow_failed: bool = False
) -> Generator[tuple[dict, pa.Table], None, None]:
    """(completion record, table) per shard, one shard in memory at a time."""
    out_dir = Path(out_dir)
    _, records = check_complete(out_dir, allow_failed)
    for record in records:
        info = record["files"].get(table)
        if info is None:
            continue
        yield record, pq.read_table(out_dir / SHARD_DIR / info["file"])


def merge_counts(
    out_dir: str | os.PathLike,
    *,
    n_concepts: int | None = None,
    table: str = "hits",
    row_filter: Callable[[dict, pa.Table], np.ndarray] | None = None,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Counts table (concept_id int32, count int64): the number of distinct samples per concept.

    Streams the shards one at a time (memory does not grow with the corpus). ``row_filter(record, table)``
    may return a boolean mask of rows to keep. Every concept ``0..n_concepts-1`` gets a row (count 0 when
    absent); ``n_concepts`` defaults to the run's. Raises ``IncompleteRunError`` when a shard is not done,
    or failed and ``allow_failed`` is false.
    """
    out_dir = Path(out_dir)
    run = read_run(out_dir)
    n = n_concepts if n_concepts is not None else run.get("n_concepts")
    counts = np.zeros(n or 0, dtype=np.int64)
    for record, tbl in tqdm(
        iter_shard_tables(out_dir, table, allow_failed=allow_failed), desc="merge", disable=not progress
    ):
        if row_filter is not None:
            tbl = tbl.filter(pa.array(np.asarray(row_filter(record, tbl), dtype=bool)))
        if tbl.num_rows == 0:
            continue
        _, concepts = distinct_pairs(tbl["sample_id"].to_numpy(), tbl["concept_id"].to_numpy())
        shard_counts = np.bincount(concepts, minlength=len(counts))
        if len(shard_counts) > len(counts):
            if n is not None:
                raise ValueError(f"concept id {len(shard_counts) - 1} >= n_concepts {n}")
            counts = np.concatenate([counts, np.zeros(len(shard_counts) - len(counts), dtype=np.int64)])
        counts += shard_counts
    return pd.DataFrame({"concept_id": np.arange(len(counts), dtype=np.int32), "count": counts})
