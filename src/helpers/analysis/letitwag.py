"""Let It Wag!: accuracy on the long-tail benchmark against ImageNet accuracy, with the authors' two lines."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
