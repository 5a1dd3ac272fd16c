"""The authors' binned log-linear statistic and the concept-level statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import loglinear
from helpers.analysis.loglinear import (
    binned_statistic,
    bins_sensitivity,
    concept_statistics,
)

E = math.e

# --- a hand-computed example ------------------------------------------------------------------------------
#
# ln(count) of the eight rows:      0 (count 0 -> 1), 0, 0.5, 1, 1.5, 2, 3.5, 4
# n_edges = 5 -> edges (ln space):  0, 1, 2, 3, 4
# right-closed bins: bin 0 = {x == 0}, bin i = (edges[i-1], edges[i]]
#   x = 0, 0    -> bin 0   (the minimum lands in bin 0)
#   x = 0.5, 1  -> bin 1   (1 lies exactly on edge 1: right-closed keeps it in bin 1, not bin 2)
#   x = 1.5, 2  -> bin 2   (2 on edge 2 -> bin 2)
#   (none)      -> bin 3   (empty)
#   x = 3.5, 4  -> bin 4   (the maximum lands in the last bin)
HAND_X = np.array([0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.5, 4.0])
HAND_COUNTS = np.concatenate([[0.0], np.exp(HAND_X[1:])])  # 0, e^0, e^0.5, e^1, ..., e^4
HAND_SCORES = np.array([10.0, 20.0, 30.0, 50.0, 60.0, 70.0, 80.0, 100.0])
HAND_EDGES = [0.0, 1.0, 2.0, 3.0, 4.0]
HAND_SIZES = [2, 2, 2, 0, 2]
HAND_MEANS_ZERO = [15.0, 40.0, 65.0, 0.0, 90.0]  # (10+20)/2, (30+50)/2, (60+70)/2, empty -> 0, (80+100)/2


def test_hand_example_inputs_have_exact_logs():
    # Precondition of the hand example: the edge values really are exact in floating point.
    assert np.array_equal(np.log(np.maximum(HAND_COUNTS, 1.0)), HAND_X)


def test_hand_example_edges_sizes_and_means():
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=5, plotted=None)
    assert res.edges.tolist() == HAND_EDGES
    assert res.sizes.tolist() == HAND_SIZES
    assert res.means.tolist() == HAND_MEANS_ZERO
    np.testing.assert_allclose(res.right_edges, np.exp(HAND_EDGES))


def test_hand_example_r_over_plotted_bins_1_to_minus_1():
    # Plotted bins 1..3: x = edges [1, 2, 3], y = means [40, 65, 0].
    # mean x = 2, dx = [-1, 0, 1]; mean y = 35, dy = [5, 30, -35]
    # r = sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2)) = -40 / sqrt(2 * 2150)
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=5, plotted=(1, -1))
    assert res.plotted.tolist() == [1, 2, 3]
    assert res.r == pytest.approx(-40 / math.sqrt(2 * 2150))
    assert 0 < res.p <= 1


def test_hand_example_empty_bin_dropped():
    # Dropping the empty bin 3 over all bins: x = [0, 1, 2, 4], y = [15, 40, 65, 90]
    # mean x = 1.75, dx = [-1.75, -0.75, 0.25, 2.25]; mean y = 52.5, dy = [-37.5, -12.5, 12.5, 37.5]
    # sum dx*dy = 162.5, sum dx^2 = 8.75, sum dy^2 = 3125
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=5, plotted=None, empty_bins="drop")
    assert res.plotted.tolist() == [0, 1, 2, 4]
    assert res.sizes.tolist() == HAND_SIZES
    assert np.isnan(res.means[3])
    assert res.means[[0, 1, 2, 4]].tolist() == [15.0, 40.0, 65.0, 90.0]
    assert res.r == pytest.approx(162.5 / math.sqrt(8.75 * 3125))


def test_hand_example_empty_bin_counts_as_zero_by_default():
    # With the authors' rule the empty bin 3 is plotted with mean 0 over all bins:
    # x = [0, 1, 2, 3, 4], y = [15, 40, 65, 0, 90]; dx = [-2, -1, 0, 1, 2], mean y = 42,
    # dy = [-27, -2, 23, -42, 48]; sum dx*dy = 54 + 2 + 0 - 42 + 96 = 110; sum dx^2 = 10;
    # sum dy^2 = 729 + 4 + 529 + 1764 + 2304 = 5330
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=5, plotted=None, empty_bins="zero")
    assert res.plotted.tolist() == [0, 1, 2, 3, 4]
    assert res.r == pytest.approx(110 / math.sqrt(10 * 5330))


def test_value_just_above_an_edge_goes_to_the_next_bin():
    counts = np.exp([0.0, 1.0, 1.0 + 1e-9, 4.0])
    res = binned_statistic(counts, [1.0, 2.0, 3.0, 4.0], n_edges=5, plotted=None)
    assert res.sizes.tolist() == [1, 1, 1, 0, 1]
    assert res.means.tolist() == [1.0, 2.0, 3.0, 0.0, 4.0]


def test_curve_lists_plotted_bins_with_right_edge_frequency():
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=5, plotted=(1, -1))
    curve = res.curve()
    assert list(curve.columns) == ["bin", "frequency", "mean", "n"]
    assert curve["bin"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(curve["frequency"], [E, E**2, E**3])
    assert curve["mean"].tolist() == [40.0, 65.0, 0.0]
    assert curve["n"].tolist() == [2, 2, 0]


# --- plotted-bin slices used by the paper's figures -------------------------------------------------------


@pytest.mark.parametrize(
    "plotted, n_edges, expected",
    [
        ((1, -1), 12, list(range(1, 11))),  # zero-shot figures: drop first and last bin
        ((2, -1), 12, list(range(2, 11))),  # LAION-400M
        ((0, -4), 12, list(range(0, 8))),  # SynthCI-30M
        ((-4, None), 7, [3, 4, 5, 6]),  # retrieval and T2I: last four bins
        (slice(1, -1), 7, [1, 2, 3, 4, 5]),
        (None, 4, [0, 1, 2, 3]),
    ],
)
def test_plotted_slices(plotted, n_edges, expected):
    rng = np.random.default_rng(1)
    counts = np.concatenate([[1, 10**6], rng.integers(1, 10**6, size=500)])
    res = binned_statistic(counts, rng.uniform(0, 100, size=502), n_edges=n_edges, plotted=plotted)
    assert res.plotted.tolist() == expected
    assert len(res.means) == len(res.sizes) == len(res.edges) == n_edges


# --- agreement with a straightforward loop implementation -------------------------------------------------


def _reference_binned(counts, scores, n_edges, plotted, empty_bins):
    """The authors' notebook algorithm, written out with plain Python loops."""
    x = [math.log(c if c > 0 else 1) for c in counts]
    lo, hi = min(x), max(x)
    step = (hi - lo) / (n_edges - 1)
    edges = [lo + i * step for i in range(n_edges)]
    edges[-1] = hi
    sums, sizes = [0.0] * n_edges, [0] * n_edges
    for xv, s in zip(x, scores):
        b = next(i for i, e in enumerate(edges) if xv <= e)  # right-closed: first edge >= x
        sums[b] += s
        sizes[b] += 1
    means = [sums[i] / sizes[i] if sizes[i] else 0.0 for i in range(n_edges)]
    idx = list(range(n_edges))[slice(*plotted)]
    if empty_bins == "drop":
        idx = [i for i in idx if sizes[i]]
    xs, ys = [edges[i] for i in idx], [means[i] for i in idx]
    if len(xs) < 3 or len(set(ys)) == 1:
        return edges, sizes, means, idx, float("nan")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    sxx = sum((a - mx) ** 2 for a in xs)
    syy = sum((b - my) ** 2 for b in ys)
    return edges, sizes, means, idx, sxy / math.sqrt(sxx * syy)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "n_edges, plotted", [(12, (1, -1)), (12, (2, -1)), (12, (0, -4)), (7, (-4, None)), (30, (1, -1))]
)
@pytest.mark.parametrize("empty_bins", ["zero", "drop"])
def test_agrees_with_loop_reference_on_random_data(seed, n_edges, plotted, empty_bins):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    counts = np.floor(10 ** rng.uniform(0, 7, size=n))
    counts[rng.random(n) < 0.2] = 0  # zero counts are mapped to 1
    scores = rng.uniform(0, 100, size=n)
    edges, sizes, means, idx, r = _reference_binned(counts.tolist(), scores.tolist(), n_edges, plotted, empty_bins)
    res = binned_statistic(counts, scores, n_edges=n_edges, plotted=plotted, empty_bins=empty_bins)
    np.testing.assert_allclose(res.edges, edges, rtol=0, atol=1e-12)
    assert res.sizes.tolist() == sizes
    got_means = np.where(res.sizes > 0, res.means, 0.0)
    np.testing.assert_allclose(got_means, means, rtol=1e-12)
    assert res.plotted.tolist() == idx
    if math.isnan(r):
        assert math.isnan(res.r)
    else:
        assert res.r == pytest.approx(r, rel=1e-9, abs=1e-12)


