"""The synthetic_validation stage's corrected fits: audits of each tagger, raw/corrected/true slopes, a figure.

Why (issue 13, item 5): ``helpers.synthetic.corrected`` lines up a fit on raw counts, on audit-corrected counts
(count x P / R, bootstrap over the audit) and on true counts; this module feeds it from the stage outputs of
the world -- the image searches' counts, the taggers' scores and the CLIP's per-concept zero-shot accuracy --
so the stage can say, per tagger and count type, whether the corrected slope is nearer the true one.

Two audits, both with labels from the world's truth:

``corpus_sample``
    ``audit_samples`` pretraining samples drawn (seeded) from the corpus itself, scored by the tagger in the
    image search (probabilities below the run's ``prob_floor`` were not stored and read as 0, which no
    threshold >= the floor can tell apart). This is "label a few hundred images of your own corpus"; it
    exists for every tagger, the supervised one included (its labelled split is its training data, on which
    its rates would be optimistic).
``calibration_audit``
    the image stage's scored audit (``calibration/audit.parquet``, entries with an ``audit``), on which its
    per-concept thresholds were fitted: for ``synthetic_clip`` the world's ``audit/`` (another seeded sample
    of the corpus, copied out with its labels); an entry may instead name the tagger split (drawn outside
    the corpus). It has no captions.

Count types: ``image`` and ``matched`` at the operating threshold, and ``image_calibrated`` /
``matched_calibrated`` (per-concept thresholds) where the frequency table has them. True counts:
``shown_count`` for image, the shown-and-mentioned count for matched. A matched count is corrected by the
matched estimator's own rates, which only an audit with captions gives (``corpus_sample``: decision = tagged
AND the caption search found the concept, truth = shown AND mentioned). The calibration audit has no captions,
so it corrects image counts only: the tagger's image rates in their place over-correct a tagger whose false
positives the caption side filters out (the CLIP tagger's matched slope went from 33.1 to 17.1, true 30.8).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers import schemas
from helpers.evaluation.pair import EVALUATIONS_FILE
from helpers.evaluation.specs import OVERALL
from helpers.evaluation.writers import read_evaluations
from helpers.images.audit import audit_path, read_audit, thresholds_path
from helpers.images.calibration import read_thresholds, thresholds_for
from helpers.images.corpora import frequencies_path
from helpers.images.frequencies import paired_shards
from helpers.naming import concept_key
from helpers.params import ConfigError
from helpers.params.study import CorrectedFits
from helpers.synthetic.corrected import corrected_fit_row, corrected_fits_table
from helpers.synthetic.validation import (
    _check_stage_settings,
    _world_concepts,
    _world_ids,
    image_run_dir,
    true_frequency_table,
)
from helpers.text import corpora

AUDIT_SOURCES = ("corpus_sample", "calibration_audit")
_TRUE_COLUMN = {"image": "shown_count", "matched": "matched_count"}


@dataclass
class WorldAudit:
    """A tagger's scores and the truth on audit samples, columns in world-concept order (0..K-1)."""

    source: str  # one of AUDIT_SOURCES
    probs: np.ndarray  # (N, K) float32; 0 where no score was stored
    labels: np.ndarray  # (N, K) bool: the sample shows the concept
    text: np.ndarray | None = None  # (N, K) bool: the caption search found the concept (None: no captions)
    mentioned: np.ndarray | None = None  # (N, K) bool: the caption mentions it (truth)

    def decisions(self, cut: float | np.ndarray, matched: bool) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, truth), (N, K) bool, of the image (``matched`` False) or matched estimator at ``cut``
        (one threshold, or (K,) per concept). Raises ValueError for ``matched`` on an audit without captions."""
        tagged = self.probs >= cut
        if not matched:
            return tagged, self.labels
        if not self.has_captions:
            raise ValueError(f"the {self.source} audit has no captions: it cannot rate the matched estimator")
        return tagged & self.text, self.labels & self.mentioned

    @property
    def has_captions(self) -> bool:
        """Whether the audit knows its samples' caption-search hits and mentioned concepts."""
        return self.text is not None and self.mentioned is not None


