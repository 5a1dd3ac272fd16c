"""Tests of helpers.evaluation: model and dataset loading, the embedding cache, metrics with known answers,
and the release JSON round trip through helpers.release.tidy.

Nothing is downloaded: the real-model tests use a tiny open_clip ViT built from a custom config, saved as
a state dict and loaded back through ``load_model`` by checkpoint path. Known-answer tests use a fake
model whose image embedding is, by construction, the text embedding of a chosen class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import tarfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from helpers.evaluation import (
    datasets,
    embeddings,
    metrics,
    models,
    pair,
    specs,
    writers,
)
from helpers.release import tidy
from helpers.shards import ConfigError

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "evaltest-tiny-vit"
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A custom open_clip config (registered under its stem) and a checkpoint of random weights."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_model")
    config = folder / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    checkpoint = folder / "tiny-weights.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"config": config, "checkpoint": checkpoint, "state_dict": model.state_dict()}


@pytest.fixture(scope="module")
def tiny(tiny_files: dict) -> models.LoadedModel:
    return models.load_model({"model_config": str(tiny_files["config"]), "pretrained": str(tiny_files["checkpoint"])})


def _png(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def image_folder(tmp_path):
    """root/{cat,dog,red_panda}/ with 2 small images each."""
    root = tmp_path / "imgs"
    for c, folder in enumerate(["cat", "dog", "red_panda"]):
        (root / folder).mkdir(parents=True)
        for i in range(2):
            (root / folder / f"{i}.png").write_bytes(_png(COLOURS[2 * c + i]))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def _write_tar(path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, files in enumerate(samples):
            for ext, data in files.items():
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class FakeClip(torch.nn.Module):
    """encode_image: one-hot of the class index stored in pixel [0, 0, 0]; encode_text: one-hot of the token.

    So an image planted with class ``c`` embeds exactly to the text embedding of class ``c``.
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n = n_classes
        self.image_calls = 0
        self.text_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return F.one_hot(x[:, 0, 0, 0].long(), self.n).float() * 3.0  # unnormalised on purpose

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        self.text_calls += 1
        return F.one_hot(ids, self.n).float()


def fake_tokenizer(class_names):
    """Token = index of the class named in the prompt (longest name first)."""
    order = sorted(range(len(class_names)), key=lambda i: -len(class_names[i]))

    def tokenize(prompts):
        return torch.tensor([next(i for i in order if class_names[i] in p) for p in prompts])

    return tokenize


class PlantedImages(Dataset):
    """Image i is a tensor whose pixel [0, 0, 0] holds the class it should embed as."""

    def __init__(self, embed_as):
        self.embed_as = list(embed_as)

    def __len__(self):
        return len(self.embed_as)

    def __getitem__(self, i):
        return i, torch.full((3, 2, 2), float(self.embed_as[i]))


CLASSES = ["cat", "dog", "red panda"]
# true labels and what each image embeds as: cats all right, one dog of four confused with cat, pandas all dog
LABELS = [0, 0, 1, 1, 1, 1, 2, 2]
EMBED_AS = [0, 0, 1, 0, 1, 1, 1, 1]


def planted(tag: str = "v1") -> tuple[models.LoadedModel, datasets.EvalDataset]:
    model = models.LoadedModel(FakeClip(len(CLASSES)), None, fake_tokenizer(CLASSES), "backboneFake_pretrainedtoy")
    data = datasets.EvalDataset(
        "toy", PlantedImages(EMBED_AS), len(LABELS), "zero_shot", np.array(LABELS), list(CLASSES),
        fingerprint={"toy": tag, "labels": LABELS},
    )  # fmt: skip
    return model, data


# ------------------------------------------------------------------------------------------ models


def test_load_model_from_checkpoint(tiny: models.LoadedModel, tiny_files: dict) -> None:
    assert tiny.key == f"backbone{TINY_NAME}_pretrainedtiny-weights"
    assert tiny.precision == "fp32" and tiny.device == "cpu"
    loaded = tiny.model.state_dict()
    for name, value in tiny_files["state_dict"].items():
        assert torch.equal(loaded[name], value), name
    assert tiny.fingerprint["checkpoint_sha256"] and tiny.fingerprint["model_config_sha256"]
    x = tiny.preprocess(Image.new("RGB", (50, 40), (10, 20, 30))).unsqueeze(0)
    assert x.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert tiny.model.encode_image(x).shape == (1, 32)
        assert tiny.model.encode_text(tiny.tokenizer(["a photo of a cat."])).shape == (1, 32)


