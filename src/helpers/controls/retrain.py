"""The study's actual control where a model can be retrained: train on the pruned corpus, evaluate, refit.

Udandarao et al. 2024 (Sec. 3) retrain CLIP on a corpus with the samples most similar to the test sets
removed. For the synthetic world's CLIP (``helpers.synthetic.clip_training``, params ``clip_training``) this
module writes the pruned corpus (the same webdataset shards without the removed samples), trains the same
model config with the same settings on it, evaluates it on the control's test sets
(``helpers.evaluation.pair.evaluate_pair``) and compares the classes that had planted near-duplicates:
their accuracy before and after, and what the unleaked classes' log-linear fit predicts from their pruned
counts (``leaked_class_table``).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from helpers import paths
from helpers.analysis import loglinear
from helpers.analysis.studies.join import evaluation_scores
from helpers.controls.pipeline import PREFIX, SimilarityControlResult, model_scores, refit
from helpers.evaluation.pair import evaluate_pair
from helpers.images.sources import ImageSource, list_image_shards
from helpers.params import validate
from helpers.params.controls import SimilarityControl
from helpers.params.study import ClipTraining
from helpers.shards import make_sample_ids
from helpers.synthetic.clip_training import TrainResult, tiny_clip_config, train_clip, write_model_config
from helpers.synthetic.samples import tar_member
from helpers.text.tars import iter_tar_samples


def write_pruned_shards(source: ImageSource, removed: np.ndarray, out_dir: str | os.PathLike) -> dict:
    """Copy every shard of ``source`` to ``out_dir`` (same file names) without the samples in ``removed``.

    ``removed``: sample ids ``(shard_index << 32) | position`` in the pipeline's shard order
    (``images.sources.list_image_shards``). Returns ``{"kept", "removed", "shards": [paths]}``. A damaged
    tar keeps the samples before the damage (``ShardReadError`` is not caught: the control must not train on
    a silently shortened corpus).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gone = set(np.asarray(removed, dtype=np.int64).tolist())
    kept = dropped = 0
    written = []
    for shard in list_image_shards(source):
        target = out / Path(shard.path).name
        tmp = target.with_name(f".{target.name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in iter_tar_samples(shard.path):
                sid = int(make_sample_ids(shard.index, np.asarray([sample.position]))[0])
                if sid in gone:
                    dropped += 1
                    continue
                kept += 1
                for ext, data in sample.files.items():
                    tar_member(tar, f"{sample.key}.{ext}", data)
        os.replace(tmp, target)
        written.append(str(target))
    return {"kept": kept, "removed": dropped, "shards": written}


def retrain_clip(
    clip_training: Mapping[str, Any], shards: Sequence[str], out_dir: str | os.PathLike, *,
    epochs: int | None = None, progress: bool = True,
) -> tuple[dict, TrainResult]:  # fmt: skip
    """Train params ``clip_training``'s model (same config, seed and settings) on ``shards`` into ``out_dir``.

    Returns (an ``evaluation.models`` entry for the new checkpoint, the training result). ``epochs``
    overrides ``clip_training.epochs`` (a cheaper control run).
    """
    spec = validate(ClipTraining, clip_training, "clip_training")
    out = Path(out_dir)
    config_path = write_model_config(out / f"{out.name}.json", tiny_clip_config(**spec.model.given()))
    result = train_clip(
        shards, config_path, out, epochs=epochs or spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
        weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps, seed=spec.seed, device=spec.device,
        num_workers=spec.num_workers, max_samples=spec.max_samples, augment=spec.augment,
        num_threads=spec.num_threads, progress=progress,
    )  # fmt: skip
    return {"model_config": str(config_path), "pretrained": str(out / "checkpoint.pt")}, result


def evaluate_retrained(
    model_key: str, model: Mapping[str, Any], datasets: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any], out_dir: str | os.PathLike, *, base: str | os.PathLike, progress: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """Evaluate the retrained model on every dataset (``evaluate_pair``; ``out_dir/<dataset>/``), concatenated."""
    frames = []
    for name, spec in datasets.items():
        frames.append(evaluate_pair(model_key, model, name, spec, settings, Path(out_dir) / name, base=base,
                                    progress=progress))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def leaked_class_table(
    before: pd.DataFrame, after: pd.DataFrame, counts: pd.DataFrame, leaks_path: str | os.PathLike,
    concepts_path: str | os.PathLike,
) -> pd.DataFrame:  # fmt: skip
    """Per class: accuracy before and after retraining, and the prediction of the unleaked classes' fit.

    ``before`` / ``after``: (concept, score) per class of the original and the retrained model (one prompt
    set); ``counts``: (concept, count) on the pruned corpus; ``leaks_path``: planted leaks (``concept_id``);
    ``concepts_path``: the world's ``truth/concepts.parquet`` (``concept_id``, ``name``). The fit is
    accuracy = intercept + slope x log10(count) over the unleaked classes of ``after``
    (``loglinear.concept_statistics``, zeros mapped to one). Columns: concept, leaked, count, accuracy_before,
    accuracy_after, predicted.
    """
    names = pq.read_table(concepts_path, columns=["concept_id", "name"]).to_pandas().set_index("concept_id")["name"]
    leaked_ids = np.unique(pq.read_table(leaks_path, columns=["concept_id"])["concept_id"].to_numpy())
    leaked = set(names.reindex(leaked_ids).dropna())
    table = (before.rename(columns={"score": "accuracy_before"})
             .merge(after.rename(columns={"score": "accuracy_after"}), on="concept")
             .merge(counts[["concept", "count"]], on="concept"))  # fmt: skip
    table["leaked"] = table["concept"].isin(leaked)
    clean = table[~table["leaked"]]
    stats = loglinear.concept_statistics(clean["count"].to_numpy(float), clean["accuracy_after"].to_numpy(float),
                                         zero_rule="to_one", resamples=0, seed=0)  # fmt: skip
    x, _ = loglinear.log10_frequency(table["count"].to_numpy(float), "to_one")
    table["predicted"] = stats.intercept + stats.slope_per_decade * x
    return table[["concept", "leaked", "count", "accuracy_before", "accuracy_after", "predicted"]]


def retrain_control(
    params: Mapping[str, Any],
    result: SimilarityControlResult,
    *,
    corpus_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    evaluations_dir: str | os.PathLike,
    base: str | os.PathLike,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune, retrain, re-evaluate and refit for a finished similarity control (``pipeline.run_similarity_control``).

    ``params``: the whole params mapping (``controls.similarity``, ``image_corpora``, ``clip_training``,
    ``evaluation``); ``result``: the control's result (the samples removed at its default threshold, the
    pruned counts). Returns ``{"pruned": write_pruned_shards stats, "train": TrainResult, "model": entry,
    "evaluations": DataFrame, "fits": refit of the retrained model at the default threshold,
    "leaked_classes": leaked_class_table or None}``.
    """
    spec = validate(SimilarityControl, params["controls"]["similarity"], PREFIX)
    images = dict(params["image_corpora"][spec.corpus]["images"])
    images["paths"] = paths.resolve(images.get("paths"), Path(base))
    pruned = write_pruned_shards(ImageSource.from_config(images), result.removed_at_default, corpus_dir)
    model, trained = retrain_clip(params["clip_training"], pruned["shards"], model_dir, epochs=spec.retrain_epochs,
                                  progress=progress)  # fmt: skip
    datasets = {name: params["evaluation"]["datasets"][name] for name in spec.datasets}
    settings = params["evaluation"].get("settings") or {}
    key = f"{Path(model_dir).name}"
    evaluations = evaluate_retrained(key, model, datasets, settings, evaluations_dir, base=base, progress=progress)
    after = evaluation_scores(evaluations)
    after = after[after["task"] == "zero_shot"]
    at_default = result.counts[np.isclose(result.counts["similarity_threshold"], result.default_threshold)]
    fits = refit(at_default, after)
    table = None
    if spec.leaks and spec.model:
        leaks_path = Path(paths.resolve(spec.leaks, Path(base)))
        before = model_scores(spec.model, spec.datasets, paths.processed_dir() / "evaluations")
        prompt = sorted(after["prompt"].unique())[0]
        tag = min(spec.tag_thresholds)
        counts = at_default[(at_default["method"] == "matched") & np.isclose(at_default["threshold"], tag)]
        table = leaked_class_table(
            before.loc[before["prompt"] == prompt, ["concept", "score"]].groupby("concept", as_index=False).mean(),
            after.loc[after["prompt"] == prompt, ["concept", "score"]].groupby("concept", as_index=False).mean(),
            counts, leaks_path, leaks_path.parent / "concepts.parquet",
        )  # fmt: skip
    return {"pruned": pruned, "train": trained, "model": model, "evaluations": evaluations, "fits": fits,
            "leaked_classes": table}  # fmt: skip


__all__ = ["evaluate_retrained", "leaked_class_table", "retrain_clip", "retrain_control", "write_pruned_shards"]
