"""Per-concept thresholds of an image corpus's tagger, fitted on its labelled audit split (stage wiring).

Why: one global threshold treats every concept alike, but a zero-shot tagger over-tags some concepts and
under-tags others (issue "image-side counts that recover the truth", item 2). An ``image_corpora.<name>.audit``
entry names a few hundred images labelled with the concepts they show; :func:`calibrate_corpus` scores them
with the corpus's own tagger (the same config, concepts and columns as the image search), fits one threshold
per concept with :func:`helpers.images.calibration.fit_thresholds` and writes, inside the image-search run
folder (the stage's declared output):

    calibration/thresholds.parquet   calibration.THRESHOLDS_SCHEMA: concept_id (the searched table's), threshold,
                                     audit precision/recall/F1 at it, n_positives, fallback
    calibration/audit.parquet        AUDIT_SCHEMA: audit_index, concept_id, prob, label -- the scored audit
                                     split, dense (every image x concept), for count correction
                                     (:mod:`helpers.analysis.correction`)

Concepts with fewer than ``min_positives`` labelled positives, or whose precision target is unreachable, keep
the global threshold (``default``) and are flagged ``fallback`` (``mode: pooled`` fits every concept and flags
those with few positives); thresholds never go below the search's
``prob_floor`` (lower scores were not stored). Audit images that do not decode and label names that are no
concept of the search are counted and reported, not silently dropped.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import paths
from helpers.devices import resolve_device
from helpers.images.backends import build_tagger
from helpers.images.calibration import audit_scores, fit_thresholds, read_thresholds, write_thresholds
from helpers.images.search import image_search_dir
from helpers.images.tagger_data import read_labels
from helpers.params import ConfigError, validate
from helpers.params.images import Audit, ImageCorpus, ImageSearch
from helpers.schemas import read_arrow

CALIBRATION_DIR = "calibration"
AUDIT_SCHEMA = pa.schema(
    [("audit_index", pa.int64()), ("concept_id", pa.int32()), ("prob", pa.float32()), ("label", pa.bool_())]
)


@dataclass
class CalibrationResult:
    """What :func:`calibrate_corpus` fitted and wrote."""

    thresholds: pd.DataFrame  # calibration.THRESHOLDS_SCHEMA rows, one per searched concept
    thresholds_path: Path
    audit_path: Path
    n_audit: int  # audit images scored
    skipped: list[str] = field(default_factory=list)  # audit images that did not decode ("path: error")
    unknown_labels: list[str] = field(default_factory=list)  # label names that are no searched concept
    #: ``mode: pooled``: the chosen local precision and the cross-validated pooled precision/recall
    pooled: dict[str, float] = field(default_factory=dict)


def thresholds_path(name: str) -> Path:
    """Where the image-search stage of ``name`` writes its per-concept thresholds."""
    return image_search_dir(name) / CALIBRATION_DIR / "thresholds.parquet"


def audit_path(name: str) -> Path:
    """Where the image-search stage of ``name`` writes its scored audit split."""
    return image_search_dir(name) / CALIBRATION_DIR / "audit.parquet"


def write_audit(probs: np.ndarray, labels: np.ndarray, concept_ids: np.ndarray, path: Path) -> Path:
    """The (M, C) audit probabilities and labels as a dense long table (AUDIT_SCHEMA)."""
    m, c = probs.shape
    table = pa.table(
        {
            "audit_index": np.repeat(np.arange(m, dtype=np.int64), c),
            "concept_id": np.tile(np.asarray(concept_ids, dtype=np.int32), m),
            "prob": probs.astype(np.float32).reshape(-1),
            "label": labels.astype(bool).reshape(-1),
        },
        schema=AUDIT_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_audit(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs (M, C) float32, labels (M, C) bool, concept_ids (C,))`` of a table ``write_audit`` wrote.

    Raises FileNotFoundError naming the file, ValueError when it is not a dense audit table.
    """
    df = read_arrow(
        path,
        AUDIT_SCHEMA,
        what="an audit table",
        missing_hint="no scored audit split (give the image corpus an `audit` entry and rerun)",
    )
    concept_ids = np.unique(df["concept_id"].to_numpy())
    m = int(df["audit_index"].max()) + 1 if len(df) else 0
    if len(df) != m * len(concept_ids):
        raise ValueError(f"{path}: expected every audit image x concept ({m} x {len(concept_ids)}), got {len(df)} rows")
    df = df.sort_values(["audit_index", "concept_id"])
    shape = (m, len(concept_ids))
    return df["prob"].to_numpy().reshape(shape), df["label"].to_numpy().reshape(shape), concept_ids


