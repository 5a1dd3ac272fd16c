"""Descriptive statistics of the concept frequencies: long tails, agreement between pretraining sets,
and text vs image vs matched counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def concept_counts(
    freq: pd.DataFrame, *, pretrain: str, method: str, exclude_downstream: tuple[str, ...] = ()
) -> pd.Series:
    """One count per concept name (a name counted for several downstream datasets has the same count)."""
    sel = freq[
        (freq["pretrain"] == pretrain) & (freq["method"] == method) & ~freq["downstream"].isin(exclude_downstream)
    ]
    return sel.groupby("concept")["count"].first()


def long_tail_table(freq: pd.DataFrame, *, pretrains: list[str], methods: dict[str, str]) -> pd.DataFrame:
    """Counts per concept for each pretraining set and count kind (label -> method) present in the release."""
    frames = []
    for pretrain in pretrains:
        for label, method in methods.items():
            counts = concept_counts(freq, pretrain=pretrain, method=method)
            if len(counts):
                frames.append(
                    pd.DataFrame({"pretrain": pretrain, "kind": label, "concept": counts.index, "count": counts.values})
                )
    return pd.concat(frames, ignore_index=True)


def tail_summary(table: pd.DataFrame) -> pd.DataFrame:
    """How long the tail is: share of concepts with zero counts, with < 10, and the top-decile share of counts."""
    rows = []
    for (pretrain, kind), group in table.groupby(["pretrain", "kind"], sort=False):
        counts = group["count"].sort_values(ascending=False).to_numpy()
        top = max(1, len(counts) // 10)
        rows.append(
            {
                "pretrain": pretrain,
                "kind": kind,
                "concepts": len(counts),
                "zero_count_share": float((counts == 0).mean()),
                "below_10_share": float((counts < 10).mean()),
                "top_decile_share_of_mentions": float(counts[:top].sum() / max(counts.sum(), 1)),
            }
        )
    return pd.DataFrame(rows)


def pretrain_correlations(
    freq: pd.DataFrame, *, pretrains: list[str], method: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spearman correlation of concept counts between pretraining sets, paired by concept name.

    Returns the correlation matrix and the number of paired concepts per pair. (The authors' notebook
    paired the lists by position; pairing by name is what the comparison means.)
    """
    series = {p: concept_counts(freq, pretrain=p, method=method) for p in pretrains}
    series = {p: s for p, s in series.items() if len(s)}
    names = list(series)
    corr = pd.DataFrame(np.nan, index=names, columns=names)
    n = pd.DataFrame(0, index=names, columns=names, dtype="int64")
    for a in names:
        for b in names:
            joined = pd.concat([series[a], series[b]], axis=1, join="inner")
            n.loc[a, b] = len(joined)
            corr.loc[a, b] = (
                stats.spearmanr(joined.iloc[:, 0], joined.iloc[:, 1]).statistic if len(joined) > 2 else float("nan")
            )
    return corr, n


def count_kinds_wide(freq: pd.DataFrame, *, pretrains: list[str], text: str, image: str, matched: str) -> pd.DataFrame:
    """Per concept and pretraining set: text, image and matched counts side by side."""
    frames = []
    for pretrain in pretrains:
        cols = {
            label: concept_counts(freq, pretrain=pretrain, method=m)
            for label, m in (("text", text), ("image", image), ("matched", matched))
        }
        if any(len(c) == 0 for c in cols.values()):
            continue
        wide = pd.concat(cols, axis=1, join="inner").reset_index().rename(columns={"index": "concept"})
        frames.append(wide.assign(pretrain=pretrain))
    return pd.concat(frames, ignore_index=True)
