"""The study's join: counted concepts x evaluated classes and retrieval concepts, done once and reported.

Names are matched by ``naming.concept_key`` (``NORMALISATION_VERSION``), so "hot-dog", "Hot dog" and
"hot_dog" meet. The rules, in order:

1. Per dataset, only counts of the keys that dataset scores take part (a broad searched table, the release's
   4,029 concepts say, may hold spellings of other concepts that share a key).
2. Release counts are per downstream dataset: a dataset the release counted uses its own count files; any
   other dataset uses the counts of every downstream file.
3. **Two spellings of one concept** (one key, several counted names): if they count alike they are one
   concept; if their counts differ, the spelling the evaluation (or the synthetic world's truth) uses decides;
   without one the join is ambiguous and stops with the names (``resolve_spellings``). This is the rule the
   synthetic world's fits have always used.
4. A scored class without a counted concept is not dropped silently: it is listed in the coverage table
   (per dataset and count type); a dataset none of whose classes matched stops the study with that table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from helpers import paths, schemas
from helpers.analysis.studies.spec import Study, count_type_name
from helpers.evaluation.pair import EVALUATIONS_FILE
from helpers.evaluation.specs import NO_PROMPT, OVERALL
from helpers.evaluation.writers import EVALUATIONS, read_evaluations
from helpers.images.corpora import frequencies_path
from helpers.naming import concept_key
from helpers.release import tidy
from helpers.shards import ConfigError
from helpers.text import corpora

ANY_DOWNSTREAM = ""  # the downstream of a count that serves every dataset (a compendium corpus)
SCORE_COLUMNS = ["task", "model", "dataset", "prompt", "metric", "concept", "score"]
POINT_GROUP = ["task", "model", "dataset", "prompt", "metric"]

STUDY_POINTS = pa.DataFrameSchema(
    {
        "task": pa.Column(str, pa.Check.isin(["zero_shot", "retrieval"])),
        "model": pa.Column(str),
        "dataset": pa.Column(str),
        "prompt": pa.Column(str),
        "metric": pa.Column(str),
        "count_type": pa.Column(str),
        "concept": pa.Column(str),
        "count": pa.Column("int64", pa.Check.ge(0)),
        "score": pa.Column(float, pa.Check.in_range(0.0, 100.0)),
    },
    unique=[*POINT_GROUP, "count_type", "concept"],
    strict=True,
    name="study_points",
)

COVERAGE = pa.DataFrameSchema(
    {
        "dataset": pa.Column(str),
        "task": pa.Column(str),
        "count_type": pa.Column(str),
        "n_concepts": pa.Column("int64", pa.Check.ge(0)),
        "n_matched": pa.Column("int64", pa.Check.ge(0)),
        "n_unmatched": pa.Column("int64", pa.Check.ge(0)),
        "unmatched": pa.Column(str),
    },
    unique=["dataset", "task", "count_type"],
    strict=True,
    name="study_coverage",
)


class StudyJoinError(ValueError):
    """The join cannot go on (a dataset matched nothing, ambiguous spellings); the message holds the table."""


# ------------------------------------------------------------------------------------------- spellings


def resolve_spellings(counts: pd.DataFrame, keys: Iterable[str], preferred: Iterable[str]) -> pd.DataFrame:
    """One count per (count_type, key): the study's rule for a concept counted under several spellings.

    ``counts``: (count_type, name, count); ``keys``: the concept keys that are scored (others are left out
    first); ``preferred``: the spellings that decide a disagreement (the evaluated names, the world's names).
    Spellings of one key with the same count are one concept; with different counts the preferred spelling
    wins; without a preferred spelling (or with several) the join is ambiguous: ``StudyJoinError`` listing
    the names. Returns (count_type, key, count int64).
    """
    counts = counts.assign(key=counts["name"].map(concept_key))
    counts = counts[counts["key"].isin(set(keys))]
    same = counts.groupby(["count_type", "key"])["count"].transform("nunique") == 1
    exact = counts["name"].isin(set(preferred))
    has_exact = exact.groupby([counts["count_type"], counts["key"]]).transform("any")
    counts = counts[(same & ~counts.duplicated(["count_type", "key"])) | (~same & exact) | (~same & ~has_exact)]
    clash = counts[counts.duplicated(["count_type", "key"], keep=False)]
    if len(clash):
        raise StudyJoinError(f"counts: names sharing a concept_key cannot be joined: {sorted(set(clash['name']))[:10]}")
    return counts[["count_type", "key", "count"]].astype({"count": "int64"}).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- counts


def _read(path: Path, schema: pa.DataFrameSchema, stage: str) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"{path} does not exist yet: run `dvc repro {stage}` first")
    return schemas.read_table(path, schema)


def corpus_counts(study: Study) -> pd.DataFrame:
    """(count_type, downstream, name, count) of a ``counts.corpus`` study, and ``true`` when it has a truth.

    Text counts come from the first image corpus's frequency table when the study has one (the same caption
    search), else from the corpus's ``text_counts.parquet``; image and matched counts at each threshold.
    """
    parts = []
    several = len(study.thresholds) > 1
    for i, image in enumerate(study.image_corpora):
        freq = _read(frequencies_path(image), schemas.CORPUS_FREQUENCIES, f"image_search@{image}")
        if i == 0:
            text = freq[freq["method"] == "text"]
            parts.append(pd.DataFrame({"count_type": "text", "name": text["concept"], "count": text["count"]}))
        for method in ("image", "matched"):
            for threshold in study.thresholds:
                at = (freq["method"] == method) & np.isclose(freq["threshold"], threshold, rtol=0.0, atol=1e-9)
                if not at.any():
                    have = sorted(freq.loc[freq["method"] == method, "threshold"].dropna().unique())
                    raise ConfigError(
                        f"studies.{study.name}.counts.thresholds: {image} has no {method} counts at {threshold} "
                        f"(it has {have}); rerun image_search@{image}"
                    )
                name = count_type_name(method, threshold, image, several=several, first=i == 0)
                rows = freq[at]
                parts.append(pd.DataFrame({"count_type": name, "name": rows["concept"], "count": rows["count"]}))
    if study.corpus and not study.image_corpora:
        text = _read(corpora.text_counts_path(study.corpus), corpora.TEXT_COUNTS, f"text_search@{study.corpus}")
        parts.append(pd.DataFrame({"count_type": "text", "name": text["concept"], "count": text["count"]}))
    if study.truth is not None:
        from helpers.synthetic.validation import true_frequency_table  # the world's checked truth

        truth = true_frequency_table(study.truth)
        parts.append(pd.DataFrame({"count_type": "true", "name": truth["name"], "count": truth["shown_count"]}))
    return pd.concat(parts, ignore_index=True).assign(downstream=ANY_DOWNSTREAM)


def release_counts(study: Study, frequencies: pd.DataFrame) -> pd.DataFrame:
    """(count_type, downstream, name, count) of a ``counts.release`` study from the tidy frequency table."""
    rows = frequencies[
        (frequencies["pretrain"] == study.release) & frequencies["method"].isin(study.release_count_types)
    ]
    missing = sorted(set(study.release_count_types) - set(rows["method"]))
    if missing:
        have = sorted(frequencies.loc[frequencies["pretrain"] == study.release, "method"].unique())
        raise ConfigError(
            f"studies.{study.name}.counts.count_types: the release has no {missing} counts for {study.release} "
            f"(it has {have})"
        )
    return pd.DataFrame(
        {
            "count_type": rows["method"],
            "downstream": rows["downstream"],
            "name": rows["concept"],
            "count": rows["count"],
        }
    )


def study_counts(study: Study) -> pd.DataFrame:
    """The counts of ``study`` from its declared source (the files the earlier stages wrote)."""
    if study.release:
        return release_counts(study, _release_table("frequencies"))
    return corpus_counts(study)


def _release_table(name: str) -> pd.DataFrame:
    folder = paths.release_tables_dir()
    if not (folder / f"{name}.parquet").exists():
        raise ConfigError(f"{folder / (name + '.parquet')} does not exist yet: run `dvc repro tidy_release` first")
    return tidy.load(folder, name)


# ---------------------------------------------------------------------------------------------- scores


def evaluation_scores(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Per-concept scores in percent points from the tidy ``EVALUATIONS`` table: zero-shot top-1 accuracy
    (per prompt set) and 100 x retrieval recall@k (prompt ``-``). Columns ``SCORE_COLUMNS``."""
    evaluations = EVALUATIONS.validate(evaluations, lazy=True)  # percent vs fraction is checked per task
    per_concept = evaluations[evaluations["concept"] != OVERALL]
    zero_shot = per_concept[(per_concept["task"] == "zero_shot") & (per_concept["metric"] == "top1")]
    retrieval = per_concept[per_concept["task"] == "retrieval"]
    scores = pd.concat(
        [
            zero_shot.assign(score=zero_shot["value"]),
            retrieval.assign(prompt=NO_PROMPT, score=100.0 * retrieval["value"]),
        ],
        ignore_index=True,
    )
    return scores[SCORE_COLUMNS]


