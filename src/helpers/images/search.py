"""Image-side concept search: batch inference of an image tagger over webdataset tar shards.

Why this module exists
    The study counts a concept in a pretraining sample's *image* when a tagger (RAM++ in the paper; open_clip
    or a trained CNN here too) gives it a probability above a threshold, and compares those counts with the
    caption-side counts of ``helpers.text.search`` (matched counts, misalignment: ``helpers.images.frequencies``).
    Both sides must therefore number the samples identically; they do because both group a tar's files into
    samples with ``helpers.text.captions.iter_tar_samples`` and use ``sample_id = (shard_index << 32) | position``.

Corpus entry (``corpora.<name>.images`` in params.yaml)::

    images:
      format: wds                                  # webdataset tars (the only image format)
      paths: data/raw/cc3m/{00000..00331}.tar      # same conventions as captions.paths
      image_ext: [jpg, jpeg, png, webp]            # the first one a sample has is its image

Pipeline of one shard (``ImageShardFn``)
    A ``torch.utils.data.DataLoader`` over an ``IterableDataset`` of the shard streams the tar in worker
    processes; each worker decodes and transforms (``Tagger.transform()``) the images of its own *blocks*
    (runs of ``batch_size`` consecutive positions; worker k owns blocks k, k + W, ...), so a block is a
    batch and the batches hold the same images whatever the number of workers. The main process restores
    block order, runs ``Tagger.scores`` (pinned memory and non-blocking copies on CUDA, optional autocast
    and channels_last) and keeps every probability >= ``prob_floor``. Corrupt images, samples without an
    image and a truncated tar are counted, never raised; a skipped image's position is simply absent.

Per-shard outputs (through ``helpers.shards.run_shards``; a shard's files are atomic and resumable)::

    hits    sample_id int64, concept_id int32             pairs with prob >= prob_floor
    scores  sample_id int64, concept_id int32, prob f32   the same pairs with their probability
    tagged  sample_id int64                               every sample whose image was scored
    stats   records, images, corrupt, missing_image, truncated_tar, error, seconds_wait_decode, seconds_model

Any threshold >= the floor can be applied afterwards (``image_counts``) without re-tagging: the counts at
threshold t equal those of a run with ``prob_floor=t``. Thresholds are compared in float32, the dtype of
the stored probabilities, both while tagging and afterwards, so that this holds exactly.

Executors (those of ``helpers.shards.run_shards``): ``process`` (``workers`` processes, each building the
model once; ``workers=1`` runs in this process), ``serial`` (this process), ``ray`` (an actor pool: one
long-lived actor per model replica, e.g. one per GPU with ``ray_num_gpus=1``, each building the model once
when it starts, through ``ImageShardFn.prepare``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from helpers import paths
from helpers.devices import autocast, resolve_device
from helpers.hashing import sha256_json
from helpers.images.sources import ImageSource, ShardImages, list_image_shards
from helpers.images.taggers import Tagger
from helpers.params import validate
from helpers.params.images import ImageSearch as ImageSearchParams
from helpers.shards import (
    SHARD_DIR,
    ConfigError,
    RunResult,
    Shard,
    ShardChunk,
    iter_shard_tables,
    make_sample_ids,
    read_run,
    run_shards,
)

SEMANTICS_VERSION = 1  # bump when what is stored for the same inputs changes
SCORES_SCHEMA = pa.schema([("sample_id", pa.int64()), ("concept_id", pa.int32()), ("prob", pa.float32())])
TAGGED_SCHEMA = pa.schema([("sample_id", pa.int64())])
# rows buffered before a chunk is handed to the writer: few, large Parquet row groups
_CHUNK_SAMPLES = 4096
_CHUNK_ROWS = 65536

# ------------------------------------------------------------------------------------------ config


def image_search_dir(name: str) -> Path:
    """Per-shard outputs of the image search of image corpus ``name`` (resumable).

    This is the folder the ``image_search@<name>`` stage declares as its output in dvc.yaml, so readers find a
    corpus' run by its name alone. A changed tagger is a changed run fingerprint: the stage starts the folder
    afresh (``overwrite=True``) rather than mixing taggers.
    """
    return paths.interim_dir() / "image_search" / name


# ------------------------------------------------------------------------------ model per process


_TAGGERS: dict[str, Tagger] = {}  # per process: the model is built once and reused for every shard


def _channels_last(tagger: Tagger) -> None:
    """Convert the tagger's network to channels_last, when it exposes one (``channels_last()`` or ``.model``)."""
    hook = getattr(tagger, "channels_last", None)
    if callable(hook):
        hook()
        return
    model = getattr(tagger, "model", None)
    if isinstance(model, torch.nn.Module):
        model.to(memory_format=torch.channels_last)


