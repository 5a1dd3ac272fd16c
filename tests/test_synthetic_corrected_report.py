"""Calibrated counts (helpers.images.frequencies) and the stage's corrected fits (helpers.synthetic.corrected_report).

The tiny world and its runs of ``test_synthetic_validation`` (an oracle tagger, one blind to a concept, a random
one) are reused: per-concept thresholds must count each concept at its own cut; the corpus audit of the oracle
must be the truth; and the stage's report, fed from a work folder laid out as the stages write it, must give an
oracle's corrected slope equal to its raw and true ones (its precision and recall are 1) and mark a row
``corrected_closer`` exactly when the corrected slope is nearer the true one.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import schemas
from helpers.evaluation.pair import EVALUATIONS_FILE
from helpers.evaluation.writers import write_evaluations
from helpers.images.audit import audit_path, thresholds_path, write_audit
from helpers.images.calibration import fit_thresholds, write_thresholds
from helpers.images.corpora import frequencies_path
from helpers.images.frequencies import CALIBRATED_METHODS, calibrated_counts, frequency_table, matched_counts
from helpers.images.search import image_counts, image_search_dir
from helpers.synthetic.corrected import CORRECTED_FITS
from helpers.synthetic.corrected_report import (
    WorldAudit,
    corpus_audit,
    corrected_fits_metrics,
    corrected_fits_report,
    plot_corrected_fits,
)
from helpers.synthetic.validation import true_frequency_table
from helpers.text import corpora
from test_synthetic_validation import SPEC, THRESHOLD, runs, table, truth_sets, world  # noqa: F401 (fixtures)


def global_counts(runs, tagger: str, t: float) -> tuple[np.ndarray, np.ndarray]:  # noqa: F811
    image = image_counts(runs[tagger], [t])["count"].to_numpy()
    matched = matched_counts(runs["text"], runs[tagger], [t])["count"].to_numpy()
    return image, matched


def test_calibrated_counts_count_each_concept_at_its_own_threshold(runs, table):  # noqa: F811
    n = len(table)
    low_image, low_matched = global_counts(runs, "random", 0.3)
    high_image, high_matched = global_counts(runs, "random", 0.9)
    cuts = np.where(np.arange(n) % 2 == 0, 0.3, 0.9)
    out = calibrated_counts(runs["text"], runs["random"], cuts)
    assert out["method"].unique().tolist() == list(CALIBRATED_METHODS) and len(out) == 2 * n
    image = out[out["method"] == "image_calibrated"].set_index("concept_id")
    matched = out[out["method"] == "matched_calibrated"].set_index("concept_id")
    even = np.arange(n) % 2 == 0
    assert (image["count"].to_numpy() == np.where(even, low_image, high_image)).all()
    assert (matched["count"].to_numpy() == np.where(even, low_matched, high_matched)).all()
    np.testing.assert_allclose(image["threshold"], cuts)  # each row holds its concept's own threshold
    assert (low_image >= high_image).all() and (low_image > high_image).any()  # the cuts made a difference

    with pytest.raises(ValueError, match="below the prob_floor"):
        calibrated_counts(runs["text"], runs["random"], np.where(even, 0.05, 0.5))  # the run's floor is 0.1
    with pytest.raises(ValueError, match="one per concept"):
        calibrated_counts(runs["text"], runs["random"], cuts[:-1])


def test_frequency_table_keeps_the_global_rows_and_adds_the_calibrated_ones(runs, table):  # noqa: F811
    plain = frequency_table("w", runs["text"], runs["random"], [0.5, 0.7], table)
    both = frequency_table("w", runs["text"], runs["random"], [0.5, 0.7], table, calibrated=np.full(len(table), 0.7))
    schemas.CORPUS_FREQUENCIES.validate(both, lazy=True)
    old = both[both["method"].isin(["text", "image", "matched"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, plain)  # readers of image / matched at a global threshold see no change
    at = plain[np.isclose(plain["threshold"], 0.7)].set_index(["method", "concept_id"])["count"]
    new = both[both["method"].isin(CALIBRATED_METHODS)]
    for method in ("image", "matched"):
        rows = new[new["method"] == f"{method}_calibrated"].set_index("concept_id")["count"]
        assert rows.tolist() == at.loc[method].reindex(rows.index).tolist()


def test_corpus_audit_of_the_oracle_is_the_truth(world, runs, table):  # noqa: F811
    audit = corpus_audit(world["out_dir"], runs["text"], runs["oracle"], table, 60, seed=3)
    assert audit.source == "corpus_sample" and audit.probs.shape == audit.labels.shape == (60, SPEC["n_concepts"])
    assert ((audit.probs >= THRESHOLD) == audit.labels).all() and audit.labels.any()
    again = corpus_audit(world["out_dir"], runs["text"], runs["oracle"], table, 60, seed=3)
    assert (again.labels == audit.labels).all()  # seeded
    everything = corpus_audit(world["out_dir"], runs["text"], runs["oracle"], table, 10_000)
    shown = pd.read_parquet(world["truth"]["image_concepts"])
    assert everything.labels.shape[0] == SPEC["n_samples"] and everything.labels.sum() == len(shown)
    said = pd.read_parquet(world["truth"]["caption_concepts"])
    assert everything.mentioned.sum() == len(said) and (everything.text == everything.mentioned).all()
    predicted, truth = everything.decisions(THRESHOLD, matched=True)  # tagged AND in the caption
    assert (predicted == (everything.labels & everything.mentioned)).all() and (truth == predicted).all()
    image_only = everything.decisions(THRESHOLD, matched=False)
    assert (image_only[0] == everything.labels).all() and image_only[0].sum() > predicted.sum()
    blind = corpus_audit(world["out_dir"], runs["text"], runs["blind"], table, 10_000)
    goose = world["concepts"].index("goose")
    assert blind.labels[:, goose].any() and not (blind.probs[:, goose] > 0).any()  # misses are visible
    with pytest.raises(ValueError, match="audit_samples"):
        corpus_audit(world["out_dir"], runs["text"], runs["oracle"], table, 0)
    no_captions = WorldAudit("calibration_audit", everything.probs, everything.labels)
    assert not no_captions.has_captions and everything.has_captions
    with pytest.raises(ValueError, match="no captions"):
        no_captions.decisions(THRESHOLD, matched=True)


@pytest.fixture()
def workdir(tmp_path, monkeypatch, world, runs, table):  # noqa: F811
    """A work folder laid out as the stages write it: caption search, two image searches with counts, the
    random tagger's per-concept thresholds and scored audit split, and a model's per-concept accuracy."""
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    shutil.copytree(runs["text"], corpora.text_search_dir("w"))
    schemas.write_table(table, corpora.SEARCHED_CONCEPTS, corpora.concept_table_path("w"))
    n = len(table)
    rng = np.random.default_rng(0)
    for name in ("oracle", "random"):
        shutil.copytree(runs[name], image_search_dir(name))
        cuts = None
        if name == "random":
            probs = rng.random((80, n)).astype(np.float32)
            labels = rng.random((80, n)) < 0.3
            fitted = fit_thresholds(probs, labels, target_precision=0.35, default=0.7, floor=0.1, min_positives=3)
            write_thresholds(fitted, thresholds_path(name))
            write_audit(probs, labels, table["concept_id"].to_numpy(), audit_path(name))
            cuts = fitted["threshold"].to_numpy()
        freq = frequency_table(name, runs["text"], runs[name], [0.5, 0.7], table, calibrated=cuts)
        frequencies_path(name).parent.mkdir(parents=True, exist_ok=True)
        schemas.write_table(freq, schemas.CORPUS_FREQUENCIES, frequencies_path(name))
    truth = true_frequency_table(world["out_dir"])
    accuracy = np.clip(20 * np.log10(np.maximum(truth["shown_count"], 1)) + rng.normal(0, 3, len(truth)), 0, 100)
    evaluations = pd.DataFrame(
        {
            "model": "m",
            "dataset": "cls",
            "task": "zero_shot",
            "prompt": "ensemble",
            "concept": truth["name"],
            "metric": "top1",
            "value": accuracy,
            "n": 10,
        }
    )
    folder = tmp_path / "data" / "processed" / "evaluations" / "m" / "cls"
    folder.mkdir(parents=True)
    write_evaluations(evaluations, folder / EVALUATIONS_FILE)
    settings = {
        "world": str(world["out_dir"]),
        "corpus": "w",
        "image_corpora": ["oracle", "random"],
        "threshold": THRESHOLD,
        "corrected_fits": {"model": "m", "datasets": ["cls"], "audit_samples": 120, "resamples": 50},
    }
    return tmp_path, settings


def test_corrected_fits_report(workdir):
    base, settings = workdir
    fits = corrected_fits_report(settings, base, base / "data" / "processed" / "evaluations")
    CORRECTED_FITS.validate(fits, lazy=True)
    keys = set(zip(fits["image_corpus"], fits["audit"], fits["count_type"]))
    assert {("oracle", "corpus_sample", "image"), ("oracle", "corpus_sample", "matched")} <= keys
    assert not any(k[0] == "oracle" and (k[1] == "calibration_audit" or k[2].endswith("calibrated")) for k in keys)
    assert {("random", "corpus_sample", c) for c in CORRECTED_FITS_TYPES} <= keys
    # the calibration audit has no captions: it corrects image counts only
    assert {k[2] for k in keys if k[0] == "random" and k[1] == "calibration_audit"} == {"image", "image_calibrated"}

    oracle = fits[(fits["image_corpus"] == "oracle") & (fits["count_type"] == "image")].iloc[0]
    # the oracle's image counts are the true ones and its audit rates 1: raw = corrected = true slope
    assert oracle["raw_slope"] == pytest.approx(oracle["true_slope"])
    assert oracle["corrected_slope"] == pytest.approx(oracle["raw_slope"])
    assert oracle["audit_samples"] == 120
    finite = fits.dropna(subset=["raw_slope", "corrected_slope", "true_slope"])
    closer = (finite["corrected_slope"] - finite["true_slope"]).abs() < (
        finite["raw_slope"] - finite["true_slope"]
    ).abs()
    assert (finite["corrected_closer"] == closer).all()
    ci = finite.dropna(subset=["corrected_slope_ci_low"])
    assert len(ci) and (ci["corrected_slope_ci_low"] <= ci["corrected_slope_ci_high"]).all()

    summary = corrected_fits_metrics(fits)
    assert summary["fits"]["oracle"]["image"]["corpus_sample"]["raw_slope"] == pytest.approx(oracle["raw_slope"])
    fig = plot_corrected_fits(fits)
    assert fig.axes[0].get_xlabel().startswith("concept-level slope")

    assert corrected_fits_report({**settings, "corrected_fits": None}, base, base).empty
    with pytest.raises(Exception, match="evaluate@m-nope"):
        bad = {**settings, "corrected_fits": {**settings["corrected_fits"], "datasets": ["nope"]}}
        corrected_fits_report(bad, base, base / "data" / "processed" / "evaluations")


CORRECTED_FITS_TYPES = ("image", "matched", "image_calibrated", "matched_calibrated")
