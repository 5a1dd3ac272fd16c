"""The trained tagger's losses and augmentations (helpers.images.tagger_data), on hand-checkable inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers.images.corpora import train_sample_tagger
from helpers.images.tagger_data import LabelledImages, dihedral, jpeg_roundtrip, multilabel_loss
from helpers.images.tagger_trained import train_tagger
from helpers.shards import ConfigError


def _labelled_set(tmp_path, images, labels, checkpoint: str) -> dict:
    """Write ``images`` as PNGs with a labels.csv under ``tmp_path``: a ``taggers.<name>`` entry training on them."""
    (tmp_path / "images").mkdir()
    for i, im in enumerate(images):
        im.save(tmp_path / "images" / f"{i}.png")
    rows = ["image,concepts", *(f"images/{i}.png,{'|'.join(lab)}" for i, lab in enumerate(labels))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return {
        "labels": str(tmp_path / "labels.csv"),
        "checkpoint": str(tmp_path / checkpoint),
        "image_size": 16,
        "epochs": 1,
    }


def test_losses_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert multilabel_loss(logits, target, "bce") == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, target))
    )
    p = torch.sigmoid(logits)
    # ASL (Ridnik et al. 2021): positives log p; negatives p_m^4 log(1 - p_m), p_m = max(p - 0.05, 0)
    pm = (p - 0.05).clamp(min=0)
    by_hand = (
        -(
            math.log(p[0, 0])
            + pm[0, 1] ** 4 * math.log(1 - pm[0, 1])
            + pm[1, 0] ** 4 * math.log(1 - pm[1, 0])
            + math.log(p[1, 1])
        )
        / 4
    )
    assert float(multilabel_loss(logits, target, "asl")) == pytest.approx(float(by_hand), rel=1e-5)
    focal = (
        -(
            (1 - p[0, 0]) ** 2 * math.log(p[0, 0])
            + p[0, 1] ** 2 * math.log(1 - p[0, 1])
            + p[1, 0] ** 2 * math.log(1 - p[1, 0])
            + (1 - p[1, 1]) ** 2 * math.log(p[1, 1])
        )
        / 4
    )
    assert float(multilabel_loss(logits, target, "focal")) == pytest.approx(float(focal), rel=1e-5)
    # an easy negative costs ASL (almost) nothing, while BCE still pays for it
    easy = torch.tensor([[-4.0]])
    assert (
        float(multilabel_loss(easy, torch.zeros(1, 1), "asl")) < 1e-6 < float(multilabel_loss(easy, torch.zeros(1, 1)))
    )
    with pytest.raises(ValueError, match="loss must be one of"):
        multilabel_loss(logits, target, "hinge")


def test_dihedral_gives_each_image_one_of_the_eight_symmetries():
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).repeat(50, 1, 1, 1)
    out = dihedral(batch.clone(), torch.Generator().manual_seed(0))
    seen = set()
    for original, moved in zip(batch, out):
        variants = [torch.rot90(x, k, dims=(-2, -1)) for x in (original, original.flip(-1)) for k in range(4)]
        matches = [i for i, v in enumerate(variants) if torch.equal(v, moved)]
        assert matches, "not a flip/rotation of its own image"
        seen.add(matches[0])
    assert len(seen) == 8


def test_jpeg_roundtrip_changes_pixels_not_size_and_dataset_applies_it_by_probability():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = jpeg_roundtrip(image, 60)
    assert out.size == image.size and out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).mean() > 5
    to_tensor = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32))  # noqa: E731
    targets = torch.zeros(1, 2)
    never = LabelledImages([image], targets, to_tensor, jpeg_quality=(60, 95), jpeg_p=0.0)
    always = LabelledImages([image], targets, to_tensor, jpeg_quality=(60, 95), jpeg_p=1.0)
    assert torch.equal(never[0][0], to_tensor(image))
    assert not torch.equal(always[0][0], to_tensor(image))


def test_training_options_are_checked(tmp_path):
    images = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(4)]
    labels = [["a"], ["b"], ["a", "b"], []]
    with pytest.raises(ValueError, match="loss must be one of"):
        train_tagger(images, labels, ["a", "b"], image_size=16, epochs=1, loss="mse", progress=False)
    with pytest.raises(ValueError, match="jpeg_quality"):
        train_tagger(images, labels, ["a", "b"], image_size=16, epochs=1, jpeg_quality=(90, 50), progress=False)
    tagger = train_tagger(images, labels, ["a", "b"], image_size=16, epochs=1, loss="asl", progress=False)
    assert tagger.training["loss"] == "asl" and tagger.training["jpeg_quality"] == [60, 95]
    base = _labelled_set(tmp_path, images, labels, "t.pt")
    with pytest.raises(ConfigError, match=r"taggers\.x\.loss: 'mse' is not one of bce, asl, focal"):
        train_sample_tagger({**base, "loss": "mse"}, name="x", progress=False)
    with pytest.raises(ConfigError, match=r"taggers\.x\.jpeg_quality\[0\]: input should be greater than or equal to 1"):
        train_sample_tagger({**base, "jpeg_quality": [0, 50]}, name="x", progress=False)
    tagger = train_sample_tagger({**base, "augment": False, "jpeg_quality": None}, name="x", progress=False)
    assert tagger.training["augment"] is False and (tmp_path / "t.pt").is_file()


@pytest.mark.parametrize(("pools", "global_pool", "side"), [(None, "avg", 1), (1, "max", 4), (0, "avgmax", 8)])
def test_tagger_cnn_pools_and_global_pool(pools, global_pool, side):
    from helpers.images.tagger_trained import TaggerCNN

    model = TaggerCNN(5, (4, 4, 4), pools=pools, global_pool=global_pool).eval()
    images = torch.randn(2, 3, 8, 8)
    assert model.features(images).shape == (2, 4, side, side)  # 8 px halved by each pooled block
    pooled = [i for i, layer in enumerate(model.features) if isinstance(layer, torch.nn.MaxPool2d)]
    assert len(pooled) == (3 if pools is None else pools)
    assert all(i > len(model.features) - 1 - 4 * len(pooled) for i in pooled)  # the last blocks pool
    assert model(images).shape == (2, 5)
    assert model.head.in_features == (8 if global_pool == "avgmax" else 4)
    features = model.features(images)
    expected = {"avg": features.mean(dim=(2, 3)), "max": features.amax(dim=(2, 3))}
    expected["avgmax"] = torch.cat([expected["avg"], expected["max"]], dim=1)
    assert torch.allclose(model(images), model.head(expected[global_pool]))
    with pytest.raises(ValueError, match="pools must be between 0 and 3"):
        TaggerCNN(5, (4, 4, 4), pools=4)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        TaggerCNN(5, (4, 4, 4), global_pool="sum")


def test_pools_and_global_pool_are_saved_loaded_and_checked(tmp_path):
    import json

    from helpers.images.tagger_trained import load_trained_tagger, sidecar_path

    images = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(4)]
    labels = [["a"], ["b"], ["a", "b"], []]
    tagger = train_tagger(
        images, labels, ["a", "b"], image_size=16, epochs=1, widths=(4, 4), pools=1, global_pool="max", progress=False
    )
    tagger.save(tmp_path / "t.pt")
    loaded = load_trained_tagger(tmp_path / "t.pt")
    assert (loaded.model.pools, loaded.model.global_pool) == (1, "max")
    assert loaded.arch()["pools"] == 1 and loaded.fingerprint() == tagger.fingerprint()
    batch = torch.stack([tagger.transform()(im) for im in images])
    assert torch.equal(loaded.scores(batch), tagger.scores(batch))
    # a sidecar written before the two keys existed: every block pooled, mean pooled
    old = train_tagger(images, labels, ["a", "b"], image_size=16, epochs=1, widths=(4, 4), progress=False)
    old.save(tmp_path / "old.pt")
    meta = json.loads(sidecar_path(tmp_path / "old.pt").read_text())
    for key in ("pools", "global_pool"):
        del meta["arch"][key]
    sidecar_path(tmp_path / "old.pt").write_text(json.dumps(meta))
    legacy = load_trained_tagger(tmp_path / "old.pt").model
    assert (legacy.pools, legacy.global_pool) == (2, "avg")
    with pytest.raises(ValueError, match=r"image_size >= 2\*\*pools"):
        train_tagger(images, labels, ["a", "b"], image_size=2, epochs=1, widths=(4, 4), pools=2, progress=False)
    base = _labelled_set(tmp_path, images, labels, "s.pt")
    with pytest.raises(ConfigError, match=r"taggers\.x.*pools must be <= 4"):
        train_sample_tagger({**base, "pools": 5}, name="x", progress=False)
    with pytest.raises(ConfigError, match=r"taggers\.x.*pools must be <= 2"):
        train_sample_tagger({**base, "widths": [4, 4], "pools": 3}, name="x", progress=False)
    with pytest.raises(ConfigError, match=r"taggers\.x\.global_pool"):
        train_sample_tagger({**base, "global_pool": "sum"}, name="x", progress=False)
    trained = train_sample_tagger({**base, "pools": 3, "global_pool": "avgmax"}, name="x", progress=False)
    assert (trained.model.pools, trained.model.global_pool) == (3, "avgmax")


def test_dataset_transforms_once_without_the_jpeg_round_trip():
    """With no random JPEG re-encoding every epoch sees the same tensors: they are computed once and reused."""
    from helpers.images.tagger_trained import make_transform

    images = [Image.new("RGB", (20, 20), (i * 40, 10, 200 - i * 30)) for i in range(3)]
    targets = torch.eye(3)
    transform = make_transform(16)
    cached = LabelledImages(images, targets, transform)
    assert cached._cached is not None
    for i, image in enumerate(images):
        tensor, target = cached[i]
        assert torch.equal(tensor, transform(image)) and torch.equal(target, targets[i])
        assert cached[i][0] is tensor  # the same tensor object: not re-transformed
    assert LabelledImages(images, targets, transform, jpeg_quality=(60, 90), jpeg_p=0.5)._cached is None


def test_bf16_training_is_recorded_checked_and_saves_plain_float32_weights(tmp_path):
    """precision bf16 trains under autocast; the weights stay float32 in the usual memory layout; typos are named."""
    from helpers.images.tagger_trained import load_trained_tagger

    images = [Image.new("RGB", (16, 16), (i * 50, 255 - i * 50, 0)) for i in range(4)]
    labels = [["a"], ["b"], ["a", "b"], []]
    with pytest.raises(ValueError, match="precision must be one of"):
        train_tagger(images, labels, ["a", "b"], image_size=16, epochs=1, precision="fp16", progress=False)
    tagger = train_tagger(
        images, labels, ["a", "b"], image_size=16, epochs=2, widths=(4, 8), precision="bf16", progress=False
    )
    assert tagger.training["precision"] == "bf16"
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in tagger.model.parameters())
    tagger.save(tmp_path / "t.pt")
    batch = torch.stack([tagger.transform()(im) for im in images])
    assert torch.equal(load_trained_tagger(tmp_path / "t.pt").scores(batch), tagger.scores(batch))
    base = _labelled_set(tmp_path, images, labels, "s.pt")
    with pytest.raises(ConfigError, match=r"taggers\.x\.precision"):
        train_sample_tagger({**base, "precision": "half"}, name="x", progress=False)
    assert train_sample_tagger({**base, "precision": "bf16"}, name="x", progress=False).training["precision"] == "bf16"
