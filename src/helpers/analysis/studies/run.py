"""A study's fits and its output files (``reports/tables/studies/<name>/``).

Fits follow the paper (``helpers.analysis.fits.fit_rows``): per (task, model, prompt or metric, count type)
the scores of all the study's datasets of that task are pooled, as the authors pool their 17 classification
datasets, and fitted with the binned r and the concept-level statistics under both zero rules.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import paths, schemas
from helpers.analysis import fits as fits_lib
from helpers.analysis.studies.join import (
    COVERAGE,
    STUDY_POINTS,
    join_counts,
    read_model_scores,
    study_counts,
)
from helpers.analysis.studies.spec import Study

FITS_FILE, POINTS_FILE, COVERAGE_FILE = "fits.csv", "points.parquet", "coverage.csv"
PLOT_POINTS_FILE = "points.csv"  # the points for `dvc plots` (Parquet is not a dvc plots format)


def study_fits(points: pd.DataFrame, study: Study, *, pretrain: str | None = None) -> pd.DataFrame:
    """Fit table (``fits.FIT_COLUMNS``, ``pretrain`` = the study's name) of the study's joined points.

    Per (task, model, prompt, metric, count type) the rows of every dataset of that task are pooled; the
    task's ``n_edges`` and plotted bins and the bootstrap settings come from ``study.statistics``.
    """
    stats = study.statistics
    records = []
    keys = ["task", "model", "prompt", "metric", "count_type"]
    for (task, model, prompt, metric, count_type), group in points.groupby(keys, sort=True):
        rows = fits_lib.Rows(data=group[["dataset", "concept", "count", "score"]].reset_index(drop=True))
        key = {
            "task": task, "pretrain": pretrain or study.name, "model": model, "prompt": prompt,
            "count_type": count_type, "metric": metric,
        }  # fmt: skip
        for record in fits_lib.fit_rows(
            rows, n_edges=stats.n_edges[task], plotted=stats.plotted[task], resamples=stats.resamples, seed=stats.seed
        ):
            records.append({**key, **record})
    table = pd.DataFrame(records, columns=list(fits_lib.FIT_COLUMNS))
    table = table.astype({"n_rows": "int64", "n_bins_plotted": "int64"})
    return schemas.FITS.validate(table, lazy=True)


def run_study(
    study: Study, *, evaluations_dir: str | os.PathLike | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Counts x scores -> (fits, points, coverage) of ``study`` (read from the stages' outputs)."""
    counts = study_counts(study)
    scores = read_model_scores(study, evaluations_dir)
    preferred = counts.loc[counts["count_type"] == "true", "name"] if study.truth is not None else ()
    points, coverage = join_counts(counts, scores, study.count_types(), preferred=preferred)
    return study_fits(points, study), points, coverage


def study_tables_dir(name: str) -> Path:
    """``reports/tables/studies/<name>``."""
    return paths.tables_dir() / "studies" / name


def write_study(name: str, fits: pd.DataFrame, points: pd.DataFrame, coverage: pd.DataFrame) -> Path:
    """Write fits.csv, points.parquet, coverage.csv under ``study_tables_dir(name)`` and the dvc plots CSV
    ``reports/plots/studies/<name>/points.csv`` (log10 frequency with zeros as 1, score); returns the folder."""
    out = paths.ensure(study_tables_dir(name))
    schemas.FITS.validate(fits).to_csv(out / FITS_FILE, index=False)
    schemas.write_table(points, STUDY_POINTS, out / POINTS_FILE)
    COVERAGE.validate(coverage).to_csv(out / COVERAGE_FILE, index=False)
    plot = points.assign(log10_frequency=np.log10(points["count"].clip(lower=1)))
    plot.to_csv(paths.ensure(paths.plots_data_dir() / "studies" / name) / PLOT_POINTS_FILE, index=False)
    return out


def read_study_fits(tables_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every study's fits.csv under ``<tables>/studies/*/`` stacked (``fits.FIT_COLUMNS``), for
    ``log_linear_fits.csv``; an empty table when no study has run."""
    folder = Path(tables_dir) if tables_dir else paths.tables_dir()
    frames = [read_fits_csv(p) for p in sorted(folder.glob(f"studies/*/{FITS_FILE}"))]
    if not frames:
        return pd.DataFrame(columns=list(fits_lib.FIT_COLUMNS))
    return schemas.FITS.validate(pd.concat(frames, ignore_index=True), lazy=True)


def read_fits_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A fits CSV with its name columns read as text: a count type ``true`` stays the name, not a bool."""
    names = ["task", "pretrain", "model", "prompt", "count_type", "metric", "zero_rule"]
    return pd.read_csv(path, dtype=dict.fromkeys(names, str), keep_default_na=False, na_values=[""])


def headline(fits: pd.DataFrame, zero_rule: str = "to_one") -> pd.DataFrame:
    """One row per (study, model, count type): the zero-shot fit of its first prompt set (class prompts when
    fitted), else the first retrieval metric; slope per decade with its CI, concept-level and binned r."""
    rows = fits[fits["zero_rule"] == zero_rule]
    if rows.empty:
        return rows
    order = {"class": 0, "ensemble": 1, "simple": 2}
    rows = rows.assign(
        _task=(rows["task"] != "zero_shot").astype(int), _prompt=rows["prompt"].map(order).fillna(3)
    ).sort_values(["pretrain", "model", "count_type", "_task", "_prompt", "metric"], kind="stable")
    first = rows.groupby(["pretrain", "model", "count_type"], sort=False).head(1)
    columns = ["pretrain", "model", "count_type", "task", "prompt", "metric", "n_rows", "binned_r",
               "concept_pearson_r", "slope_per_decade", "slope_ci_low", "slope_ci_high"]  # fmt: skip
    return first[columns].rename(columns={"pretrain": "study"}).reset_index(drop=True)
