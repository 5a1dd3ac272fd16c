"""Tagger backends (helpers.images.backends and the three backend modules).

Everything runs offline on a CPU: the open_clip backend loads a tiny ViT config registered from a JSON
file and a checkpoint saved here, the trained backend trains on synthetic coloured shapes, and the RAM++
adapter runs against a small fake ``ram`` package injected into ``sys.modules`` (the real package and
its weights cannot be installed here).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torchvision import transforms as T

from helpers.images.backends import build_tagger, load_descriptions, match_descriptions
from helpers.images.taggers import Tagger
from helpers.shards import ConfigError

CONCEPTS = ["red", "green", "blue", "yellow"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230), "yellow": (235, 220, 40)}
TINY_MODEL = "tagger-test-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine (another test process,
    pytest-xdist) OpenMP threads contending for cores make them 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- data


def shapes_image(rng: np.random.Generator, present: list[str], size: int = 32) -> Image.Image:
    """A noisy dark background with one coloured square or circle per present concept."""
    noise = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    for concept in present:
        s = int(rng.integers(7, 11))
        x, y = (int(v) for v in rng.integers(0, size - s, size=2))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape([x, y, x + s, y + s], fill=COLOURS[concept])
    return img


def shapes_dataset(n: int, seed: int) -> tuple[list[Image.Image], list[list[str]]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        present = [c for c in CONCEPTS if rng.random() < 0.4]
        images.append(shapes_image(rng, present))
        labels.append(present)
    return images, labels


@pytest.fixture(scope="module")
def sample_images() -> list[Image.Image]:
    images, _ = shapes_dataset(5, seed=123)
    return images


# ------------------------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict:
    """A tiny open_clip ViT: its JSON config, and a checkpoint (a plain state dict) saved with torch.save."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    config = folder / f"{TINY_MODEL}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL)
    checkpoint = folder / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"config": config, "checkpoint": checkpoint, "state": model.state_dict()}


def clip_config(tiny_clip: dict, **extra) -> dict:
    paths = {"model_config": str(tiny_clip["config"]), "pretrained": str(tiny_clip["checkpoint"])}
    return {"backend": "open_clip", **paths, **extra}


@pytest.fixture(scope="module")
def clip_factory(tiny_clip):
    return lambda concepts: build_tagger(clip_config(tiny_clip), concepts)


# ------------------------------------------------------------------------------------------- trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from helpers.images.tagger_trained import train_tagger

    images, labels = shapes_dataset(240, seed=0)
    test_images, test_labels = shapes_dataset(80, seed=1)
    tagger = train_tagger(
        images, labels, CONCEPTS, image_size=32, epochs=10, batch_size=32, lr=3e-3,
        widths=(16, 32, 32, 64), seed=0, progress=False,
    )  # fmt: skip
    checkpoint = tmp_path_factory.mktemp("trained") / "tagger.pt"
    tagger.save(checkpoint)
    return {"tagger": tagger, "checkpoint": checkpoint, "test": (test_images, test_labels)}


@pytest.fixture(scope="module")
def trained_factory(trained):
    return lambda concepts: build_tagger({"backend": "trained", "checkpoint": str(trained["checkpoint"])}, concepts)


# ------------------------------------------------------------------------------------------- fake RAM++

EMBED_DIM = 16