def clear_tagger_cache() -> None:
    """Drop the models this process holds (frees GPU memory in a notebook)."""
    _TAGGERS.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tagger_key(fingerprint: Mapping, device: str, channels_last: bool) -> str:
    return sha256_json({"fp": fingerprint, "device": device, "cl": channels_last})


@dataclass(frozen=True)
class InferenceSettings:
    """How a shard is tagged; everything but ``prob_floor``, ``precision`` and ``decode_draft`` leaves the
    stored results unchanged (they are not in the fingerprint)."""

    prob_floor: float = 0.5
    batch_size: int = 64
    num_workers: int = 0
    device: str | None = None
    precision: str = "fp32"
    channels_last: bool | None = None  # None: on CUDA only
    decode_draft: bool = False
    torch_threads: int | None = None
    prefetch_factor: int = 2
    progress: bool = False


@dataclass(frozen=True)
class ImageShardFn:
    """The picklable shard function of the image search (``run_shards`` calls it with a ``Shard``).

    It holds the tagger *factory*, not the model: each process (pool worker, Ray actor) builds the model once,
    on first use, and keeps it in a per-process cache keyed by the tagger's fingerprint and device.
    """

    source: ImageSource
    tagger_factory: Callable[[], Tagger]
    tagger_fingerprint: Mapping[str, Any]
    n_concepts: int
    settings: InferenceSettings

    def tagger(self) -> Tagger:
        """The model of this process, built (and moved to the device) on first use."""
        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        device = resolve_device(s.device)
        channels_last = s.channels_last if s.channels_last is not None else device.startswith("cuda")
        key = _tagger_key(self.tagger_fingerprint, device, channels_last)
        tagger = _TAGGERS.get(key)
        if tagger is None:
            tagger = self.tagger_factory()
            if tagger.fingerprint() != self.tagger_fingerprint:
                raise ConfigError(
                    "tagger: the factory built a model whose fingerprint differs from the driver's "
                    "(non-deterministic factory or different files on this node)"
                )
            tagger = tagger.to(device) or tagger
            if channels_last:
                _channels_last(tagger)
            _TAGGERS[key] = tagger
        return tagger

    def prepare(self) -> None:
        """Build this process's model now (a Ray actor calls it once, when it starts)."""
        self.tagger()

    def __call__(self, shard: Shard) -> Generator[ShardChunk, None, dict]:
        return tag_shard(shard, self)


def _empty_chunk() -> ShardChunk:
    """A chunk with empty tables: registers the extra tables so their files exist even for an empty shard."""
    return ShardChunk(
        np.zeros(0, np.int64),
        np.zeros(0, np.int32),
        {"scores": SCORES_SCHEMA.empty_table(), "tagged": TAGGED_SCHEMA.empty_table()},
    )


def _chunk(ids: list[np.ndarray], concepts: list[np.ndarray], probs: list[np.ndarray], tagged: list[np.ndarray]):
    sample_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    concept_ids = np.concatenate(concepts) if concepts else np.zeros(0, np.int32)
    prob = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    tagged_ids = np.concatenate(tagged) if tagged else np.zeros(0, np.int64)
    scores = pa.table({"sample_id": sample_ids, "concept_id": concept_ids, "prob": prob}, schema=SCORES_SCHEMA)
    return ShardChunk(sample_ids, concept_ids, {"scores": scores, "tagged": pa.table({"sample_id": tagged_ids})})


