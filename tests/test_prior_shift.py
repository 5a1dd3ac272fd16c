"""helpers.images.prior_shift: label-shift correction of a trained tagger (Saerens et al. 2002 EM, per concept).

The EM must recover a known corpus prior from calibrated scores, the wrapped tagger must shift exactly as the
formula says, the training prior must come from the checkpoint's record, and the corpus sample must spread over
shards and report undecodable images rather than fail.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.images.prior_shift import (
    PriorShiftedTagger,
    em_priors,
    estimate_prior_shift,
    fit_corpus_prior_shift,
    sample_corpus_images,
    shift_probabilities,
    training_prior,
)
from helpers.images.sources import ImageSource
from helpers.images.tagger_trained import train_tagger
from helpers.params import ConfigError, validate
from helpers.params.images import ImageCorpus, PriorShift


def _calibrated_scores(rng, prior_train, prior_corpus, n):
    """Labels at ``prior_corpus`` and the posterior a classifier calibrated at ``prior_train`` reports.

    Evidence: a Gaussian score, N(+1.5, 1) when shown and N(-1.5, 1) when not; the posterior under prior pi is
    sigmoid(log-likelihood ratio + logit(pi)).
    """
    labels = rng.random((n, len(prior_corpus))) < prior_corpus
    x = rng.normal(np.where(labels, 1.5, -1.5), 1.0)
    llr = 3.0 * x  # log N(x; 1.5, 1) - log N(x; -1.5, 1)
    logit_train = np.log(prior_train) - np.log1p(-prior_train)
    return 1 / (1 + np.exp(-(llr + logit_train))), labels


def test_em_recovers_the_corpus_prior_and_the_shift_restores_calibration():
    rng = np.random.default_rng(0)
    train = np.array([0.05, 0.05, 0.3, 0.5])
    corpus = np.array([0.4, 0.002, 0.3, 0.1])
    probs, labels = _calibrated_scores(rng, train, corpus, 40_000)
    fit = em_priors(probs, train)
    assert fit.converged
    np.testing.assert_allclose(fit.corpus_prior, corpus, atol=0.01)
    shifted = shift_probabilities(probs, fit.offsets)
    # after the shift the mean probability matches the true prevalence, before it did not for shifted concepts
    np.testing.assert_allclose(shifted.mean(0), labels.mean(0), atol=0.01)
    assert abs(probs[:, 0].mean() - labels[:, 0].mean()) > 0.05
    # recall of the under-called frequent concept rises at a fixed threshold, precision stays high
    before, after = probs[:, 0] >= 0.7, shifted[:, 0] >= 0.7
    assert (after & labels[:, 0]).sum() > 1.1 * (before & labels[:, 0]).sum()
    assert (after & labels[:, 0]).sum() / after.sum() > 0.9


def test_em_with_no_shift_leaves_the_prior_and_bad_input_is_refused():
    rng = np.random.default_rng(1)
    train = np.array([0.2, 0.6])
    probs, _ = _calibrated_scores(rng, train, train, 20_000)
    fit = em_priors(probs, train)
    np.testing.assert_allclose(fit.corpus_prior, train, atol=0.015)
    assert np.abs(fit.offsets).max() < 0.1
    with pytest.raises(ValueError, match="no images"):
        em_priors(np.zeros((0, 2)), train)
    with pytest.raises(ValueError, match="probabilities"):
        em_priors(np.full((3, 2), 1.5), train)
    with pytest.raises(ValueError, match="concepts"):
        em_priors(np.zeros((3, 3)), train)


def _tiny_tagger(concepts=("red", "blue")):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(12):
        shown = [c for j, c in enumerate(concepts) if (i >> j) & 1 or i < 2 and j == 0]
        pixels = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(shown)
    return train_tagger(images, labels, list(concepts), image_size=8, epochs=1, widths=[4], progress=False), labels


def test_training_prior_reads_the_record_and_unknown_columns_are_nan():
    tagger, labels = _tiny_tagger()
    expected = [sum("red" in x for x in labels) / 12, sum("blue" in x for x in labels) / 12]
    np.testing.assert_allclose(training_prior(tagger), expected)
    wide = tagger.with_concepts(["blue", "green", "red"], unknown_concepts="zero")
    prior = training_prior(wide)
    assert prior[0] == pytest.approx(expected[1]) and np.isnan(prior[1]) and prior[2] == pytest.approx(expected[0])
    with pytest.raises(ValueError, match="trained"):
        training_prior(object())


def test_shifted_tagger_applies_the_offsets_in_logit_space():
    tagger, _ = _tiny_tagger()
    shifted = PriorShiftedTagger(tagger, [1.0, -2.0])
    batch = torch.rand(5, 3, 8, 8) * 2 - 1
    p = tagger.scores(batch).double().numpy()
    np.testing.assert_allclose(shifted.scores(batch).numpy(), shift_probabilities(p, [1.0, -2.0]), rtol=1e-5)
    assert shifted.fingerprint()["prior_shift"]["offsets"] == [1.0, -2.0]
    assert shifted.fingerprint()["weights_sha256"] == tagger.fingerprint()["weights_sha256"]
    with pytest.raises(ValueError, match="one finite offset per concept"):
        PriorShiftedTagger(tagger, [0.0])
    shifted.channels_last()  # the image search's GPU setting reaches the wrapped network
    conv = next(m for m in tagger.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def _write_shard(path, images, corrupt_keys=()):
    with tarfile.open(path, "w") as tar:
        for key, image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG")
            data = b"not a jpeg" if key in corrupt_keys else buffer.getvalue()
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corpus_sample_spreads_over_shards_and_reports_bad_images(tmp_path):
    colours = [(200, 0, 0), (0, 0, 200)]
    for s in range(2):
        images = [(f"{s}{i:04d}", Image.new("RGB", (8, 8), colours[s])) for i in range(10)]
        _write_shard(tmp_path / f"{s:05d}.tar", images, corrupt_keys={"00001"})
    source = ImageSource(paths=(str(tmp_path / "*.tar"),))
    images, skipped = sample_corpus_images(source, 6)
    assert len(images) == 6 and len(skipped) == 1 and "00001" in skipped[0]
    assert sum(im.getpixel((0, 0))[0] > 100 for im in images) == 3  # three from each shard

    tagger, _ = _tiny_tagger()
    estimate = estimate_prior_shift(tagger, images, batch_size=4)
    assert estimate.corpus_prior.shape == (2,) and np.isfinite(estimate.offsets).all()
    fitted = fit_corpus_prior_shift("image_corpora.c.prior_shift", PriorShift(images=4), lambda: tagger, source)
    assert fitted.n_images == 4 and fitted.table(np.arange(2)).shape == (2, 4)

    (tmp_path / "bad").mkdir()
    _write_shard(tmp_path / "bad" / "00000.tar", [("00000", Image.new("RGB", (8, 8)))], corrupt_keys={"00000"})
    broken = ImageSource(paths=(str(tmp_path / "bad" / "*.tar"),))
    with pytest.raises(ConfigError, match=r"image_corpora\.c\.prior_shift: no corpus image could be read.*00000"):
        fit_corpus_prior_shift("image_corpora.c.prior_shift", PriorShift(), lambda: tagger, broken)


def test_prior_shift_is_only_for_trained_taggers():
    entry = {
        "images": {"format": "wds", "paths": "x/*.tar"},
        "tagger": {"backend": "open_clip", "name": "ViT-B-32", "pretrained": "x"},
        "prior_shift": {"images": 100},
    }
    with pytest.raises(ConfigError, match="prior_shift needs a tagger of the `trained` backend"):
        validate(ImageCorpus, entry, "image_corpora.c")
    entry["tagger"] = {"backend": "trained", "checkpoint": "t.pt"}
    assert validate(ImageCorpus, entry, "image_corpora.c").prior_shift.images == 100
    with pytest.raises(ConfigError, match=r"prior_shift\.images"):
        validate(ImageCorpus, {**entry, "prior_shift": {"images": 0}}, "image_corpora.c")


def test_shard_images_yield_every_image_and_name_the_undecodable_one(tmp_path):
    from helpers.images.sources import iter_shard_images

    images = [(f"{i:05d}", Image.new("RGB", (8, 8), (10 * i, 0, 0))) for i in range(4)]
    _write_shard(tmp_path / "00000.tar", images, corrupt_keys={"00002"})
    rows = list(iter_shard_images(str(tmp_path / "00000.tar"), ("png", "jpg")))
    assert [(pos, key) for pos, key, _, _ in rows] == [(i, f"{i:05d}") for i in range(4)]
    assert [image is None for _, _, image, _ in rows] == [False, False, True, False]
    assert rows[2][3] and not rows[0][3]
