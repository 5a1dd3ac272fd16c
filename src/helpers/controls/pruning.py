"""Counts recomputed on the samples a similarity threshold keeps, from the stored hits of both searches.

The study's control (Udandarao et al. 2024, Sec. 3) removes every pretraining sample whose image has cosine
similarity above a threshold to some downstream test image, and refits accuracy against log frequency. No
caption search or tagging is redone here: the caption search's per-shard hits and the image search's
per-shard scores are re-read (``helpers.images.frequencies.paired_shards``, exactly as the unpruned counts
read them) and a sample counts only when it is kept.

A sample is *removed* at threshold ``t`` when ``max_sim > t``. Samples without an embedding (their image was
missing or undecodable, so the image side could not tag them either) are kept: nothing says they resemble a
test image. ``t = 1.0`` removes nothing beyond exact float ties (a cosine cannot exceed 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.controls.embed import check_threshold
from helpers.controls.similarity import shard_similarity
from helpers.images.frequencies import paired_shards
from helpers.images.search import check_thresholds, stored_floor
from helpers.shards import check_complete

COUNT_COLUMNS = ["similarity_threshold", "concept_id", "method", "threshold", "count"]


def check_similarity_thresholds(thresholds: float | Sequence[float], key: str) -> list[float]:
    """Sorted distinct thresholds, each in [-1, 1] (``ConfigError`` naming ``key`` otherwise)."""
    values = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
    if not values:
        raise ValueError(f"{key}: no threshold given")
    return sorted({check_threshold(v, key) for v in values})


def _removed(sim_dir: Path, records: dict[int, dict], shard: int, cuts: list[float]) -> list[np.ndarray]:
    """Per similarity threshold: the sorted sample ids of the shard it removes."""
    record = records.get(shard)
    if record is None:
        return [np.zeros(0, np.int64) for _ in cuts]
    table = shard_similarity(sim_dir, record)
    ids, sim = table["sample_id"].to_numpy(), table["max_sim"].to_numpy()
    return [np.sort(ids[sim > np.float32(t)]) for t in cuts]


def pruned_counts(
    sim_dir: str | os.PathLike,
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    similarity_thresholds: float | Sequence[float],
    tag_thresholds: float | Sequence[float],
    *,
    allow_failed: bool = False,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Text, image and matched counts per concept on the samples each similarity threshold keeps.

    ``tag_thresholds``: the image side's probability thresholds (as ``frequencies.matched_counts``).
    Returns ``(counts, summary)``: counts = DataFrame(similarity_threshold float64, concept_id int32, method
    str in text/image/matched, threshold float64 (NaN for text), count int64); summary =
    DataFrame(similarity_threshold, n_embedded, n_removed, fraction_removed), one row per threshold.
    All three runs must cover the same shards (their sample ids are joined); ``IncompleteRunError`` if one
    is not complete.
    """
    cuts = check_similarity_thresholds(similarity_thresholds, "controls.similarity.thresholds")
    tag_values = check_thresholds(tag_thresholds, stored_floor(image_dir), image_dir)
    tags = np.asarray(tag_values, dtype=np.float32)  # compared in float32, as image_counts does
    sim_dir = Path(sim_dir)
    _, sim_records = check_complete(sim_dir, allow_failed)
    records = {r["shard"]: r for r in sim_records}
    n, shards = paired_shards(text_dir, image_dir, allow_failed=allow_failed, progress=progress)
    text = np.zeros((len(cuts), n), np.int64)
    image = np.zeros((len(cuts), len(tags), n), np.int64)
    matched = np.zeros((len(cuts), len(tags), n), np.int64)
    n_embedded = 0
    n_removed = np.zeros(len(cuts), np.int64)
    seen = set()
    for pair in shards:
        seen.add(pair.index)
        removed = _removed(sim_dir, records, pair.index, cuts)
        if pair.index in records:
            n_embedded += int(records[pair.index]["files"].get("similarity", {}).get("rows", 0))
        # one int64 per (sample, concept) of the shard: position * n + concept
        key_t = (pair.text_sample & np.int64(0xFFFFFFFF)) * np.int64(n) + pair.text_concept
        key_i = (pair.image_sample & np.int64(0xFFFFFFFF)) * np.int64(n) + pair.image_concept
        in_text = np.isin(key_i, key_t)
        for i, gone in enumerate(removed):
            n_removed[i] += len(gone)
            keep_t = ~np.isin(pair.text_sample, gone, assume_unique=False)
            text[i] += np.bincount(pair.text_concept[keep_t], minlength=n)[:n]
            keep_i = ~np.isin(pair.image_sample, gone)
            for j, t in enumerate(tags):
                hit = keep_i & (pair.image_prob >= t)
                image[i, j] += np.bincount(pair.image_concept[hit], minlength=n)[:n]
                matched[i, j] += np.bincount(pair.image_concept[hit & in_text], minlength=n)[:n]
    missing = sorted(set(records) - seen)
    if missing:
        raise ValueError(f"{sim_dir}: similarity shards {missing[:5]} are not in the caption/image runs")
    frames = []
    concept = np.arange(n, dtype=np.int32)
    for i, cut in enumerate(cuts):
        frames.append(pd.DataFrame({"similarity_threshold": cut, "concept_id": concept, "method": "text",
                                    "threshold": np.nan, "count": text[i]}))  # fmt: skip
        for j in range(len(tags)):
            for method, values in (("image", image[i, j]), ("matched", matched[i, j])):
                frames.append(pd.DataFrame({"similarity_threshold": cut, "concept_id": concept, "method": method,
                                            "threshold": tag_values[j], "count": values}))  # fmt: skip
    counts = pd.concat(frames, ignore_index=True).astype(
        {"similarity_threshold": "float64", "concept_id": "int32", "threshold": "float64", "count": "int64"}
    )[COUNT_COLUMNS]
    summary = pd.DataFrame(
        {
            "similarity_threshold": np.asarray(cuts, dtype=np.float64),
            "n_embedded": n_embedded,
            "n_removed": n_removed,
            "fraction_removed": n_removed / max(n_embedded, 1),
        }
    )
    return counts, summary


__all__ = ["COUNT_COLUMNS", "check_similarity_thresholds", "pruned_counts"]
