"""Assemble (frequency, performance) rows from the tidy tables and fit them.

One row per concept of a downstream task: its pretraining count (of one count type in one pretraining
set) and one model's score on it. Joins are on the release name of the concept (``naming``), exactly as
the authors paired them; a concept that has a count but no score (or the reverse) is counted and reported
in ``Rows.unmatched``, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers.analysis import loglinear

TEXT_METHODS = ("lemmatized", "lowercased")


def zero_shot_datasets(zero_shot: dict, count_type: str) -> list[str]:
    """The classification datasets analysed for ``count_type``.

    The authors' text-search figures leave ImageNet-Sketch out (no text counts were computed for it on CC-3M
    and CC-12M); ``zero_shot["text_excluded_datasets"]`` reproduces that, and their legends with it.
    """
    excluded = set(zero_shot.get("text_excluded_datasets", [])) if count_type in TEXT_METHODS else set()
    return [d for d in zero_shot["datasets"] if d not in excluded]


_GROUPS: list[tuple[pd.DataFrame, tuple[str, ...], dict]] = []


def _select(df: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows of ``df`` whose columns equal the given values, via a cached group-by (the fits and figure loops
    select thousands of subsets of the same tables; filtering the full table each time dominated their run time)."""
    keys = tuple(sorted(equal))
    for cached_df, cached_keys, groups in _GROUPS:  # noqa: B007 (the match is used after the loop)
        if cached_df is df and cached_keys == keys:
            break
    else:
        groups = {k if isinstance(k, tuple) else (k,): g for k, g in df.groupby(list(keys), sort=False)}
        _GROUPS.append((df, keys, groups))
        del _GROUPS[:-16]  # keep a handful of tables' indexes alive, not every table ever seen
    return groups.get(tuple(equal[k] for k in keys), df.iloc[:0])


@dataclass
class Rows:
    data: pd.DataFrame  # columns: dataset, concept, count, score
    missing_datasets: list[str] = field(default_factory=list)
    unmatched: int = 0


