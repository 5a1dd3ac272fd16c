"""The image side of a corpus as DVC stages: train the sample tagger, tag a corpus' images, and derive image,
matched and misalignment frequencies against the caption side of the same corpus.

A corpus whose images are tagged is an entry under ``image_corpora`` in params.yaml, named like its caption
side under ``corpora`` (the matched counts pair the two by sample id)::

    image_corpora:
      sample_wds:
        data: data/raw/samples/wds             # the folder DVC tracks
        images: {format: wds, paths: "data/raw/samples/wds/*.tar", image_ext: [jpg]}

Each entry names its own ``tagger`` (helpers.images.backends); the inference settings shared by every corpus
are the ``image_search`` section (helpers.images.search). Both are checked by the models of
helpers.params.images.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from helpers import paths, schemas
from helpers.devices import resolve_device
from helpers.images.audit import CalibrationResult, calibrate_corpus, caption_prevalence
from helpers.images.backends import build_tagger
from helpers.images.calibration import thresholds_for
from helpers.images.frequencies import frequency_table, misalignment, text_counts
from helpers.images.prior_shift import fit_corpus_prior_shift, shifted_tagger
from helpers.images.search import image_search_dir, run_image_search
from helpers.images.sources import image_source, iter_shard_images, list_image_shards
from helpers.images.tagger_data import read_labels
from helpers.images.tagger_trained import train_tagger
from helpers.params import ConfigError, validate
from helpers.params.images import ImageCorpus, ImageSearch, TaggerTraining
from helpers.shards import read_run, run_report
from helpers.text import corpora

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


def train_sample_tagger(training: Mapping[str, Any], *, name: str = "sample", progress: bool = True):
    """Train the ``trained`` backend on the labelled image set of params ``taggers.<name>`` and save it.

    ``training``: the ``taggers.<name>`` entry (:class:`helpers.params.images.TaggerTraining` or a mapping of
    its keys). Returns the tagger (with ``loss_history``). The checkpoint path is ``training.checkpoint``.
    """
    prefix = f"taggers.{name}"
    spec = validate(TaggerTraining, training, prefix)
    labels_path = Path(paths.resolve(spec.labels))
    if not labels_path.exists():
        raise ConfigError(f"{prefix}.labels: file not found: {labels_path}")
    images, labels = read_labels(labels_path)
    concepts = sorted({c for row in labels for c in row})
    tagger = train_tagger(
        images,
        labels,
        concepts,
        image_size=spec.image_size,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=spec.seed,
        loss=spec.loss,
        augment=spec.augment,
        jpeg_quality=None if spec.jpeg_quality is None else (spec.jpeg_quality[0], spec.jpeg_quality[1]),
        jpeg_p=spec.jpeg_p,
        widths=spec.widths,
        pools=spec.pools,
        global_pool=spec.global_pool,
        precision=spec.precision,
        progress=progress,
    )
    checkpoint = Path(paths.resolve(spec.checkpoint))
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tagger.save(checkpoint)
    return tagger


@dataclass
class ImageSearchResult:
    frequencies: pd.DataFrame  # corpus, concept_id, concept, method, threshold, count
    misalignment: pd.DataFrame  # threshold, n_text_and_image, n_misaligned, degree_extracted, degree_fixed
    shards: pd.DataFrame  # per-shard status and reader stats of the image side, and the caption side's status
    image_dir: Path
    report: dict = field(default_factory=dict)  # the image run's report, and the failed shards of both sides
    calibration: CalibrationResult | None = None  # per-concept thresholds fitted on the entry's audit split


def frequencies_path(name: str) -> Path:
    return paths.processed_dir() / "corpora" / name / "frequencies.parquet"


def image_shard_table(out_dir: Path, text_dir: Path | None = None) -> pd.DataFrame:
    """One row per image shard: status, error and the reader's counters (corrupt, missing images...); with
    ``text_dir``, also the caption side's ``caption_status`` / ``caption_error`` of the same shard."""
    table = corpora.shard_table(out_dir)
    if text_dir is not None:
        text = corpora.shard_table(text_dir)[["shard", "status", "error"]]
        text = text.rename(columns={"status": "caption_status", "error": "caption_error"})
        table = table.merge(text, on="shard", how="left")
    return table


def check_caption_failures(name: str, text_dir: Path) -> list[int]:
    """The caption side's failed shards, which its stage must have accepted (``text_search.allow_failed_shards``).

    Raises ``RuntimeError`` naming the shards and the setting when a failed caption shard was not accepted
    (a caption search run by hand, or changed since its stage ran). Checked before any image is tagged.
    """
    shards = corpora.shard_table(text_dir)
    failed = set(shards.loc[shards["status"] != "ok", "shard"].astype(int))
    refused = sorted(failed - corpora.accepted_failures(text_dir))
    if refused:
        raise RuntimeError(
            f"image corpus {name}: the caption search in {text_dir} has failed or missing shard(s) {refused} that "
            "its stage did not accept; rerun the text_search stage (with text_search.allow_failed_shards: true "
            "to count the rest)"
        )
    return sorted(failed)


