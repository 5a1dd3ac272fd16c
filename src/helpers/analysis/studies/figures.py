"""A study's figures: accuracy vs frequency as in the paper, and the concept-level scatter with its OLS line.

Both draw from the study's points (``join.STUDY_POINTS``) and fits; x is log10 frequency with zeros read as
1 (the binned statistic's rule; ``zero_rule: dropped`` leaves zero counts out of the scatter).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from helpers.analysis import loglinear
from helpers.analysis.studies.spec import Study

PANEL_SIZE = (3.0, 2.6)  # inches per panel: labels stay readable at the report's width
WRAP = 3  # panels per row of the concept scatter


def score_kind(task: str, prompt: str, metric: str) -> str:
    """Panel name of a score: ``zero-shot, class prompts`` or ``retrieval i2t_k=1``."""
    return f"zero-shot, {prompt} prompts" if task == "zero_shot" else f"retrieval {metric}"


def _label(r: float, p: float) -> str:
    star = "*" if np.isfinite(p) and p < 0.05 else ""
    return f"binned r={r:.2f}{star}" if np.isfinite(r) else "binned r=n/a"


def accuracy_vs_frequency(points: pd.DataFrame, study: Study, model: str, task: str) -> plt.Figure:
    """One model and task: a panel per count type (rows) x prompt set or retrieval direction (columns).

    Each panel shows the concepts (points) and the authors' binned means over the plotted bins (lines), the
    binned Pearson r in the legend as in the paper's figures (* where p < 0.05). Retrieval panels draw one
    line per k (points of the smallest k), as the paper's retrieval figures do.
    """
    data = points[(points["model"] == model) & (points["task"] == task)]
    if task == "zero_shot":
        data = data.assign(column=data["prompt"] + " prompts", line=data["prompt"])
    else:
        parts = data["metric"].str.extract(r"^(?P<direction>i2t|t2i)_k=(?P<k>\d+)$")
        data = data.assign(column=parts["direction"] + " recall@k", line="k=" + parts["k"], k=parts["k"].astype(int))
    count_types = [c for c in study.count_types() if c in set(data["count_type"])]
    columns = list(dict.fromkeys(data["column"]))
    fig, axes = plt.subplots(
        len(count_types), len(columns), squeeze=False, sharex="row", sharey=True,
        figsize=(PANEL_SIZE[0] * len(columns) + 0.4, PANEL_SIZE[1] * len(count_types) + 0.6),
    )  # fmt: skip
    lines = list(dict.fromkeys(data.sort_values("line", key=_natural)["line"]))
    palette = dict(zip(lines, sns.color_palette("colorblind", len(lines))))
    stats = study.statistics
    for i, count_type in enumerate(count_types):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            panel = data[(data["count_type"] == count_type) & (data["column"] == column)]
            shown = panel[panel["k"] == panel["k"].min()] if task == "retrieval" else panel
            x = np.log10(np.maximum(shown["count"].to_numpy(), 1))
            ax.scatter(x, shown["score"], s=9, alpha=0.35, color="grey", label="_concepts")
            for line in lines:
                group = panel[panel["line"] == line]
                if group.empty:
                    continue
                res = loglinear.binned_statistic(
                    group["count"], group["score"], n_edges=stats.n_edges[task], plotted=stats.plotted[task]
                )
                curve = res.curve()
                label = _label(res.r, res.p) if task == "zero_shot" else f"{line}, {_label(res.r, res.p)}"
                ax.plot(np.log10(curve["frequency"]), curve["mean"], marker="o", ms=4, color=palette[line], label=label)
            ax.legend(loc="upper left", fontsize=8.5, frameon=True)
            ax.set_ylim(-3, 103)
            if i == 0:  # column headings once, row headings on the y axis: long count-type names never collide
                ax.set_title(column, fontsize=11)
            ax.set_xlabel("log10 frequency" if i == len(count_types) - 1 else "")
            ax.set_ylabel(row_label(count_type) if j == 0 else "")
    what = "zero-shot top-1 accuracy" if task == "zero_shot" else "retrieval recall"
    fig.suptitle(f"Study {study.name}, {model}:\nper-concept {what} vs pretraining frequency", fontsize=12)
    fig.tight_layout()
    return fig


def row_label(count_type: str) -> str:
    """A grid row's y label: ``image:synthetic_clip`` (a count type of one tagger) on three short lines, so the
    label fits beside the panel instead of running off the figure's left edge."""
    kind, _, tagger = count_type.partition(":")
    return f"{kind} counts\n{tagger} tagger\nscore (%)" if tagger else f"{kind} counts\nscore (%)"


