"""Image embeddings for the similarity control: the embedders, the per-shard corpus run, the test-set embeddings.

Why: the study's first control removes pretraining samples whose image is too similar to a downstream test
image (Udandarao et al. 2024, Sec. 3, "controlling for sample similarity") and checks that the log-linear
trend survives. That needs one embedding per pretraining image and per test image in the same space.

Embedders (picklable descriptions; each process builds the model once):

``OpenClipEmbedder``
    an ``evaluation.models`` entry loaded with ``helpers.evaluation.models.load_model`` (the study used CLIP
    image embeddings). The model is loaded, and a wrong entry refused, before any shard runs.
``PixelEmbedder``
    a deterministic, model-free embedding: the image resized to ``size x size`` RGB, each channel centred
    and the whole vector L2-normalised. Invariant to brightness/contrast shifts per channel and nearly so to
    small crops and JPEG re-encoding; it finds *near-duplicates*, not semantic neighbours. Used by the
    synthetic world's unit tests and usable as a cheap first pass.

Corpus run layout (``helpers.shards``): ``shards/NNNNNN.embeddings.parquet`` with ``sample_id int64`` and
``embedding fixed_size_list<float32>[dim]`` (unit vectors), one row per decodable image; sample ids are the
pipeline's ``(shard_index << 32) | position`` over the same tar grouping as the caption and image searches,
so the similarity table joins their hits. Resumable and fingerprinted like the other shard stages.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from helpers.controls.similarity import EMBED_TABLE, shard_embeddings
from helpers.evaluation.datasets import load_dataset
from helpers.evaluation.embeddings import image_embeddings
from helpers.evaluation.models import LoadedModel, load_model
from helpers.images.sources import ImageSource, ShardImages, list_image_shards
from helpers.params.controls import Embedder as EmbedderParams
from helpers.params.controls import OpenClipEmbedder as OpenClipParams
from helpers.params.controls import PixelEmbedder as PixelParams
from helpers.params.errors import validate, validate_union
from helpers.shards import (
    ConfigError,
    RunResult,
    Shard,
    ShardChunk,
    iter_shard_tables,
    make_sample_ids,
    read_run,
    run_shards,
)

# ============================================================================================ embedders


class PixelEmbedder:
    """Deterministic thumbnail embedding (``3 * size * size`` dims); see the module docstring."""

    default_threshold = 0.85  # cosine; measured on the synthetic world's planted duplicates (tests)

    def __init__(self, size: int = 6) -> None:
        self.size = validate(PixelParams, {"kind": "pixel", "size": size}, "controls.similarity.embedder").size

    def fingerprint(self) -> dict:
        return {"kind": "pixel", "size": self.size}

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return functools.partial(_thumbnail, size=self.size)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, s, s) float tensor -> (B, 3*s*s) float32 unit vectors."""
        x = batch.float().flatten(2)
        x = x - x.mean(dim=2, keepdim=True)
        return F.normalize(x.flatten(1), dim=1).numpy().astype(np.float32)


def _thumbnail(image: Image.Image, size: int) -> torch.Tensor:
    small = image.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.float32).transpose(2, 0, 1).copy())


@dataclass
class OpenClipEmbedder:
    """An open_clip image encoder from an ``evaluation.models`` entry (``spec``), on ``device``."""

    spec: Mapping[str, Any]
    device: str = "cpu"
    precision: str = "fp32"
    default_threshold: float = 0.95
    _model: LoadedModel | None = field(default=None, repr=False, compare=False)

    def model(self) -> LoadedModel:
        """The loaded model (once per process); a wrong entry raises ``ConfigError`` naming its key."""
        if self._model is None:
            self._model = load_model(self.spec, self.device, self.precision)
        return self._model

    def __getstate__(self) -> dict:  # workers load their own copy
        return {**self.__dict__, "_model": None}

    def fingerprint(self) -> dict:
        return {"kind": "open_clip", **self.model().identity()}

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return self.model().preprocess

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        loaded = self.model()
        with loaded.autocast():
            feats = loaded.model.encode_image(batch.to(loaded.device))
        return F.normalize(feats.float(), dim=-1).cpu().numpy().astype(np.float32)


Embedder = PixelEmbedder | OpenClipEmbedder