def _to_world_columns(values: np.ndarray, world: np.ndarray, k: int, reduce: str) -> np.ndarray:
    """(N, C) table-concept columns -> (N, K) world columns (max / any over table concepts of one world concept)."""
    out = np.zeros((values.shape[0], k), dtype=values.dtype)
    for c, w in enumerate(world):
        if w >= 0:
            out[:, w] = np.maximum(out[:, w], values[:, c]) if reduce == "max" else out[:, w] | values[:, c]
    return out


def corpus_audit(
    world_dir: str | os.PathLike,
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    concepts: pd.DataFrame,
    n_samples: int,
    seed: int = 0,
) -> WorldAudit:
    """``n_samples`` pretraining samples (all, if the world has fewer) drawn without replacement with ``seed``:
    their stored tagger probabilities (N, K), caption-search hits (N, K), and their shown and mentioned
    concepts (N, K) from ``truth/``.

    Raises ValueError when ``n_samples`` < 1, or a world concept is missing from the searched table.
    """
    if n_samples < 1:
        raise ValueError(f"audit_samples must be >= 1, got {n_samples}")
    truth = Path(world_dir) / "truth"
    world_names = _world_concepts(world_dir)["name"].tolist()
    k = len(world_names)
    ids = pd.read_parquet(truth / "samples.parquet", columns=["sample_id"])["sample_id"].to_numpy()
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(ids, size=min(n_samples, len(ids)), replace=False))
    row_of = pd.Series(np.arange(len(drawn)), index=drawn)
    labels = np.zeros((len(drawn), k), dtype=bool)
    shown = pd.read_parquet(truth / "image_concepts.parquet", columns=["sample_id", "concept_id"])
    shown = shown[shown["sample_id"].isin(drawn)]
    labels[row_of[shown["sample_id"]].to_numpy(), shown["concept_id"].to_numpy()] = True
    mentioned = np.zeros_like(labels)
    said = pd.read_parquet(truth / "caption_concepts.parquet", columns=["sample_id", "concept_id"])
    said = said[said["sample_id"].isin(drawn)]
    mentioned[row_of[said["sample_id"]].to_numpy(), said["concept_id"].to_numpy()] = True
    text = np.zeros_like(labels)
    probs = np.zeros((len(drawn), k), dtype=np.float32)
    n_concepts, shards = paired_shards(text_dir, image_dir)
    world = _world_ids(concepts, world_names, n_concepts)
    for pair in shards:
        keep = np.isin(pair.image_sample, drawn) & (world[pair.image_concept] >= 0)
        rows = row_of[pair.image_sample[keep]].to_numpy()
        np.maximum.at(probs, (rows, world[pair.image_concept[keep]]), pair.image_prob[keep].astype(np.float32))
        hit = np.isin(pair.text_sample, drawn) & (world[pair.text_concept] >= 0)
        text[row_of[pair.text_sample[hit]].to_numpy(), world[pair.text_concept[hit]]] = True
    return WorldAudit("corpus_sample", probs, labels, text, mentioned)


def calibration_audit(image_corpus: str, concepts: pd.DataFrame, world_names: list[str]) -> WorldAudit | None:
    """The image stage's scored audit split of ``image_corpus`` in world columns; ``None`` without one."""
    path = audit_path(image_corpus)
    if not path.is_file():
        return None
    probs, labels, concept_ids = read_audit(path)
    world = _world_ids(concepts, world_names, len(concepts))[concept_ids]
    k = len(world_names)
    return WorldAudit(
        "calibration_audit", _to_world_columns(probs, world, k, "max"), _to_world_columns(labels, world, k, "any")
    )


def world_cuts(image_corpus: str, concepts: pd.DataFrame, world_names: list[str], default: float) -> np.ndarray:
    """(K,) the per-concept thresholds the image stage fitted for ``image_corpus``, in world order (the smallest
    of the table concepts that share a world concept)."""
    table_ids = np.arange(len(concepts))
    cuts = thresholds_for(read_thresholds(thresholds_path(image_corpus)), table_ids, default)
    world = _world_ids(concepts, world_names, len(concepts))
    out = np.full(len(world_names), np.inf)
    for c, w in enumerate(world):
        if w >= 0:
            out[w] = min(out[w], cuts[c])
    return out


