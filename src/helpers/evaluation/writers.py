"""Writing evaluations: tidy schema-checked Parquet and the release's JSON layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from helpers import schemas
from helpers.evaluation.embeddings import atomic_write
from helpers.evaluation.specs import NO_PROMPT, OVERALL, RELEASE_METRIC, TASKS

# ============================================================================================ writers


def _value_in_range(df: pd.DataFrame) -> pd.Series:
    """Percent for zero-shot, fraction for retrieval."""
    upper = np.where(df["task"] == "zero_shot", 100.0, 1.0)
    return (df["value"] >= 0.0) & (df["value"] <= upper)


def _metric_fits_task(df: pd.DataFrame) -> pd.Series:
    zs = (df["task"] == "zero_shot") & (df["metric"] == "top1")
    ret = df["metric"].str.fullmatch(r"(i2t|t2i)_k=[1-9]\d*").fillna(False)
    ret = (df["task"] == "retrieval") & ret & (df["prompt"] == NO_PROMPT)
    return zs | ret


EVALUATIONS = pa.DataFrameSchema(
    {
        "model": pa.Column(str),
        "dataset": pa.Column(str),
        "task": pa.Column(str, pa.Check.isin(list(TASKS))),
        "prompt": pa.Column(str),
        "concept": pa.Column(str),
        "metric": pa.Column(str),
        "value": pa.Column(float),
        "n": pa.Column("int64", pa.Check.gt(0)),
    },
    checks=[
        pa.Check(_value_in_range, error="value out of range: percent for zero_shot, fraction for retrieval"),
        pa.Check(_metric_fits_task, error="metric does not fit the task (top1 / i2t_k=K, t2i_k=K with prompt '-')"),
    ],
    unique=["model", "dataset", "task", "prompt", "concept", "metric"],
    strict=True,
    name="evaluations",
)


def write_evaluations(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate against ``EVALUATIONS`` and write the tidy Parquet atomically."""
    return schemas.write_table(df, EVALUATIONS, Path(path))


def read_evaluations(path: str | os.PathLike) -> pd.DataFrame:
    """Read the tidy Parquet back, schema-checked."""
    return schemas.read_table(Path(path), EVALUATIONS)


def _overall(group: pd.DataFrame) -> float:
    """The ``OVERALL`` row's value; without one, the query-weighted mean of the per-concept rows."""
    row = group[group["concept"] == OVERALL]
    if len(row):
        return float(row["value"].iloc[0])
    return float(np.average(group["value"], weights=group["n"]))


def to_release_json(df: pd.DataFrame, out_dir: str | os.PathLike, *, merge: bool = False) -> list[Path]:
    """Write the release's JSON files under ``out_dir`` (a release-like root), one per dataset and variant.

    ``zero_shot_evaluations/{dataset}_{prompt}_results.json`` = ``{model: {"full": %, "classwise": {class: %}}}``
    and ``retrieval_evaluations/{dataset}_{i2t|t2i}_k={k}_results.json`` = ``{model: {"full": fraction,
    "conceptwise": {concept: fraction}}}``, so ``helpers.release.tidy.zero_shot`` / ``retrieval`` read them
    unchanged. ``merge=True`` keeps the other models already in an existing file (one model per run).
    """
    df = EVALUATIONS.validate(df, lazy=True)
    bad = sorted({d for d in df["dataset"] if "_" in d or not d})
    if bad:
        raise ValueError(f"dataset names {bad} contain '_': release file names split on it; use '-' instead")
    out_dir = Path(out_dir)
    written = []
    for (task, dataset, prompt, metric), group in df.groupby(["task", "dataset", "prompt", "metric"], sort=True):
        if task == "zero_shot":
            folder, fname, inner = "zero_shot_evaluations", f"{dataset}_{prompt}_results.json", "classwise"
        else:
            m = RELEASE_METRIC.match(metric)
            folder, fname = "retrieval_evaluations", f"{dataset}_{m['direction']}_k={int(m['k'])}_results.json"
            inner = "conceptwise"
        path = out_dir / folder / fname
        data: dict[str, Any] = {}
        if merge and path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
        for model, rows in group.groupby("model", sort=True):
            per = rows[rows["concept"] != OVERALL]
            data[model] = {"full": _overall(rows), inner: dict(zip(per["concept"], per["value"].astype(float)))}
        atomic_write(path, lambda fh, d=data: fh.write(json.dumps(d, indent=1, ensure_ascii=False) + "\n"), "w")
        written.append(path)
    return written
