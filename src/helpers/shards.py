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

    run.json                          settings fingerprint, shard list with input fingerprints, n_concepts,
                                      last_run (shards reused / rerun, and why)
    shards/000042.hits.parquet        sample_id int64, concept_id int32 (one row per distinct pair)
    shards/000042.<name>.parquet      extra tables of the shard function, if any
    shards/000042.stats.json          the shard function's stats
    shards/000042.done.json           completion record: status, error, row counts, settings sha, path,
                                      input fingerprint (written last)

Every file is written to a temporary name and renamed into place, and the completion record is written
last, so a shard either has a completion record and all its files, or counts as not done.

Resuming is keyed by content. A shard's result is reused only when (1) the run's settings fingerprint
(every setting that changes the output: concepts, matcher, tagger, source options...), (2) the shard's
path at its index and (3) its file's content fingerprint (``helpers.hashing.file_fingerprint``: size,
mtime in ns and SHA-256 of the first and last 64 KiB, whole-file SHA-256 up to 128 KiB; cheap, because
every shard is fingerprinted on every run) all equal what its completion record stores, and it succeeded
(failed ones are rerun unless ``retry_failed=False``). So editing, appending to, truncating, replacing or
renaming shard files and rerunning gives the counts of a clean run, rerunning only the shards that changed;
``RunResult`` and ``run.json``'s ``last_run`` say how many were reused and rerun, and why. Other settings
in the same folder are refused rather than mixed, unless ``overwrite=True``. One run at a time per output
folder.

Memory: a worker holds one chunk of one shard at a time, the driver only completion records, and the merge
one shard's hits at a time, so peak memory does not grow with the corpus.

Sample ids: ``sample_id = (shard_index << 32) | position``, where ``shard_index`` is the shard's position in
the sorted shard list of the corpus and ``position`` counts every record of the shard in order, bad ones
included; see ``helpers.text.captions``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers.hashing import file_fingerprint, json_default, sha256_json
from helpers.params.errors import ConfigError  # the one error type for bad params

SAMPLE_ID_SHIFT = 32
MAX_SHARDS = 1 << 31  # keeps sample ids non-negative int64
MAX_RECORDS_PER_SHARD = 1 << SAMPLE_ID_SHIFT
HITS_SCHEMA = pa.schema([("sample_id", pa.int64()), ("concept_id", pa.int32())])
EXECUTORS = ("process", "ray", "serial")
RUN_FILE = "run.json"
SHARD_DIR = "shards"
LAYOUT_VERSION = 2  # 2: settings and shard contents are keyed separately (per-shard input fingerprints)


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
    reasons: dict[int, str] = field(default_factory=dict)  # why each processed shard was (re)run

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


def process_shard(
    shard_fn: Callable[[Shard], Any],
    shard: Shard,
    out_dir: str | os.PathLike,
    fp_sha: str,
    *,
    input_fp: Mapping[str, Any] | None = None,
) -> dict:
    """Run ``shard_fn`` on one shard and write its outputs atomically; returns the completion record.

    This is what every executor runs, in the worker. Only the small completion record travels back.
    ``input_fp`` is the shard file's content fingerprint taken by the driver *before* the shard was read
    (so a file changed while it is read is rerun next time); it is stored in the record.
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
        _shard_file(out_dir, shard.index, "stats.json"), json.dumps(stats, indent=1, default=json_default)
    )
    record = {
        "shard": shard.index,
        "path": shard.path,
        "status": "error" if error else "ok",
        "error": error,
        "fingerprint_sha256": fp_sha,
        "input": dict(input_fp) if input_fp is not None else None,
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
    """The run description (fingerprint, shard list with input fingerprints, n_concepts) of an output folder."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out_dir}: no {RUN_FILE}; not a sharded run folder")
    return json.loads(path.read_text())


def _settings_sha(fingerprint: Mapping, n_concepts: int | None) -> str:
    return sha256_json({"layout_version": LAYOUT_VERSION, "fingerprint": dict(fingerprint), "n_concepts": n_concepts})


