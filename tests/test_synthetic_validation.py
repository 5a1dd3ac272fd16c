"""helpers.synthetic.validation: the pipeline scored against a synthetic world's truth.

A tiny world (8 concepts, 200 samples) is searched with the real caption search and tagged by fake taggers
that read the truth: an *oracle* (prob 1 for the shown concepts, by the decoded pixels' digest), an oracle
blind to one concept, and a *random* tagger. The concept table the runs search is shuffled, spells one name
differently and holds two non-world concepts ("photo" occurs in many captions), so the id mapping and the
restriction to world concepts are exercised.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import warnings

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import torch

from helpers import schemas
from helpers.analysis import fits as analysis
from helpers.evaluation.specs import OVERALL
from helpers.evaluation.writers import EVALUATIONS
from helpers.images.frequencies import frequency_table, matched_counts, misalignment
from helpers.images.search import run_image_search
from helpers.images.sources import decode_image
from helpers.images.taggers import Tagger
from helpers.synthetic.validation import (
    SYNTHETIC_VALIDATION,
    estimated_pairs,
    synthetic_fit_rows,
    true_frequency_table,
    validation_table,
)
from helpers.synthetic.world import generate_world
from helpers.text.captions import CaptionSource, iter_tar_samples, list_shards
from helpers.text.search import run_text_search, text_counts

SPEC = {
    "n_concepts": 8,
    "frequency_law": "log_uniform",
    "decades": 1.5,
    "n_samples": 200,
    "max_concepts_per_image": 3,
    "image_size": 16,
    "misalignment_rate": 0.3,
    "omission_rate": 0.3,
    "seed": 5,
    "shard_size": 100,
    "downstream_per_class": 1,
    "retrieval_images": 2,
    "tagger_images": 2,
}
EXTRA = ["photo", "airplane"]  # not world concepts; "photo" is in captions like "a photo of a cat"
THRESHOLD = 0.5


class PixelTransform:
    """PIL -> CHW float tensor of the raw 0..255 pixel values (exact in float32, so digests are stable)."""

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).contiguous()


def digest(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.to("cpu", torch.uint8).numpy().tobytes()).hexdigest()


class TruthTagger:
    """Reads the world's truth: recognises each image by its pixels' digest.

    ``mode="oracle"``: prob 1.0 for the shown concepts (minus ``hide``), 0 otherwise; ``mode="random"``: a
    uniform probability per concept, seeded by the image, so it knows nothing.
    """

    backend = "truth"
    image_size = SPEC["image_size"]

    def __init__(self, concepts: list[str], truth: dict[str, list[int]], mode: str = "oracle", hide=()) -> None:
        self.concepts, self.truth, self.mode, self.hide = concepts, truth, mode, sorted(hide)

    def transform(self):
        return PixelTransform()

    def to(self, device):
        return self

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(images), len(self.concepts), dtype=torch.float32)
        for i, image in enumerate(images):
            key = digest(image)
            if self.mode == "random":
                out[i] = torch.from_numpy(np.random.default_rng(int(key[:15], 16)).random(len(self.concepts)))
            else:
                out[i, [c for c in self.truth[key] if c not in self.hide]] = 1.0
        return out

    def fingerprint(self) -> dict:
        truth = hashlib.sha256(repr(sorted(self.truth.items())).encode()).hexdigest()
        return {"backend": "truth", "mode": self.mode, "hide": self.hide, "truth": truth, "concepts": self.concepts}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return generate_world(SPEC, tmp_path_factory.mktemp("world"), progress=False)


def table_spelling(name: str) -> str:
    return name.replace("teddy bear", "Teddy_Bear")  # the same concept_key, another spelling


@pytest.fixture(scope="module")
def table(world) -> pd.DataFrame:
    """The searched concept table: world names and extras in a shuffled order, one name spelled differently."""
    names = [table_spelling(n) for n in world["concepts"]] + EXTRA
    order = np.random.default_rng(1).permutation(len(names))
    return pd.DataFrame({"concept_id": np.arange(len(names), dtype=np.int32), "name": [names[i] for i in order]})


@pytest.fixture(scope="module")
def truth_sets(world) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Shown and mentioned world concepts per sample, straight from the truth tables."""
    out = []
    for name in ("image_concepts", "caption_concepts"):
        pairs = pd.read_parquet(world["truth"][name])
        out.append({int(s): set(g["concept_id"].astype(int)) for s, g in pairs.groupby("sample_id")})
    return out[0], out[1]


