"""helpers.analysis.plotting: saving figures and the figure types, on small synthetic frames."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers.analysis import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _curve(model: str, *, r: float, p: float, means, ns, **labels) -> pd.DataFrame:
    k = len(means)
    return pd.DataFrame(
        {
            "frequency": np.logspace(0, k - 1, k),
            "mean": means,
            "n": ns,
            "r": r,
            "p": p,
            "model": model,
            **labels,
        }
    )


@pytest.fixture
def curves() -> pd.DataFrame:
    """Two models x two prompts x three count types; RN50 on 'simple' has two empty bins."""
    frames = []
    for prompt in ("class", "simple"):
        for count_type in ("text", "image", "matched"):
            frames.append(
                _curve(
                    "RN50",
                    r=0.97,
                    p=0.001,
                    means=[10, 20, 30, 40, 50],
                    ns=[5, 5, 5, 5, 5],
                    prompt=prompt,
                    count_type=count_type,
                )
            )
            ns = [5, 0, 5, 0, 5] if prompt == "simple" else [5, 5, 5, 5, 5]
            frames.append(
                _curve("ViT-B-16", r=0.42, p=0.2, means=[12, 0, 25, 0, 45], ns=ns, prompt=prompt, count_type=count_type)
            )
    return pd.concat(frames, ignore_index=True)


def _visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# --- save_figure ---------------------------------------------------------------------------------------------


def test_save_figure_writes_png_and_pdf_for_a_stem_with_dots(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    stem = tmp_path / "new" / "t2i_integrated_tlemmatized_i0.7"
    written = plotting.save_figure(fig, stem, dpi=30)
    expected = [
        tmp_path / "new" / "t2i_integrated_tlemmatized_i0.7.png",
        tmp_path / "new" / "t2i_integrated_tlemmatized_i0.7.pdf",
    ]
    assert written == expected
    for path in expected:
        assert path.is_file() and path.stat().st_size > 0
    assert expected[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert expected[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(p.name for p in expected)


def test_set_style_runs():
    plotting.set_style()


# --- curve_grid ----------------------------------------------------------------------------------------------


def test_curve_grid_with_a_row_variable_has_one_panel_per_row_and_col(curves):
    fig = plotting.curve_grid(curves, row="prompt", col="count_type", title="t")
    axes = _visible_axes(fig)
    assert len(axes) == 2 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["class | text", "class | image", "class | matched"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert axes[0].get_ylabel() == "Mean score"
    assert axes[-1].get_xlabel() == plotting.FREQUENCY_LABEL and axes[0].get_xlabel() == ""


def test_curve_grid_legend_shows_r_with_a_star_only_when_significant(curves):
    fig = plotting.curve_grid(curves, row="prompt", col="count_type")
    for ax in _visible_axes(fig):
        assert _legend_texts(ax) == ["RN50, r=0.97*", "ViT-B-16, r=0.42"]


def test_curve_grid_legend_says_n_a_for_an_undefined_r(curves):
    curves = curves.assign(r=np.where(curves["model"] == "RN50", np.nan, curves["r"]))
    fig = plotting.curve_grid(curves, row=None, col="count_type", col_order=["text"])
    assert _legend_texts(fig.axes[0])[0] == "RN50, r=n/a"


def test_curve_grid_wraps_columns_when_row_is_none(curves):
    one_prompt = curves[curves["prompt"] == "class"]
    fig = plotting.curve_grid(one_prompt, row=None, col="count_type", col_wrap=2)
    assert len(fig.axes) == 4  # a 2 x 2 grid ...
    visible = _visible_axes(fig)
    assert len(visible) == 3  # ... with the unused fourth panel hidden
    assert [ax.get_title() for ax in visible] == ["text", "image", "matched"]


def test_curve_grid_does_not_draw_empty_bins(curves):
    fig = plotting.curve_grid(curves, row="prompt", col="count_type", row_order=["class", "simple"], col_order=["text"])
    class_ax, simple_ax = _visible_axes(fig)
    lengths = {line.get_label().split(",")[0]: len(line.get_xdata()) for line in simple_ax.get_lines()}
    assert lengths == {"RN50": 5, "ViT-B-16": 3}
    drawn = [line for line in simple_ax.get_lines() if line.get_label().startswith("ViT")][0]
    assert list(drawn.get_ydata()) == [12, 25, 45]
    assert all(len(line.get_xdata()) == 5 for line in class_ax.get_lines())


def test_curve_grid_empty_panel_says_no_counts_released(curves):
    fig = plotting.curve_grid(curves, row=None, col="count_type", col_order=["text", "not released"])
    empty = _visible_axes(fig)[1]
    assert empty.get_lines() == []
    assert "no counts released" in [t.get_text() for t in empty.texts]
    assert empty.get_legend() is None


def test_curve_grid_legend_outside_puts_one_legend_on_the_figure(curves):
    fig = plotting.curve_grid(curves, row="prompt", col="count_type", legend_outside=True)
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["RN50", "ViT-B-16"]


# --- the other figure types -----------------------------------------------------------------------------------


def test_long_tail_returns_a_figure_with_one_panel_per_kind():
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(
        [
            {"pretrain": p, "kind": k, "concept": f"c{i}", "count": int(c)}
            for p in ("cc3m", "cc12m")
            for k in ("text", "image")
            for i, c in enumerate(rng.zipf(1.5, size=30) - 1)
        ]
    )
    fig = plotting.long_tail(counts, hue="pretrain", col="kind")
    assert isinstance(fig, plt.Figure)
    assert [ax.get_title() for ax in fig.axes] == ["text", "image"]
    # zeros are not drawn on the log axis; the ranks start at 1
    line = fig.axes[0].get_lines()[0]
    sel = counts[(counts["kind"] == "text") & (counts["pretrain"] == "cc3m")]["count"]
    assert len(line.get_xdata()) == int((sel > 0).sum()) and line.get_xdata()[0] == 1


def test_correlation_heatmaps_returns_a_figure_per_matrix():
    names = ["cc3m", "cc12m", "yfcc15m"]
    m = pd.DataFrame([[1.0, 0.8, 0.7], [0.8, 1.0, 0.9], [0.7, 0.9, 1.0]], index=names, columns=names)
    fig = plotting.correlation_heatmaps({"text": m, "image": m}, title="Spearman r")
    assert isinstance(fig, plt.Figure)
    assert [ax.get_title() for ax in fig.axes] == ["text", "image"]
    assert "0.80" in [t.get_text() for t in fig.axes[0].texts]


def test_scatter_grid_returns_a_figure_per_pretrain_with_zero_counts():
    points = pd.DataFrame(
        {"pretrain": ["a"] * 4 + ["b"] * 4, "text": [0, 1, 10, 100] * 2, "matched": [0, 0, 5, 80] * 2}
    )
    fig = plotting.scatter_grid(points, x="text", y="matched", col="pretrain", x_label="text", y_label="matched")
    assert isinstance(fig, plt.Figure)
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"


def test_let_it_wag_scatter_draws_each_finite_fit_line():
    table = pd.DataFrame(
        {
            "model": [f"m{i}" for i in range(6)],
            "imagenet_top1": [20.0, 30.0, 40.0, 60.0, 70.0, 80.0],
            "let_it_wag_top1": [10.0, 15.0, 20.0, 40.0, 55.0, 70.0],
            "pretraining_data": ["cc3m", "cc3m", "yfcc15m", "laion400m", "laion400m", "laion2b"],
        }
    )
    fits = pd.DataFrame(
        {"group": ["below", "above"], "n_models": [3, 3], "slope": [0.5, np.nan], "intercept": [0.0, np.nan]}
    )
    fig = plotting.let_it_wag_scatter(table, fits, 50.0)
    assert isinstance(fig, plt.Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "below 50%: slope 0.50" in labels
    assert not any(label.startswith("above") for label in labels)
    fit_line = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("below")][0]
    assert fit_line.get_xdata().min() == 20.0 and fit_line.get_xdata().max() == 40.0