def reuse_reason(record: dict | None, shard: Shard, settings_sha: str, input_fp: dict | None) -> str | None:
    """Why a shard's stored result cannot stand for ``shard`` now (``None``: it can).

    A stored result stands only when it was made with the same settings (``settings_sha``), for the same
    path at the same index, from a file with the same content fingerprint (``hashing.file_fingerprint``).
    Reasons: ``new``, ``settings changed``, ``path changed``, ``input changed``.
    """
    if record is None:
        return "new"
    if record.get("fingerprint_sha256") != settings_sha:
        return "settings changed"
    if record.get("path") != shard.path:
        return "path changed"
    if record.get("input") != input_fp:
        return "input changed"
    return None


def _prepare_run(
    out_dir: Path,
    shards: Sequence[Shard],
    inputs: Mapping[int, dict | None],
    fingerprint: Mapping,
    n_concepts: int | None,
    overwrite: bool,
) -> str:
    """Write run.json (settings, shard list with input fingerprints); refuse other settings unless overwrite.

    A changed shard list or changed shard contents are no reason to refuse: each shard's record says what
    it was made from, and only what no longer matches is rerun. Records of shard indices that are no longer
    in the list are deleted.
    """
    fp_sha = _settings_sha(fingerprint, n_concepts)
    run = {
        "layout_version": LAYOUT_VERSION,
        "fingerprint": dict(fingerprint),
        "fingerprint_sha256": fp_sha,
        "n_concepts": n_concepts,
        "shards": [{"index": s.index, "path": s.path, "input": inputs[s.index]} for s in shards],
    }
    path = out_dir / RUN_FILE
    shard_dir = out_dir / SHARD_DIR
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("fingerprint_sha256") != fp_sha and old.get("layout_version") == LAYOUT_VERSION:
            if not overwrite:
                changed = sorted(
                    k
                    for k in set(old.get("fingerprint", {})) | set(fingerprint)
                    if old.get("fingerprint", {}).get(k) != fingerprint.get(k)
                )
                raise ConfigError(
                    f"out_dir: {out_dir} holds a run with a different configuration (changed: "
                    f"{', '.join(map(str, changed)) or 'n_concepts'}); use a new folder or overwrite=True"
                )
        if old.get("fingerprint_sha256") != fp_sha and shard_dir.exists():
            for f in shard_dir.glob("*"):  # other settings (or an older layout): nothing is reusable
                f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    shard_dir.mkdir(exist_ok=True)
    wanted = {f"{s.index:06d}" for s in shards}
    for f in shard_dir.glob("*"):
        if f.name.lstrip(".").split(".")[0] not in wanted:  # a shard that left the list (renamed, removed)
            f.unlink(missing_ok=True)
    _atomic_write_text(path, json.dumps(run, indent=1, default=json_default))
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
    ray_num_cpus: float | None = None,
    ray_num_gpus: float | None = None,
    ray_num_actors: int | None = None,
    retry_failed: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Map ``shard_fn`` over ``shards``, writing each shard's outputs to ``out_dir`` (resumable).

    ``executor``: ``"process"`` (a local process pool, ``workers`` processes, default all cores),
    ``"ray"`` (a pool of Ray actors, see ``helpers.executors.run_ray_actors``: each actor builds the shard
    function's state once, e.g. a model, and tags the shards the pool hands it; ``ray_num_cpus`` /
    ``ray_num_gpus`` are reserved per actor, ``ray_num_actors`` defaults to what the cluster holds; connects
    to ``ray_address`` or ``RAY_ADDRESS``, else starts a local Ray; ``out_dir`` must be on storage every
    node sees) or ``"serial"`` (in this process). ``fingerprint`` describes every setting the outputs
    depend on; the shards' contents are fingerprinted here (``hashing.file_fingerprint``).

    Resuming: a shard's stored result is reused only when its settings, path and input fingerprint all
    match (``reuse_reason``) and it succeeded (or failed, with ``retry_failed=False``); everything else is
    rerun. ``RunResult.processed`` / ``skipped`` say which, ``reasons`` why, and run.json keeps the
    summary (``last_run``) for ``run_report``. Other settings in the same folder raise ``ConfigError``
    unless ``overwrite=True`` (then the old results are deleted).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor: unknown executor {executor!r} (expected one of {', '.join(EXECUTORS)})")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: expected a positive number of processes, got {workers!r}")
    indices = [s.index for s in shards]
    if len(set(indices)) != len(indices):
        raise ValueError("shard indices are not unique")
    out_dir = Path(out_dir)
    inputs = {s.index: file_fingerprint(s.path) for s in shards}
    fp_sha = _prepare_run(out_dir, shards, inputs, fingerprint, n_concepts, overwrite)
    todo, skipped, records, reasons = [], [], {}, {}
    for shard in shards:
        record = _load_record(out_dir, shard.index)
        reason = reuse_reason(record, shard, fp_sha, inputs[shard.index])
        if reason is None and record["status"] != "ok" and retry_failed:
            reason = "failed before"
        if reason is None:
            skipped.append(shard.index)
            records[shard.index] = record
        else:
            todo.append(shard)
            reasons[shard.index] = reason
    _set_last_run(out_dir, len(skipped), reasons)
    bar = tqdm(total=len(shards), initial=len(skipped), desc="shards", unit="shard", disable=not progress)
    work = ShardWork(shard_fn, str(out_dir), fp_sha, inputs)

    def done(record: dict) -> None:
        records[record["shard"]] = record
        bar.update()

    from helpers import executors  # imports this module: loaded when first needed

    try:
        if executor == "serial" or (executor == "process" and (workers == 1 or len(todo) <= 1)):
            for shard in todo:
                done(work(shard))
        elif executor == "process":
            executors.run_process_pool(todo, work, workers, done)
        elif todo:
            options = executors.RayOptions(ray_address, ray_num_cpus, ray_num_gpus, ray_num_actors)
            executors.run_ray_actors(todo, work, options, done)
    finally:
        bar.close()
    ordered = [records[i] for i in sorted(records)]
    return RunResult(
        out_dir=out_dir,
        processed=sorted(s.index for s in todo),
        skipped=sorted(skipped),
        failed={r["shard"]: r["error"] for r in ordered if r["status"] != "ok"},
        records=ordered,
        reasons=dict(sorted(reasons.items())),
    )