def _natural(values: pd.Series) -> pd.Series:
    """Sort key: ``k=10`` after ``k=5``."""
    k = pd.to_numeric(values.str.extract(r"^k=(\d+)$")[0], errors="coerce")
    return k.fillna(-1).astype(int)


def concept_scatter(points: pd.DataFrame, fits: pd.DataFrame, study: Study) -> plt.Figure:
    """Concept-level scatter of the headline score (first zero-shot prompt set, else first retrieval metric)
    per model (rows) and count type (columns), with the OLS line and its 95% CI band (seaborn ``regplot``);
    the panel title gives the slope per decade with its bootstrap CI from ``fits``."""
    rule = study.statistics.zero_rule
    zs = points[points["task"] == "zero_shot"]
    main = zs if len(zs) else points
    kind_row = main.iloc[0]
    sel = points[(points["task"] == kind_row["task"]) & (points["prompt"] == kind_row["prompt"])]
    sel = sel[sel["metric"] == kind_row["metric"]]
    kind = score_kind(kind_row["task"], kind_row["prompt"], kind_row["metric"])
    models = list(dict.fromkeys(sel["model"]))
    count_types = [c for c in study.count_types() if c in set(sel["count_type"])]
    n_cols = min(WRAP, len(count_types))
    per_model = -(-len(count_types) // n_cols)
    fig, axes = plt.subplots(
        len(models) * per_model, n_cols, squeeze=False, sharey=True,
        figsize=(PANEL_SIZE[0] * n_cols + 0.4, (PANEL_SIZE[1] + 0.3) * len(models) * per_model + 0.6),
    )  # fmt: skip
    for ax in axes.flat[len(models) * len(count_types) :]:
        ax.set_axis_off()
    for i, model in enumerate(models):
        for n, count_type in enumerate(count_types):
            row, j = i * per_model + n // n_cols, n % n_cols
            ax = axes[row][j]
            panel = sel[(sel["model"] == model) & (sel["count_type"] == count_type)]
            x, keep = loglinear.log10_frequency(panel["count"].to_numpy(), rule)
            sns.regplot(x=x, y=panel["score"].to_numpy()[keep], ci=95, ax=ax, scatter_kws={"s": 10, "alpha": 0.5})
            fit = fits[
                (fits["model"] == model) & (fits["count_type"] == count_type) & (fits["zero_rule"] == rule)
                & (fits["task"] == kind_row["task"]) & (fits["prompt"] == kind_row["prompt"])
                & (fits["metric"] == kind_row["metric"])
            ]  # fmt: skip
            title = f"{count_type} counts"
            if len(fit):
                f = fit.iloc[0]
                title += (
                    f"\nslope {f['slope_per_decade']:.1f} [{f['slope_ci_low']:.1f}, {f['slope_ci_high']:.1f}]/decade"
                )
            ax.set_title(title, fontsize=10)
            ax.set_ylim(-3, 103)
            ax.set_xlabel("log10 frequency")
            ax.set_ylabel(f"{model}\nscore (%)" if j == 0 else "")
    fig.suptitle(f"Study {study.name}: {kind},\nOLS fit with 95% CI (zeros {rule.replace('_', ' ')})", fontsize=12)
    fig.tight_layout()
    return fig