class FakeVisual(nn.Module):
    """Patchify into tokens and prepend their mean (the shape RAM++'s Swin returns: B x (1+T) x width)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 24, kernel_size=32, stride=32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


class FakeTaggingHead(nn.Module):
    """Cross-attention only, each query independent of the others (like RAM++'s tagging head)."""

    def __init__(self, dim: int, enc_dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(enc_dim, dim), nn.Linear(enc_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, encoder_embeds, encoder_hidden_states, encoder_attention_mask, return_dict, mode):
        assert mode == "tagging" and return_dict is False
        assert encoder_attention_mask.shape == encoder_hidden_states.shape[:-1]
        att = self.q(encoder_embeds) @ self.k(encoder_hidden_states).transpose(1, 2) / math.sqrt(self.q.out_features)
        return (encoder_embeds + self.out(torch.softmax(att, dim=-1) @ self.v(encoder_hidden_states)),)


class FakeRamPlus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual_encoder = FakeVisual()
        self.image_proj = nn.Linear(24, EMBED_DIM)
        self.reweight_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.wordvec_proj = nn.Linear(EMBED_DIM, 20)
        self.tagging_head = FakeTaggingHead(20, EMBED_DIM)
        self.fc = nn.Linear(20, 1)


def fake_text_embedding(text: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return F.normalize(torch.randn(EMBED_DIM, generator=torch.Generator().manual_seed(seed)), dim=0)


@pytest.fixture()
def fake_ram(monkeypatch) -> types.SimpleNamespace:
    """A stand-in ``ram`` package with the entry points the adapter uses; records the embedding calls."""
    calls: list[list[dict]] = []

    def ram_plus(pretrained="", **kwargs):
        assert os.path.isfile(pretrained) and kwargs["vit"] in ("swin_l", "swin_b")
        torch.manual_seed(0)
        return FakeRamPlus()

    def build_openset_llm_label_embedding(llm_tag_des):
        calls.append(llm_tag_des)
        cats = [next(iter(item)) for item in llm_tag_des]
        emb = [fake_text_embedding(d) for item in llm_tag_des for d in next(iter(item.values()))]
        return torch.stack(emb), cats

    def get_transform(image_size=384):
        return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])

    ram = types.ModuleType("ram")
    ram.__path__ = []  # a package
    ram.get_transform = get_transform
    ram.models = types.ModuleType("ram.models")
    ram.models.ram_plus = ram_plus
    ram.utils = types.ModuleType("ram.utils")
    ram.utils.build_openset_llm_label_embedding = build_openset_llm_label_embedding
    for name, module in (("ram", ram), ("ram.models", ram.models), ("ram.utils", ram.utils)):
        monkeypatch.setitem(sys.modules, name, module)
    from helpers.images import tagger_rampp

    monkeypatch.setattr(tagger_rampp, "_EMBEDDINGS", {})  # each test starts without embeddings in memory
    return types.SimpleNamespace(calls=calls)


@pytest.fixture()
def ram_checkpoint(tmp_path):
    path = tmp_path / "ram_plus_fake.pth"
    path.write_bytes(b"not real weights")
    return path


def rampp_config(checkpoint, **extra) -> dict:
    return {"backend": "rampp", "checkpoint": str(checkpoint), "image_size": 224, **extra}


@pytest.fixture()
def rampp_factory(fake_ram, ram_checkpoint):
    descriptions = {"red": ["a photo of a red.", "something red"], "blue": ["a photo of a blue.", "blue thing", "sky"]}
    return lambda concepts: build_tagger(rampp_config(ram_checkpoint), concepts, descriptions=descriptions)


def ram_oracle(model: FakeRamPlus, images: torch.Tensor, flat: torch.Tensor, per_class: int) -> torch.Tensor:
    """RAM++'s generate_tag computation with equal description counts, written out independently."""
    with torch.no_grad():
        image_embeds = model.image_proj(model.visual_encoder(images))
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        cls = image_embeds[:, 0, :] / image_embeds[:, 0, :].norm(dim=-1, keepdim=True)
        logits = (model.reweight_scale.exp() * cls @ flat.t()).view(images.shape[0], -1, per_class)
        weights = torch.softmax(logits, dim=2)
        grouped = flat.view(-1, per_class, flat.shape[1])
        label = torch.stack([(weights[i].unsqueeze(-1) * grouped).sum(dim=1) for i in range(images.shape[0])])
        queries = torch.relu(model.wordvec_proj(label))
        hidden = model.tagging_head(
            encoder_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=atts,
            return_dict=False, mode="tagging",
        )[0]  # fmt: skip
        return torch.sigmoid(model.fc(hidden).squeeze(-1))


# ------------------------------------------------------------------------------------------- contract

FACTORIES = ["clip_factory", "trained_factory", "rampp_factory"]


def batch_of(tagger: Tagger, images: list[Image.Image]) -> torch.Tensor:
    transform = tagger.transform()
    return torch.stack([transform(img) for img in images])


@pytest.mark.parametrize("factory_name", FACTORIES)
def test_backend_contract(factory_name, request, sample_images):
    factory = request.getfixturevalue(factory_name)
    tagger = factory(CONCEPTS)
    assert isinstance(tagger, Tagger)
    assert tagger.backend in ("open_clip", "trained", "rampp")
    assert list(tagger.concepts) == CONCEPTS
    assert tagger.to("cpu") is tagger

    transform = tagger.transform()
    restored = pickle.loads(pickle.dumps(transform))  # DataLoader workers receive it pickled
    one = transform(sample_images[0])
    assert one.shape == (3, tagger.image_size, tagger.image_size) and one.dtype == torch.float32
    assert torch.equal(restored(sample_images[0]), one)

    batch = batch_of(tagger, sample_images)
    scores = tagger.scores(batch)
    assert scores.shape == (len(sample_images), len(CONCEPTS))
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.all((scores >= 0) & (scores <= 1)) and torch.isfinite(scores).all()
    assert torch.equal(tagger.scores(batch), scores)  # deterministic
    # an image's scores do not depend on the rest of its batch
    torch.testing.assert_close(tagger.scores(batch[1:2]), scores[1:2], atol=1e-5, rtol=1e-4)

    fingerprint = tagger.fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert factory(CONCEPTS).fingerprint() == fingerprint
    assert factory(CONCEPTS[:3]).fingerprint() != fingerprint
    assert factory(CONCEPTS[::-1]).fingerprint() != fingerprint


@pytest.mark.parametrize("factory_name", FACTORIES)
def test_scores_the_way_the_runner_calls_them(factory_name, request, sample_images):
    """helpers.images.search calls scores() under inference_mode and, with precision bf16/fp16, autocast."""
    tagger = request.getfixturevalue(factory_name)(CONCEPTS)
    batch = batch_of(tagger, sample_images)
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        half = tagger.scores(batch)  # the first call: lazily built embeddings are inference tensors
    assert half.dtype == torch.float32 and half.shape == (len(sample_images), len(CONCEPTS))
    assert torch.all((half >= 0) & (half <= 1))
    full = tagger.scores(batch)  # and later calls outside inference mode still work
    assert torch.equal(full, request.getfixturevalue(factory_name)(CONCEPTS).scores(batch))


# ------------------------------------------------------------------------------------------- config errors


def test_backend_key_errors():
    with pytest.raises(ConfigError, match=r"^tagger\.backend: missing"):
        build_tagger({}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.backend: 'clip' is not one of trained, open_clip, rampp"):
        build_tagger({"backend": "clip"}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger:"):
        build_tagger(["open_clip"], CONCEPTS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        build_tagger({"backend": "trained", "checkpoint": "x"}, ["a", "a"])


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"tempreature": 1}, "tempreature"),
        ({"calibration": {"tau": -1}}, "calibration.tau"),
        ({"calibration": {"tau": "learned"}}, "calibration.tau"),
        ({"calibration": {"mode": "platt"}}, "calibration.mode"),
        ({"calibration": {"mode": "reference"}}, "calibration.reference_images"),
        ({"calibration": {"reference_images": "x/*.jpg"}}, "calibration.reference_images"),
        ({"calibration": {"margin": 0.1, "bins": 3}}, "calibration.bins"),
        ({"templates": ["a photo of a thing."]}, "templates"),
        ({"image_size": 64}, "image_size"),
        ({"pretrained": "no-such-tag-or-file"}, "pretrained"),
        ({"name": "other-name"}, "name"),
        ({"model": "ViT-B-32"}, "model"),  # the architecture key is `name` (the tagger's `model` is gone)
        ({"precision": "fp8"}, "precision"),
        ({"use_descriptions": "yes"}, "use_descriptions"),
    ],
)
def test_open_clip_config_errors(tiny_clip, extra, key):
    with pytest.raises(ConfigError, match=rf"^tagger\.{key.replace('.', chr(92) + '.')}:"):
        build_tagger(clip_config(tiny_clip, **extra), CONCEPTS)


