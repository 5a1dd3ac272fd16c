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

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import torch

from helpers.analysis import studies
from helpers.analysis.studies.spec import Statistics
from helpers.images.frequencies import frequency_table, matched_counts, misalignment
from helpers.images.search import run_image_search
from helpers.images.sources import decode_image
from helpers.images.taggers import Tagger
from helpers.synthetic.validation import (
    CALIBRATED,
    SYNTHETIC_VALIDATION,
    estimated_pairs,
    plot_precision_recall,
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
            {"prob_floor": 0.1, "batch_size": 64, "device": "cpu", "executor": "serial"},
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


def test_a_row_per_threshold_and_the_calibrated_one(world, runs, table):
    """The random tagger's P/R curve: recall falls as the threshold rises; per-concept thresholds are applied
    per concept (all at 0.9 reproduce the global 0.9 rows; one concept at 1.0 loses exactly its pairs)."""
    sweep = validation_table(
        world["out_dir"], runs["text"], runs["random"], table, THRESHOLD, thresholds=[0.3, 0.7, 0.9, THRESHOLD]
    )
    SYNTHETIC_VALIDATION.validate(sweep, lazy=True)
    image = sweep[sweep["method"] == "image"].set_index("threshold_label")
    assert THRESHOLD == 0.5
    assert image.index.tolist() == ["0.5", "0.3", "0.7", "0.9"]  # operating first, no repeated row
    assert image["operating"].tolist() == [True, False, False, False]
    assert (
        image.loc["0.3", "recall"]
        > image.loc["0.5", "recall"]
        > image.loc["0.7", "recall"]
        > image.loc["0.9", "recall"]
    )
    assert sweep[sweep["method"] == "matched"]["threshold_label"].tolist() == ["0.5", "0.3", "0.7", "0.9"]
    assert (sweep["method"] == "text").sum() == 1 and (sweep["method"] == "misalignment").sum() == 1

    n = len(table)
    flat = validation_table(
        world["out_dir"], runs["text"], runs["random"], table, THRESHOLD, thresholds=[0.9], calibrated=np.full(n, 0.9)
    )
    rows = flat[flat["method"].isin(["image", "matched"])].set_index(["method", "threshold_label"])
    counts = ["true_positives", "false_positives", "false_negatives"]
    for method in ("image", "matched"):
        assert rows.loc[(method, CALIBRATED), counts].tolist() == rows.loc[(method, "0.9"), counts].tolist()
        assert np.isnan(rows.loc[(method, CALIBRATED), "threshold"])

    # the oracle's probabilities are 0 or 1: a concept at threshold 1.0 keeps its pairs, none at all loses them
    goose = table["name"].tolist().index("goose")
    cuts = np.full(n, 0.5)
    oracle = validation_table(world["out_dir"], runs["text"], runs["oracle"], table, THRESHOLD, calibrated=cuts)
    assert oracle.set_index(["method", "threshold_label"]).loc[("image", CALIBRATED), "recall"] == 1.0
    with pytest.raises(ValueError, match="below the prob_floor"):
        validation_table(
            world["out_dir"],
            runs["text"],
            runs["oracle"],
            table,
            THRESHOLD,
            calibrated=np.where(np.arange(n) == goose, 0.05, 0.5),
        )
    with pytest.raises(ValueError, match="one per concept"):
        validation_table(world["out_dir"], runs["text"], runs["oracle"], table, THRESHOLD, calibrated=cuts[:-1])

    fig = plot_precision_recall(sweep.assign(image_corpus="random"))
    assert [ax.get_title() for ax in fig.axes[:2]] == ["image counts vs truth", "matched counts vs truth"]


def test_schema_rejects_a_bad_table(oracle_table):
    SYNTHETIC_VALIDATION.validate(oracle_table, lazy=True)
    bad = oracle_table.copy()
    bad.loc[0, "precision"] = 1.5
    cases = {
        "precision": bad,
        "method": oracle_table.assign(method=["text", "image", "image", "misalignment"]),  # two image rows at 0.7
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
# The fits on estimated and true counts are the study `synthetic` (tests/test_study.py); here only what needs
# the world: with an oracle tagger, the image counts are the true shown counts, so their fits are equal.


def test_study_fits_on_the_oracle_runs_match_the_true_counts(world, runs, table):
    freq = frequency_table("syn", runs["text"], runs["oracle"], [THRESHOLD], table)
    truth = true_frequency_table(world["out_dir"])
    scores = {n: float(5 + 10 * np.log10(c)) for n, c in zip(truth["name"], truth["shown_count"])}
    counts = pd.concat(
        [
            pd.DataFrame({"count_type": freq["method"], "name": freq["concept"], "count": freq["count"]}),
            pd.DataFrame({"count_type": "true", "name": truth["name"], "count": truth["shown_count"]}),
        ],
        ignore_index=True,
    ).assign(downstream="")
    evaluations = pd.DataFrame(
        {"task": "zero_shot", "model": "m", "dataset": "syn-cls", "prompt": "class", "metric": "top1",
         "concept": list(scores), "score": list(scores.values())}
    )  # fmt: skip
    points, coverage = studies.join_counts(
        counts, evaluations, ["text", "image", "matched", "true"], preferred=truth["name"]
    )
    assert (coverage["n_unmatched"] == 0).all()  # counts without a score ("photo", "airplane") are no miss
    study = studies.Study(
        name="synthetic",
        statistics=Statistics({"zero_shot": 4}, {"zero_shot": (None, None)}, "to_one", 20, 0),
    )
    fits = studies.study_fits(points, study)
    f = fits.set_index(["count_type", "zero_rule"])
    stat = ["n_rows", "concept_pearson_r", "slope_per_decade", "intercept", "binned_r"]
    assert f.loc[("image", "to_one"), stat].tolist() == pytest.approx(f.loc[("true", "to_one"), stat].tolist())
    assert f.loc[("true", "to_one"), "slope_per_decade"] == pytest.approx(10.0)
    assert set(points["concept"]) == set(world["concepts"])