def caption_corpus(name: str, entry: Mapping[str, Any]) -> str:
    """The ``corpora`` entry whose captions pair with image corpus ``name`` (``corpus``, default ``name``).

    The entry is checked as a whole (:class:`helpers.params.images.ImageCorpus`): errors name
    ``image_corpora.<name>.<key>``, the tagger's ``image_corpora.<name>.tagger.<key>``.
    """
    checked = validate(ImageCorpus, entry, f"image_corpora.{name}")
    return checked.corpus or name


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

    With an ``audit`` entry it then fits per-concept thresholds on that labelled split
    (:func:`helpers.images.audit.calibrate_corpus`, written under the run folder's ``calibration/``) and counts
    image and matched frequencies at them too (methods ``image_calibrated`` / ``matched_calibrated``, each row's
    ``threshold`` the concept's own; concepts the table lacks keep the highest global threshold).

    The caption side (``image_corpora.<name>.corpus``, default ``name``) must have been searched first with
    the same ``concepts``. The tagger is ``image_corpora.<name>.tagger``; ``settings`` is the ``image_search``
    section (:class:`helpers.params.images.ImageSearch` or a mapping of its keys). A failed image shard stops the
    stage naming it unless ``image_search.allow_failed_shards``; a failed caption shard must have been accepted
    by the text stage (``text_search.allow_failed_shards``). With both, the stage finishes: matched counts and
    misalignment use what failed shards kept, and the shard table (``caption_status`` too) and ``report`` list
    the failures.
    """
    corpus = caption_corpus(name, entry)
    tagger = dict(entry["tagger"])
    search = validate(ImageSearch, settings, "image_search")
    thresholds = list(search.thresholds)
    source = image_source(name, entry)
    text_dir = corpora.text_search_dir(corpus)
    if not text_dir.exists():
        raise ConfigError(
            f"image_corpora.{name}: no caption search for '{corpus}' at {text_dir}; add it under `corpora`"
        )
    tagger_config = resolve_tagger_config(tagger)
    names = concepts["name"].tolist()
    factory = functools.partial(
        build_tagger, tagger_config, names, descriptions=descriptions, prefix=f"image_corpora.{name}.tagger"
    )
    image_dir = image_search_dir(name)
    caption_failed = check_caption_failures(name, text_dir)
    spec = validate(ImageCorpus, entry, f"image_corpora.{name}")
    shift = None
    if spec.prior_shift is not None:  # label shift: move the tagger onto the corpus's concept priors first
        shift = fit_corpus_prior_shift(
            f"image_corpora.{name}.prior_shift",
            spec.prior_shift,
            factory,
            source,
            batch_size=search.batch_size,
            device=resolve_device(search.device),
        )
        factory = functools.partial(shifted_tagger, factory, shift.estimate.offsets.tolist())
    run_image_search(source, factory, image_dir, search, overwrite=True, progress=progress)
    if shift is not None:
        shift_table = shift.table(concepts["concept_id"].to_numpy())
        schemas.write_table(shift_table, schemas.PRIOR_SHIFT, image_dir / "prior_shift.parquet")
    shards = image_shard_table(image_dir, text_dir)
    corpora.require_complete(
        shards,
        what=f"image corpus {name}",
        setting="image_search.allow_failed_shards",
        allow_failed=search.allow_failed_shards,
    )
    image_failed = sorted(shards.loc[shards["status"] != "ok", "shard"].astype(int))
    # each side's failures were accepted by its own setting: the joins use what the failed shards kept
    allow_failed = bool(caption_failed or image_failed)
    # per-concept thresholds first (entries with an audit split), so their counts sit beside the global ones
    prevalence = None
    if spec.audit is not None and spec.audit.prevalence == "captions":
        n_images = int(shards["records"].sum())  # samples whose captions were searched
        prevalence = caption_prevalence(text_counts(text_dir, allow_failed=allow_failed), len(concepts), n_images)
    calibration = calibrate_corpus(
        name, entry, concepts, search, tagger_config=tagger_config, descriptions=descriptions,
        prevalence=prevalence, progress=progress,
    )  # fmt: skip
    cuts = None
    if calibration is not None:
        n_run = int(read_run(image_dir).get("n_concepts") or 0)
        cuts = thresholds_for(calibration.thresholds, np.arange(n_run), float(max(thresholds)))
    names = concepts[["concept_id", "name"]]
    table = frequency_table(name, text_dir, image_dir, thresholds, names, calibrated=cuts, allow_failed=allow_failed)
    mis = misalignment(text_dir, image_dir, thresholds, allow_failed=allow_failed)
    report = {
        **run_report(image_dir),
        **({"prior_shift": shift.summary()} if shift is not None else {}),
        "caption_failed": [
            {"shard": int(r.shard), "file": r.file, "error": r.caption_error}
            for r in shards[shards["shard"].isin(caption_failed)].itertuples()
        ],
    }
    table = table.assign(concept_id=table["concept_id"].astype("int32"), count=table["count"].astype("int64"))
    frequencies_path(name).parent.mkdir(parents=True, exist_ok=True)
    schemas.write_table(table, schemas.CORPUS_FREQUENCIES, frequencies_path(name))
    return ImageSearchResult(
        frequencies=table, misalignment=mis, shards=shards, image_dir=image_dir, report=report, calibration=calibration
    )


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
    for position, _, image, _ in iter_shard_images(shard.path, source.image_ext):
        if image is None:  # a corrupt image is counted by the stage; here it is just not shown
            continue
        sample_id = (shard.index << 32) | position
        examples.append((image, sorted(concepts[c] for c in tags.get(sample_id, []))))
        if len(examples) >= n:
            break
    return examples
