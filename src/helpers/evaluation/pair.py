"""One (model, dataset) pair of the ``evaluate`` stage: resolve the entries, load, score, write tidy Parquet
and the release's JSON files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.devices import resolve_device
from helpers.evaluation.datasets import load_dataset
from helpers.evaluation.metrics import retrieval_eval, zero_shot_eval
from helpers.evaluation.models import load_model, looks_like_path
from helpers.evaluation.writers import to_release_json, write_evaluations
from helpers.params import ConfigError, validate
from helpers.params.evaluation import EvaluationSettings
from helpers.paths import resolve as resolve_path

# ============================================================================================== stage

_MODEL_PATH_KEYS = ("model_config", "cache_dir")
_DATASET_PATH_KEYS = ("root", "paths", "class_names_file", "concepts_file")
EVALUATIONS_FILE = "evaluations.parquet"


def resolve_spec_paths(spec: Mapping[str, Any], kind: str, base: str | os.PathLike) -> dict[str, Any]:
    """A model or dataset entry with its relative file paths resolved against ``base`` (the work folder).

    Notebooks run in ``notebooks/``, so a path in params.yaml must not depend on the working directory. A
    model's ``pretrained`` is a path only when it looks like one (a tag such as ``laion2b_s34b_b79k`` is not).
    """
    base = Path(base)
    out = dict(spec)
    keys = _MODEL_PATH_KEYS if kind == "model" else _DATASET_PATH_KEYS
    for key in keys:
        if out.get(key) is not None:
            out[key] = resolve_path(out[key], base)
    pretrained = out.get("pretrained")
    if kind == "model" and isinstance(pretrained, str) and looks_like_path(pretrained):
        out["pretrained"] = resolve_path(pretrained, base)
    return out


def _check_settings(settings: Mapping[str, Any] | EvaluationSettings) -> dict[str, Any]:
    """``evaluation.settings`` checked by :class:`helpers.params.evaluation.EvaluationSettings`, as a dict
    with the device resolved (``None``: cuda when available)."""
    out = validate(EvaluationSettings, settings, "evaluation.settings").model_dump()
    out["device"] = resolve_device(out["device"])
    return out


def evaluate_pair(
    model_key: str,
    model_spec: Mapping[str, Any],
    dataset_name: str,
    dataset_spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    base: str | os.PathLike,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate one ``evaluation.models`` entry on one ``evaluation.datasets`` entry and write the results.

    Zero-shot datasets get every prompt set of ``settings.prompts``, retrieval datasets recall@``ks``.
    ``out_dir`` receives ``evaluations.parquet`` (schema ``EVALUATIONS``) and the release's JSON files
    (``zero_shot_evaluations/`` or ``retrieval_evaluations/``), so ``helpers.release.tidy`` reads them unchanged.
    Relative paths in the entries and ``settings.cache_dir`` are resolved against ``base``.
    """
    settings = _check_settings(settings)
    if not isinstance(model_spec, Mapping):
        raise ConfigError(f"evaluation.models.{model_key}: expected a mapping of settings")
    model_spec = resolve_spec_paths({**model_spec, "key": model_key}, "model", base)
    dataset_spec = resolve_spec_paths(dataset_spec, "dataset", base)
    cache_dir = resolve_path(settings["cache_dir"], Path(base)) if settings["cache_dir"] else None
    model = load_model(model_spec, device=settings["device"], precision=settings["precision"])
    dataset = load_dataset(dataset_spec, model.preprocess, name=dataset_name)
    common = {"cache_dir": cache_dir, "batch_size": settings["batch_size"], "num_workers": settings["num_workers"],
              "progress": progress}  # fmt: skip
    if dataset.task == "zero_shot":
        df = zero_shot_eval(model, dataset, settings["prompts"], **common)
    else:
        df = retrieval_eval(model, dataset, ks=settings["ks"], **common)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_evaluations(df, out / EVALUATIONS_FILE)
    to_release_json(df, out)
    return df