def _counts_for(
    freq: pd.DataFrame, pretrain: str, count_type: str, datasets: Iterable[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Counts of the given downstream datasets, and the datasets that have no count file for this count type."""
    subset = _select(freq, pretrain=pretrain, method=count_type)
    have = set(subset["downstream"].unique())
    missing = [d for d in datasets if d not in have]
    counts = subset[subset["downstream"].isin([d for d in datasets if d in have])]
    return counts[["downstream", "concept", "count"]].rename(columns={"downstream": "dataset"}), missing


def _join(counts: pd.DataFrame, scores: pd.DataFrame) -> Rows:
    merged = counts.merge(scores, on=["dataset", "concept"], how="outer", indicator=True)
    unmatched = int((merged["_merge"] != "both").sum())
    data = merged[merged["_merge"] == "both"][["dataset", "concept", "count", "score"]]
    data = data.sort_values(["dataset", "concept"]).reset_index(drop=True)
    if not data["count"].isna().any():  # a NaN count stays (float) for fit_rows to refuse or drop by name
        data["count"] = data["count"].astype("int64")
    return Rows(data=data, unmatched=unmatched)


def zero_shot_rows(
    freq: pd.DataFrame,
    zero_shot: pd.DataFrame,
    *,
    pretrain: str,
    model: str,
    prompt: str,
    count_type: str,
    datasets: list[str],
) -> Rows:
    """Per-class (count, accuracy %) rows of one model over the given classification datasets."""
    counts, missing = _counts_for(freq, pretrain, count_type, datasets)
    sel = _select(zero_shot, model=model, prompt=prompt)
    sel = sel[sel["dataset"].isin(datasets)]
    scores = sel[~sel["dataset"].isin(missing)][["dataset", "concept", "accuracy"]].rename(
        columns={"accuracy": "score"}
    )
    rows = _join(counts, scores)
    rows.missing_datasets = missing
    return rows


def retrieval_rows(
    freq: pd.DataFrame,
    retrieval: pd.DataFrame,
    *,
    pretrain: str,
    model: str,
    metric: str,
    count_type: str,
    datasets: list[str],
) -> Rows:
    """Per-concept (count, recall@k in percent points) rows; ``metric`` is e.g. ``i2t_k=1``."""
    direction, k = metric.split("_k=")
    counts, missing = _counts_for(freq, pretrain, count_type, datasets)
    sel = _select(retrieval, model=model, direction=direction, k=int(k))
    sel = sel[sel["dataset"].isin(datasets) & ~sel["dataset"].isin(missing)]
    scores = sel.assign(score=100.0 * sel["recall"])[["dataset", "concept", "score"]]
    # Concepts that were evaluated but never extracted for counting (one in COCO) are not a data loss:
    # the authors' analysis iterates over the counted concepts, so keep only those.
    scores = scores.merge(counts[["dataset", "concept"]], on=["dataset", "concept"], how="inner")
    rows = _join(counts, scores)
    rows.missing_datasets = missing
    return rows


def t2i_rows(
    freq: pd.DataFrame,
    t2i: pd.DataFrame,
    *,
    pretrain: str,
    model: str,
    metric: str,
    count_type: str,
    datasets: list[str],
    min_prompts: int,
) -> Rows:
    """Per-concept (count, mean score over prompts) rows for concepts with at least ``min_prompts`` prompts."""
    counts, missing = _counts_for(freq, pretrain, count_type, datasets)
    sel = _select(t2i, model=model, metric=metric)
    per_concept = sel.groupby("concept")["score"].agg(["mean", "size"]).reset_index()
    per_concept = per_concept[per_concept["size"] >= min_prompts]
    # The authors intersect the scored and the counted concepts, so only the intersection is analysed.
    data = counts.merge(per_concept.rename(columns={"mean": "score"}), on="concept", how="inner")
    data = data[["dataset", "concept", "count", "score"]].sort_values("concept").reset_index(drop=True)
    return Rows(data=data, missing_datasets=missing)


FIT_COLUMNS = (
    "task",
    "pretrain",
    "model",
    "prompt",
    "count_type",
    "metric",
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
)


def fit_rows(
    rows: Rows,
    *,
    n_edges: int,
    plotted: tuple[int | None, int | None],
    resamples: int,
    seed: int,
    missing: loglinear.MissingRule = "raise",
) -> list[dict]:
    """The fit-table records of one row set: one per zero rule.

    A row with a NaN (or infinite) count or score raises ``ValueError`` naming it (``dataset/concept``)
    with ``missing="raise"``; with ``"drop"`` it is left out (``loglinear.drop_missing``; count such rows
    with ``missing_value_rows`` to report them).
    """
    data = rows.data
    labels = [f"{d}/{c}" for d, c in zip(data["dataset"], data["concept"])] if "dataset" in data else None
    counts, scores, _ = loglinear.drop_missing(
        data["count"].to_numpy(dtype=float), data["score"].to_numpy(dtype=float), missing, labels
    )
    out = []
    if len(counts) == 0:
        return out
    binned = loglinear.binned_statistic(counts, scores, n_edges=n_edges, plotted=plotted)
    for zero_rule in loglinear.ZERO_RULES:
        cs = loglinear.concept_statistics(counts, scores, zero_rule=zero_rule, resamples=resamples, seed=seed)
        out.append(
            {
                "zero_rule": zero_rule,
                "n_rows": cs.n_rows,
                "n_bins_plotted": len(binned.plotted),
                "binned_r": binned.r,
                "binned_p": binned.p,
                "concept_pearson_r": cs.pearson_r,
                "concept_pearson_p": cs.pearson_p,
                "concept_spearman_r": cs.spearman_r,
                "concept_spearman_p": cs.spearman_p,
                "slope_per_decade": cs.slope_per_decade,
                "slope_ci_low": cs.slope_ci_low,
                "slope_ci_high": cs.slope_ci_high,
                "intercept": cs.intercept,
            }
        )
    return out


def missing_value_rows(rows: Rows) -> int:
    """How many rows have a NaN or infinite count or score (what ``fit_rows(missing="drop")`` leaves out)."""
    counts = rows.data["count"].to_numpy(dtype=float)
    scores = rows.data["score"].to_numpy(dtype=float)
    return int((~(np.isfinite(counts) & np.isfinite(scores))).sum())


def _plotted(spec) -> tuple[int | None, int | None]:
    start, stop = spec
    return (start, stop)


def release_fits(
    tables: dict[str, pd.DataFrame], analysis: dict, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fit of the release analysis, and a log of count files that were missing or rows that did not pair.

    ``tables`` holds the tidy tables (frequencies, zero_shot, retrieval, t2i); ``analysis`` is the
    ``analysis`` section of params.yaml. ``analysis.missing`` (``raise``, the default, or ``drop``): a row
    with a NaN count or score fails the run naming the fit and the rows, or is left out and counted in the
    notes' ``missing_value_rows``.
    """
    freq = tables["frequencies"]
    resamples, seed = int(analysis["bootstrap_resamples"]), int(analysis["seed"])
    missing = analysis.get("missing", "raise")
    if missing not in loglinear.MISSING_RULES:
        raise ValueError(f"analysis.missing: expected one of {', '.join(loglinear.MISSING_RULES)}, got {missing!r}")
    records, notes = [], []
    jobs = []
    zs = analysis["zero_shot"]
    for pretrain, spec in zs["pretrains"].items():
        for model in spec["models"]:
            for prompt in zs["prompts"]:
                for count_type in zs["count_types"]:
                    jobs.append(
                        ("zero_shot", pretrain, model, prompt, count_type, "top1", zs["n_edges"], spec["plotted_bins"])
                    )
    ret = analysis["retrieval"]
    for pretrain, spec in zs["pretrains"].items():
        for model in spec["models"]:
            for metric in ret["metrics"]:
                for count_type in ret["count_types"]:
                    jobs.append(
                        ("retrieval", pretrain, model, "-", count_type, metric, ret["n_edges"], ret["plotted_bins"])
                    )
    t2i_spec = analysis["t2i"]
    for metric in sorted(tables["t2i"]["metric"].unique()):
        for model in sorted(tables["t2i"]["model"].unique()):
            for count_type in t2i_spec["count_types"]:
                jobs.append(
                    (
                        "t2i",
                        t2i_spec["pretrain"],
                        model,
                        "-",
                        count_type,
                        metric,
                        t2i_spec["n_edges"],
                        t2i_spec["plotted_bins"],
                    )
                )

    for task, pretrain, model, prompt, count_type, metric, n_edges, plotted in tqdm(
        jobs, desc="fits", disable=not progress
    ):
        if task == "zero_shot":
            rows = zero_shot_rows(
                freq,
                tables["zero_shot"],
                pretrain=pretrain,
                model=model,
                prompt=prompt,
                count_type=count_type,
                datasets=zero_shot_datasets(zs, count_type),
            )
        elif task == "retrieval":
            rows = retrieval_rows(
                freq,
                tables["retrieval"],
                pretrain=pretrain,
                model=model,
                metric=metric,
                count_type=count_type,
                datasets=ret["datasets"],
            )
        else:
            rows = t2i_rows(
                freq,
                tables["t2i"],
                pretrain=pretrain,
                model=model,
                metric=metric,
                count_type=count_type,
                datasets=t2i_spec["datasets"],
                min_prompts=t2i_spec["min_prompts"],
            )
        key = {
            "task": task,
            "pretrain": pretrain,
            "model": model,
            "prompt": prompt,
            "count_type": count_type,
            "metric": metric,
        }
        try:
            fitted = fit_rows(
                rows, n_edges=n_edges, plotted=_plotted(plotted), resamples=resamples, seed=seed, missing=missing
            )
        except ValueError as err:
            where = ", ".join(f"{k}={v}" for k, v in key.items())
            raise ValueError(f"{where}: {err} (params: analysis.missing: drop)") from err
        dropped = missing_value_rows(rows)
        if rows.missing_datasets or rows.unmatched or dropped:
            notes.append(
                {
                    **key,
                    "missing_datasets": ",".join(rows.missing_datasets),
                    "unmatched_rows": rows.unmatched,
                    "missing_value_rows": dropped,
                }
            )
        for rec in fitted:
            records.append({**key, **rec})
    fits = pd.DataFrame(records, columns=list(FIT_COLUMNS))
    for col in ("n_rows", "n_bins_plotted"):
        fits[col] = fits[col].astype("int64")
    columns = [
        "task",
        "pretrain",
        "model",
        "prompt",
        "count_type",
        "metric",
        "zero_rule",
        "missing_datasets",
        "unmatched_rows",
        "missing_value_rows",
    ]
    return fits, pd.DataFrame(notes, columns=[c for c in columns if c != "zero_rule"])


def model_label(model_key: str) -> str:
    """``backboneViT-B-16_pretrainedcc3m`` -> ``ViT-B-16``."""
    return model_key.split("_pretrained")[0].removeprefix("backbone")


COUNT_TYPE_LABELS = {
    "lowercased": "text (lower-cased)",
    "lemmatized": "text",
    "rampp": "image",
    "integrated_tlemmatized_i": "matched",
}


def count_type_label(count_type: str) -> str:
    """Readable name of a release count type: ``integrated_tlemmatized_i0.7`` -> ``matched (t=0.7)``."""
    for prefix, label in sorted(COUNT_TYPE_LABELS.items(), key=lambda kv: -len(kv[0])):
        if count_type.startswith(prefix):
            threshold = count_type[len(prefix) :]
            return f"{label} (t={threshold})" if threshold else label
    return count_type


def binned_curves(
    rows_by_key: Iterable[tuple[dict, Rows]], *, n_edges: int, plotted: tuple[int | None, int | None]
) -> pd.DataFrame:
    """Binned curves (the authors' figure points) for each (labels, rows) pair, in long format."""
    frames = []
    for labels, rows in rows_by_key:
        if rows.data.empty:
            continue
        res = loglinear.binned_statistic(rows.data["count"], rows.data["score"], n_edges=n_edges, plotted=plotted)
        curve = res.curve().assign(r=res.r, p=res.p, **labels)
        frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def zero_shot_curves(
    freq: pd.DataFrame,
    zero_shot: pd.DataFrame,
    *,
    pretrain: str,
    spec: dict,
    count_types: list[str],
    prompts: list[str],
    params: dict,
    n_edges: int,
) -> pd.DataFrame:
    """Zero-shot curves of every model of one pretraining set, per count type and prompt.

    ``params`` is the ``analysis.zero_shot`` section (which datasets enter, per count type)."""

    def gen():
        for count_type in count_types:
            for prompt in prompts:
                for model in spec["models"]:
                    rows = zero_shot_rows(
                        freq,
                        zero_shot,
                        pretrain=pretrain,
                        model=model,
                        prompt=prompt,
                        count_type=count_type,
                        datasets=zero_shot_datasets(params, count_type),
                    )
                    yield (
                        {
                            "pretrain": pretrain,
                            "model": model_label(model),
                            "prompt": prompt,
                            "count_type": count_type_label(count_type),
                        },
                        rows,
                    )

    return binned_curves(gen(), n_edges=n_edges, plotted=tuple(spec["plotted_bins"]))


def retrieval_curves(
    freq: pd.DataFrame,
    retrieval: pd.DataFrame,
    *,
    pretrain: str,
    models: list[str],
    count_type: str,
    metrics: list[str],
    datasets: list[str],
    n_edges: int,
    plotted: tuple[int | None, int | None],
) -> pd.DataFrame:
    def gen():
        for metric in metrics:
            for model in models:
                rows = retrieval_rows(
                    freq,
                    retrieval,
                    pretrain=pretrain,
                    model=model,
                    metric=metric,
                    count_type=count_type,
                    datasets=datasets,
                )
                direction, k = metric.split("_k=")
                yield (
                    {
                        "pretrain": pretrain,
                        "model": model_label(model),
                        "direction": direction,
                        "k": int(k),
                        "count_type": count_type_label(count_type),
                    },
                    rows,
                )

    return binned_curves(gen(), n_edges=n_edges, plotted=plotted)


def t2i_curves(
    freq: pd.DataFrame,
    t2i: pd.DataFrame,
    *,
    pretrain: str,
    count_type: str,
    datasets: list[str],
    n_edges: int,
    plotted: tuple[int | None, int | None],
    min_prompts: int,
) -> pd.DataFrame:
    def gen():
        for metric in sorted(t2i["metric"].unique()):
            for model in sorted(t2i["model"].unique()):
                rows = t2i_rows(
                    freq,
                    t2i,
                    pretrain=pretrain,
                    model=model,
                    metric=metric,
                    count_type=count_type,
                    datasets=datasets,
                    min_prompts=min_prompts,
                )
                yield (
                    {
                        "pretrain": pretrain,
                        "model": model,
                        "metric": metric,
                        "count_type": count_type_label(count_type),
                    },
                    rows,
                )

    return binned_curves(gen(), n_edges=n_edges, plotted=plotted)


def paper_legend_check(fits: pd.DataFrame) -> pd.DataFrame:
    """Our binned r beside the r printed in the legends of the authors' zero-shot figures.

    The reference values (``helpers/data/paper_legends.csv``) were read off the PDF figures in the authors'
    repository at the pinned commit. ``matches`` compares at the two decimals the legends print.
    """
    from importlib import resources

    legends = pd.read_csv(resources.files("helpers.data").joinpath("paper_legends.csv"))
    ours = fits.query("task == 'zero_shot' and zero_rule == 'to_one'")[
        ["pretrain", "count_type", "prompt", "model", "binned_r"]
    ]
    check = legends.merge(ours, on=["pretrain", "count_type", "prompt", "model"], how="left")
    check["ours"] = check["binned_r"].round(2)
    check["matches"] = (check["ours"] - check["r"]).abs() < 0.005
    return check.drop(columns="binned_r").rename(columns={"r": "paper"})