@dataclass(frozen=True)
class ShardWork:
    """What an executor runs per shard: ``process_shard`` bound to one run (picklable when ``shard_fn`` is).

    ``prepare()`` builds the shard function's per-process state ahead of the first shard when the shard
    function offers a ``prepare`` method (a Ray actor calls it once, when it starts).
    """

    shard_fn: Callable[[Shard], Any]
    out_dir: str
    fp_sha: str
    inputs: Mapping[int, dict | None]

    def prepare(self) -> None:
        hook = getattr(self.shard_fn, "prepare", None)
        if callable(hook):
            hook()

    def __call__(self, shard: Shard) -> dict:
        return process_shard(self.shard_fn, shard, self.out_dir, self.fp_sha, input_fp=self.inputs.get(shard.index))


def _set_last_run(out_dir: Path, reused: int, reasons: Mapping[int, str]) -> None:
    run = read_run(out_dir)
    by_reason: dict[str, int] = {}
    for reason in reasons.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    run["last_run"] = {"reused": reused, "rerun": len(reasons), "rerun_reasons": by_reason}
    _atomic_write_text(out_dir / RUN_FILE, json.dumps(run, indent=1, default=json_default))


# ----------------------------------------------------------------------------------------- merging


def shard_records(out_dir: str | os.PathLike) -> tuple[dict, list[dict], list[int]]:
    """(run description, completion records of the done shards, indices of shards not done)."""
    out_dir = Path(out_dir)
    run = read_run(out_dir)
    records, missing = [], []
    for entry in run["shards"]:
        record = _load_record(out_dir, entry["index"])
        shard = Shard(entry["index"], entry["path"])
        if reuse_reason(record, shard, run["fingerprint_sha256"], entry.get("input")) is not None:
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
        "last_run": run.get("last_run", {}),
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
