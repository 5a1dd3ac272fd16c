"""The sample-similarity control as one stage: embed, search, recount, refit (``controls.similarity``).

Udandarao et al. 2024, Sec. 3 ("controlling for sample similarity"): remove every pretraining sample whose
image is too similar to a downstream test image and check that the log-linear trend of accuracy against
concept frequency survives. Here, for any ``image_corpora`` entry of params.yaml:

1. the embedder is built (an open_clip model is loaded before any shard runs), the corpus's images are
   embedded shard by shard (resumable), the test sets' images are embedded;
2. each sample's max cosine similarity to any test image is searched per shard (``similarity.similarity_run``);
3. at each threshold the text/image/matched counts are recomputed on the kept samples from the stored hits of
   the caption and image searches (``pruning.pruned_counts``; no search or tagging is redone);
4. the per-concept scores of ``model`` are refit against each threshold's counts
   (``helpers.analysis.fits.fit_rows``: the study's binned r and the concept-level r and slope);
5. with a planted-leak truth table (the synthetic world's ``truth/leaks.parquet``), the share of planted
   near-duplicates found and of clean samples dropped at the default threshold.

Outputs (folders given by the caller): ``embeddings/`` and ``max_similarity/`` (shard runs), and the tables of
:class:`SimilarityControlResult`. Retraining on the pruned corpus is :mod:`helpers.controls.retrain`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.parquet as pq

from helpers import paths
from helpers.analysis import fits as fits_lib
from helpers.analysis.studies.join import evaluation_scores
from helpers.controls.embed import downstream_embeddings, embed_corpus, make_embedder
from helpers.controls.pruning import pruned_counts
from helpers.controls.similarity import SearchSettings, read_similarity, similarity_run
from helpers.evaluation.pair import EVALUATIONS_FILE, resolve_spec_paths
from helpers.evaluation.writers import read_evaluations
from helpers.images.corpora import frequencies_path
from helpers.images.search import image_search_dir
from helpers.images.sources import ImageSource
from helpers.params import ConfigError, validate
from helpers.params.controls import SimilarityControl
from helpers.text.corpora import text_search_dir

PREFIX = "controls.similarity"
#: the pruned counts as written (``pruned_counts.parquet``)
PRUNED_COUNTS = pa.DataFrameSchema(
    {
        "similarity_threshold": pa.Column("float64", pa.Check.in_range(-1.0, 1.0)),
        "concept_id": pa.Column("int32", pa.Check.ge(0)),
        "concept": pa.Column(str),
        "method": pa.Column(str, pa.Check.isin(["text", "image", "matched"])),
        "threshold": pa.Column("float64", nullable=True),
        "count": pa.Column("int64", pa.Check.ge(0)),
    },
    strict=True,
    coerce=False,
)
#: the fit table's key columns beside ``fits.FIT_COLUMNS``' statistics
FIT_KEYS = ["similarity_threshold", "count_type", "dataset", "prompt", "zero_rule"]


@dataclass
class SimilarityControlResult:
    """What the similarity control produced (every table a DataFrame; see :func:`run_similarity_control`)."""

    counts: pd.DataFrame  # similarity_threshold, concept_id, concept, method, threshold, count
    summary: pd.DataFrame  # similarity_threshold, n_embedded, n_removed, fraction_removed
    max_similarity: pd.DataFrame  # sample_id, max_sim, nearest_dataset
    fits: pd.DataFrame  # FIT_KEYS + n_rows, binned_r, concept_pearson_r, slope_per_decade, ...
    leak_recall: pd.DataFrame  # similarity_threshold, n_leaked, leaked_found, recall, clean_dropped, ...
    default_threshold: float
    removed_at_default: np.ndarray  # sample ids removed at the default threshold
    report: dict = field(default_factory=dict)


def _entry(params: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    node: Any = params
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        raise ConfigError(f"{'.'.join(keys)}: missing from params.yaml")
    return node


def count_type(method: str, threshold: float) -> str:
    """``text``, or ``image@0.7`` / ``matched@0.7`` (the tagger threshold)."""
    return method if method == "text" or not np.isfinite(threshold) else f"{method}@{threshold:g}"


def model_scores(model: str, datasets: list[str], evaluations_dir: Path) -> pd.DataFrame:
    """Per-concept zero-shot scores (dataset, prompt, concept, score in %) of ``model`` on ``datasets``, read
    from the ``evaluate`` stage's ``<model>/<dataset>/evaluations.parquet``; a missing file names the stage."""
    parts = []
    for dataset in datasets:
        path = evaluations_dir / model / dataset / EVALUATIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no evaluation of {model} on {dataset}; run the evaluate stage first")
        scores = evaluation_scores(read_evaluations(path))
        parts.append(scores[scores["task"] == "zero_shot"])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def refit(
    counts: pd.DataFrame, scores: pd.DataFrame, *, n_edges: int = 8, resamples: int = 200, seed: int = 0
) -> pd.DataFrame:
    """The study's fits (``fits.fit_rows``) of ``scores`` against every threshold's counts.

    ``counts``: :func:`named_counts` rows; ``scores``: (dataset, prompt, concept, score). Concepts are joined by
    name; one fit per (similarity threshold, count type, dataset, prompt, zero rule). Columns ``FIT_KEYS`` and
    the fit-table statistics.
    """
    records = []
    counts = counts.assign(count_type=[count_type(m, t) for m, t in zip(counts["method"], counts["threshold"])])
    for (cut, kind), group in counts.groupby(["similarity_threshold", "count_type"], sort=True):
        by_name = group.set_index("concept")["count"]
        for (dataset, prompt), sc in scores.groupby(["dataset", "prompt"], sort=True):
            joined = sc[sc["concept"].isin(by_name.index)]
            rows = fits_lib.Rows(data=pd.DataFrame({"dataset": dataset, "concept": joined["concept"].to_numpy(),
                                                    "count": by_name.loc[joined["concept"]].to_numpy(),
                                                    "score": joined["score"].to_numpy()}))  # fmt: skip
            for record in fits_lib.fit_rows(
                rows, n_edges=n_edges, plotted=(None, None), resamples=resamples, seed=seed
            ):
                records.append({"similarity_threshold": cut, "count_type": kind, "dataset": dataset, "prompt": prompt,
                                **record})  # fmt: skip
    return pd.DataFrame(records)