def test_open_clip_missing_keys(tiny_clip):
    with pytest.raises(ConfigError, match=r"^tagger\.name: missing"):
        build_tagger({"backend": "open_clip", "pretrained": str(tiny_clip["checkpoint"])}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.pretrained: missing"):
        build_tagger({"backend": "open_clip", "name": TINY_MODEL}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.name: unknown open_clip model"):
        build_tagger({"backend": "open_clip", "name": "No-Such-ViT", "pretrained": "x"}, CONCEPTS)


def test_tagger_errors_name_the_image_corpus_entry(tiny_clip, trained):
    """An error inside image_corpora.<name>.tagger names that path, from the params model and the backend."""
    prefix = "image_corpora.my_cc3m.tagger"
    with pytest.raises(ConfigError, match=r"^image_corpora\.my_cc3m\.tagger\.tempreature: unknown key"):
        build_tagger(clip_config(tiny_clip, tempreature=1), CONCEPTS, prefix=prefix)
    with pytest.raises(ConfigError, match=r"^image_corpora\.my_cc3m\.tagger\.backend: 'clip' is not one of"):
        build_tagger({"backend": "clip"}, CONCEPTS, prefix=prefix)
    checkpoint = str(trained["checkpoint"])
    with pytest.raises(ConfigError, match=r"^image_corpora\.my_cc3m\.tagger\.image_size: 64 does not match"):
        build_tagger({"backend": "trained", "checkpoint": checkpoint, "image_size": 64}, CONCEPTS, prefix=prefix)


def test_trained_config_errors(trained, tmp_path):
    checkpoint = str(trained["checkpoint"])
    with pytest.raises(ConfigError, match=r"^tagger\.checkpoint: missing"):
        build_tagger({"backend": "trained"}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.checkpoint: file .* does not exist"):
        build_tagger({"backend": "trained", "checkpoint": str(tmp_path / "none.pt")}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.image_size: 64 does not match .* 32"):
        build_tagger({"backend": "trained", "checkpoint": checkpoint, "image_size": 64}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.model: unknown key"):
        build_tagger({"backend": "trained", "checkpoint": checkpoint, "model": "x"}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.unknown_concepts:"):
        build_tagger({"backend": "trained", "checkpoint": checkpoint, "unknown_concepts": "drop"}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.checkpoint: 1 of 5 concepts .*'purple'"):
        build_tagger({"backend": "trained", "checkpoint": checkpoint}, [*CONCEPTS, "purple"])


def test_rampp_config_errors(fake_ram, ram_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"^tagger\.checkpoint: missing"):
        build_tagger({"backend": "rampp"}, CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.image_size:"):
        build_tagger(rampp_config(ram_checkpoint, image_size=512), CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.vit:"):
        build_tagger(rampp_config(ram_checkpoint, vit="vit_h"), CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.threshold: unknown key"):
        build_tagger(rampp_config(ram_checkpoint, threshold=0.7), CONCEPTS)
    with pytest.raises(ConfigError, match=r"^tagger\.descriptions: file"):
        build_tagger(rampp_config(ram_checkpoint, descriptions=str(tmp_path / "none.json")), CONCEPTS)


def test_rampp_missing_package_says_what_to_do(monkeypatch, ram_checkpoint):
    monkeypatch.setitem(sys.modules, "ram", None)  # `import ram` fails, installed or not
    with pytest.raises(ConfigError) as err:
        build_tagger(rampp_config(ram_checkpoint), CONCEPTS)
    message = str(err.value)
    assert message.startswith("tagger.backend:")
    assert "pip install" in message and "git+https://github.com/xinyu1205/recognize-anything.git" in message
    assert "--no-deps" in message and "own environment" in message


# ------------------------------------------------------------------------------------------- open_clip


def test_open_clip_loads_the_checkpoint_and_calibrates_as_documented(tiny_clip, sample_images):
    import open_clip

    tagger = build_tagger(clip_config(tiny_clip, calibration={"margin": 0.02, "tau": 0.05}), CONCEPTS)
    assert tagger.image_size == 32
    for name, value in tagger.model.state_dict().items():  # the weights come from the checkpoint file
        assert torch.equal(value, tiny_clip["state"][name]), name

    images = batch_of(tagger, sample_images)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    with torch.no_grad():
        text = []
        for concept in CONCEPTS:
            prompts = [t.replace("{c}", concept) for t in tagger.templates]
            emb = F.normalize(tagger.model.encode_text(tokenizer(prompts)), dim=-1).mean(dim=0)
            text.append(F.normalize(emb, dim=0))
        sims = F.normalize(tagger.model.encode_image(images), dim=-1) @ torch.stack(text).T
    torch.testing.assert_close(tagger.similarities(images), sims, atol=1e-5, rtol=1e-5)
    background = (sims.sum(dim=1, keepdim=True) - sims) / (len(CONCEPTS) - 1)  # mean over the other concepts
    expected = torch.sigmoid((sims - background - 0.02) / 0.05)
    torch.testing.assert_close(tagger.scores(images), expected, atol=1e-5, rtol=1e-4)
    assert tagger.fingerprint()["calibration"] == {"mode": "concepts", "margin": 0.02, "tau": 0.05}
    assert (
        tagger.fingerprint()["weights"]["checkpoint_sha256"]
        == hashlib.sha256(tiny_clip["checkpoint"].read_bytes()).hexdigest()
    )


def test_open_clip_tau_model_is_the_clips_own_temperature(tiny_clip, sample_images):
    """``tau: model`` is 1 / the learned logit scale: the model's own softmax temperature, not a ViT-B heuristic."""
    tagger = build_tagger(clip_config(tiny_clip, calibration={"margin": 0.0, "tau": "model"}), CONCEPTS)
    scale = float(tiny_clip["state"]["logit_scale"].exp())
    assert tagger.calibration.tau == pytest.approx(1 / scale)
    assert tagger.fingerprint()["calibration"]["tau"] == pytest.approx(1 / scale)
    images = batch_of(tagger, sample_images)
    sims = tagger.similarities(images)
    background = (sims.sum(dim=1, keepdim=True) - sims) / (len(CONCEPTS) - 1)
    torch.testing.assert_close(tagger.scores(images), torch.sigmoid((sims - background) * scale), atol=1e-5, rtol=1e-4)


def test_open_clip_reference_calibration(tiny_clip, tmp_path, sample_images):
    images, _ = shapes_dataset(6, seed=7)
    for i, img in enumerate(images):
        img.save(tmp_path / f"ref{i}.png")
    calibration = {"mode": "reference", "reference_images": str(tmp_path / "*.png"), "max_reference_images": 4}
    config = clip_config(tiny_clip, calibration=calibration)
    tagger = build_tagger(config, ["cat"])  # one concept is fine with a reference set
    refs = torch.stack([tagger.transform()(Image.open(tmp_path / f"ref{i}.png")) for i in range(4)])
    expected_background = tagger.similarities(refs).mean(dim=0)
    torch.testing.assert_close(tagger.reference_background(), expected_background, atol=1e-5, rtol=1e-5)
    batch = batch_of(tagger, sample_images)
    expected = torch.sigmoid((tagger.similarities(batch) - tagger.reference_background() - 0.05) / 0.01)
    torch.testing.assert_close(tagger.scores(batch), expected, atol=1e-5, rtol=1e-4)
    assert tagger.fingerprint()["calibration"]["n_reference_images"] == 4
    with pytest.raises(ConfigError, match=r"^tagger\.calibration\.mode: 'concepts' needs at least 2"):
        build_tagger(clip_config(tiny_clip), ["cat"])


def test_open_clip_descriptions_join_the_prompts(tiny_clip, tmp_path):
    described = {"red": ["a red shape on a dark background."]}
    plain = build_tagger(clip_config(tiny_clip), CONCEPTS, descriptions=described)
    with_desc = build_tagger(clip_config(tiny_clip, use_descriptions=True), CONCEPTS, descriptions=described)
    assert torch.equal(plain.text_embeddings()[1:], with_desc.text_embeddings()[1:])
    assert not torch.allclose(plain.text_embeddings()[0], with_desc.text_embeddings()[0])
    assert plain.fingerprint() != with_desc.fingerprint()
    # the same descriptions from a release-style JSON file given in the config
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"red": {"red": described["red"]}}))
    from_file = build_tagger(clip_config(tiny_clip, use_descriptions=True, descriptions=str(path)), CONCEPTS)
    assert torch.equal(from_file.text_embeddings(), with_desc.text_embeddings())


# ------------------------------------------------------------------------------------------- trained


def test_training_reduces_loss_and_beats_chance(trained):
    tagger = trained["tagger"]
    history = tagger.loss_history
    assert len(history) == 10 and history[-1] < 0.5 * history[0]
    test_images, test_labels = trained["test"]
    probs = tagger.scores(batch_of(tagger, test_images))
    truth = torch.tensor([[c in row for c in CONCEPTS] for row in test_labels])
    accuracy = ((probs > 0.5) == truth).float().mean(dim=0)
    assert torch.all(accuracy >= 0.85), dict(zip(CONCEPTS, accuracy.tolist()))  # chance is about 0.6


def test_trained_save_load_round_trip(trained, sample_images):
    from helpers.images.tagger_trained import load_trained_tagger, sidecar_path

    tagger, checkpoint = trained["tagger"], trained["checkpoint"]
    loaded = load_trained_tagger(checkpoint)
    batch = batch_of(tagger, sample_images)
    assert torch.equal(loaded.scores(batch), tagger.scores(batch))
    assert loaded.fingerprint() == tagger.fingerprint()
    assert loaded.loss_history == tagger.loss_history
    meta = json.loads(sidecar_path(checkpoint).read_text())
    assert meta["concepts"] == CONCEPTS and meta["image_size"] == 32
    assert meta["arch"] == {
        "name": "TaggerCNN", "widths": [16, 32, 32, 64], "dropout": 0.1, "in_channels": 3, "pools": 4,
        "global_pool": "avg",
    }  # fmt: skip
    state = torch.load(checkpoint, weights_only=True)  # tensors only, no pickled objects
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    meta["weights_sha256"] = "0" * 64
    sidecar_path(checkpoint).write_text(json.dumps(meta))
    try:
        with pytest.raises(ValueError, match="SHA-256 differs"):
            load_trained_tagger(checkpoint)
    finally:
        tagger.save(checkpoint)


def test_trained_concept_mapping(trained, sample_images):
    tagger = trained["tagger"]
    batch = batch_of(tagger, sample_images)
    full = tagger.scores(batch)
    config = {"backend": "trained", "checkpoint": str(trained["checkpoint"]), "unknown_concepts": "zero"}
    mapped = build_tagger(config, ["Blue", "purple", "red"])  # lenient names, one unknown concept
    scores = mapped.scores(batch)
    assert torch.equal(scores[:, 0], full[:, 2]) and torch.equal(scores[:, 2], full[:, 0])
    assert torch.all(scores[:, 1] == 0)
    assert mapped.fingerprint()["n_unknown_concepts"] == 1


def test_trained_from_labels_config(tmp_path):
    images, labels = shapes_dataset(24, seed=3)
    (tmp_path / "img").mkdir()
    rows = []
    for i, (img, row) in enumerate(zip(images, labels)):
        img.save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "concepts": "|".join(c.upper() for c in row)})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    checkpoint = tmp_path / "model" / "tagger.pt"
    train = {"labels": str(tmp_path / "labels.csv"), "image_size": 32, "epochs": 1, "batch_size": 8,
             "widths": [8, 8], "device": "cpu"}  # fmt: skip
    config = {"backend": "trained", "checkpoint": str(checkpoint), "unknown_concepts": "zero", "train": train}
    concepts = [*CONCEPTS, "purple"]
    first = build_tagger(config, concepts)
    assert checkpoint.is_file() and first.model_concepts == CONCEPTS
    stamp = checkpoint.stat().st_mtime_ns
    second = build_tagger(config, concepts)  # reuses the checkpoint instead of training again
    assert checkpoint.stat().st_mtime_ns == stamp and second.fingerprint() == first.fingerprint()
    with pytest.raises(ConfigError, match=r"^tagger\.checkpoint: .* other labels or settings"):
        build_tagger({**config, "train": {**train, "epochs": 2}}, concepts)
    with pytest.raises(ConfigError, match=r"^tagger\.train\.epochs:"):
        build_tagger({**config, "train": {**train, "epochs": 0}}, concepts)
    with pytest.raises(ConfigError, match=r"^tagger\.train\.labels: missing"):
        build_tagger({"backend": "trained", "train": {}}, concepts)


# ------------------------------------------------------------------------------------------- RAM++


def test_rampp_probabilities_follow_ram_plus(fake_ram, ram_checkpoint, sample_images):
    descriptions = {c: [f"a photo of a {c}.", f"a {c} object"] for c in CONCEPTS}
    tagger = build_tagger(rampp_config(ram_checkpoint), CONCEPTS, descriptions=descriptions)
    (call,) = fake_ram.calls
    assert call == [{c: descriptions[c]} for c in CONCEPTS]  # the package's llm_tag_des format
    flat = torch.stack([fake_text_embedding(d) for c in CONCEPTS for d in descriptions[c]])
    batch = batch_of(tagger, sample_images)
    expected = ram_oracle(tagger.model, batch, flat, per_class=2)
    torch.testing.assert_close(tagger.scores(batch), expected, atol=1e-5, rtol=1e-4)
    chunked = build_tagger(rampp_config(ram_checkpoint, concept_chunk=1), CONCEPTS, descriptions=descriptions)
    torch.testing.assert_close(chunked.scores(batch), expected, atol=1e-5, rtol=1e-4)


def test_rampp_ragged_descriptions_and_fallback(fake_ram, ram_checkpoint, sample_images):
    descriptions = {"red": ["a photo of a red.", "r1", "r2"], "Blue": ["b1"]}
    tagger = build_tagger(rampp_config(ram_checkpoint), ["red", "blue", "dark_green"], descriptions=descriptions)
    call = fake_ram.calls[-1]
    assert call == [{"red": descriptions["red"]}, {"blue": ["b1"]}, {"dark_green": ["a photo of a dark green."]}]
    assert tagger.fingerprint()["n_concepts_fallback_description"] == 1
    batch = batch_of(tagger, sample_images)
    scores = tagger.scores(batch)
    for j in range(3):  # each concept as if it were alone
        flat = torch.stack([fake_text_embedding(d) for d in next(iter(call[j].values()))])
        expected = ram_oracle(tagger.model, batch, flat, per_class=flat.shape[0])
        torch.testing.assert_close(scores[:, j : j + 1], expected, atol=1e-5, rtol=1e-4)


def test_rampp_label_embedding_cache(fake_ram, ram_checkpoint, tmp_path, sample_images):
    from helpers.images import tagger_rampp

    config = rampp_config(ram_checkpoint, label_embedding_cache=str(tmp_path / "cache"))
    first = build_tagger(config, CONCEPTS)
    assert len(fake_ram.calls) == 1 and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    build_tagger(rampp_config(ram_checkpoint), CONCEPTS)
    assert len(fake_ram.calls) == 1  # kept in memory within a process
    tagger_rampp._EMBEDDINGS.clear()
    second = build_tagger(config, CONCEPTS)
    assert len(fake_ram.calls) == 1  # read from the cache file: CLIP is not needed
    batch = batch_of(first, sample_images)
    assert torch.equal(first.scores(batch), second.scores(batch))
    assert first.fingerprint() == second.fingerprint()


# ------------------------------------------------------------------------------------------- descriptions


def test_load_descriptions_layouts(tmp_path):
    (tmp_path / "release.json").write_text(json.dumps({"golden_retriever": {"golden_retriever": ["a", "b"]}}))
    (tmp_path / "ram.json").write_text(json.dumps([{"Cat": ["c"]}, {"golden_retriever": ["ignored"]}]))
    (tmp_path / "flat.json").write_text(json.dumps({"dog": ["d"]}))
    merged = load_descriptions([tmp_path / "release.json", tmp_path / "ram.json", tmp_path / "flat.json"])
    assert merged == {"golden_retriever": ["a", "b"], "Cat": ["c"], "dog": ["d"]}
    assert match_descriptions(["golden retriever", "cat", "cow"], merged) == [["a", "b"], ["c"], None]