def calibrate_corpus(
    name: str,
    entry: Mapping[str, Any] | ImageCorpus,
    concepts: pd.DataFrame,
    settings: Mapping[str, Any] | ImageSearch,
    *,
    tagger_config: Mapping[str, Any],
    descriptions: Mapping[str, list[str]] | None = None,
    prevalence: np.ndarray | None = None,
    progress: bool = False,
) -> CalibrationResult | None:
    """Fit and write per-concept thresholds of corpus ``name`` on its ``audit`` split; ``None`` without one.

    Args:
        name: the ``image_corpora`` entry.
        entry: that entry (its ``audit`` section: :class:`helpers.params.images.Audit`).
        concepts: the searched concept table (concept_id 0..n-1, name): the tagger's columns.
        settings: the ``image_search`` section (device, batch size, prob_floor, thresholds).
        tagger_config: the entry's tagger config with its paths resolved (as the image search builds it).
        descriptions: concept descriptions, as the image search passes them to the tagger.
        prevalence: (n,) each concept's share of the corpus's images, for ``audit.prevalence: captions``
            (:func:`caption_prevalence`); required then, ignored with ``audit``.
        progress: show a progress bar while scoring.

    Raises:
        ConfigError: naming ``image_corpora.<name>.audit`` when the labels file is missing or unreadable,
            names no image, or no audit image decodes.
    """
    spec = validate(ImageCorpus, entry, f"image_corpora.{name}")
    audit: Audit | None = spec.audit
    if audit is None:
        return None
    search = validate(ImageSearch, settings, "image_search")
    key = f"image_corpora.{name}.audit"
    labels_file = paths.resolve(audit.labels, paths.workdir())
    if not Path(labels_file).is_file():
        raise ConfigError(f"{key}.labels: {labels_file} does not exist")
    root = paths.resolve(audit.image_root, paths.workdir()) if audit.image_root else None
    if spec.data is not None:  # DVC tracks `data` for this stage: an audit outside it would not rerun it
        tracked = paths.resolve(spec.data, paths.workdir())
        for sub, path in (("labels", labels_file), ("image_root", root)):
            if path is not None and not paths.covers(tracked, path):
                raise ConfigError(
                    f"{key}.{sub}: {path} is outside image_corpora.{name}.data ({spec.data}), the path DVC tracks "
                    f"for this stage; set data to a folder holding both, so a change to the audit reruns it"
                )
    try:
        images, labels = read_labels(
            labels_file,
            image_column=audit.image_column,
            concepts_column=audit.concepts_column,
            separator=audit.separator,
            image_root=root,
        )
    except (KeyError, ValueError) as error:
        why = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ConfigError(f"{key}.labels: {labels_file}: {why}") from error
    if not images:
        raise ConfigError(f"{key}.labels: {labels_file} lists no image")
    repeated = sorted(p for p, n in Counter(str(p) for p in images).items() if n > 1)
    if repeated:  # one image in a training fold and its held-out fold would make the cross-validation optimistic
        raise ConfigError(f"{key}.labels: {labels_file} lists {len(repeated)} image(s) more than once: {repeated[:3]}")
    names = concepts["name"].tolist()
    tagger = build_tagger(tagger_config, names, descriptions=descriptions, prefix=f"image_corpora.{name}.tagger")
    try:
        scored = audit_scores(
            tagger,
            [str(p) for p in images],
            labels,
            batch_size=search.batch_size,
            device=resolve_device(search.device),
            progress=progress,
        )
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from error
    if not scored.labels.any():
        raise ConfigError(
            f"{key}.labels: no audit label names a searched concept (label names that are no concept: "
            f"{scored.unknown_labels[:5]}); nothing can be fitted"
        )
    if audit.prevalence == "captions" and (prevalence is None or len(prevalence) != len(concepts)):
        raise ConfigError(f"{key}.prevalence: 'captions' needs one caption prevalence per concept")
    default = float(audit.default) if audit.default is not None else float(max(search.thresholds))
    concept_ids = concepts["concept_id"].to_numpy()
    try:
        fitted = fit_thresholds(
            scored.probs,
            scored.labels,
            mode=audit.mode,
            target_precision=audit.target_precision,
            default=default,
            floor=float(search.prob_floor),
            min_positives=audit.min_positives,
            concept_ids=concept_ids,
            prevalence=prevalence if audit.prevalence == "captions" else None,
            unreachable=audit.unreachable,
            folds=audit.folds,
            seed=audit.seed,
        )
    except ValueError as error:  # e.g. more folds than audit images
        unread = f" ({len(scored.skipped)} of {len(images)} audit images could not be read)" if scored.skipped else ""
        raise ConfigError(f"{key}: {error}{unread}") from error
    pooled = fitted.attrs.get("pooled", {})
    if pooled and pooled["cv_precision"] < audit.target_precision:
        warnings.warn(
            f"{key}.target_precision: no threshold choice reaches a pooled precision of {audit.target_precision} "
            f"on the audit (cross-validated: {pooled['cv_precision']:.3f} at recall {pooled['cv_recall']:.3f}); "
            f"the most precise one is used",
            stacklevel=2,
        )
    out = thresholds_path(name)
    write_thresholds(fitted, out)
    audit_file = write_audit(scored.probs, scored.labels, concept_ids, audit_path(name))
    return CalibrationResult(
        thresholds=read_thresholds(out),
        thresholds_path=out,
        audit_path=audit_file,
        n_audit=len(scored.probs),
        skipped=list(scored.skipped),
        unknown_labels=list(scored.unknown_labels),
        pooled=dict(fitted.attrs.get("pooled", {})),
    )


def caption_prevalence(text: pd.DataFrame, n_concepts: int, n_images: int) -> np.ndarray:
    """(n_concepts,) share of a corpus's images whose caption mentions each concept: text count / images.

    ``text``: the caption search's counts (``concept_id``, ``count``; :func:`helpers.images.frequencies.text_counts`);
    concepts it lacks count 0. An estimate of how many images *show* a concept, for prevalence-adjusted
    thresholds: captions omit some shown concepts and name some absent ones (the world: 5% each), and the
    audit's rates are what the thresholds rest on. Raises ValueError when ``n_images`` < 1.
    """
    if n_images < 1:
        raise ValueError(f"caption prevalence needs at least one image, got {n_images}")
    counts = np.zeros(n_concepts, dtype=float)
    ids = text["concept_id"].to_numpy(dtype=np.int64)
    inside = (ids >= 0) & (ids < n_concepts)
    np.add.at(counts, ids[inside], text["count"].to_numpy(dtype=float)[inside])
    return np.clip(counts / n_images, 0.0, 1.0)


__all__ = [
    "AUDIT_SCHEMA",
    "CALIBRATION_DIR",
    "CalibrationResult",
    "audit_path",
    "calibrate_corpus",
    "caption_prevalence",
    "read_audit",
    "thresholds_path",
    "write_audit",
]