def test_agrees_with_scipy_binned_mean():
    """Cross-check the bin means against scipy.stats.binned_statistic (left-closed bins)."""
    from scipy import stats

    rng = np.random.default_rng(7)
    counts = np.floor(10 ** rng.uniform(0, 6, size=1000)) + 0.5
    scores = rng.uniform(0, 100, size=1000)
    res = binned_statistic(counts, scores, n_edges=12, plotted=None, empty_bins="drop")
    x = np.log(counts)
    assert not np.isin(x, res.edges[1:-1]).any()  # precondition: no row on an inner edge
    sp = stats.binned_statistic(x, scores, statistic="mean", bins=res.edges).statistic
    # scipy's bin j is [edges[j], edges[j+1]) (the last one closed); ours is (edges[i-1], edges[i]] with
    # bin 0 = {min}. Off the inner edges, our bin i >= 2 is scipy's bin i - 1, and our bin 1 is scipy's
    # bin 0 without the minimum.
    np.testing.assert_allclose(res.means[2:], sp[1:])
    assert res.sizes[0] == np.sum(x == x.min())
    assert res.means[0] == pytest.approx(scores[x == x.min()].mean())
    assert res.means[1] == pytest.approx(scores[(x > x.min()) & (x < res.edges[1])].mean())


# --- edge cases and validation ----------------------------------------------------------------------------


