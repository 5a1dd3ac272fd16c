"""Counts corrected for an estimator's measured error, and fits that carry the audit's uncertainty.

On real data a tagger's false positives inflate a concept's image (or matched) count and its misses deflate it,
so both bias the slope of accuracy against log frequency. Given an *audit split* -- samples for which both the
estimator's decision and the truth are known per concept (the synthetic world's tagger split, or a few hundred
images a user labels) -- per-concept precision ``P_c`` and recall ``R_c`` relate the expected raw count to the
true one::

    E[raw_c] = TP_c / P_c = true_c * R_c / P_c      =>      corrected_c = raw_c * P_c / R_c

This is the classical misclassification correction of an apparent prevalence by the test's error rates
(Rogan & Gladen, 1978, Am. J. Epidemiol. 107(1)), applied per concept; it assumes the audit's error rates hold
on the corpus. Rates are smoothed so that a concept the audit (almost) never saw does not divide by zero, with
``2 * alpha`` pseudo-counts (``prior``):

* ``jeffreys``: half of them on each side (the Jeffreys prior, P = R = 0.5 for an unseen concept, which keeps
  its raw count);
* ``pooled``: all of them at the estimator's pooled rate over every concept of the audit (partial pooling,
  empirical Bayes): an unseen concept takes the pooled P / R, a well-audited one its own. A few hundred audit
  samples hold few positives of the rarest concepts; with ``jeffreys`` those keep their raw counts while the
  frequent ones are corrected, which stretches the counts' spread by itself and can move the slope away from
  the truth (README, synthetic world).

Concepts the audit never saw are flagged (``audited`` is False).

The audit's own uncertainty is propagated by bootstrap over audit *samples* (rows): each resample re-estimates
every P_c and R_c, corrects the counts, and refits the concept-level OLS slope and Pearson r
(``helpers.analysis.loglinear``'s definitions: log10 frequency, zero counts mapped to 1 or dropped), giving a
percentile 95% interval for the corrected slope and r. (Issue: "fits that carry count error".)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.analysis.loglinear import ZeroRule, concept_statistics, log10_frequency

DEFAULT_ALPHA = 0.5  # Jeffreys prior pseudo-counts
PRIORS = ("jeffreys", "pooled")


def _smoothed(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, alpha: float, prior: str
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed (precision, recall) of (..., C) counts; ``pooled`` pools over the last (concept) axis."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if prior == "pooled":
            total_tp = tp.sum(axis=-1, keepdims=True)
            p_bar = np.where(
                total_tp + fp.sum(axis=-1, keepdims=True) > 0,
                total_tp / (total_tp + fp.sum(axis=-1, keepdims=True)),
                0.5,
            )
            r_bar = np.where(
                total_tp + fn.sum(axis=-1, keepdims=True) > 0,
                total_tp / (total_tp + fn.sum(axis=-1, keepdims=True)),
                0.5,
            )
            precision = (tp + 2 * alpha * p_bar) / (tp + fp + 2 * alpha)
            recall = (tp + 2 * alpha * r_bar) / (tp + fn + 2 * alpha)
        else:
            precision = (tp + alpha) / (tp + fp + 2 * alpha)
            recall = (tp + alpha) / (tp + fn + 2 * alpha)
    return precision, recall


def _check_audit(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise ValueError(
            f"audit: predicted {predicted.shape} and truth {truth.shape} must be (samples, concepts) arrays of one shape"
        )
    if len(predicted) == 0:
        raise ValueError("audit: no audit samples (need at least one labelled sample)")
    return predicted.astype(bool), truth.astype(bool)


def audit_rates(
    predicted: np.ndarray, truth: np.ndarray, alpha: float = DEFAULT_ALPHA, prior: str = "jeffreys"
) -> pd.DataFrame:
    """Per-concept precision and recall of an estimator on an audit split.

    Args:
        predicted: (N, C) bool, the estimator's decision per audit sample and concept (e.g. prob >= threshold).
        truth: (N, C) bool, whether the sample truly shows the concept.
        alpha: pseudo-counts added to each side of both ratios (Jeffreys prior 0.5; 0 for the raw ratios).
        prior: ``jeffreys`` or ``pooled`` (the ``2 * alpha`` pseudo-counts at the pooled rates; module docstring).

    Returns:
        One row per concept index ``c``: tp, fp, fn, precision, recall (smoothed), audited (the audit had a true
        or predicted positive of that concept).

    Raises:
        ValueError: shapes differ, are not 2-D, or there are no samples; ``alpha`` < 0; an unknown ``prior``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    predicted, truth = _check_audit(predicted, truth)
    tp = (predicted & truth).sum(axis=0)
    fp = (predicted & ~truth).sum(axis=0)
    fn = (~predicted & truth).sum(axis=0)
    precision, recall = _smoothed(tp, fp, fn, alpha, prior)
    return pd.DataFrame(
        {
            "concept": np.arange(predicted.shape[1]),
            "tp": tp.astype(np.int64),
            "fp": fp.astype(np.int64),
            "fn": fn.astype(np.int64),
            "precision": precision,
            "recall": recall,
            "audited": (tp + fp + fn) > 0,
        }
    )


