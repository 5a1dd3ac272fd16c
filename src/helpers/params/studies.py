"""Params of ``studies.<name>``: your counts x your models -> the study's fits (:mod:`helpers.analysis.studies`).

The shape of an entry is checked by :class:`StudyEntry`; what it names in other sections (corpora, image
corpora, thresholds, models, datasets, release pretraining sets) by :func:`study_reference_errors`, which both
the whole-file check and the study stage (``helpers.analysis.studies.spec.check_study``) use.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from helpers.params.base import NonEmptyStr, NonNegativeInt, Probability, Section

Names = Annotated[list[NonEmptyStr], Field(min_length=1)]

#: The release's count methods, as its ``{downstream}_{pretrain}_{method}_search_counts.json`` files name them
#: (parsed by :func:`helpers.release.tidy.parse_counts_filename`; a test checks both agree on the release).
RELEASE_COUNT_TYPE = r"^(lowercased|lemmatized|rampp\d\.\d+|integrated_tlemmatized_i\d\.\d+)$"
#: The retrieval ks the release evaluated (``{dataset}_{i2t|t2i}_k={k}_results.json``).
RELEASE_KS = (1, 5, 10)
PROMPT_SETS = ("class", "simple", "ensemble")
_METRIC = re.compile(r"^(i2t|t2i)_k=(\d+)$")


class StudyCounts(Section):
    """Where a study's frequencies come from: exactly one of ``corpus``, ``release`` or (alone) ``truth``."""

    corpus: NonEmptyStr | None = Field(None, description="a corpora entry: its caption-search counts ('text')")
    image_corpora: Names | None = Field(
        None, description="image_corpora entries tagging that corpus: image and matched counts"
    )
    thresholds: Annotated[list[Probability], Field(min_length=1)] | None = Field(
        None, description="with image_corpora: tagger thresholds, each one of image_search.thresholds"
    )
    truth: NonEmptyStr | None = Field(None, description="a synthetic world folder: adds the true counts")
    release: NonEmptyStr | None = Field(
        None, description="the release's counts of one analysis.zero_shot.pretrains key"
    )
    count_types: Names | None = Field(
        None,
        description="with release: release method names (lowercased, lemmatized, rampp<t>, "
        "integrated_tlemmatized_i<t>)",
    )

    @field_validator("count_types")
    @classmethod
    def _release_methods(cls, value: list[str] | None) -> list[str] | None:
        for t in value or []:
            if not re.match(RELEASE_COUNT_TYPE, t):
                close = difflib.get_close_matches(
                    t, ["lowercased", "lemmatized", "rampp0.7", "integrated_tlemmatized_i0.7"], n=1
                )
                raise ValueError(
                    f"{t!r} is no release count type (lowercased, lemmatized, rampp<threshold>, "
                    f"integrated_tlemmatized_i<threshold>, e.g. rampp0.7)"
                    + (f"; did you mean {close[0]!r}?" if close else "")
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> StudyCounts:
        sources = [k for k in ("corpus", "release") if getattr(self, k) is not None]
        if len(sources) > 1 or (not sources and self.truth is None):
            raise ValueError("give exactly one of corpus, release or (alone) truth")
        if self.release is not None:
            given = [k for k in ("image_corpora", "thresholds", "truth") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only with counts.corpus, not with counts.release")
        elif self.count_types is not None:
            raise ValueError("count_types: only with counts.release")
        if self.image_corpora is not None and self.corpus is None:
            raise ValueError("image_corpora: needs counts.corpus (the caption side)")
        if (self.image_corpora is None) != (self.thresholds is None):
            raise ValueError("image_corpora and thresholds go together")
        return self


class StudyStatistics(Section):
    """The study's statistics; unset keys take the study's own choices (params ``analysis``)."""

    n_edges: Annotated[int, Field(ge=2)] | None = None
    plotted_bins: Annotated[list[int | None], Field(min_length=2, max_length=2)] | None = None
    zero_rule: Literal["to_one", "dropped"] = "to_one"
    bootstrap_resamples: NonNegativeInt | None = None
    seed: NonNegativeInt | None = None


class StudyEntry(Section):
    """``studies.<name>``: counts x models x datasets, and the statistics of the fits."""

    counts: StudyCounts
    models: Names = Field(description="evaluation.models keys and/or release model keys")
    datasets: Names = Field(description="evaluation.datasets keys (local models) or release dataset names")
    prompts: Annotated[list[Literal["class", "simple", "ensemble"]], Field(min_length=1)] | None = None
    metrics: Annotated[list[Annotated[str, Field(pattern=r"^(i2t|t2i)_k=\d+$")]], Field(min_length=1)] | None = None
    statistics: StudyStatistics = StudyStatistics()


def release_models(analysis: Mapping[str, Any]) -> dict[str, str]:
    """Release model key -> its pretraining set, from ``analysis.zero_shot.pretrains``."""
    pretrains = (analysis.get("zero_shot") or {}).get("pretrains") or {}
    return {m: p for p, spec in pretrains.items() if isinstance(spec, Mapping) for m in spec.get("models") or []}


def release_datasets(analysis: Mapping[str, Any]) -> list[str]:
    """The release's zero-shot and retrieval datasets (``analysis.zero_shot`` / ``analysis.retrieval``)."""
    return [
        *(analysis.get("zero_shot") or {}).get("datasets", []),
        *(analysis.get("retrieval") or {}).get("datasets", []),
    ]


def study_reference_errors(
    name: str,
    entry: Mapping[str, Any],
    *,
    corpora: Mapping[str, Any],
    image_corpora: Mapping[str, Any],
    thresholds: Sequence[float],
    models: Mapping[str, Any],
    datasets: Mapping[str, Any],
    analysis: Mapping[str, Any],
    evaluation_settings: Mapping[str, Any] | None = None,
) -> list[str]:
    """What ``studies.<name>`` names that the other sections do not hold, one ``key: message`` line each.

    ``entry`` is the raw mapping (its shape is :class:`StudyEntry`'s concern; malformed parts are skipped here).
    ``evaluation_settings`` (params ``evaluation.settings``) gives the prompts and retrieval ks the local models
    are evaluated with: a study's ``prompts`` / ``metrics`` must be among them (the release's models: ks 1, 5,
    10), or the study would fail only after every evaluation has run.
    """
    prefix = f"studies.{name}"
    errors: list[str] = []
    pretrains = (analysis.get("zero_shot") or {}).get("pretrains") or {}
    if name in {*pretrains, (analysis.get("t2i") or {}).get("pretrain")}:
        errors.append(f"{prefix}: a study is named like a release pretraining set; its fits would mix with those")
    counts = entry.get("counts") if isinstance(entry.get("counts"), Mapping) else {}
    corpus = counts.get("corpus")
    if isinstance(corpus, str) and corpus not in corpora:
        errors.append(f"{prefix}.counts.corpus: {corpus!r} is not an entry of corpora (entries: {', '.join(corpora)})")
    release = counts.get("release")
    if isinstance(release, str) and release not in pretrains:
        errors.append(f"{prefix}.counts.release: unknown pretraining set {release!r} (known: {', '.join(pretrains)})")
    images = counts.get("image_corpora")
    for i, image in enumerate(images if isinstance(images, list) else []):
        if image not in image_corpora:
            errors.append(f"{prefix}.counts.image_corpora[{i}]: {image!r} is not an entry of image_corpora")
        elif isinstance(corpus, str):
            tagged = (image_corpora[image] or {}).get("corpus") or image
            if tagged != corpus:
                errors.append(f"{prefix}.counts.image_corpora[{i}]: {image!r} tags corpus {tagged!r}, not {corpus!r}")
    for i, t in enumerate(counts.get("thresholds") if isinstance(counts.get("thresholds"), list) else []):
        ok = isinstance(t, (int, float)) and not isinstance(t, bool)
        if ok and thresholds and not np.isclose(list(thresholds), t, atol=1e-9).any():
            errors.append(
                f"{prefix}.counts.thresholds[{i}]: {t!r} is not one of image_search.thresholds {list(thresholds)}"
            )
    rel_models = release_models(analysis)
    names = (
        [m for m in entry.get("models") or [] if isinstance(m, str)] if isinstance(entry.get("models"), list) else []
    )
    unknown = [m for m in names if m not in models and m not in rel_models]
    for i, model in enumerate(names):
        if model in unknown:
            close = difflib.get_close_matches(model, [*models, *rel_models], n=1)
            errors.append(
                f"{prefix}.models[{i}]: {model!r} is neither an evaluation.models entry "
                f"({', '.join(models) or 'none'}) nor a release model ({', '.join(sorted(rel_models)) or 'none'})"
                + (f"; did you mean {close[0]!r}?" if close else "")
            )
    if unknown or not names:
        # which datasets, ks and prompts apply depends on the models: check those once the models are right
        return errors
    local = [m for m in names if m in models]
    known = {*(datasets if local else []), *(release_datasets(analysis) if len(local) < len(names) else [])}
    listed = entry.get("datasets") if isinstance(entry.get("datasets"), list) else []
    for i, dataset in enumerate(d for d in listed if isinstance(d, str)):
        if dataset not in known:
            errors.append(f"{prefix}.datasets[{i}]: unknown dataset {dataset!r} (known: {', '.join(sorted(known))})")
        elif local and dataset not in datasets:
            errors.append(f"{prefix}.datasets[{i}]: {dataset!r} is no evaluation.datasets entry, which {local} need")
    settings = evaluation_settings if isinstance(evaluation_settings, Mapping) else {}
    local_ks = settings.get("ks") if isinstance(settings.get("ks"), list) else [1, 5, 10]
    ks = {*(local_ks if local else []), *(RELEASE_KS if len(local) < len(names) else [])}
    metrics = entry.get("metrics") if isinstance(entry.get("metrics"), list) else []
    for i, metric in enumerate(metrics):
        match = _METRIC.match(metric) if isinstance(metric, str) else None
        if match and ks and int(match[2]) not in ks:
            where = "evaluation.settings.ks" if len(local) == len(names) else "evaluation.settings.ks + the release's"
            where = where if local else "the release's ks"
            errors.append(f"{prefix}.metrics[{i}]: {metric!r}: k={match[2]} is not evaluated ({where}: {sorted(ks)})")
    local_prompts = settings.get("prompts") if isinstance(settings.get("prompts"), list) else None
    prompts = entry.get("prompts") if isinstance(entry.get("prompts"), list) else []
    if local and local_prompts is not None:
        for i, prompt in enumerate(prompts):
            # a prompt set that does not exist at all is the typed layer's error, reported once
            if prompt in PROMPT_SETS and prompt not in local_prompts:
                errors.append(
                    f"{prefix}.prompts[{i}]: {prompt!r} is not evaluated (evaluation.settings.prompts: {local_prompts})"
                )
    return errors
