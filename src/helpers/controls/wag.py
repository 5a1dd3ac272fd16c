"""A Let It Wag!-style long-tail test set from any counts: concept selection, filtering, webdataset output.

The study's second control (Udandarao et al. 2024, Sec. 6) builds "Let It Wag!" from the concepts its
counts say are rarest in pretraining data, and shows that models fall well below their ImageNet accuracy
there. Its recipe, followed here for a user's counts, images and models:

1. ``select_concepts``: the ``n`` least frequent concepts of one count type (method, threshold, corpus)
   that have at least ``min_images`` candidate images; ``release_overlap`` compares a selection made from the
   release's counts with the published class list (``let_it_wag_datasets/let_it_wag_class_list.txt``).
2. ``folder_candidates``: candidate images from a folder per concept.
3. ``build_let_it_wag``: per class, undecodable images counted and skipped; near-duplicates removed with
   perceptual hashes (``imagehash.phash``, Hamming distance <= 10, as the study); optionally images that
   are near-duplicates of a pretraining corpus removed (``corpus_max_similarity`` over the corpus embedding
   run of ``helpers.controls.embed``); optionally outliers removed by image--class-prompt cosine similarity
   with an open_clip model; classes with fewer than ``min_images`` left dropped and listed; seeded balancing
   to ``per_class`` images; written as webdataset shards (``KEY.<ext>`` original bytes, ``KEY.cls`` label
   index) with ``classes.txt`` and a datasheet (counts per class before and after every step). The returned
   ``dataset`` mapping is an ``evaluation.datasets`` entry (``format: wds``) usable at once.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from helpers.controls.embed import Embedder, check_threshold, embed_images, iter_corpus_embeddings
from helpers.controls.similarity import MaxSimilarity, SearchSettings
from helpers.evaluation.embeddings import class_embeddings
from helpers.evaluation.models import LoadedModel
from helpers.shards import ConfigError

PHASH_MAX_DISTANCE = 10  # the study's Hamming-distance cut for near-duplicate pHashes
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
STEPS = ("candidates", "decodable", "phash_dedup", "corpus_dedup", "outliers", "min_images", "balanced")
SHARD_SIZE = 1000


# ====================================================================================== selection


def normalise_concept(name: str) -> str:
    """Lower case, underscores/hyphens as spaces, quotes stripped: 'Acadian_Flycatcher' -> 'acadian flycatcher'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(name).strip().strip('"').strip("'"))).strip().lower()


