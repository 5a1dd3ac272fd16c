"""Matched (text AND image) concept counts and image-text misalignment, from the two searches' shard outputs.

Why: the study's main frequency measure is the *matched* count -- a pretraining sample counts for a concept
only when its caption (``helpers.text.search``) and its image (``helpers.images.search``, tagger probability at
or above a threshold) both contain it -- and it reports how often the two sides share no concept at all
(misalignment). Both need the per-sample concept sets of the two sides side by side; the sides number their
samples identically (``sample_id = (shard_index << 32) | position`` over the same tar grouping), so the join
is a join on (sample_id, concept_id) within each shard.

Everything streams shard by shard: one shard's text pairs and image scores are in memory at a time, so
memory does not grow with the corpus. Both run folders must be complete (``IncompleteRunError`` otherwise;
``allow_failed=True`` uses what failed shards kept, e.g. the samples before a tar's truncation), have the
same number of shards and, for shards both completed, the same number of records (else the ids would not
refer to the same samples and a ``ValueError`` says so).

Text pairs are read by ``helpers.text.search.TextRunPairs``, the reading ``text_counts`` counts, including
the corpus-level vocabulary rule of ``unknown_words="drop"`` runs, so ``text`` counts and the text side of
the joins agree by construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers.images.search import check_thresholds, image_counts, stored_floor
from helpers.shards import (
    SHARD_DIR,
    check_complete,
    read_run,
    read_shard_stats,
)
from helpers.text.search import TextRunPairs, text_counts

METHODS = ("text", "image", "matched")
#: count types at per-concept thresholds fitted on an audit split (``helpers.images.audit``); their rows hold
#: each concept's own threshold in ``threshold``
CALIBRATED_METHODS = ("image_calibrated", "matched_calibrated")


# ------------------------------------------------------------------------------------- text pairs


def _read(out_dir: Path, record: dict, table: str):
    info = record.get("files", {}).get(table)
    if info is None:
        return None
    return pq.read_table(out_dir / SHARD_DIR / info["file"])


# --------------------------------------------------------------------------------- paired shards


@dataclass
class _ShardPair:
    """One shard of both sides: text pairs, and image score rows (sample, concept, prob >= floor)."""

    index: int
    text_sample: np.ndarray
    text_concept: np.ndarray
    image_sample: np.ndarray
    image_concept: np.ndarray
    image_prob: np.ndarray
    image_records: int


def _complete_records(out_dir: Path, allow_failed: bool) -> tuple[dict, dict[int, dict]]:
    run, records = check_complete(out_dir, allow_failed)
    return run, {r["shard"]: r for r in records}


def _paired_shards(
    text_dir: str | os.PathLike, image_dir: str | os.PathLike, allow_failed: bool, progress: bool
) -> tuple[int, Iterator[_ShardPair]]:
    """(n_concepts, iterator over the shards of both runs), after checking that the runs fit together."""
    text_dir, image_dir = Path(text_dir), Path(image_dir)
    text_run, text_records = _complete_records(text_dir, allow_failed)
    image_run, image_records = _complete_records(image_dir, allow_failed)
    stored_floor(image_dir)  # is an image-search folder
    if len(text_run["shards"]) != len(image_run["shards"]):
        raise ValueError(
            f"the caption run ({len(text_run['shards'])} shards) and the image run ({len(image_run['shards'])} "
            "shards) cover different shard lists; their sample ids do not refer to the same samples"
        )
    n_text, n_image = text_run.get("n_concepts"), image_run.get("n_concepts")
    if n_text != n_image:
        raise ValueError(f"the caption run has {n_text} concepts and the image run {n_image}; use one concept list")
    text_pairs = TextRunPairs(text_dir, allow_failed=allow_failed)

    def iterate() -> Iterator[_ShardPair]:
        for entry in tqdm(image_run["shards"], desc="shards", unit="shard", disable=not progress):
            index = entry["index"]
            t_rec, i_rec = text_records[index], image_records[index]
            t_stats, i_stats = read_shard_stats(text_dir, index), read_shard_stats(image_dir, index)
            if (
                t_rec["status"] == "ok"
                and i_rec["status"] == "ok"
                and "records" in t_stats
                and "records" in i_stats
                and t_stats["records"] != i_stats["records"]
            ):
                raise ValueError(
                    f"shard {index}: the caption side read {t_stats['records']} records of {t_rec['path']} and the "
                    f"image side {i_stats['records']} of {i_rec['path']}; the sample ids do not align"
                )
            ts, tc = text_pairs.shard(t_rec)
            scores = _read(image_dir, i_rec, "scores")
            if scores is None:
                isample, iconcept, iprob = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
            else:
                isample = scores["sample_id"].to_numpy()
                iconcept = scores["concept_id"].to_numpy()
                iprob = scores["prob"].to_numpy()
            yield _ShardPair(index, ts, tc, isample, iconcept, iprob, int(i_stats.get("records", 0) or 0))

    return int(n_image or 0), iterate()


def paired_shards(
    text_dir: str | os.PathLike, image_dir: str | os.PathLike, *, allow_failed: bool = False, progress: bool = False
) -> tuple[int, Iterator[_ShardPair]]:
    """(n_concepts, iterator over the shards of both runs): text pairs exactly as counted, image score rows.

    The public entry for other modules that need the per-sample view of both sides (e.g. the synthetic
    validation); the runs are checked to fit together first, as for ``matched_counts``.
    """
    return _paired_shards(text_dir, image_dir, allow_failed, progress)


def _pair_keys(sample: np.ndarray, concept: np.ndarray, n_concepts: int) -> np.ndarray:
    """One int64 per (sample, concept) of one shard: position * n_concepts + concept (no overflow: checked)."""
    position = np.asarray(sample, dtype=np.int64) & np.int64(0xFFFFFFFF)
    if len(position) and int(position.max()) >= (np.iinfo(np.int64).max // max(n_concepts, 1)) - 1:
        raise OverflowError("too many records x concepts to key (sample, concept) pairs in int64")
    return position * np.int64(n_concepts) + np.asarray(concept, dtype=np.int64)


def _in_text(pair: _ShardPair, n_concepts: int) -> np.ndarray:
    """For each image score row of the shard: is its (sample, concept) pair also a text pair?"""
    if len(pair.image_sample) == 0 or len(pair.text_sample) == 0:
        return np.zeros(len(pair.image_sample), dtype=bool)
    return np.isin(
        _pair_keys(pair.image_sample, pair.image_concept, n_concepts),
        _pair_keys(pair.text_sample, pair.text_concept, n_concepts),
    )


# ----------------------------------------------------------------------------------------- public


def matched_counts(
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    thresholds: float | Sequence[float],
    *,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Matched counts: DataFrame(concept_id int32, threshold float64, count int64).

    ``count`` = number of samples whose caption contains the concept (the text search's hits) AND whose image
    has prob >= threshold for it (compared in float32, as ``image_counts``). Every concept of the runs gets a
    row per threshold; thresholds below the image run's ``prob_floor`` are refused.
    """
    ts = check_thresholds(thresholds, stored_floor(image_dir), image_dir)
    cut = np.asarray(ts, dtype=np.float32)
    n, shards = _paired_shards(text_dir, image_dir, allow_failed, progress)
    counts = np.zeros((len(ts), n), dtype=np.int64)
    for pair in shards:
        both = _in_text(pair, n)
        concept, prob = pair.image_concept[both], pair.image_prob[both]
        for i, t in enumerate(cut):
            counts[i] += np.bincount(concept[prob >= t], minlength=n)[:n]
    return pd.DataFrame(
        {
            "concept_id": np.tile(np.arange(n, dtype=np.int32), len(ts)),
            "threshold": np.repeat(np.asarray(ts, dtype=np.float64), n),
            "count": counts.reshape(-1),
        }
    )


