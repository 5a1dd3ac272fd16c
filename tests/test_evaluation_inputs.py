"""Evaluation inputs a new user meets first: class names and checkpoints (issue 12, items 8 and 9).

Class names: torchvision-like datasets are fakes registered on ``torchvision.datasets`` for the test (nothing
is downloaded), whose images raise if read, so every check is shown to happen when the dataset is opened.
Checkpoints: a tiny open_clip ViT from a custom config, saved as a training checkpoint holding objects that
``torch.load(weights_only=True)`` refuses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import tarfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from helpers.evaluation import classnames, datasets, models
from helpers.images.backends import build_tagger
from helpers.params import ConfigError

# ------------------------------------------------------------------------------------------ class names


class _FakeVisionDataset:
    """A torchvision-like dataset: ``classes`` and ``targets`` given, images never read."""

    classes: list = []

    def __init__(self, root, split="test", transform=None, download=False):
        self.root, self.split, self.transform = root, split, transform
        self.targets = [i % len(self.classes) for i in range(2 * len(self.classes))]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("opening a dataset must not read its images")


def _fake(monkeypatch, name: str, classes: list, base: type = _FakeVisionDataset) -> None:
    cls = type(name, (base,), {"classes": classes})
    monkeypatch.setattr(tvd, name, cls, raising=False)


def _open(name: str, **extra):
    spec = {"format": "torchvision", "name": name, "root": "unused", **extra}
    return datasets.load_dataset(spec, lambda img: img, name="toy")


SYNONYMS = [("tench", "Tinca tinca"), ("goldfish", "Carassius auratus"), ["great white shark", "white shark"]]


def test_synonym_tuples_give_the_first_synonym(monkeypatch) -> None:
    _fake(monkeypatch, "FakeSynonyms", SYNONYMS)
    ds = _open("FakeSynonyms")
    assert ds.class_names == ["tench", "goldfish", "great white shark"]
    simple = datasets.prompt_templates("simple")
    assert datasets.class_prompts(ds.class_names[0], simple) == ["A photo of a tench."]


def test_mixed_strings_and_tuples(monkeypatch) -> None:
    _fake(monkeypatch, "FakeMixed", ["cat", ("dog", "domestic dog"), " fox "])
    assert _open("FakeMixed").class_names == ["cat", "dog", " fox "]  # strings as the dataset gives them


def _wordnet_imagenet() -> list[tuple[str, ...]]:
    """1000 classes as torchvision's ImageNet gives them: WordNet synonym tuples, two of them ``('crane',)``."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    classes = [(name, f"synonym {i}") for i, name in enumerate(IMAGENET_CLASSNAMES)]
    classes[0] = ("tench", "Tinca tinca")
    classes[134] = ("crane",)
    classes[517] = ("crane",)
    return classes


def test_imagenet_gets_the_curated_names_unique(monkeypatch) -> None:
    _fake(monkeypatch, "ImageNet", _wordnet_imagenet())
    ds = _open("ImageNet", split="val")
    names = ds.class_names
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert (names[134], names[517]) == ("crane bird", "construction crane")
    assert (names[657], names[744], names[836], names[837]) == ("missile", "projectile", "sunglass", "sunglasses")
    # a subclass of ImageNet (a user's filtered copy) gets them too
    monkeypatch.setattr(tvd, "MyImageNet", type("MyImageNet", (tvd.ImageNet,), {}), raising=False)
    assert _open("MyImageNet").class_names == names


def test_imagenet_with_another_number_of_classes_is_refused(monkeypatch) -> None:
    _fake(monkeypatch, "ImageNet", SYNONYMS)
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: ImageNet has 3 classes but"):
        _open("ImageNet")
    monkeypatch.setattr(tvd, "ImageNet", type("ImageNet", (_FakeVisionDataset,), {"classes": SYNONYMS}))
    assert _open("ImageNet", class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]