def test_load_model_explicit_key_and_cpu_half_precision(tiny_files: dict) -> None:
    spec = {"model_config": str(tiny_files["config"]), "pretrained": str(tiny_files["checkpoint"]), "key": "mine"}
    with pytest.warns(UserWarning, match="fp32"):
        model = models.load_model(spec, precision="fp16")
    assert model.key == "mine" and model.precision == "fp32"
    assert isinstance(model.autocast(), contextlib.nullcontext)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"key": "m", "name": "ViT-B-16"}, "evaluation.models.m.pretrained"),
        ({"key": "m", "name": "ViT-B-16", "pretrained": "/no/such/weights.pt"}, "evaluation.models.m.pretrained"),
        ({"key": "m", "name": "ViT-B-16", "pretrained": "not_a_tag"}, "evaluation.models.m.pretrained"),
        ({"key": "m", "name": "No-Such-Model", "pretrained": "x"}, "evaluation.models.m.name"),
        ({"key": "m", "name": "ViT-B-16", "pretrained": "openai", "colour": 1}, "evaluation.models.m.colour"),
        ({"key": "m", "model_config": "/no/such/config.json", "pretrained": "x"}, "evaluation.models.m.model_config"),
        # without a key (a library call outside the stage), errors name the entry by its model name
        ({"name": "ViT-B-16", "pretrained": "openai", "quick_gelu": "yes"}, "evaluation.models.ViT-B-16.quick_gelu"),
    ],
)
def test_model_config_errors_name_the_key(spec: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field.replace('.', '[.]')}:"):
        models.load_model(spec)


def test_model_config_errors_for_custom_config(tiny_files: dict, tmp_path) -> None:
    ckpt = str(tiny_files["checkpoint"])
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.k\.name: .*differs"):
        models.load_model({"key": "k", "name": "other", "model_config": str(tiny_files["config"]), "pretrained": ckpt})
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.k\.model_config: not valid JSON"):
        models.load_model({"key": "k", "model_config": str(bad), "pretrained": ckpt})
    with pytest.raises(ConfigError, match=r"^evaluation\.settings\.precision: .int8. is not one of"):
        models.load_model({"key": "k", "model_config": str(tiny_files["config"]), "pretrained": ckpt}, precision="int8")


def test_load_model_local_dir(tiny_files: dict, tmp_path) -> None:
    """``local-dir:`` brings config and weights (offline); a folder without weights is refused, not random."""
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}))
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.mine\.name: .*holds no weights"):
        models.load_model({"key": "mine", "name": f"local-dir:{folder}"})
    torch.save(tiny_files["state_dict"], folder / "open_clip_pytorch_model.bin")
    model = models.load_model({"key": "mine", "name": f"local-dir:{folder}"})
    for name, value in tiny_files["state_dict"].items():
        assert torch.equal(model.model.state_dict()[name], value), name
    size = (folder / "open_clip_pytorch_model.bin").stat().st_size
    assert model.fingerprint["weight_files"] == [["open_clip_pytorch_model.bin", size]]
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.mine\.pretrained: not used"):
        models.load_model({"key": "mine", "name": f"local-dir:{folder}", "pretrained": "x.pt"})
    with pytest.raises(ConfigError, match=r"\.key: missing"):
        models.load_model({"name": f"local-dir:{folder}"})


def test_known_tag_offline_is_a_config_error() -> None:
    """A tag must be downloaded; offline that fails fast, naming the key (weights are never fetched here)."""
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.backboneViT-B-16_pretrainedlaion400m\.pretrained:"):
        models.load_model(
            {"key": "backboneViT-B-16_pretrainedlaion400m", "name": "ViT-B-16", "pretrained": "laion400m_e32"}
        )


def test_model_specs_fill_keys() -> None:
    specs = models.model_specs({"models": {"backboneA_pretrainedb": {"name": "A", "pretrained": "b"}}})
    assert specs == {"backboneA_pretrainedb": {"name": "A", "pretrained": "b", "key": "backboneA_pretrainedb"}}
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.x\.key"):
        models.model_specs({"models": {"x": {"key": "y"}}})
    with pytest.raises(ConfigError, match=r"^evaluation\.models:"):
        models.model_specs({})


# ---------------------------------------------------------------------------------------- datasets


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255.0


