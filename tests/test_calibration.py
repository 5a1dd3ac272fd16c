"""Tests of helpers.images.calibration: per-concept thresholds fitted on an audit split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.images.calibration import (
    fit_thresholds,
    read_thresholds,
    thresholds_for,
    write_thresholds,
)


def _audit(seed=0, n=2000):
    """Concept 0 is over-scored (negatives often high), concept 1 under-scored (positives low), concept 2 clean."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, 3)) < 0.2
    probs = np.empty((n, 3))
    probs[:, 0] = np.where(labels[:, 0], rng.uniform(0.85, 1.0, n), rng.uniform(0.5, 0.9, n))
    probs[:, 1] = np.where(labels[:, 1], rng.uniform(0.3, 0.6, n), rng.uniform(0.0, 0.4, n))
    probs[:, 2] = np.where(labels[:, 2], rng.uniform(0.75, 1.0, n), rng.uniform(0.0, 0.6, n))
    return probs, labels


def _pr(probs, labels, t):
    pred = probs >= t
    tp = (pred & labels).sum()
    return tp / max(pred.sum(), 1), tp / labels.sum()


def test_precision_mode_meets_the_target_with_the_highest_recall():
    probs, labels = _audit()
    table = fit_thresholds(probs, labels, mode="precision", target_precision=0.9, default=0.7)
    assert not table["fallback"].any()
    for c in range(3):
        t = table.loc[c, "threshold"]
        precision, recall = _pr(probs[:, c], labels[:, c], t)
        assert precision >= 0.9
        assert table.loc[c, "precision"] == pytest.approx(precision)
        assert table.loc[c, "recall"] == pytest.approx(recall)
        # no lower candidate threshold meets the target with more recall
        lower = np.unique(probs[:, c][probs[:, c] < t])
        for cut in lower[-20:]:
            p2, r2 = _pr(probs[:, c], labels[:, c], cut)
            assert p2 < 0.9 or r2 <= recall
    # the global 0.7 is wrong both ways: it over-tags concept 0 and misses concept 1
    assert table.loc[0, "threshold"] > 0.7 and table.loc[1, "threshold"] < 0.7
    assert _pr(probs[:, 0], labels[:, 0], 0.7)[0] < 0.9
    assert _pr(probs[:, 1], labels[:, 1], 0.7)[1] == 0


def test_f1_mode_maximises_f1():
    probs, labels = _audit(1)
    table = fit_thresholds(probs, labels, mode="f1")
    for c in range(3):
        best = 0.0
        for cut in np.unique(probs[:, c]):
            p, r = _pr(probs[:, c], labels[:, c], cut)
            best = max(best, 2 * p * r / (p + r) if p + r else 0)
        assert table.loc[c, "f1"] == pytest.approx(best)


def test_too_few_positives_or_unreachable_target_fall_back():
    rng = np.random.default_rng(0)
    probs = rng.random((100, 2))
    labels = np.zeros((100, 2), bool)
    labels[:3, 0] = True  # 3 positives < min_positives
    labels[:, 1] = rng.random(100) < 0.5  # scores carry no signal: 0.99 precision unreachable
    table = fit_thresholds(probs, labels, target_precision=0.99, default=0.65, min_positives=5)
    assert table["fallback"].tolist() == [True, True]
    assert table["threshold"].tolist() == [0.65, 0.65]


def test_floor_bounds_the_threshold_from_below():
    probs, labels = _audit(2)
    table = fit_thresholds(probs, labels, mode="f1", floor=0.5, default=0.7)
    assert (table["threshold"] >= 0.5).all()