def search(world: dict, shown: dict[int, set[int]], names: list[str], root, taggers: dict[str, dict]) -> dict:
    """Caption search of the world's pretraining tars for ``names``, and one image search per tagger."""
    source = world["pretrain"]["source"]
    run_text_search(source, names, root / "text", mode="phrase", executor="serial", progress=False)
    world_to_table = [
        names.index(table_spelling(n)) if table_spelling(n) in names else names.index(n) for n in world["concepts"]
    ]
    truth = {}
    for shard in list_shards(CaptionSource.from_config(source)):
        for sample in iter_tar_samples(shard.path, {"jpg"}):
            pixels = PixelTransform()(decode_image(sample.files["jpg"]))
            truth[digest(pixels)] = sorted(world_to_table[c] for c in shown[(shard.index << 32) | sample.position])
    assert len(truth) == SPEC["n_samples"]  # every image is distinct, so the digest identifies the sample
    for name, options in taggers.items():
        factory = functools.partial(TruthTagger, names, truth, **options)
        assert isinstance(factory(), Tagger)
        run_image_search(
            {"paths": source["paths"], "image_ext": ["jpg"]},
            factory,
            root / name,
            prob_floor=0.1,
            batch_size=64,
            device="cpu",
            executor="serial",
            progress=False,
        )
    return {"text": root / "text", **{name: root / name for name in taggers}, "world_to_table": world_to_table}


@pytest.fixture(scope="module")
def runs(world, table, truth_sets, tmp_path_factory) -> dict:
    """Runs with the shuffled table: oracle, oracle blind to "goose", random tagger."""
    hidden = world["concepts"].index("goose")
    names = table["name"].tolist()
    taggers = {"oracle": {}, "random": {"mode": "random"}, "blind": {"hide": [names.index("goose")]}}
    return {**search(world, truth_sets[0], names, tmp_path_factory.mktemp("runs"), taggers), "hidden": hidden}


@pytest.fixture(scope="module")
def oracle_table(world, runs, table) -> pd.DataFrame:
    return validation_table(world["out_dir"], runs["text"], runs["oracle"], table, THRESHOLD)


def pair_set(pairs: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(pairs["sample_id"].astype(int), pairs["concept_id"].astype(int)))