def tag_shard(shard: Shard, fn: ImageShardFn) -> Generator[ShardChunk, None, dict]:
    """Tag every image of one shard; yields chunks of (hits, scores, tagged) and returns the shard's stats.

    Pure: the outputs depend only on the shard's file, the tagger and ``prob_floor`` / ``precision`` /
    ``decode_draft``. The batches are the same blocks whatever the DataLoader worker count, so workers never
    change a result; another ``batch_size`` can move a probability in its last bits on some backends
    (batched kernels), which is why it is kept out of the fingerprint only as a documented tolerance.
    """
    s = fn.settings
    tagger = fn.tagger()
    device = resolve_device(s.device)
    floor = np.float32(s.prob_floor)
    stats: dict[str, Any] = {
        "shard": shard.index,
        "path": shard.path,
        "records": 0,
        "images": 0,
        "corrupt": 0,
        "missing_image": 0,
        "truncated_tar": 0,
        "error": None,
        "seconds_wait_decode": 0.0,
        "seconds_model": 0.0,
        "seconds_decode_cpu": 0.0,
    }
    yield _empty_chunk()
    if not os.path.exists(shard.path):
        stats["error"] = f"missing shard: {shard.path} does not exist"
        return stats
    dataset = ShardImages(
        shard.path,
        fn.source.image_ext,
        tagger.transform(),
        s.batch_size,
        draft_size=tagger.image_size if s.decode_draft else None,
    )
    cuda = device.startswith("cuda")
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=s.num_workers,
        pin_memory=cuda and torch.cuda.is_available(),
        prefetch_factor=s.prefetch_factor if s.num_workers > 0 else None,
    )
    channels_last = s.channels_last if s.channels_last is not None else cuda
    pending: dict[int, dict] = {}
    next_block = 0
    buf_ids: list[np.ndarray] = []
    buf_concepts: list[np.ndarray] = []
    buf_probs: list[np.ndarray] = []
    buf_tagged: list[np.ndarray] = []
    buffered = [0, 0]  # samples, rows
    bar = tqdm(desc=f"shard {shard.index}", unit="img", leave=False, disable=not s.progress)

    def score(item: dict) -> None:
        stats["records"] += item["records"]
        stats["corrupt"] += item["corrupt"]
        stats["missing_image"] += item["missing"]
        stats["seconds_decode_cpu"] += item["decode_s"]
        positions = item["positions"].numpy()
        if len(positions) == 0:
            return
        started = time.perf_counter()
        images = item["images"].to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, s.precision):
            probs = tagger.scores(images)
        probs = probs.detach().to("cpu", torch.float32).numpy()
        stats["seconds_model"] += time.perf_counter() - started
        if probs.shape != (len(positions), fn.n_concepts):
            raise ValueError(
                f"tagger returned scores of shape {probs.shape} for {len(positions)} images and {fn.n_concepts} concepts"
            )
        ids = make_sample_ids(shard.index, positions)
        rows, cols = np.nonzero(probs >= floor)
        buf_ids.append(ids[rows])
        buf_concepts.append(cols.astype(np.int32))
        buf_probs.append(probs[rows, cols])
        buf_tagged.append(ids)
        stats["images"] += len(positions)
        buffered[0] += len(positions)
        buffered[1] += len(rows)
        bar.update(len(positions))

    def flush() -> ShardChunk:
        chunk = _chunk(buf_ids, buf_concepts, buf_probs, buf_tagged)
        buf_ids.clear(), buf_concepts.clear(), buf_probs.clear(), buf_tagged.clear()
        buffered[0] = buffered[1] = 0
        return chunk

    try:
        iterator = iter(loader)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                break
            finally:
                stats["seconds_wait_decode"] += time.perf_counter() - started
            if item["end"]:
                if item["error"] and not stats["error"]:
                    stats["error"] = item["error"]
                    stats["truncated_tar"] = 1
                continue
            pending[item["block"]] = item
            while next_block in pending:  # workers deliver blocks nearly in order; restore it exactly
                score(pending.pop(next_block))
                next_block += 1
                if buffered[0] >= _CHUNK_SAMPLES or buffered[1] >= _CHUNK_ROWS:
                    yield flush()
        for block in sorted(pending):  # not reached unless a block is missing (a worker died)
            score(pending.pop(block))
        if buffered[0]:
            yield flush()
    finally:
        bar.close()
    stats["seconds_wait_decode"] = round(stats["seconds_wait_decode"], 4)
    stats["seconds_model"] = round(stats["seconds_model"], 4)
    stats["seconds_decode_cpu"] = round(stats["seconds_decode_cpu"], 4)
    return stats


# ------------------------------------------------------------------------------------------ running


def image_search_fingerprint(source: ImageSource, tagger: Tagger, settings: InferenceSettings) -> dict:
    """Everything the stored outputs depend on (batch size, workers, device and executor excluded)."""
    return {
        "kind": "image_search",
        "semantics_version": SEMANTICS_VERSION,
        "backend": tagger.backend,
        "tagger": tagger.fingerprint(),
        "image_size": tagger.image_size,
        "prob_floor": settings.prob_floor,
        "precision": settings.precision,
        "decode_draft": settings.decode_draft,
        "source": source.to_config(),
    }