@pytest.mark.parametrize("mode", ["precision", "f1"])
def test_a_concept_scored_below_the_floor_everywhere_falls_back(mode):
    """A zero-shot tagger may never score a concept above the stored floor on the audit: no cut, the default."""
    labels = np.zeros((20, 2), dtype=bool)
    labels[:10] = True
    probs = np.where(labels, 0.9, 0.05)
    probs[:, 1] = 0.2  # concept 1: every audit score below the floor
    table = fit_thresholds(probs, labels, mode=mode, floor=0.5, default=0.7, min_positives=3, target_precision=0.8)
    assert table["fallback"].tolist() == [False, True]
    assert table.loc[1, "threshold"] == 0.7 and table.loc[1, "recall"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probs": np.zeros((3, 2)), "labels": np.zeros((3, 1))}, "one shape"),
        ({"probs": np.full((3, 1), 1.5), "labels": np.zeros((3, 1))}, r"\[0, 1\]"),
        ({"probs": np.full((3, 1), np.nan), "labels": np.zeros((3, 1))}, "finite"),
        ({"probs": np.zeros((3, 1)), "labels": np.zeros((3, 1)), "mode": "recall"}, "one of precision, f1"),
        ({"probs": np.zeros((3, 1)), "labels": np.zeros((3, 1)), "target_precision": 0}, r"\(0, 1\]"),
        ({"probs": np.zeros((3, 1)), "labels": np.zeros((3, 1)), "floor": 0.8, "default": 0.7}, "floor"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_thresholds(**kwargs)


def test_precision_at_the_corpus_prevalence_transfers_from_a_uniform_audit():
    """A threshold fitted on a 20%-prevalence audit reaches its precision where the concept is that common, not
    where it is rare; with ``prevalence`` the fit reaches it in a corpus of the given prevalence (label shift)."""
    rng = np.random.default_rng(4)

    def draw(n, prevalence):
        labels = rng.random((n, 1)) < prevalence
        probs = np.where(labels, rng.beta(5, 2, (n, 1)), rng.beta(2, 5, (n, 1)))
        return probs, labels

    audit_probs, audit_labels = draw(20_000, 0.2)
    corpus_probs, corpus_labels = draw(200_000, 0.05)
    plain = fit_thresholds(audit_probs, audit_labels, target_precision=0.8)
    shifted = fit_thresholds(audit_probs, audit_labels, target_precision=0.8, prevalence=np.array([0.05]))
    assert shifted.loc[0, "threshold"] > plain.loc[0, "threshold"]
    assert not shifted.loc[0, "fallback"]
    assert _pr(corpus_probs, corpus_labels, plain.loc[0, "threshold"])[0] < 0.5  # far below the target
    corpus_precision = _pr(corpus_probs, corpus_labels, shifted.loc[0, "threshold"])[0]
    assert corpus_precision == pytest.approx(0.8, abs=0.05)
    assert shifted.loc[0, "precision"] >= 0.8  # the table reports precision at the given prevalence
    # at the audit's own prevalence the adjustment changes nothing
    same = fit_thresholds(audit_probs, audit_labels, target_precision=0.8, prevalence=audit_labels.mean(0))
    assert same.loc[0, "threshold"] == pytest.approx(plain.loc[0, "threshold"], abs=0.02)
    with pytest.raises(ValueError, match="one finite value per concept"):
        fit_thresholds(audit_probs, audit_labels, prevalence=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_thresholds(audit_probs, audit_labels, prevalence=np.array([1.5]))


def test_round_trip_and_alignment(tmp_path):
    probs, labels = _audit()
    table = fit_thresholds(probs, labels, concept_ids=np.array([7, 3, 5]))
    path = write_thresholds(table, tmp_path / "t" / "thresholds.parquet")
    back = read_thresholds(path)
    pd.testing.assert_frame_equal(back, table)
    aligned = thresholds_for(back, np.array([3, 5, 7, 99]), default=0.7)
    assert aligned[-1] == 0.7
    assert aligned[:3].tolist() == [table.loc[1, "threshold"], table.loc[2, "threshold"], table.loc[0, "threshold"]]


def test_reading_a_wrong_table_names_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"concept": [1], "t": [0.5]}).to_parquet(bad)
    with pytest.raises(ValueError, match="bad.parquet: not a threshold table"):
        read_thresholds(bad)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_thresholds(tmp_path / "missing.parquet")


class _RedTagger:
    """Scores concept 'red thing' by the mean red channel, 'blue thing' by the blue one."""

    backend = "fake"
    concepts = ["red thing", "blue thing"]
    image_size = 8

    def transform(self):
        import torchvision.transforms.functional as TF

        return lambda image: TF.to_tensor(image.resize((8, 8)))

    def to(self, device):
        return self

    def scores(self, images):
        return images.mean(dim=(2, 3))[:, [0, 2]]

    def fingerprint(self):
        return {"fake": 1}


def test_audit_scores_reads_labels_and_skips_broken_files(tmp_path):
    from PIL import Image

    from helpers.images.calibration import audit_scores

    paths, labels = [], []
    for i, (colour, names) in enumerate(
        [((255, 0, 0), ["Red Thing"]), ((0, 0, 255), ["blue-thing", "unicorn"]), ((0, 0, 0), [])]
    ):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), colour).save(path)
        paths.append(path)
        labels.append(names)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    paths.append(broken)
    labels.append(["red thing"])
    audit = audit_scores(_RedTagger(), paths, labels, batch_size=2)
    assert audit.labels.tolist() == [[True, False], [False, True], [False, False]]
    assert audit.probs.shape == (3, 2)
    assert audit.probs[0, 0] == pytest.approx(1.0) and audit.probs[1, 1] == pytest.approx(1.0)
    assert len(audit.skipped) == 1 and "broken.jpg" in audit.skipped[0]
    assert audit.unknown_labels == ["unicorn"]
    with pytest.raises(ValueError, match="2 audit images but 1 label lists"):
        audit_scores(_RedTagger(), paths[:2], labels[:1])