def test_imagefolder_loader(image_folder) -> None:
    ds = datasets.load_dataset({"format": "imagefolder", "root": str(image_folder)}, _to_tensor, name="toyfolder")
    assert ds.name == "toyfolder" and ds.task == "zero_shot" and len(ds) == 6
    assert ds.class_names == ["cat", "dog", "red panda"]  # underscores read as spaces
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    i, x = ds.images[5]
    assert i == 5 and x.shape == (3, 8, 8)
    assert torch.allclose(x[:, 0, 0], torch.tensor(COLOURS[5], dtype=torch.float32) / 255.0)

    named = datasets.load_dataset(
        {
            "format": "imagefolder",
            "root": str(image_folder),
            "class_names": {"cat": "tabby", "dog": "pug", "red_panda": "panda"},
        },
        _to_tensor,
        name="toyfolder",
    )
    assert named.class_names == ["tabby", "pug", "panda"]
    assert named.fingerprint != ds.fingerprint  # class names are part of what is cached against


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"class_names": ["a", "a", "b"]}, "class_names"),
        ({"class_names_file": "/no/such/file.txt"}, "class_names_file"),
        ({"templates": ["no placeholder"]}, "templates"),
        ({"task": "retrieval"}, "task"),
        ({"label_key": "cls"}, "label_key"),
    ],
)
def test_imagefolder_config_errors(image_folder, extra: dict, field: str) -> None:
    spec = {"format": "imagefolder", "root": str(image_folder), **extra}
    with pytest.raises(ConfigError, match=rf"^evaluation\.datasets\.toy\.{field}:"):
        datasets.load_dataset(spec, _to_tensor, name="toy")


def test_dataset_format_and_root_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.x\.format:"):
        datasets.load_dataset({"format": "zip"}, _to_tensor, name="x")
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.x\.root: folder"):
        datasets.load_dataset({"format": "imagefolder", "root": str(tmp_path / "nope")}, _to_tensor, name="x")


def test_torchvision_missing_data_is_a_config_error(tmp_path) -> None:
    spec = {"format": "torchvision", "name": "CIFAR10", "root": str(tmp_path), "split": "test"}
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.cifar10\.root: CIFAR10 \(test\) is not in"):
        datasets.load_dataset(spec, _to_tensor, name="cifar10")
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.cifar10\.name:"):
        datasets.load_dataset({**spec, "name": "NoSuchSet"}, _to_tensor, name="cifar10")


def test_templates_accept_clip_placeholder(image_folder) -> None:
    spec = {"format": "imagefolder", "root": str(image_folder), "templates": ["a photo of a {}.", "art of the {c}"]}
    ds = datasets.load_dataset(spec, _to_tensor, name="toy")
    assert ds.templates == ("a photo of a {c}.", "art of the {c}")
    assert datasets.class_prompts("dog", ds.templates) == ["a photo of a dog.", "art of the dog"]


def test_wds_zero_shot_loader(tmp_path) -> None:
    shard_dir = tmp_path / "pets"
    shard_dir.mkdir()
    _write_tar(shard_dir / "test-000.tar", [
        {"png": _png(COLOURS[0]), "cls": b"0"},
        {"png": _png(COLOURS[1]), "cls": b"dog"},  # a class name works too
        {"cls": b"1"},  # no image: left out
    ])  # fmt: skip
    _write_tar(shard_dir / "test-001.tar", [{"jpg": _png(COLOURS[2]), "cls": b"1"}, {"png": _png(COLOURS[3])}])
    spec = {"format": "wds", "paths": str(shard_dir / "test-{000..001}.tar"), "class_names": ["cat", "dog"]}
    with pytest.warns(UserWarning, match="left out"):
        ds = datasets.load_dataset(spec, _to_tensor, name="pets")
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 1]
    assert ds.stats == {"samples": 5, "no_image": 1, "no_annotation": 1, "kept": 3}
    got = dict(ds.images)  # (index, tensor) pairs, in any order
    assert sorted(got) == [0, 1, 2]
    assert torch.allclose(got[2][:, 0, 0], torch.tensor(COLOURS[2], dtype=torch.float32) / 255.0)

    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.pets\.class_names: missing"):
        datasets.load_dataset({"format": "wds", "paths": spec["paths"]}, _to_tensor, name="pets")
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.pets\.paths:"):
        datasets.load_dataset({**spec, "paths": str(tmp_path / "none-*.tar")}, _to_tensor, name="pets")