def test_all_counts_equal_gives_nan_not_crash():
    res = binned_statistic([5, 5, 5, 5], [1.0, 2.0, 3.0, 4.0], n_edges=12, plotted=(1, -1))
    assert res.sizes[0] == 4
    assert math.isnan(res.r) and math.isnan(res.p)


def test_too_few_plotted_bins_gives_nan():
    res = binned_statistic(HAND_COUNTS, HAND_SCORES, n_edges=4, plotted=(1, -1))
    assert res.plotted.tolist() == [1, 2]
    assert math.isnan(res.r)


def test_single_row_gives_nan():
    res = binned_statistic([10], [50.0], n_edges=5, plotted=None)
    assert res.sizes.tolist() == [1, 0, 0, 0, 0]
    assert math.isnan(res.r)


@pytest.mark.parametrize(
    "counts, scores, n_edges",
    [
        ([1, 2, 3], [1.0, 2.0], 5),  # length mismatch
        ([[1, 2]], [[1.0, 2.0]], 5),  # not 1-D
        ([], [], 5),  # empty
        ([1, 2, 3], [1.0, 2.0, 3.0], 1),  # too few edges
    ],
)
def test_binned_statistic_validates_inputs(counts, scores, n_edges):
    with pytest.raises(ValueError):
        binned_statistic(counts, scores, n_edges=n_edges)


# --- concept-level statistics -----------------------------------------------------------------------------

DECADES = np.array([1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 100_000], dtype=float)


def test_slope_per_decade_on_exact_linear_data():
    scores = 3 * np.log10(DECADES) + 1
    cs = concept_statistics(DECADES, scores, resamples=200, seed=0)
    assert cs.n_rows == len(DECADES)
    assert cs.slope_per_decade == pytest.approx(3.0)
    assert cs.intercept == pytest.approx(1.0)
    assert cs.pearson_r == pytest.approx(1.0)
    assert cs.spearman_r == pytest.approx(1.0)
    assert cs.slope_ci_low <= 3.0 + 1e-9 and cs.slope_ci_high >= 3.0 - 1e-9
    assert cs.slope_ci_low == pytest.approx(3.0) and cs.slope_ci_high == pytest.approx(3.0)


def test_bootstrap_ci_contains_true_slope_on_noisy_data_and_is_reproducible():
    rng = np.random.default_rng(42)
    counts = np.floor(10 ** rng.uniform(0, 6, size=300))
    scores = 3 * np.log10(counts) + 1 + rng.normal(0, 1, size=300)
    a = concept_statistics(counts, scores, resamples=300, seed=0)
    b = concept_statistics(counts, scores, resamples=300, seed=0)
    c = concept_statistics(counts, scores, resamples=300, seed=1)
    assert a.slope_ci_low < 3.0 < a.slope_ci_high
    assert a.slope_ci_low < a.slope_per_decade < a.slope_ci_high
    assert a.slope_ci_high - a.slope_ci_low < 0.5
    assert a == b
    assert (a.slope_ci_low, a.slope_ci_high) != (c.slope_ci_low, c.slope_ci_high)


def test_zero_rule_to_one_versus_dropped():
    counts = np.array([0, 0, 10, 100, 1_000, 10_000], dtype=float)
    scores = np.array([5.0, 7.0, 4.0, 7.0, 10.0, 13.0])  # the non-zero rows lie on 3*log10(c) + 1
    dropped = concept_statistics(counts, scores, zero_rule="dropped", resamples=0)
    to_one = concept_statistics(counts, scores, zero_rule="to_one", resamples=0)
    assert dropped.n_rows == 4
    assert dropped.slope_per_decade == pytest.approx(3.0)
    assert dropped.intercept == pytest.approx(1.0)
    assert to_one.n_rows == 6
    # to_one: x = [0, 0, 1, 2, 3, 4], y = [5, 7, 4, 7, 10, 13]; mean x = 5/3, mean y = 23/3;
    # sum(x*y) = 0 + 0 + 4 + 14 + 30 + 52 = 100; sum dx*dy = 100 - 6*(5/3)*(23/3) = 100 - 230/3 = 70/3;
    # sum(x^2) = 30; sum dx^2 = 30 - 6*(25/9) = 40/3 -> slope = 70/40 = 1.75
    assert to_one.slope_per_decade == pytest.approx(1.75)


