"""DVC metrics: the headline numbers written as JSON by the stages that compute them (helpers.analysis.metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers.analysis import metrics
from helpers.synthetic.validation import SYNTHETIC_VALIDATION

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _fit(pretrain, model, slope, **overrides):
    row = {**metrics.HEADLINE_FIT, "pretrain": pretrain, "model": model, "slope_per_decade": slope}
    return {**row, "slope_ci_low": slope - 1, "slope_ci_high": slope + 1, **overrides}


def test_fit_metrics_count_legend_matches_and_keep_only_the_headline_slopes():
    fits = pd.DataFrame(
        [
            _fit("cc3m", "RN50", 9.9),
            _fit("cc3m", "ViT-B-16", 8.0),
            _fit("cc12m", "RN50", 7.5),
            _fit("cc3m", "RN50", 99.0, prompt="ensemble"),  # not the headline fit
            _fit("cc3m", "RN50", 98.0, count_type="lemmatized"),
            _fit("cc3m", "RN50", 97.0, zero_rule="drop"),
        ]
    )
    legend = pd.DataFrame({"matches": [True, True, False]})
    got = metrics.fit_metrics(fits, legend)
    assert got["legend"] == {"matches": 2, "values": 3}
    assert got["slope_per_decade"] == {
        "cc3m": {
            "RN50": {"slope": 9.9, "ci_low": 8.9, "ci_high": 10.9},
            "ViT-B-16": {"slope": 8.0, "ci_low": 7.0, "ci_high": 9.0},
        },
        "cc12m": {"RN50": {"slope": 7.5, "ci_low": 6.5, "ci_high": 8.5}},
    }
    with pytest.raises(ValueError, match="fits: missing column.*slope_ci_high"):
        metrics.fit_metrics(fits.drop(columns="slope_ci_high"), legend)


def test_misalignment_metrics_give_both_denominators_per_pretraining_set():
    table = pd.DataFrame(
        {
            "pretrain": ["cc3m", "laion400m"],
            "misaligned_samples": [10, 20],
            "degree_extracted_size": [0.16, 0.5],
            "degree_fixed_size": [0.1, 0.45],
        }
    )
    assert metrics.misalignment_metrics(table) == {
        "cc3m": {"extracted_size": 0.16, "fixed_size": 0.1},
        "laion400m": {"extracted_size": 0.5, "fixed_size": 0.45},
    }


def test_validation_metrics_give_precision_recall_per_tagger_and_the_misalignment():
    rows = [
        {"method": "text", "precision": 0.9, "recall": 0.8},
        {"method": "image", "precision": 0.7, "recall": 0.6},
        {"method": "matched", "precision": 0.95, "recall": 0.5},
        {"method": "misalignment", "estimated": 0.05, "true": 0.04, "estimated_fixed": 0.03, "true_fixed": 0.02},
    ]
    one = pd.DataFrame(rows, columns=list(SYNTHETIC_VALIDATION.columns))
    report = pd.concat(
        [
            one.assign(image_corpus=["-", "synthetic", "synthetic", "synthetic"]),
            one.iloc[1:].assign(image_corpus="clip"),
        ]
    )
    got = metrics.validation_metrics(report)
    assert set(got) == {"text", "synthetic", "clip"}
    assert got["text"] == {"precision": 0.9, "recall": 0.8}
    assert got["clip"]["image"] == {"precision": 0.7, "recall": 0.6}
    assert got["synthetic"]["matched"] == {"precision": 0.95, "recall": 0.5}
    assert got["synthetic"]["misalignment"] == {
        "estimated": 0.05,
        "true": 0.04,
        "estimated_fixed": 0.03,
        "true_fixed": 0.02,
    }


def test_write_metrics_writes_strict_json_with_nan_as_null(tmp_path):
    table = pd.DataFrame({"pretrain": ["x"], "degree_extracted_size": [math.nan], "degree_fixed_size": [0.25]})
    path = metrics.write_metrics(metrics.misalignment_metrics(table), tmp_path / "deep" / "m.json")
    assert json.loads(path.read_text()) == {"x": {"extracted_size": None, "fixed_size": 0.25}}
    with pytest.raises(ValueError):
        metrics.write_metrics({"bad": math.nan}, tmp_path / "bad.json")


def _stage_metrics() -> dict[str, list[str]]:
    out = {}
    for name, spec in DVC["stages"].items():
        spec = spec.get("do", spec)
        out[name] = [m if isinstance(m, str) else next(iter(m)) for m in spec.get("metrics", [])]
    return out


def test_the_headline_stages_declare_their_metrics_and_their_notebooks_write_them():
    declared = {n: m for n, m in _stage_metrics().items() if m}
    assert set(declared) == {"log_linear_fits", "misalignment", "synthetic_validation"}
    for name, files in declared.items():
        (notebook,) = (REPO / "notebooks").glob(f"[0-9][0-9]_{name}.ipynb")
        source = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        for file in files:
            assert file.startswith("reports/metrics/") and file.endswith(".json")
            assert f'paths.reports_dir() / "metrics" / "{Path(file).name}"' in source, f"{notebook.name} writes {file}?"
        spec = DVC["stages"][name]
        assert all(spec_out != files[0] for spec_out in spec.get("outs", [])), "a metrics file is not also an out"