def _retrieval_shard(path) -> None:
    _write_tar(path, [
        {"png": _png(COLOURS[0]), "txt": b"A dog on the grass.\nTwo dogs playing.\n"},
        {"png": _png(COLOURS[1]), "txt": b"A cat asleep.\n\nA kitten on a sofa."},
        {"png": _png(COLOURS[2]), "txt": b"A red panda and a dog."},
        {"png": _png(COLOURS[3]), "txt": b"   "},  # no caption: left out
    ])  # fmt: skip


def test_wds_retrieval_loader(tmp_path) -> None:
    _retrieval_shard(tmp_path / "coco.tar")
    spec = {"format": "wds", "paths": str(tmp_path / "coco.tar"), "task": "retrieval", "concepts": ["dog", "cat"]}
    with pytest.warns(UserWarning, match="left out"):
        ds = datasets.load_dataset(spec, _to_tensor, name="coco")
    assert ds.task == "retrieval" and ds.labels is None and len(ds) == 3
    assert ds.captions == [["A dog on the grass.", "Two dogs playing."], ["A cat asleep.", "A kitten on a sofa."],
                           ["A red panda and a dog."]]  # fmt: skip
    assert ds.concepts == ["dog", "cat"]
    with pytest.warns(UserWarning, match="left out"):
        first = datasets.load_dataset({**spec, "max_captions": 1}, _to_tensor, name="coco")
    assert first.captions == [["A dog on the grass."], ["A cat asleep."], ["A red panda and a dog."]]
    assert first.fingerprint["captions"] != ds.fingerprint["captions"]
    assert first.image_fingerprint() == ds.image_fingerprint()  # same images: the image cache is shared
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.coco\.class_names: only used with task: zero_shot"):
        datasets.load_dataset({**spec, "class_names": ["a"]}, _to_tensor, name="coco")


# ---------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_known_answer() -> None:
    model, data = planted()
    df = metrics.zero_shot_eval(model, data, ["class", "simple", "ensemble"], progress=False)
    assert list(df.columns) == ["model", "dataset", "task", "prompt", "concept", "metric", "value", "n"]
    writers.EVALUATIONS.validate(df)
    for prompt in ("class", "simple", "ensemble"):
        got = df[df["prompt"] == prompt].set_index("concept")
        assert got.loc["cat", "value"] == 100.0 and got.loc["cat", "n"] == 2
        assert got.loc["dog", "value"] == 75.0 and got.loc["dog", "n"] == 4
        assert got.loc["red panda", "value"] == 0.0 and got.loc["red panda", "n"] == 2
        assert got.loc[specs.OVERALL, "value"] == 62.5 and got.loc[specs.OVERALL, "n"] == 8
    assert set(df["task"]) == {"zero_shot"} and set(df["metric"]) == {"top1"}
    assert set(df["model"]) == {"backboneFake_pretrainedtoy"} and set(df["dataset"]) == {"toy"}


def test_zero_shot_scores_classifier_and_prompts() -> None:
    """The classifier is the renormalised mean of normalised prompt embeddings; a planted confusion shows."""
    model, _ = planted()
    clf = embeddings.class_embeddings(model, CLASSES, "ensemble", templates=["a {c}", "the {c}!"], progress=False)
    assert np.allclose(clf, np.eye(3))
    images = np.eye(3, dtype=np.float32)[[0, 2, 2]]
    per_class, overall = metrics.zero_shot_scores(images, np.array([0, 2, 1]), clf, CLASSES)
    assert per_class.set_index("concept")["value"].to_dict() == {"cat": 100.0, "dog": 0.0, "red panda": 100.0}
    assert overall == pytest.approx(200 / 3)
    templates = datasets.openai_imagenet_templates()
    assert len(templates) == 80 and all("{c}" in t for t in templates)
    assert datasets.prompt_templates("simple") == ("A photo of a {c}.",) and datasets.prompt_templates("class") == (
        "{c}",
    )


