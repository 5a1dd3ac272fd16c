"""Issue 12 item 10: fits with missing values refuse NaN rows by name, or drop and count them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import fits, loglinear

RNG = np.random.default_rng(0)
COUNTS = np.round(10 ** RNG.uniform(0, 6, size=60))
SCORES = np.clip(0.1 * np.log10(COUNTS) + RNG.normal(0, 0.05, size=60), 0, 1)


def _with(values, index, value):
    out = np.array(values, dtype=float)
    out[index] = value
    return out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("column", ["counts", "scores"])
def test_binned_and_concept_statistics_refuse_by_row(bad, column):
    counts, scores = COUNTS, SCORES
    if column == "counts":
        counts = _with(counts, [3, 17], bad)
    else:
        scores = _with(scores, [3, 17], bad)
    what = "count" if column == "counts" else "score"
    with pytest.raises(ValueError, match=rf"2 of 60 rows .*row 3 \({what} -?(nan|inf)\), row 17 .*missing='drop'"):
        loglinear.binned_statistic(counts, scores)
    with pytest.raises(ValueError, match=r"row 3 .*row 17"):
        loglinear.concept_statistics(counts, scores, resamples=10)
    with pytest.raises(ValueError, match=r"row 3"):
        loglinear.bins_sensitivity(counts, scores, [6, 8], (1, -1))


def test_issue_examples_drop_gives_the_statistic_of_the_clean_rows():
    counts = _with(COUNTS, [5], np.nan)  # one NaN count used to make the binned r NaN
    scores = _with(SCORES, [9], np.nan)  # one NaN score used to make every concept statistic NaN
    keep = np.ones(60, dtype=bool)
    keep[[5, 9]] = False
    binned = loglinear.binned_statistic(counts, scores, missing="drop")
    clean = loglinear.binned_statistic(COUNTS[keep], SCORES[keep])
    assert binned.n_dropped == 2 and clean.n_dropped == 0
    assert math.isfinite(binned.r) and binned.r == clean.r
    stats = loglinear.concept_statistics(counts, scores, resamples=50, missing="drop")
    clean_stats = loglinear.concept_statistics(COUNTS[keep], SCORES[keep], resamples=50)
    assert stats.n_dropped == 2 and stats.n_rows == 58
    assert stats.pearson_r == clean_stats.pearson_r and math.isfinite(stats.slope_per_decade)


def test_labels_name_rows_and_long_lists_are_cut():
    labels = [f"c{i}" for i in range(60)]
    with pytest.raises(ValueError, match=r"c7 \(count nan and score nan\)"):
        loglinear.drop_missing(_with(COUNTS, [7], np.nan), _with(SCORES, [7], np.nan), labels=labels)
    with pytest.raises(ValueError, match=r"^25 of 60 rows.* and 15 more;"):
        loglinear.drop_missing(_with(COUNTS, list(range(25)), np.nan), SCORES)
    with pytest.raises(ValueError, match="missing must be one of"):
        loglinear.drop_missing(COUNTS, SCORES, missing="ignore")


def test_all_rows_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one row"):
        loglinear.binned_statistic([np.nan, np.nan], [0.1, 0.2], missing="drop")


def test_fit_rows_names_dataset_and_concept_or_counts_the_drop():
    data = pd.DataFrame(
        {
            "dataset": ["cifar10"] * 60,
            "concept": [f"concept{i}" for i in range(60)],
            "count": _with(COUNTS, [4], np.nan),
            "score": _with(SCORES, [11], np.nan),
        }
    )
    rows = fits.Rows(data=data)
    kwargs = {"n_edges": 8, "plotted": (1, -1), "resamples": 20, "seed": 0}
    with pytest.raises(ValueError, match=r"cifar10/concept4 \(count nan\), cifar10/concept11 \(score nan\)"):
        fits.fit_rows(rows, **kwargs)
    records = fits.fit_rows(rows, missing="drop", **kwargs)
    assert fits.missing_value_rows(rows) == 2
    clean = fits.fit_rows(fits.Rows(data=data.drop(index=[4, 11])), **kwargs)
    assert [r["binned_r"] for r in records] == [r["binned_r"] for r in clean]
    assert set(records[0]) == set(clean[0])  # the fit-table columns are unchanged
    assert all(math.isfinite(r["binned_r"]) and math.isfinite(r["concept_pearson_r"]) for r in records)


def test_join_keeps_a_nan_count_for_the_fit_to_report():
    counts = pd.DataFrame({"dataset": ["d", "d"], "concept": ["a", "b"], "count": [3.0, np.nan]})
    scores = pd.DataFrame({"dataset": ["d", "d"], "concept": ["a", "b"], "score": [0.5, 0.6]})
    rows = fits._join(counts, scores)
    assert rows.data["count"].isna().sum() == 1  # not a crash in an int cast, not silently dropped


def test_release_fits_checks_the_missing_option():
    with pytest.raises(ValueError, match=r"^analysis\.missing: expected one of raise, drop, got 'ignore'"):
        fits.release_fits({"frequencies": pd.DataFrame()}, {"bootstrap_resamples": 1, "seed": 0, "missing": "ignore"})
