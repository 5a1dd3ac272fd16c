"""Score the frequency pipeline against the known truth of a synthetic world (``helpers.synthetic.world``).

Why: on a real corpus the caption search, the image tagger and the log-linear fit can only be checked
against each other. In a synthetic world every sample's *shown* and *mentioned* concepts are known, so each
estimate of the pipeline gets a precision and a recall, and the estimated misalignment gets its true value.
The log-linear fits on the estimated and the true counts are not done here: the world is an ordinary study
(``params.yaml`` ``studies.synthetic``, ``helpers.analysis.studies``) whose count types include ``true``.

Concept ids: the runs number concepts by the searched *concept table* (any superset of the world's concepts);
the truth tables by the *world* (0..K-1, names in ``truth/concepts.parquet``). Table concepts are mapped to
world concepts by ``naming.concept_key`` of their names; table concepts that are no world concept are left out
of every figure here (the world cannot say whether they are right), while a world concept the table lacks is
an error: its pairs would silently count as misses.

Public API::

    estimated_pairs(text_dir, image_dir, threshold, concepts, world_names) -> (sample_id, concept_id, in_text, in_image)
    validation_table(world_dir, text_dir, image_dir, concepts, threshold, thresholds=, calibrated=)
        -> SYNTHETIC_VALIDATION rows (the operating threshold, every other threshold, per-concept calibrated ones)
    true_frequency_table(world_dir) -> truth/concepts.parquet + matched_count
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from scipy import stats

from helpers import schemas
from helpers.images.calibration import read_thresholds, thresholds_for
from helpers.images.corpora import frequencies_path
from helpers.images.frequencies import METHODS, _concept_names, paired_shards, per_concept_cuts
from helpers.images.search import check_thresholds, image_search_dir, stored_floor
from helpers.naming import concept_key
from helpers.params import ConfigError, validate
from helpers.params.study import SyntheticValidation
from helpers.shards import RUN_FILE, distinct_pairs, read_run
from helpers.text import corpora

PAIR_KEYS = ["sample_id", "concept_id"]
VALIDATION_METHODS = (*METHODS, "misalignment")
# estimator -> (estimated flag(s), true flag(s), what the truth is): a pair is counted when all its flags hold
_ESTIMATORS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "text": (("in_text",), ("mentioned",), "mentioned"),
    "image": (("in_image",), ("shown",), "shown"),
    "matched": (("in_text", "in_image"), ("shown", "mentioned"), "shown and mentioned"),
}

_rate = pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True)
_pair_count = pa.Column("Int64", pa.Check.ge(0), nullable=True)

SYNTHETIC_VALIDATION = pa.DataFrameSchema(
    {
        "method": pa.Column(str, pa.Check.isin(list(VALIDATION_METHODS))),
        "truth": pa.Column(str),
        "threshold": _rate,
        "threshold_label": pa.Column(str),
        "operating": pa.Column(bool),
        "precision": _rate,
        "recall": _rate,
        "true_positives": _pair_count,
        "false_positives": _pair_count,
        "false_negatives": _pair_count,
        "count_spearman_r": pa.Column(float, pa.Check.in_range(-1.0, 1.0), nullable=True),
        "count_ratio": pa.Column(float, pa.Check.ge(0.0), nullable=True),
        "estimated": _rate,
        "true": _rate,
        "estimated_fixed": _rate,
        "true_fixed": _rate,
    },
    unique=["method", "threshold_label"],
    strict=True,
    ordered=True,
    name="synthetic_validation",
)


# ------------------------------------------------------------------------------------- pair tables


def _flag_union(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """Outer join of two (sample_id, concept_id, flags...) tables; a flag missing on one side is False."""
    merged = left.merge(right, on=PAIR_KEYS, how="outer", sort=True)
    for column in merged.columns.difference(PAIR_KEYS):
        merged[column] = merged[column].eq(True)  # NaN (pair absent on that side) -> False
    return merged.astype({"sample_id": "int64", "concept_id": "int32"})


def _flagged(sample: np.ndarray, concept: np.ndarray, flag: str) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": sample, "concept_id": concept, flag: True})


def _world_ids(concepts: pd.DataFrame, world_names: Sequence[str], n_concepts: int) -> np.ndarray:
    """World id of every concept-table id (-1: not a world concept); every world concept must be in the table."""
    table = _concept_names(concepts, n_concepts)
    keys = [concept_key(name) for name in world_names]
    if len(set(keys)) != len(keys):
        raise ValueError("world_names: two world concepts share a concept_key; they cannot be told apart")
    world = {key: i for i, key in enumerate(keys)}
    ids = np.full(n_concepts, -1, dtype=np.int32)
    for cid, name in zip(table["concept_id"], table["concept"]):
        ids[cid] = world.get(concept_key(name), -1)
    missing = sorted(set(range(len(keys))) - set(ids[ids >= 0].tolist()))
    if missing:
        names = ", ".join(repr(world_names[i]) for i in missing)
        raise ValueError(
            f"{len(missing)} of the world's {len(keys)} concepts are not in the searched concept table ({names}); "
            "their pairs would all count as misses: search with a table that contains every world concept"
        )
    return ids


def _to_world(sample: np.ndarray, concept: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mapped = world[concept]
    keep = mapped >= 0
    return distinct_pairs(sample[keep], mapped[keep])  # two table concepts may share a world concept


def estimated_pairs(
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    threshold: float | np.ndarray,
    concepts: pd.DataFrame,
    world_names: Sequence[str],
    *,
    allow_failed: bool = False,
) -> pd.DataFrame:
    """Every (sample, world concept) pair the caption search found or the tagger scored >= ``threshold``.

    ``threshold`` is one global probability, or an array with one threshold per concept-table id (the runs'
    concept ids 0..n-1: per-concept thresholds fitted on an audit split, ``helpers.images.calibration``); each
    must be >= the image run's stored ``prob_floor`` (ValueError naming the concepts otherwise).

    Returns DataFrame(sample_id int64, concept_id int32 = WORLD id, in_text bool, in_image bool), sorted. Text
    pairs are exactly those the pipeline counts (``frequencies.paired_shards``, drop rule included); the
    threshold is compared in float32, as ``image_counts``. ``concepts`` is the table the runs searched
    (concept_id, name); ``world_names`` the world's names in world-id order. ``attrs["n_records"]`` holds
    the number of records the image search read (the pipeline's fixed misalignment denominator).
    """
    floor = stored_floor(image_dir)
    per_concept = isinstance(threshold, np.ndarray)
    if not per_concept:
        cut = np.float32(check_thresholds(threshold, floor, image_dir)[0])
    n_concepts, shards = paired_shards(text_dir, image_dir, allow_failed=allow_failed)
    if per_concept:
        cuts = per_concept_cuts(threshold, n_concepts, floor, image_dir)
    world = _world_ids(concepts, world_names, n_concepts)
    frames, records = [], 0
    for pair in shards:
        records += pair.image_records
        text = _flagged(*_to_world(pair.text_sample, pair.text_concept, world), "in_text")
        keep = pair.image_prob >= (cuts[pair.image_concept] if per_concept else cut)
        image = _flagged(*_to_world(pair.image_sample[keep], pair.image_concept[keep], world), "in_image")
        frames.append(_flag_union(text, image))
    if not frames:  # a run without shards: an empty table of the right columns and dtypes
        none = np.zeros(0, np.int64), np.zeros(0, np.int32)
        frames = [_flag_union(_flagged(*none, "in_text"), _flagged(*none, "in_image"))]
    out = pd.concat(frames, ignore_index=True)
    out.attrs["n_records"] = records
    return out


def _world_concepts(world_dir: str | os.PathLike) -> pd.DataFrame:
    concepts = pd.read_parquet(Path(world_dir) / "truth" / "concepts.parquet")
    if concepts["concept_id"].tolist() != list(range(len(concepts))):
        raise ValueError(f"{world_dir}: truth/concepts.parquet does not hold concept ids 0..K-1 in order")
    return concepts


def _true_pairs(world_dir: str | os.PathLike) -> pd.DataFrame:
    """(sample_id, concept_id, shown, mentioned): the union of the world's two truth pair tables."""
    truth = Path(world_dir) / "truth"
    shown = pd.read_parquet(truth / "image_concepts.parquet").assign(shown=True)
    mentioned = pd.read_parquet(truth / "caption_concepts.parquet").assign(mentioned=True)
    return _flag_union(shown[[*PAIR_KEYS, "shown"]], mentioned[[*PAIR_KEYS, "mentioned"]])


def _all(table: pd.DataFrame, flags: Sequence[str]) -> np.ndarray:
    return table[list(flags)].all(axis=1).to_numpy()


def true_frequency_table(world_dir: str | os.PathLike) -> pd.DataFrame:
    """``truth/concepts.parquet`` plus ``matched_count``: samples that show AND mention the concept.

    The matched count is the true value of the pipeline's main (matched) frequency. The stored shown and
    mentioned counts are checked against the pair tables, so a stale or edited world is caught here.
    """
    concepts = _world_concepts(world_dir)
    pairs = _true_pairs(world_dir)
    k = len(concepts)
    concept = pairs["concept_id"].to_numpy()
    for column, flags in (("shown_count", ("shown",)), ("mentioned_count", ("mentioned",))):
        if not np.array_equal(np.bincount(concept[_all(pairs, flags)], minlength=k), concepts[column].to_numpy()):
            raise ValueError(f"{world_dir}: truth/concepts.parquet {column} disagrees with the pair tables")
    matched = np.bincount(concept[_all(pairs, ("shown", "mentioned"))], minlength=k)
    return concepts.assign(matched_count=matched.astype("int64"))


# -------------------------------------------------------------------------------------- validation


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _disjoint_degrees(pairs: pd.DataFrame, first: str, second: str, n_total: int) -> tuple[float, float]:
    """``frequencies.misalignment``'s two degrees for the per-sample concept sets flagged ``first`` / ``second``.

    Among samples with >= 1 concept on each side, the share whose two sets are disjoint (extracted), and the
    same count over ``n_total`` samples (fixed).
    """
    flags = (
        pd.DataFrame(
            {"a": pairs[first], "b": pairs[second], "ab": pairs[first] & pairs[second], "sample_id": pairs["sample_id"]}
        )
        .groupby("sample_id")
        .any()
    )
    both = flags["a"] & flags["b"]
    n_misaligned = int((both & ~flags["ab"]).sum())
    return _ratio(n_misaligned, int(both.sum())), _ratio(n_misaligned, n_total)


CALIBRATED = "calibrated"  # threshold_label of the rows at per-concept (audit-fitted) thresholds


def _label(threshold: float) -> str:
    return f"{float(threshold):g}"


def _estimator_rows(pairs: pd.DataFrame, k: int, methods: Sequence[str], threshold: float, label: str, operating: bool):
    concept = pairs["concept_id"].to_numpy()
    rows = []
    for method in methods:
        est_flags, true_flags, truth = _ESTIMATORS[method]
        est, true = _all(pairs, est_flags), _all(pairs, true_flags)
        tp, fp, fn = int((est & true).sum()), int((est & ~true).sum()), int((~est & true).sum())
        est_counts, true_counts = np.bincount(concept[est], minlength=k), np.bincount(concept[true], minlength=k)
        rows.append({
            "method": method, "truth": truth, "threshold": np.nan if method == "text" else threshold,
            "threshold_label": "-" if method == "text" else label, "operating": operating,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "count_spearman_r": _spearman(est_counts, true_counts),
            "count_ratio": _ratio(est_counts.sum(), true_counts.sum()),
        })  # fmt: skip
    return rows


def validation_table(
    world_dir: str | os.PathLike,
    text_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    concepts: pd.DataFrame,
    threshold: float,
    *,
    thresholds: Sequence[float] = (),
    calibrated: np.ndarray | None = None,
    allow_failed: bool = False,
) -> pd.DataFrame:
    """Precision and recall of the text, image and matched estimates, and the misalignment, against the truth.

    Rows (``SYNTHETIC_VALIDATION``), over the world's concepts only, at the operating ``threshold``
    (``operating`` True):

    * ``text`` vs the *mentioned* pairs, ``image`` (prob >= ``threshold``) vs the *shown* pairs, ``matched``
      (both) vs the pairs shown AND mentioned: pair-level precision/recall with their TP/FP/FN counts, the
      Spearman r between each concept's estimated and true count, and the ratio of the count sums.
    * ``misalignment``: ``estimated`` is the pipeline's ``degree_extracted`` definition applied to the
      estimated sets, ``true`` the same definition on the mentioned vs shown sets; ``*_fixed`` divide by
      the records the image search read and by the world's sample count.

    Then an ``image`` and a ``matched`` row (``operating`` False) for every other global threshold of
    ``thresholds`` (``threshold_label`` its value: the precision/recall curve) and, with ``calibrated`` (one
    threshold per concept-table id, e.g. ``calibration.thresholds_for``), for the per-concept thresholds
    (``threshold_label`` ``calibrated``, ``threshold`` NaN). Raises ValueError for thresholds below the run's
    ``prob_floor`` or a calibrated array of the wrong length.
    """
    world = _world_concepts(world_dir)
    k = len(world)
    names = world["name"].tolist()
    estimate = estimated_pairs(text_dir, image_dir, threshold, concepts, names, allow_failed=allow_failed)
    n_records = estimate.attrs["n_records"]
    truth_pairs = _true_pairs(world_dir)
    pairs = _flag_union(estimate, truth_pairs)
    rows = _estimator_rows(pairs, k, list(_ESTIMATORS), float(threshold), _label(threshold), True)
    estimated, estimated_fixed = _disjoint_degrees(pairs, "in_text", "in_image", n_records)
    n_samples = len(pd.read_parquet(Path(world_dir) / "truth" / "samples.parquet", columns=["sample_id"]))
    true, true_fixed = _disjoint_degrees(pairs, "mentioned", "shown", n_samples)
    rows.append({
        "method": "misalignment", "truth": "mentioned vs shown", "threshold": float(threshold),
        "threshold_label": _label(threshold), "operating": True,
        "estimated": estimated, "true": true, "estimated_fixed": estimated_fixed, "true_fixed": true_fixed,
    })  # fmt: skip
    others: list[tuple[float | np.ndarray, float, str]] = [
        (t, t, _label(t))
        for t in check_thresholds(list(thresholds) or [threshold], 0.0)
        if _label(t) != _label(threshold)
    ]
    if calibrated is not None:
        others.append((np.asarray(calibrated, dtype=np.float64), np.nan, CALIBRATED))
    for cut, value, label in others:
        other = estimated_pairs(text_dir, image_dir, cut, concepts, names, allow_failed=allow_failed)
        rows += _estimator_rows(_flag_union(other, truth_pairs), k, ["image", "matched"], value, label, False)
    table = pd.DataFrame(rows, columns=list(SYNTHETIC_VALIDATION.columns))
    counts = ["true_positives", "false_positives", "false_negatives"]
    floats = [
        c for c in SYNTHETIC_VALIDATION.columns if c not in ("method", "truth", "threshold_label", "operating", *counts)
    ]
    table = table.astype({**dict.fromkeys(counts, "Int64"), **dict.fromkeys(floats, "float64"), "operating": bool})
    return SYNTHETIC_VALIDATION.validate(table, lazy=True)


# ------------------------------------------------------------------------------------------- stage


def _check_stage_settings(settings: Mapping[str, Any] | SyntheticValidation) -> SyntheticValidation:
    """The ``synthetic_validation`` section checked by :class:`helpers.params.study.SyntheticValidation`."""
    return validate(SyntheticValidation, settings, "synthetic_validation")


def image_run_dir(image_corpus: str) -> Path:
    """The image-search run folder of an image corpus: the ``image_search@<name>`` stage's declared output.

    Raises ``ConfigError`` naming ``synthetic_validation.image_corpora`` when that stage has not run.
    """
    run_dir = image_search_dir(image_corpus)
    if not (run_dir / RUN_FILE).is_file():
        raise ConfigError(
            f"synthetic_validation.image_corpora: no image search of '{image_corpus}' at {run_dir} yet "
            f"(run image_search@{image_corpus})"
        )
    return run_dir


def validation_report(settings: Mapping[str, Any], base: str | os.PathLike) -> pd.DataFrame:
    """``validation_table`` for each tagger (``image_corpora``) of the world's corpus, stacked.

    Every tagger gets rows at ``threshold`` (operating), at each of ``thresholds`` and, when ``calibrated``
    names its per-concept threshold table (a path under ``base``), at those thresholds (concepts the table
    lacks keep ``threshold``).

    The first column, ``image_corpus``, names the tagged corpus entry; the text row (no tagger) comes once,
    with ``image_corpus`` ``-``.
    """
    settings = _check_stage_settings(settings)
    world = Path(base) / settings.world
    text_dir = corpora.text_search_dir(settings.corpus)
    concepts = corpora.searched_concepts(settings.corpus)
    unknown = sorted(set(settings.calibrated) - set(settings.image_corpora))
    if unknown:
        raise ConfigError(
            f"synthetic_validation.calibrated: {unknown} are not among synthetic_validation.image_corpora"
        )
    frames = []
    for i, name in enumerate(settings.image_corpora):
        calibrated = None
        if name in settings.calibrated:
            run_dir = image_run_dir(name)
            n = int(read_run(run_dir).get("n_concepts") or 0)
            fitted = read_thresholds(Path(base) / settings.calibrated[name])
            calibrated = thresholds_for(fitted, np.arange(n), float(settings.threshold))
        table = validation_table(
            world,
            text_dir,
            image_run_dir(name),
            concepts,
            float(settings.threshold),
            thresholds=settings.thresholds,
            calibrated=calibrated,
        )
        table.insert(0, "image_corpus", np.where(table["method"] == "text", "-", name))
        frames.append(table if i == 0 else table[table["method"] != "text"])
    return pd.concat(frames, ignore_index=True)


def plot_estimated_vs_true(settings: Mapping[str, Any], base: str | os.PathLike):
    """Per-concept estimated counts (text, image, matched; each tagger) against the true ones, log-log."""
    import seaborn as sns

    settings = _check_stage_settings(settings)
    truth = true_frequency_table(Path(base) / settings.world)
    truth = truth.assign(key=truth["name"].map(concept_key))
    target = {"text": "mentioned_count", "image": "shown_count", "matched": "matched_count"}
    frames = []
    for name in settings.image_corpora:
        freq = schemas.read_table(frequencies_path(name), schemas.CORPUS_FREQUENCIES)
        at = freq["method"].eq("text") | np.isclose(freq["threshold"], float(settings.threshold), atol=1e-9)
        freq = freq[at].assign(key=freq["concept"].map(concept_key)).merge(truth, on="key", how="inner")
        for method, column in target.items():
            rows = freq[freq["method"] == method]
            frames.append(
                pd.DataFrame(
                    {
                        "tagger": "-" if method == "text" else name,
                        "method": method,
                        "estimated": rows["count"],
                        "true": rows[column],
                    }
                )
            )
    data = pd.concat(frames, ignore_index=True).drop_duplicates()
    data[["estimated", "true"]] = np.maximum(data[["estimated", "true"]].to_numpy(), 1)
    grid = sns.relplot(data=data, x="true", y="estimated", col="method", hue="tagger", height=3.0, s=18)
    for ax in grid.axes.flat:
        ax.set(xscale="log", yscale="log")
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    grid.set_axis_labels("true count (samples)", "estimated count")
    return grid.figure


def plot_precision_recall(report: pd.DataFrame):
    """Precision against recall of every tagger's image and matched estimates, one point per threshold.

    ``report``: ``validation_report``'s table. Global thresholds are joined by a line (the P/R curve, its two
    ends labelled with their thresholds); the operating threshold is ringed; a calibrated row is drawn as a star. Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = report[report["method"].isin(["image", "matched"])].copy()
    if rows.empty:
        raise ValueError("plot_precision_recall: the report has no image or matched rows")
    methods = ["image", "matched"]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), sharex=True, sharey=True)
    taggers = list(dict.fromkeys(rows["image_corpus"]))
    colours = dict(zip(taggers, sns.color_palette("colorblind", len(taggers))))
    for ax, method in zip(axes, methods):
        for tagger in taggers:
            these = rows[(rows["method"] == method) & (rows["image_corpus"] == tagger)]
            curve = these[these["threshold_label"] != CALIBRATED].sort_values("threshold")
            colour = colours[tagger]
            ax.plot(curve["recall"], curve["precision"], marker="o", markersize=4, color=colour, label=tagger)
            # only the curve's two ends are labelled: a good tagger's thresholds lie a few recall points apart,
            # and a label per point overprinted them all (the line runs from one end to the other)
            ends = curve.iloc[[0, -1]] if len(curve) > 1 else curve
            for row, (dx, dy, ha) in zip(ends.itertuples(index=False), ((5, 4, "left"), (-5, -11, "right"))):
                ax.annotate(row.threshold_label, (row.recall, row.precision), fontsize=7, xytext=(dx, dy),
                            textcoords="offset points", color=colour, ha=ha)  # fmt: skip
            op = curve[curve["operating"]]
            ax.scatter(op["recall"], op["precision"], s=160, facecolors="none", edgecolors=colour, linewidths=1.5)
            cal = these[these["threshold_label"] == CALIBRATED]
            if len(cal):
                ax.scatter(cal["recall"], cal["precision"], marker="*", s=180, color=colour, edgecolors="black",
                           linewidths=0.6, label=f"{tagger}, calibrated", zorder=3)  # fmt: skip
        ax.set(title=f"{method} counts vs truth", xlabel="recall", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.axhline(0.9, color="grey", linewidth=0.6, linestyle=":")
        ax.axvline(0.9, color="grey", linewidth=0.6, linestyle=":")
    axes[0].set_ylabel("precision")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False,
               title="tagger (ring: operating threshold; dotted: 0.9)", title_fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


__all__ = [
    "CALIBRATED",
    "SYNTHETIC_VALIDATION",
    "estimated_pairs",
    "image_run_dir",
    "plot_estimated_vs_true",
    "plot_precision_recall",
    "true_frequency_table",
    "validation_report",
    "validation_table",
]
