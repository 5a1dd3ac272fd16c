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

PANEL_SIZE = (3.4, 3.0)  # inches per panel: labels stay readable at the report's width


def score_kind(task: str, prompt: str, metric: str) -> str:
    """Panel name of a score: ``zero-shot, class prompts`` or ``retrieval i2t_k=1``."""
    return f"zero-shot, {prompt} prompts" if task == "zero_shot" else f"retrieval {metric}"


def _kinds(points: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [score_kind(t, p, m) for t, p, m in zip(points["task"], points["prompt"], points["metric"])],
        index=points.index,
    )


def _label(r: float, p: float) -> str:
    star = "*" if np.isfinite(p) and p < 0.05 else ""
    return f"binned r={r:.2f}{star}" if np.isfinite(r) else "binned r=n/a"


def accuracy_vs_frequency(points: pd.DataFrame, study: Study, model: str) -> plt.Figure:
    """One model: a panel per count type (rows) x prompt set or retrieval metric (columns).

    Each panel shows the concepts (points) and the authors' binned means over the plotted bins (line), the
    binned Pearson r in the legend as in the paper's figures (* where p < 0.05).
    """
    data = points[points["model"] == model].assign(kind=lambda df: _kinds(df))
    count_types = [c for c in study.count_types() if c in set(data["count_type"])]
    kinds = list(dict.fromkeys(data.sort_values(["task"], ascending=False, kind="stable")["kind"]))
    fig, axes = plt.subplots(
        len(count_types), len(kinds), squeeze=False, sharex="row", sharey="col",
        figsize=(PANEL_SIZE[0] * len(kinds), PANEL_SIZE[1] * len(count_types)),
    )  # fmt: skip
    palette = sns.color_palette("colorblind", 2)
    for i, count_type in enumerate(count_types):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            panel = data[(data["count_type"] == count_type) & (data["kind"] == kind)]
            if panel.empty:
                ax.set_axis_off()
                continue
            task = panel["task"].iloc[0]
            x = np.log10(np.maximum(panel["count"].to_numpy(), 1))
            ax.scatter(x, panel["score"], s=10, alpha=0.45, color=palette[0], label="concepts")
            res = loglinear.binned_statistic(
                panel["count"],
                panel["score"],
                n_edges=study.statistics.n_edges[task],
                plotted=study.statistics.plotted[task],
            )
            curve = res.curve()
            ax.plot(
                np.log10(curve["frequency"]), curve["mean"], marker="o", color=palette[1], label=_label(res.r, res.p)
            )
            ax.legend(loc="upper left", fontsize=8, frameon=True)
            ax.set_title(f"{count_type} counts\n{kind}", fontsize=10)
            ax.set_xlabel("log10 frequency" if i == len(count_types) - 1 else "")
            ax.set_ylabel("score (%)" if j == 0 else "")
    fig.suptitle(f"Study {study.name}: {model}, per-concept score vs pretraining frequency", y=1.0)
    fig.tight_layout()
    return fig


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
    fig, axes = plt.subplots(
        len(models), len(count_types), squeeze=False, sharey=True,
        figsize=(PANEL_SIZE[0] * len(count_types), (PANEL_SIZE[1] + 0.3) * len(models)),
    )  # fmt: skip
    for i, model in enumerate(models):
        for j, count_type in enumerate(count_types):
            ax = axes[i][j]
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
            ax.set_xlabel("log10 frequency" if i == len(models) - 1 else "")
            ax.set_ylabel(f"{model}\nscore (%)" if j == 0 else "")
    fig.suptitle(f"Study {study.name}: {kind}, OLS fit with 95% CI (zeros {rule.replace('_', ' ')})", y=1.0)
    fig.tight_layout()
    return fig