def test_an_unreachable_target_can_take_the_most_precise_cut():
    """``unreachable="best"``: the cut of highest precision on >= min_positives true positives, flagged fallback."""
    probs = np.array([[0.95], [0.9], [0.85], [0.8], [0.75], [0.7], [0.65], [0.6], [0.55], [0.5]])
    labels = np.array([[True], [False], [True], [True], [False], [True], [False], [True], [False], [False]])
    kept = fit_thresholds(probs, labels, target_precision=0.99, default=0.7, min_positives=3)
    assert kept["fallback"].tolist() == [True] and kept.loc[0, "threshold"] == 0.7
    best = fit_thresholds(probs, labels, target_precision=0.99, default=0.7, min_positives=3, unreachable="best")
    # cuts with >= 3 true positives: 0.8 (3/4), 0.7 (4/6), 0.6 (5/8): 0.8 is the most precise
    assert best["fallback"].tolist() == [True] and best.loc[0, "threshold"] == 0.8
    assert best.loc[0, "precision"] == pytest.approx(0.75) and best.loc[0, "recall"] == pytest.approx(3 / 5)
    # a reachable target is fitted as before, whatever `unreachable` says
    reach = fit_thresholds(probs, labels, target_precision=0.7, min_positives=3, unreachable="best")
    assert not reach.loc[0, "fallback"] and reach.loc[0, "threshold"] == 0.8
    with pytest.raises(ValueError, match="unreachable must be one of"):
        fit_thresholds(probs, labels, unreachable="never")


def _corpus(rng, n, prevalence, shift):
    """(n, C) scores of a corpus whose concept c is shown in ``prevalence[c]`` of the images; positives score
    ``shift[c]`` higher (a logistic squash of normal noise, so scores lie in (0, 1))."""
    labels = rng.random((n, len(prevalence))) < prevalence[None, :]
    z = rng.normal(size=labels.shape) + labels * shift[None, :]
    return 1 / (1 + np.exp(-(z - 1.0))), labels


