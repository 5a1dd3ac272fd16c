"""Tests of helpers.analysis.correction: audit rates, corrected counts, and fits carrying the audit's error."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.analysis.correction import audit_rates, corrected_counts, corrected_fit
from helpers.analysis.loglinear import concept_statistics


def test_audit_rates_by_hand():
    # concept 0: 2 TP, 1 FP, 1 FN; concept 1: never shown nor predicted
    predicted = np.array([[1, 0], [1, 0], [1, 0], [0, 0]], bool)
    truth = np.array([[1, 0], [1, 0], [0, 0], [1, 0]], bool)
    raw = audit_rates(predicted, truth, alpha=0)
    assert raw.loc[0, ["tp", "fp", "fn"]].tolist() == [2, 1, 1]
    assert raw.loc[0, "precision"] == pytest.approx(2 / 3)
    assert raw.loc[0, "recall"] == pytest.approx(2 / 3)
    assert raw["audited"].tolist() == [True, False]
    smoothed = audit_rates(predicted, truth)  # Jeffreys: (tp + .5) / (tp + fp + 1)
    assert smoothed.loc[0, "precision"] == pytest.approx(2.5 / 4)
    assert smoothed.loc[1, ["precision", "recall"]].tolist() == [0.5, 0.5]


def test_unaudited_concept_keeps_its_raw_count():
    rates = audit_rates(np.zeros((3, 2), bool), np.zeros((3, 2), bool))
    out = corrected_counts([10, 20], rates["precision"].to_numpy(), rates["recall"].to_numpy())
    assert out.tolist() == [10.0, 20.0]


def test_corrected_counts_undo_a_known_bias():
    # half the true positives missed, no false positives: raw = true / 2, so the correction doubles it
    assert corrected_counts([50.0], np.array([1.0]), np.array([0.5])).tolist() == [100.0]
    # every prediction right but as many false positives as true ones: precision 0.5 halves the count
    assert corrected_counts([80.0], np.array([0.5]), np.array([1.0])).tolist() == [40.0]


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((2, 3)), np.zeros((2, 2))), "one shape"),
        ((np.zeros(3), np.zeros(3)), "one shape"),
        ((np.zeros((0, 2)), np.zeros((0, 2))), "no audit samples"),
    ],
)
def test_bad_audits_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        audit_rates(*args)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        corrected_counts([-1.0], np.array([1.0]), np.array([1.0]))


def _world(seed: int = 0, n_concepts: int = 60, n_audit: int = 4000):
    """True counts, scores linear in log10(true count), and an estimator whose recall falls for rare concepts
    (so raw counts stretch the frequency axis and bias the slope), with its audit split."""
    rng = np.random.default_rng(seed)
    log_true = rng.uniform(1, 4, n_concepts)
    true = np.round(10**log_true)
    scores = 6.0 * log_true + rng.normal(0, 1.0, n_concepts)
    recall = np.clip(0.25 + 0.2 * (log_true - 1), 0.2, 0.95)  # rare concepts missed more often
    precision = rng.uniform(0.6, 1.0, n_concepts)
    raw = true * recall / precision
    q = 0.1  # audit prevalence of every concept
    truth = rng.random((n_audit, n_concepts)) < q
    hit = rng.random((n_audit, n_concepts)) < recall
    fp_rate = q * recall * (1 - precision) / (precision * (1 - q))
    false_pos = rng.random((n_audit, n_concepts)) < fp_rate
    predicted = (truth & hit) | (~truth & false_pos)
    return true, raw, scores, predicted, truth


def test_corrected_slope_is_closer_to_the_true_slope():
    true, raw, scores, predicted, truth = _world()
    fit = corrected_fit(raw, scores, predicted, truth, resamples=200, seed=1)
    true_slope = concept_statistics(true, scores, resamples=0).slope_per_decade
    assert fit.raw_slope == pytest.approx(concept_statistics(raw, scores, resamples=0).slope_per_decade)
    assert abs(fit.corrected_slope - true_slope) < abs(fit.raw_slope - true_slope)
    assert abs(fit.corrected_slope - true_slope) < 0.5  # the audit recovers the slope closely
    assert fit.corrected_slope_ci_low <= fit.corrected_slope <= fit.corrected_slope_ci_high
    assert fit.corrected_slope_ci_low <= true_slope <= fit.corrected_slope_ci_high
    assert fit.audit_samples == len(predicted) and fit.audited_concepts == len(true)


def test_interval_is_seeded_and_narrows_with_a_larger_audit():
    true, raw, scores, predicted, truth = _world(n_audit=1000)
    a = corrected_fit(raw, scores, predicted, truth, resamples=100, seed=3)
    b = corrected_fit(raw, scores, predicted, truth, resamples=100, seed=3)
    assert a == b
    _, raw2, scores2, predicted2, truth2 = _world(n_audit=8000)
    big = corrected_fit(raw2, scores2, predicted2, truth2, resamples=100, seed=3)
    width = lambda f: f.corrected_slope_ci_high - f.corrected_slope_ci_low
    assert width(big) < width(a)


def test_nan_scores_are_named():
    _, raw, scores, predicted, truth = _world(n_concepts=10, n_audit=100)
    scores[4] = np.nan
    with pytest.raises(ValueError, match=r"concept index\(es\) \[4\]"):
        corrected_fit(raw, scores, predicted, truth, resamples=0)


def test_dropped_zero_rule_leaves_zero_counts_out():
    true, raw, scores, predicted, truth = _world(n_concepts=30, n_audit=500)
    raw = raw.copy()
    raw[:5] = 0
    fit = corrected_fit(raw, scores, predicted, truth, zero_rule="dropped", resamples=50)
    assert fit.n_concepts == 25
    assert np.isfinite(fit.corrected_slope_ci_low)


def test_pooled_prior_gives_an_unseen_concept_the_pooled_rates():
    """prior="pooled": the 2 * alpha pseudo-counts sit at the pooled P and R; an unseen concept takes them."""
    # concept 0: 2 TP, 1 FP, 1 FN; concept 1: 6 TP, 0 FP, 2 FN; concept 2: never shown nor predicted
    predicted = np.zeros((12, 3), bool)
    truth = np.zeros((12, 3), bool)
    predicted[:3, 0], truth[[0, 1, 3], 0] = True, True
    predicted[4:10, 1], truth[4:12, 1] = True, True
    pooled = audit_rates(predicted, truth, prior="pooled")
    p_bar, r_bar = 8 / 9, 8 / 11
    assert pooled.loc[0, "precision"] == pytest.approx((2 + p_bar) / (3 + 1))
    assert pooled.loc[1, "recall"] == pytest.approx((6 + r_bar) / (8 + 1))
    assert pooled.loc[2, ["precision", "recall"]].tolist() == pytest.approx([p_bar, r_bar])
    out = corrected_counts([10, 10, 10], pooled["precision"].to_numpy(), pooled["recall"].to_numpy())
    assert out[2] == pytest.approx(10 * p_bar / r_bar)  # corrected like the pool, not left raw
    with pytest.raises(ValueError, match="prior must be one of"):
        audit_rates(predicted, truth, prior="flat")


def test_pooled_prior_fit_matches_its_rates_and_recovers_the_slope():
    true, raw, scores, predicted, truth = _world()
    fit = corrected_fit(raw, scores, predicted, truth, prior="pooled", resamples=50, seed=1)
    rates = audit_rates(predicted, truth, prior="pooled")
    point = corrected_counts(raw, rates["precision"].to_numpy(), rates["recall"].to_numpy())
    assert fit.corrected_slope == pytest.approx(concept_statistics(point, scores, resamples=0).slope_per_decade)
    true_slope = concept_statistics(true, scores, resamples=0).slope_per_decade
    assert abs(fit.corrected_slope - true_slope) < abs(fit.raw_slope - true_slope)
    assert fit.corrected_slope_ci_low <= fit.corrected_slope <= fit.corrected_slope_ci_high
