"""A study entry of params.yaml (``studies.<name>``), checked against the rest of params before any work.

Schema (every key not marked optional is required)::

    studies:
      <name>:
        counts:                       # where the frequencies come from: exactly one of corpus / release / truth
          corpus: <corpora key>       # a corpus of this compendium: its caption-search counts ("text")
          image_corpora: [<key>, ...] # optional, with corpus: image_corpora entries whose `corpus` is that
                                      #   corpus; the first gives "image"/"matched", the others
                                      #   "image:<key>"/"matched:<key>"
          thresholds: [0.7]           # required with image_corpora: each one of image_search.thresholds; with
                                      #   several, the count types carry the threshold ("image0.6", ...)
          truth: data/raw/synthetic   # optional: a synthetic world folder; adds the count type "true"
                                      #   (samples that show the concept); alone, the world's true counts only
          release: <pretrain>         # or: the release's counts of one analysis.zero_shot.pretrains key
          count_types: [...]          # optional, with release: release method names
                                      #   (default analysis.zero_shot.count_types)
        models: [<key>, ...]          # evaluation.models keys and/or release model keys
        datasets: [<name>, ...]       # evaluation.datasets keys (local models) or release dataset names
        prompts: [class, ...]         # optional: zero-shot prompt sets (default: all evaluated)
        metrics: [i2t_k=1, ...]       # optional: retrieval metrics (default: all evaluated)
        statistics:                   # optional; defaults are the study's own choices (params `analysis`)
          n_edges: 8                  #   bin edges of the binned r (default analysis.<task>.n_edges)
          plotted_bins: [1, -1]       #   [start, stop] of the bins entering the binned r
                                      #   (default zero-shot [1, -1], retrieval analysis.retrieval.plotted_bins)
          zero_rule: to_one           #   the zero rule of the figures and the headline (both are fitted)
          bootstrap_resamples: 1000   #   default analysis.bootstrap_resamples
          seed: 0                     #   default analysis.seed

Every error is a ``ConfigError`` naming the offending key (``studies.<name>.counts.corpus`` ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.analysis.loglinear import ZERO_RULES
from helpers.evaluation.specs import PROMPT_SETS, RELEASE_METRIC
from helpers.shards import ConfigError

STUDY_KEYS = ("counts", "models", "datasets", "prompts", "metrics", "statistics")
COUNT_KEYS = ("corpus", "image_corpora", "thresholds", "truth", "release", "count_types")
STATISTICS_KEYS = ("n_edges", "plotted_bins", "zero_rule", "bootstrap_resamples", "seed")
#: the zero-shot plotted bins when a study names none: the paper's choice for most pretraining sets
DEFAULT_ZERO_SHOT_PLOTTED = (1, -1)


@dataclass(frozen=True)
class Statistics:
    """Per-task bin settings and the shared bootstrap settings (``helpers.analysis.loglinear``)."""

    n_edges: dict[str, int]  # task -> bin edges
    plotted: dict[str, tuple[int | None, int | None]]  # task -> (start, stop) of the plotted bins
    zero_rule: str
    resamples: int
    seed: int


@dataclass(frozen=True)
class Study:
    """A checked study entry (see the module docstring for the params schema)."""

    name: str
    corpus: str | None = None
    image_corpora: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    truth: Path | None = None
    release: str | None = None
    release_count_types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    local_models: tuple[str, ...] = ()  # the models evaluated by this compendium (evaluate@ stages)
    datasets: tuple[str, ...] = ()
    prompts: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    statistics: Statistics = field(default_factory=lambda: Statistics({}, {}, "to_one", 0, 0))

    def count_types(self) -> list[str]:
        """The study's count types, in the order of its figures."""
        if self.release:
            return list(self.release_count_types)
        out = ["text"] if self.corpus else []
        for i, image in enumerate(self.image_corpora):
            for method in ("image", "matched"):
                for threshold in self.thresholds:
                    out.append(
                        count_type_name(method, threshold, image, several=len(self.thresholds) > 1, first=i == 0)
                    )
        if self.truth is not None:
            out.append("true")
        return out


def count_type_name(method: str, threshold: float, image_corpus: str, *, several: bool, first: bool) -> str:
    """``image`` / ``matched``; with several thresholds ``image0.6``; for a later image corpus ``image:<key>``."""
    name = f"{method}{threshold:g}" if several else method
    return name if first else f"{name}:{image_corpus}"