def test_pooled_mode_meets_the_pooled_precision_with_more_recall_than_per_concept_targets():
    """Fitted on a 2,000-image corpus sample, the pooled thresholds reach the target precision over all of a
    fresh corpus's pairs (within the audit's noise), and recall more than holding each concept to the target."""
    rng = np.random.default_rng(0)
    prevalence = np.geomspace(0.002, 0.4, 12)  # rare to frequent, as in a corpus
    shift = np.linspace(2.0, 4.0, 12)
    audit_probs, audit_labels = _corpus(rng, 2000, prevalence, shift)
    probs, labels = _corpus(rng, 200_000, prevalence, shift)
    pooled = fit_thresholds(audit_probs, audit_labels, mode="pooled", target_precision=0.8)
    per_concept = fit_thresholds(audit_probs, audit_labels, target_precision=0.8, unreachable="best")
    p_pooled, r_pooled = _pr(probs, labels, pooled["threshold"].to_numpy())
    p_each, r_each = _pr(probs, labels, per_concept["threshold"].to_numpy())
    assert p_pooled == pytest.approx(0.8, abs=0.03)
    assert r_pooled > r_each + 0.02
    info = pooled.attrs["pooled"]
    # the margin of a pooled optimum is less precise than its average
    assert info["cv_precision"] >= 0.8 and 0 < info["local_precision"] < 0.8 and info["folds"] == 5
    # the rarest concepts have too few audit positives to rest on: flagged, but fitted
    few = pooled["n_positives"].to_numpy() < 5
    assert few.any() and (pooled["fallback"].to_numpy() == few).all()


def test_pooled_cuts_maximise_tp_minus_lambda_fp_per_concept():
    """Each concept's cut is the best audit cut for the chosen local precision q (lambda = q / (1 - q))."""
    probs, labels = _audit(seed=3, n=600)
    table = fit_thresholds(probs, labels, mode="pooled", target_precision=0.75)
    q = table.attrs["pooled"]["local_precision"]
    lam = q / (1 - q)

    def value(p: np.ndarray, y: np.ndarray, t: float) -> float:
        return ((p >= t) & y).sum() - lam * ((p >= t) & ~y).sum()

    for c, cut in enumerate(table["threshold"]):
        p, y = probs[:, c], labels[:, c]
        best = max([value(p, y, t) for t in np.unique(p)] + [0.0])
        assert value(p, y, cut) == pytest.approx(best)


def test_pooled_mode_separable_scores_and_a_concept_without_positives():
    labels = np.zeros((40, 2), dtype=bool)
    labels[:20, 0] = True
    probs = np.where(labels, 0.9, 0.6)
    probs[:, 1] = np.linspace(0.5, 0.95, 40)  # concept 1: never shown, scored high anyway
    table = fit_thresholds(probs, labels, mode="pooled", target_precision=0.9, floor=0.5, min_positives=3)
    assert table.loc[0, "threshold"] == pytest.approx(0.9) and table.loc[0, "recall"] == 1.0
    # no positives: cut just above its top audit score (tags nothing the audit saw), flagged
    assert table.loc[1, "threshold"] > 0.95 and bool(table.loc[1, "fallback"])
    assert (probs[:, 1] < table.loc[1, "threshold"]).all()


def test_pooled_mode_at_the_audits_own_prevalence_changes_nothing_and_refuses_bad_settings():
    probs, labels = _audit(seed=5, n=800)
    plain = fit_thresholds(probs, labels, mode="pooled", target_precision=0.8)
    same = fit_thresholds(probs, labels, mode="pooled", target_precision=0.8, prevalence=labels.mean(0))
    assert np.allclose(plain["threshold"], same["threshold"])
    for folds, message in ((1, "folds"), (801, "folds"), (True, "folds")):
        with pytest.raises(ValueError, match=message):
            fit_thresholds(probs, labels, mode="pooled", folds=folds)
    with pytest.raises(ValueError, match="at least 2 audit samples"):
        fit_thresholds(probs[:1], labels[:1], mode="pooled", folds=2)