def release_scores(zero_shot: pd.DataFrame, retrieval: pd.DataFrame) -> pd.DataFrame:
    """The release's tidy zero-shot and retrieval tables as ``SCORE_COLUMNS`` (concept = count spelling)."""
    zs = zero_shot.assign(task="zero_shot", metric="top1", score=zero_shot["accuracy"])
    ret = retrieval.assign(
        task="retrieval", prompt=NO_PROMPT, metric=retrieval["direction"] + "_k=" + retrieval["k"].astype(str),
        score=100.0 * retrieval["recall"],
    )  # fmt: skip
    return pd.concat([zs[SCORE_COLUMNS], ret[SCORE_COLUMNS]], ignore_index=True)


def read_model_scores(study: Study, evaluations_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Scores of every study model on every study dataset, filtered to its prompts and metrics.

    Local models read ``<evaluations_dir>/<model>/<dataset>/evaluations.parquet``; a missing file names the
    ``evaluate@<model>-<dataset>`` stage to run. Release models read the tidy release tables.
    """
    folder = Path(evaluations_dir) if evaluations_dir else paths.processed_dir() / "evaluations"
    frames = []
    for model in study.local_models:
        for dataset in study.datasets:
            path = folder / model / dataset / EVALUATIONS_FILE
            if not path.exists():
                raise ConfigError(
                    f"studies.{study.name}: no evaluation of model {model!r} on dataset {dataset!r} ({path}); "
                    f"run `dvc repro evaluate@{model}-{dataset}`"
                )
            frames.append(evaluation_scores(read_evaluations(path)))
    remote = [m for m in study.models if m not in study.local_models]
    if remote:
        scores = release_scores(_release_table("zero_shot"), _release_table("retrieval"))
        scores = scores[scores["model"].isin(remote) & scores["dataset"].isin(study.datasets)]
        for model in remote:
            have = set(scores.loc[scores["model"] == model, "dataset"])
            missing = [d for d in study.datasets if d not in have]
            if missing:
                raise ConfigError(f"studies.{study.name}.datasets: release model {model!r} has no scores on {missing}")
        frames.append(scores)
    return select_scores(study, pd.concat(frames, ignore_index=True))


def select_scores(study: Study, scores: pd.DataFrame) -> pd.DataFrame:
    """Keep the study's prompts and metrics; one it lists that no model was evaluated with is an error."""
    for key, task, wanted in (("prompts", "zero_shot", study.prompts), ("metrics", "retrieval", study.metrics)):
        if wanted is None:
            continue
        column = "prompt" if task == "zero_shot" else "metric"
        have = set(scores.loc[scores["task"] == task, column])
        missing = [w for w in wanted if w not in have]
        if missing:
            raise ConfigError(f"studies.{study.name}.{key}: {missing} not evaluated (evaluated: {sorted(have)})")
        scores = scores[(scores["task"] != task) | scores[column].isin(wanted)]
    return scores.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ join


def join_counts(
    counts: pd.DataFrame, scores: pd.DataFrame, count_types: Sequence[str], *, preferred: Iterable[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair every score with each count type's count of its concept; returns (points, coverage).

    ``counts``: (count_type, downstream, name, count); ``scores``: ``SCORE_COLUMNS``; ``preferred``: extra
    spellings that decide between spellings (the world's names). Points follow ``STUDY_POINTS``, sorted by
    task, model, dataset, prompt, metric, count type, concept. Coverage (``COVERAGE``): per dataset, task and
    count type the scored concepts, how many found a count, and the names of those that did not. A dataset
    with no match for some count type raises ``StudyJoinError`` whose message holds the coverage table.
    """
    scores = scores.assign(key=scores["concept"].map(concept_key))
    released = set(counts["downstream"]) - {ANY_DOWNSTREAM}
    preferred = set(preferred)
    frames = []
    for dataset, group in scores.groupby("dataset", sort=True):
        own = counts[counts["downstream"] == dataset] if dataset in released else counts
        resolved = resolve_spellings(own, group["key"], preferred | set(group["concept"]))
        full = group.merge(pd.DataFrame({"count_type": list(count_types)}), how="cross")
        frames.append(full.merge(resolved, on=["count_type", "key"], how="left", validate="many_to_one"))
    full = pd.concat(frames, ignore_index=True)
    coverage = coverage_table(full)
    empty = coverage[coverage["n_matched"] == 0]
    if len(empty):
        raise StudyJoinError(
            f"{sorted(set(empty['dataset']))}: none of the classes found a counted concept for count type(s) "
            f"{sorted(set(empty['count_type']))}; check the corpus's concept table and the class names.\n"
            + coverage.to_string(index=False, max_colwidth=80)
        )
    points = full[full["count"].notna()].astype({"count": "int64"})
    points = points[[*POINT_GROUP, "count_type", "concept", "count", "score"]]
    points = points.sort_values([*POINT_GROUP, "count_type", "concept"], kind="stable").reset_index(drop=True)
    return STUDY_POINTS.validate(points, lazy=True), coverage


def coverage_table(full: pd.DataFrame) -> pd.DataFrame:
    """``COVERAGE`` from the left join of scores on counts (``count`` NaN where a concept found none)."""
    distinct = full.drop_duplicates(["dataset", "task", "count_type", "concept"])
    rows = []
    for (dataset, task, count_type), group in distinct.groupby(["dataset", "task", "count_type"], sort=True):
        unmatched = sorted(group.loc[group["count"].isna(), "concept"])
        rows.append({
            "dataset": dataset, "task": task, "count_type": count_type, "n_concepts": len(group),
            "n_matched": len(group) - len(unmatched), "n_unmatched": len(unmatched), "unmatched": "; ".join(unmatched),
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=list(COVERAGE.columns))
    return COVERAGE.validate(table.astype({c: "int64" for c in ("n_concepts", "n_matched", "n_unmatched")}))