def test_curated_names_match_the_release(release_copy) -> None:
    """The names are the study's: its ImageNet results are keyed by them, in label order."""
    path = release_copy / "zero_shot_evaluations" / "imagenet_class_results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    names, source = classnames.curated_class_names("ImageNet")
    assert "IMAGENET_CLASSNAMES" in source
    for model, entry in results.items():
        assert list(entry["classwise"]) == names, model


@pytest.mark.parametrize(
    "classes, listed",
    [
        ([("crane",), ("heron",), ("crane", "derrick"), ("maillot",), ("maillot", "tank suit")], ["crane", "maillot"]),
        (["crane", "heron", "crane"], ["crane"]),  # plain strings repeat too
        ([("crane",), "crane"], ["crane"]),
    ],
)
def test_repeated_names_fail_at_load_listing_them(monkeypatch, classes, listed) -> None:
    _fake(monkeypatch, "FakeRepeats", classes)
    with pytest.raises(ConfigError) as info:
        _open("FakeRepeats")  # the images raise if read: this is before any work
    message = str(info.value)
    assert message.startswith("evaluation.datasets.toy.class_names: FakeRepeats.classes")
    for name in listed:
        first = next(i for i, c in enumerate(classes) if (c[0] if isinstance(c, tuple) else c) == name)
        assert f"{name!r} (classes {first}, " in message
    assert "give class_names or class_names_file" in message


def test_explicit_names_override_repeats(monkeypatch, tmp_path) -> None:
    classes = [("crane",), ("heron",), ("crane", "derrick")]
    _fake(monkeypatch, "FakeRepeats", classes)
    ds = _open("FakeRepeats", class_names=["crane bird", "heron", "construction crane"])
    assert ds.class_names == ["crane bird", "heron", "construction crane"]
    names_file = tmp_path / "classes.txt"
    names_file.write_bytes("\ufeffcrane bird\r\nheron\r\nconstruction crane\r\n".encode())
    assert _open("FakeRepeats", class_names_file=str(names_file)).class_names == ds.class_names


def test_explicit_repeats_are_refused_naming_the_key(monkeypatch, tmp_path) -> None:
    _fake(monkeypatch, "FakeSynonyms", SYNONYMS)
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: .*'tench' \(classes 0, 2\)"):
        _open("FakeSynonyms", class_names=["tench", "goldfish", "tench"])
    names_file = tmp_path / "classes.txt"
    names_file.write_text("tench\ngoldfish\ntench\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names_file: .*classes\.txt.*'tench'"):
        _open("FakeSynonyms", class_names_file=str(names_file))


def test_empty_synonym_tuple_is_refused(monkeypatch) -> None:
    _fake(monkeypatch, "FakeEmpty", [("cat",), ()])
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: FakeEmpty class 1 has no name"):
        _open("FakeEmpty")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_imagefolder_repeats(tmp_path) -> None:
    """Folder names are unique, but ``red_panda`` and ``red panda`` read alike."""
    for folder in ("cat", "red panda", "red_panda"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(_png())
    spec = {"format": "imagefolder", "root": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: the folder names .*'red panda'"):
        datasets.load_dataset(spec, lambda img: img, name="toy")
    mapping = {"cat": "cat", "red panda": "red panda", "red_panda": "lesser panda"}
    ds = datasets.load_dataset({**spec, "class_names": mapping}, lambda img: img, name="toy")
    assert ds.class_names == ["cat", "red panda", "lesser panda"]
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: .*'panda' \(classes 1, 2\)"):
        datasets.load_dataset({**spec, "class_names": {**mapping, "red panda": "panda", "red_panda": "panda"}},
                              lambda img: img, name="toy")  # fmt: skip


def test_wds_and_parquet_repeats(tmp_path) -> None:
    shard = tmp_path / "test-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, data in (("a.png", _png()), ("a.cls", b"0")):
            info = tarfile.TarInfo(key)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"image": [_png()], "label": [0]}), table)
    for spec in ({"format": "wds", "paths": str(shard)}, {"format": "parquet", "paths": str(table)}):
        with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: .*'crane' \(classes 0, 2\)"):
            datasets.load_dataset({**spec, "class_names": ["crane", "heron", "crane"]}, lambda img: img, name="toy")
        ok = datasets.load_dataset({**spec, "class_names": ["crane", "heron"]}, lambda img: img, name="toy")
        assert ok.class_names == ["crane", "heron"] and ok.labels.tolist() == [0]