def leak_recall(sim: pd.DataFrame, leaks_path: str | os.PathLike, cuts: list[float]) -> pd.DataFrame:
    """Per threshold: planted near-duplicates found (removed) and clean samples dropped.

    ``sim``: (sample_id, max_sim) of every embedded sample; ``leaks_path``: a table with the planted
    ``sample_id`` column (``helpers.controls.leak``). Shares are of the embedded samples.
    """
    leaked = pq.read_table(leaks_path, columns=["sample_id"])["sample_id"].to_numpy()
    is_leak = np.isin(sim["sample_id"].to_numpy(), leaked)
    values = sim["max_sim"].to_numpy()
    rows = []
    for cut in cuts:
        removed = values > np.float32(cut)
        found, n_leak = int((removed & is_leak).sum()), int(is_leak.sum())
        dropped, n_clean = int((removed & ~is_leak).sum()), int((~is_leak).sum())
        rows.append({"similarity_threshold": cut, "n_leaked": n_leak, "leaked_found": found,
                     "recall": found / max(n_leak, 1), "n_clean": n_clean, "clean_dropped": dropped,
                     "clean_dropped_fraction": dropped / max(n_clean, 1)})  # fmt: skip
    return pd.DataFrame(rows)


def run_similarity_control(
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> SimilarityControlResult:
    """Steps 1-5 of the module docstring for params ``controls.similarity`` (the whole params mapping given).

    ``out_dir`` receives ``embeddings/`` and ``max_similarity/`` (resumable shard runs; a rerun with the same
    inputs reuses them). Paths in params are resolved against ``base`` (default: the work folder). Raises
    ``ConfigError`` naming the key for bad params (an open_clip embedder that cannot be loaded included),
    before any shard runs; ``FileNotFoundError`` naming the stage whose output is missing.
    """
    base = Path(base) if base is not None else paths.workdir()
    spec = validate(SimilarityControl, _entry(params, "controls", "similarity"), PREFIX)
    corpus = _entry(params, "image_corpora", spec.corpus)
    models = {
        k: resolve_spec_paths(v, "model", base) for k, v in (_entry(params, "evaluation").get("models") or {}).items()
    }
    datasets = {}
    for name in spec.datasets:
        datasets[name] = resolve_spec_paths(_entry(params, "evaluation", "datasets", name), "dataset", base)
    embedder = make_embedder(spec.embedder, models, device, key=f"{PREFIX}.embedder")  # fails before any shard
    default = spec.default_threshold if spec.default_threshold is not None else embedder.default_threshold
    cuts = sorted({*spec.thresholds, default})
    images = dict(corpus.get("images") or {})
    images["paths"] = paths.resolve(images.get("paths"), base)
    source = ImageSource.from_config(images)
    text_dir, image_dir = text_search_dir(corpus.get("corpus", spec.corpus)), image_search_dir(spec.corpus)
    for path, stage in ((text_dir, f"text_search@{corpus.get('corpus', spec.corpus)}"),
                        (image_dir, f"image_search@{spec.corpus}")):  # fmt: skip
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: the stored hits of {stage} are missing; run that stage first")
    out = Path(out_dir)
    embed_corpus(source, embedder, out / "embeddings", batch_size=spec.batch_size, progress=progress)
    test, test_table = downstream_embeddings(embedder, datasets, batch_size=spec.batch_size)
    settings = SearchSettings.from_config(spec.search)
    similarity_run(out / "embeddings", test, out / "max_similarity", settings=settings, progress=progress)
    sim = read_similarity(out / "max_similarity").to_pandas()
    names = np.asarray(test_table["dataset"].to_pylist(), dtype=object)
    sim["nearest_dataset"] = names[sim["argmax_test_id"].to_numpy()] if len(sim) else []
    counts, summary = pruned_counts(out / "max_similarity", text_dir, image_dir, cuts, spec.tag_thresholds,
                                    progress=progress)  # fmt: skip
    counts = named_counts(counts, frequencies_path(spec.corpus))
    fits = pd.DataFrame()
    if spec.model is not None:
        scores = model_scores(spec.model, spec.datasets, paths.processed_dir() / "evaluations")
        fits = refit(counts, scores)
    leaks = leak_recall(sim, paths.resolve(spec.leaks, base), cuts) if spec.leaks else pd.DataFrame()
    removed = np.sort(sim.loc[sim["max_sim"] > np.float32(default), "sample_id"].to_numpy())
    report = {"method": settings.resolved(len(test)), "n_test": len(test), "n_embedded": len(sim),
              "default_threshold": default, "embedder": spec.embedder.kind}  # fmt: skip
    return SimilarityControlResult(counts, summary, sim[["sample_id", "max_sim", "nearest_dataset"]], fits, leaks,
                                   default, removed, report)  # fmt: skip


def write_result(result: SimilarityControlResult, data_dir: str | os.PathLike, tables_dir: str | os.PathLike) -> dict:
    """Write the counts (``data_dir/pruned_counts.parquet``, schema ``PRUNED_COUNTS``) and the removed ids
    (``data_dir/removed.parquet``), and the summary, fits and leak recall as CSV under ``tables_dir``."""
    data_dir, tables_dir = Path(data_dir), Path(tables_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    counts = PRUNED_COUNTS.validate(result.counts[list(PRUNED_COUNTS.columns)], lazy=True)
    counts.to_parquet(data_dir / "pruned_counts.parquet", index=False)
    pd.DataFrame({"sample_id": result.removed_at_default}).to_parquet(data_dir / "removed.parquet", index=False)
    written = {"counts": data_dir / "pruned_counts.parquet", "removed": data_dir / "removed.parquet"}
    for name in ("summary", "fits", "leak_recall"):
        table = getattr(result, name)
        if not table.empty:
            table.to_csv(tables_dir / f"{name}.csv", index=False)
            written[name] = tables_dir / f"{name}.csv"
    return written


def named_counts(counts: pd.DataFrame, frequencies: str | os.PathLike) -> pd.DataFrame:
    """``pruning.pruned_counts`` rows with the concept's name (from the unpruned frequency table)."""
    path = Path(frequencies)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the corpus's frequency table is missing; run its image_search stage")
    table = pd.read_parquet(path, columns=["concept_id", "concept"]).drop_duplicates("concept_id")
    out = counts.merge(table, on="concept_id", how="left", validate="many_to_one")
    if out["concept"].isna().any():
        raise ValueError(f"{path}: concept ids {sorted(int(c) for c in out.loc[out['concept'].isna(), 'concept_id'].unique())[:5]} "
                         "are not in the frequency table")  # fmt: skip
    return out


__all__ = [
    "FIT_KEYS", "PRUNED_COUNTS", "SimilarityControlResult", "count_type", "leak_recall", "model_scores", "named_counts", "refit",
    "run_similarity_control", "write_result",
]  # fmt: skip
