"""helpers.analysis.studies: a study entry, its join, fits and output files.

Counts and scores are written where the stages write them, in a scratch work folder: a caption search of the
sample corpus (real search), image-search frequency tables and per-concept evaluations of a tiny model
(tables in the evaluate stage's schema), and the release's tidy frequency table.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import schemas  # noqa: E402
from helpers.analysis import fits as fits_lib  # noqa: E402
from helpers.analysis import studies  # noqa: E402
from helpers.analysis.studies import figures  # noqa: E402
from helpers.analysis.studies.join import evaluation_scores  # noqa: E402
from helpers.analysis.studies.spec import DEFAULT_ZERO_SHOT_PLOTTED  # noqa: E402
from helpers.evaluation.specs import OVERALL  # noqa: E402
from helpers.evaluation.writers import EVALUATIONS, write_evaluations  # noqa: E402
from helpers.images.corpora import frequencies_path  # noqa: E402
from helpers.shards import ConfigError  # noqa: E402
from helpers.synthetic import samples  # noqa: E402
from helpers.text import corpora  # noqa: E402

NAMES = ["mouse", "fire truck", "goose", "cat", "child", "teddy bear"]
TRUE = np.array([1, 3, 10, 30, 100, 1000])
ANALYSIS = {
    "bootstrap_resamples": 40,
    "seed": 0,
    "zero_shot": {
        "datasets": ["cifar10"],
        "n_edges": 12,
        "count_types": ["lemmatized", "integrated_tlemmatized_i0.7"],
        "pretrains": {"cc3m": {"models": ["backboneRN50_pretrainedcc3m"], "plotted_bins": [1, -1]}},
    },
    "retrieval": {"datasets": ["coco"], "n_edges": 7, "plotted_bins": [-4, None]},
    "t2i": {"pretrain": "laion_aesthetics"},
}
KNOWN = {
    "corpora": {"sample_tsv": {}, "syn": {}},
    "image_corpora": {"syn": {"corpus": "syn"}, "syn_clip": {"corpus": "syn"}, "other": {"corpus": "sample_tsv"}},
    "thresholds": [0.5, 0.7],
    "models": {"tiny": {}},
    "datasets": {"syn-cls": {}, "syn-ret": {}, "sample-cls": {}},
    "analysis": ANALYSIS,
}


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    return tmp_path


def check(entry: dict, name: str = "mine", **known) -> studies.Study:
    return studies.check_study(name, entry, **{**KNOWN, **known})


def corpus_frequencies(text, image, matched, names=NAMES, thresholds=(0.7,), corpus="syn") -> pd.DataFrame:
    parts = [("text", np.nan, text)] + [
        (m, t, c) for t in thresholds for m, c in (("image", image), ("matched", matched))
    ]
    frames = [
        pd.DataFrame(
            {
                "corpus": corpus,
                "concept_id": np.arange(len(names), dtype=np.int32),
                "concept": names,
                "method": method,
                "threshold": t,
                "count": np.asarray(c, dtype=np.int64),
            }
        )  # fmt: skip
        for method, t, c in parts
    ]
    return pd.concat(frames, ignore_index=True)


def write_frequencies(table: pd.DataFrame, image_corpus: str = "syn") -> None:
    schemas.write_table(table, schemas.CORPUS_FREQUENCIES, frequencies_path(image_corpus))


def evaluation_table(scores: dict[str, float], *, model="tiny", dataset="syn-cls", task="zero_shot") -> pd.DataFrame:
    if task == "zero_shot":
        rows = [dict(task=task, prompt="class", concept=c, metric="top1", value=v, n=5) for c, v in scores.items()]
        rows.append(dict(task=task, prompt="class", concept=OVERALL, metric="top1", value=50.0, n=30))
    else:
        rows = [dict(task=task, prompt="-", concept=c, metric="i2t_k=1", value=v / 100, n=3) for c, v in scores.items()]
    table = pd.DataFrame(rows).assign(model=model, dataset=dataset)
    return EVALUATIONS.validate(table[list(EVALUATIONS.columns)].astype({"n": "int64"}))


def write_scores(workdir, scores, *, model="tiny", dataset="syn-cls", task="zero_shot") -> None:
    path = workdir / "data" / "processed" / "evaluations" / model / dataset / "evaluations.parquet"
    write_evaluations(evaluation_table(scores, model=model, dataset=dataset, task=task), path)


# -------------------------------------------------------------------------------------------- the entry


SYN = {"corpus": "syn", "image_corpora": ["syn"], "thresholds": [0.7]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"counts": {"corpus": "nope"}, "models": ["tiny"], "datasets": ["syn-cls"]}, "studies.mine.counts.corpus: 'nope' is not an entry of corpora"),
        ({"counts": {**SYN, "image_corpora": ["gone"]}, "models": ["tiny"], "datasets": ["syn-cls"]}, r"studies.mine.counts.image_corpora\[0\]: 'gone' is not an entry of image_corpora"),
        ({"counts": {**SYN, "image_corpora": ["other"]}, "models": ["tiny"], "datasets": ["syn-cls"]}, "tags corpus 'sample_tsv', not 'syn'"),
        ({"counts": {**SYN, "thresholds": [0.65]}, "models": ["tiny"], "datasets": ["syn-cls"]}, r"studies.mine.counts.thresholds\[0\]: 0.65 is not one of image_search.thresholds"),
        ({"counts": {"corpus": "syn", "image_corpora": ["syn"]}, "models": ["tiny"], "datasets": ["syn-cls"]}, "studies.mine.counts: image_corpora and thresholds go together"),
        ({"counts": SYN, "models": ["huge"], "datasets": ["syn-cls"]}, r"studies.mine.models\[0\]: 'huge' is neither an evaluation.models entry \(tiny\) nor a release model \(backboneRN50_pretrainedcc3m\)$"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["imagenet"]}, r"studies.mine.datasets\[0\]: unknown dataset 'imagenet'"),
        ({"counts": SYN, "models": ["tiny", "backboneRN50_pretrainedcc3m"], "datasets": ["cifar10"]}, "'cifar10' is no evaluation.datasets entry"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "prompts": ["fancy"]}, r"studies.mine.prompts\[0\]: 'fancy' is not one of class, simple, ensemble"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "metrics": ["top5"]}, r"studies.mine.metrics\[0\]: string should match pattern"),
        ({"counts": {"release": "cc99m"}, "models": ["tiny"], "datasets": ["syn-cls"]}, "studies.mine.counts.release: unknown pretraining set"),
        ({"counts": {"release": "cc3m", "corpus": "syn"}, "models": ["tiny"], "datasets": ["syn-cls"]}, "give exactly one of"),
        ({"counts": {"corpus": "syn", "truth": "no/world"}, "models": ["tiny"], "datasets": ["syn-cls"]}, "counts.truth: .* holds no synthetic world"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "statistics": {"n_edge": 3}}, "studies.mine.statistics.n_edge: unknown key; did you mean 'n_edges'"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "statistics": {"zero_rule": "keep"}}, "studies.mine.statistics.zero_rule"),
        ({"counts": SYN, "models": ["tiny"]}, "studies.mine.datasets: missing"),
        ("counts: syn", "studies.mine: input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_a_wrong_study_entry_fails_before_any_work_naming_the_key(entry, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        studies.check_study("mine", entry, **KNOWN, base=tmp_path)


SETTINGS = {"prompts": ["class", "simple"], "ks": [1, 5]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-ret"], "metrics": ["i2t_k=3"]}, r"studies.mine.metrics\[0\]: 'i2t_k=3': k=3 is not evaluated \(evaluation.settings.ks: \[1, 5\]\)"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-ret"], "metrics": ["t2i_k=1", "t2i_k=10"]}, r"studies.mine.metrics\[1\]: 't2i_k=10'"),
        ({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "prompts": ["ensemble"]}, r"studies.mine.prompts\[0\]: 'ensemble' is not evaluated"),
        ({"counts": {"release": "cc3m"}, "models": ["backboneRN50_pretrainedcc3m"], "datasets": ["coco"], "metrics": ["i2t_k=3"]}, r"k=3 is not evaluated \(the release's ks: \[1, 5, 10\]\)"),
        ({"counts": {"release": "cc3m", "count_types": ["lematized"]}, "models": ["tiny"], "datasets": ["syn-cls"]}, r"studies.mine.counts.count_types: 'lematized' is no release count type .*; did you mean 'lemmatized'\?"),
        ({"counts": {"release": "cc3m", "count_types": ["rampp"]}, "models": ["tiny"], "datasets": ["syn-cls"]}, r"counts.count_types: 'rampp' is no release count type \(lowercased, lemmatized, rampp<threshold>"),
    ],
)  # fmt: skip
def test_prompts_metrics_and_release_count_types_that_cannot_exist_fail_before_any_work(entry, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        studies.check_study("mine", entry, **KNOWN, evaluation_settings=SETTINGS, base=tmp_path)


@pytest.mark.parametrize(
    "entry",
    [
        {"counts": SYN, "models": ["tiny"], "datasets": ["syn-ret"], "metrics": ["i2t_k=5", "t2i_k=1"]},
        {"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "prompts": ["simple"]},
        # with a release model too, k=10 is evaluated (by the release)
        {"counts": {"release": "cc3m", "count_types": ["rampp0.55", "integrated_tlemmatized_i0.6", "lowercased"]},
         "models": ["backboneRN50_pretrainedcc3m"], "datasets": ["coco"], "metrics": ["i2t_k=10"]},
    ],
)  # fmt: skip
def test_evaluated_prompts_metrics_and_release_methods_pass(entry, tmp_path):
    studies.check_study("mine", entry, **KNOWN, evaluation_settings=SETTINGS, base=tmp_path)


def test_a_mistyped_model_is_the_only_error_and_suggests_the_entry(tmp_path):
    """One typo in ``models`` must not make the study's valid datasets, metrics or prompts look wrong."""
    entry = {"counts": SYN, "models": ["tinyy"], "datasets": ["syn-ret"], "metrics": ["i2t_k=5"], "prompts": ["class"]}
    with pytest.raises(ConfigError) as err:
        studies.check_study("mine", entry, **KNOWN, evaluation_settings=SETTINGS, base=tmp_path)
    assert str(err.value).splitlines() == [
        "studies.mine.models[0]: 'tinyy' is neither an evaluation.models entry (tiny) nor a release model "
        "(backboneRN50_pretrainedcc3m); did you mean 'tiny'?"
    ]