def test_embedding_cache_hit_and_invalidation(tmp_path) -> None:
    model, data = planted()
    first = metrics.zero_shot_eval(model, data, "class", cache_dir=tmp_path, batch_size=3, progress=False)
    assert model.model.image_calls == 3  # 8 images in batches of 3
    text_calls = model.model.text_calls
    again = metrics.zero_shot_eval(model, data, ["class", "simple", "ensemble"], cache_dir=tmp_path, progress=False)
    assert model.model.image_calls == 3  # images never recomputed
    assert model.model.text_calls > text_calls  # simple and ensemble were new
    pd.testing.assert_frame_equal(first, again[again["prompt"] == "class"].reset_index(drop=True))
    calls = model.model.text_calls
    metrics.zero_shot_eval(model, data, ["class", "simple", "ensemble"], cache_dir=tmp_path, progress=False)
    assert (model.model.image_calls, model.model.text_calls) == (3, calls)  # everything from the cache

    npy = tmp_path / model.key / "images" / "toy.npy"
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["model_key"] == model.key and meta["dataset"] == "toy" and (meta["n"], meta["dim"]) == (8, 3)
    assert meta["dataset_fingerprint"] and np.load(npy, allow_pickle=False).shape == (8, 3)
    assert (tmp_path / model.key / "text" / "toy.ensemble.json").is_file()

    _, changed = planted(tag="v2")  # other data under the same name: recomputed, not reused
    embeddings.image_embeddings(model, changed, cache_dir=tmp_path, progress=False)  # one batch of 64
    assert model.model.image_calls == 4
    embeddings.image_embeddings(model, changed, cache_dir=tmp_path, progress=False)
    assert model.model.image_calls == 4  # the new data is cached in turn
    embeddings.image_embeddings(model, changed, cache_dir=tmp_path, progress=False, refresh=True)
    assert model.model.image_calls == 5
    relabelled = dataclasses.replace(changed, fingerprint={**changed.fingerprint, "labels": [0] * 8})
    embeddings.image_embeddings(model, relabelled, cache_dir=tmp_path, progress=False)
    assert model.model.image_calls == 5  # annotations do not change image embeddings
    embeddings.class_embeddings(model, CLASSES, "ensemble", templates=["x {c}"], dataset_name="toy", cache_dir=tmp_path,
                        progress=False)  # fmt: skip
    assert model.model.text_calls > calls  # other templates: other prompts digest


def test_tiny_model_end_to_end_imagefolder(tiny: models.LoadedModel, tiny_files: dict, image_folder, tmp_path) -> None:
    ds = datasets.load_dataset({"format": "imagefolder", "root": str(image_folder)}, tiny.preprocess, name="toyfolder")
    df = metrics.zero_shot_eval(tiny, ds, cache_dir=tmp_path, batch_size=4, progress=False)
    writers.EVALUATIONS.validate(df)
    assert sorted(set(df["prompt"])) == ["class", "ensemble", "simple"]
    assert len(df) == 3 * 4 and df["value"].between(0, 100).all()
    emb = np.load(tmp_path / tiny.key / "images" / "toyfolder.npy", allow_pickle=False)
    assert emb.shape == (6, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    direct = F.normalize(tiny.model.encode_image(ds.images[4][1].unsqueeze(0)).float(), dim=-1).detach().numpy()
    assert np.allclose(emb[4], direct[0], atol=1e-5)

    # a fresh load of the same weights (as in a new process) has the same identity: the cache is hit
    again = models.load_model({"model_config": str(tiny_files["config"]), "pretrained": str(tiny_files["checkpoint"])})
    assert again.identity() == tiny.identity()
    again.model.encode_image = lambda x: pytest.fail("image embeddings recomputed despite the cache")
    np.testing.assert_array_equal(embeddings.image_embeddings(again, ds, cache_dir=tmp_path, progress=False), emb)


def test_wds_images_with_loader_workers_match_serial(tiny: models.LoadedModel, tmp_path) -> None:
    """Worker w streams shards w, w+W, ...; indices put every embedding back in dataset order."""
    for s in range(2):
        samples = [{"png": _png(COLOURS[3 * s + i]), "cls": str(i % 2).encode()} for i in range(3)]
        _write_tar(tmp_path / f"part-{s}.tar", samples)
    spec = {"format": "wds", "paths": str(tmp_path / "part-*.tar"), "class_names": ["a", "b"]}
    ds = datasets.load_dataset(spec, tiny.preprocess, name="parts")
    serial = embeddings.image_embeddings(tiny, ds, batch_size=2, progress=False)
    parallel = embeddings.image_embeddings(tiny, ds, batch_size=2, num_workers=2, progress=False)
    np.testing.assert_allclose(parallel, serial, atol=1e-6)
    assert not np.allclose(serial[0], serial[3])  # distinct images, so the order is really checked


# ---------------------------------------------------------------------------------------- retrieval

# 3 images, 5 captions; captions 0,1 belong to image 0, captions 2,3 to image 1, caption 4 to image 2
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2])
SIM = np.array(
    [
        [0.9, 0.1, 0.8, 0.2, 0.3],  # image 0: its best caption (0.9) is first -> rank 0
        [0.7, 0.6, 0.5, 0.1, 0.2],  # image 1: best own 0.5, beaten by 0.7 and 0.6 -> rank 2
        [0.4, 0.4, 0.3, 0.3, 0.4],  # image 2: own 0.4 tied with two wrong captions -> rank 2 (ties count against)
    ]
)