def per_concept_cuts(
    thresholds: Sequence[float] | np.ndarray, n_concepts: int, floor: float, image_dir: Any = "the image run"
) -> np.ndarray:
    """float32 per-concept thresholds, checked: one per run concept (ids 0..n-1), probabilities, none below the
    run's stored ``floor``.

    Raises:
        ValueError: wrong length, a value outside [0, 1] or NaN, or thresholds below ``floor`` (naming the
            concept ids and ``image_dir``: lower scores were not stored, so those counts would be wrong).
    """
    cuts = np.asarray(thresholds, dtype=np.float64)
    if cuts.shape != (n_concepts,):
        raise ValueError(
            f"per-concept thresholds: expected {n_concepts} (one per concept of the runs), got {cuts.shape}"
        )
    if not np.isfinite(cuts).all() or (cuts < 0).any() or (cuts > 1).any():
        raise ValueError("per-concept thresholds: expected probabilities in [0, 1]")
    below = np.flatnonzero(cuts.astype(np.float32) < np.float32(floor))
    if len(below):
        raise ValueError(
            f"per-concept thresholds of concept ids {below[:10].tolist()} are below the prob_floor {floor} the image "
            f"search in {image_dir} stored (fit them with floor={floor}, or rerun the search with a lower floor)"
        )
    return cuts.astype(np.float32)


