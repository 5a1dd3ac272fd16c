"""helpers.synthetic.corrected: raw, audit-corrected and true-count fits side by side.

A tagger that misses most instances of the frequent concepts flattens the slope of accuracy on log count; the
audit (drawn with the same per-concept recall) lets the correction restore it, nearer the true-count slope.
"""

from __future__ import annotations

import numpy as np
import pandera.pandas as pa
import pytest

from helpers.synthetic.corrected import CORRECTED_FITS, corrected_fit_row, corrected_fits_table


def world(seed: int = 0):
    rng = np.random.default_rng(seed)
    c = 30
    true = np.round(10 ** rng.uniform(1, 4, c))
    scores = 20 * np.log10(true) + rng.normal(0, 2, c)
    recall = np.where(np.arange(c) % 2 == 0, 0.3, 0.95)  # half the concepts mostly missed
    raw = np.round(true * recall)
    truth = rng.random((600, c)) < 0.3
    predicted = truth & (rng.random((600, c)) < recall)
    return raw, true, scores, predicted, truth


def test_the_corrected_slope_is_nearer_the_true_one():
    raw, true, scores, predicted, truth = world()
    row = corrected_fit_row("t", "matched", "acc", raw, true, scores, predicted, truth, resamples=200)
    assert abs(row["corrected_slope"] - row["true_slope"]) < abs(row["raw_slope"] - row["true_slope"])
    assert row["corrected_pearson_r"] > row["raw_pearson_r"]
    assert row["corrected_slope_ci_low"] <= row["corrected_slope"] <= row["corrected_slope_ci_high"]
    table = corrected_fits_table([row, {**row, "count_type": "image"}])
    assert list(table.columns) == list(CORRECTED_FITS.columns) and len(table) == 2


def test_bad_input_is_refused():
    raw, true, scores, predicted, truth = world()
    with pytest.raises(ValueError, match="same"):
        corrected_fit_row("t", "image", "acc", raw[:-1], true, scores, predicted, truth)
    with pytest.raises(ValueError):
        corrected_fit_row("t", "image", "acc", raw, true, scores, predicted[:, :-1], truth[:, :-1])
    row = corrected_fit_row("t", "image", "acc", raw, true, scores, predicted, truth, resamples=0)
    with pytest.raises(pa.errors.SchemaErrors, match="count_type"):
        corrected_fits_table([{**row, "count_type": "text"}])