def test_pooled_mode_with_an_unreachable_target_takes_the_most_precise_local_precision():
    """Weakly informative scores cannot reach 0.95: the most precise cross-validated choice is kept, which is
    far more precise than tagging everything (the prevalence, 0.3)."""
    rng = np.random.default_rng(1)
    probs, labels = _corpus(rng, 1000, np.full(3, 0.3), np.full(3, 1.5))
    table = fit_thresholds(probs, labels, mode="pooled", target_precision=0.95)
    info = table.attrs["pooled"]
    assert 0.5 < info["cv_precision"] < 0.95 and info["local_precision"] > 0.5


@pytest.mark.parametrize("mode", ["precision", "pooled"])
def test_labels_that_are_not_boolean_are_refused_not_read_as_shown(mode):
    """-1, NaN or "no" cast to bool would all read as "shows the concept"."""
    probs = np.random.default_rng(0).random((20, 2))
    for bad in (np.where(probs > 0.5, 1, -1), np.where(probs > 0.5, 1.0, np.nan), np.where(probs > 0.5, "yes", "no")):
        with pytest.raises(ValueError, match="boolean or 0/1"):
            fit_thresholds(probs, bad, mode=mode)
    ok = fit_thresholds(probs, (probs > 0.5).astype(int), mode=mode, min_positives=1)
    assert len(ok) == 2


def test_pooled_mode_settings_are_checked_in_a_helpful_order():
    probs, labels = _audit(seed=2, n=50)
    with pytest.raises(ValueError, match="at least 2 audit samples"):
        fit_thresholds(probs[:1], labels[:1], mode="pooled")  # not "folds must be in 2..2"
    with pytest.raises(ValueError, match="at least one concept"):
        fit_thresholds(probs[:, :0], labels[:, :0], mode="pooled")
    with pytest.raises(ValueError, match="target_precision must be a number"):
        fit_thresholds(probs, labels, mode="pooled", target_precision="0.8")
    with pytest.raises(ValueError, match="seed"):
        fit_thresholds(probs, labels, mode="pooled", seed=-1)
    with pytest.raises(ValueError, match="min_positives"):
        fit_thresholds(probs, labels, mode="pooled", min_positives=0)
    with pytest.raises(ValueError, match="concept_ids repeat"):
        fit_thresholds(probs, labels, mode="pooled", concept_ids=np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="concept_ids must be integers"):
        fit_thresholds(probs, labels, concept_ids=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="1 are not"):
        fit_thresholds(probs, labels, mode="pooled", prevalence=np.array([0.1, np.nan, 0.2]))
    # `default` does not concern pooled mode: a floor above it is no error there
    table = fit_thresholds(probs, labels, mode="pooled", floor=0.8, default=0.7)
    assert (table["threshold"] >= 0.8).all()


def test_pooled_mode_counts_saturated_scores_at_its_highest_cut():
    """Thresholds lie in [0, 1]: a concept whose negatives score exactly 1.0 cannot be switched off; the fit
    counts what its highest cut still tags instead of taking it for "tags nothing"."""
    labels = np.zeros((280, 2), dtype=bool)
    labels[:200, 0] = True
    labels[200:220, 1] = True
    probs = np.where(labels, 0.95, 0.1)
    probs[200:220, 1] = 0.7
    probs[220:, 1] = 1.0  # 60 negatives saturated
    table = fit_thresholds(probs, labels, mode="pooled", target_precision=0.9, folds=4)
    pred = probs >= table["threshold"].to_numpy()[None, :]
    precision = (pred & labels).sum() / pred.sum()
    assert table.attrs["pooled"]["cv_precision"] == pytest.approx(precision, abs=0.05)  # honest, not 1.0
    assert table.loc[1, "precision"] < 0.5