def world_counts(freq: pd.DataFrame, concepts: pd.DataFrame, world_names: list[str]) -> pd.DataFrame:
    """A frequency table's (method, threshold, concept_id) rows with ``world_id``; rows of non-world concepts
    dropped, and of several table concepts of one world concept the first kept (a world's table is 1:1)."""
    world = _world_ids(concepts, world_names, len(concepts))
    out = freq.assign(world_id=world[freq["concept_id"].to_numpy()])
    out = out[out["world_id"] >= 0]
    return out.drop_duplicates(["method", "threshold", "world_id"])


def zero_shot_scores(
    evaluations_dir: str | os.PathLike, model: str, dataset: str, prompt: str, world_names: list[str]
) -> np.ndarray:
    """(K,) the model's per-concept zero-shot top-1 accuracy (%) on ``dataset`` with ``prompt``; NaN for a world
    concept the dataset does not score. Raises ConfigError naming the evaluate stage when its file is missing."""
    path = Path(evaluations_dir) / model / dataset / EVALUATIONS_FILE
    if not path.is_file():
        raise ConfigError(
            f"synthetic_validation.corrected_fits: no evaluation of {model} on {dataset} at {path} "
            f"(run evaluate@{model}-{dataset})"
        )
    ev = read_evaluations(path)
    ev = ev[(ev["task"] == "zero_shot") & (ev["metric"] == "top1") & (ev["prompt"] == prompt)]
    ev = ev[ev["concept"] != OVERALL]
    if ev.empty:
        raise ConfigError(f"synthetic_validation.corrected_fits: {path} has no zero-shot top-1 rows of prompt {prompt}")
    index = {concept_key(name): i for i, name in enumerate(world_names)}
    out = np.full(len(world_names), np.nan)
    for concept, value in zip(ev["concept"], ev["value"]):
        i = index.get(concept_key(concept))
        if i is not None:
            out[i] = float(value)
    return out


def corrected_fits_report(
    settings: Mapping[str, Any], base: str | os.PathLike, evaluations_dir: str | os.PathLike
) -> pd.DataFrame:
    """CORRECTED_FITS rows for every tagger of ``synthetic_validation.image_corpora``, audit source, count type
    and dataset of ``synthetic_validation.corrected_fits``; an empty table when that section is null.

    Concepts enter a fit when the dataset scores them (a world concept the classification set lacks is left
    out). Raises ConfigError naming the missing stage output (image search, evaluation).
    """
    checked = _check_stage_settings(settings)
    spec: CorrectedFits | None = checked.corrected_fits
    if spec is None:
        return corrected_fits_table([])
    world_dir = Path(base) / checked.world
    world_names = _world_concepts(world_dir)["name"].tolist()
    truth = true_frequency_table(world_dir)
    text_dir = corpora.text_search_dir(checked.corpus)
    concepts = corpora.searched_concepts(checked.corpus)[["concept_id", "name"]]
    t = float(checked.threshold)
    rows = []
    for name in checked.image_corpora:
        image_dir = image_run_dir(name)
        freq = world_counts(
            schemas.read_table(frequencies_path(name), schemas.CORPUS_FREQUENCIES), concepts, world_names
        )
        audits = [corpus_audit(world_dir, text_dir, image_dir, concepts, spec.audit_samples, spec.audit_seed)]
        stage_audit = calibration_audit(name, concepts, world_names)
        audits += [stage_audit] if stage_audit is not None else []
        cuts = world_cuts(name, concepts, world_names, t) if thresholds_path(name).is_file() else None
        for count_type in ("image", "matched", "image_calibrated", "matched_calibrated"):
            calibrated = count_type.endswith("_calibrated")
            kind = count_type.removesuffix("_calibrated")
            if calibrated:
                rows_at = freq[freq["method"] == count_type]
                if rows_at.empty or cuts is None:
                    continue
            else:
                rows_at = freq[(freq["method"] == count_type) & np.isclose(freq["threshold"], t, rtol=0.0, atol=1e-9)]
                if rows_at.empty:
                    raise ConfigError(f"synthetic_validation.threshold: {name} has no {count_type} counts at {t:g}")
            raw = np.zeros(len(world_names))
            raw[rows_at["world_id"].to_numpy()] = rows_at["count"].to_numpy()
            true = truth[_TRUE_COLUMN[kind]].to_numpy(dtype=float)
            cut = cuts.astype(np.float32) if calibrated else np.float32(t)
            for dataset in spec.datasets:
                scores = zero_shot_scores(evaluations_dir, spec.model, dataset, spec.prompt, world_names)
                keep = np.isfinite(scores)
                for audit in audits:
                    if kind == "matched" and not audit.has_captions:
                        continue  # module docstring: image rates would over-correct matched counts
                    predicted, labels = audit.decisions(cut, matched=kind == "matched")
                    rows.append(
                        corrected_fit_row(
                            name,
                            count_type,
                            f"{dataset} zero-shot top-1 ({spec.prompt})",
                            raw[keep],
                            true[keep],
                            scores[keep],
                            predicted[:, keep],
                            labels[:, keep],
                            audit=audit.source,
                            zero_rule=spec.zero_rule,
                            prior=spec.prior,
                            resamples=spec.resamples,
                            seed=spec.seed,
                        )
                    )
    return corrected_fits_table(rows)