def calibrated_counts(
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    thresholds: Sequence[float] | np.ndarray,
    *,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Image and matched counts at one threshold per concept (fitted on an audit split).

    ``thresholds``: (n_concepts,) probabilities, one per concept id of the runs (0..n-1), each >= the image
    run's ``prob_floor`` (``per_concept_cuts``). A sample counts for concept c when its tagger prob >=
    thresholds[c] (compared in float32, as ``image_counts``), and for ``matched_calibrated`` when its caption
    also contains c.

    Returns DataFrame(concept_id int32, method in CALIBRATED_METHODS, threshold float64 = the concept's own
    threshold, count int64): one row per concept and method.
    """
    floor = stored_floor(image_dir)
    n, shards = _paired_shards(text_dir, image_dir, allow_failed, progress)
    cuts = per_concept_cuts(thresholds, n, floor, image_dir)
    image = np.zeros(n, dtype=np.int64)
    matched = np.zeros(n, dtype=np.int64)
    for pair in shards:
        keep = pair.image_prob >= cuts[pair.image_concept]
        image += np.bincount(pair.image_concept[keep], minlength=n)[:n]
        both = keep & _in_text(pair, n)
        matched += np.bincount(pair.image_concept[both], minlength=n)[:n]
    ids = np.arange(n, dtype=np.int32)
    values = np.asarray(thresholds, dtype=np.float64)
    return pd.DataFrame(
        {
            "concept_id": np.tile(ids, 2),
            "method": np.repeat(list(CALIBRATED_METHODS), n),
            "threshold": np.tile(values, 2),
            "count": np.concatenate([image, matched]),
        }
    )


def misalignment(
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    thresholds: float | Sequence[float],
    n_samples_total: int | None = None,
    *,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Image-text misalignment per threshold, as the study defines it.

    A sample's text concepts are its caption-search hits; its image concepts those with tagger prob >= t.
    Among the samples with >= 1 text concept AND >= 1 image concept (``n_text_and_image``), a sample is
    *misaligned* when the two concept sets are disjoint (``n_misaligned``). The misalignment degree is given
    with both of the study's denominators:

    ``degree_extracted``
        n_misaligned / n_text_and_image: the "extracted dataset size", i.e. only the samples for which both
        sides found a concept (the samples where misalignment can be judged at all). NaN when there are none.
    ``degree_fixed``
        n_misaligned / n_samples_total: the "fixed conservative dataset size", every sample of the corpus;
        a lower bound on the degree, since samples with an empty side count as aligned. ``n_samples_total``
        defaults to the number of records the image search read (its shards' ``records`` stats: every
        sample of every tar, including those whose image was missing or corrupt). NaN when 0.

    Returns DataFrame(threshold float64, n_text_and_image int64, n_misaligned int64, degree_extracted float64,
    degree_fixed float64), one row per threshold; ``attrs["n_samples_total"]`` holds the denominator used.
    """
    ts = check_thresholds(thresholds, stored_floor(image_dir), image_dir)
    cut = np.asarray(ts, dtype=np.float32)
    n, shards = _paired_shards(text_dir, image_dir, allow_failed, progress)
    n_both = np.zeros(len(ts), dtype=np.int64)
    n_aligned = np.zeros(len(ts), dtype=np.int64)
    records = 0
    for pair in shards:
        records += pair.image_records
        text_samples = np.unique(pair.text_sample)
        both_pair = _in_text(pair, n)
        for i, t in enumerate(cut):
            keep = pair.image_prob >= t
            image_samples = np.unique(pair.image_sample[keep])
            n_both[i] += len(np.intersect1d(text_samples, image_samples, assume_unique=True))
            n_aligned[i] += len(np.unique(pair.image_sample[keep & both_pair]))  # share >= 1 concept
    total = records if n_samples_total is None else int(n_samples_total)
    n_mis = n_both - n_aligned
    with np.errstate(divide="ignore", invalid="ignore"):
        extracted = np.where(n_both > 0, n_mis / np.maximum(n_both, 1), np.nan)
        fixed = np.full(len(ts), np.nan) if total <= 0 else n_mis / total
    out = pd.DataFrame(
        {
            "threshold": np.asarray(ts, dtype=np.float64),
            "n_text_and_image": n_both,
            "n_misaligned": n_mis,
            "degree_extracted": extracted.astype(np.float64),
            "degree_fixed": np.asarray(fixed, dtype=np.float64),
        }
    )
    out.attrs["n_samples_total"] = total
    return out


def _concept_names(concepts: Any, n: int) -> pd.DataFrame:
    """(concept_id int32, concept str) from a list of names (id = position) or a concept table."""
    if isinstance(concepts, pd.DataFrame):
        name_col = "concept" if "concept" in concepts.columns else "name"
        if "concept_id" not in concepts.columns or name_col not in concepts.columns:
            raise ValueError("concepts: a table needs 'concept_id' and 'name' (or 'concept') columns")
        table = concepts[["concept_id", name_col]].rename(columns={name_col: "concept"})
    else:
        names = list(concepts)
        table = pd.DataFrame({"concept_id": np.arange(len(names)), "concept": names})
    table = table.astype({"concept_id": "int32", "concept": str})
    if len(table) != n or sorted(table["concept_id"].tolist()) != list(range(n)):
        raise ValueError(f"concepts: expected concept ids 0..{n - 1} (the runs' concept count), got {len(table)} rows")
    return table


def frequency_table(
    corpus: str,
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    thresholds: float | Sequence[float],
    concepts: Sequence[str] | pd.DataFrame,
    *,
    calibrated: Sequence[float] | np.ndarray | None = None,
    allow_failed: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Tidy counts of one corpus: DataFrame(corpus, concept_id int32, concept, method, threshold, count int64).

    ``method`` is ``text`` (caption hits; threshold NaN), ``image`` (tagger prob >= threshold) or ``matched``
    (both); one row per concept, method and threshold. ``concepts``: the names in concept-id order, or a
    table with ``concept_id`` and ``name``/``concept``.

    With ``calibrated`` (one threshold per concept id, fitted on an audit split) also ``image_calibrated`` and
    ``matched_calibrated`` rows (``calibrated_counts``), whose ``threshold`` is the concept's own. Readers that
    select ``image`` / ``matched`` at a global threshold see the same rows as without them.
    """
    n = int(read_run(image_dir).get("n_concepts") or 0)
    names = _concept_names(concepts, n)
    text = text_counts(text_dir, allow_failed=allow_failed)
    text = text.assign(threshold=np.nan, method="text")
    image = image_counts(image_dir, thresholds, allow_failed=allow_failed).assign(method="image")
    matched = matched_counts(text_dir, image_dir, thresholds, allow_failed=allow_failed, progress=progress)
    matched = matched.assign(method="matched")
    parts = [text, image, matched]
    if calibrated is not None:
        parts.append(calibrated_counts(text_dir, image_dir, calibrated, allow_failed=allow_failed, progress=progress))
    table = pd.concat(parts, ignore_index=True)
    table = table.merge(names, on="concept_id", how="left", validate="many_to_one")
    table.insert(0, "corpus", corpus)
    table["method"] = pd.Categorical(table["method"], categories=[*METHODS, *CALIBRATED_METHODS])
    table = table.sort_values(["method", "threshold", "concept_id"], na_position="first", kind="stable")
    table["method"] = table["method"].astype(str)
    return table.astype({"concept_id": "int32", "count": "int64", "threshold": "float64"})[
        ["corpus", "concept_id", "concept", "method", "threshold", "count"]
    ].reset_index(drop=True)


__all__ = [
    "CALIBRATED_METHODS",
    "METHODS",
    "calibrated_counts",
    "frequency_table",
    "matched_counts",
    "misalignment",
    "paired_shards",
    "per_concept_cuts",
]