def run_image_search(
    source: ImageSource | Mapping[str, Any],
    tagger_factory: Callable[[], Tagger],
    out_dir: str | os.PathLike,
    settings: ImageSearchParams | Mapping[str, Any] | None = None,
    *,
    retry_failed: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Tag every image of a webdataset corpus with a tagger and store the probabilities >= ``prob_floor``.

    ``settings``: the ``image_search`` params section (:class:`helpers.params.images.ImageSearch`, or a
        mapping of its keys, checked by that model; errors name ``image_search.<key>``). Its keys:
    ``tagger_factory``: a picklable zero-argument callable (module-level function, class or
        ``functools.partial``) returning a ``helpers.images.taggers.Tagger``. It is called once here (on the CPU:
        fingerprint, concept count, ``image_size`` check) and once in every worker process or Ray actor.
    ``image_size``: the input size the params expect; a tagger with another size fails fast (ConfigError).
    ``batch_size``: images per model call (= per decode block); ``num_workers``: DataLoader decode processes
        per model; ``device``: ``cuda``/``cpu``/... (default: cuda when available); ``precision``: ``fp32`` or
        autocast ``bf16``/``fp16``; ``channels_last``: default on CUDA; ``decode_draft``: JPEG draft decoding
        at the model size (faster, slightly different pixels; part of the fingerprint); ``torch_threads``:
        intra-op threads per model process.
    ``executor``: ``process`` with ``workers`` model processes (1: in this process), ``serial``, or ``ray``:
        ``ray_num_actors`` actors (default: one per ``ray_num_gpus`` GPUs of the cluster, else 1), each
        reserving ``ray_num_gpus`` GPUs (default 1 when the cluster has GPUs, else 0) and ``ray_num_cpus`` CPUs
        (default 1; DataLoader workers are not reserved unless you say so). Connects to ``ray_address`` or
        ``RAY_ADDRESS``, else starts a local Ray; an initialised Ray is used as is.
    Resumable with ``helpers.shards`` semantics: a rerun skips completed shards; a run with another
    fingerprint (tagger, prob_floor, precision, source) in the same folder is refused unless ``overwrite``.
    """
    source = source if isinstance(source, ImageSource) else ImageSource.from_config(source)
    params = validate(ImageSearchParams, settings, "image_search")
    floor, batch_size, num_workers, device = params.prob_floor, params.batch_size, params.num_workers, params.device
    precision, channels_last, image_size = params.precision, params.channels_last, params.image_size
    decode_draft, torch_threads, executor, workers = (
        params.decode_draft, params.torch_threads, params.executor, params.workers
    )  # fmt: skip
    ray_address, ray_num_gpus, ray_num_cpus, ray_num_actors = (
        params.ray_address, params.ray_num_gpus, params.ray_num_cpus, params.ray_num_actors
    )  # fmt: skip
    if not callable(tagger_factory):
        raise ConfigError(f"tagger: expected a zero-argument callable returning a Tagger, got {tagger_factory!r}")
    shards = list_image_shards(source)
    tagger = tagger_factory()
    if not isinstance(tagger, Tagger):
        raise ConfigError(f"tagger: {type(tagger).__name__} does not implement helpers.images.taggers.Tagger")
    if image_size is not None and int(tagger.image_size) != image_size:
        raise ConfigError(
            f"image_size: params ask for {image_size} px but the {tagger.backend!r} tagger expects "
            f"{tagger.image_size} px; set image_search.image_size to {tagger.image_size} or use another tagger"
        )
    settings = InferenceSettings(
        prob_floor=floor,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        channels_last=channels_last,
        decode_draft=bool(decode_draft),
        torch_threads=torch_threads,
        progress=progress and (executor == "serial" or (executor == "process" and workers == 1)),
    )
    tagger_fp = tagger.fingerprint()
    fn = ImageShardFn(source, tagger_factory, tagger_fp, len(tagger.concepts), settings)
    fingerprint = image_search_fingerprint(source, tagger, settings)
    in_process = executor == "serial" or (executor == "process" and workers == 1)
    held_before = set(_TAGGERS)
    if in_process:  # reuse the model just built instead of building it a second time
        dev = resolve_device(device)
        cl = channels_last if channels_last is not None else dev.startswith("cuda")
        key = _tagger_key(tagger_fp, dev, cl)
        if key not in _TAGGERS:
            if settings.torch_threads:
                torch.set_num_threads(settings.torch_threads)
            moved = tagger.to(dev) or tagger
            if cl:
                _channels_last(moved)
            _TAGGERS[key] = moved
    del tagger
    try:
        return run_shards(
            shards,
            fn,
            out_dir,
            fingerprint=fingerprint,
            n_concepts=fn.n_concepts,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            ray_num_cpus=ray_num_cpus,
            ray_num_gpus=ray_num_gpus,
            ray_num_actors=ray_num_actors,
            retry_failed=retry_failed,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        for stale in set(_TAGGERS) - held_before:  # models are released with the run (GPU memory in notebooks)
            _TAGGERS.pop(stale, None)


# ------------------------------------------------------------------------------------------ counting


def stored_floor(out_dir: str | os.PathLike) -> float:
    """The ``prob_floor`` an image-search run folder was written with."""
    fp = read_run(out_dir).get("fingerprint", {})
    if fp.get("kind") != "image_search" or "prob_floor" not in fp:
        raise ValueError(f"{out_dir}: not an image-search run folder (no prob_floor in its fingerprint)")
    return float(fp["prob_floor"])


def check_thresholds(thresholds: float | Sequence[float], floor: float, out_dir: Any = "") -> list[float]:
    """Distinct thresholds in the given order; each must be a probability >= the stored floor."""
    values = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
    if not values:
        raise ConfigError("thresholds: no threshold given")
    out = []
    for t in values:
        if (
            isinstance(t, bool)
            or not isinstance(t, (int, float, np.floating, np.integer))
            or not 0.0 <= float(t) <= 1.0
        ):
            raise ConfigError(f"thresholds: expected probabilities in [0, 1], got {t!r}")
        if np.float32(t) < np.float32(floor):
            raise ConfigError(
                f"thresholds: {float(t)} is below the prob_floor {floor} the image search in {out_dir} stored; "
                f"rerun it with prob_floor <= {float(t)}"
            )
        if float(t) not in out:
            out.append(float(t))
    return out


def image_counts(
    out_dir: str | os.PathLike,
    thresholds: float | Sequence[float],
    *,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Counts per concept and threshold: DataFrame(concept_id int32, threshold float64, count int64).

    ``count`` is the number of distinct samples whose image has prob >= threshold for the concept (compared
    in float32), for every concept 0..n-1 of the run and every threshold (given order, duplicates dropped).
    A threshold below the run's ``prob_floor`` is refused (the scores below it were not stored). Streams
    the shards one at a time; raises ``IncompleteRunError`` on missing (or failed, unless ``allow_failed``)
    shards.
    """
    floor = stored_floor(out_dir)
    ts = check_thresholds(thresholds, floor, out_dir)
    n = int(read_run(out_dir).get("n_concepts") or 0)
    cut = np.asarray(ts, dtype=np.float32)
    counts = np.zeros((len(ts), n), dtype=np.int64)
    for _, table in tqdm(
        iter_shard_tables(out_dir, "scores", allow_failed=allow_failed), desc="image counts", disable=not progress
    ):
        if table.num_rows == 0:
            continue
        concepts = table["concept_id"].to_numpy()
        probs = table["prob"].to_numpy()
        for i, t in enumerate(cut):  # (sample, concept) pairs are unique in `scores`: a bincount suffices
            counts[i] += np.bincount(concepts[probs >= t], minlength=n)[:n]
    return pd.DataFrame(
        {
            "concept_id": np.tile(np.arange(n, dtype=np.int32), len(ts)),
            "threshold": np.repeat(np.asarray(ts, dtype=np.float64), n),
            "count": counts.reshape(-1),
        }
    )


def tagged_ids(out_dir: str | os.PathLike, shard_index: int) -> np.ndarray:
    """The sample ids of one shard whose image was scored (sorted)."""
    import pyarrow.parquet as pq

    path = Path(out_dir) / SHARD_DIR / f"{shard_index:06d}.tagged.parquet"
    if not path.exists():
        return np.zeros(0, np.int64)
    return np.sort(pq.read_table(path)["sample_id"].to_numpy())


__all__ = [
    "ImageShardFn",
    "ImageSource",
    "InferenceSettings",
    "ShardImages",
    "check_thresholds",
    "clear_tagger_cache",
    "image_counts",
    "image_search_dir",
    "image_search_fingerprint",
    "list_image_shards",
    "run_image_search",
    "stored_floor",
    "tag_shard",
    "tagged_ids",
]