def by_method(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("method")


# ------------------------------------------------------------------------------------ estimated pairs


def test_estimated_pairs_of_the_oracle_are_the_truth(world, runs, table):
    pairs = estimated_pairs(runs["text"], runs["oracle"], THRESHOLD, table, world["concepts"])
    assert list(pairs.columns) == ["sample_id", "concept_id", "in_text", "in_image"]
    assert pairs.dtypes.astype(str).tolist() == ["int64", "int32", "bool", "bool"]
    assert not pairs.duplicated(["sample_id", "concept_id"]).any() and (pairs["in_text"] | pairs["in_image"]).all()
    assert set(pairs["concept_id"]) <= set(range(SPEC["n_concepts"]))  # world ids only: "photo" is left out
    assert pair_set(pairs[pairs["in_image"]]) == pair_set(pd.read_parquet(world["truth"]["image_concepts"]))
    assert pair_set(pairs[pairs["in_text"]]) == pair_set(pd.read_parquet(world["truth"]["caption_concepts"]))
    assert pairs.attrs["n_records"] == SPEC["n_samples"]
    # the text and matched sides are the pipeline's own counts, per concept, mapped to world ids
    to_table = runs["world_to_table"]
    text = text_counts(runs["text"])["count"].to_numpy()
    matched = matched_counts(runs["text"], runs["oracle"], THRESHOLD)["count"].to_numpy()
    per_concept = pairs.groupby("concept_id")[["in_text"]].sum()["in_text"].reindex(range(SPEC["n_concepts"]))
    assert per_concept.tolist() == text[to_table].tolist()
    both = pairs[pairs["in_text"] & pairs["in_image"]]
    assert np.bincount(both["concept_id"], minlength=SPEC["n_concepts"]).tolist() == matched[to_table].tolist()
    assert text[table["name"].tolist().index("photo")] > 0  # the extra concept was found, and ignored above


def test_a_world_concept_missing_from_the_table_is_an_error(world, runs, table):
    renamed = table.assign(name=table["name"].replace({"goose": "gander"}))
    with pytest.raises(ValueError, match=r"1 of the world's 8 concepts .*'goose'"):
        estimated_pairs(runs["text"], runs["oracle"], THRESHOLD, renamed, world["concepts"])
    with pytest.raises(ValueError, match="concept ids 0..9"):
        estimated_pairs(runs["text"], runs["oracle"], THRESHOLD, table.iloc[:-1], world["concepts"])


# ---------------------------------------------------------------------------------- validation table


def test_oracle_tagger_is_perfect_and_text_search_finds_the_mentions(world, oracle_table):
    t = by_method(oracle_table)
    assert t.index.tolist() == ["text", "image", "matched", "misalignment"]
    assert t["truth"].tolist() == ["mentioned", "shown", "shown and mentioned", "mentioned vs shown"]
    assert np.isnan(t.loc["text", "threshold"]) and t.loc["image", "threshold"] == THRESHOLD
    for method in ("image", "matched"):
        assert t.loc[method, "precision"] == 1.0 and t.loc[method, "recall"] == 1.0
        assert t.loc[method, "false_positives"] == 0 and t.loc[method, "false_negatives"] == 0
        assert t.loc[method, "count_ratio"] == 1.0 and t.loc[method, "count_spearman_r"] == pytest.approx(1.0)
    assert t.loc["text", "precision"] >= 0.95 and t.loc["text", "recall"] >= 0.95
    assert t.loc["image", "true_positives"] == len(pd.read_parquet(world["truth"]["image_concepts"]))
    assert t.loc["text", "true_positives"] + t.loc["text", "false_negatives"] == len(
        pd.read_parquet(world["truth"]["caption_concepts"])
    )
    assert t[["estimated", "true"]].iloc[:3].isna().all().all()
    assert t[["precision", "recall"]].loc["misalignment"].isna().all()


def test_oracle_misalignment_equals_the_truth(oracle_table, truth_sets):
    shown, mentioned = truth_sets
    both = [s for s in shown if shown[s] and mentioned.get(s)]
    disjoint = sum(not (shown[s] & mentioned[s]) for s in both)
    row = by_method(oracle_table).loc["misalignment"]
    assert disjoint > 0  # the world has misaligned samples, so the check is not vacuous
    assert row["true"] == pytest.approx(disjoint / len(both))
    assert row["true_fixed"] == pytest.approx(disjoint / SPEC["n_samples"])
    assert row["estimated"] == row["true"] and row["estimated_fixed"] == row["true_fixed"]


def test_misalignment_follows_the_pipeline_definition(world, truth_sets, tmp_path):
    """With only world concepts in the table, the estimated degrees are frequencies.misalignment's own."""
    names = list(world["concepts"])
    only_world = pd.DataFrame({"concept_id": np.arange(len(names), dtype=np.int32), "name": names})
    runs = search(world, truth_sets[0], names, tmp_path, {"random": {"mode": "random"}})
    row = by_method(validation_table(world["out_dir"], runs["text"], runs["random"], only_world, 0.7))
    pipeline = misalignment(runs["text"], runs["random"], 0.7).iloc[0]
    assert pipeline["n_misaligned"] > 0
    assert row.loc["misalignment", "estimated"] == pytest.approx(pipeline["degree_extracted"])
    assert row.loc["misalignment", "estimated_fixed"] == pytest.approx(pipeline["degree_fixed"])


def test_a_blind_or_random_tagger_scores_worse(world, runs, table, oracle_table):
    blind = by_method(validation_table(world["out_dir"], runs["text"], runs["blind"], table, THRESHOLD))
    shown_count = pd.read_parquet(world["truth"]["concepts"])["shown_count"]
    hidden = int(shown_count[runs["hidden"]])
    assert hidden > 0
    assert blind.loc["image", "precision"] == 1.0 and blind.loc["image", "false_negatives"] == hidden
    assert blind.loc["image", "recall"] == pytest.approx(1 - hidden / shown_count.sum())
    assert blind.loc["image", "count_ratio"] == pytest.approx(1 - hidden / shown_count.sum())

    rand = by_method(validation_table(world["out_dir"], runs["text"], runs["random"], table, THRESHOLD))
    assert rand.loc["image", "precision"] < 0.6 and rand.loc["image", "recall"] < 0.8
    assert rand.loc["matched", "precision"] < 1.0 and rand.loc["matched", "recall"] < 0.8
    assert rand.loc["misalignment", "estimated"] != rand.loc["misalignment", "true"]
    # the text side does not depend on the tagger
    text = ["precision", "recall", "true_positives", "false_positives", "false_negatives"]
    assert rand.loc["text", text].tolist() == by_method(oracle_table).loc["text", text].tolist()
    # a higher threshold keeps fewer random pairs: precision stays low, recall falls further
    strict = by_method(validation_table(world["out_dir"], runs["text"], runs["random"], table, 0.9))
    assert strict.loc["image", "recall"] < rand.loc["image", "recall"]


def test_schema_rejects_a_bad_table(oracle_table):
    SYNTHETIC_VALIDATION.validate(oracle_table, lazy=True)
    bad = oracle_table.copy()
    bad.loc[0, "precision"] = 1.5
    cases = {
        "precision": bad,
        "method": oracle_table.assign(method=["text", "image", "image", "misalignment"]),
        "extra": oracle_table.assign(extra=1),
        "recall": oracle_table.drop(columns="recall"),
    }
    for column, table in cases.items():
        with pytest.raises(pa.errors.SchemaErrors, match=column):
            SYNTHETIC_VALIDATION.validate(table, lazy=True)


# ------------------------------------------------------------------------------------ true frequencies


def test_true_frequency_table(world, truth_sets, tmp_path):
    shown, mentioned = truth_sets
    table = true_frequency_table(world["out_dir"])
    expected = np.zeros(SPEC["n_concepts"], dtype=int)
    for s, concepts in shown.items():
        for c in concepts & mentioned.get(s, set()):
            expected[c] += 1
    assert table["matched_count"].tolist() == expected.tolist()
    assert (table["matched_count"] <= table[["shown_count", "mentioned_count"]].min(axis=1)).all()
    assert table["name"].tolist() == world["concepts"]
    shutil.copytree(f"{world['out_dir']}/truth", tmp_path / "truth")
    concepts = pd.read_parquet(tmp_path / "truth" / "concepts.parquet")
    concepts.loc[0, "shown_count"] += 1
    concepts.to_parquet(tmp_path / "truth" / "concepts.parquet")
    with pytest.raises(ValueError, match="shown_count disagrees"):
        true_frequency_table(tmp_path)


# ------------------------------------------------------------------------------------------------ fits

NAMES = ["mouse", "fire truck", "goose", "cat", "child", "teddy bear"]
TRUE = np.array([1, 3, 10, 30, 100, 1000])


def corpus_frequencies(text, image, matched, names=NAMES, threshold=THRESHOLD) -> pd.DataFrame:
    parts = [("text", np.nan, text), ("image", threshold, image), ("matched", threshold, matched)]
    frames = [
        pd.DataFrame(
            {
                "corpus": "syn",
                "concept_id": np.arange(len(names), dtype=np.int32),
                "concept": names,
                "method": method,
                "threshold": t,
                "count": np.asarray(c, dtype=np.int64),
            }
        )
        for method, t, c in parts
    ]
    return pd.concat(frames, ignore_index=True)


def evaluations(scores: dict[str, float], *, dataset="synthetic-cls", retrieval=True) -> pd.DataFrame:
    rows = [
        {
            "model": "m",
            "dataset": dataset,
            "task": "zero_shot",
            "prompt": "class",
            "concept": c,
            "metric": "top1",
            "value": v,
            "n": 5,
        }
        for c, v in scores.items()
    ]
    rows.append(
        {
            "model": "m",
            "dataset": dataset,
            "task": "zero_shot",
            "prompt": "class",
            "concept": OVERALL,
            "metric": "top1",
            "value": 50.0,
            "n": 30,
        }
    )
    if retrieval:
        rows += [
            {
                "model": "m",
                "dataset": "synthetic-ret",
                "task": "retrieval",
                "prompt": "-",
                "concept": c,
                "metric": "i2t_k=1",
                "value": v / 100,
                "n": 3,
            }
            for c, v in scores.items()
        ]
    return EVALUATIONS.validate(pd.DataFrame(rows).astype({"n": "int64"}))


def test_fits_recover_a_known_log_linear_relation():
    a, b = 20.0, 12.0
    scores = {name.replace(" ", "_"): a + b * np.log10(c) for name, c in zip(NAMES, TRUE)}  # class-name spelling
    freq = corpus_frequencies(text=TRUE * 10, image=TRUE[::-1], matched=TRUE)
    truth = pd.DataFrame({"name": NAMES, "shown_count": TRUE})
    fits, points = synthetic_fit_rows(
        freq, truth, evaluations(scores), threshold=THRESHOLD, n_edges=4, resamples=50, seed=0
    )
    assert list(fits.columns) == list(analysis.FIT_COLUMNS)
    schemas.FITS.validate(fits)
    assert len(fits) == 2 * 4 * 2  # tasks x count types x zero rules
    assert set(fits["pretrain"]) == {"synthetic"} and set(fits["count_type"]) == {"text", "image", "matched", "true"}
    assert set(zip(fits["task"], fits["prompt"], fits["metric"])) == {
        ("zero_shot", "class", "top1"),
        ("retrieval", "-", "i2t_k=1"),
    }
    f = fits.set_index(["task", "count_type", "zero_rule"])
    for task in ("zero_shot", "retrieval"):
        for count_type, intercept in (("true", a), ("matched", a), ("text", a - b)):  # text counts are 10x
            row = f.loc[(task, count_type, "to_one")]
            assert row["slope_per_decade"] == pytest.approx(b) and row["intercept"] == pytest.approx(intercept)
            assert row["concept_pearson_r"] == pytest.approx(1.0) and row["n_rows"] == len(NAMES)
        assert f.loc[(task, "image", "to_one"), "concept_pearson_r"] < -0.5  # image counts are reversed
    assert list(points.columns) == [
        "task",
        "model",
        "dataset",
        "prompt",
        "metric",
        "count_type",
        "concept",
        "count",
        "score",
    ]
    assert len(points) == 2 * 4 * len(NAMES) and fits.attrs["unmatched"] == []
    assert len(pd.concat([fits, fits])) == 2 * len(fits)  # what attrs hold does not break a concat
    true_points = points[(points["count_type"] == "true") & (points["task"] == "retrieval")]
    assert true_points.set_index("concept")["score"].to_dict() == pytest.approx(scores)


def test_fits_report_unmatched_concepts_and_refuse_ambiguous_inputs():
    scores = {**{n: 10.0 + i for i, n in enumerate(NAMES)}, "unicorn": 3.0}
    freq = corpus_frequencies(text=TRUE, image=TRUE, matched=TRUE)
    truth = pd.DataFrame({"name": NAMES[:-1], "shown_count": TRUE[:-1]})  # no true count for "teddy bear"
    with pytest.warns(UserWarning, match="have no count"):
        fits, points = synthetic_fit_rows(
            freq, truth, evaluations(scores, retrieval=False), threshold=THRESHOLD, n_edges=4, resamples=0, seed=0
        )
    unmatched = pd.DataFrame(fits.attrs["unmatched"])
    assert set(unmatched.columns) == {"task", "model", "dataset", "prompt", "metric", "count_type", "concept"}
    assert sorted(unmatched[unmatched["count_type"] == "text"]["concept"]) == ["unicorn"]
    assert sorted(unmatched[unmatched["count_type"] == "true"]["concept"]) == ["teddy bear", "unicorn"]
    assert fits.set_index(["count_type", "zero_rule"]).loc[("true", "to_one"), "n_rows"] == 5
    assert "unicorn" not in set(points["concept"])
    with pytest.raises(ValueError, match="no image counts at threshold 0.7"):
        synthetic_fit_rows(freq, truth, evaluations(scores), threshold=0.7, n_edges=4, resamples=0, seed=0)
    two = pd.concat([evaluations(scores, retrieval=False), evaluations(scores, dataset="other", retrieval=False)])
    with pytest.raises(ValueError, match="several datasets"):
        synthetic_fit_rows(freq, truth, two, threshold=THRESHOLD, n_edges=4, resamples=0, seed=0)


def test_fits_on_the_oracle_runs_match_the_true_counts(world, runs, table):
    """End to end: the oracle's image counts are the shown counts, so their fits equal the true-count fits."""
    freq = frequency_table("syn", runs["text"], runs["oracle"], [THRESHOLD], table)
    truth = true_frequency_table(world["out_dir"])
    scores = {n: float(5 + 10 * np.log10(c)) for n, c in zip(truth["name"], truth["shown_count"])}
    with warnings.catch_warnings():  # counts without a score ("photo", "airplane") are no reason to warn
        warnings.simplefilter("error")
        fits, points = synthetic_fit_rows(
            freq, truth, evaluations(scores, retrieval=False), threshold=THRESHOLD, n_edges=4, resamples=20, seed=0
        )
    assert fits.attrs["unmatched"] == []
    f = fits.set_index(["count_type", "zero_rule"])
    stat = ["n_rows", "concept_pearson_r", "slope_per_decade", "intercept", "binned_r"]
    assert f.loc[("image", "to_one"), stat].tolist() == pytest.approx(f.loc[("true", "to_one"), stat].tolist())
    assert f.loc[("true", "to_one"), "slope_per_decade"] == pytest.approx(10.0)
    assert set(points["concept"]) == set(world["concepts"])


def test_spellings_of_one_concept_in_a_broad_table_are_joined_once():
    """A searched table with the release's spellings ("fire-truck", "Fire Truck") beside the world's name."""
    names = [*NAMES, "fire-truck", "Fire Truck", "American_Coot", "American coot"]
    same = np.concatenate([TRUE, [3, 3, 7, 9]])  # equal counts for the fire truck spellings
    truth = pd.DataFrame({"name": NAMES, "shown_count": TRUE})
    scores = {n: 10.0 + i for i, n in enumerate(NAMES)}
    freq = corpus_frequencies(text=same, image=same, matched=same, names=names)
    fits, points = synthetic_fit_rows(
        freq, truth, evaluations(scores, retrieval=False), threshold=THRESHOLD, n_edges=4, resamples=0, seed=0
    )
    assert (points.groupby(["count_type", "concept"]).size() == 1).all()
    assert points[(points["count_type"] == "text") & (points["concept"] == "fire truck")]["count"].item() == 3
    differing = np.concatenate([TRUE, [5, 6, 7, 9]])  # spellings disagree: the world's own spelling decides
    freq = corpus_frequencies(text=differing, image=differing, matched=differing, names=names)
    _, points = synthetic_fit_rows(
        freq, truth, evaluations(scores, retrieval=False), threshold=THRESHOLD, n_edges=4, resamples=0, seed=0
    )
    assert points[(points["count_type"] == "text") & (points["concept"] == "fire truck")]["count"].item() == 3
    without_world_spelling = [n if n != "fire truck" else "fire_truck" for n in names]
    freq = corpus_frequencies(text=differing, image=differing, matched=differing, names=without_world_spelling)
    with pytest.raises(ValueError, match="sharing a concept_key"):
        synthetic_fit_rows(
            freq, truth, evaluations(scores, retrieval=False), threshold=THRESHOLD, n_edges=4, resamples=0, seed=0
        )


def test_the_image_run_is_the_stage_s_declared_output_never_the_newest_folder(tmp_path, monkeypatch):
    """image_run_dir returns data/interim/image_search/<name> (the stage's out); a newer stray folder is ignored."""
    from helpers.shards import RUN_FILE
    from helpers.synthetic.validation import image_run_dir

    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    declared = tmp_path / "data" / "interim" / "image_search" / "synthetic"
    with pytest.raises(ValueError, match=r"synthetic_validation.image_corpora: no image search of 'synthetic'"):
        image_run_dir("synthetic")
    stray = declared / "open_clip"  # an older layout's per-backend folder, newer than the real run
    stray.mkdir(parents=True)
    (declared / RUN_FILE).write_text("{}")
    (stray / RUN_FILE).write_text("{}")
    assert image_run_dir("synthetic") == declared