def make_embedder(
    config: Mapping[str, Any] | PixelParams | OpenClipParams | None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "cpu",
    *,
    key: str = "controls.similarity.embedder",
) -> Embedder:
    """The embedder of a params entry (``helpers.params.controls.Embedder``: ``{kind: pixel, size: 6}`` or
    ``{kind: open_clip, model: <evaluation.models key>}``), checked by the typed params layer.

    ``models``: the ``evaluation.models`` section (key -> entry) an open_clip ``model`` names; a mapping given
    as ``model`` is used as the entry itself. The open_clip model is loaded here, so a bad entry or a model
    that cannot be loaded fails before any shard runs. Errors are ``ConfigError`` naming ``key``.
    """
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):  # an inline model entry
        inline = dict(config["model"])
        config = {**config, "model": str(inline.get("key") or "inline")}
        models = {config["model"]: inline}
    checked = validate_union(EmbedderParams, config if config is not None else {"kind": "pixel"}, key)
    if isinstance(checked, PixelParams):
        return PixelEmbedder(checked.size)
    spec = (models or {}).get(checked.model)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}.model: {checked.model!r} is not an entry of evaluation.models")
    embedder = OpenClipEmbedder(spec, device, checked.precision)
    if checked.default_threshold is not None:
        embedder.default_threshold = checked.default_threshold
    try:
        embedder.model()
    except Exception as err:  # open_clip/torch errors of a model that cannot be built or read
        raise ConfigError(f"{key}.model: {checked.model!r} cannot be loaded: {err}") from err
    return embedder


def check_threshold(value: Any, key: str) -> float:
    """A cosine-similarity threshold: a number in [-1, 1], else ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= float(value) <= 1.0:
        raise ConfigError(f"{key}: a cosine-similarity threshold must be a number in [-1, 1], got {value!r}")
    return float(value)


# ============================================================================================ corpus run


@dataclass
class EmbedShardFn:
    """The shard function of the corpus embedding run (picklable)."""

    source: ImageSource
    embedder: Embedder
    batch_size: int = 64
    num_workers: int = 0

    def __call__(self, shard: Shard) -> Generator[ShardChunk, None, dict]:
        return embed_shard(shard, self)


def _empty() -> ShardChunk:
    return ShardChunk(np.zeros(0, np.int64), np.zeros(0, np.int32))


def embed_shard(shard: Shard, fn: EmbedShardFn) -> Generator[ShardChunk, None, dict]:
    """Embed every decodable image of one shard; yields ``embeddings`` chunks, returns the shard's stats.

    Stats: records, images, corrupt (undecodable, skipped), missing_image, error (a truncated tar keeps the
    samples before the damage). Batches are consecutive positions (``images.sources.ShardImages``).
    """
    stats: dict[str, Any] = {"shard": shard.index, "path": shard.path, "records": 0, "images": 0, "corrupt": 0}
    stats.update(missing_image=0, error=None)
    yield _empty()
    if not os.path.exists(shard.path):
        stats["error"] = f"missing shard: {shard.path} does not exist"
        return stats
    dataset = ShardImages(shard.path, fn.source.image_ext, fn.embedder.transform(), fn.batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=fn.num_workers)
    pending: dict[int, dict] = {}
    next_block = 0
    for item in loader:
        if item["end"]:
            stats["error"] = stats["error"] or item["error"]
            continue
        pending[item["block"]] = item
        while next_block in pending:  # workers deliver blocks nearly in order; restore it exactly
            chunk = _embed_block(pending.pop(next_block), shard, fn, stats)
            next_block += 1
            if chunk is not None:
                yield chunk
    for block in sorted(pending):  # only when a block is missing (a worker died)
        chunk = _embed_block(pending.pop(block), shard, fn, stats)
        if chunk is not None:
            yield chunk
    return stats


def _embed_block(item: dict, shard: Shard, fn: EmbedShardFn, stats: dict) -> ShardChunk | None:
    stats["records"] += item["records"]
    stats["corrupt"] += item["corrupt"]
    stats["missing_image"] += item["missing"]
    positions = item["positions"].numpy()
    if len(positions) == 0:
        return None
    emb = fn.embedder.embed(item["images"])
    stats["images"] += len(positions)
    table = pa.table(
        {
            "sample_id": pa.array(make_sample_ids(shard.index, positions), pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
        }
    )
    return ShardChunk(np.zeros(0, np.int64), np.zeros(0, np.int32), {EMBED_TABLE: table})


def embed_corpus(
    source: ImageSource | Mapping[str, Any],
    embedder: Embedder,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    executor: str = "serial",
    workers: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Embed every image of a corpus, one Parquet per shard under ``out_dir`` (resumable; module docstring).

    ``executor``: as ``helpers.shards.run_shards`` (``serial`` by default: the model's own threads use the
    cores). The embedder's fingerprint (which loads an open_clip model) is taken first, so a model that
    cannot be loaded fails before any shard runs.
    """
    source = source if isinstance(source, ImageSource) else ImageSource.from_config(source)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    fingerprint = {"kind": "embeddings", "source": source.to_config(), "embedder": embedder.fingerprint()}
    fn = EmbedShardFn(source, embedder, batch_size, num_workers)
    return run_shards(
        list_image_shards(source), fn, out_dir, fingerprint=fingerprint, executor=executor, workers=workers,
        ray_address=ray_address, overwrite=overwrite, progress=progress,
    )  # fmt: skip


