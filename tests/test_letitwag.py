"""helpers.analysis.letitwag: the model table and the two least-squares lines below / above the split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.analysis import letitwag
from helpers.release import tidy


def _table(xs, ys) -> pd.DataFrame:
    return pd.DataFrame({"model": [f"m{i}" for i in range(len(xs))], "imagenet_top1": xs, "let_it_wag_top1": ys})


def test_split_fits_recovers_exact_lines_below_and_above_the_split():
    below = np.array([10.0, 20.0, 35.0, 49.9])
    above = np.array([50.0, 60.0, 75.0, 90.0])  # 50 itself is 'above'
    table = _table(np.r_[below, above], np.r_[0.5 * below + 1.0, 2.0 * above - 60.0])
    fits = letitwag.split_fits(table, split=50.0).set_index("group")
    assert list(fits.index) == ["below", "above"]
    assert fits.loc["below", "n_models"] == 4 and fits.loc["above", "n_models"] == 4
    assert fits.loc["below", "slope"] == pytest.approx(0.5)
    assert fits.loc["below", "intercept"] == pytest.approx(1.0)
    assert fits.loc["above", "slope"] == pytest.approx(2.0)
    assert fits.loc["above", "intercept"] == pytest.approx(-60.0)


def test_split_fits_respects_a_different_split():
    xs = np.array([10.0, 20.0, 30.0, 40.0])
    fits = letitwag.split_fits(_table(xs, xs - 5), split=25.0).set_index("group")
    assert fits["n_models"].to_dict() == {"below": 2, "above": 2}
    assert fits["slope"].tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("xs", [[10.0, 20.0, 60.0], [70.0], []])
def test_split_fits_with_fewer_than_two_models_in_a_group_is_nan(xs):
    xs = np.array(xs)
    fits = letitwag.split_fits(_table(xs, xs / 2), split=50.0).set_index("group")
    for group in ("below", "above"):
        count = int((xs < 50).sum()) if group == "below" else int((xs >= 50).sum())
        assert fits.loc[group, "n_models"] == count
        if count < 2:
            assert np.isnan(fits.loc[group, "slope"]) and np.isnan(fits.loc[group, "intercept"])
        else:
            assert fits.loc[group, "slope"] == pytest.approx(0.5)


def _overall(models_values: dict[str, float]) -> pd.DataFrame:
    rows = [
        {"task": "let_it_wag", "dataset": "let_it_wag", "variant": "ensemble", "model": m, "value": v}
        for m, v in models_values.items()
    ]
    rows.append(
        {
            "task": "zero_shot",
            "dataset": "imagenet",
            "variant": "ensemble",
            "model": "backboneRN50_pretrainedcc3m",
            "value": 99.0,
        }
    )  # not a Let It Wag! row
    return pd.DataFrame(rows)


def test_model_table_builds_one_row_per_let_it_wag_model_sorted_by_imagenet():
    overall = _overall({"backboneViT-B-32_pretrainedlaion2b": 50.0, "backboneRN50_pretrainedcc3m": 10.0})
    imagenet = pd.DataFrame(
        {
            "model": ["backboneRN50_pretrainedcc3m", "backboneViT-B-32_pretrainedlaion2b", "other"],
            "imagenet_top1": [20.0, 66.0, 1.0],
            "source": "s",
        }
    )
    table = letitwag.model_table(overall, imagenet)
    assert table["model"].tolist() == ["backboneRN50_pretrainedcc3m", "backboneViT-B-32_pretrainedlaion2b"]
    assert table["backbone"].tolist() == ["RN50", "ViT-B-32"]
    assert table["pretraining_data"].tolist() == ["cc3m", "laion2b"]
    assert table["let_it_wag_top1"].tolist() == [10.0, 50.0]
    assert table["gap"].tolist() == pytest.approx([10.0, 16.0])


def test_model_table_names_the_models_without_an_imagenet_accuracy():
    overall = _overall(
        {
            "backboneRN50_pretrainedcc3m": 10.0,
            "backboneViT-H-14_pretrainedlaion2b": 60.0,
            "backboneViT-g-14_pretrainedlaion2b": 61.0,
        }
    )
    imagenet = pd.DataFrame({"model": ["backboneRN50_pretrainedcc3m"], "imagenet_top1": [20.0], "source": "s"})
    with pytest.raises(ValueError) as err:
        letitwag.model_table(overall, imagenet)
    message = str(err.value)
    assert "backboneViT-H-14_pretrainedlaion2b" in message and "backboneViT-g-14_pretrainedlaion2b" in message
    assert "backboneRN50_pretrainedcc3m" not in message


# --- the release ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_models(tidy_tables) -> pd.DataFrame:
    return letitwag.model_table(tidy.load(tidy_tables, "overall"), tidy.load(tidy_tables, "imagenet_accuracy"))


def test_release_has_40_let_it_wag_models_all_with_an_imagenet_accuracy(release_models):
    assert len(release_models) == 40 and release_models["model"].is_unique
    assert release_models["imagenet_top1"].notna().all()
    assert release_models["imagenet_top1"].between(0, 100).all()
    assert release_models["let_it_wag_top1"].between(0, 100).all()


def test_release_gap_closes_faster_for_stronger_models(release_models, params):
    split = params["figures"]["let_it_wag_split"]
    fits = letitwag.split_fits(release_models, split=split).set_index("group")
    assert fits["n_models"].sum() == 40 and (fits["n_models"] >= 2).all()
    assert fits.loc["above", "slope"] > fits.loc["below", "slope"]
