"""The image side of a corpus as DVC stages: train the sample tagger, tag a corpus' images, and derive image,
matched and misalignment frequencies against the caption side of the same corpus.

A corpus whose images are tagged is an entry under ``image_corpora`` in params.yaml, named like its caption
side under ``corpora`` (the matched counts pair the two by sample id)::

    image_corpora:
      sample_wds:
        data: data/raw/samples/wds             # the folder DVC tracks
        images: {format: wds, paths: "data/raw/samples/wds/*.tar", image_ext: [jpg]}

The tagger and inference settings are the ``image_search`` section (see helpers.images.search and
helpers.images.backends).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from helpers import paths, schemas
from helpers.images.backends import build_tagger
from helpers.images.frequencies import frequency_table, misalignment
from helpers.images.search import image_search_dir, run_image_search, run_kwargs
from helpers.images.sources import image_source, list_image_shards
from helpers.images.tagger_data import DEFAULT_JPEG_QUALITY
from helpers.images.tagger_trained import read_labels, train_tagger
from helpers.shards import ConfigError
from helpers.text import corpora
from helpers.text.captions import iter_tar_samples

# keys of a tagger config that hold paths (resolved against the work folder, like corpus paths)
_PATH_KEYS = ("checkpoint", "label_embedding_cache", "model_config")


def resolve_tagger_config(tagger: Mapping[str, Any], base: Path | None = None) -> dict:
    """The tagger config with its relative file paths resolved against the work folder."""
    base = base or paths.workdir()
    out = dict(tagger)
    for key in _PATH_KEYS:
        if key in out:
            out[key] = paths.resolve(out[key], base)
    if out.get("descriptions"):
        out["descriptions"] = paths.resolve(out["descriptions"], base)
    if isinstance(out.get("pretrained"), str) and os.sep in out["pretrained"]:
        out["pretrained"] = paths.resolve(out["pretrained"], base)
    if isinstance(out.get("train"), Mapping) and "labels" in out["train"]:
        out["train"] = {**out["train"], "labels": paths.resolve(out["train"]["labels"], base)}
    return out


TRAINING_KEYS = {
    "data", "labels", "image_size", "epochs", "batch_size", "lr", "seed", "checkpoint",
    "loss", "augment", "jpeg_quality", "jpeg_p",
}  # fmt: skip


def train_sample_tagger(training: Mapping[str, Any], *, name: str = "sample", progress: bool = True):
    """Train the ``trained`` backend on the labelled image set of params ``taggers.<name>`` and save it.

    Returns the tagger (with ``loss_history``). The checkpoint path is ``training["checkpoint"]``.
    """
    prefix = f"taggers.{name}"
    unknown = sorted(set(training) - TRAINING_KEYS)
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TRAINING_KEYS))})")
    for key in ("labels", "checkpoint"):
        if key not in training:
            raise ConfigError(f"{prefix}.{key}: missing")
    labels_path = Path(paths.resolve(training["labels"]))
    if not labels_path.exists():
        raise ConfigError(f"{prefix}.labels: file not found: {labels_path}")
    images, labels = read_labels(labels_path)
    concepts = sorted({c for row in labels for c in row})
    jpeg = training.get("jpeg_quality", list(DEFAULT_JPEG_QUALITY))
    try:
        tagger = train_tagger(
            images,
            labels,
            concepts,
            image_size=int(training.get("image_size", 32)),
            epochs=int(training.get("epochs", 10)),
            batch_size=int(training.get("batch_size", 64)),
            lr=float(training.get("lr", 1e-3)),
            seed=int(training.get("seed", 0)),
            loss=str(training.get("loss", "bce")),
            augment=bool(training.get("augment", True)),
            jpeg_quality=None if jpeg is None else (int(jpeg[0]), int(jpeg[1])),
            jpeg_p=float(training.get("jpeg_p", 0.5)),
            progress=progress,
        )
    except (ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"{prefix}: {err}") from err
    checkpoint = Path(paths.resolve(training["checkpoint"]))
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tagger.save(checkpoint)
    return tagger


@dataclass
class ImageSearchResult:
    frequencies: pd.DataFrame  # corpus, concept_id, concept, method, threshold, count
    misalignment: pd.DataFrame  # threshold, n_text_and_image, n_misaligned, degree_extracted, degree_fixed
    shards: pd.DataFrame  # per-shard status and reader stats of the image side
    image_dir: Path


def frequencies_path(name: str) -> Path:
    return paths.processed_dir() / "corpora" / name / "frequencies.parquet"


def image_shard_table(out_dir: Path) -> pd.DataFrame:
    """One row per image shard: status, error and the reader's counters (corrupt, missing images...)."""
    return corpora.shard_table(out_dir)


