"""helpers.images.audit: per-concept thresholds of an image corpus's tagger fitted on its labelled audit split.

A tiny trained tagger (random weights, saved as a real checkpoint) scores a handful of labelled PNGs; the
stage wiring must score exactly what the calibration library scores, write the threshold and audit tables,
and refuse or report bad audit input naming the params key.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.images.audit import calibrate_corpus, read_audit, thresholds_path
from helpers.images.backends import build_tagger
from helpers.images.calibration import THRESHOLDS_SCHEMA, audit_scores, fit_thresholds
from helpers.images.tagger_trained import train_tagger
from helpers.params import ConfigError

CONCEPTS = ["red square", "blue circle", "green cross"]
COLOURS = {"red square": (220, 30, 30), "blue circle": (30, 30, 220), "green cross": (30, 200, 30)}
SEARCH = {"thresholds": [0.5, 0.7], "prob_floor": 0.1, "batch_size": 4, "device": "cpu"}


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path))
    rng = np.random.default_rng(0)
    folder = tmp_path / "audit"
    (folder / "images").mkdir(parents=True)
    rows, images, labels = [], [], []
    for i in range(24):
        shown = [c for c in CONCEPTS if rng.random() < 0.5]
        pixels = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
        for j, c in enumerate(shown):
            pixels[j * 2 : j * 2 + 3] = COLOURS[c]
        image = Image.fromarray(pixels)
        image.save(folder / "images" / f"{i:03d}.png")
        rows.append({"image": f"images/{i:03d}.png", "concepts": "|".join(shown)})
        images.append(image)
        labels.append(shown)
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    tagger = train_tagger(images, labels, CONCEPTS, image_size=8, epochs=1, widths=[4], progress=False)
    checkpoint = tagger.save(tmp_path / "tagger.pt")
    config = {"backend": "trained", "checkpoint": str(checkpoint)}
    entry = {
        "corpus": "c",
        "images": {"format": "wds", "paths": "x/*.tar"},
        "tagger": config,
        "audit": {"labels": str(folder / "labels.csv"), "min_positives": 2, "target_precision": 0.6},
    }
    concepts = pd.DataFrame({"concept_id": np.arange(3, dtype=np.int32), "name": CONCEPTS})
    return {"entry": entry, "config": config, "concepts": concepts, "folder": folder, "rows": rows}


def test_calibration_scores_the_audit_with_the_corpus_tagger_and_writes_both_tables(setup):
    result = calibrate_corpus("img", setup["entry"], setup["concepts"], SEARCH, tagger_config=setup["config"])
    assert result is not None and result.n_audit == 24 and not result.skipped and not result.unknown_labels
    assert result.thresholds_path == thresholds_path("img") and result.thresholds_path.is_file()
    assert list(result.thresholds.columns) == THRESHOLDS_SCHEMA.names and len(result.thresholds) == 3

    tagger = build_tagger(setup["config"], CONCEPTS)
    files = [str(setup["folder"] / r["image"]) for r in setup["rows"]]
    expected = audit_scores(tagger, files, [r["concepts"].split("|") if r["concepts"] else [] for r in setup["rows"]])
    probs, labels, ids = read_audit(result.audit_path)
    np.testing.assert_allclose(probs, expected.probs, rtol=1e-6)
    assert (labels == expected.labels).all() and ids.tolist() == [0, 1, 2]
    fitted = fit_thresholds(
        expected.probs, expected.labels, target_precision=0.6, default=0.7, floor=0.1, min_positives=2
    )
    np.testing.assert_allclose(result.thresholds["threshold"], fitted["threshold"], rtol=1e-6)
    assert (result.thresholds["threshold"] >= 0.1).all()


def test_no_audit_entry_means_no_calibration(setup):
    entry = {k: v for k, v in setup["entry"].items() if k != "audit"}
    assert calibrate_corpus("img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"]) is None


def test_bad_audit_input_is_refused_or_reported(setup):
    entry = setup["entry"]
    missing = {**entry, "audit": {**entry["audit"], "labels": str(setup["folder"] / "nope.csv")}}
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit\.labels"):
        calibrate_corpus("img", missing, setup["concepts"], SEARCH, tagger_config=setup["config"])
    wrong_column = {**entry, "audit": {**entry["audit"], "concepts_column": "tags"}}
    with pytest.raises(ConfigError, match="tags"):
        calibrate_corpus("img", wrong_column, setup["concepts"], SEARCH, tagger_config=setup["config"])

    # a broken image and a label that is no concept: counted and reported, the rest calibrated
    (setup["folder"] / "images" / "000.png").write_bytes(b"not a png")
    rows = pd.read_csv(setup["folder"] / "labels.csv", keep_default_na=False)
    rows.loc[1, "concepts"] = "unicorn"
    rows.to_csv(setup["folder"] / "labels.csv", index=False)
    result = calibrate_corpus("img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"])
    assert result.n_audit == 23 and len(result.skipped) == 1 and "000.png" in result.skipped[0]
    assert result.unknown_labels == ["unicorn"]


def test_prevalence_from_captions_fits_at_the_corpus_prevalence(setup):
    """``prevalence: captions``: the stage passes each concept's caption share; the fit is fit_thresholds' with it."""
    from helpers.images.audit import caption_prevalence

    text = pd.DataFrame({"concept_id": [0, 2, 7], "count": [5, 40, 3]})  # id 7: no concept of this search
    prevalence = caption_prevalence(text, 3, 100)
    np.testing.assert_allclose(prevalence, [0.05, 0.0, 0.4])
    with pytest.raises(ValueError, match="at least one image"):
        caption_prevalence(text, 3, 0)
    entry = {**setup["entry"], "audit": {**setup["entry"]["audit"], "prevalence": "captions"}}
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit\.prevalence"):
        calibrate_corpus("img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"])
    result = calibrate_corpus(
        "img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"], prevalence=prevalence
    )
    probs, labels, _ = read_audit(result.audit_path)
    fitted = fit_thresholds(
        probs, labels, target_precision=0.6, default=0.7, floor=0.1, min_positives=2, prevalence=prevalence
    )
    np.testing.assert_allclose(result.thresholds["threshold"], fitted["threshold"], rtol=1e-6)
    np.testing.assert_allclose(result.thresholds["precision"], fitted["precision"], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit\.prevalence"):
        bad = {**entry, "audit": {**entry["audit"], "prevalence": "corpus"}}
        calibrate_corpus("img", bad, setup["concepts"], SEARCH, tagger_config=setup["config"], prevalence=prevalence)


def test_pooled_mode_passes_its_folds_and_reports_the_choice(setup):
    """``mode: pooled``: the stage's thresholds are fit_thresholds' pooled ones on the scored audit, with the
    chosen local precision reported; more folds than audit images is refused naming the key."""
    audit = {**setup["entry"]["audit"], "mode": "pooled", "folds": 3, "seed": 2}
    entry = {**setup["entry"], "audit": audit}
    result = calibrate_corpus("img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"])
    probs, labels, _ = read_audit(result.audit_path)
    fitted = fit_thresholds(probs, labels, mode="pooled", target_precision=0.6, floor=0.1, folds=3, seed=2)
    np.testing.assert_allclose(result.thresholds["threshold"], fitted["threshold"], rtol=1e-6)
    assert result.pooled == fitted.attrs["pooled"] and result.pooled["folds"] == 3
    too_many = {**setup["entry"], "audit": {**audit, "folds": 25}}  # 24 audit images
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit: folds"):
        calibrate_corpus("img", too_many, setup["concepts"], SEARCH, tagger_config=setup["config"])
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit\.folds"):
        calibrate_corpus("img", {**entry, "audit": {**audit, "folds": 1}}, setup["concepts"], SEARCH,
                         tagger_config=setup["config"])  # fmt: skip


def test_audit_files_outside_data_duplicates_and_labels_that_name_no_concept_are_refused(setup, tmp_path):
    audit = setup["entry"]["audit"]
    outside = {**setup["entry"], "data": str(tmp_path / "elsewhere")}
    with pytest.raises(ConfigError, match=r"image_corpora\.img\.audit\.labels: .* is outside image_corpora\.img\.data"):
        calibrate_corpus("img", outside, setup["concepts"], SEARCH, tagger_config=setup["config"])
    folder = setup["folder"]
    rows = (folder / "labels.csv").read_text().splitlines()
    (folder / "twice.csv").write_text("\n".join([*rows, rows[1]]) + "\n")
    twice = {**setup["entry"], "audit": {**audit, "labels": str(folder / "twice.csv")}}
    with pytest.raises(ConfigError, match=r"audit\.labels: .*twice\.csv lists 1 image\(s\) more than once"):
        calibrate_corpus("img", twice, setup["concepts"], SEARCH, tagger_config=setup["config"])
    (folder / "dragons.csv").write_text("image,concepts\n" + "".join(f"{r.split(',')[0]},dragon\n" for r in rows[1:]))
    dragons = {**setup["entry"], "audit": {**audit, "labels": str(folder / "dragons.csv")}}
    with pytest.raises(ConfigError, match=r"no audit label names a searched concept .*dragon"):
        calibrate_corpus("img", dragons, setup["concepts"], SEARCH, tagger_config=setup["config"])
    (folder / "empty.csv").write_text("")
    empty = {**setup["entry"], "audit": {**audit, "labels": str(folder / "empty.csv")}}
    with pytest.raises(ConfigError, match=r"audit\.labels: .*empty\.csv: "):
        calibrate_corpus("img", empty, setup["concepts"], SEARCH, tagger_config=setup["config"])


def test_a_missed_pooled_target_is_warned_naming_the_key(setup):
    audit = {**setup["entry"]["audit"], "mode": "pooled", "target_precision": 1.0, "folds": 3}
    entry = {**setup["entry"], "audit": audit}
    with pytest.warns(UserWarning, match=r"image_corpora\.img\.audit\.target_precision: no threshold choice"):
        result = calibrate_corpus("img", entry, setup["concepts"], SEARCH, tagger_config=setup["config"])
    assert result.pooled["cv_precision"] < 1.0