def iter_corpus_embeddings(
    out_dir: str | os.PathLike, *, allow_failed: bool = False
) -> Generator[tuple[dict, np.ndarray, np.ndarray], None, None]:
    """(completion record, sample_ids, embeddings) per shard of a corpus embedding run, one at a time."""
    fp = read_run(out_dir).get("fingerprint", {})
    if fp.get("kind") != "embeddings":
        raise ValueError(f"{out_dir}: not an embedding run (fingerprint kind {fp.get('kind')!r})")
    for record, table in iter_shard_tables(out_dir, EMBED_TABLE, allow_failed=allow_failed):
        ids, emb = shard_embeddings(table)
        yield record, ids, emb


# ============================================================================================ test sets


def embed_images(embedder: Embedder, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 unit vectors of PIL images, in order."""
    transform = embedder.transform()
    out = []
    for start in range(0, len(images), batch_size):
        out.append(embedder.embed(torch.stack([transform(im) for im in images[start : start + batch_size]])))
    if not out:
        raise ValueError("no images to embed")
    return np.concatenate(out)


def downstream_embeddings(
    embedder: Embedder,
    datasets: Mapping[str, Mapping[str, Any]],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, pa.Table]:
    """Embeddings of downstream test sets given as ``evaluation.datasets`` entries (name -> spec).

    Returns ((M, D) float32 unit vectors, table(test_id int64, dataset str, index int64)) with ``test_id``
    the row in the stacked matrix. Open_clip embeddings go through ``evaluation.embeddings.image_embeddings``
    (cached per model and dataset under ``cache_dir``); pixel embeddings are cheap and not cached.
    """
    parts, names, index = [], [], []
    for name, spec in datasets.items():
        dataset = load_dataset(spec, embedder.transform(), name=name)
        if isinstance(embedder, OpenClipEmbedder):
            emb = image_embeddings(embedder.model(), dataset, cache_dir=cache_dir, batch_size=batch_size,
                                   progress=progress)  # fmt: skip
        else:
            emb = np.empty((dataset.n, 0), np.float32)
            for idx, batch in DataLoader(dataset.images, batch_size=batch_size, shuffle=False):
                vec = embedder.embed(batch)
                if emb.shape[1] == 0:
                    emb = np.empty((dataset.n, vec.shape[1]), np.float32)
                emb[idx.numpy()] = vec
        parts.append(emb)
        names += [name] * dataset.n
        index.append(np.arange(dataset.n, dtype=np.int64))
    if not parts:
        raise ConfigError("controls.similarity.datasets: no downstream dataset given")
    matrix = np.concatenate(parts).astype(np.float32)
    table = pa.table(
        {
            "test_id": pa.array(np.arange(len(matrix), dtype=np.int64)),
            "dataset": pa.array(names, pa.string()),
            "index": pa.array(np.concatenate(index)),
        }
    )
    return matrix, table


__all__ = [
    "EMBED_TABLE", "Embedder", "OpenClipEmbedder", "PixelEmbedder", "check_threshold", "embed_corpus",
    "embed_images", "iter_corpus_embeddings", "make_embedder", "shard_embeddings", "downstream_embeddings",
]  # fmt: skip
