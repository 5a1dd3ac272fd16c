"""Let It Wag!: accuracy on the long-tail benchmark against ImageNet accuracy, with the authors' two lines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.evaluation.specs import OVERALL
from helpers.evaluation.writers import read_evaluations


def model_table(overall: pd.DataFrame, imagenet: pd.DataFrame) -> pd.DataFrame:
    """One row per Let It Wag! model: backbone, pretraining data, ImageNet and Let It Wag! top-1 (percent)."""
    liw = overall.query("task == 'let_it_wag'")[["model", "value"]].rename(columns={"value": "let_it_wag_top1"})
    table = liw.merge(imagenet, on="model", how="left")
    missing = table[table["imagenet_top1"].isna()]["model"].tolist()
    if missing:
        raise ValueError(
            f"No ImageNet accuracy for Let It Wag! models {missing}; is extra/openclip_imagenet_accuracy.csv imported?"
        )
    table["backbone"] = table["model"].str.split("_pretrained").str[0].str.removeprefix("backbone")
    table["pretraining_data"] = table["model"].str.split("_pretrained").str[1]
    table["gap"] = table["imagenet_top1"] - table["let_it_wag_top1"]
    return table.sort_values("imagenet_top1").reset_index(drop=True)


def split_fits(table: pd.DataFrame, split: float = 50.0) -> pd.DataFrame:
    """Least-squares lines of Let It Wag! on ImageNet accuracy, for models below and above ``split`` % ImageNet."""
    rows = []
    for name, part in (
        ("below", table[table["imagenet_top1"] < split]),
        ("above", table[table["imagenet_top1"] >= split]),
    ):
        if len(part) < 2:
            rows.append({"group": name, "n_models": len(part), "slope": np.nan, "intercept": np.nan})
            continue
        design = np.vstack([part["imagenet_top1"].to_numpy(), np.ones(len(part))]).T
        slope, intercept = np.linalg.lstsq(design, part["let_it_wag_top1"].to_numpy(), rcond=None)[0]
        rows.append({"group": name, "n_models": len(part), "slope": float(slope), "intercept": float(intercept)})
    return pd.DataFrame(rows)


def _overall_top1(path: Path, prompt: str) -> float:
    table = read_evaluations(path)
    rows = table[(table["concept"] == OVERALL) & (table["metric"] == "top1") & (table["task"] == "zero_shot")]
    if prompt in set(rows["prompt"]):
        rows = rows[rows["prompt"] == prompt]
    if rows.empty:
        raise ValueError(f"{path}: no overall zero-shot top-1 row")
    return float(rows["value"].iloc[0])


def user_models(
    evaluations_dir: str | os.PathLike, models: Sequence[str], dataset: str, reference: str, prompt: str = "ensemble"
) -> tuple[pd.DataFrame, list[str]]:
    """Models evaluated here on a built Let It Wag!-style set (``dataset``) and on ``reference`` (the set in
    ImageNet's role), from the evaluate stage's ``<model>/<dataset>/evaluations.parquet``.

    Returns (DataFrame(model, imagenet_top1, let_it_wag_top1, gap) in percent, the models skipped because an
    evaluation is missing, each as ``"model: path missing"``). Top-1 of ``prompt`` (else the first prompt set).
    """
    rows, skipped = [], []
    for model in models:
        paths = [Path(evaluations_dir) / model / name / "evaluations.parquet" for name in (dataset, reference)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            skipped.append(f"{model}: {missing[0]} missing (run its evaluate stage)")
            continue
        liw, ref = (_overall_top1(p, prompt) for p in paths)
        rows.append({"model": model, "imagenet_top1": ref, "let_it_wag_top1": liw, "gap": ref - liw})
    return pd.DataFrame(rows, columns=["model", "imagenet_top1", "let_it_wag_top1", "gap"]), skipped