def test_similarity_ranks_known() -> None:
    i2t = metrics.similarity_ranks(SIM, CAPTION_IMAGE[None, :] == np.arange(3)[:, None])
    t2i = metrics.similarity_ranks(SIM.T, np.arange(3)[None, :] == CAPTION_IMAGE[:, None])
    assert i2t.tolist() == [0, 2, 2]
    assert t2i.tolist() == [0, 2, 1, 2, 0]
    assert metrics.similarity_ranks(np.ones((1, 3)), np.zeros((1, 3), bool)).tolist() == [3]  # no correct item


def test_recall_table_known_overall_and_per_concept() -> None:
    i2t, t2i = np.array([0, 2, 2]), np.array([0, 2, 1, 2, 0])
    caption_concepts = [["dog"], [], ["dog", "cat"], ["cat"], []]
    table = metrics.recall_table(i2t, t2i, CAPTION_IMAGE, caption_concepts, ["dog", "cat", "bird"], ks=(1, 2, 3))
    got = {(r.concept, r.metric): (r.value, r.n) for r in table.itertuples()}
    assert got[(specs.OVERALL, "i2t_k=1")] == (pytest.approx(1 / 3), 3)
    assert got[(specs.OVERALL, "i2t_k=2")] == (pytest.approx(1 / 3), 3)
    assert got[(specs.OVERALL, "i2t_k=3")] == (1.0, 3)
    assert got[(specs.OVERALL, "t2i_k=1")] == (pytest.approx(2 / 5), 5)
    assert got[(specs.OVERALL, "t2i_k=2")] == (pytest.approx(3 / 5), 5)
    # dog: captions 0 and 2 -> images 0 and 1
    assert got[("dog", "i2t_k=1")] == (0.5, 2) and got[("dog", "i2t_k=3")] == (1.0, 2)
    assert got[("dog", "t2i_k=1")] == (0.5, 2) and got[("dog", "t2i_k=2")] == (1.0, 2)
    # cat: captions 2 and 3 -> image 1 only
    assert got[("cat", "i2t_k=1")] == (0.0, 1) and got[("cat", "i2t_k=3")] == (1.0, 1)
    assert got[("cat", "t2i_k=2")] == (0.5, 2) and got[("cat", "t2i_k=3")] == (1.0, 2)
    assert not any(c == "bird" for c, _ in got)  # no query: left out


def test_retrieval_ranks_blocks_match_full_matrix() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(7, 4)).astype(np.float32)
    cap = rng.normal(size=(12, 4)).astype(np.float32)
    caption_image = np.sort(rng.integers(0, 7, size=12))
    caption_image[:7] = np.arange(7)  # every image has a caption
    caption_image.sort()
    i2t, t2i = metrics.retrieval_ranks(img, cap, caption_image, block=3)
    sim = img @ cap.T
    assert i2t.tolist() == metrics.similarity_ranks(sim, caption_image[None, :] == np.arange(7)[:, None]).tolist()
    assert t2i.tolist() == metrics.similarity_ranks(sim.T, np.arange(7)[None, :] == caption_image[:, None]).tolist()


