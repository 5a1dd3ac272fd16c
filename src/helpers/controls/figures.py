"""Figures of the similarity control: fit statistics against the threshold, and the similarity distribution."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def fit_vs_threshold(fits: pd.DataFrame, *, prompt: str | None = None, zero_rule: str = "to_one") -> plt.Figure:
    """Concept-level Pearson r and slope per decade (with its bootstrap CI) against the similarity threshold.

    ``fits``: ``pipeline.refit`` rows; one line per count type (and dataset, as line style). ``prompt``: the
    prompt set shown (default: the first). Raises ``ValueError`` on an empty table.
    """
    if fits.empty:
        raise ValueError("no fits to plot (controls.similarity.model not set, or no concept joined)")
    prompt = prompt or sorted(fits["prompt"].unique())[0]
    data = fits[(fits["prompt"] == prompt) & (fits["zero_rule"] == zero_rule)].sort_values("similarity_threshold")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    several = data["dataset"].nunique() > 1
    for ax, column, label in ((axes[0], "concept_pearson_r", "Pearson r (concept level)"),
                              (axes[1], "slope_per_decade", "slope (accuracy points per decade)")):  # fmt: skip
        sns.lineplot(data=data, x="similarity_threshold", y=column, hue="count_type",
                     style="dataset" if several else None, marker="o", ax=ax)  # fmt: skip
        if column == "slope_per_decade":
            for _, group in data.groupby(["count_type", "dataset"]):
                ax.fill_between(
                    group["similarity_threshold"], group["slope_ci_low"], group["slope_ci_high"], alpha=0.12
                )
        ax.set_xlabel("similarity threshold (samples above it removed)")
        ax.set_ylabel(label)
    axes[0].axhline(0, color="grey", linewidth=0.8)
    fig.suptitle(f"Log-linear fit after removing samples similar to the test sets (prompts: {prompt})")
    fig.tight_layout()
    return fig


def similarity_distribution(sim: pd.DataFrame, thresholds: Sequence[float], default: float) -> plt.Figure:
    """Histogram of every pretraining sample's max cosine similarity to the test images, per test set.

    ``sim``: (max_sim, nearest_dataset), one row per embedded sample; each sample counts under the test set
    holding its nearest test image. Dashed lines: the thresholds; solid: the default one. Log-scaled counts.
    """
    if sim.empty:
        raise ValueError("no similarity rows to plot")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bins = np.linspace(float(min(sim["max_sim"].min(), min(thresholds))) - 0.01, 1.0, 60)
    sns.histplot(data=sim, x="max_sim", hue="nearest_dataset", bins=bins, element="step", ax=ax)
    ax.set_yscale("log")
    for t in thresholds:
        ax.axvline(t, color="black", linestyle="-" if t == default else "--", linewidth=1.0 if t == default else 0.6)
    ax.set_xlabel("max cosine similarity of a pretraining sample to any test image")
    ax.set_ylabel("pretraining samples")
    fig.tight_layout()
    return fig


def leaked_classes(table: pd.DataFrame) -> plt.Figure:
    """Accuracy of each class before and after retraining on the pruned corpus against its pruned count, with
    the unleaked classes' fit (``retrain.leaked_class_table``); leaked classes marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.log10(np.maximum(table["count"].to_numpy(float), 1))
    order = np.argsort(x)
    ax.plot(x[order], table["predicted"].to_numpy()[order], color="grey", label="fit (unleaked classes, retrained)")
    for leaked, marker in ((False, "o"), (True, "*")):
        sel = table["leaked"].to_numpy() == leaked
        kind = "leaked" if leaked else "clean"
        ax.scatter(x[sel], table["accuracy_before"][sel], marker=marker, facecolors="none", edgecolors="C1",
                   s=80 if leaked else 25, label=f"{kind}: original model")  # fmt: skip
        ax.scatter(x[sel], table["accuracy_after"][sel], marker=marker, color="C0", s=80 if leaked else 25,
                   label=f"{kind}: retrained on pruned corpus")  # fmt: skip
    ax.set_xlabel("log10 count on the pruned corpus")
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def datasheet(counts: pd.DataFrame, steps: Sequence[str]) -> plt.Figure:
    """Images per class after every step of the Let It Wag! builder (``wag.build_let_it_wag``'s ``counts``:
    class, step, n), one line per class over ``steps`` in order."""
    data = counts[counts["step"].isin(steps)].copy()
    data["step"] = pd.Categorical(data["step"], categories=list(steps), ordered=True)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.lineplot(data=data.sort_values("step"), x="step", y="n", hue="class", marker="o", ax=ax)
    ax.set_xlabel("builder step")
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


__all__ = ["datasheet", "fit_vs_threshold", "leaked_classes", "similarity_distribution"]