def test_repeated_names_helper() -> None:
    assert classnames.repeated_names(["a", "b", "a", "c", "b", "a"]) == {"a": [0, 2, 5], "b": [1, 4]}
    assert classnames.repeated_names(["a", "b"]) == {}
    many = {f"n{i}": [i, i + 20] for i in range(12)}
    assert classnames.describe_repeats(many).endswith("'n9' (classes 9, 29) and 2 more")


# ----------------------------------------------------------------------------------------- checkpoints

TINY_NAME = "evalinputs-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny open_clip ViT and two training checkpoints of it: one holding an argparse.Namespace, one numpy
    scalars (as open_clip's and many training scripts' checkpoints do), beside its weights."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_ckpt")
    config = folder / f"{TINY_NAME}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    state = open_clip.create_model(TINY_NAME, pretrained=None).state_dict()
    namespace = folder / "with-args.pt"
    torch.save({"epoch": 3, "state_dict": state, "args": argparse.Namespace(lr=1e-3, batch_size=8)}, namespace)
    scalars = folder / "with-numpy.pt"
    torch.save({"epoch": np.int64(3), "loss": np.float32(0.25), "state_dict": state}, scalars)
    return {"config": config, "state": state, "namespace": namespace, "scalars": scalars, "folder": folder}


def _spec(tiny: dict, checkpoint: str, **extra) -> dict:
    return {"key": "mine", "model_config": str(tiny["config"]), "pretrained": str(tiny[checkpoint]), **extra}


@pytest.mark.parametrize("checkpoint, held", [("namespace", r"argparse\.Namespace"), ("scalars", r"numpy\.")])
def test_refused_checkpoint_names_the_key_and_trusted(tiny, checkpoint, held) -> None:
    with pytest.raises(ConfigError) as info:
        models.load_model(_spec(tiny, checkpoint))
    message = str(info.value)
    assert message.startswith(
        f"evaluation.models.mine.pretrained: torch.load(weights_only=True) refuses '{tiny[checkpoint]}'"
    )
    assert re.search(f"it holds a pickled {held}", message)
    assert "set evaluation.models.mine.trusted: true" in message
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize("checkpoint", ["namespace", "scalars"])
def test_trusted_checkpoint_loads_with_a_warning(tiny, checkpoint) -> None:
    with pytest.warns(UserWarning, match=r"^evaluation\.models\.mine\.trusted is true: .*weights_only=False"):
        loaded = models.load_model(_spec(tiny, checkpoint, trusted=True))
    for name, value in tiny["state"].items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_plain_state_dict_loads_without_trusted_and_without_warning(tiny, tmp_path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(tiny["state"], plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = models.load_model({"key": "mine", "model_config": str(tiny["config"]), "pretrained": str(plain)})
    assert torch.equal(loaded.model.state_dict()["logit_scale"], tiny["state"]["logit_scale"])


def test_local_dir_checkpoint_refused_naming_name(tiny, tmp_path) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}))
    torch.save(
        {"state_dict": tiny["state"], "args": argparse.Namespace(lr=1.0)}, folder / "open_clip_pytorch_model.bin"
    )
    spec = {"key": "mine", "name": f"local-dir:{folder}"}
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.mine\.name: torch\.load\(weights_only=True\) refuses"):
        models.load_model(spec)
    with pytest.warns(UserWarning, match="trusted is true"):
        loaded = models.load_model({**spec, "trusted": True})
    assert torch.equal(loaded.model.state_dict()["logit_scale"], tiny["state"]["logit_scale"])


def test_open_clip_passes_weights_only_to_torch_load(tiny) -> None:
    """What ``load_model`` relies on: open_clip's own loader calls ``torch.load(weights_only=...)`` with the
    value it is given (default True), and reads a training checkpoint's ``state_dict``."""
    import open_clip

    path = str(tiny["namespace"])
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL argparse.Namespace"):
        open_clip.create_model_and_transforms(TINY_NAME, pretrained=path)
    model = open_clip.create_model_and_transforms(TINY_NAME, pretrained=path, weights_only=False)[0]
    assert torch.equal(model.state_dict()["logit_scale"], tiny["state"]["logit_scale"])


