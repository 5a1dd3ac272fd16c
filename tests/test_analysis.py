"""(frequency, performance) rows from the tidy tables, their fits, and the paper's published numbers."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from helpers import schemas
from helpers.analysis import fits as analysis
from helpers.analysis import loglinear
from helpers.release import tidy

MATCHED = "integrated_tlemmatized_i0.7"
KEY_COLUMNS = ["task", "pretrain", "model", "prompt", "count_type", "metric"]
RECORD_COLUMNS = {
    "zero_rule",
    "n_rows",
    "n_bins_plotted",
    "binned_r",
    "binned_p",
    "concept_pearson_r",
    "concept_pearson_p",
    "concept_spearman_r",
    "concept_spearman_p",
    "slope_per_decade",
    "slope_ci_low",
    "slope_ci_high",
    "intercept",
}


@pytest.fixture(scope="module")
def tables(tidy_tables) -> dict[str, pd.DataFrame]:
    return {name: tidy.load(tidy_tables, name) for name in ["frequencies", "zero_shot", "retrieval", "t2i"]}


@pytest.fixture(scope="module")
def zs_params(params) -> dict:
    return params["analysis"]["zero_shot"]


def _zero_shot_rows(tables, zs_params, *, pretrain, model, count_type=MATCHED, prompt="class"):
    return analysis.zero_shot_rows(
        tables["frequencies"],
        tables["zero_shot"],
        pretrain=pretrain,
        model=model,
        prompt=prompt,
        count_type=count_type,
        datasets=analysis.zero_shot_datasets(zs_params, count_type),
    )


# --- the authors' published figure legends ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model, published_r",
    [("backboneRN50_pretrainedcc3m", 0.97), ("backboneViT-B-16_pretrainedcc3m", 0.93)],
)
def test_cc3m_matched_counts_reproduce_published_binned_r(tables, zs_params, model, published_r):
    """Zero-shot figure, CC-3M, matched (integrated_tlemmatized_i0.7) counts, 'class' prompts."""
    spec = zs_params["pretrains"]["cc3m"]
    assert spec["label"] == "CC-3M" and model in spec["models"]
    assert len(zs_params["datasets"]) == 18 and zs_params["n_edges"] == 12
    assert tuple(spec["plotted_bins"]) == (1, -1)

    rows = _zero_shot_rows(tables, zs_params, pretrain="cc3m", model=model)
    assert rows.missing_datasets == [] and rows.unmatched == 0
    assert set(rows.data["dataset"]) == set(zs_params["datasets"])

    res = loglinear.binned_statistic(
        rows.data["count"], rows.data["score"], n_edges=zs_params["n_edges"], plotted=tuple(spec["plotted_bins"])
    )
    assert len(res.plotted) == 10
    assert round(res.r, 2) == published_r
    assert res.p < 0.05  # the legends mark these correlations significant

    records = analysis.fit_rows(rows, n_edges=12, plotted=(1, -1), resamples=0, seed=0)
    assert {round(r["binned_r"], 2) for r in records} == {published_r}


def test_imagenet_r_is_not_among_the_analysed_datasets(zs_params):
    assert "imagenet-r" not in zs_params["datasets"]


# --- missing datasets and substitutions ------------------------------------------------------------------


def test_missing_count_files_are_reported_not_dropped_silently(tables, zs_params):
    # YFCC-15M has no lower-cased count files for ten of the datasets.
    rows = _zero_shot_rows(
        tables, zs_params, pretrain="yfcc15m", model="backboneRN50_pretrainedyfcc15m", count_type="lowercased"
    )
    assert rows.missing_datasets == [
        "imagenet",
        "cifar100",
        "caltech101",
        "caltech256",
        "sun397",
        "country211",
        "flowers102",
        "food101",
        "oxfordpets",
        "stanfordcars",
    ]
    assert not set(rows.data["dataset"]) & set(rows.missing_datasets)
    assert rows.unmatched > 0  # partial count files for the others: counted and reported
    assert set(rows.data["dataset"]) <= set(zs_params["datasets"]) - set(rows.missing_datasets)


def test_count_type_absent_for_a_pretrain_reports_all_datasets_missing(tables, zs_params):
    rows = _zero_shot_rows(
        tables, zs_params, pretrain="laion400m", model="backboneViT-B-32_pretrainedlaion400m", count_type="rampp0.55"
    )
    assert rows.missing_datasets == zs_params["datasets"]
    assert rows.data.empty and rows.unmatched == 0
    assert analysis.fit_rows(rows, n_edges=12, plotted=(2, -1), resamples=0, seed=0) == []


def test_text_counts_leave_imagenet_sketch_out_as_the_authors_figures_do(tables, zs_params):
    assert "imagenet-sketch" not in analysis.zero_shot_datasets(zs_params, "lemmatized")
    assert "imagenet-sketch" in analysis.zero_shot_datasets(zs_params, "rampp0.7")
    assert "imagenet-sketch" in analysis.zero_shot_datasets(zs_params, MATCHED)
    rows = _zero_shot_rows(
        tables, zs_params, pretrain="cc3m", model="backboneRN50_pretrainedcc3m", count_type="lemmatized"
    )
    assert rows.missing_datasets == []
    assert "imagenet-sketch" not in set(rows.data["dataset"])


def test_paper_legend_check_reproduces_all_but_the_laion400m_text_figure(tables, params):
    a = params["analysis"]
    small = {
        **a,
        "bootstrap_resamples": 0,
        "retrieval": {**a["retrieval"], "metrics": []},
        "zero_shot": {
            **a["zero_shot"],
            "prompts": ["class"],
            "count_types": ["lemmatized", "rampp0.7", "integrated_tlemmatized_i0.7"],
        },
    }
    t2i_empty = {**tables, "t2i": tables["t2i"].iloc[:0]}
    fits, _ = analysis.release_fits(t2i_empty, small, progress=False)
    check = analysis.paper_legend_check(fits)
    assert len(check) == 31
    mismatched = check[~check["matches"]]
    # The released LAION-400M text counts do not reproduce that one figure (documented in the README).
    assert set(mismatched["figure"]) == {"eccv-paper-laion400m-zero-shot-log-linear-plot-text-queried-search"}
    assert len(mismatched) == 3


def test_zero_shot_rows_are_one_per_class_with_percent_scores(tables, zs_params):
    rows = _zero_shot_rows(tables, zs_params, pretrain="cc3m", model="backboneRN50_pretrainedcc3m")
    data = rows.data
    assert list(data.columns) == ["dataset", "concept", "count", "score"]
    assert not data.duplicated(["dataset", "concept"]).any()
    assert data["count"].dtype == "int64" and (data["count"] >= 0).all()
    assert data["score"].between(0, 100).all()
    zs = tables["zero_shot"]
    expected = zs[
        (zs["model"] == "backboneRN50_pretrainedcc3m")
        & (zs["prompt"] == "class")
        & zs["dataset"].isin(zs_params["datasets"])
    ]
    assert len(data) == len(expected)
    airplane = data[(data["dataset"] == "cifar10") & (data["concept"] == "airplane")]
    assert len(airplane) == 1  # cifar10's "plane" joined through its release name


# --- the join on tiny frames -------------------------------------------------------------------------------


def _freq(rows):
    return pd.DataFrame(rows, columns=["downstream", "pretrain", "method", "concept", "count"]).astype(
        {"count": "int64"}
    )


def test_join_counts_unmatched_rows_on_both_sides():
    freq = _freq([("cifar10", "p", "m", "airplane", 5), ("cifar10", "p", "m", "cat", 0)])
    zs = pd.DataFrame(
        {
            "dataset": ["cifar10", "cifar10"],
            "prompt": ["class"] * 2,
            "model": ["x"] * 2,
            "class_name": ["plane", "horse"],
            "concept": ["airplane", "horse"],
            "accuracy": [90.0, 10.0],
        }
    )
    rows = analysis.zero_shot_rows(
        freq, zs, pretrain="p", model="x", prompt="class", count_type="m", datasets=["cifar10", "dtd"]
    )
    assert rows.data.values.tolist() == [["cifar10", "airplane", 5, 90.0]]
    assert rows.unmatched == 2  # "cat" has a count but no score, "horse" a score but no count
    assert rows.missing_datasets == ["dtd"]


def test_scores_of_missing_datasets_are_not_counted_as_unmatched():
    freq = _freq([("cifar10", "p", "m", "cat", 3)])
    zs = pd.DataFrame(
        {
            "dataset": ["cifar10", "dtd"],
            "prompt": ["class"] * 2,
            "model": ["x"] * 2,
            "class_name": ["cat", "banded"],
            "concept": ["cat", "banded"],
            "accuracy": [50.0, 20.0],
        }
    )
    rows = analysis.zero_shot_rows(
        freq, zs, pretrain="p", model="x", prompt="class", count_type="m", datasets=["cifar10", "dtd"]
    )
    assert rows.missing_datasets == ["dtd"] and rows.unmatched == 0
    assert rows.data["concept"].tolist() == ["cat"]


# --- retrieval and text-to-image rows ---------------------------------------------------------------------


def test_retrieval_rows_basic_shape(tables, params):
    ret_params = params["analysis"]["retrieval"]
    rows = analysis.retrieval_rows(
        tables["frequencies"],
        tables["retrieval"],
        pretrain="cc3m",
        model="backboneRN50_pretrainedcc3m",
        metric="i2t_k=1",
        count_type=MATCHED,
        datasets=ret_params["datasets"],
    )
    data = rows.data
    assert rows.missing_datasets == []
    assert list(data.columns) == ["dataset", "concept", "count", "score"]
    assert set(data["dataset"]) == {"coco", "flickr"}
    assert len(data) > 100
    assert not data.duplicated(["dataset", "concept"]).any()
    assert data["score"].between(0, 100).all() and data["score"].max() > 1  # percent points
    ret = tables["retrieval"]
    sel = ret[(ret["model"] == "backboneRN50_pretrainedcc3m") & (ret["direction"] == "i2t") & (ret["k"] == 1)]
    recall = sel.set_index(["dataset", "concept"])["recall"]
    merged = data.set_index(["dataset", "concept"])
    np.testing.assert_allclose(merged["score"], 100 * recall.loc[merged.index])
    # Only counted concepts are analysed.
    freq = tables["frequencies"]
    counted = freq[(freq["pretrain"] == "cc3m") & (freq["method"] == MATCHED)]
    assert set(merged.index) <= set(zip(counted["downstream"], counted["concept"]))


@pytest.mark.parametrize("metric", ["i2t_k=5", "t2i_k=10"])
def test_retrieval_rows_select_direction_and_k(tables, metric):
    rows = analysis.retrieval_rows(
        tables["frequencies"],
        tables["retrieval"],
        pretrain="cc3m",
        model="backboneViT-B-16_pretrainedcc3m",
        metric=metric,
        count_type="lemmatized",
        datasets=["coco"],
    )
    direction, k = metric.split("_k=")
    ret = tables["retrieval"]
    sel = ret[
        (ret["model"] == "backboneViT-B-16_pretrainedcc3m")
        & (ret["direction"] == direction)
        & (ret["k"] == int(k))
        & (ret["dataset"] == "coco")
    ].set_index("concept")["recall"]
    got = rows.data.set_index("concept")["score"]
    np.testing.assert_allclose(got, 100 * sel.loc[got.index])


def test_t2i_rows_keep_only_concepts_with_enough_prompts(tables, params):
    t2i_params = params["analysis"]["t2i"]
    min_prompts = t2i_params["min_prompts"]
    t2i = tables["t2i"]
    model, metric = "huggingface_stable-diffusion-v1-5", "human_align"
    rows = analysis.t2i_rows(
        tables["frequencies"],
        t2i,
        pretrain=t2i_params["pretrain"],
        model=model,
        metric=metric,
        count_type=MATCHED,
        datasets=t2i_params["datasets"],
        min_prompts=min_prompts,
    )
    data = rows.data
    assert list(data.columns) == ["dataset", "concept", "count", "score"]
    assert rows.missing_datasets == []
    assert set(data["dataset"]) <= set(t2i_params["datasets"])
    # Independent computation: concepts with >= min_prompts prompt scores, intersected with the counted ones.
    sel = t2i[(t2i["model"] == model) & (t2i["metric"] == metric)]
    sizes = sel.groupby("concept")["score"].size()
    means = sel.groupby("concept")["score"].mean()
    freq = tables["frequencies"]
    counted = set(
        freq[
            (freq["pretrain"] == t2i_params["pretrain"])
            & (freq["method"] == MATCHED)
            & freq["downstream"].isin(t2i_params["datasets"])
        ]["concept"]
    )
    expected = {c for c, n in sizes.items() if n >= min_prompts} & counted
    assert len(expected) > 0
    assert set(data["concept"]) == expected
    assert (sizes.loc[data["concept"]] >= min_prompts).all()
    np.testing.assert_allclose(data["score"], means.loc[data["concept"]])


def test_t2i_min_prompts_boundary_on_tiny_frames():
    freq = _freq([("t2i", "la", "m", c, 10) for c in ["five", "six", "seven"]])
    rows_ = [("human_align", "g", c, i, float(i)) for c, n in [("five", 5), ("six", 6), ("seven", 7)] for i in range(n)]
    t2i = pd.DataFrame(rows_, columns=["metric", "model", "concept", "prompt_index", "score"])
    rows = analysis.t2i_rows(
        freq, t2i, pretrain="la", model="g", metric="human_align", count_type="m", datasets=["t2i"], min_prompts=6
    )
    assert rows.data["concept"].tolist() == ["seven", "six"]
    assert rows.data.set_index("concept")["score"].to_dict() == {"seven": 3.0, "six": 2.5}


# --- fits --------------------------------------------------------------------------------------------------


def test_fit_rows_returns_one_record_per_zero_rule_matching_the_fits_schema(tables, zs_params):
    rows = _zero_shot_rows(tables, zs_params, pretrain="cc3m", model="backboneRN50_pretrainedcc3m")
    records = analysis.fit_rows(rows, n_edges=12, plotted=(1, -1), resamples=50, seed=0)
    assert [r["zero_rule"] for r in records] == ["to_one", "dropped"]
    assert all(set(r) == RECORD_COLUMNS for r in records)
    to_one, dropped = records
    assert to_one["n_rows"] == len(rows.data)
    assert dropped["n_rows"] == int((rows.data["count"] > 0).sum()) < to_one["n_rows"]
    assert to_one["binned_r"] == dropped["binned_r"]  # the binned statistic has one zero rule (to one)
    assert to_one["n_bins_plotted"] == 10
    assert to_one["slope_ci_low"] < to_one["slope_per_decade"] < to_one["slope_ci_high"]
    key = {
        "task": "zero_shot",
        "pretrain": "cc3m",
        "model": "backboneRN50_pretrainedcc3m",
        "prompt": "class",
        "count_type": MATCHED,
        "metric": "top1",
    }
    fits = pd.DataFrame([{**key, **r} for r in records]).astype({"n_rows": "int64", "n_bins_plotted": "int64"})
    assert set(fits.columns) == set(schemas.FITS.columns)
    schemas.FITS.validate(fits, lazy=True)


def test_fit_rows_of_empty_rows_is_empty():
    rows = analysis.Rows(data=pd.DataFrame(columns=["dataset", "concept", "count", "score"]))
    assert analysis.fit_rows(rows, n_edges=12, plotted=(1, -1), resamples=10, seed=0) == []


def _small_analysis(params) -> dict:
    a = copy.deepcopy(params["analysis"])
    a["bootstrap_resamples"] = 20
    zs = a["zero_shot"]
    zs["pretrains"] = {k: zs["pretrains"][k] for k in ["cc3m", "yfcc15m"]}
    zs["prompts"] = ["class"]
    zs["count_types"] = ["lowercased", MATCHED]
    a["retrieval"]["metrics"] = ["i2t_k=1"]
    a["retrieval"]["count_types"] = [MATCHED]
    a["t2i"]["count_types"] = [MATCHED]
    return a


def _small_tables(tables) -> dict[str, pd.DataFrame]:
    t2i = tables["t2i"]
    keep = t2i["metric"].eq("human_align") & t2i["model"].isin(["craiyon_dalle-mini", "adobe_giga-gan"])
    return {**tables, "t2i": t2i[keep].reset_index(drop=True)}


def test_release_fits_on_a_reduced_config(tables, params):
    fits, notes = analysis.release_fits(_small_tables(tables), _small_analysis(params), progress=False)
    schemas.FITS.validate(fits, lazy=True)
    assert set(fits["task"]) == {"zero_shot", "retrieval", "t2i"}
    # 5 zero-shot models x 2 count types + 5 retrieval fits + 2 t2i fits, each with two zero rules
    assert len(fits) == 2 * (5 * 2 + 5 + 2)
    cc3m = fits.set_index(KEY_COLUMNS + ["zero_rule"]).loc[
        ("zero_shot", "cc3m", "backboneRN50_pretrainedcc3m", "class", MATCHED, "top1", "to_one")
    ]
    assert round(cc3m["binned_r"], 2) == 0.97
    yfcc = notes[(notes["pretrain"] == "yfcc15m") & (notes["count_type"] == "lowercased")]
    assert len(yfcc) == 3
    assert yfcc["missing_datasets"].str.startswith("imagenet,cifar100").all()
    assert (yfcc["unmatched_rows"] > 0).all()
    assert "substituted" not in notes.columns


def test_release_fits_with_no_data_reports_instead_of_crashing(tables, params):
    a = _small_analysis(params)
    a["zero_shot"]["pretrains"] = {"laion400m": params["analysis"]["zero_shot"]["pretrains"]["laion400m"]}
    a["zero_shot"]["count_types"] = ["rampp0.55"]  # absent for LAION-400M
    a["retrieval"]["count_types"] = ["rampp0.55"]
    empty_t2i = {**tables, "t2i": tables["t2i"].iloc[:0]}
    fits, notes = analysis.release_fits(empty_t2i, a, progress=False)
    assert fits.empty
    assert len(notes) > 0


# --- labels ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, label",
    [
        ("backboneViT-B-16_pretrainedcc3m", "ViT-B-16"),
        ("backboneRN50_pretrainedcc3m", "RN50"),
        ("backboneRN101_pretrainedyfcc15m", "RN101"),
        ("backboneViT-B-32_pretrainedlaion200m_train_test_sim_normalized", "ViT-B-32"),
        ("backboneViT-L-14_pretrainedlaion400m", "ViT-L-14"),
        ("craiyon_dalle-mini", "craiyon_dalle-mini"),  # not a CLIP model key: unchanged
    ],
)
def test_model_label(key, label):
    assert analysis.model_label(key) == label