def test_log10_frequency_masks():
    x, keep = loglinear.log10_frequency(np.array([0, 1, 100]), "to_one")
    assert x.tolist() == [0.0, 0.0, 2.0] and keep.tolist() == [True, True, True]
    x, keep = loglinear.log10_frequency(np.array([0, 1, 100]), "dropped")
    assert x.tolist() == [0.0, 2.0] and keep.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="zero_rule"):
        loglinear.log10_frequency(np.array([1]), "ignore")


def test_spearman_sees_monotone_nonlinear_relation():
    scores = np.exp(np.log10(DECADES))  # monotone but far from linear in log10 frequency
    cs = concept_statistics(DECADES, scores, resamples=0)
    assert cs.spearman_r == pytest.approx(1.0)
    assert cs.pearson_r < 0.99
    assert cs.spearman_p < 0.01


def test_spearman_of_reversed_ranks_is_minus_one():
    cs = concept_statistics(DECADES, -(np.arange(len(DECADES), dtype=float) ** 2), resamples=0)
    assert cs.spearman_r == pytest.approx(-1.0)


def _all_nan(cs) -> bool:
    fields = [
        "pearson_r",
        "pearson_p",
        "spearman_r",
        "spearman_p",
        "slope_per_decade",
        "intercept",
        "slope_ci_low",
        "slope_ci_high",
    ]
    return all(math.isnan(getattr(cs, f)) for f in fields)


@pytest.mark.parametrize(
    "counts, scores, zero_rule, n_rows",
    [
        ([10, 100], [1.0, 2.0], "to_one", 2),  # fewer than three rows
        ([7, 7, 7, 7], [1.0, 2.0, 3.0, 4.0], "to_one", 4),  # one frequency only
        ([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0], "to_one", 4),  # all map to log10(1) = 0
        ([0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0], "dropped", 0),  # nothing left
        ([0, 0, 5, 50], [1.0, 2.0, 3.0, 4.0], "dropped", 2),
    ],
)
def test_degenerate_inputs_give_nan_not_crash(counts, scores, zero_rule, n_rows):
    cs = concept_statistics(counts, scores, zero_rule=zero_rule, resamples=50)
    assert cs.n_rows == n_rows
    assert _all_nan(cs)


def test_constant_scores_give_nan_correlations_not_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cs = concept_statistics(DECADES, np.full(len(DECADES), 50.0), resamples=50)
    assert math.isnan(cs.pearson_r) and math.isnan(cs.spearman_r)
    assert cs.slope_per_decade == pytest.approx(0.0)


def test_no_resamples_leaves_ci_nan():
    cs = concept_statistics(DECADES, np.log10(DECADES), resamples=0)
    assert cs.slope_per_decade == pytest.approx(1.0)
    assert math.isnan(cs.slope_ci_low) and math.isnan(cs.slope_ci_high)


def test_bootstrap_skips_degenerate_resamples_of_exact_line():
    # Three rows: some resamples draw a single distinct x (slope undefined); those are left out, and
    # every other resample of an exact line y = 2*log10(c) + 1 has slope 2.
    counts = np.array([1.0, 10.0, 100.0])
    cs = concept_statistics(counts, 2 * np.log10(counts) + 1, resamples=300, seed=0)
    assert cs.slope_ci_low == pytest.approx(2.0) and cs.slope_ci_high == pytest.approx(2.0)


# --- sensitivity to the number of bins --------------------------------------------------------------------


def test_bins_sensitivity_shape_and_consistency():
    rng = np.random.default_rng(0)
    counts = np.floor(10 ** rng.uniform(0, 6, size=400))
    scores = 10 * np.log10(np.maximum(counts, 1)) + rng.normal(0, 5, size=400)
    edge_counts = [6, 8, 10, 12, 16, 20, 30]
    table = bins_sensitivity(counts, scores, edge_counts, plotted=(1, -1))
    assert isinstance(table, pd.DataFrame)
    assert table.shape == (len(edge_counts), 4)
    assert list(table.columns) == ["n_edges", "binned_r", "binned_p", "n_bins_plotted"]
    assert table["n_edges"].tolist() == edge_counts
    assert table["n_bins_plotted"].tolist() == [n - 2 for n in edge_counts]
    twelve = binned_statistic(counts, scores, n_edges=12, plotted=(1, -1))
    assert table.set_index("n_edges").loc[12, "binned_r"] == twelve.r
    assert (table["binned_r"] > 0.8).all()