def corrected_counts(counts: Sequence[float] | np.ndarray, precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``counts * precision / recall`` per concept (float64); NaN rates leave the raw count.

    Raises:
        ValueError: lengths differ, or a count or rate is negative.
    """
    counts = np.asarray(counts, dtype=float)
    precision = np.asarray(precision, dtype=float)
    recall = np.asarray(recall, dtype=float)
    if not (counts.shape == precision.shape == recall.shape):
        raise ValueError(f"counts {counts.shape}, precision {precision.shape}, recall {recall.shape} must align")
    if (counts < 0).any() or (precision < 0).any() or (recall < 0).any():
        raise ValueError("counts and rates must be >= 0")
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = precision / recall
    factor = np.where(np.isfinite(factor), factor, 1.0)
    return counts * factor


@dataclass(frozen=True)
class CorrectedFit:
    """Concept-level fits on raw and on corrected counts (slope in score units per decade)."""

    n_concepts: int
    raw_slope: float
    raw_pearson_r: float
    corrected_slope: float
    corrected_pearson_r: float
    corrected_slope_ci_low: float
    corrected_slope_ci_high: float
    corrected_r_ci_low: float
    corrected_r_ci_high: float
    audit_samples: int
    audited_concepts: int
    resamples: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise OLS slope and Pearson r of y on each row of x: x (B, n), y (n,) -> (B,), (B,)."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    sxx = (xc * xc).sum(axis=1)
    sxy = xc @ yc
    syy = float(yc @ yc)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / sxx, sxy / np.sqrt(sxx * syy)


def corrected_fit(
    counts: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    zero_rule: ZeroRule = "to_one",
    alpha: float = DEFAULT_ALPHA,
    prior: str = "jeffreys",
    resamples: int = 1000,
    seed: int = 0,
) -> CorrectedFit:
    """Concept-level slope and r on raw counts and on audit-corrected counts, with the audit's uncertainty.

    Args:
        counts: (C,) raw per-concept counts of the estimator (e.g. matched counts at the tagger's threshold).
        scores: (C,) per-concept performance (e.g. zero-shot accuracy in %), same concept order.
        predicted, truth: (N, C) the estimator's decisions and the truth on the audit split (see ``audit_rates``).
        zero_rule: how zero counts enter log10 (``loglinear.log10_frequency``).
        alpha: smoothing pseudo-counts of the rates.
        prior: how they are placed: ``jeffreys`` or ``pooled`` (``audit_rates``).
        resamples: bootstrap resamples over audit samples (0: no interval).
        seed: seed of the resampling.

    Returns:
        CorrectedFit with the raw fit, the corrected point fit (rates from the whole audit) and percentile 95%
        intervals of the corrected slope and r over audit resamples.

    Raises:
        ValueError: misaligned shapes, NaN counts or scores, or negative counts.
    """
    counts = np.asarray(counts, dtype=float)
    scores = np.asarray(scores, dtype=float)
    predicted, truth = _check_audit(predicted, truth)
    if counts.shape != scores.shape or counts.shape[0] != predicted.shape[1]:
        raise ValueError(
            f"counts {counts.shape} and scores {scores.shape} must have one entry per audit concept ({predicted.shape[1]})"
        )
    bad = np.flatnonzero(~np.isfinite(counts) | ~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"NaN or infinite count or score at concept index(es) {bad[:10].tolist()}")
    raw = concept_statistics(counts, scores, zero_rule=zero_rule, resamples=0)
    rates = audit_rates(predicted, truth, alpha, prior)
    point = corrected_counts(counts, rates["precision"].to_numpy(), rates["recall"].to_numpy())
    fixed = concept_statistics(point, scores, zero_rule=zero_rule, resamples=0)

    nan = float("nan")
    slope_ci = r_ci = (nan, nan)
    if resamples > 0:
        rng = np.random.default_rng(seed)
        n = len(predicted)
        tp_m = (predicted & truth).astype(np.float32)
        fp_m = (predicted & ~truth).astype(np.float32)
        fn_m = (~predicted & truth).astype(np.float32)
        slopes, rs = [], []
        for start in range(0, resamples, 64):  # bounded memory: 64 resamples x N weights at a time
            b = min(64, resamples - start)
            w = np.zeros((b, n), dtype=np.float32)
            for i in range(b):
                w[i] = np.bincount(rng.integers(0, n, size=n), minlength=n)
            tp, fp, fn = w @ tp_m, w @ fp_m, w @ fn_m  # (b, C)
            precision, recall = _smoothed(tp, fp, fn, alpha, prior)
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = precision / recall
            factor = np.where(np.isfinite(factor), factor, 1.0)
            corrected = counts[None, :] * factor
            if zero_rule == "to_one":
                x = np.log10(np.maximum(corrected, 1.0))
                s, r = _ols(x, scores)
            else:  # dropped: concepts kept per resample differ only if a count is 0, which the factor keeps 0
                _, keep = log10_frequency(counts, zero_rule)
                s, r = _ols(np.log10(corrected[:, keep]), scores[keep])
            slopes.append(s)
            rs.append(r)
        slopes_a = np.concatenate(slopes)
        rs_a = np.concatenate(rs)
        ok = np.isfinite(slopes_a) & np.isfinite(rs_a)
        if ok.any():
            slope_ci = tuple(float(v) for v in np.percentile(slopes_a[ok], [2.5, 97.5]))
            r_ci = tuple(float(v) for v in np.percentile(rs_a[ok], [2.5, 97.5]))
    return CorrectedFit(
        n_concepts=raw.n_rows,
        raw_slope=raw.slope_per_decade,
        raw_pearson_r=raw.pearson_r,
        corrected_slope=fixed.slope_per_decade,
        corrected_pearson_r=fixed.pearson_r,
        corrected_slope_ci_low=slope_ci[0],
        corrected_slope_ci_high=slope_ci[1],
        corrected_r_ci_low=r_ci[0],
        corrected_r_ci_high=r_ci[1],
        audit_samples=len(predicted),
        audited_concepts=int(rates["audited"].sum()),
        resamples=resamples,
    )