def test_trusted_is_a_strict_bool_off_by_default(tiny) -> None:
    from helpers.params.evaluation import OpenClipModel
    from helpers.params.images import OpenClipTagger

    assert OpenClipModel(name="x").trusted is False
    assert OpenClipTagger(backend="open_clip", name="x").trusted is False
    with pytest.raises(ConfigError, match=r"^evaluation\.models\.mine\.trusted"):
        models.load_model(_spec(tiny, "namespace", trusted="yes"))


def test_open_clip_tagger_checkpoint(tiny) -> None:
    config = {"backend": "open_clip", "model_config": str(tiny["config"]), "pretrained": str(tiny["namespace"])}
    with pytest.raises(ConfigError, match=r"^tagger\.pretrained: torch\.load.*set tagger\.trusted: true"):
        build_tagger(config, ["red", "green"])
    with pytest.warns(UserWarning, match=r"^tagger\.trusted is true"):
        tagger = build_tagger({**config, "trusted": True}, ["red", "green"])
    assert torch.equal(tagger.model.state_dict()["logit_scale"], tiny["state"]["logit_scale"])


def test_imagefolder_of_wordnet_ids(tmp_path) -> None:
    """ImageNet's val folders (and ImageNet-Sketch's) are WordNet ids: all 1000 get the curated names; a subset
    without a list is refused rather than prompted as ``A photo of a n01440764.``."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = [f"n{10_000_000 + 7 * i:08d}" for i in range(1000)]
    for wnid in wnids:
        (tmp_path / wnid).mkdir()
    (tmp_path / wnids[134] / "a.png").write_bytes(_png())
    ds = datasets.load_dataset({"format": "imagefolder", "root": str(tmp_path)}, lambda img: img, name="toy")
    assert ds.class_names[:2] == list(IMAGENET_CLASSNAMES[:2]) and len(set(ds.class_names)) == 1000
    assert ds.labels.tolist() == [134] and ds.class_names[134] == "crane bird"

    subset = tmp_path / "subset"
    for wnid in wnids[:200]:
        (subset / wnid).mkdir(parents=True)
    (subset / wnids[0] / "a.png").write_bytes(_png())
    spec = {"format": "imagefolder", "root": str(subset)}
    with pytest.raises(ConfigError, match=r"^evaluation\.datasets\.toy\.class_names: the 200 folders are WordNet ids"):
        datasets.load_dataset(spec, lambda img: img, name="toy")
    names = [f"class {i}" for i in range(200)]
    assert datasets.load_dataset({**spec, "class_names": names}, lambda img: img, name="toy").class_names == names


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file")
def test_torchscript_archive_refused_naming_trusted(tiny, tmp_path) -> None:
    """torch.load(weights_only=True) refuses a TorchScript archive with a RuntimeError, not an UnpicklingError."""
    archive = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), archive)
    spec = {"key": "mine", "model_config": str(tiny["config"]), "pretrained": str(archive)}
    with pytest.raises(
        ConfigError, match=r"^evaluation\.models\.mine\.pretrained: .*it is a TorchScript archive.*trusted"
    ):
        models.load_model(spec)


def test_zero_shot_eval_refuses_repeats_before_embedding() -> None:
    """A dataset built by hand (not by load_dataset) with a repeated name fails before any image is embedded."""
    from helpers.evaluation import metrics

    class Unread(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("embedded an image")

    data = datasets.EvalDataset("toy", Unread(), 3, "zero_shot", np.array([0, 1, 2]), ["crane", "heron", "crane"])
    model = models.LoadedModel(None, None, None, "fake")
    with pytest.raises(ValueError, match=r"^toy: class names repeat: 'crane' \(classes 0, 2\)$"):
        metrics.zero_shot_eval(model, data, "simple", progress=False)
