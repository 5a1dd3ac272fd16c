"""Fits on audit-corrected counts beside raw and true ones, in the synthetic world (issue 13, item 5).

Why: a tagger's misses and false positives bias the matched (and image) counts, hence the slope of accuracy
against log frequency. ``helpers.analysis.correction.corrected_fit`` corrects each concept's count by the
precision and recall an audit split measured (count x P / R, Rogan & Gladen 1978) and bootstraps the audit.
The world knows the true counts, so it can say whether the corrected slope is nearer the true-count slope
than the raw one. This module lines the three fits up, one row per (tagger, count type, score).

The rates must be those of the estimator whose counts are corrected: for matched counts, the decisions
"tagged AND found in the caption" against "shown AND mentioned" (``helpers.synthetic.corrected_report`` does so
where its audit has captions). The tagger's image rates alone are no substitute: the caption side filters out
most of a tagger's false positives, so image precision understates matched precision.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa

from helpers.analysis.correction import corrected_fit
from helpers.analysis.loglinear import ZeroRule, concept_statistics

#: image / matched counts at the global threshold, and at per-concept (audit-fitted) thresholds
COUNT_TYPES = ["image", "matched", "image_calibrated", "matched_calibrated"]

CORRECTED_FITS = pa.DataFrameSchema(
    {
        "image_corpus": pa.Column(str),
        "audit": pa.Column(str),
        "count_type": pa.Column(str, pa.Check.isin(COUNT_TYPES)),
        "score": pa.Column(str),
        "n_concepts": pa.Column("int64", pa.Check.ge(2)),
        "raw_slope": pa.Column(float, nullable=True),
        "corrected_slope": pa.Column(float, nullable=True),
        "corrected_slope_ci_low": pa.Column(float, nullable=True),
        "corrected_slope_ci_high": pa.Column(float, nullable=True),
        "true_slope": pa.Column(float, nullable=True),
        "raw_pearson_r": pa.Column(float, nullable=True),
        "corrected_pearson_r": pa.Column(float, nullable=True),
        "true_pearson_r": pa.Column(float, nullable=True),
        "audit_samples": pa.Column("int64", pa.Check.ge(1)),
        "corrected_closer": pa.Column(bool),
    },
    unique=["image_corpus", "audit", "count_type", "score"],
    strict=True,
    ordered=True,
    name="synthetic_corrected_fits",
)


def corrected_fit_row(
    image_corpus: str,
    count_type: str,
    score: str,
    raw_counts: np.ndarray,
    true_counts: np.ndarray,
    scores: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    audit: str = "audit",
    zero_rule: ZeroRule = "to_one",
    prior: str = "jeffreys",
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """One CORRECTED_FITS row: concept-level OLS slope (score units per decade) and Pearson r on raw,
    audit-corrected and true counts.

    Args:
        image_corpus, count_type, score: labels of the row (count_type one of ``COUNT_TYPES``).
        raw_counts, true_counts, scores: (C,) per concept, one concept order.
        predicted, truth: (N, C) bool: the tagger's decisions (at the counts' threshold) and the labels on the
            audit split, columns in the same concept order.
        audit: the row's label of the audit split (where the audit samples come from).
        zero_rule, prior, resamples, seed: as ``analysis.correction.corrected_fit``.

    ``corrected_closer`` is True when the corrected slope is strictly nearer the true-count slope than the raw
    one (False when any of the three is NaN).

    Raises:
        ValueError: shapes disagree, or fewer than 2 concepts.
    """
    raw_counts, true_counts, scores = (np.asarray(a, dtype=float) for a in (raw_counts, true_counts, scores))
    if not (raw_counts.shape == true_counts.shape == scores.shape) or raw_counts.ndim != 1 or len(raw_counts) < 2:
        raise ValueError(
            f"raw counts {raw_counts.shape}, true counts {true_counts.shape} and scores {scores.shape} must be "
            "the same (C,) with C >= 2"
        )
    fit = corrected_fit(
        raw_counts, scores, predicted, truth, zero_rule=zero_rule, prior=prior, resamples=resamples, seed=seed
    )
    true = concept_statistics(true_counts, scores, zero_rule=zero_rule, resamples=0)
    closer = bool(abs(fit.corrected_slope - true.slope_per_decade) < abs(fit.raw_slope - true.slope_per_decade))
    return {
        "image_corpus": image_corpus,
        "audit": audit,
        "count_type": count_type,
        "score": score,
        "n_concepts": int(fit.n_concepts),
        "raw_slope": fit.raw_slope,
        "corrected_slope": fit.corrected_slope,
        "corrected_slope_ci_low": fit.corrected_slope_ci_low,
        "corrected_slope_ci_high": fit.corrected_slope_ci_high,
        "true_slope": float(true.slope_per_decade),
        "raw_pearson_r": fit.raw_pearson_r,
        "corrected_pearson_r": fit.corrected_pearson_r,
        "true_pearson_r": float(true.pearson_r),
        "audit_samples": int(fit.audit_samples),
        "corrected_closer": closer,
    }


def corrected_fits_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of ``corrected_fit_row`` as a schema-checked table (CORRECTED_FITS); no rows: an empty table with
    its columns."""
    if not rows:
        return pd.DataFrame(columns=list(CORRECTED_FITS.columns))
    table = pd.DataFrame(rows, columns=list(CORRECTED_FITS.columns)).astype(
        {"n_concepts": "int64", "audit_samples": "int64", "corrected_closer": bool}
    )
    floats = [c for c in CORRECTED_FITS.columns if "slope" in c or "pearson" in c]
    table[floats] = table[floats].astype("float64")
    return CORRECTED_FITS.validate(table, lazy=True)


__all__ = ["COUNT_TYPES", "CORRECTED_FITS", "corrected_fit_row", "corrected_fits_table"]