def test_retrieval_eval_tiny_model(tiny: models.LoadedModel, tmp_path) -> None:
    _retrieval_shard(tmp_path / "coco.tar")
    spec = {"format": "wds", "paths": str(tmp_path / "coco.tar"), "task": "retrieval"}
    spec["concepts"] = ["dog", "cat", "sofa"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = datasets.load_dataset(spec, tiny.preprocess, name="coco")
    df = metrics.retrieval_eval(tiny, ds, cache_dir=tmp_path / "cache", progress=False)
    writers.EVALUATIONS.validate(df)
    assert set(df["prompt"]) == {"-"} and set(df["task"]) == {"retrieval"}
    n = df.set_index(["concept", "metric"])["n"]
    assert n[(specs.OVERALL, "i2t_k=1")] == 3 and n[(specs.OVERALL, "t2i_k=5")] == 5
    assert n[("dog", "t2i_k=1")] == 3 and n[("dog", "i2t_k=1")] == 2  # "dogs" is "dog" (phrase mode lemmas)
    assert n[("sofa", "t2i_k=10")] == 1 and n[("cat", "i2t_k=1")] == 1
    assert (df.loc[df["metric"].str.endswith("k=10"), "value"] == 1.0).all()  # fewer items than 10
    assert (tmp_path / "cache" / tiny.key / "text" / "coco.captions.npy").is_file()


# ------------------------------------------------------------------------------------------ writers


def test_release_json_round_trip_through_tidy(tmp_path) -> None:
    model, data = planted()
    zs = metrics.zero_shot_eval(model, data, ["class", "ensemble"], progress=False)
    i2t, t2i = np.array([0, 2, 2]), np.array([0, 2, 1, 2, 0])
    table = metrics.recall_table(i2t, t2i, CAPTION_IMAGE, [["dog"], [], ["dog", "cat"], ["cat"], []], ["dog", "cat"])
    table.insert(0, "prompt", "-")
    ret = metrics._tidy(table, model.key, "flickr", "retrieval")
    df = pd.concat([zs, ret], ignore_index=True)

    written = writers.to_release_json(df, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["toy_class_results.json", "toy_ensemble_results.json"]
        + [f"flickr_{d}_k={k}_results.json" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    )
    raw = json.loads((tmp_path / "zero_shot_evaluations" / "toy_class_results.json").read_text())
    assert raw == {model.key: {"full": 62.5, "classwise": {"cat": 100.0, "dog": 75.0, "red panda": 0.0}}}

    scores, overall = tidy.zero_shot(tmp_path)
    assert len(scores) == 6 and set(scores["prompt"]) == {"class", "ensemble"}
    assert scores.set_index(["prompt", "class_name"])["accuracy"][("ensemble", "dog")] == 75.0
    assert overall.set_index("variant")["value"]["class"] == 62.5
    rscores, roverall = tidy.retrieval(tmp_path)
    got = rscores.set_index(["direction", "k", "concept"])["recall"]
    assert got[("i2t", 1, "dog")] == 0.5 and got[("t2i", 1, "cat")] == 0.0 and got[("t2i", 5, "cat")] == 1.0
    assert roverall.set_index("variant")["value"]["t2i_k=1"] == pytest.approx(0.4)

    other = df.assign(model="backboneOther_pretrainedx")  # merge keeps the first model's entries
    writers.to_release_json(other[other["task"] == "zero_shot"], tmp_path, merge=True)
    raw = json.loads((tmp_path / "zero_shot_evaluations" / "toy_class_results.json").read_text())
    assert sorted(raw) == ["backboneFake_pretrainedtoy", "backboneOther_pretrainedx"]

    with pytest.raises(ValueError, match="contain '_'"):
        writers.to_release_json(zs.assign(dataset="imagenet_sketch"), tmp_path)


def test_evaluations_parquet_schema(tmp_path) -> None:
    model, data = planted()
    df = metrics.zero_shot_eval(model, data, "simple", progress=False)
    path = writers.write_evaluations(df, tmp_path / "evaluations.parquet")
    pd.testing.assert_frame_equal(writers.read_evaluations(path), df)
    bad = df.copy()
    bad.loc[0, "value"] = 150.0
    with pytest.raises(Exception, match="out of range"):
        writers.write_evaluations(bad, tmp_path / "bad.parquet")
    with pytest.raises(Exception, match="metric does not fit"):
        writers.write_evaluations(df.assign(metric="top5"), tmp_path / "bad.parquet")


# ============================================================================================== stage


def test_evaluate_pair_writes_tidy_parquet_and_release_json_with_relative_paths(tiny_files, image_folder, tmp_path):
    """The stage's unit: paths relative to the work folder, both outputs written, readable by helpers.release.tidy."""
    import shutil

    base = tmp_path / "work"
    (base / "models").mkdir(parents=True)
    shutil.copy(tiny_files["config"], base / "models" / f"{TINY_NAME}.json")
    shutil.copy(tiny_files["checkpoint"], base / "models" / "w.pt")
    shutil.copytree(image_folder, base / "eval" / "imgs")
    model = {"model_config": f"models/{TINY_NAME}.json", "pretrained": "models/w.pt"}
    dataset = {"format": "imagefolder", "root": "eval/imgs"}
    settings = {"cache_dir": "cache", "device": "cpu", "prompts": ["class", "simple"], "batch_size": 4}
    out = base / "out" / "tiny" / "toy-set"
    df = pair.evaluate_pair("tiny", model, "toy-set", dataset, settings, out, base=base, progress=False)
    assert set(df["prompt"]) == {"class", "simple"}
    assert writers.read_evaluations(out / pair.EVALUATIONS_FILE).equals(df)
    assert sorted(p.name for p in (out / "zero_shot_evaluations").iterdir()) == [
        "toy-set_class_results.json",
        "toy-set_simple_results.json",
    ]
    tidy_rows, overall = tidy.zero_shot(out)
    assert set(tidy_rows["model"]) == {"tiny"} and set(tidy_rows["class_name"]) == {"cat", "dog", "red panda"}
    assert len(overall) == 2
    assert (base / "cache" / "tiny" / "images" / "toy-set.npy").exists()  # relative cache_dir under the base


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"prompts": ["fancy"]}, "prompts"),
        ({"batch_size": 0}, "batch_size"),
        ({"ks": [0]}, "ks"),
        ({"num_workers": -1}, "num_workers"),
        ({"colour": 1}, "unknown"),
    ],
)
def test_evaluation_settings_errors_name_the_key(settings: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"evaluation.settings.*{field}"):
        pair._check_settings(settings)


