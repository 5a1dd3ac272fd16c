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

from helpers.params import ConfigError, validate
from helpers.params.studies import StudyEntry, release_datasets, release_models, study_reference_errors

__all__ = ["DEFAULT_ZERO_SHOT_PLOTTED", "Statistics", "Study", "check_study", "count_type_name", "release_datasets",
           "release_models"]  # fmt: skip

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


def _statistics(given: Any, analysis: Mapping[str, Any]) -> Statistics:
    """The study's statistics with the study's own defaults (params ``analysis``) for what it leaves unset."""
    n_edges = {"zero_shot": int(analysis["zero_shot"]["n_edges"]), "retrieval": int(analysis["retrieval"]["n_edges"])}
    retrieval_plotted = analysis["retrieval"]["plotted_bins"]
    plotted = {"zero_shot": DEFAULT_ZERO_SHOT_PLOTTED, "retrieval": (retrieval_plotted[0], retrieval_plotted[1])}
    if given.n_edges is not None:
        n_edges = dict.fromkeys(n_edges, given.n_edges)
    if given.plotted_bins is not None:
        plotted = dict.fromkeys(plotted, (given.plotted_bins[0], given.plotted_bins[1]))
    resamples = analysis["bootstrap_resamples"] if given.bootstrap_resamples is None else given.bootstrap_resamples
    seed = analysis["seed"] if given.seed is None else given.seed
    return Statistics(n_edges, plotted, given.zero_rule, int(resamples), int(seed))


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
    evaluation_settings: Mapping[str, Any] | None = None,
    base: str | Path = ".",
) -> Study:
    """Check ``studies.<name>`` against params (the sections passed) and return it as a ``Study``.

        The shape is :class:`helpers.params.studies.StudyEntry`'s, the references
        :func:`helpers.params.studies.study_reference_errors` -- the same checks ``python -m helpers.params check``
        and the stage runner make before any work. Here ``truth`` must also hold a world (it is a stage output, so
        the whole-file check cannot require it). ``evaluation_settings``: the prompts and ks the local models are
    evaluated with (params ``evaluation.settings``). ``base``: the folder a relative ``truth`` is read from.

        Raises:
            ConfigError: one line per problem, each naming its key (``studies.<name>.counts.corpus: ...``).
    """
    prefix = f"studies.{name}"
    checked = validate(StudyEntry, entry, prefix)
    errors = study_reference_errors(
        name, entry, corpora=corpora, image_corpora=image_corpora, thresholds=thresholds, models=models,
        datasets=datasets, analysis=analysis, evaluation_settings=evaluation_settings,
    )  # fmt: skip
    counts = checked.counts
    truth = Path(base) / counts.truth if counts.truth is not None else None
    if truth is not None and not (truth / "truth" / "concepts.parquet").exists():
        errors.append(f"{prefix}.counts.truth: {truth} holds no synthetic world (truth/concepts.parquet)")
    if errors:
        raise ConfigError("\n".join(errors))
    fields: dict[str, Any] = {"truth": truth}
    if counts.release is not None:
        types = counts.count_types or analysis["zero_shot"]["count_types"]
        fields.update(release=counts.release, release_count_types=tuple(types))
    else:
        fields.update(
            corpus=counts.corpus,
            image_corpora=tuple(counts.image_corpora or ()),
            thresholds=tuple(float(t) for t in counts.thresholds or ()),
        )
    local = tuple(m for m in checked.models if m in models)
    return Study(
        name=name, models=tuple(checked.models), local_models=local, datasets=tuple(checked.datasets),
        prompts=tuple(checked.prompts) if checked.prompts is not None else None,
        metrics=tuple(checked.metrics) if checked.metrics is not None else None,
        statistics=_statistics(checked.statistics, analysis), **fields,
    )  # fmt: skip