def test_an_unknown_prompt_set_is_reported_once(tmp_path):
    entry = {"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"], "prompts": ["class", "simpel"]}
    with pytest.raises(ConfigError) as err:
        studies.check_study("mine", entry, **KNOWN, evaluation_settings=SETTINGS, base=tmp_path)
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == ["studies.mine.prompts[1]"]


def test_the_release_count_type_pattern_names_every_method_of_the_release(release_copy):
    import re

    from helpers.params.studies import RELEASE_COUNT_TYPE
    from helpers.release.tidy import COUNTS_SUFFIX, parse_counts_filename

    release = release_copy / "search_counts"
    methods = {parse_counts_filename(p.name)[2] for p in release.rglob(f"*{COUNTS_SUFFIX}")}
    assert len(methods) >= 10
    assert all(re.match(RELEASE_COUNT_TYPE, m) for m in methods), methods
    assert not re.match(RELEASE_COUNT_TYPE, "lemmatised") and not re.match(RELEASE_COUNT_TYPE, "rampp0.7x")


def test_a_study_named_like_a_release_pretraining_set_is_refused():
    with pytest.raises(ConfigError, match="studies.cc3m: a study is named like a release pretraining set"):
        check({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"]}, name="cc3m")


def test_defaults_are_the_studys_own_choices_and_count_types_are_named():
    study = check({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"]})
    stats = study.statistics
    assert stats.n_edges == {"zero_shot": 12, "retrieval": 7} and stats.resamples == 40 and stats.seed == 0
    assert stats.plotted == {"zero_shot": DEFAULT_ZERO_SHOT_PLOTTED, "retrieval": (-4, None)}
    assert study.count_types() == ["text", "image", "matched"]
    two = check({
        "counts": {"corpus": "syn", "image_corpora": ["syn", "syn_clip"], "thresholds": [0.5, 0.7]},
        "models": ["tiny"], "datasets": ["syn-cls"], "statistics": {"n_edges": 5, "plotted_bins": [None, None]},
    })  # fmt: skip
    assert two.count_types() == [
        "text", "image0.5", "image0.7", "matched0.5", "matched0.7",
        "image0.5:syn_clip", "image0.7:syn_clip", "matched0.5:syn_clip", "matched0.7:syn_clip",
    ]  # fmt: skip
    assert two.statistics.n_edges == {"zero_shot": 5, "retrieval": 5}
    assert two.statistics.plotted["retrieval"] == (None, None)


# -------------------------------------------------------------------------------------------- the join


def test_spellings_of_one_concept_are_one_concept_and_the_evaluated_spelling_decides():
    counts = pd.DataFrame({
        "count_type": "text", "name": ["fire truck", "fire-truck", "Fire Truck", "goose", "American_Coot", "American coot"],
        "count": [3, 3, 3, 10, 7, 9],
    })  # fmt: skip
    out = studies.resolve_spellings(counts, ["fire truck", "goose"], preferred=["fire truck"])
    assert out.set_index("key")["count"].to_dict() == {"fire truck": 3, "goose": 10}  # coot: not scored, left out
    differing = counts.assign(count=[3, 5, 6, 10, 7, 9])
    out = studies.resolve_spellings(differing, ["fire truck"], preferred=["fire truck"])
    assert out["count"].tolist() == [3]  # the spelling the evaluation uses decides
    with pytest.raises(studies.StudyJoinError, match="sharing a concept_key"):
        studies.resolve_spellings(differing, ["fire truck"], preferred=["fire_truck"])


def test_join_reports_coverage_and_stops_when_a_dataset_matches_nothing():
    counts = pd.DataFrame({"count_type": "text", "downstream": "", "name": NAMES, "count": TRUE})
    scores = evaluation_scores(evaluation_table({"Fire_Truck": 10.0, "goose": 20.0, "unicorn": 5.0}))
    points, coverage = studies.join_counts(counts, scores, ["text"])
    assert coverage[["n_concepts", "n_matched", "n_unmatched", "unmatched"]].values.tolist() == [[3, 2, 1, "unicorn"]]
    assert sorted(points["concept"]) == ["Fire_Truck", "goose"]
    assert points.set_index("concept").loc["Fire_Truck", "count"] == 3
    nothing = evaluation_scores(evaluation_table({"unicorn": 5.0, "griffin": 6.0}, dataset="myth"))
    with pytest.raises(studies.StudyJoinError, match=r"(?s)\['myth'\]: none of the classes.*griffin; unicorn"):
        studies.join_counts(counts, pd.concat([scores, nothing]), ["text"])


# --------------------------------------------------------------------------------------- whole studies


def test_a_study_recovers_a_known_log_linear_relation(workdir):
    a, b = 20.0, 12.0
    scores = {name.replace(" ", "_"): a + b * np.log10(c) for name, c in zip(NAMES, TRUE)}  # class-name spelling
    write_frequencies(corpus_frequencies(text=TRUE * 10, image=TRUE[::-1], matched=TRUE))
    write_scores(workdir, scores)
    write_scores(workdir, scores, dataset="syn-ret", task="retrieval")
    study = check({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls", "syn-ret"], "statistics": {"n_edges": 4}})
    fits, points, coverage = studies.run_study(study)
    assert list(fits.columns) == list(fits_lib.FIT_COLUMNS) and set(fits["pretrain"]) == {"mine"}
    assert len(fits) == 2 * 3 * 2  # tasks x count types x zero rules
    f = fits.set_index(["task", "count_type", "zero_rule"])
    for task in ("zero_shot", "retrieval"):
        for count_type, intercept in (("matched", a), ("text", a - b)):  # text counts are 10x
            row = f.loc[(task, count_type, "to_one")]
            assert row["slope_per_decade"] == pytest.approx(b) and row["intercept"] == pytest.approx(intercept)
            assert row["concept_pearson_r"] == pytest.approx(1.0) and row["n_rows"] == len(NAMES)
        assert f.loc[(task, "image", "to_one"), "concept_pearson_r"] < -0.5  # image counts are reversed
    assert len(points) == 2 * 3 * len(NAMES) and (coverage["n_unmatched"] == 0).all()
    out = studies.write_study("mine", fits, points, coverage)
    assert {p.name for p in out.iterdir()} == {"fits.csv", "points.parquet", "coverage.csv"}
    assert (workdir / "reports" / "plots" / "studies" / "mine" / "points.csv").exists()
    stacked = studies.read_study_fits()
    pd.testing.assert_frame_equal(stacked, fits, check_dtype=False)
    head = studies.headline(fits)
    assert set(head["count_type"]) == {"text", "image", "matched"} and set(head["task"]) == {"zero_shot"}


def test_a_study_over_the_sample_corpus_end_to_end(workdir):
    """Real caption search of the sample corpus, a tiny model's per-concept scores, fits and figures."""
    concepts = ["dog", "mouse", "hot dog", "teddy bear", "knife", "child"]
    configs = samples.write_sample_corpus(
        workdir / "data" / "raw" / "samples", n_captions=300, n_shards=2, seed=1, concept_names=concepts,
        relative_to=workdir,
    )  # fmt: skip
    table = pd.DataFrame({"concept_id": pd.array(range(len(concepts)), dtype="int32"), "name": concepts})
    settings = {"mode": "phrase", "unknown_words": None, "executor": "serial", "workers": None, "ray_address": None,
                "allow_failed_shards": False}  # fmt: skip
    corpora.search_corpus(
        "sample_tsv",
        {"data": "x", "concepts": "concepts.parquet", "captions": configs["tsv"]},
        table,
        settings,
        progress=False,
    )
    # the dataset spells its classes its own way and has one class the corpus never searched for
    classes = {
        "Dog": 70.0,
        "mouse": 40.0,
        "Hot-Dog": 55.0,
        "teddy_bear": 35.0,
        "knife": 20.0,
        "child": 60.0,
        "yak": 1.0,
    }
    write_scores(workdir, classes, dataset="sample-cls")
    study = check({"counts": {"corpus": "sample_tsv"}, "models": ["tiny"], "datasets": ["sample-cls"],
                   "statistics": {"n_edges": 4, "plotted_bins": [None, None]}})  # fmt: skip
    fits, points, coverage = studies.run_study(study)
    assert coverage["unmatched"].tolist() == ["yak"] and coverage["n_matched"].tolist() == [6]
    text = corpora.TEXT_COUNTS.validate(pd.read_parquet(corpora.text_counts_path("sample_tsv")))
    expected = dict(zip(text["concept"], text["count"]))
    got = points.set_index("concept")["count"].to_dict()
    assert got == {"Dog": expected["dog"], "mouse": expected["mouse"], "Hot-Dog": expected["hot dog"],
                   "teddy_bear": expected["teddy bear"], "knife": expected["knife"], "child": expected["child"]}  # fmt: skip
    assert fits["n_rows"].tolist() == [6, 6] and fits["count_type"].unique().tolist() == ["text"]
    fig = figures.accuracy_vs_frequency(points, study, "tiny", "zero_shot")
    assert len([ax for ax in fig.axes if ax.get_legend()]) == 1
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("binned r=")
    fig = figures.concept_scatter(points, fits, study)
    assert "slope" in fig.axes[0].get_title()


def test_a_model_without_evaluations_names_the_evaluate_stage(workdir):
    write_frequencies(corpus_frequencies(text=TRUE, image=TRUE, matched=TRUE))
    study = check({"counts": SYN, "models": ["tiny"], "datasets": ["syn-cls"]})
    with pytest.raises(ConfigError, match=r"run `dvc repro evaluate@tiny-syn-cls`"):
        studies.run_study(study)
    write_scores(workdir, {n: 10.0 for n in NAMES})
    with pytest.raises(ConfigError, match="image_search@syn_clip"):
        studies.run_study(check({"counts": {**SYN, "image_corpora": ["syn", "syn_clip"]}, "models": ["tiny"],
                                 "datasets": ["syn-cls"]}))  # fmt: skip


def test_a_study_of_release_counts_with_a_local_model(workdir):
    """A model trained here scored against the release's CC-3M counts (tidy frequency table)."""
    rows = []
    for method, kind, t in (("lemmatized", "text", None), ("integrated_tlemmatized_i0.7", "matched", 0.7)):
        for downstream, names in (("cifar10", ["cat", "airplane"]), ("imagenet", NAMES)):
            for name in names:
                count = int(TRUE[NAMES.index(name)]) if name in NAMES else 77
                rows.append(dict(downstream=downstream, pretrain="cc3m", method=method, kind=kind, threshold=t,
                                 concept=name, count=count * (2 if kind == "text" else 1)))  # fmt: skip
        rows.append(dict(downstream="imagenet", pretrain="cc12m", method=method, kind=kind, threshold=t,
                         concept="goose", count=99999))  # fmt: skip
    freq = pd.DataFrame(rows).astype({"threshold": float})
    schemas.write_table(freq, schemas.FREQUENCIES, workdir / "data" / "processed" / "release" / "frequencies.parquet")
    scores = {n: 5.0 + 10 * np.log10(c) for n, c in zip(NAMES, TRUE)}
    write_scores(workdir, scores)
    study = check({"counts": {"release": "cc3m"}, "models": ["tiny"], "datasets": ["syn-cls"],
                   "statistics": {"n_edges": 4}})  # fmt: skip
    assert study.count_types() == ["lemmatized", "integrated_tlemmatized_i0.7"]
    fits, points, coverage = studies.run_study(study)
    assert (coverage["n_matched"] == len(NAMES)).all()
    matched = points[points["count_type"] == "integrated_tlemmatized_i0.7"].set_index("concept")["count"]
    assert matched.to_dict() == dict(zip(NAMES, TRUE.tolist()))  # cc3m's counts, not cc12m's
    f = fits.set_index(["count_type", "zero_rule"])
    assert f.loc[("integrated_tlemmatized_i0.7", "to_one"), "slope_per_decade"] == pytest.approx(10.0)
    with pytest.raises(ConfigError, match=r"counts.count_types: the release has no \['rampp0.7'\] counts for cc3m"):
        studies.run_study(check({"counts": {"release": "cc3m", "count_types": ["rampp0.7"]}, "models": ["tiny"],
                                 "datasets": ["syn-cls"]}))  # fmt: skip


def test_a_release_model_is_scored_from_the_tidy_release_tables(workdir):
    """A release model key reads its scores from the tidy tables; a dataset the release counted uses its own
    count files (cifar10's 'cat' count, not imagenet's)."""
    release = workdir / "data" / "processed" / "release"
    freq = pd.DataFrame({
        "downstream": ["cifar10", "cifar10", "imagenet"], "pretrain": "cc3m", "method": "lemmatized", "kind": "text",
        "threshold": np.nan, "concept": ["cat", "airplane", "cat"], "count": [40, 4000, 999],
    })  # fmt: skip
    schemas.write_table(freq, schemas.FREQUENCIES, release / "frequencies.parquet")
    zero_shot = pd.DataFrame({
        "dataset": "cifar10", "prompt": "class", "model": "backboneRN50_pretrainedcc3m", "class_name": ["cat", "plane"],
        "concept": ["cat", "airplane"], "accuracy": [30.0, 70.0],
    })  # fmt: skip
    schemas.write_table(zero_shot, schemas.ZERO_SHOT, release / "zero_shot.parquet")
    retrieval = pd.DataFrame({"dataset": ["coco"], "direction": ["i2t"], "k": [1], "model": ["backboneRN50_pretrainedcc3m"],
                              "concept": ["cat"], "recall": [0.5]}).astype({"k": "int64"})  # fmt: skip
    schemas.write_table(retrieval, schemas.RETRIEVAL, release / "retrieval.parquet")
    study = check({"counts": {"release": "cc3m", "count_types": ["lemmatized"]}, "models": ["backboneRN50_pretrainedcc3m"],
                   "datasets": ["cifar10"]})  # fmt: skip
    fits, points, coverage = studies.run_study(study)
    assert points.set_index("concept")["count"].to_dict() == {"cat": 40, "airplane": 4000}
    assert coverage["n_matched"].tolist() == [2] and set(points["task"]) == {"zero_shot"}
    assert len(fits) == 2 and fits["n_rows"].tolist() == [2, 2]


def test_grid_row_labels_put_a_taggers_name_on_its_own_line():
    """``image:synthetic_clip`` ran off the figure's left edge as one line; each part now has its own."""
    assert figures.row_label("matched") == "matched counts\nscore (%)"
    assert figures.row_label("image:synthetic_clip") == "image counts\nsynthetic_clip tagger\nscore (%)"
    assert max(len(line) for line in figures.row_label("matched:synthetic_clip").splitlines()) <= 21