def test_resolve_spec_paths_leaves_tags_and_absolute_paths_alone(tmp_path) -> None:
    model = pair.resolve_spec_paths({"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, "model", tmp_path)
    assert model["pretrained"] == "laion2b_s34b_b79k"
    local = pair.resolve_spec_paths({"pretrained": "m/w.pt", "model_config": "/abs/c.json"}, "model", tmp_path)
    assert local == {"pretrained": str(tmp_path / "m/w.pt"), "model_config": "/abs/c.json"}
    data = pair.resolve_spec_paths(
        {"format": "wds", "paths": ["a/*.tar"], "concepts_file": "c.txt"}, "dataset", tmp_path
    )
    assert data["paths"] == [str(tmp_path / "a/*.tar")] and data["concepts_file"] == str(tmp_path / "c.txt")


def test_imagefolder_names_that_are_the_folders_in_another_order_are_matched_by_name(image_folder) -> None:
    """A classes file in id order must not label the cat folder 'red panda' by position."""
    with pytest.warns(UserWarning, match="matched by name"):
        ds = datasets.load_dataset(
            {"format": "imagefolder", "root": str(image_folder), "class_names": ["red panda", "dog", "cat"]}, _to_tensor
        )
    assert ds.class_names == ["cat", "dog", "red panda"]
    renamed = datasets.load_dataset(
        {"format": "imagefolder", "root": str(image_folder), "class_names": ["tabby", "hound", "panda"]}, _to_tensor
    )
    assert renamed.class_names == ["tabby", "hound", "panda"]  # other names: by position, as documented


def test_image_cache_key_covers_file_content(image_folder) -> None:
    """A same-size replacement of one image (another colour: PNG of equal length) or an edit of a wds shard
    changes the dataset's image fingerprint, the key of the embedding cache; a copy elsewhere does not."""
    spec = {"format": "imagefolder", "root": str(image_folder)}
    before = datasets.load_dataset(spec, _to_tensor, name="toy").image_fingerprint()
    target = image_folder / "dog" / "1.png"
    size = target.stat().st_size
    replacement = next(
        data for c in range(256) if len(data := _png((c, 255 - c, 7))) == size and data != target.read_bytes()
    )
    assert len(replacement) == target.stat().st_size  # same size: a (name, size) key would not move
    stat = target.stat()
    target.write_bytes(replacement)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = datasets.load_dataset(spec, _to_tensor, name="toy").image_fingerprint()
    assert after != before
    copy = image_folder.parent / "copy"
    shutil.copytree(image_folder, copy)  # new mtimes, same content
    assert datasets.load_dataset({**spec, "root": str(copy)}, _to_tensor, name="toy").image_fingerprint() == after