IMAGE_CORPUS_KEYS = {"corpus", "data", "images", "tagger"}


def caption_corpus(name: str, entry: Mapping[str, Any]) -> str:
    """The ``corpora`` entry whose captions pair with image corpus ``name`` (``corpus``, default ``name``)."""
    unknown = sorted(set(entry) - IMAGE_CORPUS_KEYS) if isinstance(entry, Mapping) else []
    if unknown:
        raise ConfigError(
            f"image_corpora.{name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(IMAGE_CORPUS_KEYS))})"
        )
    return str(entry.get("corpus") or name)


def searched_concepts(name: str, entry: Mapping[str, Any]) -> pd.DataFrame:
    """The concept table the caption search of image corpus ``name``'s caption side used."""
    corpus = caption_corpus(name, entry)
    try:
        return corpora.searched_concepts(corpus)
    except ConfigError as err:
        raise ConfigError(f"image_corpora.{name}.corpus: no caption search for '{corpus}' ({err})") from err


def tag_corpus(
    name: str,
    entry: Mapping[str, Any],
    concepts: pd.DataFrame,
    settings: Mapping[str, Any],
    *,
    descriptions: Mapping[str, list[str]] | None = None,
    progress: bool = True,
) -> ImageSearchResult:
    """Tag the images of corpus ``name``, then count image, matched and misalignment frequencies.

    The caption side (``image_corpora.<name>.corpus``, default ``name``) must have been searched first with
    the same ``concepts``. The tagger is ``image_corpora.<name>.tagger`` (``image_search.tagger`` when the
    entry has none). A failed image shard stops the stage naming it unless ``image_search.allow_failed_shards``.
    """
    corpus = caption_corpus(name, entry)
    tagger = entry.get("tagger") or settings.get("tagger")
    if not tagger:
        raise ConfigError(f"image_corpora.{name}.tagger: missing (which backend tags the images)")
    kwargs = run_kwargs({k: v for k, v in settings.items() if k != "tagger"})
    thresholds = [float(t) for t in settings.get("thresholds", [0.7])]
    source = image_source(name, entry)
    text_dir = corpora.text_search_dir(corpus)
    if not text_dir.exists():
        raise ConfigError(
            f"image_corpora.{name}: no caption search for '{corpus}' at {text_dir}; add it under `corpora`"
        )
    tagger_config = resolve_tagger_config(tagger)
    names = concepts["name"].tolist()
    factory = functools.partial(build_tagger, tagger_config, names, descriptions=descriptions)
    image_dir = image_search_dir(name, str(tagger_config.get("backend", "tagger")))
    run_image_search(source, factory, image_dir, overwrite=True, progress=progress, **kwargs)
    shards = image_shard_table(image_dir)
    allow_failed = bool(settings.get("allow_failed_shards", False))
    corpora.require_complete(
        shards, what=f"image corpus {name}", setting="image_search.allow_failed_shards", allow_failed=allow_failed
    )
    table = frequency_table(name, text_dir, image_dir, thresholds, concepts[["concept_id", "name"]])
    mis = misalignment(text_dir, image_dir, thresholds, allow_failed=allow_failed)
    table = table.assign(concept_id=table["concept_id"].astype("int32"), count=table["count"].astype("int64"))
    frequencies_path(name).parent.mkdir(parents=True, exist_ok=True)
    schemas.write_table(table, schemas.CORPUS_FREQUENCIES, frequencies_path(name))
    return ImageSearchResult(frequencies=table, misalignment=mis, shards=shards, image_dir=image_dir)


def qualitative_examples(
    name: str, entry: Mapping[str, Any], image_dir: Path, concepts: Sequence[str], *, threshold: float, n: int = 6
) -> list[tuple[Image.Image, list[str]]]:
    """The first ``n`` tagged images of the corpus' first shard with their tags at ``threshold``."""
    source = image_source(name, entry)
    shard = list_image_shards(source)[0]
    scores = pd.read_parquet(image_dir / "shards" / f"{shard.index:06d}.scores.parquet")
    scores = scores[scores["prob"] >= threshold]
    tags = scores.groupby("sample_id")["concept_id"].apply(list).to_dict()
    examples = []
    for sample in iter_tar_samples(shard.path, set(source.image_ext)):
        sample_id = (shard.index << 32) | sample.position
        data = next((sample.files[e] for e in source.image_ext if sample.files.get(e)), None)
        if data is None:
            continue
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:  # a corrupt image is counted by the stage; here it is just not shown
            continue
        examples.append((image, sorted(concepts[c] for c in tags.get(sample_id, []))))
        if len(examples) >= n:
            break
    return examples
