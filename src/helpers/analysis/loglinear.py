"""Log-linear analysis: performance against log pretraining frequency.

Two families of statistics:

* ``binned_statistic`` is the authors' statistic, reproduced exactly: x = ln(max(count, 1)); equal-width
  bin edges from min x to max x; right-closed bin assignment (``numpy.digitize(x, edges, right=True)``,
  so bin i holds (edges[i-1], edges[i]] and bin 0 holds the minimum); the mean score per bin; Pearson r
  between ln(right edge) = edges[i] and the bin means over the bins the paper plots. The authors' code
  gives an empty bin the mean 0 (``empty_bins="zero"``); ``"drop"`` leaves such bins out instead.
* ``concept_statistics`` are concept-level statistics the paper does not report: Pearson and Spearman r
  between log10 frequency and the score, and the OLS slope in score units per decade of frequency with a
  bootstrap 95% CI; zero counts are either mapped to 1 (``zero_rule="to_one"``) or dropped.

Missing values: a NaN (or infinite) count or score would silently turn the binned r, or every concept-level
statistic, into NaN. Both functions refuse such rows (``missing="raise"``, the default: a ``ValueError``
naming the rows) or leave them out when the caller asks (``missing="drop"``), counting them in the
result's ``n_dropped`` (``drop_missing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

ZeroRule = Literal["to_one", "dropped"]
ZERO_RULES: tuple[ZeroRule, ...] = ("to_one", "dropped")
MissingRule = Literal["raise", "drop"]
MISSING_RULES: tuple[MissingRule, ...] = ("raise", "drop")
MAX_NAMED_ROWS = 10


def drop_missing(
    counts: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    missing: MissingRule = "raise",
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(counts, scores, n_dropped)`` without the rows whose count or score is NaN or infinite.

    ``missing="raise"`` raises ``ValueError`` naming those rows (``labels[i]`` when given, else the row
    position; at most ``MAX_NAMED_ROWS`` named, then how many more) and what is missing in each;
    ``"drop"`` leaves them out and returns how many. Arrays must be 1-D and of the same length.
    """
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, not {missing!r}")
    counts = np.asarray(counts, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if counts.shape != scores.shape or counts.ndim != 1:
        raise ValueError("counts and scores must be 1-D arrays of the same length")
    bad_count, bad_score = ~np.isfinite(counts), ~np.isfinite(scores)
    bad = bad_count | bad_score
    if not bad.any():
        return counts, scores, 0
    if missing == "drop":
        return counts[~bad], scores[~bad], int(bad.sum())
    rows = np.flatnonzero(bad)
    named = []
    for i in rows[:MAX_NAMED_ROWS].tolist():
        what = " and ".join(
            f"{name} {value}"
            for name, value, flag in (("count", counts[i], bad_count[i]), ("score", scores[i], bad_score[i]))
            if flag
        )
        named.append(f"{labels[i] if labels is not None else f'row {i}'} ({what})")
    more = f" and {len(rows) - MAX_NAMED_ROWS} more" if len(rows) > MAX_NAMED_ROWS else ""
    raise ValueError(
        f"{len(rows)} of {len(counts)} rows have a missing (NaN) or infinite count or score: "
        f"{', '.join(named)}{more}; fix the input, or pass missing='drop' to leave them out (counted)"
    )


@dataclass(frozen=True)
class BinnedResult:
    edges: np.ndarray  # ln-space bin edges (n_edges,)
    means: np.ndarray  # mean score per bin index 0..n_edges-1 (0 or NaN where empty)
    sizes: np.ndarray  # rows per bin index
    plotted: np.ndarray  # indices of the bins the figure shows
    r: float
    p: float
    n_dropped: int = 0  # rows left out for a NaN/infinite count or score (missing="drop")

    @property
    def right_edges(self) -> np.ndarray:
        """Bin right edges in frequency units (exp of the ln-space edges)."""
        return np.exp(self.edges)

    def curve(self) -> pd.DataFrame:
        """The plotted points: frequency (right edge), mean score, rows in the bin."""
        idx = self.plotted
        return pd.DataFrame(
            {"bin": idx, "frequency": self.right_edges[idx], "mean": self.means[idx], "n": self.sizes[idx]}
        )


def _slice_indices(n: int, plotted: tuple[int | None, int | None] | slice | None) -> np.ndarray:
    if plotted is None:
        return np.arange(n)
    sl = plotted if isinstance(plotted, slice) else slice(*plotted)
    return np.arange(n)[sl]


def _safe_pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan")
    res = stats.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def binned_statistic(
    counts: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    n_edges: int = 12,
    plotted: tuple[int | None, int | None] | slice | None = (1, -1),
    empty_bins: Literal["zero", "drop"] = "zero",
    missing: MissingRule = "raise",
    labels: Sequence[str] | None = None,
) -> BinnedResult:
    """The authors' binned log-linear statistic (see the module docstring).

    ``missing``/``labels``: rows with a NaN or infinite count or score raise ``ValueError`` naming them
    (``labels[i]``, else the position), or are dropped and counted in ``n_dropped`` (``drop_missing``).
    """
    counts, scores, n_dropped = drop_missing(counts, scores, missing, labels)
    if len(counts) == 0:
        raise ValueError("binned_statistic needs at least one row (with a count and a score)")
    if n_edges < 2:
        raise ValueError("n_edges must be at least 2")
    x = np.log(np.maximum(counts, 1.0))
    edges = np.linspace(x.min(), x.max(), num=n_edges)
    assigned = np.digitize(x, edges, right=True)
    sizes = np.bincount(assigned, minlength=n_edges)
    sums = np.bincount(assigned, weights=scores, minlength=n_edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(sizes > 0, sums / np.maximum(sizes, 1), 0.0 if empty_bins == "zero" else np.nan)
    idx = _slice_indices(n_edges, plotted)
    if empty_bins == "drop":
        idx = idx[sizes[idx] > 0]
    r, p = _safe_pearson(edges[idx], means[idx])
    return BinnedResult(edges=edges, means=means, sizes=sizes, plotted=idx, r=r, p=p, n_dropped=n_dropped)


@dataclass(frozen=True)
class ConceptStatistics:
    n_rows: int
    pearson_r: float
    pearson_p: float
    spearman_r: float
    spearman_p: float
    slope_per_decade: float
    intercept: float
    slope_ci_low: float
    slope_ci_high: float
    n_dropped: int = 0  # rows left out for a NaN/infinite count or score (missing="drop")


def log10_frequency(counts: np.ndarray, zero_rule: ZeroRule) -> tuple[np.ndarray, np.ndarray]:
    """log10 frequency and the mask of rows kept under ``zero_rule``."""
    counts = np.asarray(counts, dtype=float)
    if zero_rule == "to_one":
        return np.log10(np.maximum(counts, 1.0)), np.ones(len(counts), dtype=bool)
    if zero_rule == "dropped":
        keep = counts > 0
        return np.log10(counts[keep]), keep
    raise ValueError(f"zero_rule must be one of {ZERO_RULES}, not {zero_rule!r}")


@lru_cache(maxsize=32)
def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each row is drawn in each bootstrap resample, (resamples, n).

    Cached and shared by every fit with the same n and seed: drawing the resamples dominated the fits'
    run time, and shared resamples make the CIs of fits on the same rows directly comparable.
    """
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, n), dtype=np.float32)  # small integer counts: exact in float32
    for b in range(resamples):
        weights[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    weights.setflags(write=False)
    return weights


def bootstrap_slopes(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """OLS slopes of y on x over ``resamples`` row resamples (with replacement), seeded.

    A resample's slope only needs its weighted sums of x, y, x² and xy, so all resamples are four
    matrix-vector products with the draw-count matrix.
    """
    n = len(x)
    weights = _resample_weights(n, resamples, seed)
    x, y = x - x.mean(), y - y.mean()  # the slope is shift-invariant; centring avoids float32 cancellation
    # one pass over the weights for all four sums (the matrix is large; reading it is the cost)
    sx, sy, sxx, sxy = (weights @ np.stack([x, y, x * x, x * y], axis=1).astype(np.float32)).astype(np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sxy - sx * sy / n) / (sxx - sx * sx / n)


def concept_statistics(
    counts: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    zero_rule: ZeroRule = "to_one",
    resamples: int = 1000,
    seed: int = 0,
    missing: MissingRule = "raise",
    labels: Sequence[str] | None = None,
) -> ConceptStatistics:
    """Concept-level correlation and OLS slope per decade (with a percentile bootstrap 95% CI).

    ``missing``/``labels`` as in ``binned_statistic`` (NaN/infinite rows raise, or are dropped and counted).
    """
    counts, scores, n_dropped = drop_missing(counts, scores, missing, labels)
    x, keep = log10_frequency(counts, zero_rule)
    y = scores[keep]
    nan = float("nan")
    if len(x) < 3 or np.all(x == x[0]):
        return ConceptStatistics(len(x), nan, nan, nan, nan, nan, nan, nan, nan, n_dropped)
    pearson_r, pearson_p = _safe_pearson(x, y)
    spearman = stats.spearmanr(x, y)
    fit = stats.linregress(x, y)
    low = high = nan
    if resamples > 0:
        slopes = bootstrap_slopes(x, y, resamples, seed)
        slopes = slopes[np.isfinite(slopes)]
        if len(slopes):
            low, high = (float(v) for v in np.percentile(slopes, [2.5, 97.5]))
    return ConceptStatistics(
        n_rows=len(x),
        pearson_r=pearson_r,
        pearson_p=pearson_p,
        spearman_r=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
        slope_per_decade=float(fit.slope),
        intercept=float(fit.intercept),
        slope_ci_low=low,
        slope_ci_high=high,
        n_dropped=n_dropped,
    )


def bins_sensitivity(
    counts: np.ndarray,
    scores: np.ndarray,
    edge_counts: Sequence[int],
    plotted: tuple[int | None, int | None] | None,
    missing: MissingRule = "raise",
) -> pd.DataFrame:
    """How the binned r moves with the number of bin edges (same plotted-bin rule throughout)."""
    rows = []
    for n_edges in edge_counts:
        res = binned_statistic(counts, scores, n_edges=n_edges, plotted=plotted, missing=missing)
        rows.append({"n_edges": n_edges, "binned_r": res.r, "binned_p": res.p, "n_bins_plotted": len(res.plotted)})
    return pd.DataFrame(rows)