def _names(value: Any, key: str, known: Sequence[str] | None, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of {what}, got {value!r}")
    if any(not isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected names (strings), got {value!r}")
    if known is not None:
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ConfigError(f"{key}: unknown {what} {unknown} (known: {sorted(known)})")
    return tuple(value)


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _plotted(value: Any, key: str) -> tuple[int | None, int | None]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if not ok or any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in value):
        raise ConfigError(f"{key}: expected [start, stop] (integers or null), got {value!r}")
    return (value[0], value[1])


def _statistics(entry: Any, prefix: str, analysis: Mapping[str, Any]) -> Statistics:
    entry = {} if entry is None else entry
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(STATISTICS_KEYS))
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {unknown} (known: {list(STATISTICS_KEYS)})")
    defaults_edges = {
        "zero_shot": int(analysis["zero_shot"]["n_edges"]),
        "retrieval": int(analysis["retrieval"]["n_edges"]),
    }
    defaults_plotted = {
        "zero_shot": DEFAULT_ZERO_SHOT_PLOTTED,
        "retrieval": _plotted(analysis["retrieval"]["plotted_bins"], "analysis.retrieval.plotted_bins"),
    }
    n_edges = defaults_edges
    if "n_edges" in entry:
        n_edges = dict.fromkeys(defaults_edges, _int(entry["n_edges"], f"{prefix}.n_edges", 2))
    plotted = defaults_plotted
    if "plotted_bins" in entry:
        plotted = dict.fromkeys(defaults_plotted, _plotted(entry["plotted_bins"], f"{prefix}.plotted_bins"))
    zero_rule = entry.get("zero_rule", "to_one")
    if zero_rule not in ZERO_RULES:
        raise ConfigError(f"{prefix}.zero_rule: expected one of {list(ZERO_RULES)}, got {zero_rule!r}")
    resamples = _int(
        entry.get("bootstrap_resamples", analysis["bootstrap_resamples"]), f"{prefix}.bootstrap_resamples", 0
    )
    seed = _int(entry.get("seed", analysis["seed"]), f"{prefix}.seed", 0)
    return Statistics(n_edges, plotted, zero_rule, resamples, seed)


def release_models(analysis: Mapping[str, Any]) -> dict[str, str]:
    """Release model key -> its pretraining set, from ``analysis.zero_shot.pretrains``."""
    return {m: p for p, spec in analysis["zero_shot"]["pretrains"].items() for m in spec["models"]}


def release_datasets(analysis: Mapping[str, Any]) -> list[str]:
    """The release's zero-shot and retrieval datasets (``analysis.zero_shot`` / ``analysis.retrieval``)."""
    return [*analysis["zero_shot"]["datasets"], *analysis["retrieval"]["datasets"]]


