"""The whole params file as one model, and the checks that span sections or look at the disk.

:func:`check` returns every error of a params mapping as ``full.key.path: message`` lines:

* the models' own checks (unknown keys, types, choices, ranges, names DVC can take), all at once;
* references between sections: an ``image_corpora`` entry's ``corpus``, ``synthetic_validation``'s corpus,
  image corpora, model and datasets must name existing entries;
* a corpus' ``concepts:`` must not be the release's tidy concept table (it has no lemmas to search);
* files that must exist do. A path that a stage of ``dvc.yaml`` writes (a tagger checkpoint made by
  ``train_tagger``, a concept table, the synthetic world) is not checked: it may not exist before
  ``dvc repro`` has run that stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from helpers.params.base import Name, Section
from helpers.params.controls import Controls, LetItWag
from helpers.params.errors import error_lines
from helpers.params.evaluation import Evaluation
from helpers.params.images import ImageCorpus, ImageSearch, TaggerTraining
from helpers.params.studies import StudyEntry, study_reference_errors
from helpers.params.study import Analysis, ClipTraining, Figures, Release, Synthetic, SyntheticValidation
from helpers.params.text import RELEASE_CONCEPT_TABLE, Concepts, Corpus, Samples, TextSearch

CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_INTERPOLATION = re.compile(r"\$\{\s*([^}]+?)\s*\}")


class Params(Section):
    """params.yaml, section by section (each section's model documents its keys)."""

    release: Release | None = None
    analysis: Analysis | None = None
    figures: Figures | None = None
    samples: Samples = Samples()
    concepts: Concepts = Concepts()
    text_search: TextSearch = TextSearch()
    corpora: dict[Name, Corpus] = {}
    taggers: dict[Name, TaggerTraining] = {}
    image_search: ImageSearch = ImageSearch()
    image_corpora: dict[Name, ImageCorpus] = {}
    synthetic: Synthetic | None = None
    clip_training: ClipTraining | None = None
    evaluation: Evaluation = Evaluation()
    synthetic_validation: SyntheticValidation | None = None
    controls: Controls | None = None
    let_it_wag: LetItWag | None = None
    studies: dict[Name, StudyEntry] = Field({}, description="your counts x your models -> the study's fits")


# ------------------------------------------------------------------------------------------ helpers


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _entries(data: Any, *keys: str) -> dict[str, Any]:
    value = _get(data, *keys)
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def looks_like_path(value: str) -> bool:
    """A model's ``pretrained`` names a file (not a tag such as ``laion2b_s34b_b79k``)."""
    return "/" in value or os.sep in value or value.endswith(CKPT_SUFFIXES)


def concept_table_error(value: str) -> str | None:
    """Why ``value`` (a corpus' ``concepts:``) cannot be searched, or ``None``: the release's tidy table."""
    normalised = Path(os.path.normpath(str(value))).as_posix()
    if normalised == RELEASE_CONCEPT_TABLE or normalised.endswith("/" + RELEASE_CONCEPT_TABLE):
        return (
            f"{value} is the release's tidy concept table, which has no lemmas to search; use the `concepts` "
            "stage's data/processed/concepts.parquet (release + downstream concepts) or "
            "data/processed/concept_tables/<name>.parquet (stage downstream_concepts@<name>)"
        )
    return None


# ------------------------------------------------------------------------------- outputs of dvc.yaml


def _interpolate(text: str, params: Mapping[str, Any], item: Mapping[str, Any]) -> str | None:
    """``${key}``, ``${item.x}`` and ``${section.key}`` filled in; ``None`` when one cannot be resolved."""
    failed = False

    def value(match: re.Match) -> str:
        nonlocal failed
        parts = match.group(1).split(".")
        source: Any = item if parts[0] in item else params
        for part in parts:
            source = source.get(part) if isinstance(source, Mapping) else None
        if source is None or isinstance(source, (Mapping, list)):
            failed = True
            return ""
        return str(source)

    out = _INTERPOLATION.sub(value, text)
    return None if failed else out


def _stage_items(spec: Mapping[str, Any], params: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    if "foreach" in spec:
        over = spec["foreach"]
        if isinstance(over, str):
            over = _get(params, *_INTERPOLATION.sub(lambda m: m.group(1), over).strip().split("."))
        if isinstance(over, Mapping):
            yield from ({"key": k, "item": v} for k, v in over.items())
        elif isinstance(over, list):
            yield from ({"key": str(i), "item": v} for i, v in enumerate(over))
    elif "matrix" in spec:
        axes = {}
        for axis, over in spec["matrix"].items():
            if isinstance(over, str):
                over = _get(params, *_INTERPOLATION.sub(lambda m: m.group(1), over).strip().split("."))
            axes[axis] = list(over) if isinstance(over, (Mapping, list)) else []
        combos: list[dict[str, Any]] = [{}]
        for axis, values in axes.items():
            combos = [{**c, axis: v} for c in combos for v in values]
        yield from ({"item": c} for c in combos)
    else:
        yield {}


def produced_paths(dvc: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Every output path of every stage of ``dvc`` (a parsed dvc.yaml), interpolated, as posix strings."""
    out: list[str] = []
    for spec in (dvc.get("stages") or {}).values():
        if not isinstance(spec, Mapping):
            continue
        body = spec.get("do", spec)
        for item in _stage_items(spec, params):
            for entry in body.get("outs", []) or []:
                raw = next(iter(entry)) if isinstance(entry, Mapping) else entry
                path = _interpolate(str(raw), params, item)
                if path:
                    out.append(Path(os.path.normpath(path)).as_posix())
    return out


def _is_produced(value: str, produced: list[str], workdir: Path) -> bool:
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        try:
            path = path.relative_to(workdir)
        except ValueError:
            return False
    rel = Path(os.path.normpath(path)).as_posix()
    return any(rel == out or rel.startswith(out.rstrip("/") + "/") for out in produced)


# --------------------------------------------------------------------------------------- the checks


def _path_keys(data: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """(full key path, value) of every params value that names a file or folder that must exist."""
    for name, entry in _entries(data, "corpora").items():
        for key in ("data", "concepts"):
            yield f"corpora.{name}.{key}", _get(entry, key)
    for name, entry in _entries(data, "concepts", "downstream").items():
        for key in ("data", "class_names_file"):
            yield f"concepts.downstream.{name}.{key}", _get(entry, key)
    for name, entry in _entries(data, "taggers").items():
        for key in ("data", "labels"):
            yield f"taggers.{name}.{key}", _get(entry, key)
    for name, entry in _entries(data, "image_corpora").items():
        yield f"image_corpora.{name}.data", _get(entry, "data")
        tagger = _get(entry, "tagger")
        for key in ("checkpoint", "model_config", "weights"):
            yield f"image_corpora.{name}.tagger.{key}", _get(tagger, key)
        pretrained = _get(tagger, "pretrained")
        if isinstance(pretrained, str) and looks_like_path(pretrained):
            yield f"image_corpora.{name}.tagger.pretrained", pretrained
        descriptions = _get(tagger, "descriptions")
        for i, path in enumerate([descriptions] if isinstance(descriptions, str) else descriptions or []):
            yield f"image_corpora.{name}.tagger.descriptions[{i}]", path
        yield f"image_corpora.{name}.tagger.train.labels", _get(tagger, "train", "labels")
        for key in ("labels", "image_root"):
            yield f"image_corpora.{name}.audit.{key}", _get(entry, "audit", key)
    for name, entry in _entries(data, "evaluation", "models").items():
        for key in ("model_config", "weights"):
            yield f"evaluation.models.{name}.{key}", _get(entry, key)
        pretrained = _get(entry, "pretrained")
        if isinstance(pretrained, str) and looks_like_path(pretrained):
            yield f"evaluation.models.{name}.pretrained", pretrained
    for name, entry in _entries(data, "evaluation", "datasets").items():
        for key in ("data", "root", "class_names_file", "concepts_file"):
            if key == "root" and _get(entry, "format") == "torchvision":
                continue  # torchvision checks its own files (and names what is missing)
            yield f"evaluation.datasets.{name}.{key}", _get(entry, key)
    yield "clip_training.data", _get(data, "clip_training", "data")
    yield "controls.similarity.leaks", _get(data, "controls", "similarity", "leaks")
    yield "let_it_wag.counts", _get(data, "let_it_wag", "counts")
    yield "let_it_wag.images.root", _get(data, "let_it_wag", "images", "root")
    yield "let_it_wag.images.world", _get(data, "let_it_wag", "images", "world")
    yield "synthetic_validation.world", _get(data, "synthetic_validation", "world")


def _inside(pattern: str, folder: str) -> bool:
    """Whether a path or glob lies in ``folder`` (both as written, or both made absolute against the cwd)."""
    a, b = os.path.abspath(os.path.expanduser(pattern)), os.path.abspath(os.path.expanduser(folder))
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _wag_input_errors(wag: Mapping[str, Any]) -> list[str]:
    """``let_it_wag``'s candidate source lies inside ``let_it_wag.data``, the folder its stage depends on."""
    data = wag.get("data")
    if not isinstance(data, str) or not data.strip():
        return ["let_it_wag.data: missing (the folder let_it_wag_build depends on, holding its candidate images)"]
    images = wag.get("images") if isinstance(wag.get("images"), Mapping) else {}
    sources = [("let_it_wag.images.root", images.get("root")), ("let_it_wag.images.world", images.get("world"))]
    lists = _get(images, "urls", "lists")
    if isinstance(lists, list):
        sources += [(f"let_it_wag.images.urls.lists[{i}]", v) for i, v in enumerate(lists)]
    else:
        sources.append(("let_it_wag.images.urls.lists", lists))
    return [
        f"{key}: {value!r} is outside let_it_wag.data ({data!r}); DVC would not see the candidates change, so the "
        "built set could go stale: point data at the folder that holds them"
        for key, value in sources
        if isinstance(value, str) and not _inside(value, data)
    ]


def _tracked_input_errors(section: str, entries: Mapping[str, Any], reader: str, stage: str) -> list[str]:
    """Each entry's ``data`` (what its stage depends on) exists and holds what ``<reader>.paths`` reads.

    DVC reruns a stage when its declared inputs change: files read from outside ``data`` would leave its
    counts stale without a word, and an entry without ``data`` breaks every dvc command (dvc.yaml
    interpolates ``${item.data}``)."""
    errors = []
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            continue
        data = entry.get("data")
        if not isinstance(data, str) or not data.strip():
            errors.append(f"{section}.{name}.data: missing (the folder {stage}@{name} depends on, holding its input)")
            continue
        source = entry.get(reader)
        patterns = source.get("paths") if isinstance(source, Mapping) else None
        patterns = [patterns] if isinstance(patterns, str) else patterns if isinstance(patterns, list) else []
        for i, pattern in enumerate(p for p in patterns if isinstance(p, str)):
            if not _inside(pattern, data):
                key = f"{section}.{name}.{reader}.paths" + (f"[{i}]" if len(patterns) > 1 else "")
                errors.append(
                    f"{key}: {pattern!r} is outside {section}.{name}.data ({data!r}); DVC would not see it change, "
                    "so the counts could go stale: point data at the folder that holds it"
                )
    return errors


def _reference_errors(data: Mapping[str, Any]) -> list[str]:
    errors = []
    corpora = _entries(data, "corpora")
    image_corpora = _entries(data, "image_corpora")
    errors += _tracked_input_errors("corpora", corpora, "captions", "text_search")
    errors += _tracked_input_errors("image_corpora", image_corpora, "images", "image_search")

    def refer(key: str, value: Any, known: Mapping[str, Any], section: str) -> None:
        if isinstance(value, str) and value not in known:
            names = ", ".join(known) or "none"
            errors.append(f"{key}: {value!r} is not an entry of {section} (entries: {names})")

    for name, entry in image_corpora.items():
        corpus = _get(entry, "corpus")
        refer(f"image_corpora.{name}.corpus", name if corpus is None else corpus, corpora, "corpora")
        tagger = _get(entry, "tagger")
        if isinstance(tagger, Mapping) and not tagger.get("weights"):
            errors.append(
                f"image_corpora.{name}.tagger.weights: missing (the file or folder of this tagger's weights, which "
                f"the image_search@{name} stage depends on)"
            )
    models = _entries(data, "evaluation", "models")
    datasets = _entries(data, "evaluation", "datasets")
    for name, run in _entries(data, "evaluation", "runs").items():
        if not isinstance(run, Mapping):
            continue
        refer(f"evaluation.runs.{name}.model", run.get("model"), models, "evaluation.models")
        refer(f"evaluation.runs.{name}.dataset", run.get("dataset"), datasets, "evaluation.datasets")
        for key, section, owner, field in (
            ("weights", "models", models.get(run.get("model")), "weights"),
            ("data", "datasets", datasets.get(run.get("dataset")), "data"),
        ):
            declared = owner.get(field) if isinstance(owner, Mapping) else None
            if isinstance(owner, Mapping) and None not in (run.get(key), declared) and run.get(key) != declared:
                errors.append(
                    f"evaluation.runs.{name}.{key}: {run.get(key)!r} differs from evaluation.{section}."
                    f"{run.get('model' if key == 'weights' else 'dataset')}.{field} ({declared!r})"
                )
    validation = _get(data, "synthetic_validation")
    if isinstance(validation, Mapping):
        refer("synthetic_validation.corpus", validation.get("corpus"), corpora, "corpora")
        for i, value in enumerate(validation.get("image_corpora") or []):
            refer(f"synthetic_validation.image_corpora[{i}]", value, image_corpora, "image_corpora")
    search = _get(data, "image_search")
    thresholds = search.get("thresholds") if isinstance(search, Mapping) else None
    if not isinstance(thresholds, list):
        thresholds = list(ImageSearch.model_fields["thresholds"].default)
    elif not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds):
        thresholds = []  # already reported under image_search.thresholds; no second error per study
    analysis = _get(data, "analysis") if isinstance(_get(data, "analysis"), Mapping) else {}
    for name, entry in _entries(data, "studies").items():
        if isinstance(entry, Mapping):
            errors += study_reference_errors(
                name, entry, corpora=corpora, image_corpora=image_corpora, thresholds=thresholds,
                models=models, datasets=datasets, analysis=analysis,
                evaluation_settings=_get(data, "evaluation", "settings"),
            )  # fmt: skip
    similarity = _get(data, "controls", "similarity")
    if isinstance(similarity, Mapping):
        key = "controls.similarity"
        refer(f"{key}.corpus", similarity.get("corpus"), image_corpora, "image_corpora")
        for i, value in enumerate(similarity.get("datasets") or []):
            refer(f"{key}.datasets[{i}]", value, datasets, "evaluation.datasets")
        refer(f"{key}.model", similarity.get("model"), models, "evaluation.models")
        embedder = similarity.get("embedder")
        if isinstance(embedder, Mapping) and embedder.get("kind") == "open_clip":
            refer(f"{key}.embedder.model", embedder.get("model"), models, "evaluation.models")
        if similarity.get("retrain") and not isinstance(_get(data, "clip_training"), Mapping):
            errors.append(f"{key}.retrain: needs a clip_training section (the model that is retrained)")
    wag = _get(data, "let_it_wag")
    if isinstance(wag, Mapping):
        for i, value in enumerate(wag.get("models") or []):
            refer(f"let_it_wag.models[{i}]", value, models, "evaluation.models")
        refer("let_it_wag.outliers.model", _get(wag, "outliers", "model"), models, "evaluation.models")
        refer("let_it_wag.reference", wag.get("reference"), datasets, "evaluation.datasets")
        errors += _wag_input_errors(wag)
    for name, entry in corpora.items():
        concepts = _get(entry, "concepts")
        why = concept_table_error(concepts) if isinstance(concepts, str) else None
        if why:
            errors.append(f"corpora.{name}.concepts: {why}")
    return errors


def check(
    data: Any, *, dvc: Mapping[str, Any] | None = None, workdir: Path | None = None, files: bool = True
) -> list[str]:
    """Every error of the params mapping ``data``, one ``full.key.path: message`` line each; ``[]`` if none.

    ``dvc``: the parsed dvc.yaml whose stage outputs are exempt from the file checks; ``workdir``: the folder
    relative paths are read against (default :func:`helpers.paths.workdir`); ``files=False`` skips the disk.
    """
    if not isinstance(data, Mapping):
        return [f"(top level): expected a mapping of sections, got {type(data).__name__}"]
    try:
        Params.model_validate(data)
        errors: list[str] = []
    except ValidationError as err:
        errors = error_lines(err, "", Params)
    errors += [e for e in _reference_errors(data) if e not in errors]
    if files:
        from helpers import paths

        workdir = Path(workdir) if workdir is not None else paths.workdir()
        produced = produced_paths(dvc or {}, data)
        for key, value in _path_keys(data):
            if not isinstance(value, str) or not value.strip() or any(c in value for c in "*?[{"):
                continue
            path = Path(os.path.expanduser(value))
            path = path if path.is_absolute() else workdir / path
            if path.exists() or _is_produced(value, produced, workdir):
                continue
            line = f"{key}: file not found: {value}"
            if not any(e.startswith(f"{key}:") for e in errors):
                errors.append(line)
    return errors
