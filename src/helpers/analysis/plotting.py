"""One figure style for the compendium, and the figure types it draws (seaborn on matplotlib).

Every figure is saved as PNG and PDF by ``save_figure``; frequency axes are log-scaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

FREQUENCY_LABEL = "Pretraining concept frequency"


def set_style() -> None:
    """The compendium's seaborn style: white grid, readable font sizes, colour-blind palette."""
    sns.set_theme(
        style="whitegrid",
        context="notebook",
        palette="colorblind",
        rc={"axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9, "figure.dpi": 100},
    )


def save_figure(fig: plt.Figure, stem: Path, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        path = stem.parent / (stem.name + suffix)  # not with_suffix: stems may contain dots (t=0.7)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        written.append(path)
    return written


def _legend_label(model: str, r: float, p: float) -> str:
    star = "*" if np.isfinite(p) and p < 0.05 else ""
    return f"{model}, r={r:.2f}{star}" if np.isfinite(r) else f"{model}, r=n/a"


def curve_grid(
    curves: pd.DataFrame,
    *,
    row: str | None,
    col: str,
    hue: str = "model",
    title: str = "",
    y_label: str = "Mean score",
    row_order: Sequence | None = None,
    col_order: Sequence | None = None,
    col_wrap: int | None = None,
    panel_height: float = 3.0,
    legend_outside: bool = False,
    sharey: bool = True,
) -> plt.Figure:
    """Binned curves in a grid of panels (one per row x col value); one line per ``hue`` with r in the legend.

    ``curves`` has the columns of ``analysis.binned_curves``: frequency, mean, n, r, p and the label columns.
    With ``row=None`` the ``col`` panels wrap after ``col_wrap`` columns. Empty bins are not drawn (the
    authors' statistic counts them as 0, which the r in the legend keeps; a plotted 0 would look like data).
    """
    col_values = list(col_order or curves[col].drop_duplicates())
    if row is None:
        wrap = col_wrap or len(col_values)
        cells = [(None, cv, k // wrap, k % wrap) for k, cv in enumerate(col_values)]
        n_rows, n_cols = -(-len(col_values) // wrap), min(wrap, len(col_values))
    else:
        row_values = list(row_order or curves[row].drop_duplicates())
        cells = [(rv, cv, i, j) for i, rv in enumerate(row_values) for j, cv in enumerate(col_values)]
        n_rows, n_cols = len(row_values), len(col_values)
    fig, axes = plt.subplots(
        n_rows, n_cols, squeeze=False, sharey=sharey, figsize=(panel_height * 1.35 * n_cols, panel_height * n_rows)
    )
    hues = list(curves[hue].drop_duplicates())
    palette = dict(zip(hues, sns.color_palette("husl" if len(hues) > 8 else "colorblind", n_colors=max(len(hues), 1))))
    markers = dict(zip(hues, ["o", "s", "D", "^", "v", "P", "X", "*"] * 10))
    many = len(hues) > 8
    for rv, cv, i, j in cells:
        ax = axes[i][j]
        panel = curves[(curves[col] == cv) & ((curves[row] == rv) if row is not None else True)]
        for h, group in panel.groupby(hue, sort=False):
            group = group[group["n"] > 0]
            ax.plot(
                group["frequency"],
                group["mean"],
                marker=None if many else markers[h],
                color=palette[h],
                alpha=0.8,
                linewidth=1.0 if many else 1.8,
                markersize=5,
                label=_legend_label(str(h), group["r"].iloc[0], group["p"].iloc[0]) if len(group) else str(h),
            )
        ax.set_xscale("log")
        ax.set_title(f"{rv} | {cv}" if row is not None else str(cv), fontsize=10)
        ax.set_xlabel(FREQUENCY_LABEL if i == n_rows - 1 else "")
        if j == 0 or not sharey:
            ax.set_ylabel(y_label if j == 0 else "")
        if panel.empty:
            ax.text(0.5, 0.5, "no counts released", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif not legend_outside:
            ax.legend(loc="best", frameon=True)
    for k in range(len(cells), n_rows * n_cols):
        axes[k // n_cols][k % n_cols].set_visible(False)
    if legend_outside:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles, [lab.split(",")[0] for lab in labels], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8
        )
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def long_tail(counts: pd.DataFrame, *, hue: str, col: str) -> plt.Figure:
    """Concept counts sorted in decreasing order (rank vs count, log-log), one panel per ``col``."""
    cols = list(counts[col].drop_duplicates())
    fig, axes = plt.subplots(1, len(cols), squeeze=False, figsize=(4.2 * len(cols), 3.4), sharey=True)
    for ax, cv in zip(axes[0], cols):
        for h, group in counts[counts[col] == cv].groupby(hue, sort=False):
            values = np.sort(group["count"].to_numpy())[::-1]
            values = values[values > 0]
            ax.plot(np.arange(1, len(values) + 1), values, label=str(h), linewidth=1.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(str(cv))
        ax.set_xlabel("Concept rank")
        ax.legend()
    axes[0][0].set_ylabel(FREQUENCY_LABEL)
    fig.tight_layout()
    return fig


def correlation_heatmaps(matrices: dict[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """Annotated heatmaps of correlation matrices, one per entry."""
    fig, axes = plt.subplots(1, len(matrices), squeeze=False, figsize=(4.3 * len(matrices), 3.8))
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        sns.heatmap(matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar=False, square=True)
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def scatter_grid(points: pd.DataFrame, *, x: str, y: str, col: str, x_label: str, y_label: str) -> plt.Figure:
    """Log-log scatter of two counts per concept, one panel per ``col``, with the y = x line."""
    cols = list(points[col].drop_duplicates())
    fig, axes = plt.subplots(1, len(cols), squeeze=False, figsize=(3.8 * len(cols), 3.6))
    for ax, cv in zip(axes[0], cols):
        panel = points[points[col] == cv]
        xs, ys = panel[x].clip(lower=1), panel[y].clip(lower=1)
        ax.scatter(xs, ys, s=4, alpha=0.35, edgecolors="none")
        top = max(float(xs.max()), float(ys.max()), 10.0)
        ax.plot([1, top], [1, top], color="black", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(str(cv))
        ax.set_xlabel(x_label)
    axes[0][0].set_ylabel(y_label)
    fig.tight_layout()
    return fig


def let_it_wag_scatter(
    table: pd.DataFrame, fits: pd.DataFrame, split: float, yours: pd.DataFrame | None = None
) -> plt.Figure:
    """Let It Wag! vs ImageNet top-1 per model, coloured by pretraining data, with the two least-squares lines.

    ``yours``: models evaluated here (``letitwag.user_models``: model, imagenet_top1 = their reference set's
    top-1, let_it_wag_top1 = their built set's), drawn as labelled black stars beside the release's models."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    sns.scatterplot(
        data=table,
        x="imagenet_top1",
        y="let_it_wag_top1",
        hue="pretraining_data",
        style="pretraining_data",
        s=60,
        ax=ax,
    )
    for _, fit in fits.iterrows():
        if not np.isfinite(fit["slope"]):
            continue
        group = table[(table["imagenet_top1"] < split) == (fit["group"] == "below")]["imagenet_top1"]
        xs = np.linspace(group.min(), group.max(), 20)  # each line over the models it was fitted to
        ax.plot(
            xs,
            fit["slope"] * xs + fit["intercept"],
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"{fit['group']} {split:g}%: slope {fit['slope']:.2f}",
        )
    if yours is not None and len(yours):
        ax.scatter(yours["imagenet_top1"], yours["let_it_wag_top1"], marker="*", s=160, color="black",
                   label="yours (x: reference set)", zorder=5)  # fmt: skip
        for _, row in yours.iterrows():
            ax.annotate(row["model"], (row["imagenet_top1"], row["let_it_wag_top1"]), fontsize=7,
                        xytext=(4, -8), textcoords="offset points")  # fmt: skip
    lim = [0, 100]
    ax.plot(lim, lim, color="grey", linewidth=0.8, linestyle=":", label="y = x")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("ImageNet zero-shot top-1 (%)")
    ax.set_ylabel("Let It Wag! zero-shot top-1 (%)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def slope_forest(fits: pd.DataFrame, *, label: str, hue: str, x_label: str) -> plt.Figure:
    """Slopes with their bootstrap 95% CIs, one row per ``label`` value and one dodged marker per ``hue``."""
    labels = list(fits[label].drop_duplicates())
    hues = list(fits[hue].drop_duplicates())
    palette = sns.color_palette("colorblind", n_colors=len(hues))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) * max(1, len(hues) / 2) + 1.2))
    offsets = np.linspace(-0.3, 0.3, len(hues)) if len(hues) > 1 else [0.0]
    for k, h in enumerate(hues):
        part = fits[fits[hue] == h].set_index(label).reindex(labels)
        ys = np.arange(len(labels)) + offsets[k]
        err = np.vstack(
            [part["slope_per_decade"] - part["slope_ci_low"], part["slope_ci_high"] - part["slope_per_decade"]]
        )
        ax.errorbar(part["slope_per_decade"], ys, xerr=err, fmt="o", color=palette[k], capsize=2, label=str(h))
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(x_label)
    ax.legend(title=hue.replace("_", " "), fontsize=8)
    fig.tight_layout()
    return fig


def bins_sensitivity_plot(sensitivity: pd.DataFrame, *, curve: str, y_label: str) -> plt.Figure:
    """Binned r against the number of bin edges, one line per ``curve``."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=sensitivity, x="n_edges", y="binned_r", hue=curve, marker="o", ax=ax)
    ax.set_xlabel("Number of bin edges")
    ax.set_ylabel(y_label)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