def check_study(
    name: str,
    entry: Any,
    *,
    corpora: Mapping[str, Any],
    image_corpora: Mapping[str, Any],
    thresholds: Sequence[float],
    models: Mapping[str, Any],
    datasets: Mapping[str, Any],
    analysis: Mapping[str, Any],
    base: str | Path = ".",
) -> Study:
    """Check ``studies.<name>`` against params (the sections passed) and return it as a ``Study``.

    Raises ``ConfigError`` naming the key for an unknown corpus, image corpus, threshold, release pretraining
    set or count type, model, dataset, prompt or metric, and for a missing or malformed key. ``base``: the
    folder a relative ``truth`` path is read from (the work folder).
    """
    prefix = f"studies.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(STUDY_KEYS))
    missing = [k for k in ("counts", "models", "datasets") if k not in entry]
    if unknown or missing:
        raise ConfigError(f"{prefix}: unknown key(s) {unknown} / missing key(s) {missing} (known: {list(STUDY_KEYS)})")
    taken = {*analysis["zero_shot"]["pretrains"], analysis.get("t2i", {}).get("pretrain")}
    if name in taken:
        raise ConfigError(f"{prefix}: a study is named like a release pretraining set; its fits would mix with those")
    counts = entry["counts"]
    if not isinstance(counts, Mapping):
        raise ConfigError(f"{prefix}.counts: expected a mapping, got {counts!r}")
    unknown = sorted(set(counts) - set(COUNT_KEYS))
    if unknown:
        raise ConfigError(f"{prefix}.counts: unknown key(s) {unknown} (known: {list(COUNT_KEYS)})")
    sources = [k for k in ("corpus", "release") if counts.get(k) is not None]
    if len(sources) > 1 or (not sources and counts.get("truth") is None):
        raise ConfigError(f"{prefix}.counts: give exactly one of corpus, release or (alone) truth, got {dict(counts)}")
    fields: dict[str, Any] = {}
    rel_models = release_models(analysis)
    if counts.get("release") is not None:
        pretrains = analysis["zero_shot"]["pretrains"]
        if counts["release"] not in pretrains:
            raise ConfigError(
                f"{prefix}.counts.release: unknown pretraining set {counts['release']!r} ({sorted(pretrains)})"
            )
        for key in ("image_corpora", "thresholds", "truth"):
            if counts.get(key) is not None:
                raise ConfigError(f"{prefix}.counts.{key}: only with counts.corpus, not with counts.release")
        types = counts.get("count_types") or analysis["zero_shot"]["count_types"]
        fields.update(
            release=counts["release"],
            release_count_types=_names(types, f"{prefix}.counts.count_types", None, "count types"),
        )
    else:
        if counts.get("count_types") is not None:
            raise ConfigError(f"{prefix}.counts.count_types: only with counts.release")
        if counts.get("corpus") is not None:
            fields["corpus"] = _names([counts["corpus"]], f"{prefix}.counts.corpus", list(corpora), "corpus")[0]
        images = counts.get("image_corpora")
        if images is not None:
            if "corpus" not in fields:
                raise ConfigError(f"{prefix}.counts.image_corpora: needs counts.corpus (the caption side)")
            images = _names(images, f"{prefix}.counts.image_corpora", list(image_corpora), "image_corpora entries")
            for image in images:
                if image_corpora[image].get("corpus") != fields["corpus"]:
                    raise ConfigError(
                        f"{prefix}.counts.image_corpora: {image!r} tags corpus {image_corpora[image].get('corpus')!r}, "
                        f"not {fields['corpus']!r}"
                    )
            raw = counts.get("thresholds")
            if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
                raise ConfigError(f"{prefix}.counts.thresholds: expected a non-empty list of thresholds, got {raw!r}")
            for t in raw:
                if (
                    isinstance(t, bool)
                    or not isinstance(t, (int, float))
                    or not np.isclose(thresholds, t, atol=1e-9).any()
                ):
                    raise ConfigError(
                        f"{prefix}.counts.thresholds: {t!r} is not one of image_search.thresholds {list(thresholds)}"
                    )
            fields.update(image_corpora=images, thresholds=tuple(float(t) for t in raw))
        elif counts.get("thresholds") is not None:
            raise ConfigError(f"{prefix}.counts.thresholds: only with counts.image_corpora")
        if counts.get("truth") is not None:
            truth = Path(base) / str(counts["truth"])
            if not (truth / "truth" / "concepts.parquet").exists():
                raise ConfigError(f"{prefix}.counts.truth: {truth} holds no synthetic world (truth/concepts.parquet)")
            fields["truth"] = truth
    model_names = _names(entry["models"], f"{prefix}.models", [*models, *rel_models], "models")
    local = tuple(m for m in model_names if m in models)
    known_datasets = [
        *(datasets if local else []),
        *(release_datasets(analysis) if len(local) < len(model_names) else []),
    ]
    dataset_names = _names(entry["datasets"], f"{prefix}.datasets", known_datasets, "datasets")
    if local:
        for dataset in dataset_names:
            if dataset not in datasets:
                raise ConfigError(
                    f"{prefix}.datasets: {dataset!r} is no evaluation.datasets entry, which {list(local)} need"
                )
    prompts = entry.get("prompts")
    if prompts is not None:
        prompts = _names(prompts, f"{prefix}.prompts", list(PROMPT_SETS), "prompt sets")
    metrics = entry.get("metrics")
    if metrics is not None:
        metrics = _names(metrics, f"{prefix}.metrics", None, "metrics")
        bad = [m for m in metrics if not RELEASE_METRIC.match(m)]
        if bad:
            raise ConfigError(f"{prefix}.metrics: {bad} are not retrieval metrics like i2t_k=1 or t2i_k=5")
    statistics = _statistics(entry.get("statistics"), f"{prefix}.statistics", analysis)
    return Study(
        name=name, models=model_names, local_models=local, datasets=dataset_names, prompts=prompts, metrics=metrics,
        statistics=statistics, **fields,
    )  # fmt: skip