def read_class_list(path: str | os.PathLike) -> list[str]:
    """A class list file (one name per line, optionally quoted, underscores for spaces), normalised."""
    names = [normalise_concept(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def select_concepts(
    counts: pd.DataFrame,
    n: int,
    *,
    min_images: int = 0,
    candidates: Mapping[str, int] | None = None,
    where: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The ``n`` least frequent concepts that have at least ``min_images`` candidate images.

    ``counts``: a table with ``concept`` (or ``name``) and ``count`` columns -- a corpus's counts or the
    release's tidy counts (``helpers.release.tidy.frequencies``). ``where``: column -> value filters that pick
    one count type (e.g. ``{"pretrain": "laion400m", "method": "integrated", "threshold": 0.7}``); a concept
    still listed several times (the same concept in several downstream lists) takes its largest count.
    ``candidates``: concept -> number of candidate images (normalised names); required when
    ``min_images > 0``. Ties in count are broken by name. Returns DataFrame(rank, concept, count, candidates).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"let_it_wag.n_concepts: expected a positive integer, got {n!r}")
    if not isinstance(min_images, int) or min_images < 0:
        raise ConfigError(f"let_it_wag.min_images: expected a non-negative integer, got {min_images!r}")
    table = counts
    for column, value in (where or {}).items():
        if column not in table.columns:
            raise ConfigError(f"let_it_wag.where.{column}: no such column in the counts ({', '.join(table.columns)})")
        table = table[table[column].isna()] if value is None else table[table[column] == value]
    name_col = "concept" if "concept" in table.columns else "name"
    if name_col not in table.columns or "count" not in table.columns:
        raise ValueError("counts: expected 'concept' (or 'name') and 'count' columns")
    if table.empty:
        raise ConfigError(f"let_it_wag.where: no counts match {dict(where or {})}")
    agg = table.assign(concept=table[name_col].map(normalise_concept)).groupby("concept", as_index=False)["count"].max()
    if min_images > 0 and candidates is None:
        raise ConfigError("let_it_wag.min_images: needs the candidate image counts per concept")
    have = {normalise_concept(k): int(v) for k, v in (candidates or {}).items()}
    agg["candidates"] = agg["concept"].map(lambda c: have.get(c, 0)).astype("int64")
    if candidates is not None:
        agg = agg[agg["candidates"] >= max(min_images, 1)]
    agg = agg.sort_values(["count", "concept"], kind="stable").head(n).reset_index(drop=True)
    agg.insert(0, "rank", np.arange(1, len(agg) + 1))
    return agg.astype({"count": "int64"})


def release_overlap(selected: Sequence[str], published: Sequence[str]) -> dict:
    """How many selected concepts are among the published Let It Wag! classes (names normalised)."""
    sel = [normalise_concept(c) for c in selected]
    pub = {normalise_concept(c) for c in published}
    both = sorted(set(sel) & pub)
    return {"n_selected": len(set(sel)), "n_published": len(pub), "n_overlap": len(both),
            "fraction_of_selected": len(both) / max(len(set(sel)), 1), "overlap": both}  # fmt: skip


def folder_candidates(root: str | os.PathLike, concepts: Sequence[str]) -> dict[str, list[Path]]:
    """Candidate images per concept from ``root/<concept>/`` (folder named as the concept, spaces or
    underscores; matched after ``normalise_concept``); a concept without a folder gets an empty list."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"let_it_wag.images.root: folder {str(root)!r} does not exist")
    folders = {normalise_concept(p.name): p for p in root.iterdir() if p.is_dir()}
    out = {}
    for concept in concepts:
        folder = folders.get(normalise_concept(concept))
        files = [] if folder is None else sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        out[concept] = files
    return out


# ====================================================================================== filtering


@dataclass
class _Candidate:
    path: str
    data: bytes
    ext: str
    image: Image.Image


def _load(paths: Sequence[Path]) -> tuple[list[_Candidate], int]:
    """Decodable images of one class, and the number of undecodable ones (counted, skipped)."""
    kept, bad = [], 0
    for path in paths:
        try:
            data = Path(path).read_bytes()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    image = img.convert("RGB")
        except Exception:  # any undecodable file (PIL raises OSError, SyntaxError, ValueError, ...)
            bad += 1
            continue
        ext = IMAGE_SUFFIXES.get(Path(path).suffix.lower(), "jpg")
        kept.append(_Candidate(str(path), data, ext, image))
    return kept, bad


def phash_dedup(images: Sequence[Image.Image], max_distance: int = PHASH_MAX_DISTANCE) -> np.ndarray:
    """Indices of images kept after greedy pHash near-duplicate removal (in order; an image is dropped when
    its 64-bit pHash is within ``max_distance`` bits of an already kept one). Source: the study's Sec. 6."""
    import imagehash

    hashes = np.array([int(str(imagehash.phash(im)), 16) for im in images], dtype=np.uint64)
    kept: list[int] = []
    for i, h in enumerate(hashes):
        if not kept or np.bitwise_count(hashes[kept] ^ h).min() > max_distance:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def corpus_max_similarity(
    embeddings: np.ndarray, corpus_embed_dir: str | os.PathLike, *, allow_failed: bool = False
) -> np.ndarray:
    """Each candidate's max cosine similarity to any image of a corpus embedding run (exact, shard by shard).

    ``embeddings``: (N, D) unit vectors made with the run's embedder. Memory: one shard at a time.
    """
    best = np.full(len(embeddings), -np.inf, np.float32)
    exact = SearchSettings(method="exact")
    for _, _, corpus in iter_corpus_embeddings(corpus_embed_dir, allow_failed=allow_failed):
        if len(corpus):
            best = np.maximum(best, MaxSimilarity(corpus, exact)(embeddings)[0])
    return best


def _image_text_similarity(model: LoadedModel, images: Sequence[Image.Image], class_name: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    text = class_embeddings(model, [class_name], "simple", progress=False)[0]
    with torch.no_grad(), model.autocast():
        batch = torch.stack([model.preprocess(im) for im in images]).to(model.device)
        feats = F.normalize(model.model.encode_image(batch).float(), dim=-1).cpu().numpy()
    return feats @ text


def build_let_it_wag(
    candidates: Mapping[str, Sequence[str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    min_images: int = 1,
    per_class: int | None = None,
    seed: int = 0,
    phash_distance: int = PHASH_MAX_DISTANCE,
    corpus_embed_dir: str | os.PathLike | None = None,
    corpus_embedder: Embedder | None = None,
    corpus_threshold: float | None = None,
    outlier_model: LoadedModel | None = None,
    outlier_threshold: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Filter the candidate images of each class and write the test set (module docstring).

    Thresholds are cosine similarities and must lie in [-1, 1] (``ConfigError`` naming the key otherwise):
    an image is dropped as a corpus near-duplicate when its max similarity to the corpus is > ``corpus_threshold``
    (default: the embedder's ``default_threshold``), and as an outlier when its similarity to its class
    prompt ("A photo of a {c}.") is < ``outlier_threshold``. Classes keep their order in ``candidates``.

    Returns ``{"dataset": evaluation.datasets entry, "classes", "dropped": {class: reason}, "datasheet":
    path, "counts": DataFrame(class, step, n)}``; writes ``out_dir/{00000..}.tar``, ``classes.txt``,
    ``datasheet.json`` and ``datasheet.parquet``.
    """
    if corpus_embed_dir is not None:
        if corpus_embedder is None:
            raise ConfigError("let_it_wag.corpus_dedup.embedder: needed to embed the candidates like the corpus")
        corpus_threshold = check_threshold(
            corpus_embedder.default_threshold if corpus_threshold is None else corpus_threshold,
            "let_it_wag.corpus_dedup.threshold",
        )
    if outlier_model is not None:
        outlier_threshold = check_threshold(outlier_threshold, "let_it_wag.outliers.threshold")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ConfigError(f"let_it_wag.per_class: expected a positive integer, got {per_class!r}")
    if not isinstance(min_images, int) or min_images < 1:
        raise ConfigError(f"let_it_wag.min_images: expected a positive integer, got {min_images!r}")
    rows: list[dict] = []
    kept: dict[str, list[_Candidate]] = {}
    dropped: dict[str, str] = {}
    corrupt: dict[str, int] = {}
    for name, paths in candidates.items():
        note = lambda step, n, name=name: rows.append({"class": name, "step": step, "n": int(n)})  # noqa: E731
        note("candidates", len(paths))
        items, corrupt[name] = _load(paths)
        note("decodable", len(items))
        if items:
            items = [items[i] for i in phash_dedup([c.image for c in items], phash_distance)]
        note("phash_dedup", len(items))
        if corpus_embed_dir is not None and items:
            sims = corpus_max_similarity(embed_images(corpus_embedder, [c.image for c in items]), corpus_embed_dir)
            items = [c for c, s in zip(items, sims) if not s > corpus_threshold]
        note("corpus_dedup", len(items))
        if outlier_model is not None and items:
            sims = _image_text_similarity(outlier_model, [c.image for c in items], name)
            items = [c for c, s in zip(items, sims) if s >= outlier_threshold]
        note("outliers", len(items))
        if len(items) < min_images:
            dropped[name] = f"{len(items)} image(s) left after filtering, fewer than min_images={min_images}"
            note("min_images", 0)
            note("balanced", 0)
            continue
        note("min_images", len(items))
        kept[name] = items
        if progress:
            progress(name)
    if not kept:
        raise ValueError(f"let_it_wag: no class has >= {min_images} images after filtering (dropped: {dropped})")
    cap = per_class if per_class is not None else min(len(v) for v in kept.values())
    rng = np.random.default_rng(seed)
    for name, items in kept.items():
        if len(items) > cap:
            chosen = np.sort(rng.choice(len(items), size=cap, replace=False))
            kept[name] = [items[i] for i in chosen]
        rows.append({"class": name, "step": "balanced", "n": len(kept[name])})
    return _write(Path(out_dir), kept, dropped, corrupt, pd.DataFrame(rows), {"seed": seed, "per_class": cap})


def _write(out: Path, kept: dict, dropped: dict, corrupt: dict, counts: pd.DataFrame, settings: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    classes = list(kept)
    samples = [(label, c) for label, name in enumerate(classes) for c in kept[name]]
    n_shards = max(1, -(-len(samples) // SHARD_SIZE))
    for s in range(n_shards):
        with tarfile.open(out / f"{s:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i, (label, cand) in enumerate(samples[s * SHARD_SIZE : (s + 1) * SHARD_SIZE]):
                key = f"{s:05d}{i:04d}"
                for ext, data in ((cand.ext, cand.data), ("cls", str(label).encode()),
                                  ("json", json.dumps({"class": classes[label], "source": cand.path}).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    counts = counts.astype({"n": "int64"})
    counts.to_parquet(out / "datasheet.parquet", index=False)
    wide = counts.pivot_table(index="class", columns="step", values="n", aggfunc="last", sort=False)
    sheet = {
        "n_classes": len(classes), "n_images": len(samples), "settings": settings, "steps": list(STEPS),
        "corrupt_skipped": {k: v for k, v in corrupt.items() if v}, "dropped_classes": dropped,
        "per_class": {c: {s: int(wide.loc[c, s]) for s in STEPS if s in wide.columns} for c in wide.index},
    }  # fmt: skip
    (out / "datasheet.json").write_text(json.dumps(sheet, indent=1) + "\n", encoding="utf-8")
    dataset = {"format": "wds", "paths": (out / f"{{00000..{n_shards - 1:05d}}}.tar").as_posix(),
               "label_key": "cls", "class_names_file": str(out / "classes.txt")}  # fmt: skip
    return {"dataset": dataset, "classes": classes, "dropped": dropped, "datasheet": str(out / "datasheet.json"),
            "counts": counts}  # fmt: skip


__all__ = [
    "PHASH_MAX_DISTANCE", "STEPS", "build_let_it_wag", "corpus_max_similarity", "folder_candidates",
    "normalise_concept", "phash_dedup", "read_class_list", "release_overlap", "select_concepts",
]  # fmt: skip
