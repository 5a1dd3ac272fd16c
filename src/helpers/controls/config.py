"""The ``controls.similarity`` and ``let_it_wag`` params entries, checked before anything runs.

A thin notebook reads params.yaml, passes the section here, and hands the result to the library
functions (``embed.embed_corpus``, ``similarity.similarity_run``, ``pruning.pruned_counts``,
``wag.select_concepts`` / ``wag.build_let_it_wag``). Every error is a ``ConfigError`` naming the params key.
Thresholds are cosine similarities and must lie in [-1, 1].

``controls.similarity``::

    corpus: <image corpus name>            # whose image shards are embedded (image_corpora.<name>)
    datasets: [<evaluation.datasets name>, ...]
    embedder: {kind: pixel, size: 6} | {kind: open_clip, model: <evaluation.models entry or its key>}
    thresholds: [0.8, 0.9, 0.95, 1.0]      # samples with max_sim > t are removed
    tag_thresholds: [0.7]                  # the image side's probability thresholds for the counts
    search: {method: auto, exact_max_test: 2048, nlist: null, nprobe: 4, memory_bytes: 268435456}
    batch_size: 64

``let_it_wag``::

    counts: <path of a counts table (Parquet)>   where: {column: value, ...}
    n_concepts: 50     min_images: 20     per_class: null (balance to the smallest class)     seed: 0
    images: {root: <folder with one sub-folder per concept>}
    phash_distance: 10
    corpus_dedup: {embeddings: <embedding run folder>, embedder: {...}, threshold: null}   # optional
    outliers: {model: <evaluation.models entry or key>, threshold: 0.2}                   # optional
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helpers.controls.embed import check_threshold
from helpers.controls.similarity import SearchSettings
from helpers.shards import ConfigError

SIMILARITY_KEYS = ("corpus", "datasets", "embedder", "thresholds", "tag_thresholds", "search", "batch_size")
WAG_KEYS = (
    "counts", "where", "n_concepts", "min_images", "per_class", "seed", "images", "phash_distance",
    "corpus_dedup", "outliers",
)  # fmt: skip
EMBEDDER_KINDS = ("pixel", "open_clip")


def _mapping(value: Any, key: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def _unknown(section: Mapping, known: tuple[str, ...], prefix: str) -> None:
    extra = sorted(set(section) - set(known))
    if extra:
        raise ConfigError(f"{prefix}.{extra[0]}: unknown key (known: {', '.join(known)})")


def _int(value: Any, key: str, low: int, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: expected an integer >= {low}, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _thresholds(value: Any, key: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{key}: no threshold given")
    return sorted({check_threshold(v, key) for v in values})


def _embedder(value: Any, key: str) -> dict:
    config = _mapping(value, key)
    if config.get("kind") not in EMBEDDER_KINDS:
        raise ConfigError(f"{key}.kind: expected one of {', '.join(EMBEDDER_KINDS)}, got {config.get('kind')!r}")
    if config["kind"] == "open_clip" and not isinstance(config.get("model"), (Mapping, str)):
        raise ConfigError(f"{key}.model: expected an evaluation.models entry or its key")
    return config


def similarity_params(section: Any) -> dict:
    """The checked ``controls.similarity`` entry (module docstring), defaults filled in."""
    prefix = "controls.similarity"
    section = _mapping(section, prefix)
    _unknown(section, SIMILARITY_KEYS, prefix)
    datasets = section.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise ConfigError(
            f"{prefix}.datasets: expected a non-empty list of evaluation.datasets names, got {datasets!r}"
        )
    tags = section.get("tag_thresholds", [0.7])
    tag_values = tags if isinstance(tags, list) else [tags]
    if not tag_values or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in tag_values
    ):
        raise ConfigError(f"{prefix}.tag_thresholds: expected probabilities in [0, 1], got {tags!r}")
    search = section.get("search") or {}
    return {
        "corpus": _str(section.get("corpus"), f"{prefix}.corpus"),
        "datasets": list(datasets),
        "embedder": _embedder(section.get("embedder", {"kind": "pixel"}), f"{prefix}.embedder"),
        "thresholds": _thresholds(section.get("thresholds"), f"{prefix}.thresholds"),
        "tag_thresholds": [float(t) for t in tag_values],
        "search": SearchSettings.from_config(_mapping(search, f"{prefix}.search")),
        "batch_size": _int(section.get("batch_size", 64), f"{prefix}.batch_size", 1),
    }


def let_it_wag_params(section: Any) -> dict:
    """The checked ``let_it_wag`` entry (module docstring), defaults filled in."""
    prefix = "let_it_wag"
    section = _mapping(section, prefix)
    _unknown(section, WAG_KEYS, prefix)
    images = _mapping(section.get("images"), f"{prefix}.images")
    _unknown(images, ("root",), f"{prefix}.images")
    out = {
        "counts": _str(section.get("counts"), f"{prefix}.counts"),
        "where": _mapping(section.get("where") or {}, f"{prefix}.where"),
        "n_concepts": _int(section.get("n_concepts"), f"{prefix}.n_concepts", 1),
        "min_images": _int(section.get("min_images", 1), f"{prefix}.min_images", 1),
        "per_class": _int(section.get("per_class"), f"{prefix}.per_class", 1, allow_none=True),
        "seed": _int(section.get("seed", 0), f"{prefix}.seed", 0),
        "images": {"root": _str(images.get("root"), f"{prefix}.images.root")},
        "phash_distance": _int(section.get("phash_distance", 10), f"{prefix}.phash_distance", 0),
        "corpus_dedup": None,
        "outliers": None,
    }
    if section.get("corpus_dedup") is not None:
        key = f"{prefix}.corpus_dedup"
        dedup = _mapping(section["corpus_dedup"], key)
        _unknown(dedup, ("embeddings", "embedder", "threshold"), key)
        threshold = dedup.get("threshold")
        out["corpus_dedup"] = {
            "embeddings": _str(dedup.get("embeddings"), f"{key}.embeddings"),
            "embedder": _embedder(dedup.get("embedder"), f"{key}.embedder"),
            "threshold": None if threshold is None else check_threshold(threshold, f"{key}.threshold"),
        }
    if section.get("outliers") is not None:
        key = f"{prefix}.outliers"
        outliers = _mapping(section["outliers"], key)
        _unknown(outliers, ("model", "threshold"), key)
        if not isinstance(outliers.get("model"), (Mapping, str)):
            raise ConfigError(f"{key}.model: expected an evaluation.models entry or its key")
        out["outliers"] = {
            "model": outliers["model"],
            "threshold": check_threshold(outliers.get("threshold"), f"{key}.threshold"),
        }
    return out


__all__ = ["let_it_wag_params", "similarity_params"]
