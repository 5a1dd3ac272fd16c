"""The study's headline numbers as small JSON files, declared as DVC ``metrics:`` by the stages that compute them.

``dvc metrics show`` lists them and ``dvc metrics diff`` compares them across commits and experiments:

* ``reports/metrics/log_linear_fits.json`` (stage ``log_linear_fits``): how many of the r values printed in the legends of the
  authors' zero-shot figures are reproduced, and the concept-level slope (accuracy points per decade of
  matched frequency, class prompts, zero counts mapped to 1) of each model, with its bootstrap CI;
* ``misalignment.json`` (stage ``misalignment``): the release's misalignment degree per pretraining set, with
  both of the study's denominators (Udandarao et al. 2024, Sec. 6);
* ``synthetic_validation.json`` (stage ``synthetic_validation``): precision and recall of the text, image and
  matched estimates against the synthetic world's truth, and the estimated vs true misalignment.

Every value is a plain JSON number (NaN becomes ``null``); nested keys become dotted names in ``dvc metrics``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

#: the fits behind the headline slopes: the README's concept-level table (class prompts, matched counts)
HEADLINE_FIT = {
    "task": "zero_shot",
    "prompt": "class",
    "count_type": "integrated_tlemmatized_i0.7",
    "zero_rule": "to_one",
}


def _number(value: Any) -> float | int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, bool):
        return int(value)
    number = float(value)
    if math.isnan(number):
        return None
    return int(number) if number.is_integer() and not isinstance(value, float) else number


def _require(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} for the metrics")


def fit_metrics(fits: pd.DataFrame, legend_check: pd.DataFrame) -> dict:
    """``{"legend": {"matches", "values"}, "slope_per_decade": {pretrain: {model: {"slope", "ci_low", "ci_high"}}}}``.

    ``fits`` is ``schemas.FITS`` (helpers.analysis.fits.release_fits); ``legend_check`` is
    ``fits.paper_legend_check``'s table (a boolean ``matches`` per printed value). Raises ``ValueError`` naming
    a missing column.
    """
    _require(legend_check, ["matches"], "paper legend check")
    _require(fits, [*HEADLINE_FIT, "pretrain", "model", "slope_per_decade", "slope_ci_low", "slope_ci_high"], "fits")
    rows = fits
    for column, value in HEADLINE_FIT.items():
        rows = rows[rows[column] == value]
    slopes: dict[str, dict] = {}
    for row in rows.itertuples(index=False):
        slopes.setdefault(str(row.pretrain), {})[str(row.model)] = {
            "slope": _number(row.slope_per_decade),
            "ci_low": _number(row.slope_ci_low),
            "ci_high": _number(row.slope_ci_high),
        }
    matches = legend_check["matches"].astype(bool)
    return {"legend": {"matches": int(matches.sum()), "values": int(len(matches))}, "slope_per_decade": slopes}


def misalignment_metrics(misalignment: pd.DataFrame) -> dict:
    """``{pretrain: {"extracted_size", "fixed_size"}}``: misalignment degrees (fractions) of the release's table.

    ``misalignment`` is the tidy release table ``misalignment`` (``schemas.MISALIGNMENT``).
    """
    _require(misalignment, ["pretrain", "degree_extracted_size", "degree_fixed_size"], "misalignment")
    return {
        str(row.pretrain): {
            "extracted_size": _number(row.degree_extracted_size),
            "fixed_size": _number(row.degree_fixed_size),
        }
        for row in misalignment.itertuples(index=False)
    }


def validation_metrics(report: pd.DataFrame) -> dict:
    """The synthetic world's headline numbers from ``synthetic.validation.validation_report``.

    ``{"text": {"precision", "recall"}, <image corpus>: {"image": {...}, "matched": {...}, "misalignment":
    {"estimated", "true", "estimated_fixed", "true_fixed"}}}``; precision and recall are pair-level fractions,
    at the operating threshold (rows with ``operating`` False, the other thresholds, are left out).
    """
    _require(report, ["image_corpus", "method", "precision", "recall", "estimated", "true"], "synthetic validation")
    if "operating" in report.columns:  # the rows at other or calibrated thresholds are the P/R curve, not headlines
        report = report[~report["operating"].eq(False)]
    out: dict[str, dict] = {}
    for row in report.itertuples(index=False):
        if row.method == "text":
            out["text"] = {"precision": _number(row.precision), "recall": _number(row.recall)}
        elif row.method == "misalignment":
            out.setdefault(str(row.image_corpus), {})["misalignment"] = {
                key: _number(getattr(row, key, None)) for key in ("estimated", "true", "estimated_fixed", "true_fixed")
            }
        else:
            out.setdefault(str(row.image_corpus), {})[str(row.method)] = {
                "precision": _number(row.precision),
                "recall": _number(row.recall),
            }
    return out


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as indented JSON (keys sorted, strict: no NaN) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


__all__ = ["HEADLINE_FIT", "fit_metrics", "misalignment_metrics", "validation_metrics", "write_metrics"]
