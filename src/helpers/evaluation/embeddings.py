"""Image and text embeddings of a (model, dataset) pair, with an on-disk cache keyed by what produced them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from helpers.evaluation.datasets import EvalDataset, class_prompts, prompt_templates
from helpers.evaluation.models import LoadedModel
from helpers.evaluation.specs import CACHE_VERSION, digest

# ============================================================================================== cache


def _cache_files(cache_dir: str | os.PathLike, model_key: str, kind: str, stem: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / model_key / kind / stem
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def _cache_load(npy: Path, sidecar: Path, expected: Mapping[str, Any]) -> np.ndarray | None:
    """The cached array when its sidecar matches ``expected`` exactly (and the array its n and dim)."""
    if not (npy.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if {k: meta.get(k) for k in expected} != json.loads(json.dumps(dict(expected))):
            return None
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.ndim != 2 or arr.shape != (meta.get("n"), meta.get("dim")) or arr.dtype != np.float32:
        return None
    return arr


def atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cache_save(npy: Path, sidecar: Path, arr: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Array first, sidecar last: a sidecar always describes a complete array."""
    if sidecar.exists():
        sidecar.unlink()
    atomic_write(npy, lambda fh: np.save(fh, arr, allow_pickle=False), "wb")
    full = {**meta, "n": int(arr.shape[0]), "dim": int(arr.shape[1]), "dtype": "float32"}
    atomic_write(sidecar, lambda fh: fh.write(json.dumps(full, indent=1, sort_keys=True) + "\n"), "w")


def _cached(
    cache_dir: str | os.PathLike | None,
    model: LoadedModel,
    kind: str,
    stem: str,
    meta: dict[str, Any],
    compute: Callable[[], np.ndarray],
    refresh: bool,
) -> np.ndarray:
    if cache_dir is None:
        return compute()
    meta = {"cache_version": CACHE_VERSION, "kind": kind, "model_key": model.key, "model": model.identity(), **meta}
    npy, sidecar = _cache_files(cache_dir, model.key, kind, stem)
    if not refresh:
        hit = _cache_load(npy, sidecar, meta)
        if hit is not None:
            return hit
    arr = np.ascontiguousarray(compute(), dtype=np.float32)
    _cache_save(npy, sidecar, arr, meta)
    return arr


# ========================================================================================= embeddings


def _device_of(model: LoadedModel) -> torch.device:
    return torch.device(model.device)


@torch.no_grad()
def _embed_images(
    model: LoadedModel, dataset: EvalDataset, batch_size: int, num_workers: int, progress: bool
) -> np.ndarray:
    device = _device_of(model)
    if isinstance(model.model, torch.nn.Module):
        model.model.eval()
    loader = DataLoader(
        dataset.images,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    out: np.ndarray | None = None
    seen = np.zeros(dataset.n, dtype=bool)
    bar = tqdm(total=dataset.n, desc=f"images {dataset.name} ({model.key})", unit="img", disable=not progress)
    for idx, batch in loader:
        with model.autocast():
            feats = model.model.encode_image(batch.to(device, non_blocking=True))
        feats = F.normalize(feats.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.empty((dataset.n, feats.shape[1]), dtype=np.float32)
        idx_np = idx.numpy()
        out[idx_np] = feats
        seen[idx_np] = True
        bar.update(len(idx_np))
    bar.close()
    if out is None or not seen.all():
        raise RuntimeError(f"{dataset.name}: {int((~seen).sum())} of {dataset.n} images were not embedded")
    return out


def image_embeddings(
    model: LoadedModel,
    dataset: EvalDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """(N, D) float32 unit vectors in dataset order, from the cache when model and data match."""
    meta = {"dataset": dataset.name, "dataset_fingerprint": digest(dataset.image_fingerprint())}
    return _cached(
        cache_dir, model, "images", dataset.name, meta,
        lambda: _embed_images(model, dataset, batch_size, num_workers, progress), refresh,
    )  # fmt: skip


@torch.no_grad()
def _embed_texts(
    model: LoadedModel, texts: Sequence[str], owner: np.ndarray, n_out: int, batch_size: int, desc: str, progress: bool
) -> np.ndarray:
    """Mean of the L2-normalised embeddings of ``texts`` per ``owner`` row, normalised again."""
    device = _device_of(model)
    if isinstance(model.model, torch.nn.Module):
        model.model.eval()
    sums: torch.Tensor | None = None
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        tokens = model.tokenizer(list(texts[start : start + batch_size])).to(device)
        with model.autocast():
            emb = model.model.encode_text(tokens)
        emb = F.normalize(emb.float(), dim=-1)
        if sums is None:
            sums = torch.zeros(n_out, emb.shape[1], device=emb.device)
        sums.index_add_(0, torch.as_tensor(owner[start : start + batch_size], device=emb.device), emb)
    if sums is None:
        raise ValueError(f"{desc}: no texts to embed")
    return F.normalize(sums, dim=-1).cpu().numpy().astype(np.float32)


def class_embeddings(
    model: LoadedModel,
    class_names: Sequence[str],
    prompt_set: str,
    *,
    templates: Sequence[str] | None = None,
    dataset_name: str = "classes",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """The zero-shot classifier (C, D): per class, the normalised mean of its normalised prompt embeddings."""
    tmpl = prompt_templates(prompt_set, templates)
    prompts = [p for c in class_names for p in class_prompts(c, tmpl)]
    owner = np.repeat(np.arange(len(class_names)), len(tmpl))
    meta = {"dataset": dataset_name, "prompt_set": prompt_set, "prompts": digest([list(class_names), list(tmpl)])}
    return _cached(
        cache_dir, model, "text", f"{dataset_name}.{prompt_set}", meta,
        lambda: _embed_texts(model, prompts, owner, len(class_names), batch_size, f"text {prompt_set}", progress),
        refresh,
    )  # fmt: skip


def caption_embeddings(
    model: LoadedModel,
    dataset: EvalDataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
    refresh: bool = False,
) -> np.ndarray:
    """(M, D) unit vectors of every caption of a retrieval dataset, image by image in caption order."""
    if dataset.captions is None:
        raise ValueError(f"{dataset.name}: not a retrieval dataset (no captions)")
    flat = [c for caps in dataset.captions for c in caps]
    meta = {"dataset": dataset.name, "prompt_set": "captions", "prompts": digest(dataset.captions)}
    return _cached(
        cache_dir, model, "text", f"{dataset.name}.captions", meta,
        lambda: _embed_texts(model, flat, np.arange(len(flat)), len(flat), batch_size, "text captions", progress),
        refresh,
    )  # fmt: skip