def corrected_fits_metrics(table: pd.DataFrame) -> dict:
    """The headline numbers: ``{tagger: {count_type: {audit: {raw_slope, corrected_slope, corrected_slope_ci,
    true_slope, corrected_closer}}}}`` of the first score (NaN-free: missing values become None)."""

    def number(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    out: dict[str, dict] = {}
    if table.empty:
        return out
    first = table["score"].iloc[0]
    for row in table[table["score"] == first].itertuples(index=False):
        out.setdefault(row.image_corpus, {}).setdefault(row.count_type, {})[row.audit] = {
            "raw_slope": number(row.raw_slope),
            "corrected_slope": number(row.corrected_slope),
            "corrected_slope_ci": [number(row.corrected_slope_ci_low), number(row.corrected_slope_ci_high)],
            "true_slope": number(row.true_slope),
            "corrected_closer": bool(row.corrected_closer),
        }
    return {"score": str(first), "fits": out}


def plot_corrected_fits(table: pd.DataFrame):
    """Raw, corrected (with its bootstrap 95% interval over the audit) and true-count slope per tagger, count
    type and audit: one row each, one panel per score. Returns the figure.

    Raises ValueError for an empty table.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if table.empty:
        raise ValueError("plot_corrected_fits: no corrected fits (synthetic_validation.corrected_fits is null?)")
    scores = list(dict.fromkeys(table["score"]))
    labels = list(dict.fromkeys(table["image_corpus"] + " · " + table["count_type"] + " · " + table["audit"]))
    colours = dict(zip(["raw", "corrected", "true"], sns.color_palette("colorblind", 3)))
    fig, axes = plt.subplots(
        1, len(scores), figsize=(6.5 * len(scores), 0.42 * len(labels) + 1.6), squeeze=False, sharey=True
    )
    for ax, score in zip(axes[0], scores):
        rows = table[table["score"] == score]
        y = np.array([labels.index(f"{r.image_corpus} · {r.count_type} · {r.audit}") for r in rows.itertuples()])
        ax.scatter(rows["true_slope"], y, marker="|", s=260, color=colours["true"], label="true counts", zorder=3)
        ax.scatter(rows["raw_slope"], y, marker="o", s=30, color=colours["raw"], label="raw counts", zorder=3)
        low = rows["corrected_slope"] - rows["corrected_slope_ci_low"]
        high = rows["corrected_slope_ci_high"] - rows["corrected_slope"]
        ax.errorbar(rows["corrected_slope"], y + 0.18, xerr=[low.clip(lower=0), high.clip(lower=0)], fmt="D",
                    markersize=4, color=colours["corrected"], capsize=2, label="corrected counts (95% CI)")  # fmt: skip
        ax.set(title=score, xlabel="concept-level slope (accuracy points per decade of count)")
        ax.grid(axis="y", linewidth=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].set_ylabel("tagger · count type · audit")
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


__all__ = [
    "AUDIT_SOURCES",
    "WorldAudit",
    "corpus_audit",
    "corrected_fits_metrics",
    "corrected_fits_report",
    "calibration_audit",
    "plot_corrected_fits",
    "world_counts",
    "world_cuts",
    "zero_shot_scores",
]
